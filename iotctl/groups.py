"""The click classes every group and command is built from.

Above options and profiles in the layers: these classes attach the hidden global
options to every command and load the active profile as a group's default_map.

Global options are accepted before the protocol group and after the command
(`iotctl -o json mqtt sub -t x` == `iotctl mqtt sub -t x -o json`): every command
built from `Command`/`ProtocolGroup` carries a hidden copy of them, and a value
given on a command's own command line wins over the root's.
"""

from __future__ import annotations

import importlib

import click

from iotctl.options import global_params
from iotctl.settings import current

GLOBAL_EPILOG = ("Global options (--profile, -o/--output, -F/--format, --color/--no-color, "
                 "-d/--debug, --quiet) are accepted here too; see 'iotctl --help'.")


def _with_globals(params: list[click.Parameter] | None) -> list[click.Parameter]:
    return list(params or []) + global_params(root=False)


def options_of(group: click.Command) -> dict[str, click.Option]:
    """Every option of a group's commands by name (the keys a profile table may hold),
    the global options left out."""
    found: dict[str, click.Option] = {}

    def walk(cmd):
        for p in cmd.params:
            if isinstance(p, click.Option) and not getattr(p, "iotctl_global", False) and p.name:
                found.setdefault(p.name, p)
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(group)
    return found


def suggest(word: str, choices) -> str | None:
    """A "did you mean" hint for a misspelt command or group."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


class QuickParser:
    """Mixin: short options parse without importing difflib.

    click tries every argument as a long option first and builds a "did you mean"
    suggestion (importing difflib, ~1-6 ms) before falling back to short options,
    so `-t x` paid for a suggestion nobody sees. Unknown `--long` options keep it."""

    def make_parser(self, ctx):
        parser = super().make_parser(ctx)
        match_long = getattr(parser, "_match_long_opt", None)
        long_opts = getattr(parser, "_long_opt", None)
        if match_long is None or long_opts is None:
            return parser

        def quick(opt, explicit_value, state):
            if opt not in long_opts and not opt.startswith("--"):
                raise click.NoSuchOption(opt, ctx=ctx)
            return match_long(opt, explicit_value, state)

        parser._match_long_opt = quick
        return parser


class SuggestingGroup:
    """Mixin: an unknown command name gets "did you mean" from every name and alias."""

    def resolve_command(self, ctx, args):
        name = click.utils.make_str(args[0]) if args else None
        if name is not None and not name.startswith("-") and self.get_command(ctx, name) is None:
            known = list(self.list_commands(ctx)) + list(getattr(self, "aliases", {}))
            close = suggest(name, known)
            if close is not None:
                ctx.fail(f"No such command '{name}'. Did you mean '{close}'?")
        return super().resolve_command(ctx, args)


class Command(QuickParser, click.Command):
    """A leaf command: takes the global options too (hidden from its help)."""

    def __init__(self, *args, **kwargs):
        kwargs["params"] = _with_globals(kwargs.get("params"))
        kwargs.setdefault("epilog", GLOBAL_EPILOG)
        kwargs.setdefault("context_settings", {}).setdefault("max_content_width", 100)
        super().__init__(*args, **kwargs)


class Group(SuggestingGroup, QuickParser, click.Group):
    """A plain group (profile, ...) whose commands take the global options."""

    command_class = Command


class ProtocolGroup(SuggestingGroup, QuickParser, click.Group):
    """A protocol's group (or a sub-group such as `mqtt retained`).

    - every option of its commands reads the environment variable
      IOTCTL_<PROTO>_<OPTION> unless it names its own;
    - the active profile's `[proto]` table becomes the commands' default_map
      (resolved lazily, so `--profile` given after the command still applies);
    - short aliases (`pub` for `publish`) resolve to the command.
    """

    command_class = Command

    def __init__(self, *args, protocol: str, aliases: dict[str, str] | None = None, **kwargs):
        kwargs["params"] = _with_globals(kwargs.get("params"))
        kwargs.setdefault("context_settings", {}).setdefault("max_content_width", 100)
        super().__init__(*args, **kwargs)
        self.protocol = protocol
        self.aliases = aliases or {}
        self.group_class = type(self)

    def group(self, *args, **kwargs):
        kwargs.setdefault("protocol", self.protocol)
        kwargs.setdefault("cls", ProtocolGroup)
        return super().group(*args, **kwargs)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        # every option without an envvar of its own reads IOTCTL_<PROTO>_<OPTION>:
        # click derives it from the context's auto_envvar_prefix, so Option objects
        # shared between commands (and protocols) stay untouched
        cmd.context_settings["auto_envvar_prefix"] = f"IOTCTL_{self.protocol.upper()}"
        super().add_command(cmd, name)

    def get_command(self, ctx: click.Context, cmd_name: str):
        return super().get_command(ctx, self.aliases.get(cmd_name, cmd_name))

    def resolve_command(self, ctx, args):
        name, cmd, rest = super().resolve_command(ctx, args)
        return (cmd.name if cmd is not None else name), cmd, rest

    def format_commands(self, ctx, formatter):
        rows = []
        reverse: dict[str, list[str]] = {}
        for alias, target in self.aliases.items():
            reverse.setdefault(target, []).append(alias)
        for name in self.list_commands(ctx):
            cmd = self.commands[name]
            if cmd.hidden:
                continue
            label = name + (f" ({', '.join(reverse[name])})" if name in reverse else "")
            rows.append((label, cmd.get_short_help_str(limit=formatter.width - 6 - len(label))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        from iotctl.profiles import ProfileSection  # pathlib and friends: only when a command runs

        section = ProfileSection(self.protocol, lambda: current().profile, lambda: options_of(self))
        ctx.default_map = {name: section for name in self.commands}
        return super().invoke(ctx)


class LazyGroup(SuggestingGroup, QuickParser, click.Group):
    """The root: its groups are imported only when used, so `iotctl --help` lists them
    from a static table without importing any protocol library."""

    def __init__(self, *args, lazy: dict[str, tuple[str, str]], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy  # name -> ("module:attribute", one-line help)

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name):
        if name in self.lazy and name not in self.commands:
            target, _ = self.lazy[name]
            module, attr = target.split(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy:
                rows.append((name, self.lazy[name][1]))
            else:
                rows.append((name, self.commands[name].get_short_help_str()))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

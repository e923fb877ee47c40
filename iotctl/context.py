"""Run-wide settings (the global options) and the click classes every group uses.

Global options are accepted before the protocol group and after the command
(`iotctl -o json mqtt sub -t x` == `iotctl mqtt sub -t x -o json`): every command
built from `Command`/`ProtocolGroup` carries a hidden copy of them, and a value
given on a command's own command line wins over the root's.
"""

from __future__ import annotations

import click


class Settings:
    """The global options of one run, stored on the root context's `obj`."""

    def __init__(self) -> None:
        self.profile: str | None = None
        self.output: str = "auto"
        self.format: str | None = None
        self.color: bool | None = None
        self.verbose: bool = False
        self.quiet: bool = False

    def writer(self, piped_default: str = "raw"):
        from iotctl.output import make_writer

        return make_writer(self.output, self.format, piped_default)


def settings(ctx: click.Context | None = None) -> Settings:
    ctx = ctx or click.get_current_context()
    return ctx.find_root().ensure_object(Settings)


def status(text: str, tty_only: bool = False) -> None:
    """A status line on stderr, unless --quiet; with `tty_only`, only when stderr is a
    terminal (or with --verbose): confirmations a script does not need."""
    import sys

    try:
        s = settings()
        quiet, verbose = s.quiet, s.verbose
    except RuntimeError:
        quiet, verbose = False, False
    if quiet or (tty_only and not verbose and not sys.stderr.isatty()):
        return
    sys.stderr.write(f"iotctl: {text}\n")
    sys.stderr.flush()


def warn(text: str) -> None:
    import sys

    sys.stderr.write(f"iotctl: warning: {text}\n")
    sys.stderr.flush()


GLOBAL_EPILOG = ("Global options (--profile, -o/--output, -F/--format, --color/--no-color, "
                 "-v/--verbose, --quiet) are accepted here too; see 'iotctl --help'.")


def _with_globals(params: list[click.Parameter] | None) -> list[click.Parameter]:
    from iotctl.options import global_params

    return list(params or []) + global_params(root=False)


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


class Command(QuickParser, click.Command):
    """A leaf command: takes the global options too (hidden from its help)."""

    def __init__(self, *args, **kwargs):
        kwargs["params"] = _with_globals(kwargs.get("params"))
        kwargs.setdefault("epilog", GLOBAL_EPILOG)
        kwargs.setdefault("context_settings", {}).setdefault("max_content_width", 100)
        super().__init__(*args, **kwargs)


class ProtocolGroup(QuickParser, click.Group):
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
        from iotctl.profiles import ProfileSection

        section = ProfileSection(self.protocol)
        ctx.default_map = {name: section for name in self.commands}
        return super().invoke(ctx)

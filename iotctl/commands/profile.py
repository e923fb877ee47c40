"""`iotctl profile list|show|add|set|unset|remove|use|path`."""

from __future__ import annotations

import click

from iotctl import profiles, registry
from iotctl.groups import Command, Group
from iotctl.settings import status
from iotctl.errors import UsageError


def _complete(ctx, param, incomplete):
    return [n for n in profiles.list_profiles() if n.startswith(incomplete)]


def _parse_assignment(text: str) -> tuple[str, str, object]:
    """`mqtt.port=8883` -> ("mqtt", "port", 8883). Values are TOML when they parse as such."""
    import tomllib

    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise UsageError(f"bad setting {text!r}", "write PROTOCOL.KEY=VALUE, e.g. mqtt.port=8883")
    left, raw = text.split("=", 1)
    proto, key = left.split(".", 1)
    option = _check_key(proto, key)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    if option is not None:
        _check_value(proto, key, option, value)
    return proto, key, value


def _check_key(proto: str, key: str):
    """The option a profile key sets (None for KEY_env/KEY_cmd); unknown keys are errors."""
    proto = proto.strip()
    if proto not in registry.names():
        raise UsageError(f"unknown protocol {proto!r}", f"choose from {', '.join(registry.names())}")
    known = protocol_options(proto)
    base = key[:-4] if key.endswith(profiles.INDIRECT) else key
    if known and key not in known and base not in known:
        raise UsageError(f"unknown setting {proto}.{key}",
                         f"{proto} commands have no option --{key.replace('_', '-')}")
    return known.get(key)


def _check_value(proto: str, key: str, option: click.Option, value) -> None:
    """A value the option would refuse is refused now, not when the profile is used."""
    values = value if option.multiple and isinstance(value, list) else [value]
    for item in values:
        try:
            option.type.convert(item, option, None)
        except click.BadParameter as exc:
            raise UsageError(f"bad value for {proto}.{key}", exc.format_message()) from None


def protocol_options(proto: str) -> dict[str, click.Option]:
    """Every option of a protocol's commands (importing only its cli module)."""
    from iotctl.cli import cli
    from iotctl.groups import options_of

    group = cli.get_command(click.Context(cli), proto)
    return options_of(group) if group is not None else {}


@click.group(cls=Group)
def group():
    """Manage connection profiles.

    A profile is a TOML file with one table per protocol; its keys are long option
    names with '-' written '_'. Command line and IOTCTL_<PROTO>_<OPTION> win over it.

    \b
    iotctl profile add lab mqtt.host=broker.lab mqtt.port=8883 mqtt.tls=true \\
        mqtt.username=dev mqtt.password_env=LAB_PASSWORD
    iotctl profile use lab
    iotctl profile show lab
    """


@group.command("list")
def list_():
    """List profiles ('*' marks the one chosen by 'profile use')."""
    chosen = profiles.current()
    for name in profiles.list_profiles():
        click.echo(f"{'*' if name == chosen else ' '} {name}")


@group.command()
@click.argument("name", required=False, shell_complete=_complete)
@click.option("--show-secrets", is_flag=True, help="Print secrets instead of masking them.")
def show(name, show_secrets):
    """Print a profile (the active one by default), secrets masked."""
    import tomli_w

    from iotctl.settings import current as settings

    name = name or profiles.active_name(settings().profile)
    if not name:
        raise UsageError("no profile chosen", "name one, or choose one with 'iotctl profile use NAME'")
    data = profiles.load(name)
    click.echo(f"# {profiles.path_for(name)}")
    click.echo(tomli_w.dumps(data if show_secrets else profiles.masked(data)), nl=False)


@group.command()
@click.argument("name")
@click.argument("settings_", metavar="PROTOCOL.KEY=VALUE...", nargs=-1)
@click.option("--force", is_flag=True, help="Replace a profile of that name.")
def add(name, settings_, force):
    """Create a profile from PROTOCOL.KEY=VALUE settings.

    \b
    iotctl profile add lab mqtt.host=broker.lab mqtt.port=1884
    """
    path = profiles.path_for(profiles.valid_name(name))
    if path.exists() and not force:
        raise UsageError(f"profile {name!r} exists", f"{path}; use 'profile set' or --force")
    data: dict = {}
    for text in settings_:
        proto, key, value = _parse_assignment(text)
        data.setdefault(proto, {})[key] = value
    status(f"wrote {profiles.save(name, data)}", tty_only=True)


@group.command("set")
@click.argument("name", shell_complete=_complete)
@click.argument("settings_", metavar="PROTOCOL.KEY=VALUE...", nargs=-1, required=True)
def set_(name, settings_):
    """Set keys in a profile (created if missing)."""
    profiles.valid_name(name)
    data = profiles.load(name, missing_ok=True)
    for text in settings_:
        proto, key, value = _parse_assignment(text)
        data.setdefault(proto, {})[key] = value
    status(f"wrote {profiles.save(name, data)}", tty_only=True)


@group.command()
@click.argument("name", shell_complete=_complete)
@click.argument("keys", metavar="PROTOCOL.KEY...", nargs=-1, required=True)
def unset(name, keys):
    """Remove keys from a profile."""
    profiles.valid_name(name)
    data = profiles.load(name)
    for text in keys:
        if "." not in text:
            raise UsageError(f"bad key {text!r}", "write PROTOCOL.KEY, e.g. mqtt.port")
        proto, key = text.split(".", 1)
        table = data.get(proto) or {}
        if key not in table:
            raise UsageError(f"{text} is not set in profile {name!r}")
        del table[key]
        if not table:
            data.pop(proto, None)
    status(f"wrote {profiles.save(name, data)}", tty_only=True)


@group.command()
@click.argument("name", shell_complete=_complete)
def remove(name):
    """Delete a profile."""
    path = profiles.path_for(profiles.valid_name(name))
    try:
        path.unlink()
    except FileNotFoundError:
        raise UsageError(f"no profile {name!r}", f"{path} does not exist") from None
    if profiles.current() == name:
        profiles.set_current(None)
    status(f"removed {path}", tty_only=True)


@group.command()
@click.argument("name", required=False, shell_complete=_complete)
@click.option("--none", "clear", is_flag=True, help="Use no profile by default.")
def use(name, clear):
    """Make NAME the profile used when --profile is not given."""
    if clear:
        profiles.set_current(None)
        status("no profile in use", tty_only=True)
        return
    if not name:
        raise UsageError("missing profile name", "give NAME or --none")
    profiles.load(profiles.valid_name(name))
    profiles.set_current(name)
    status(f"using profile {name!r}", tty_only=True)


@group.command()
@click.argument("name", required=False, shell_complete=_complete)
def path(name):
    """Print the profiles folder, or the file of profile NAME."""
    click.echo(str(profiles.path_for(name) if name else profiles.profiles_dir()))

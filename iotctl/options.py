"""Every shared option, defined once, as decorator factories.

- `global_params()`       the global options (root, and hidden on every command)
- `connection_options()`  URL, host, port, credentials and TLS for any protocol
- `payload_options()`     MESSAGE, -m, -f, -s, -l, --null, --encode, --replay, --speed
- `receive_options()`     -C/--count, -W/--timeout, --save
"""

from __future__ import annotations

import functools
from typing import Callable

import click

from iotctl.output import MODES


def shared(option_decorators: list[Callable]) -> Callable:
    """One decorator applying `option_decorators`, whose Option objects are built once
    and shared by every command it decorates.

    Building ~30 options for each command of a group cost milliseconds at every start,
    although only one command runs. Sharing is safe: an Option keeps no per-run state
    (values live in the click Context, and IOTCTL_<PROTO>_<OPTION> comes from the
    context's auto_envvar_prefix, not from the Option)."""
    built: list[click.Parameter] = []

    def apply(f):
        if not built:
            def probe():
                pass

            for decorate in reversed(option_decorators):
                probe = decorate(probe)
            built.extend(probe.__click_params__)
        f.__dict__.setdefault("__click_params__", []).extend(built)
        return f

    return apply


def shared_factory(factory: Callable) -> Callable:
    """Cache a decorator factory by its arguments, so equal calls share Option objects."""
    cache: dict = {}

    @functools.wraps(factory)
    def get(*args, **kwargs):
        # dict arguments (a protocol's scheme table) are module constants: key them by identity
        key = tuple(id(a) if isinstance(a, dict) else a for a in args) + tuple(sorted(kwargs.items()))
        if key not in cache:
            cache[key] = factory(*args, **kwargs)
        return cache[key]

    return get


# --------------------------------------------------------------------------- global


def _complete_profiles(ctx, param, incomplete):
    from iotctl.profiles import list_profiles

    return [name for name in list_profiles() if name.startswith(incomplete)]


def _store_global(ctx: click.Context, param: click.Parameter, value):
    from iotctl.context import settings

    root = ctx.parent is None
    source = ctx.get_parameter_source(param.name)
    if root or source is click.core.ParameterSource.COMMANDLINE:
        s = settings(ctx)
        setattr(s, param.name, value)
        if param.name == "format" and value is not None and s.output == "auto":
            s.output = "template"
        if param.name == "color":
            from iotctl.output import console

            console.set_color(value)
    return value


_LEAF_GLOBALS: list[click.Option] = []


def global_params(root: bool) -> list[click.Option]:
    """The global options: for the root (with environment variables), or the hidden
    copy every command carries (built once, shared by all commands)."""
    if not root and _LEAF_GLOBALS:
        return list(_LEAF_GLOBALS)

    def opt(*decls, envvar=None, **kw):
        o = click.Option(decls, expose_value=False, callback=_store_global,
                         envvar=envvar if root else None, allow_from_autoenv=root, hidden=not root, **kw)
        o.iotctl_global = True
        return o

    params = [
        opt("--profile", metavar="NAME|PATH", envvar="IOTCTL_PROFILE", is_eager=True,
            help="Profile to take defaults from (name or path to a TOML file).",
            shell_complete=_complete_profiles),
        opt("-o", "--output", type=click.Choice(MODES), default="auto", envvar="IOTCTL_OUTPUT",
            show_default=True,
            help="Output mode: pretty on a terminal, raw (payload bytes) when piped."),
        opt("-F", "--format", metavar="TEMPLATE", envvar="IOTCTL_FORMAT",
            help="Template such as '{ts} {address} {payload} {meta[qos]}' (implies -o template)."),
        opt("--color/--no-color", default=None, envvar="IOTCTL_COLOR",
            help="Force colour on or off (NO_COLOR and FORCE_COLOR are honoured)."),
        opt("-v", "--verbose", is_flag=True, default=False, envvar="IOTCTL_VERBOSE",
            help="Protocol trace on stderr; tracebacks on errors."),
        opt("--quiet", is_flag=True, default=False, envvar="IOTCTL_QUIET",
            help="No status lines on stderr (errors are still shown)."),
    ]
    if not root:
        _LEAF_GLOBALS.extend(params)
    return params


# --------------------------------------------------------------------------- connection


@shared_factory
def connection_options(protocol: str, schemes: dict, default_scheme: str,
                       tls: bool = True, ws: bool = False) -> Callable:
    """Connection options shared by every command of a protocol; the command receives
    one `endpoint: Endpoint` argument instead of the separate values."""
    default_port = schemes[default_scheme].port
    tls_schemes = [s for s, v in schemes.items() if v.tls]

    options = [
        click.option("--url", metavar="URL",
                     help=f"Connect to URL ({', '.join(s + '://' for s in schemes)}"
                          "user:pass@host:port); separate options given on the command line win."),
        click.option("-h", "--host", default="localhost", show_default=True, help="Host to connect to."),
        click.option("-p", "--port", type=click.IntRange(1, 65535), default=None,
                     help=f"Port [default: {default_port}"
                          + (f", {schemes[tls_schemes[0]].port} with TLS" if tls and tls_schemes else "")
                          + "]."),
        click.option("-u", "--username", help="User name."),
        click.option("-P", "--password", help="Password (a profile can name password_env or password_cmd)."),
    ]
    if tls:
        options += [
            click.option("--tls", is_flag=True, default=False, help="Use TLS."),
            click.option("--cafile", type=click.Path(dir_okay=False),
                         help="CA certificate(s) to verify the server with (implies --tls)."),
            click.option("--cert", type=click.Path(dir_okay=False), help="Client certificate (PEM)."),
            click.option("--key", type=click.Path(dir_okay=False), help="Client private key (PEM)."),
            click.option("--insecure", is_flag=True, default=False,
                         help="Do not verify the server certificate or host name."),
            click.option("--alpn", multiple=True, metavar="PROTO", help="TLS ALPN protocol (repeatable)."),
        ]
    if ws:
        options += [
            click.option("--ws", is_flag=True, default=False, help="Connect over websockets."),
            click.option("--ws-path", metavar="PATH", help="Websocket path (MQTT: /mqtt)."),
        ]
    with_options = shared(options)

    def decorator(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            from iotctl.endpoint import build_endpoint

            ctx = click.get_current_context()
            kwargs["endpoint"] = build_endpoint(ctx, kwargs, schemes, default_scheme, tls)
            return f(*args, **kwargs)

        return with_options(wrapper)

    return decorator


# --------------------------------------------------------------------------- payload


@shared_factory
def payload_options(replay: bool = True) -> Callable:
    """The shared payload inputs; the command receives one `payload: PayloadSpec`."""
    from iotctl.codecs import ENCODINGS

    options = [
        click.argument("message_arg", metavar="[MESSAGE]", required=False),
        click.option("-m", "--message", help="The message to send."),
        click.option("-f", "--file", type=click.Path(dir_okay=False, allow_dash=True),
                     help="Send the contents of FILE as one message."),
        click.option("-s", "--stdin", "stdin_", is_flag=True, default=False,
                     help="Send all of stdin as one message."),
        click.option("-l", "--lines", is_flag=True, default=False,
                     help="Send each line of stdin as a message."),
        click.option("--null", is_flag=True, default=False, help="Send an empty payload."),
        click.option("--encode", type=click.Choice(ENCODINGS),
                     help="Turn the text given into bytes: JSON (validated), CBOR (from JSON text), "
                          "hex or base64."),
    ]
    if replay:
        options += [
            click.option("--replay", metavar="FILE.jsonl", type=click.Path(dir_okay=False, allow_dash=True),
                         help="Send a captured envelope stream (-o jsonl output)."),
            click.option("--speed", type=float, default=None,
                         help="With --replay: keep the captured timing, sped up by this factor "
                              "(1 = real time, 0 = no delay)."),
        ]
    with_options = shared(options)

    def decorator(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            from iotctl.errors import UsageError
            from iotctl.payload import PayloadSpec

            positional = kwargs.pop("message_arg")
            message = kwargs.pop("message")
            if positional is not None and message is not None:
                raise UsageError("conflicting payload options", "MESSAGE and -m given; choose one")
            kwargs["payload"] = PayloadSpec(
                message=positional if positional is not None else message,
                file=kwargs.pop("file"), stdin=kwargs.pop("stdin_"), lines=kwargs.pop("lines"),
                null=kwargs.pop("null"), encode=kwargs.pop("encode"),
                replay=kwargs.pop("replay", None), speed=kwargs.pop("speed", None))
            return f(*args, **kwargs)

        return with_options(wrapper)

    return decorator


# --------------------------------------------------------------------------- receiving


@shared_factory
def receive_options(default_timeout: float | None = None) -> Callable:
    """-C/--count, -W/--timeout and --save; the command receives `receive: ReceiveSpec`."""

    options = [
        click.option("-C", "--count", type=click.IntRange(min=1), default=None,
                     help="Stop after COUNT messages."),
        click.option("-W", "--timeout", type=click.FloatRange(min=0, min_open=True),
                     default=default_timeout,
                     help="Give up after TIMEOUT seconds (exit 5 if --count was not reached, "
                          "or nothing arrived)."),
        click.option("--save", type=click.Path(dir_okay=False, writable=True), metavar="FILE.jsonl",
                     help="Also append every message received to FILE as JSON lines "
                          "(replayable with --replay)."),
    ]
    with_options = shared(options)

    def decorator(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            from iotctl.receive import ReceiveSpec

            kwargs["receive"] = ReceiveSpec(kwargs.pop("count"), kwargs.pop("timeout"), kwargs.pop("save"))
            return f(*args, **kwargs)

        return with_options(wrapper)

    return decorator

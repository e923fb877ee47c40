"""Every shared option, defined once, as decorator factories.

- `bundle()`              a list of options that reaches the command as one object
- `global_params()`       the global options (root, and hidden on every command)
- `connection_options()`  URL, host/port or JID, credentials and TLS for any protocol
- `payload_options()`     MESSAGE, -m, -f, -s, -l, --null, --encode, --replay, --speed
- `send_options()`        --repeat, --interval (with the payload: the send driver's input)
- `receive_options()`     -C/--count, -W/--timeout, --idle-timeout, --save
- `timeout_option()`      -W/--timeout for one-shot commands
- `kv_option()`           a repeatable KEY=VALUE option (properties, headers, arguments)

Option objects are built once per distinct factory call and shared by every command
that uses them (see `bundle`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import click

from iotctl.output import MODES


class Values(dict):
    """The values of a bundle without a builder: `values.name` or `values["name"]`."""

    __getattr__ = dict.__getitem__


def _params_of(option_decorators: list[Callable]) -> list[click.Parameter]:
    def probe():
        pass

    for decorate in reversed(option_decorators):
        probe = decorate(probe)
    return list(probe.__click_params__)


def bundle(target: str | None, options: list[Callable], build: Callable[..., Any] | None = None,
           consumes: tuple[str, ...] = ()) -> Callable:
    """A decorator adding `options` to a command. Their values are taken out of the
    command's arguments and given to it as one argument `target`: `build(**values)`
    (build may read click's current context), or a `Values` dict without `build`.
    `consumes` names arguments made by outer bundles (e.g. "endpoint") that are taken
    out too and passed to `build`. With `target` None the options are only added.

    The Option objects are built once and shared by every command decorated, which
    keeps start-up cheap (only one command runs). Sharing is safe: an Option keeps no
    per-run state, and IOTCTL_<PROTO>_<OPTION> comes from the context's
    auto_envvar_prefix, not from the Option."""
    built: list[click.Parameter] = []

    def decorator(f):
        if not built:
            built.extend(_params_of(options))
        if target is None:
            f.__dict__.setdefault("__click_params__", []).extend(built)
            return f
        names = [p.name for p in built] + list(consumes)

        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            values = {name: kwargs.pop(name) for name in names if name in kwargs}
            kwargs[target] = build(**values) if build is not None else Values(values)
            return f(*args, **kwargs)

        wrapper.__dict__["__click_params__"] = list(getattr(f, "__click_params__", [])) + built
        # the chain of builds, outermost first, so `built_arguments` can apply them without
        # running the command (a URL endpoint opens a protocol through the same builds)
        wrapper.__dict__["__iotctl_bundles__"] = ([(target, names, build)]
                                                  + list(getattr(f, "__iotctl_bundles__", [])))
        return wrapper

    return decorator


def built_arguments(callback: Callable, params: dict) -> dict:
    """The arguments a command's body receives for the parsed option values `params`
    (its bundles' builds applied, outermost first): what a URL endpoint hands to a
    protocol's factory. Must run inside the command's click context."""
    values = dict(params)
    for target, names, build in getattr(callback, "__iotctl_bundles__", []):
        taken = {name: values.pop(name) for name in names if name in values}
        values[target] = build(**taken) if build is not None else Values(taken)
    return values


def shared_factory(factory: Callable) -> Callable:
    """Cache a decorator factory by its arguments, so equal calls share Option objects."""
    cache: dict = {}

    @functools.wraps(factory)
    def get(*args, **kwargs):
        # dict arguments (a protocol's scheme table) are module constants: key them by identity
        key = (tuple(id(a) if isinstance(a, dict) else a for a in args)
               + tuple((k, id(v) if isinstance(v, dict) else v) for k, v in sorted(kwargs.items())))
        if key not in cache:
            cache[key] = factory(*args, **kwargs)
        return cache[key]

    return get


# --------------------------------------------------------------------------- global


def _complete_profiles(ctx, param, incomplete):
    from iotctl.profiles import list_profiles

    return [name for name in list_profiles() if name.startswith(incomplete)]


def _store_global(ctx: click.Context, param: click.Parameter, value):
    from iotctl.settings import Settings

    root = ctx.parent is None
    source = ctx.get_parameter_source(param.name)
    if root or source is click.core.ParameterSource.COMMANDLINE:
        s = ctx.find_root().ensure_object(Settings)
        setattr(s, param.name, value)
        if param.name == "format" and value is not None and s.output == "auto":
            s.output = "template"
        if param.name == "format" and value is not None:
            from iotctl.output.template import Template

            Template(value)  # a bad template is a usage error before anything connects
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
        opt("-d", "--debug", "--verbose", "debug", is_flag=True, default=False,
            envvar=["IOTCTL_DEBUG", "IOTCTL_VERBOSE"],
            help="Protocol trace on stderr and tracebacks on errors (as mosquitto's -d)."),
        opt("--quiet", is_flag=True, default=False, envvar="IOTCTL_QUIET",
            help="No status lines on stderr (errors are still shown)."),
    ]
    if not root:
        _LEAF_GLOBALS.extend(params)
    return params


# --------------------------------------------------------------------------- small shared options


@shared_factory
def timeout_option(default: float | None = 10.0, help: str = "Seconds to wait for the answer "
                   "(exit 5 when none comes).") -> Callable:
    """-W/--timeout of a one-shot command (receive_options has its own)."""
    return bundle(None, [click.option(
        "-W", "--timeout", type=click.FloatRange(min=0, min_open=True), default=default, metavar="SECONDS",
        show_default=default is not None, help=help)])


def parse_pair(text: str, typed: bool = False) -> tuple[str, Any]:
    """`KEY=VALUE` -> (KEY, "VALUE"). With `typed`: `KEY:int=5`, `KEY:float=1.5`,
    `KEY:bool=true`, `KEY:json=[1,2]` and `KEY:str=007` give typed values. Raises
    ValueError with the reason."""
    if "=" not in text:
        raise ValueError(f"{text!r} is not KEY=VALUE")
    key, value = text.split("=", 1)
    if not typed or ":" not in key:
        if not key:
            raise ValueError(f"{text!r} has an empty key")
        return key, value
    key, kind = key.rsplit(":", 1)
    if not key:
        raise ValueError(f"{text!r} has an empty key")
    try:
        if kind == "str":
            return key, value
        if kind == "int":
            return key, int(value)
        if kind == "float":
            return key, float(value)
        if kind == "bool":
            lowered = value.strip().lower()
            if lowered in ("true", "yes", "1", "on"):
                return key, True
            if lowered in ("false", "no", "0", "off"):
                return key, False
            raise ValueError("not true or false")
        if kind == "json":
            import json

            return key, json.loads(value)
    except ValueError as exc:
        raise ValueError(f"{text!r}: the value is not a {kind} ({exc})") from None
    raise ValueError(f"{text!r}: unknown type {kind!r} (str, int, float, bool or json)")


@shared_factory
def kv_option(*decls: str, help: str, typed: bool = False, metavar: str = "KEY=VALUE") -> Callable:
    """A repeatable KEY=VALUE option whose value is a list of (key, value) pairs."""

    def callback(ctx, param, values):
        pairs = []
        for text in values:
            try:
                pairs.append(parse_pair(text, typed))
            except ValueError as exc:
                raise click.BadParameter(str(exc), ctx, param) from None
        return pairs

    if typed:
        help += " Typed values: KEY:int=5, KEY:bool=true, KEY:json=[1,2]."
    return bundle(None, [click.option(*decls, multiple=True, metavar=metavar, callback=callback, help=help)])


# --------------------------------------------------------------------------- connection


@shared_factory
def connection_options(schemes: dict, default_scheme: str, tls: bool = True, ws: bool = False,
                       identity: str = "user", default_host: str = "localhost", credentials: bool = True,
                       url_option: str = "--url", host_port: bool = True) -> Callable:
    """Connection options shared by every command of a protocol; the command receives
    one `endpoint: Endpoint` argument instead of the separate values.

    identity "user": --url, -h/--host, -p/--port, -u/--username, -P/--password
    (URL- and host/port-addressed protocols: MQTT, AMQP, STOMP, MQTT-SN);
    `credentials=False` leaves out -u/-P (a protocol without logins); `url_option`
    spells the URL option otherwise (e.g. "--broker" for a gateway's upstream) and
    `host_port=False` leaves out -h/-p (the URL alone says where, `default_host` when
    absent), so that a command may use those flags for something else;
    identity "jid": --jid, -P/--password, --server HOST[:PORT] (XMPP: the host comes
    from the JID's domain unless --server names one)."""
    from iotctl.endpoint import build_endpoint

    default_port = schemes[default_scheme].port
    # its own name (and so profile key and IOTCTL_<PROTO>_<NAME>) when spelt otherwise
    url_dest = url_option.lstrip("-").replace("-", "_")
    tls_schemes = [s for s, v in schemes.items() if v.tls]
    port_help = (f"Port [default: {default_port}"
                 + (f", {schemes[tls_schemes[0]].port} with TLS"
                    if tls and tls_schemes and tls_schemes[0] != default_scheme else "") + "].")
    if identity == "jid":
        options = [
            click.option("--jid", metavar="JID", help="Your address (user@domain[/resource])."),
            click.option("-P", "--password", help=_PASSWORD_HELP),
            click.option("--server", metavar="HOST[:PORT]",
                         help=f"Connect to this server instead of the JID's domain. {port_help}"),
        ]
    else:
        options = [
            click.option(url_option, url_dest, metavar="URL",
                         help=f"Connect to URL ({', '.join(s + '://' for s in schemes)}"
                              + ("user:pass@" if credentials else "") + "host:port)"
                              + ("; separate options given on the command line win." if host_port else
                                 f" [default: {default_scheme}://{default_host}:{default_port}].")),
        ]
        if host_port:
            options += [
                click.option("-h", "--host", default=default_host, show_default=True, help="Host to connect to."),
                click.option("-p", "--port", type=click.IntRange(1, 65535), default=None, help=port_help),
            ]
        if credentials:
            options += [
                click.option("-u", "--username", help="User name."),
                click.option("-P", "--password", help=_PASSWORD_HELP),
            ]
    if tls:
        if identity != "jid":  # XMPP always negotiates TLS (STARTTLS or direct)
            options.append(click.option("--tls", is_flag=True, default=False, help="Use TLS."))
        options += [
            click.option("--cafile", type=click.Path(dir_okay=False),
                         help="CA certificate(s) to verify the server with"
                              + (" (implies --tls)." if identity != "jid" else ".")),
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

    def build(**values):
        values["url"] = values.pop(url_dest, None)  # JID-addressed protocols have no URL
        if not host_port and identity != "jid":
            values["host"] = default_host  # the URL's host replaces it
        return build_endpoint(click.get_current_context(), values, schemes, default_scheme)

    return bundle("endpoint", options, build)


_PASSWORD_HELP = ("Password; '-P -' asks for it on the terminal. A password on the command line "
                  "(-P or --url) is seen by every user in 'ps': prefer '-P -', IOTCTL_<PROTO>_PASSWORD "
                  "or a profile's password_env/password_cmd.")


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

    def build(message_arg, message, file, stdin_, lines, null, encode, replay=None, speed=None):
        from iotctl.errors import UsageError
        from iotctl.payload import PayloadSpec

        if message_arg is not None and message is not None:
            raise UsageError("conflicting payload options", "MESSAGE and -m given; choose one")
        return PayloadSpec(message=message_arg if message_arg is not None else message, file=file,
                           stdin=stdin_, lines=lines, null=null, encode=encode, replay=replay, speed=speed)

    return bundle("payload", options, build)


@shared_factory
def send_options() -> Callable:
    """--repeat, --interval and --failed; the command receives `sending: SendSpec`."""
    options = [
        click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Send the message this many times."),
        click.option("--interval", type=click.FloatRange(min=0), default=0.0, show_default=True,
                     help="Seconds between repeated messages."),
        click.option("--failed", type=click.Path(dir_okay=False, writable=True), metavar="FILE.jsonl",
                     help="When stopped early, write every message not acknowledged to FILE as "
                          "envelope lines (send them again with --replay FILE)."),
    ]

    def build(repeat, interval, failed):
        from iotctl.send import SendSpec

        return SendSpec(repeat, interval, failed)

    return bundle("sending", options, build)


# --------------------------------------------------------------------------- receiving


@shared_factory
def receive_options(default_timeout: float | None = None, idle: str | None = None,
                    reconnect: bool = False) -> Callable:
    """-C/--count, -W/--timeout, --save, and with `idle` --idle-timeout ("ok": stop
    successfully once nothing arrived for that long, as a drained queue; "error":
    give up with exit 5); with `reconnect`, --no-reconnect (by default a lost
    connection is connected again with backoff); the command receives
    `receive: ReceiveSpec`."""
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
    if idle is not None:
        options.append(click.option(
            "--idle-timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
            help=("Stop (exit 0) once nothing has arrived for this long." if idle == "ok" else
                  "Give up (exit 5) when nothing arrives for this long.")))
    if reconnect:
        options.append(click.option(
            "--reconnect/--no-reconnect", default=True, show_default=True,
            help="After a lost connection, connect again with backoff (a status line each time); "
                 "--no-reconnect exits 3 instead."))

    def build(count, timeout, save, idle_timeout=None, reconnect=False):
        from iotctl.receive import ReceiveSpec

        return ReceiveSpec(count, timeout, save, idle_timeout, idle_ok=idle == "ok", reconnect=reconnect)

    return bundle("receive", options, build)


# --------------------------------------------------------------------------- check


@shared_factory
def check_options() -> Callable:
    """--probe/--no-probe, --max-payload, -W of `iotctl check` and `mqtt check`; the
    command receives `checking: Values(probe, max_payload, timeout)`."""
    return bundle("checking", [
        click.option("--probe/--no-probe", default=None,
                     help="Also try what needs publishing (round trips, retain, limits), on a private prefix "
                          "cleaned up after [default: on against 127.0.0.1/localhost only, so a check of a "
                          "production broker writes nothing unless asked]."),
        click.option("--max-payload", type=click.IntRange(min=1, max=256 << 20), default=1 << 20, show_default=True,
                     metavar="BYTES", help="The largest payload the probe tries."),
        click.option("-W", "--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
                     metavar="SECONDS", help="Bound for each step of the check."),
    ])


# --------------------------------------------------------------------------- watching


class _Size(click.ParamType):
    name = "SIZE"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        from iotctl.watching import parse_size

        from iotctl.errors import IotctlError

        try:
            size = parse_size(value)
        except IotctlError as exc:
            self.fail(exc.why or exc.what, param, ctx)
        if size < 64 << 10:
            self.fail(f"{value!r} is less than 64KiB", param, ctx)
        return size


@shared_factory
def watch_options() -> Callable:
    """The live view's options (`watch URL`, `mqtt watch`): --memory, -W, --snapshot,
    --filter, --history; the command receives `view: watching.WatchSpec`."""
    options = [
        click.option("--memory", type=_Size(), default="64MiB", show_default=True,
                     help="One memory budget for the whole view: beyond it whole topics are evicted, least "
                          "recently updated first (counted and shown). Units: KiB MiB GiB, kB MB GB."),
        click.option("-W", "--timeout", "seconds", type=click.FloatRange(min=0, min_open=True), default=None,
                     metavar="SECONDS",
                     help="With --snapshot (or without a terminal): receive this long, then print the tree "
                          "[default: 5]. On the full screen: close after this long [default: never]."),
        click.option("--snapshot", is_flag=True, default=False,
                     help="Print the tree once (-o text or json) instead of the full-screen view."),
        click.option("--filter", "filter_text", metavar="TEXT",
                     help="Show only addresses containing TEXT (case-insensitive); '/' changes it on the screen."),
        click.option("--history", type=click.IntRange(min=1, max=100_000), default=50, show_default=True, metavar="N",
                     help="Recent messages kept per topic (within --memory)."),
    ]

    def build(memory, seconds, snapshot, filter_text, history):
        from iotctl.watching import WatchSpec

        return WatchSpec(memory, seconds, snapshot, filter_text, history)

    return bundle("view", options, build)

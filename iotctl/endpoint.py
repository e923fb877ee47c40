"""Where to connect: the parts of --url and the separate connection options, merged."""

from __future__ import annotations

import click

from iotctl.errors import UsageError


class Endpoint:
    """Where to connect and as whom; built from --url (or --jid/--server) and the
    individual options.

    (Plain classes rather than dataclasses here and in the protocol clients: the
    dataclass code generation costs time on every start.)"""

    def __init__(self, scheme: str, host: str, port: int, username: str | None = None,
                 password: str | None = None, path: str | None = None, tls: bool = False, ws: bool = False,
                 cafile: str | None = None, cert: str | None = None, key: str | None = None,
                 insecure: bool = False, alpn: tuple[str, ...] = (), server_given: bool = True):
        self.scheme, self.host, self.port = scheme, host, port
        self.username, self.password, self.path = username, password, path
        self.tls, self.ws = tls, ws
        self.cafile, self.cert, self.key, self.insecure, self.alpn = cafile, cert, key, insecure, alpn
        # False when the host was only derived (from a JID's domain), so a protocol may look it up (SRV)
        self.server_given = server_given

    def ssl_context(self):
        from iotctl.tls import make_ssl_context

        return make_ssl_context(self.cafile, self.cert, self.key, self.insecure, self.alpn)

    @property
    def display(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path or ''}"


class Scheme:
    """A URL scheme of a protocol: whether it means TLS, websockets, and its default port."""

    __slots__ = ("tls", "ws", "port")

    def __init__(self, tls: bool, ws: bool, port: int):
        self.tls, self.ws, self.port = tls, ws, port


def mask_url(url: str) -> str:
    """The URL with its password replaced by ****, for every message that shows one; so
    is a secret given as a query or fragment option (`#psk=...`, `?password=...`)."""
    import re

    url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/@:]*:)[^/]*@", r"\1****@", url)
    return re.sub(r"([?#&](?:psk|password|passcode)=)[^&#]*", r"\1****", url, flags=re.I)


def parse_url(url: str, schemes: dict[str, Scheme]):
    """Split a URL into its parts; a bad URL is a usage error (exit 2) whose message
    never shows the password."""
    from urllib.parse import unquote, urlsplit

    shown = mask_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"bad URL {shown!r}", str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise UsageError(f"bad URL {shown!r}",
                         f"scheme must be one of {', '.join(s + '://' for s in schemes)}")
    if not parts.hostname:
        raise UsageError(f"bad URL {shown!r}", "no host")
    return {
        "scheme": scheme,
        "host": parts.hostname,
        "port": port,
        "username": unquote(parts.username) if parts.username is not None else None,
        "password": unquote(parts.password) if parts.password is not None else None,
        "path": parts.path or None,
        "query": parts.query,
    }


def build_endpoint(ctx: click.Context, kw: dict, schemes: dict[str, Scheme],
                   default_scheme: str) -> Endpoint:
    """The Endpoint from the values of options.connection_options (popped from `kw`)."""
    from click.core import ParameterSource

    url = kw.pop("url", None)
    jid = kw.pop("jid", None)
    server = kw.pop("server", None)
    present = {name for name in ("host", "port", "username", "password") if name in kw}
    values = {name: kw.pop(name, None) for name in ("host", "port", "username", "password")}
    tls_values = {name: kw.pop(name, None) for name in ("tls", "cafile", "cert", "key", "insecure", "alpn")}
    want_ws = bool(kw.pop("ws", False))
    ws_path = kw.pop("ws_path", None)

    def given(name: str) -> bool:
        # only the connection options themselves (a command may have a --port of its own)
        return name in present and ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE

    scheme = default_scheme
    path = None
    server_given = True
    if url:
        parsed = parse_url(url, schemes)
        scheme = parsed["scheme"]
        path = parsed["path"]
        for name in ("host", "port", "username", "password"):
            if parsed[name] is not None and not given(name):
                values[name] = parsed[name]
    if jid is not None or server is not None or "jid" in ctx.params:
        values["username"] = jid
        if server:
            values["host"], values["port"] = split_host_port(server, "--server")
        elif jid:
            values["host"] = jid.split("@", 1)[-1].split("/", 1)[0]
            server_given = False
        if not values["host"]:
            raise UsageError("no server", "give --jid user@domain (or --server HOST[:PORT])")
    if values["password"] == "-":
        values["password"] = prompt_password(values["username"])
    info = schemes[scheme]
    use_tls = info.tls or bool(tls_values["tls"]) or bool(tls_values["cafile"]) or bool(tls_values["cert"])
    want_ws = want_ws or info.ws
    if (use_tls, want_ws) != (info.tls, info.ws):
        # --tls or --ws with a plain scheme: move to the variant with that transport
        for name, other in schemes.items():
            if (other.tls, other.ws) == (use_tls, want_ws):
                scheme, info = name, other
                break
        else:
            raise UsageError(f"{default_scheme} has no such transport",
                             f"{'TLS' if use_tls else 'plain'}{' websockets' if want_ws else ''}")
    if ws_path:
        path = ws_path
    port = values["port"] or info.port
    return Endpoint(scheme=scheme, host=values["host"], port=port, username=values["username"],
                    password=values["password"], path=path, tls=use_tls, ws=info.ws,
                    cafile=tls_values["cafile"], cert=tls_values["cert"], key=tls_values["key"],
                    insecure=bool(tls_values["insecure"]), alpn=tuple(tls_values["alpn"] or ()),
                    server_given=server_given)


def split_host_port(text: str, what: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]:port` -> (host, port or None); a bad one is exit 2."""
    host, port = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"bad {what} {text!r}", "the port must be a number from 1 to 65535")
        port = int(port)
    if not host:
        raise UsageError(f"bad {what} {text!r}", "no host")
    return host, port


def prompt_password(user: str | None) -> str:
    """`-P -`: ask for the password on the terminal, without echo (never from a pipe,
    which would swallow a payload meant for -s or -l)."""
    import getpass
    import os

    try:  # getpass itself would fall back to reading stdin, with a warning
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        raise UsageError("-P -", "asks for the password on a terminal, and there is none",
                         hint="set IOTCTL_<PROTO>_PASSWORD, or a profile's password_env or password_cmd") from None
    try:
        return getpass.getpass(f"password{' for ' + user if user else ''}: ")
    except EOFError:
        raise UsageError("-P -", "no password given") from None

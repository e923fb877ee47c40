"""Where to connect: the parts of --url and the separate connection options, merged."""

from __future__ import annotations

import click

from iotctl.errors import UsageError


class Endpoint:
    """Where to connect and as whom; built from --url and the individual options.

    (Plain classes rather than dataclasses here and in the protocol clients: the
    dataclass code generation costs time on every start.)"""

    def __init__(self, scheme: str, host: str, port: int, username: str | None = None,
                 password: str | None = None, path: str | None = None, tls: bool = False, ws: bool = False,
                 cafile: str | None = None, cert: str | None = None, key: str | None = None,
                 insecure: bool = False, alpn: tuple[str, ...] = (), extra: dict | None = None):
        self.scheme, self.host, self.port = scheme, host, port
        self.username, self.password, self.path = username, password, path
        self.tls, self.ws = tls, ws
        self.cafile, self.cert, self.key, self.insecure, self.alpn = cafile, cert, key, insecure, alpn
        self.extra = extra if extra is not None else {}

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


def parse_url(url: str, schemes: dict[str, Scheme]):
    """Split a URL into its parts; a bad URL is a usage error (exit 2)."""
    from urllib.parse import unquote, urlsplit

    from iotctl.errors import UsageError

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"bad URL {url!r}", str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise UsageError(f"bad URL {url!r}",
                         f"scheme must be one of {', '.join(s + '://' for s in schemes)}")
    if not parts.hostname:
        raise UsageError(f"bad URL {url!r}", "no host")
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
                   default_scheme: str, tls: bool) -> Endpoint:
    from click.core import ParameterSource

    url = kw.pop("url")
    values = {name: kw.pop(name) for name in ("host", "port", "username", "password")}
    tls_values = {name: kw.pop(name, None) for name in ("tls", "cafile", "cert", "key", "insecure", "alpn")}
    want_ws = bool(kw.pop("ws", False))
    ws_path = kw.pop("ws_path", None)

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE

    scheme = default_scheme
    path = None
    if url:
        parsed = parse_url(url, schemes)
        scheme = parsed["scheme"]
        path = parsed["path"]
        for name in ("host", "port", "username", "password"):
            if parsed[name] is not None and not given(name):
                values[name] = parsed[name]
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
                    insecure=bool(tls_values["insecure"]), alpn=tuple(tls_values["alpn"] or ()))

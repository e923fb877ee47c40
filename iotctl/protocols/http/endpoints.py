"""HTTP endpoints: the sources and the sink that the `http` commands and URLs both open.
No h11 here: client.py and server.py are imported when an endpoint is built.

URLs (options in the #fragment: the query belongs to the server):
- sink `http[s]://user:pass@host:port/path?query#method=put&header=X-A:1`: a request
  per message, the options of `http request` (method: -X, else a captured HTTP
  request's own method, else POST); 2xx/3xx acknowledge, 4xx/5xx refuse.
- source `http[s]://host/events#stream_format=sse`: `http get --stream`, one message per
  server-sent event or NDJSON line.
- source `http+listen://127.0.0.1:8080/hooks#max_size=64k`: `http listen` on that
  address, requests under that path; each answered 2xx once written.
"""

from __future__ import annotations

from iotctl.endpoint import Scheme
from iotctl.errors import UsageError

SCHEMES = {
    "http": Scheme(tls=False, ws=False, port=80),
    "https": Scheme(tls=True, ws=False, port=443),
    "http+listen": Scheme(tls=False, ws=False, port=8080),
}
# what --base-url and the TLS options accept (listening is not connecting)
CONNECT_SCHEMES = {name: s for name, s in SCHEMES.items() if name in ("http", "https")}


def address_args(url, role: str) -> list[str]:
    """The command-line arguments a URL's address part means."""
    if url.scheme == "http+listen":
        if role == "check":
            raise UsageError(f"cannot check {url.shown}", "http+listen:// is a listener (iotctl receives the "
                                                          "requests): there is no server to check",
                             hint="check what it listens to while it runs: iotctl check "
                                  f"http://{url.host}:{url.port or SCHEMES['http+listen'].port}{url.path or '/'}")
        if role != "source":
            raise UsageError(f"bad URL {url.shown!r}", "http+listen:// is a source (it receives requests)")
        return ["--bind", url.host, "--port", str(url.port or SCHEMES["http+listen"].port),
                "--path", url.path or "/"]
    full = url.base + (url.raw_path or "")
    if url.peer_query:
        full += "?" + url.peer_query
    return [full, "--stream"] if role == "source" else [full]


# --------------------------------------------------------------------------- sources


def source(cfg=None, url=None, stream_format="auto", bind=None, port=None, path="/", max_size=None,
           max_pending=256, max_connections=512, status_code=204, log_requests=None, **_ignored):
    """`http get --stream URL` (a Streamer) or, with `bind`, `http listen` (a Listener);
    receive.Receivers, entered to connect or to bind."""
    if bind is not None:
        from iotctl.protocols.http.server import Listener

        if not path.startswith("/"):
            raise UsageError(f"bad --path {path!r}", "a path starts with /")
        return Listener(bind, port, path, max_body=max_size or (1 << 20), max_pending=max_pending,
                        max_connections=max_connections, status=status_code, log_requests=log_requests)
    from iotctl.protocols.http.client import Streamer

    return Streamer(cfg, target(url, cfg), fmt=stream_format,
                    event_limit=max_size or (1 << 20))


# --------------------------------------------------------------------------- sink


def sink(cfg, url=None, method=None, content_type=None, on_response=None, json_=False, **_ignored):
    """The requester (a send.Sender): every message a request to `url` (None: each
    message's own address, a replayed HTTP capture), with `method` (None: a captured
    request's own method, else POST)."""
    from iotctl.protocols.http.client import Requester

    if json_ and content_type is None:  # `#json=true` in a URL: the bodies are JSON
        content_type = "application/json"
    return Requester(cfg, method.upper() if method else None, target(url, cfg) if url else None,
                     on_response=on_response, content_type=content_type)


def target(url: str, cfg=None):
    """The request URL: absolute, httpie's `:PORT/path` (localhost), or a path joined to
    --base-url."""
    from iotctl.protocols.http import fields

    if url.startswith(":"):  # httpie: ':3000/api' is http://localhost:3000/api, ':/x' localhost:80
        rest = url[1:]
        url = "localhost" + (":" + rest if rest[:1].isdigit() else rest)
    elif url.startswith("/") and cfg is not None and cfg.base_url:
        url = cfg.base_url.rstrip("/") + url
    default = "https" if cfg is not None and cfg.endpoint is not None and cfg.endpoint.tls else "http"
    return fields.parse_url(url, default_scheme=default)

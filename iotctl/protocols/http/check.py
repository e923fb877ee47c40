"""`iotctl check http[s]://host/path`: what an HTTP server says about a URL: the status
of a HEAD (a GET when HEAD is not allowed) with its round trip and the connect time,
the Server header, the HTTP version, a redirect's Location, the methods it allows
(OPTIONS, its Allow header), whether the connection stays open for the next request,
how the check logged in, and the TLS rows. Nothing is written: HEAD, GET and OPTIONS
only, with or without --probe. A refused login (401, 407) is exit 4; any other answer
is a finding (exit 0)."""

from __future__ import annotations

import asyncio

from iotctl.checking import Report
from iotctl.errors import AuthError, TimeoutError_


class _TlsEndpoint:
    """What Report.tls needs: the URL's host and port, the run's TLS context."""

    tls = True

    def __init__(self, url, cfg):
        self.host, self.port, self._cfg = url.host, url.port, cfg

    def ssl_context(self):
        return self._cfg.ssl_context()


def check(report: Report, arguments: dict, probe: bool, max_payload: int, timeout: float) -> None:
    from iotctl.protocols.http import client, endpoints, fields

    cfg = arguments["cfg"]
    cfg.timeout = min(cfg.timeout, timeout)
    cfg.connect_timeout = min(cfg.connect_timeout, timeout)
    url = endpoints.target(arguments["url"], cfg)
    if url.tls:
        report.tls(_TlsEndpoint(url, cfg), timeout)
    report.add("server", "url", url.shown)
    from iotctl import aioloop

    client.setup_logging(cfg)
    loop = aioloop.shared()
    http = client.Client(cfg)

    def fetch(method: str):
        async def one():
            try:
                return await asyncio.wait_for(http.fetch(method, url), timeout)
            except asyncio.TimeoutError:
                raise TimeoutError_(f"{method} {url.shown}", f"no answer within {timeout:g} s") from None

        return loop.run(one())

    try:
        resp = fetch("HEAD")
        if resp.status in (405, 501):  # HEAD not allowed here: what GET says
            report.add("server", "HEAD", f"{resp.status} {resp.reason}".rstrip())
            resp = fetch("GET")
        _status(report, resp, fields)
        options = fetch("OPTIONS")
        allow = fields.header(options.headers, "allow")
        if allow:
            report.add("server", "allowed methods", allow)
        else:
            report.add("server", "allowed methods", f"not said (OPTIONS: {options.status} {options.reason}, "
                                                    "no Allow header)".replace(" ,", ","))
        reused = options.timing.get("connect_ms") == 0.0
        report.add("server", "keep-alive", "yes: the next request went over the same connection" if reused
                   else "no: each request needed a new connection")
        _login(report, url, cfg, resp)
    finally:
        loop.cleanup(http.aclose)


def _status(report: Report, resp, fields) -> None:
    timing = resp.timing
    connect = timing.get("connect_ms")
    total = timing.get("total_ms")
    status = f"{resp.status} {resp.reason}".rstrip()
    text = f"{status} in {total:.1f} ms" + (f" (connect {connect:.1f} ms)" if connect else "")
    state = "ok" if resp.status < 400 else "warn"
    report.add("server", resp.method, text, state)
    location = fields.header(resp.headers, "location")
    if location and 300 <= resp.status < 400:
        report.add("server", "redirects to", location)
    report.add("server", "server", fields.header(resp.headers, "server") or "(no Server header)")
    report.add("server", "http version", f"HTTP/{resp.http_version}")
    ctype = fields.header(resp.headers, "content-type")
    if ctype:
        report.add("server", "content type", ctype)
    if resp.url.tls:
        hsts = fields.header(resp.headers, "strict-transport-security")
        report.add("server", "strict transport security", hsts or "no")


def _login(report: Report, url, cfg, resp) -> None:
    from iotctl.protocols.http import fields

    user = url.username if url.username is not None else (cfg.basic[0] if cfg.basic else None)
    how = "bearer token" if cfg.token else f"basic, user {user}" if user is not None else "none"
    challenge = fields.header(resp.headers, "www-authenticate")
    if resp.status in (401, 407):
        report.fail("login", "refused" if how != "none" else "needed", f"{resp.status} {resp.reason}"
                    + (f" ({challenge})" if challenge else "") + (f"; sent {how}" if how != "none" else ""))
        _, why, hint = fields.refusal_text(resp.status, resp.reason)
        raise AuthError(f"{resp.method} {resp.url.shown}", why, hint=hint)
    report.ok("login", "accepted" if how != "none" else "none needed", how if how != "none" else
              "the server answered without credentials")

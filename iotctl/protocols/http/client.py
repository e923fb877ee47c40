"""The HTTP client: HTTP/1.1 over asyncio streams, h11 for the protocol (one of the two
modules that import h11; server.py is the other). Everything here runs on the
process's shared asyncio loop (`aioloop.shared()`), so an HTTP request, an aiocoap
context and a slixmpp session make progress side by side; the main thread only hands
requests over and takes results (the `Requester` sender, the `Streamer` receiver).

Another protocol (the coming `coap proxy`) reaches HTTP only through this module:
`Client` + `HttpConfig` + `parse_url` (async requests with keep-alive, redirects,
limits, and failures as IotctlErrors) for its outgoing side, and `HttpServer`,
`ServerRequest`, `ServerResponse`, `text_response` (re-exported from server.py) for a
listener in the same loop. `Client.fetch` has no overall deadline of its own: wrap it
in `asyncio.wait_for` (the Requester does, with -W).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time

import h11

from iotctl import aioloop, receive, send
from iotctl.errors import (AuthError, ConnectError, ConnectionLost, IotctlError, PeerError, TimeoutError_,
                           UsageError, from_os_error)
from iotctl.message import Message, foreign
from iotctl.protocols.http import fields
from iotctl.protocols.http.fields import Url, parse_url  # noqa: F401  (parse_url re-exported)
from iotctl.protocols.http.server import (HttpServer, ServerRequest, ServerResponse,  # noqa: F401  (re-exported)
                                          text_response)

MAX_HEAD = 64 * 1024  # the largest response head (status line and headers) accepted
READ_SIZE = 64 * 1024
USER_AGENT = "iotctl"
log = logging.getLogger("iotctl.http")

REDIRECTS = (301, 302, 303, 307, 308)


class HttpConfig:
    """What every request of a run shares: TLS, credentials, extra headers, limits.

    headers: (name, value) pairs from -H (value None: leave that default header out);
    basic: (user, password) or None; token: a bearer token or None; timeout: seconds
    for one request (connect, send, the whole response, redirects included); max_size:
    the largest response body; follow: follow redirects, at most max_redirects."""

    def __init__(self, endpoint=None, headers=(), basic=None, token=None, timeout: float = 30.0,
                 max_size: int = 16 << 20, follow: bool = False, max_redirects: int = 30,
                 connect_timeout: float | None = None, debug: bool = False):
        self.endpoint, self.headers, self.basic, self.token = endpoint, list(headers), basic, token
        self.timeout, self.max_size, self.follow, self.max_redirects = timeout, max_size, follow, max_redirects
        self.connect_timeout = connect_timeout if connect_timeout is not None else timeout
        self.debug = debug
        self._ssl = None

    def ssl_context(self):
        if self._ssl is None:
            if self.endpoint is not None:
                self._ssl = self.endpoint.ssl_context()
            else:
                from iotctl.tls import make_ssl_context

                self._ssl = make_ssl_context()
        return self._ssl

    def secrets(self) -> tuple[str | None, ...]:
        return (self.basic[1] if self.basic else None, self.token)


class Response:
    """One response as it came (after redirects): what a Message is built from."""

    __slots__ = ("url", "method", "status", "reason", "http_version", "headers", "body", "timing", "redirects")

    def __init__(self, url: Url, method: str, status: int, reason: str, http_version: str,
                 headers: list[tuple[str, str]], body: bytes, timing: dict, redirects: list):
        self.url, self.method, self.status, self.reason = url, method, status, reason
        self.http_version, self.headers, self.body = http_version, headers, body
        self.timing, self.redirects = timing, redirects

    @property
    def content_type(self) -> str | None:
        return fields.header(self.headers, "content-type")

    def message(self) -> Message:
        meta = {"method": self.method, "status": self.status, "reason": self.reason,
                "http_version": self.http_version,
                "headers": [[k, fields.masked_value(k, v)] for k, v in self.headers],
                "timing": self.timing}
        if self.redirects:
            meta["redirects"] = self.redirects
        return Message("http", self.url.shown, self.body, self.content_type, meta)


# --------------------------------------------------------------------------- one connection


class Connection:
    """One HTTP/1.1 connection: h11's state machine over an asyncio stream."""

    def __init__(self, key, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.key, self.reader, self.writer = key, reader, writer
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.used = False  # a request went over it (its timing shows no connect time)
        self.received = 0  # bytes of the current answer
        self.fresh = True  # just connected: a failure on it is not a stale keep-alive
        self.connect_ms = 0.0  # how long connecting (and the TLS handshake) took

    async def send(self, event) -> None:
        data = self.h11.send(event)
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def next_event(self):
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                data = await self.reader.read(READ_SIZE)
                if not data and not self.received:
                    raise _Stale()  # closed before a single byte of an answer
                self.received += len(data)
                self.h11.receive_data(data)
                continue
            return event

    def reusable(self) -> bool:
        """After a complete exchange: ready for the next request on the same socket."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            return True
        return False

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:
            pass


# --------------------------------------------------------------------------- the client


class Client:
    """Requests on the shared loop, one connection kept alive per host (the next
    request reuses it). Coroutines; IotctlErrors carry the exit code."""

    def __init__(self, cfg: HttpConfig):
        self.cfg = cfg
        self.pool: dict[tuple, Connection] = {}

    async def connect(self, url: Url) -> Connection:
        key = (url.scheme, url.host, url.port)
        conn = self.pool.pop(key, None)
        if conn is not None and not conn.reader.at_eof():
            conn.fresh = False  # it waited in the pool: the server may have closed it meanwhile
            return conn
        if conn is not None:
            conn.close()
        ssl_ctx = self.cfg.ssl_context() if url.tls else None
        what = f"cannot connect to {url.scheme}://{url.authority}"
        began = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(url.host, url.port, ssl=ssl_ctx,
                                        server_hostname=url.host if ssl_ctx is not None else None,
                                        limit=READ_SIZE),
                self.cfg.connect_timeout)
        except asyncio.TimeoutError:
            raise TimeoutError_(what, f"no connection within {self.cfg.connect_timeout:g} s") from None
        except OSError as exc:
            raise from_os_error(what, _one_error(exc)) from None
        if log.isEnabledFor(logging.DEBUG):
            log.debug("connected to %s:%s%s", url.host, url.port, " (TLS)" if ssl_ctx is not None else "")
        conn = Connection(key, reader, writer)
        conn.connect_ms = round((time.monotonic() - began) * 1000, 1)
        return conn

    def release(self, conn: Connection) -> None:
        if conn.reusable():
            old = self.pool.pop(conn.key, None)
            if old is not None and old is not conn:
                old.close()
            self.pool[conn.key] = conn
        else:
            conn.close()

    async def aclose(self) -> None:
        for conn in list(self.pool.values()):
            conn.close()
        self.pool.clear()

    def request_headers(self, url: Url, headers, body: bytes | None, credentials: bool = True
                        ) -> list[tuple[str, str]]:
        """The headers of one request: defaults, credentials (`credentials` False after
        a redirect to another host: they stay with the one they were given for), the
        message's own and -H (which win; a -H value None removes a default)."""
        out: dict[str, tuple[str, str]] = {}
        multi: list[tuple[str, str]] = []

        def put(name, value):
            out[name.lower()] = (name, value)

        put("Host", url.authority)
        put("User-Agent", USER_AGENT)
        put("Accept", "*/*")
        cfg = self.cfg
        if credentials:
            user = url.username if url.username is not None else (cfg.basic[0] if cfg.basic else None)
            if cfg.token:
                put("Authorization", f"Bearer {cfg.token}")
            elif user is not None:
                import base64

                if url.username is not None:
                    password = url.password or ""
                else:
                    password = cfg.basic[1] or ""
                put("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii"))
        for source in (headers, cfg.headers):
            seen_here: set[str] = set()
            for name, value in source:
                low = name.lower()
                if value is None:
                    out.pop(low, None)
                    continue
                if low in seen_here:
                    multi.append((name, value))  # a repeated header: every value is sent
                    continue
                seen_here.add(low)
                put(name, value)
        if body is not None:
            out.pop("transfer-encoding", None)
            put("Content-Length", str(len(body)))
        else:
            out.pop("content-length", None)
        return list(out.values()) + multi

    async def fetch(self, method: str, url: Url, headers=(), body: bytes | None = None) -> Response:
        """One request and its whole response (at most --max-size), following redirects
        when configured (303, and 301/302 after a POST, continue as GET without a body;
        307/308 keep the method and body)."""
        started = time.monotonic()
        redirects: list = []
        first = url
        cross = False
        while True:
            resp = await self._exchange(method, url, self.request_headers(url, headers, body, not cross), body,
                                        started, None, None)
            if not isinstance(resp, tuple):
                resp.redirects = redirects
                return resp
            status, reason, location = resp
            if len(redirects) >= self.cfg.max_redirects:
                raise PeerError(f"{method} {first.shown}",
                                f"more than {self.cfg.max_redirects} redirects (the last to {location})")
            try:
                target = url.join(location)
            except UsageError as exc:
                raise PeerError(f"{method} {url.shown}", f"{status} {reason} to a bad Location: {exc.why}") from None
            redirects.append({"status": status, "url": target.shown})
            if (target.scheme, target.host, target.port) != (first.scheme, first.host, first.port):
                cross = True
            if status == 303 or (status in (301, 302) and method == "POST"):
                if method != "HEAD":
                    method = "GET"
                body = None
                headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
            if url.username is not None and not cross:
                target = Url(target.scheme, target.host, target.port, target.target, url.username, url.password)
            url = target

    async def stream(self, method: str, url: Url, headers, on_head, on_chunk) -> Response:
        """A request whose response body is a stream: redirects followed first (when
        configured), then `on_head(response)` (a 3xx-5xx answer comes with its first
        64 KiB of body and nothing more is read) and `on_chunk(bytes)` for the body."""
        started = time.monotonic()
        first = url
        cross = False
        hops = 0
        while True:
            resp = await self._exchange(method, url, self.request_headers(url, headers, None, not cross), None,
                                        started, on_head, on_chunk)
            if not isinstance(resp, tuple):
                return resp
            status, reason, location = resp
            if hops >= self.cfg.max_redirects:
                raise PeerError(f"{method} {first.shown}", f"more than {self.cfg.max_redirects} redirects")
            try:
                target = url.join(location)
            except UsageError as exc:
                raise PeerError(f"{method} {url.shown}", f"{status} {reason} to a bad Location: {exc.why}") from None
            if (target.scheme, target.host, target.port) != (first.scheme, first.host, first.port):
                cross = True
            url = target
            hops += 1

    async def _exchange(self, method, url, headers, body, started, on_head, on_chunk):
        """One request and its response on a (possibly reused) connection; a redirect to
        follow comes back as (status, reason, location)."""
        for attempt in (0, 1):
            conn = await self.connect(url)
            reused, fresh = conn.used, conn.fresh
            conn.used = True
            try:
                return await self._on(conn, method, url, headers, body, started, reused, on_head, on_chunk)
            except _Stale:
                conn.close()
                if attempt or fresh:
                    raise ConnectionLost(f"{method} {url.shown}", "the server closed the connection without answering")
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    async def _on(self, conn, method, url, headers, body, started, reused, on_head, on_chunk):
        what = f"{method} {url.shown}"
        debug = log.isEnabledFor(logging.DEBUG)
        if debug:
            log.debug("> %s %s HTTP/1.1", method, url.target)
            for k, v in headers:
                log.debug("> %s: %s", k, fields.masked_value(k, v))
        got_any = False
        conn.received = 0
        try:
            await conn.send(h11.Request(method=method, target=url.target, headers=headers))
            if body:
                await conn.send(h11.Data(data=body))
            await conn.send(h11.EndOfMessage())
            while True:
                event = await conn.next_event()
                got_any = True
                if isinstance(event, h11.InformationalResponse):
                    continue
                break
        except (ConnectionError, h11.LocalProtocolError, asyncio.IncompleteReadError) as exc:
            if not got_any:
                raise _Stale() from None
            raise ConnectionLost(what, str(exc) or type(exc).__name__) from None
        except h11.RemoteProtocolError as exc:
            raise PeerError(what, f"not an HTTP response ({exc})") from None
        except OSError as exc:
            raise from_os_error(what, exc) from None
        if isinstance(event, h11.ConnectionClosed):
            raise _Stale()
        if not isinstance(event, h11.Response):
            raise PeerError(what, f"unexpected {type(event).__name__} from the server")
        head_at = time.monotonic()
        status = event.status_code
        reason = event.reason.decode("latin-1")
        version = event.http_version.decode("ascii", "replace")
        resp_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers.raw_items()] \
            if hasattr(event.headers, "raw_items") else [(k.decode("latin-1"), v.decode("latin-1"))
                                                         for k, v in event.headers]
        if debug:
            log.debug("< HTTP/%s %s %s", version, status, reason)
            for k, v in resp_headers:
                log.debug("< %s: %s", k, fields.masked_value(k, v))
        location = fields.header(resp_headers, "location")
        if self.cfg.follow and status in REDIRECTS and location:
            await self._drain(conn, what, limit=1 << 20)
            self.release(conn)
            return status, reason, location
        timing = {"connect_ms": 0.0 if reused else conn.connect_ms}
        response = Response(url, method, status, reason, version, resp_headers, b"", timing, [])
        if on_chunk is not None:
            if status >= 300:
                try:
                    response.body = await asyncio.wait_for(self._drain(conn, what, 64 * 1024), 2.0)
                except (IotctlError, asyncio.TimeoutError):
                    pass
                conn.close()
                await on_head(response)
                return response
            await on_head(response)
            await self._stream(conn, what, on_chunk)
            conn.close()
            return response
        length = fields.header(resp_headers, "content-length")
        limit = self.cfg.max_size
        if length is not None and length.isdigit() and int(length) > limit:
            raise PeerError(what, f"the response body ({int(length):,} bytes) is larger than --max-size "
                                  f"{fields.size_text(limit)}")
        response.body = await self._drain(conn, what, limit)
        done = time.monotonic()
        timing["response_ms"] = round((head_at - started) * 1000, 1)
        timing["total_ms"] = round((done - started) * 1000, 1)
        self.release(conn)
        return response

    async def _drain(self, conn: Connection, what: str, limit: int) -> bytes:
        chunks = []
        size = 0
        try:
            while True:
                event = await conn.next_event()
                if isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > limit:
                        conn.close()
                        raise PeerError(what, f"the response body is larger than --max-size {fields.size_text(limit)}")
                    chunks.append(event.data)
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
        except h11.RemoteProtocolError as exc:
            raise PeerError(what, f"the response body was cut short ({exc})") from None
        except (ConnectionError, OSError) as exc:
            raise ConnectionLost(what, f"the connection broke during the response ({exc})") from None
        return b"".join(chunks)

    async def _stream(self, conn: Connection, what: str, on_chunk) -> None:
        try:
            while True:
                event = await conn.next_event()
                if isinstance(event, h11.Data):
                    await on_chunk(event.data)
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return
        except h11.RemoteProtocolError as exc:
            raise ConnectionLost(what, f"the stream was cut short ({exc})") from None
        except (ConnectionError, OSError) as exc:
            raise ConnectionLost(what, f"the connection broke ({exc})") from None


def _one_error(exc: OSError) -> OSError:
    """asyncio joins the failures of every address of a name (::1 and 127.0.0.1 for
    localhost) into one "Multiple exceptions" OSError: when every one was refused, it
    is a refused connection."""
    text = str(exc)
    if text.startswith("Multiple exceptions") and text.count("Errno 111") == text.count("Errno"):
        return ConnectionRefusedError(111, "Connection refused")
    return exc


class _Stale(Exception):
    """A kept-alive connection the server had closed: nothing of an answer came."""


def status_error(what: str, status: int, reason: str, body: bytes = b"") -> IotctlError:
    """The error a 4xx/5xx answer is: a refused login (401, 407) exits 4, the rest 6."""
    code, why, hint = fields.refusal_text(status, reason, body)
    return AuthError(what, why, hint=hint) if code == 4 else PeerError(what, why)


# --------------------------------------------------------------------------- the sender


class Requester(send.Sender):
    """The send driver's HTTP side: one request per message, on one kept-alive
    connection, one at a time (window 1). A 2xx or 3xx answer is the
    acknowledgement; a 4xx/5xx a refusal (it reaches --failed). `on_response(msg)` (the
    CLI's output) sees every response on the main thread before it settles.

    method: the method, or None: a message's own (an HTTP capture's meta.method) else
    POST. url: where every message goes, or None: each message's own address (a
    replayed HTTP capture). Messages from other protocols are adopted in `_request`."""

    protocol = "http"
    window = 1

    def __init__(self, cfg: HttpConfig, method: str | None, url: Url | None, on_response=None,
                 content_type: str | None = None):
        super().__init__()
        self.cfg, self.method, self.url = cfg, method, url
        self.on_response = on_response
        self.content_type = content_type
        self.pending: dict[int, concurrent.futures.Future] = {}
        self.number = 0
        self.loop = None
        self.client: Client | None = None

    @property
    def where(self) -> str:
        return self.url.shown if self.url is not None else "http"

    @property
    def address(self) -> str | None:
        """The fixed address (the URL, as shown): a bridge gives it to every message,
        or its --address template's result, which `_target` resolves against the URL."""
        return self.url.shown if self.url is not None else None

    def open(self) -> None:
        setup_logging(self.cfg)
        self.loop = aioloop.shared()
        self.client = Client(self.cfg)
        if self.url is not None:  # connect now: a refused or failed TLS connection is its own error
            client, url = self.client, self.url

            async def warm():
                conn = await client.connect(url)
                client.pool[conn.key] = conn

            try:
                self.loop.run(warm(), self.cfg.connect_timeout + 1)
            except asyncio.TimeoutError:
                raise TimeoutError_(f"cannot connect to {url.scheme}://{url.authority}",
                                    f"no connection within {self.cfg.connect_timeout:g} s") from None

    def close(self) -> None:
        for fut in self.pending.values():
            fut.cancel()
        self.pending.clear()
        if self.loop is not None and self.client is not None:
            self.loop.cleanup(self.client.aclose)

    def _request(self, msg: Message) -> tuple[str, Url, list, bytes | None]:
        """Method, URL, headers and body for one message. A native message (an HTTP
        capture, or composed here) brings its method and request headers; a foreign one
        its content type and user headers (valid names and values only), correlation id
        as X-Correlation-ID and reply-to as X-Reply-To. Nothing else crosses."""
        headers: list[tuple[str, str]] = []
        method = self.method
        content_type = self.content_type
        found = foreign(msg, "http")
        if found is None:
            meta = msg.meta if isinstance(msg.meta, dict) else {}
            if method is None and isinstance(meta.get("method"), str) and fields.valid_name(meta["method"]):
                method = meta["method"].upper()
            if msg.protocol == "http" and "status" not in meta:  # a request captured by `http listen`
                headers = fields.portable_headers(_pairs(meta.get("headers")))
            if content_type is None:
                content_type = msg.content_type
        else:
            headers = fields.portable_headers(found.headers)
            if found.correlation_id is not None:
                from iotctl.message import bytes_text

                value = bytes_text(found.correlation_id)
                if fields.valid_value(value):
                    headers.append(("X-Correlation-ID", value))
            if found.reply_to and fields.valid_value(found.reply_to):
                headers.append(("X-Reply-To", found.reply_to))
            if content_type is None:
                content_type = found.content_type
        if content_type and fields.valid_value(content_type) and \
                not any(k.lower() == "content-type" for k, _ in self.cfg.headers):
            headers = [(k, v) for k, v in headers if k.lower() != "content-type"] + [("Content-Type", content_type)]
        method = method or "POST"
        url = self._target(msg.address)
        body = msg.payload
        if not body and method in ("GET", "HEAD", "DELETE", "OPTIONS") and not msg.protocol:
            body = None
        return method, url, headers, body

    def _target(self, address: str) -> Url:
        """The URL of one message: the sink's URL, unless the message's address names
        another (a bridge's --address: an absolute http(s) URL, or a path resolved
        against the sink's URL, which keeps its credentials on the same host)."""
        url = self.url
        if url is None:
            return fields.parse_url(address or "")
        if not address or address == url.shown:
            return url
        if "://" in address:
            return fields.parse_url(address)
        target = url.join(address)
        if (target.scheme, target.host, target.port) == (url.scheme, url.host, url.port):
            target = Url(target.scheme, target.host, target.port, target.target, url.username, url.password)
        return target

    def send(self, msg: Message):
        method, url, headers, body = self._request(msg)
        self.number += 1
        key = self.number
        self.pending[key] = asyncio.run_coroutine_threadsafe(self._one(method, url, headers, body), self.loop.loop)
        return key

    async def _one(self, method, url, headers, body) -> Response:
        try:
            return await asyncio.wait_for(self.client.fetch(method, url, headers, body), self.cfg.timeout)
        except asyncio.TimeoutError:
            raise TimeoutError_(f"{method} {url.shown}", f"no complete response within {self.cfg.timeout:g} s") from None

    def pump(self, wait: float) -> None:
        if not self.pending:
            if wait:
                time.sleep(min(wait, 0.05))
            return
        done, _ = concurrent.futures.wait(list(self.pending.values()), timeout=wait,
                                          return_when=concurrent.futures.FIRST_COMPLETED)
        if not done:
            return
        for key in [k for k, f in self.pending.items() if f in done]:
            fut = self.pending.pop(key)
            resp = fut.result()  # an IotctlError stops the run (the driver reports it)
            if self.on_response is not None:
                self.on_response(resp)
            if resp.status < 400:
                self.acked.add(key)
            else:
                self.refused[key] = (resp.status, resp.reason, resp.body, f"{resp.method} {resp.url.shown}")

    def refusal(self, refused: dict) -> IotctlError:
        reasons = list(refused.values())
        statuses = [r[0] for r in reasons if isinstance(r, tuple)]
        if len(reasons) == 1 and statuses:
            status, reason, body, what = reasons[0]
            return status_error(what, status, reason, body)
        texts = sorted({f"{r[0]} {r[1] or fields.phrase(r[0])}" if isinstance(r, tuple) else str(r) for r in reasons})
        what = "send"
        error = AuthError if statuses and all(s in (401, 407) for s in statuses) else PeerError
        return error(what, f"the server refused {len(reasons)} request(s): {'; '.join(texts[:3])}")


def _pairs(value) -> list[tuple[str, str]]:
    out = []
    if isinstance(value, dict):
        value = list(value.items())
    if isinstance(value, list):
        for item in value:
            if isinstance(item, (list, tuple)) and len(item) == 2:
                out.append((str(item[0]), str(item[1])))
    return out


def setup_logging(cfg: HttpConfig) -> None:
    from iotctl.trace import route_logs

    route_logs(("iotctl.http", "asyncio"), cfg.debug, label="http", quiet_level=logging.CRITICAL,
               secrets=cfg.secrets())


# --------------------------------------------------------------------------- the stream receiver


_END = object()


class Streamer(receive.Receiver):
    """`http get --stream`: a response body read as it comes, one message per
    server-sent event or per line (NDJSON), at most `inbox_limit` waiting for the
    output (reading pauses meanwhile: a fast server cannot fill memory). The end of
    the body ends the source; a broken connection is ConnectionLost, and `reconnect`
    asks again (with Last-Event-ID for an event stream)."""

    delivery = "at-most-once"
    can_reconnect = True

    def __init__(self, cfg: HttpConfig, url: Url, method: str = "GET", fmt: str = "auto",
                 event_limit: int = 1 << 20, inbox_limit: int = 1000):
        self.cfg, self.url, self.method, self.fmt = cfg, url, method, fmt
        self.event_limit, self.inbox_limit = event_limit, inbox_limit
        self.loop = None
        self.client: Client | None = None
        self.task: concurrent.futures.Future | None = None
        self.inbox = None
        self.last_id = ""

    @property
    def where(self) -> str:
        return self.url.shown

    def open(self) -> None:
        setup_logging(self.cfg)
        self.loop = aioloop.shared()
        self._start()

    def _start(self) -> None:
        self.client = Client(self.cfg)
        self.inbox = self.loop.handoff(self.inbox_limit)
        head = concurrent.futures.Future()
        self.task = asyncio.run_coroutine_threadsafe(self._run(head), self.loop.loop)
        deadline = time.monotonic() + self.cfg.connect_timeout
        while True:
            try:
                err = head.result(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
                break
            except concurrent.futures.TimeoutError:
                if time.monotonic() >= deadline:
                    self.task.cancel()
                    raise TimeoutError_(f"GET {self.url.shown}",
                                        f"no response within {self.cfg.connect_timeout:g} s") from None
        if err is not None:
            self.task.cancel()
            raise err

    async def _run(self, head: concurrent.futures.Future) -> None:
        inbox = self.inbox
        url = self.url
        state = {}
        accept = {"sse": "text/event-stream", "ndjson": "application/x-ndjson, application/json"}.get(
            self.fmt, "text/event-stream, application/x-ndjson, */*;q=0.5")
        headers = [("Accept", accept)]
        if self.last_id:
            headers.append(("Last-Event-ID", self.last_id))

        async def on_head(resp: Response) -> None:
            if resp.status >= 300:
                head.set_result(status_error(f"GET {url.shown}", resp.status, resp.reason, resp.body))
                raise _Refused()
            fmt = fields.stream_format(resp.content_type, self.fmt)
            state["fmt"] = fmt
            state["parser"] = fields.EventStream(self.event_limit) if fmt == "sse" else fields.Lines(self.event_limit)
            state["meta"] = {"status": resp.status}
            state["n"] = 0
            state["ct"] = resp.content_type
            head.set_result(None)

        async def on_chunk(data: bytes) -> None:
            try:
                items = state["parser"].feed(data)
            except ValueError as exc:
                raise PeerError(f"GET {url.shown}", str(exc)) from None
            self._deliver(items, state)
            while inbox.full():
                await asyncio.sleep(0.005)

        try:
            await self.client.stream(self.method, url, headers, on_head, on_chunk)
            if state.get("fmt") == "ndjson":
                self._deliver(state["parser"].end(), state)
            inbox.put(_END)
        except _Refused:
            pass
        except asyncio.CancelledError:
            raise
        except IotctlError as exc:
            if not head.done():
                head.set_result(exc)
            else:
                inbox.put(exc)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread as one error
            error = IotctlError(f"GET {url.shown}", str(exc) or type(exc).__name__)
            if not head.done():
                head.set_result(error)
            else:
                inbox.put(error)
        finally:
            await self.client.aclose()

    def _deliver(self, items, state) -> None:
        address = self.url.shown
        put = self.inbox.put
        for item in items:
            state["n"] += 1
            if isinstance(item, dict):  # an event
                meta = {"event": item["event"]}
                if item["id"]:
                    meta["id"] = item["id"]
                    self.last_id = item["id"]
                if "retry" in item:
                    meta["retry"] = item["retry"]
                put(Message("http", address, item["data"].encode("utf-8"), None, meta))
            else:
                ct = state["ct"]
                ct = "application/json" if fields.media_type(ct) in fields.STREAM_TYPES else fields.media_type(ct) or None
                put(Message("http", address, item, ct, {"line": state["n"]}))

    def poll(self, wait):
        items = self.inbox.take(wait)
        out = []
        for item in items:
            if item is _END:
                if out:
                    self.inbox.put(_END)  # first hand over what came before the end
                    return out
                return None
            if isinstance(item, IotctlError):
                if out:
                    self.inbox.put(item)
                    return out
                raise item
            out.append(item)
        return out

    def reconnect(self) -> None:
        self._stop()
        self._start()

    def _stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                self.task.result(timeout=1.0)
            except BaseException:
                pass
            self.task = None

    def close(self) -> None:
        self._stop()


class _Refused(Exception):
    """The stream's answer was not 2xx: already reported through the head future."""

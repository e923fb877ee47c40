"""`iotctl coap proxy`: HTTP to CoAP and CoAP to HTTP, on the process's one asyncio loop.

The HTTP listener is iotctl's own HTTP server (iotctl.protocols.http.client's
HttpServer, h11), the CoAP side aiocoap, both on the shared loop (iotctl.aioloop), so
a request crosses from one to the other without a thread or a second loop:

- HTTP to CoAP (RFC 8075): `GET /hc/coap://device/path` (or `/coap://...`, or the
  absolute form `GET coap://device/path HTTP/1.1`) becomes a CoAP request through an
  aiocoap client context (one per scheme); block-wise transfers are assembled by
  aiocoap (at most --max-size), the answer mapped back by mapping.py. A GET with
  `Accept: text/event-stream` is an observation: every notification is a server-sent
  event (iotctl's own mapping). Every HTTP client of one resource shares ONE
  observation (`Observed`): each client has a one-slot mailbox that keeps only the
  latest value, so a slow client never holds the others back nor makes the proxy
  queue; the observation is deregistered (RFC 7641 3.6) when the last client leaves.
- `GET /` serves page.py's page: a device's resources, observable values live.
- CoAP to HTTP (RFC 7252 10.1): the CoAP listener (`--coap`) takes requests with
  Proxy-Uri `http[s]://...` (or Proxy-Scheme and Uri-Host/Port/Path/Query) and carries
  them out with iotctl's HTTP client (redirects followed, at most --max-size). An
  answer that is ready within PIGGYBACK_WINDOW rides on the request's ACK (see there).

Bounded: request bodies (--max-body: 413 / 4.13), requests in progress (--max-requests:
503 with Retry-After), connections, event-stream subscriptions (--max-observers: 503),
a client that stops reading an event stream (dropped after --client-timeout; until
then at most the socket's buffer and one value wait for it). Every request is one line
of the log, as `coap serve` writes it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import IO
from urllib.parse import parse_qs, unquote, urlsplit

import aiocoap
from aiocoap import error as coap_error
from aiocoap import resource
from aiocoap.numbers.codes import Code

from iotctl import background
from iotctl.errors import IotctlError, TimeoutError_, UsageError
from iotctl.protocols.coap import client, formats
from iotctl.protocols.coap.linkformat import format_links, parse_links
from iotctl.protocols.coap.proxy import mapping, page
from iotctl.protocols.coap.proxy.mapping import MappingError
from iotctl.protocols.coap.server import (BoundedCache, BoundedSpool, Log, LoggingSite, bounded_deduplication,
                                          log_bad_request, loop_exceptions)
from iotctl.protocols.http.client import (Client, HttpConfig, HttpServer, ServerRequest, ServerResponse,
                                          parse_url)

KEEPALIVE = 15.0        # seconds between comments on a silent event stream
# How long an answer of the CoAP listener may take and still be piggybacked on the ACK of
# its confirmable request; after it, an empty ACK goes out and the answer follows as a
# separate response. aiocoap waits 0.1 s, less than an HTTP exchange often takes, and
# libcoap's clients before 4.3.5 (Debian 12 ships 4.3.1) drop a separate response that
# starts a block-wise transfer ("large body receive internal issue", libcoap commit
# 0fbe59fc) and then wait out their -B time with nothing said: any body over one block
# whose HTTP server took more than 0.1 s never arrived. Half of RFC 7252's ACK_TIMEOUT
# (2 s) still lets the empty ACK reach a client with default parameters before it
# retransmits (RFC 7252 4.8.2 allows a processing delay up to ACK_TIMEOUT).
PIGGYBACK_WINDOW = 1.0
FRESHNESS_GRACE = 2.0   # seconds past a notification's Max-Age before registering again
MAX_PATHS = 64          # resources one page stream observes
MAX_LINKS = 500         # links the page shows
SSE_HEADERS = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")]


@dataclass
class ProxyConfig:
    http: tuple[str, int] | None = ("127.0.0.1", 8080)   # the HTTP listener (None: none)
    coap: tuple[str, int] | None = None                  # the CoAP listener (None: none)
    timeout: float = 10.0             # one request to a device or an HTTP server
    max_size: int = 16 * 1024 * 1024  # the largest response taken (block-wise assembled, or HTTP)
    max_body: int = 1024 * 1024       # the largest request body (HTTP, or a CoAP block-wise upload)
    max_requests: int = 256           # HTTP requests being handled at once (503 past it)
    max_connections: int = 512        # HTTP connections open at once
    max_observers: int = 256          # event-stream subscriptions (client x resource) at once
    client_timeout: float = 30.0      # an HTTP client that stops reading is dropped after this
    cafile: str | None = None         # CA certificates for https:// targets of the CoAP side
    quiet: bool = False
    debug: bool = False
    log: IO[str] | None = None        # where the request log goes [default: stderr]


def _now() -> str:
    return time.strftime("%H:%M:%S")


def _code(cls: int, detail: int):
    return Code((cls << 5) | detail)


def _code_of(text: str):
    cls, _, detail = text.partition(".")
    return _code(int(cls), int(detail))


def _diagnostic(payload: bytes) -> str:
    return client.diagnostic(payload)


# --------------------------------------------------------------------------- shared observations


class Value:
    """A representation of an observed resource, as it came (shared by every slot)."""

    __slots__ = ("seq", "payload", "content_format")

    def __init__(self, seq: int, payload: bytes, content_format: int | None):
        self.seq, self.payload, self.content_format = seq, payload, content_format


class End:
    """The observation ended (the device said so, stopped answering, or is unreachable)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


class Slot:
    """One HTTP client's mailbox for one observed resource: the latest value only (a
    newer one replaces it unread), then the end. Offering never waits."""

    __slots__ = ("value", "end", "done", "wake")

    def __init__(self, wake: asyncio.Event):
        self.value: Value | None = None
        self.end: End | None = None
        self.done = False
        self.wake = wake

    def offer(self, item) -> None:
        if self.done:
            return
        if isinstance(item, End):
            self.end = item
        else:
            self.value = item
        self.wake.set()

    def take(self) -> list:
        out = []
        if self.value is not None:
            out.append(self.value)
            self.value = None
        if self.end is not None and not self.done:
            out.append(self.end)
            self.done = True
        return out


class Observed:
    """One observation of a CoAP resource (URI and Accept), shared by every HTTP client
    that watches it. Registered at once; `first` is the first response (an aiocoap
    message) or the IotctlError that came instead. Notifications bigger than one block
    are fetched whole; when the last notification's Max-Age passes in silence it is
    registered again (a device that restarted forgot it; one that is gone ends it)."""

    def __init__(self, proxy: "Proxy", uri: str, accept: int | None):
        self.proxy, self.uri, self.accept = proxy, uri, accept
        self.key = (uri, accept)
        self.loop = asyncio.get_running_loop()
        self.slots: set[Slot] = set()
        self.latest: Value | None = None
        self.end: End | None = None
        self.first: asyncio.Future = self.loop.create_future()
        self.seq = 0
        self.ctx = None
        self.request = self.msg = None
        self.generation = 0
        self.heard = 0.0
        self.max_age = 60.0
        self.closed = False
        self.completing: asyncio.Task | None = None
        self.incomplete = None    # the newest block-wise notification waiting to be fetched whole
        self.task = asyncio.ensure_future(self._run())

    def spec(self) -> client.RequestSpec:
        cfg = self.proxy.cfg
        return client.RequestSpec("get", self.uri, accept=self.accept, timeout=cfg.timeout, max_size=cfg.max_size,
                                  label=f"observe {self.uri}")

    # ------------------------------------------------------------ clients

    def join(self, slot: Slot) -> None:
        self.slots.add(slot)
        self.proxy.observers += 1
        if self.latest is not None:
            slot.offer(self.latest)
        if self.end is not None:
            slot.offer(self.end)

    def leave(self, slot: Slot) -> None:
        """Any thread (a stream's finalizer): the close is done on the loop's thread."""
        if slot in self.slots:
            self.slots.discard(slot)
            self.proxy.observers -= 1
        if not self.slots:
            try:
                self.loop.call_soon_threadsafe(self._close_if_unused)
            except RuntimeError:  # the loop is closed: nothing to deregister from
                pass

    def _close_if_unused(self) -> None:
        if not self.slots and not self.closed:
            self.close()

    def close(self) -> None:
        """The last client left (or the proxy stops): deregister."""
        self.closed = True
        self.proxy.forget(self)
        self.task.cancel()
        if self.completing is not None:
            self.completing.cancel()
        if not self.first.done():
            self.first.set_result(IotctlError(self.spec().what, "the proxy stopped"))
        request, msg, ctx = self.request, self.msg, self.ctx
        self.request = self.msg = None
        if request is not None:
            if self.end is None:
                self.proxy.spawn(client.deregister(ctx, request, msg))
            elif not request.observation.cancelled:
                request.observation.cancel()

    # ------------------------------------------------------------ the observation

    def _publish(self, resp) -> None:
        self.seq += 1
        cf = resp.opt.content_format
        self.latest = Value(self.seq, bytes(resp.payload), None if cf is None else int(cf))
        for slot in list(self.slots):
            slot.offer(self.latest)

    def finish(self, reason: str, deregister: bool = False) -> None:
        """The observation is over for its clients: `reason` is their last event. The
        device ended it (or is gone): it is forgotten here; the proxy ends it
        (`deregister`): the device is told (RFC 7641 3.6)."""
        if self.end is not None:
            return
        self.end = End(reason)
        self.proxy.forget(self)  # a new client starts a new observation
        for slot in list(self.slots):
            slot.offer(self.end)
        request, msg = self.request, self.msg
        self.request = self.msg = None
        if request is not None:
            if deregister:
                self.proxy.spawn(client.deregister(self.ctx, request, msg))
            elif not request.observation.cancelled:
                request.observation.cancel()
        if self.completing is not None:
            self.completing.cancel()

    async def _run(self) -> None:
        try:
            await self._observe()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must end this observation, not the proxy
            self.finish(f"the observation failed: {exc!r}")
            if not self.first.done():
                self.first.set_result(IotctlError(self.spec().what, repr(exc)))

    async def _observe(self) -> None:
        try:
            self.ctx = await self.proxy.context(self.uri)
            resp = await self._register()
        except IotctlError as exc:
            self.first.set_result(exc)
            self.finish(f"{exc.what}: {exc.why}" if exc.why else exc.what)
            return
        self.first.set_result(resp)
        if not resp.code.is_successful():
            self.finish(_answer_text(resp))
            return
        self._publish(resp)
        if resp.opt.observe is None:
            self.finish("the resource is not observable (the response carried no Observe option)")
            return
        while self.end is None:
            stale_in = self.heard + max(self.max_age, 1.0) + FRESHNESS_GRACE - time.monotonic()
            if stale_in > 0:
                await asyncio.sleep(stale_in)
                continue
            # silent past its Max-Age: register again (deregistering the old one)
            try:
                resp = await self._register()
            except IotctlError as exc:
                self.finish(f"the device stopped answering ({exc.why or exc.what})")
                return
            if not resp.code.is_successful():
                self.finish(_answer_text(resp))
                return
            cf = resp.opt.content_format
            if self.latest is None or (bytes(resp.payload), None if cf is None else int(cf)) != \
                    (self.latest.payload, self.latest.content_format):
                self._publish(resp)
            if resp.opt.observe is None:
                self.finish("the resource is no longer observable")
                return

    async def _register(self):
        spec = self.spec()
        client.start_transfer(spec.max_size)
        old_request, old_msg = self.request, self.msg
        if old_request is not None:
            self.proxy.spawn(client.deregister(self.ctx, old_request, old_msg))
        self.generation += 1
        generation = self.generation
        msg = client.build_request(spec, observe=True)
        request = self.ctx.request(msg, handle_blockwise=False)
        self.request, self.msg = request, msg
        request.observation.register_callback(lambda r: self._notified(r, generation), _suppress_deprecation=True)
        request.observation.register_errback(lambda e: self._failed(e, generation), _suppress_deprecation=True)
        try:
            async with asyncio.timeout(spec.timeout):
                resp = await request.response
        except Exception as exc:
            raise client.map_error(exc, spec.what, spec.timeout) from None
        if client.more_blocks(resp):
            whole = await client.exchange(self.ctx, self._whole_spec())
            whole.opt.observe = resp.opt.observe
            resp = whole
        self.heard = time.monotonic()
        self.max_age = client.max_age(resp)
        return resp

    def _whole_spec(self) -> client.RequestSpec:
        spec = self.spec()
        spec.label = f"GET {self.uri}"
        return spec

    def _notified(self, resp, generation: int) -> None:
        if generation != self.generation or self.end is not None or self.closed:
            return
        self.heard = time.monotonic()
        if not resp.code.is_successful():
            self.finish("the device ended the observation with " + _answer_text(resp))
            return
        self.max_age = client.max_age(resp)
        if client.more_blocks(resp):
            self.incomplete = resp
            if self.completing is None or self.completing.done():
                self.completing = asyncio.ensure_future(self._complete())
            return
        self._publish(resp)

    async def _complete(self) -> None:
        """Fetch the newest notification that came in blocks in full (one at a time;
        a newer one arriving meanwhile is fetched next, older ones are skipped)."""
        while self.incomplete is not None and self.end is None:
            self.incomplete = None
            try:
                whole = await client.exchange(self.ctx, self._whole_spec())
            except IotctlError as exc:
                self.finish(f"the device stopped answering ({exc.why or exc.what})")
                return
            if whole.code.is_successful():
                self._publish(whole)

    def _failed(self, exc, generation: int) -> None:
        if generation != self.generation or self.end is not None or self.closed:
            return
        if isinstance(exc, coap_error.NotObservable):
            # a notification without Observe: the device ended the observation (RFC 7641 3.2)
            self.finish("the device ended the observation" if self.latest is not None else
                      "the resource is not observable (the response carried no Observe option)")
            return
        if isinstance(exc, coap_error.ObservationCancelled):
            self.finish("the device ended the observation")
            return
        error = client.map_error(exc, self.spec().what)
        self.finish(f"{error.why or error.what}")


def _leave_all(members) -> None:
    for observed, slot in members:
        observed.leave(slot)


class EventStream:
    """The body of an event-stream response: server-sent events from one or more
    slots (`mux`: the page's one stream for many resources, events named `value` and
    `end` with JSON data). An async iterator for ServerResponse(stream=...): the HTTP
    server `aclose()`s it when the client goes away; were the response never sent, the
    finalizer leaves the observations all the same."""

    def __init__(self, entries: list[tuple[str | None, Observed]], mux: bool = False, hello: bytes = b""):
        self.wake = asyncio.Event()
        self.mux = mux
        self.entries: list[tuple[str | None, Observed, Slot]] = []
        members = []
        for label, observed in entries:
            slot = Slot(self.wake)
            self.entries.append((label, observed, slot))
            members.append((observed, slot))
        self.pending: deque[bytes] = deque([hello] if hello else [])
        self._leave = weakref.finalize(self, _leave_all, members)
        self._leave.atexit = False
        for _, observed, slot in self.entries:
            observed.join(slot)

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        while not self.pending:
            if all(slot.done for _, _, slot in self.entries):
                self._leave()
                raise StopAsyncIteration
            if not self.wake.is_set():
                try:
                    await asyncio.wait_for(self.wake.wait(), KEEPALIVE)
                except asyncio.TimeoutError:
                    return b": keep-alive\n\n"
            self.wake.clear()
            for label, observed, slot in self.entries:
                for item in slot.take():
                    self.pending.append(self._event(label, item))
        return self.pending.popleft()

    def _event(self, label: str | None, item) -> bytes:
        if not self.mux:
            if isinstance(item, End):
                return mapping.sse_event(item.reason.encode("utf-8"), event="end")
            return mapping.sse_event(item.payload, event_id=item.seq)
        if isinstance(item, End):
            return mapping.sse_event(json.dumps({"path": label, "reason": item.reason}).encode(), event="end")
        try:
            text, encoding = item.payload.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            import base64

            text, encoding = base64.b64encode(item.payload).decode("ascii"), "base64"
        data = {"path": label, "payload": text, "encoding": encoding,
                "content_type": mapping.media_type(item.content_format), "seq": item.seq}
        return mapping.sse_event(json.dumps(data).encode(), event="value")

    async def aclose(self) -> None:
        self._leave()

    def close(self) -> None:
        self._leave()


def _answer_text(resp) -> str:
    diag = _diagnostic(bytes(resp.payload)) if not resp.code.is_successful() else ""
    return str(resp.code) + (f": {diag}" if diag else "")


# --------------------------------------------------------------------------- CoAP to HTTP


class HttpForward(resource.Resource):
    """The CoAP listener's forward proxy: a request with Proxy-Uri http[s]://... (or
    Proxy-Scheme http[s]) carried out over HTTP, its answer mapped back."""

    def __init__(self, proxy: "Proxy"):
        super().__init__()
        self.proxy = proxy
        self._block1 = BoundedSpool(proxy.cfg.max_body)
        self._block2 = BoundedCache()
        self.active = 0   # HTTP requests in progress (at most --max-requests: past it 5.03)

    async def render(self, request):
        if self.active >= self.proxy.cfg.max_requests:
            answer = _coap_error("5.03", f"too many requests in progress (at most {self.proxy.cfg.max_requests})")
            answer.opt.max_age = 1
            return answer
        self.active += 1
        try:
            return await self._forward(request)
        finally:
            self.active -= 1

    async def _forward(self, request):
        opt = request.opt
        method_name = str(request.code)
        try:
            url = mapping.proxy_url(opt.proxy_uri, opt.proxy_scheme, opt.uri_host,
                                    None if opt.uri_port is None else int(opt.uri_port),
                                    tuple(opt.uri_path), tuple(opt.uri_query))
            method = mapping.http_method(method_name)
        except MappingError as exc:
            return _coap_error(exc.status, exc.text)
        headers = []
        if opt.content_format is not None:
            headers.append(("Content-Type", mapping.media_type(int(opt.content_format))))
        if opt.accept is not None:
            headers.append(("Accept", mapping.media_type(int(opt.accept))))
        body = bytes(request.payload) if method in ("POST", "PUT", "PATCH") else None
        cfg = self.proxy.cfg
        try:
            target = parse_url(url, keep_fragment=False)
            resp = await asyncio.wait_for(self.proxy.http_client.fetch(method, target, headers, body), cfg.timeout)
        except asyncio.TimeoutError:
            return _coap_error("5.04", f"no answer from {url} within {cfg.timeout:g} s")
        except UsageError as exc:
            return _coap_error("4.00", f"{exc.what}: {exc.why}")
        except TimeoutError_ as exc:
            return _coap_error("5.04", exc.why or exc.what)
        except IotctlError as exc:
            return _coap_error("5.02", exc.why or exc.what)
        code = mapping.coap_code(method_name, resp.status)
        answer = aiocoap.Message(code=_code_of(code), payload=resp.body)
        content_type = mapping.header(resp.headers, "content-type")
        if content_type:
            cf = mapping.content_format(content_type)
            if cf is not None:
                answer.opt.content_format = cf
        age = mapping.max_age(resp.headers, resp.status)
        if age is not None:
            answer.opt.max_age = age
        where = mapping.header(resp.headers, "location")
        if code == "2.01" and where:
            _location(answer, target, where)
        return answer


def _location(answer, origin, where: str) -> None:
    """A 201's Location as Location-Path/Location-Query, when it is on the same HTTP
    origin (CoAP's Location options are relative to the request's URI)."""
    try:
        located = origin.join(where)
    except Exception:
        return
    if (located.scheme, located.host, located.port) != (origin.scheme, origin.host, origin.port):
        return
    path, _, query = located.target.partition("?")
    answer.opt.location_path = tuple(unquote(p) for p in path.split("/")[1:] if p)
    if query:
        answer.opt.location_query = tuple(unquote(q) for q in query.split("&"))


def _coap_error(code: str, text: str):
    msg = aiocoap.Message(code=_code_of(code), payload=text.encode("utf-8"))
    msg.opt.content_format = 0
    return msg


class ProxyInfo(resource.Resource):
    """The CoAP listener's own root: what it is."""

    async def render_get(self, request):
        text = ("iotctl coap proxy: send a request with Proxy-Uri http://HOST/PATH (or Proxy-Scheme http "
                "and Uri-Host) and it is carried out over HTTP.\n")
        msg = aiocoap.Message(payload=text.encode())
        msg.opt.content_format = 0
        return msg


class ProxyCore(resource.Resource):
    """/.well-known/core of the CoAP listener: the HTTP listener's HC proxy URI
    (RFC 8075 5.5: rt=core.hc, anchored at the HTTP origin)."""

    def __init__(self, proxy: "Proxy"):
        super().__init__()
        self.proxy = proxy

    async def render_get(self, request):
        links = [{"href": "/", "title": "iotctl coap proxy (CoAP to HTTP)"}]
        if self.proxy.http_server is not None:
            host, _ = self.proxy.cfg.http
            host = f"[{host}]" if ":" in host else host
            links.append({"href": "/hc/", "anchor": f"http://{host}:{self.proxy.http_port}", "rt": "core.hc"})
        msg = aiocoap.Message(payload=format_links(links).encode())
        msg.opt.content_format = 40
        return msg


class ProxySite(LoggingSite):
    """The CoAP listener's site: a request naming a proxy target goes to the forward
    proxy; the rest to the listener's own resources. Logged as `coap serve` logs."""

    def __init__(self, log: Log, forward: HttpForward):
        super().__init__(log)
        self.forward = forward

    def _find_child_and_pathstripped_message(self, request):
        if request.opt.proxy_uri is not None or request.opt.proxy_scheme is not None:
            return self.forward, request
        return super()._find_child_and_pathstripped_message(request)


# --------------------------------------------------------------------------- the proxy


class _Tls:
    """What HttpConfig asks of an endpoint: the TLS context for https:// targets."""

    def __init__(self, cafile: str | None):
        self.cafile = cafile

    def ssl_context(self):
        from iotctl.tls import make_ssl_context

        return make_ssl_context(cafile=self.cafile)


class Proxy:
    """Both listeners and what they share; made and used on the loop's thread."""

    def __init__(self, cfg: ProxyConfig):
        self.cfg = cfg
        self.log = Log(cfg.log, cfg.quiet)
        self.contexts: dict[str, asyncio.Future] = {}
        self.observed: dict[tuple, Observed] = {}
        self.observers = 0
        self.tasks: set[asyncio.Task] = set()
        self.notes: dict[int, str] = {}   # what the log line of a request in progress adds
        self.http_server: HttpServer | None = None
        self.http_port: int | None = None
        self.coap_ctx = None
        self.coap_port: int | None = None
        self.http_client = Client(HttpConfig(_Tls(cfg.cafile), timeout=cfg.timeout, max_size=cfg.max_size,
                                             follow=True, debug=cfg.debug))

    # ------------------------------------------------------------ start and stop

    async def start(self) -> None:
        cfg = self.cfg
        try:
            if cfg.http is not None:
                host, port = cfg.http
                server = HttpServer(self.handle, host, port, max_body=cfg.max_body,
                                    max_connections=cfg.max_connections, max_requests=cfg.max_requests,
                                    write_timeout=cfg.client_timeout, on_request=self._logged,
                                    server_name="iotctl coap proxy")
                try:
                    await server.start()
                except OSError as exc:
                    raise _listen_error("--http", host, port, exc) from None
                self.http_server, self.http_port = server, server.port
            if cfg.coap is not None:
                await self._start_coap()
        except BaseException:
            await self.stop()
            raise
        if self.http_server is not None:
            self.log(f"iotctl: proxying HTTP to CoAP on {_url('http', cfg.http[0], self.http_port)} "
                     "(/hc/coap://HOST:PORT/PATH; Accept: text/event-stream observes; the page at /)")
        if self.coap_ctx is not None:
            self.log(f"iotctl: proxying CoAP to HTTP on {_url('coap', cfg.coap[0], self.coap_port)} "
                     "(Proxy-Uri http://HOST/PATH)")
        self.log("iotctl: Ctrl-C stops")

    async def _start_coap(self) -> None:
        host, port = self.cfg.coap
        forward = HttpForward(self)
        site = ProxySite(self.log, forward)
        site.add_resource([], ProxyInfo())
        site.add_resource([".well-known", "core"], ProxyCore(self))
        try:
            ctx = await aiocoap.Context.create_server_context(site, bind=(host, port), transports=["udp6"],
                                                              loggername="coap-server")
        except OSError as exc:
            raise _listen_error("--coap", host, port, exc) from None
        except Exception as exc:  # e.g. a name that does not resolve
            raise IotctlError(f"cannot listen on {host} port {port} (--coap)", str(exc)) from None
        self.coap_ctx = ctx
        self.coap_port = port
        _piggyback_window(ctx, PIGGYBACK_WINDOW)
        try:
            sock = ctx.request_interfaces[0].token_interface.message_interface.transport.get_extra_info("socket")
            self.coap_port = sock.getsockname()[1]
        except Exception:
            pass

    async def stop(self) -> None:
        # event streams end with a last event (and the device hears the deregistration)
        # before the listener closes, so their clients see a stream that ended, not a cut
        running = list(self.observed.values())
        for observed in running:
            observed.finish("the proxy stopped", deregister=True)
        if self.http_server is not None:
            await self.http_server.close(grace=1.0)
        for observed in running:
            observed.close()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=2.5)
        for future in list(self.contexts.values()):
            if future.done() and not future.cancelled() and future.exception() is None:
                try:
                    await future.result().shutdown()
                except Exception:
                    pass
        if self.coap_ctx is not None:
            try:
                async with asyncio.timeout(3):
                    await self.coap_ctx.shutdown()
            except Exception:
                pass
        await self.http_client.aclose()

    def spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def context(self, uri: str):
        """The client context of a target URI's scheme (one per scheme, made once)."""
        scheme = formats.uri_scheme(uri)
        future = self.contexts.get(scheme)
        if future is None:
            future = asyncio.ensure_future(client.open_context(uri))
            self.contexts[scheme] = future
        try:
            return await asyncio.shield(future)
        except IotctlError:
            if self.contexts.get(scheme) is future:
                del self.contexts[scheme]  # the next request tries again
            raise

    def observe(self, uri: str, accept: int | None) -> Observed:
        """The running observation of (uri, accept), or a new one."""
        observed = self.observed.get((uri, accept))
        if observed is None:
            observed = Observed(self, uri, accept)
            self.observed[observed.key] = observed
        return observed

    def forget(self, observed: Observed) -> None:
        if self.observed.get(observed.key) is observed:
            del self.observed[observed.key]

    # ------------------------------------------------------------ the HTTP side

    async def handle(self, request: ServerRequest) -> ServerResponse:
        path = request.path
        if request.method in ("GET", "HEAD"):
            if path == "/":
                return await self._page(request)
            if path == "/.iotctl/page.js":
                return _static(page.SCRIPT, "text/javascript; charset=utf-8")
            if path == "/.iotctl/page.css":
                return _static(page.STYLE, "text/css; charset=utf-8")
            if path == "/.iotctl/observe":
                return self._page_stream(request)
            if path == "/.well-known/core":
                return ServerResponse(200, [("Content-Type", "application/link-format")],
                                      b'</hc/>;rt="core.hc"')
            if path == "/favicon.ico":
                return _own(404, "no icon here")
        try:
            target = mapping.parse_target(request.target)
            method = mapping.coap_method(request.method)
        except MappingError as exc:
            return _own(exc.status, exc.text)
        try:
            accept = mapping.parse_accept(request.header("accept"))
            if accept.event_stream and method == "get" and request.method == "GET":
                return await self._observe(request, target, accept)
            has_body = method in ("post", "put", "patch", "ipatch", "fetch")
            content_format = None
            if has_body:
                content_format = mapping.request_content_format(request.header("content-type"),
                                                                request.header("content-encoding"))
            options, validating = mapping.conditional_options(request.header("if-match"),
                                                              request.header("if-none-match"))
        except MappingError as exc:
            return _own(exc.status, exc.text)
        body = request.body if has_body else b""
        spec = client.RequestSpec(method, target.uri, payload=body, content_format=content_format,
                                  accept=accept.content_format, options=options, timeout=self.cfg.timeout,
                                  max_size=self.cfg.max_size)
        try:
            ctx = await self.context(target.uri)
            resp = await client.exchange(ctx, spec)
        except IotctlError as exc:
            return self._failure(request, exc, target.uri)
        # options the proxy added (not from the client's request): Block1 for a body bigger than a block
        proxy_options = len(body) > 1024
        return self._response(request, target, resp, validating, proxy_options)

    def _response(self, request, target: mapping.Target, resp, conditional: bool = False,
                  proxy_options: bool = False) -> ServerResponse:
        number = int(resp.code)
        cls, detail = number >> 5, number & 31
        payload = bytes(resp.payload)
        status, reason = mapping.http_status(cls, detail, bool(payload), conditional, proxy_options)
        headers = []
        cf = resp.opt.content_format
        if cf is not None:
            headers.append(("Content-Type", mapping.media_type(int(cf))))
        elif payload:
            # a diagnostic payload is UTF-8 text (RFC 7252 5.5.2); a 2.xx without a format is bytes
            headers.append(("Content-Type", "text/plain; charset=utf-8" if cls >= 4 else "application/octet-stream"))
        max_age = resp.opt.max_age
        headers += mapping.cache_control(None if max_age is None else int(max_age), cls, detail)
        if resp.opt.etag is not None:
            headers.append(("ETag", mapping.etag_header(bytes(resp.opt.etag))))
        where = mapping.location(target, tuple(resp.opt.location_path), tuple(resp.opt.location_query))
        if where:
            headers.append(("Location", where))
        if status in (204, 304):
            payload = b""
            headers = [(k, v) for k, v in headers if k != "Content-Type"]
        if status == 502 and (cls, detail) in ((2, 31), (4, 8)):
            payload = f"the device answered {resp.code} outside a block-wise transfer\n".encode()
        self.notes[id(request)] = str(resp.code)
        return ServerResponse(status, headers, payload, reason=reason)

    def _failure(self, request, exc: IotctlError, uri: str) -> ServerResponse:
        """What the proxy answers when the device did not (RFC 8075 8.5: a timeout is 504)."""
        why = exc.why or exc.what
        if isinstance(exc, TimeoutError_):
            status, text = 504, f"no answer from {uri} within {self.cfg.timeout:g} s"
        elif isinstance(exc, UsageError):
            status, text = 400, f"{exc.what}: {why}"
        else:  # unreachable (ICMP port unreachable, no such host), more than --max-size, ...
            status, text = 502, f"{uri}: {why}"
        self.notes[id(request)] = "no CoAP answer" if status == 504 else "failed"
        return _own(status, text)

    async def _observe(self, request, target: mapping.Target, accept: mapping.Accept) -> ServerResponse:
        """GET with Accept: text/event-stream: the first response decides the HTTP status
        (an error is mapped as any response); a 2.xx starts the event stream."""
        if self.observers >= self.cfg.max_observers:
            return _own(503, f"too many event streams (at most {self.cfg.max_observers})", [("Retry-After", "5")])
        observed = self.observe(target.uri, accept.content_format)
        stream = EventStream([(None, observed)], hello=mapping.sse_comment(f"observing {target.uri}"))
        first = await asyncio.shield(observed.first)
        if isinstance(first, IotctlError):
            stream.close()
            return self._failure(request, first, target.uri)
        if not first.code.is_successful():
            stream.close()
            return self._response(request, target, first)
        self.notes[id(request)] = f"{first.code}; event stream"
        if not self.cfg.quiet:
            self.log(f"{_now()} {request.remote} HTTP {request.method} {request.target} -> 200 event stream "
                     f"({first.code}; {len(observed.slots)} client(s) of this observation)")
        return ServerResponse(200, SSE_HEADERS, stream=stream)

    def _page_stream(self, request) -> ServerResponse:
        """The page's one stream: /.iotctl/observe?device=BASE&path=/a&path=/b."""
        query = parse_qs(request.query)
        try:
            base = self._device_base((query.get("device") or [""])[0])
        except MappingError as exc:
            return _own(exc.status, exc.text)
        paths = [p for p in query.get("path", []) if p.startswith("/") and _valid(base + p)][:MAX_PATHS]
        if not paths:
            return _own(400, "name the resources: ?device=coap://HOST:PORT&path=/a&path=/b")
        if self.observers + len(paths) > self.cfg.max_observers:
            return _own(503, f"too many event streams (at most {self.cfg.max_observers})", [("Retry-After", "5")])
        entries = [(p, self.observe(base + p, None)) for p in dict.fromkeys(paths)]
        self.notes[id(request)] = f"event stream of {len(entries)} resource(s)"
        if not self.cfg.quiet:
            self.log(f"{_now()} {request.remote} HTTP {request.method} {request.target} -> 200 event stream "
                     f"({len(entries)} resource(s))")
        return ServerResponse(200, SSE_HEADERS, stream=EventStream(entries, mux=True,
                                                                   hello=mapping.sse_comment(f"observing {base}")))

    def _device_base(self, device: str) -> str:
        """A device named on the page (coap://HOST[:PORT], or HOST[:PORT]) as
        scheme://authority, checked as a target URI is."""
        device = device.strip()
        if not device:
            raise MappingError(400, "no device: ?device=coap://HOST:PORT")
        if "://" not in device:
            device = "coap://" + device
        target = mapping.parse_target("/" + mapping.hosting(device))
        parts = urlsplit(target.uri)
        return f"{parts.scheme}://{parts.netloc}"

    async def _page(self, request) -> ServerResponse:
        query = parse_qs(request.query)
        device = (query.get("device") or [""])[0].strip() or None
        links = error = base = None
        status = 200
        if device:
            try:
                base = self._device_base(device)
                links = await self._links(base)
            except MappingError as exc:
                status, error = exc.status, exc.text
                links = None
            except IotctlError as exc:
                status = 504 if isinstance(exc, TimeoutError_) else 502
                error = f"{exc.what}: {exc.why}" if exc.why else exc.what
                links = None
        html = page.render(device, links, error, base)
        self.notes[id(request)] = "page" + (f" of {base}" if base else "")
        return ServerResponse(status, [("Content-Type", "text/html; charset=utf-8"),
                                       ("Content-Security-Policy", page.CSP), ("Cache-Control", "no-store"),
                                       ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer")],
                              html.encode("utf-8"))

    async def _links(self, base: str) -> list[dict]:
        """The device's /.well-known/core, as paths on the device."""
        uri = base + "/.well-known/core"
        spec = client.RequestSpec("get", uri, accept=40, timeout=self.cfg.timeout, max_size=self.cfg.max_size)
        resp = await client.exchange(await self.context(uri), spec)
        if not resp.code.is_successful():
            raise MappingError(502, f"{uri}: the device answered {_answer_text(resp)}")
        try:
            links = parse_links(bytes(resp.payload).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise MappingError(502, f"{uri}: the answer is not link-format ({exc})") from None
        out, seen = [], set()
        for link in links:
            href = str(link.get("href", ""))
            if href.startswith("/"):
                path = href
            elif "://" in href:
                parts = urlsplit(href)
                if f"{parts.scheme}://{parts.netloc}".lower() != base.lower():
                    continue
                path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            else:
                path = "/" + href
            if path.split("?")[0] == "/.well-known/core" or path in seen:
                continue
            seen.add(path)
            out.append({**link, "href": path})
            if len(out) >= MAX_LINKS:
                break
        return out

    def _logged(self, request: ServerRequest, status: int, size: int, seconds: float) -> None:
        note = self.notes.pop(id(request), None)
        if len(self.notes) > 4 * (self.cfg.max_connections + self.cfg.max_requests):
            self.notes.clear()  # notes of requests whose connection broke before the log line
        if self.cfg.quiet:
            return
        extra = f"{note}; " if note else ""
        self.log(f"{_now()} {request.remote} HTTP {request.method} {request.target} -> {status} "
                 f"({extra}{size} B, {seconds * 1000:.1f} ms)")


def _valid(uri: str) -> bool:
    try:
        formats.check_uri(uri)
    except UsageError:
        return False
    return True


def _own(status: int, text: str, headers=()) -> ServerResponse:
    """An answer of the proxy itself: the status and one line of text."""
    return ServerResponse(status, [("Content-Type", "text/plain; charset=utf-8"), *headers],
                          (text + "\n").encode("utf-8"), reason=mapping.REASONS.get(status, ""))


def _static(text: str, content_type: str) -> ServerResponse:
    return ServerResponse(200, [("Content-Type", content_type), ("Cache-Control", "no-cache"),
                                ("X-Content-Type-Options", "nosniff")], text.encode("utf-8"))


def _piggyback_window(ctx, seconds: float) -> None:
    """Let the requests of this server context (only) wait `seconds` for their answer
    before aiocoap sends the empty ACK (its EMPTY_ACK_DELAY, read from each incoming
    request's transport tuning when the request is processed)."""
    try:
        from aiocoap.numbers import TransportTuning
    except ImportError:  # an aiocoap without per-message tuning keeps its own delay
        return

    class Tuning(TransportTuning):
        EMPTY_ACK_DELAY = seconds

    tuning = Tuning()
    for interface in ctx.request_interfaces:
        manager = getattr(interface, "token_interface", None)
        process = getattr(manager, "_process_request", None)
        if process is None:
            continue

        def _process_request(request, process=process):
            request.transport_tuning = tuning
            process(request)

        manager._process_request = _process_request


def _url(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _listen_error(option: str, host: str, port: int, exc: OSError) -> IotctlError:
    why = (exc.strerror or str(exc)).lower()
    if exc.errno == 98:
        why = "the address is already in use"
    return IotctlError(f"cannot listen on {host} port {port} ({option})", why,
                       hint=f"another server may use that port; choose one with {option} HOST:PORT")


# --------------------------------------------------------------------------- running it


async def start(cfg: ProxyConfig) -> Proxy:
    """Start both listeners on the running (shared) loop; raises IotctlError when one
    cannot listen (the other is closed again)."""
    client.fix_aiocoap()
    bounded_deduplication()
    proxy = Proxy(cfg)
    client.bad_request_hook = log_bad_request(proxy.log)
    logged = loop_exceptions(proxy.log, cfg.debug)

    def exceptions(loop, context):
        # aiocoap's own callbacks raise on late or duplicate messages (e.g. the answer to
        # a deregistration, "ClientObservation cancelled twice"): a line of the -d trace
        if client.from_aiocoap(context) and not cfg.debug:
            logging.getLogger("coap").debug("%s: %r", context.get("message"), context.get("exception"))
            return
        logged(loop, context)

    asyncio.get_running_loop().set_exception_handler(exceptions)
    await proxy.start()
    return proxy


def serve(cfg: ProxyConfig) -> None:
    """Run in the foreground until Ctrl-C or SIGTERM (then exit 0)."""
    from iotctl.trace import route_logs

    route_logs(("coap-server", "coap", "iotctl.http", "asyncio"), cfg.debug)
    # a second server on the same UDP port must be an error, not a silent share
    os.environ.setdefault("AIOCOAP_REUSE_PORT", "0")
    proxy = background.serve_forever(client.shared_loop(), start(cfg), lambda p: p.stop, timeout=6)
    proxy.log("iotctl: proxy stopped")

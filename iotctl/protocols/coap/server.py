"""`iotctl coap serve`: a simulated CoAP device on aiocoap.

Imported only by the serve command. Resources:

    /                      what this is (text)
    /time                  the time (UTC), observable, a notification every second
    /sensors/temperature   observable sensors whose values change every --interval;
    /sensors/humidity        text, JSON, CBOR, SenML JSON and SenML CBOR by Accept
    /actuators/led         GET/PUT on|off, POST toggles; observable
    /store, /store/NAME    POST creates, PUT creates or replaces, DELETE removes; observable
    /large                 a text resource that needs block-wise transfer
    /files/...             the files of --dir (read-only)
    /.well-known/core      all of them in link-format with rt, if, ct, obs, title (filterable)

Every request is logged as one line on stderr (or the --log file).

The device runs on the process's one asyncio loop (iotctl.aioloop, its own thread):
`start(cfg)` is a coroutine that opens the server context and returns a `Running`
whose `stop()` closes it, so a command that serves more than CoAP (the coming `coap
proxy`, with an HTTP server) starts its other servers on the same loop; `serve(cfg)`
is the foreground command: start, wait for Ctrl-C or SIGTERM, stop.

Bounded against floods and hostile clients: a block-wise upload is refused with 4.13
(and Size1) as soon as it passes MAX_BODY, at most MAX_ASSEMBLIES uploads and
MAX_CACHED block-wise responses are held per resource (the oldest are dropped), and a
client may hold at most MAX_OBSERVATIONS_PER_CLIENT observations (MAX_OBSERVATIONS in
all); past that a GET with Observe is answered once, without an observation.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass
from typing import IO

import aiocoap
from aiocoap import error, resource
from aiocoap.blockwise import Block1Spool, Block2Cache, _extract_block_key
from aiocoap.numbers.codes import Code

from iotctl import background
from iotctl.errors import IotctlError
from iotctl.protocols.coap.linkformat import filter_links, format_links

TEXT, LINK, OCTETS, JSON, CBOR, SENML_JSON, SENML_CBOR = 0, 40, 42, 50, 60, 110, 112
MAX_STORE_ITEMS = 100
MAX_STORE_SIZE = 64 * 1024
MAX_FILE_SIZE = 16 * 1024 * 1024
MAX_BODY = MAX_STORE_SIZE          # the largest request body any resource takes
MAX_ASSEMBLIES = 32                # block-wise uploads in progress, per resource
MAX_CACHED = 32                    # block-wise responses kept for their next blocks, per resource
MAX_OBSERVATIONS_PER_CLIENT = 16
MAX_OBSERVATIONS = 1024
MAX_REMEMBERED = 2048              # message IDs remembered for duplicate detection
DEVICE = "urn:dev:iotctl:sim:"


@dataclass
class ServeConfig:
    address: str = "127.0.0.1"
    port: int = 5683
    tcp: bool = False
    directory: str | None = None
    interval: float = 1.0
    large_size: int = 4096
    quiet: bool = False
    debug: bool = False
    log: IO[str] | None = None   # where the request log goes [default: stderr]


Log = background.ServerLog


def _response(payload: bytes = b"", ct: int | None = None, code=None, **opts) -> aiocoap.Message:
    msg = aiocoap.Message(code=code, payload=payload, **opts)
    if ct is not None:
        msg.opt.content_format = ct
    return msg


def _error(code, text: str) -> aiocoap.Message:
    return _response(text.encode(), TEXT, code=code)


class TooLarge(error.ConstructionRenderableError):
    """4.13 Request Entity Too Large with Size1, the largest body taken (RFC 7959 2.9.3)."""

    code = Code.REQUEST_ENTITY_TOO_LARGE

    def __init__(self, limit: int):
        super().__init__(f"at most {limit} bytes")
        self.limit = limit

    def to_message(self):
        msg = super().to_message()
        msg.opt.size1 = self.limit
        return msg


def _trim(timeoutdict, keep: int) -> None:
    """Drop the oldest entries of an aiocoap TimeoutDict beyond `keep`."""
    items = timeoutdict._items
    while len(items) > keep:
        del items[next(iter(items))]


class BoundedSpool(Block1Spool):
    """aiocoap's Block1 reassembly, refusing a body past `limit` at the block that
    passes it (aiocoap buffers without end and leaves the check to the resource)."""

    def __init__(self, limit: int = MAX_BODY):
        super().__init__()
        self.limit = limit

    def feed_and_take(self, req):
        block1 = req.opt.block1
        if block1 is None:
            return req
        announced = req.opt.size1 if block1.block_number == 0 else None
        if block1.start + len(req.payload) > self.limit or (announced or 0) > self.limit:
            self._assemblies._items.pop(_extract_block_key(req), None)
            raise TooLarge(self.limit)
        try:
            return super().feed_and_take(req)  # raises Continue until the last block
        finally:
            _trim(self._assemblies, MAX_ASSEMBLIES)


class BoundedCache(Block2Cache):
    """aiocoap's cache of block-wise responses, holding at most `keep` of them."""

    def __init__(self, keep: int = MAX_CACHED):
        super().__init__()
        self.keep = keep

    async def extract_or_insert(self, req, response_builder):
        try:
            return await super().extract_or_insert(req, response_builder)
        finally:
            _trim(self._completes, self.keep)


class Described:
    """Mixin: the link-format attributes a resource shows in /.well-known/core."""

    link: dict = {}

    def link_attrs(self) -> dict:
        return dict(self.link)


# --------------------------------------------------------------------------- resources


class Root(Described, resource.Resource):
    link = {"title": "iotctl device", "ct": "0"}

    async def render_get(self, request):
        text = ("iotctl simulated CoAP device.\n"
                "GET /.well-known/core lists the resources; try /sensors/temperature, "
                "observe /time, PUT /store/NAME.\n")
        return _response(text.encode(), TEXT)


class Clock(Described, resource.ObservableResource):
    link = {"rt": "time", "if": "core.s", "ct": "0", "obs": True, "title": "UTC time"}

    async def render_get(self, request):
        if request.opt.accept not in (None, TEXT):
            return _error(Code.NOT_ACCEPTABLE, "only text/plain")
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return _response(now.encode(), TEXT, max_age=1)


class Sensor(Described, resource.ObservableResource):
    """A number that drifts randomly; representations by Accept."""

    def __init__(self, name: str, unit: str, value: float, low: float, high: float, rt: str, title: str):
        super().__init__()
        self.name, self.unit, self.value, self.low, self.high = name, unit, value, low, high
        self.link = {"rt": rt, "if": "core.s", "ct": "0 50 60 110 112", "obs": True, "title": title}
        self.updated = time.time()

    def step(self) -> None:
        span = self.high - self.low
        self.value = min(self.high, max(self.low, self.value + random.uniform(-span, span) / 50))
        self.updated = time.time()
        self.updated_state()

    async def render_get(self, request):
        value = round(self.value, 2)
        accept = request.opt.accept
        accept = None if accept is None else int(accept)
        if accept in (None, TEXT):
            return _response(f"{value:.2f}".encode(), TEXT)
        record = {"n": self.name, "u": self.unit, "v": value, "t": round(self.updated, 3)}
        if accept == JSON:
            return _response(json.dumps(record).encode(), JSON)
        if accept == SENML_JSON:
            return _response(json.dumps([{"bn": DEVICE, **record}]).encode(), SENML_JSON)
        from iotctl.codecs import cbor_encode

        if accept == CBOR:
            return _response(cbor_encode(record), CBOR)
        if accept == SENML_CBOR:  # RFC 8428 labels: bn -2, n 0, u 1, v 2, t 6
            return _response(cbor_encode([{-2: DEVICE, 0: self.name, 1: self.unit, 2: value,
                                           6: record["t"]}]), SENML_CBOR)
        return _error(Code.NOT_ACCEPTABLE, "Accept one of 0, 50, 60, 110, 112")


def _parse_switch(payload: bytes, ct: int | None):
    """on/off from text, JSON or CBOR; None when not understood."""
    if ct in (None, TEXT, OCTETS):
        word = payload.decode("utf-8", "replace").strip().lower()
        return {"on": True, "1": True, "true": True, "off": False, "0": False, "false": False}.get(word)
    if ct == JSON:
        try:
            value = json.loads(payload)
        except ValueError:
            return None
    elif ct == CBOR:
        from iotctl.codecs import cbor_decode

        try:
            value = cbor_decode(payload)
        except ValueError:
            return None
    else:
        raise error.UnsupportedContentFormat()
    if isinstance(value, dict):
        value = value.get("on")
    return value if isinstance(value, bool) else None


class Led(Described, resource.ObservableResource):
    link = {"rt": "light", "if": "core.a", "ct": "0 50 60", "obs": True, "title": "LED"}

    def __init__(self):
        super().__init__()
        self.on = False

    async def render_get(self, request):
        accept = request.opt.accept
        accept = None if accept is None else int(accept)
        if accept in (None, TEXT):
            return _response(b"on" if self.on else b"off", TEXT)
        if accept == JSON:
            return _response(json.dumps({"on": self.on}).encode(), JSON)
        if accept == CBOR:
            from iotctl.codecs import cbor_encode

            return _response(cbor_encode({"on": self.on}), CBOR)
        return _error(Code.NOT_ACCEPTABLE, "Accept one of 0, 50, 60")

    async def render_put(self, request):
        ct = request.opt.content_format
        value = _parse_switch(request.payload, None if ct is None else int(ct))
        if value is None:
            return _error(Code.BAD_REQUEST, "expected on or off (text), true/false or {\"on\": bool} (JSON/CBOR)")
        changed = value != self.on
        self.on = value
        if changed:
            self.updated_state()
        return _response(code=Code.CHANGED)

    async def render_post(self, request):
        self.on = not self.on
        self.updated_state()
        return _response(b"on" if self.on else b"off", TEXT, code=Code.CHANGED)


class Large(Described, resource.Resource):
    def __init__(self, size: int):
        super().__init__()
        lines = []
        n = 0
        while sum(map(len, lines)) < size:
            lines.append(f"{n:06d} The quick brown fox jumps over the lazy dog.\n")
            n += 1
        self.body = "".join(lines).encode()[:size]
        self.link = {"rt": "block", "ct": "0", "sz": str(size), "title": "Large"}

    async def render_get(self, request):
        return _response(self.body, TEXT, size2=len(self.body))


class Store(resource.ObservableResource, resource.PathCapable):
    """/store/NAME: a small writable key-value store; each entry observable."""

    def __init__(self):
        super().__init__()
        self.items: dict[str, tuple[bytes, int | None]] = {}
        self.watchers: dict[str, set] = {}
        self.counter = 0

    @staticmethod
    def _name(request) -> str:
        path = list(request.opt.uri_path)
        if any(p in ("", ".", "..") for p in path[:-1]):
            raise error.BadRequest()
        return "/".join(p for p in path if p)

    async def add_observation(self, request, serverobservation):
        name = self._name(request)
        watchers = self.watchers.setdefault(name, set())
        watchers.add(serverobservation)
        serverobservation.accept(lambda: watchers.discard(serverobservation))

    def notify(self, name: str, response=None) -> None:
        for obs in list(self.watchers.get(name, ())):
            obs.trigger(response)

    def listing(self) -> list[dict]:
        links = []
        for name, (payload, ct) in sorted(self.items.items()):
            link = {"href": f"/{name}"}
            if ct is not None:
                link["ct"] = str(ct)
            link["obs"] = True
            link["sz"] = str(len(payload))
            links.append(link)
        return links

    async def render_get(self, request):
        name = self._name(request)
        if not name:
            return _response(format_links({**link, "href": "/store" + link["href"]}
                                          for link in self.listing()).encode(), LINK)
        if name not in self.items:
            return _error(Code.NOT_FOUND, f"no /store/{name}; PUT creates it")
        payload, ct = self.items[name]
        return _response(payload, ct)

    async def render_put(self, request):
        name = self._name(request)
        if not name:
            return _error(Code.METHOD_NOT_ALLOWED, "PUT /store/NAME, or POST /store")
        return self._write(name, request)

    async def render_post(self, request):
        name = self._name(request)
        if name:
            return self._write(name, request)
        while True:
            self.counter += 1
            name = str(self.counter)
            if name not in self.items:
                break
        response = self._write(name, request)
        response.opt.location_path = ("store", name)
        return response

    def _write(self, name: str, request):
        if len(request.payload) > MAX_STORE_SIZE:
            return _error(Code.REQUEST_ENTITY_TOO_LARGE, f"at most {MAX_STORE_SIZE} bytes")
        created = name not in self.items
        if created and len(self.items) >= MAX_STORE_ITEMS:
            return _error(Code.SERVICE_UNAVAILABLE, f"the store is full ({MAX_STORE_ITEMS} entries)")
        ct = request.opt.content_format
        self.items[name] = (bytes(request.payload), None if ct is None else int(ct))
        self.notify(name)
        return _response(code=Code.CREATED if created else Code.CHANGED)

    async def render_delete(self, request):
        name = self._name(request)
        if name not in self.items:
            return _error(Code.NOT_FOUND, f"no /store/{name}")
        del self.items[name]
        self.notify(name, _error(Code.NOT_FOUND, f"/store/{name} was deleted"))
        return _response(code=Code.DELETED)


class StoreIndex(Described, resource.Resource):
    link = {"rt": "store", "ct": "40", "title": "Store"}

    def __init__(self, store: Store):
        super().__init__()
        self.store = store

    async def render_get(self, request):
        return await self.store.render_get(request)

    async def render_post(self, request):
        return await self.store.render_post(request)


EXTENSIONS = {".txt": TEXT, ".log": TEXT, ".md": TEXT, ".csv": TEXT, ".json": JSON, ".cbor": CBOR,
              ".xml": 41, ".wlnk": LINK, ".senml": SENML_JSON, ".html": TEXT, ".bin": OCTETS}


def _file_ct(path: str, head: bytes) -> int:
    ext = os.path.splitext(path)[1].lower()
    if ext in EXTENSIONS:
        return EXTENSIONS[ext]
    try:
        head.decode("utf-8")
        return TEXT
    except UnicodeDecodeError:
        return OCTETS


class Files(resource.Resource, resource.PathCapable):
    """The files under a directory, read-only, at /files/..."""

    def __init__(self, root: str):
        super().__init__()
        self.root = os.path.realpath(root)

    def _path(self, request) -> str:
        parts = [p for p in request.opt.uri_path if p]
        if any(p in (".", "..") or "/" in p or "\0" in p for p in parts):
            raise error.BadRequest()
        path = os.path.realpath(os.path.join(self.root, *parts))
        if os.path.commonpath([path, self.root]) != self.root:
            raise error.Forbidden()
        return path

    def listing(self, limit: int = 200) -> list[dict]:
        links = []
        for base, dirs, files in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                full = os.path.join(base, name)
                rel = os.path.relpath(full, self.root).replace(os.sep, "/")
                try:
                    size = os.path.getsize(full)
                except OSError:
                    continue
                links.append({"href": "/" + rel, "ct": str(_file_ct(name, b"")), "sz": str(size)})
                if len(links) >= limit:
                    return links
        return links

    async def render_get(self, request):
        path = self._path(request)
        if os.path.isdir(path):
            rel = os.path.relpath(path, self.root)
            prefix = "" if rel == "." else "/" + rel.replace(os.sep, "/")
            links = [{**link, "href": "/files" + link["href"]} for link in self.listing()
                     if link["href"].startswith(prefix + "/")]
            return _response(format_links(links).encode(), LINK)
        try:
            size = os.path.getsize(path)
            if size > MAX_FILE_SIZE:
                return _error(Code.NOT_IMPLEMENTED, f"files over {MAX_FILE_SIZE} bytes are not served")
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return _error(Code.NOT_FOUND, "no such file")
        except OSError as exc:
            return _error(Code.FORBIDDEN, exc.strerror or "cannot read")
        return _response(data, _file_ct(path, data[:4096]))


class WellKnownCore(resource.Resource):
    """RFC 6690 discovery, with query filtering (?rt=temp*, ?if=..., ?href=..., ?ct=...)."""

    ct = LINK

    def __init__(self, links):
        super().__init__()
        self.links = links

    async def render_get(self, request):
        if request.opt.accept not in (None, LINK):
            return _error(Code.NOT_ACCEPTABLE, "only application/link-format")
        links = self.links()
        filters = {}
        for q in request.opt.uri_query:
            if "=" in q:
                key, value = q.split("=", 1)
                filters[key] = value
        if filters:
            links = filter_links(links, **filters)
        return _response(format_links(links).encode(), LINK)


class LoggingSite(resource.Site):
    """The site: routes by path, logs one line per request on stderr, and bounds the
    observations each client holds."""

    def __init__(self, log: Log):
        super().__init__()
        self.log = log
        self.quiet = log.quiet
        self.observers: dict[str, int] = {}   # client endpoint -> observations held
        self.observations = 0

    def add_resource(self, path, res):
        """Every resource gets bounded block-wise state."""
        res._block1 = BoundedSpool()
        res._block2 = BoundedCache()
        super().add_resource(path, res)

    async def render_to_pipe(self, pipe):
        """A GET with Observe counts against its client's observations while it lasts
        (the render task ends, or is cancelled, when the observation does); past the
        bounds the request is served once without Observe (RFC 7641 allows it).

        Only a GET or FETCH registers an observation (RFC 7641 1.2, RFC 8132 2.4): an
        Observe option on any other method is ignored. aiocoap would observe a POST too,
        re-running it for every notification it causes, each a new write: one datagram
        (POST /store/x with Observe: 0) kept the server busy for good."""
        request = pipe.request
        if request.opt.observe is not None and request.code not in (Code.GET, Code.FETCH):
            request.opt.observe = None
        if request.opt.observe != 0:
            return await self._render(pipe)
        try:
            client = request.remote.hostinfo
        except Exception:
            client = "?"
        if self.observations >= MAX_OBSERVATIONS or self.observers.get(client, 0) >= MAX_OBSERVATIONS_PER_CLIENT:
            request.opt.observe = None
            return await self._render(pipe)
        self.observations += 1
        self.observers[client] = self.observers.get(client, 0) + 1
        try:
            return await self._render(pipe)
        finally:
            self.observations -= 1
            left = self.observers[client] - 1
            if left:
                self.observers[client] = left
            else:
                del self.observers[client]

    async def _render(self, pipe):
        if not self.quiet:
            request = pipe.request
            started = time.monotonic()

            def on_event(event):
                if event.message is not None:
                    self.log(_request_line(request, event.message.code, len(event.message.payload), started))
                elif event.exception is not None:
                    exc = event.exception
                    code = exc.to_message().code if isinstance(exc, error.RenderableError) else Code.INTERNAL_SERVER_ERROR
                    self.log(_request_line(request, code, 0, started))
                return False

            pipe.on_event(on_event, is_interest=False)
        return await super().render_to_pipe(pipe)


def _request_line(request, code, size: int, started: float) -> str:
    path = "/" + "/".join(request.opt.uri_path)
    if request.opt.uri_query:
        path += "?" + "&".join(request.opt.uri_query)
    if request.opt.proxy_uri is not None:  # a forward proxy's request (coap proxy): its target
        path = request.opt.proxy_uri
    elif request.opt.proxy_scheme is not None:
        port = f":{request.opt.uri_port}" if request.opt.uri_port else ""
        path = f"{request.opt.proxy_scheme}://{request.opt.uri_host or '?'}{port}{path}"
    extra = []
    if request.opt.observe is not None:
        extra.append(f"observe={request.opt.observe}")
    for name in ("block1", "block2"):
        block = getattr(request.opt, name)
        if block is not None:
            extra.append(f"{name}={block.block_number}/{int(block.more)}/{block.size}")
    try:
        remote = request.remote.hostinfo
    except Exception:
        remote = "?"
    mtype = request.mtype.name if request.mtype is not None else "TCP"
    return (f"{time.strftime('%H:%M:%S')} {remote} {mtype} {request.code} {path}"
            + (" " + " ".join(extra) if extra else "")
            + f" -> {code} ({size} B, {(time.monotonic() - started) * 1000:.1f} ms)")


# --------------------------------------------------------------------------- the device


class Device:
    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.log = Log(cfg.log, cfg.quiet)
        self.site = LoggingSite(self.log)
        self.clock = Clock()
        self.sensors = [
            Sensor("temperature", "Cel", 21.5, -10.0, 45.0, "temperature-c", "Temperature"),
            Sensor("humidity", "%RH", 45.0, 0.0, 100.0, "humidity", "Humidity"),
        ]
        self.led = Led()
        self.store = Store()
        self.large = Large(cfg.large_size)
        self.files = Files(cfg.directory) if cfg.directory else None
        self.described: list[tuple[str, Described]] = [
            ("/", Root()),
            ("/time", self.clock),
            ("/sensors/temperature", self.sensors[0]),
            ("/sensors/humidity", self.sensors[1]),
            ("/actuators/led", self.led),
            ("/store", StoreIndex(self.store)),
            ("/large", self.large),
        ]
        for path, res in self.described:
            self.site.add_resource([p for p in path.split("/") if p], res)
        self.site.add_resource(["store"], self.store)
        if self.files is not None:
            self.site.add_resource(["files"], self.files)
        self.site.add_resource([".well-known", "core"], WellKnownCore(self.links))

    def links(self) -> list[dict]:
        out = [{"href": path, **res.link_attrs()} for path, res in self.described]
        out += [{**link, "href": "/store" + link["href"]} for link in self.store.listing()]
        if self.files is not None:
            out += [{**link, "href": "/files" + link["href"]} for link in self.files.listing()]
        return out

    async def tick(self) -> None:
        """Change the sensors every interval and the clock every second."""
        next_clock = time.monotonic() + 1.0
        next_sensors = time.monotonic() + self.cfg.interval
        while True:
            now = time.monotonic()
            await asyncio.sleep(max(0.0, min(next_clock, next_sensors) - now))
            now = time.monotonic()
            if now >= next_clock:
                next_clock += 1.0
                self.clock.updated_state()
            if now >= next_sensors:
                next_sensors += self.cfg.interval
                for sensor in self.sensors:
                    sensor.step()


def log_bad_request(log: Log):
    """One log line for a request aiocoap cannot decode (answered 4.02 by client.py)."""

    def hook(remote, mtype: int, code: int, why: str) -> None:
        if log.quiet:
            return
        try:
            host = remote.hostinfo
        except Exception:
            host = "?"
        log(f"{time.strftime('%H:%M:%S')} {host} {('CON', 'NON')[mtype]} {Code(code)} ? "
            f"-> 4.02 Bad Option ({why})")

    return hook


def bounded_deduplication() -> None:
    """aiocoap remembers every confirmable request, with its response and a timer, for
    EXCHANGE_LIFETIME (247 s): a GET flood grew the server by ~2.8 KB per request.
    Here a GET or FETCH without Observe is not remembered at all (a duplicate is
    simply answered again, as RFC 7252 4.5 allows for safe requests), and at most
    MAX_REMEMBERED other requests are (the oldest are forgotten first)."""
    import collections

    from aiocoap.messagemanager import MessageManager

    if getattr(MessageManager, "_iotctl_bounded", False):
        return
    original = MessageManager._deduplicate_message

    def _deduplicate_message(self, message):
        if message.code in (Code.GET, Code.FETCH) and message.opt.observe is None:
            return False
        key = (message.remote, message.mid)
        if key in self._recent_messages:
            return original(self, message)
        order = self.__dict__.setdefault("_iotctl_order", collections.deque())
        now = self.loop.time()
        lifetime = message.transport_tuning.EXCHANGE_LIFETIME
        while order and (len(order) >= MAX_REMEMBERED or order[0][0] <= now):
            self._recent_messages.pop(order.popleft()[1], None)
        order.append((now + lifetime, key))
        self._recent_messages[key] = None
        return False

    MessageManager._deduplicate_message = _deduplicate_message
    MessageManager._iotctl_bounded = True


def loop_exceptions(log: Log, debug: bool):
    """An exception in one of aiocoap's callbacks is one line in the log (the traceback
    with -d), never a traceback per datagram."""

    def handler(loop, context):
        exc = context.get("exception")
        if debug:
            loop.default_exception_handler(context)
            return
        log.warning(f"{context.get('message')}: {exc!r}")

    return handler


class Running:
    """A device serving on the shared loop; `stop()` (a coroutine) closes it."""

    def __init__(self, device: Device, ctx, ticker: asyncio.Task):
        self.device, self.ctx, self.ticker = device, ctx, ticker

    async def stop(self) -> None:
        self.ticker.cancel()
        try:
            async with asyncio.timeout(3):
                await self.ctx.shutdown()
        except Exception:
            pass


async def start(cfg: ServeConfig) -> Running:
    """Open the device's server context on the running (shared) loop; it serves from
    then on. Raises IotctlError when it cannot listen."""
    from iotctl.protocols.coap import client

    client.fix_aiocoap()
    bounded_deduplication()
    device = Device(cfg)
    client.bad_request_hook = log_bad_request(device.log)
    asyncio.get_running_loop().set_exception_handler(loop_exceptions(device.log, cfg.debug))
    transports = ["udp6"] + (["tcpserver"] if cfg.tcp else [])
    try:
        ctx = await aiocoap.Context.create_server_context(device.site, bind=(cfg.address, cfg.port),
                                                          transports=transports, loggername="coap-server")
    except OSError as exc:
        raise IotctlError(f"cannot listen on {cfg.address} port {cfg.port}",
                          (exc.strerror or str(exc)).lower(),
                          hint="another server may use that port; choose one with -p") from None
    except Exception as exc:  # e.g. a name that does not resolve
        raise IotctlError(f"cannot listen on {cfg.address} port {cfg.port}", str(exc)) from None
    host = f"[{cfg.address}]" if ":" in cfg.address else cfg.address
    urls = f"coap://{host}:{cfg.port}" + (f" and coap+tcp://{host}:{cfg.port}" if cfg.tcp else "")
    device.log(f"iotctl: serving a simulated device on {urls} "
               f"(GET /.well-known/core lists the resources); Ctrl-C stops")
    return Running(device, ctx, asyncio.create_task(device.tick()))


def serve(cfg: ServeConfig) -> None:
    """Serve in the foreground until Ctrl-C or SIGTERM (then exit 0)."""
    from iotctl import aioloop
    from iotctl.trace import route_logs

    route_logs(("coap-server", "coap"), cfg.debug)
    # aiocoap sets SO_REUSEPORT by default: a second server on the same port would then
    # start silently and share the requests; a busy port must be an error instead
    os.environ.setdefault("AIOCOAP_REUSE_PORT", "0")
    running = background.serve_forever(aioloop.shared(), start(cfg), lambda r: r.stop, timeout=4)
    running.device.log("iotctl: server stopped")

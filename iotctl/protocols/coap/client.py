"""CoAP client on aiocoap: requests, observation, discovery (unicast and multicast).

The one module of the client side that imports aiocoap; cli.py imports it inside the
command bodies only. Everything here is synchronous from the outside: each public
call drives its own event loop through the shared bridge (iotctl.bridge), so Ctrl-C
cancels cleanly.

aiocoap 0.4.17 quirks handled here:
- the observation's async iterator is lossy (a notification arriving before the
  previous one was consumed replaces it); callbacks feeding a queue are used instead;
- cancelling an observation only forgets it locally (the server learns it from an RST
  to the next notification); a GET with Observe: 1 on the same token deregisters it;
- a request to a multicast address returns only the first response; multicast
  discovery sends its own NON request and collects every answer until the timeout.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Iterator

import aiocoap
from aiocoap import error as coap_error
from aiocoap.numbers.codes import Code

from iotctl.errors import (ConnectError, IotctlError, PeerError, TimeoutError_, UsageError,
                           from_os_error)
from iotctl import receive
from iotctl.bridge import Bridge, Bridged
from iotctl.message import Message
from iotctl.trace import route_logs
from iotctl.protocols.coap import formats

METHODS = {"get": Code.GET, "post": Code.POST, "put": Code.PUT, "delete": Code.DELETE,
           "fetch": Code.FETCH, "patch": Code.PATCH, "ipatch": Code.iPATCH}

TRANSPORTS = {"coap": "udp6", "coaps": "tinydtls", "coap+tcp": "tcpclient", "coaps+tcp": "tlsclient",
              "coap+ws": "ws", "coaps+ws": "ws"}

DEREGISTER_WAIT = 2.0


@dataclass
class Security:
    psk_identity: str | None = None
    psk: bytes | None = None
    credentials: str | None = None    # an aiocoap credentials JSON file
    oscore: str | None = None         # an OSCORE security context directory


@dataclass
class RequestSpec:
    method: str
    uri: str
    payload: bytes = b""
    content_format: int | None = None
    accept: int | None = None
    non: bool = False
    options: list[tuple[int, bytes]] = field(default_factory=list)
    block_szx: int | None = None
    proxy: str | None = None
    timeout: float = 10.0
    security: Security = field(default_factory=Security)
    label: str | None = None

    @property
    def what(self) -> str:
        return self.label or f"{self.method.upper()} {self.uri}"


# --------------------------------------------------------------------------- logging


def setup_logging(debug: bool) -> None:
    """aiocoap logs to the 'coap' loggers: a trace on stderr with -d, silence otherwise."""
    route_logs(("coap", "coap-server"), debug)


# --------------------------------------------------------------------------- context


def check_transport(scheme: str, security: Security) -> list[str]:
    name = TRANSPORTS[scheme]
    from aiocoap import defaults

    if name == "tinydtls" and defaults.dtls_missing_modules():
        raise IotctlError(f"{scheme}:// (DTLS) is not available",
                          f"aiocoap needs the module(s) {', '.join(defaults.dtls_missing_modules())}",
                          hint="pip install DTLSSocket (aiocoap[tinydtls]); or use coap://, coap+tcp://")
    if name == "ws" and defaults.ws_missing_modules():
        raise IotctlError(f"{scheme}:// (CoAP over WebSockets) is not available",
                          f"aiocoap needs the module(s) {', '.join(defaults.ws_missing_modules())}",
                          hint="pip install websockets (aiocoap[ws])")
    transports = [name]
    if security.oscore or security.credentials:
        missing = defaults.oscore_missing_modules()
        if security.oscore and missing:
            raise IotctlError("OSCORE is not available",
                              f"aiocoap needs the module(s) {', '.join(missing)}",
                              hint="pip install 'aiocoap[oscore]'")
        if not missing:
            transports.insert(0, "oscore")
    return transports


def _credentials(uri: str, security: Security) -> dict:
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    pattern = f"{parts.scheme}://{parts.netloc}/*"
    creds: dict = {}
    if security.credentials:
        import json

        try:
            with open(security.credentials, "rb") as fh:
                creds.update(json.load(fh))
        except OSError as exc:
            raise UsageError(f"cannot read --credentials file {security.credentials}",
                             exc.strerror or str(exc)) from None
        except ValueError as exc:
            raise UsageError(f"--credentials file {security.credentials}", f"not valid JSON ({exc})") from None
    if security.psk is not None:
        creds[pattern] = {"dtls": {"psk": {"hex": security.psk.hex()},
                                   "client-identity": {"hex": (security.psk_identity or "").encode().hex()}}}
    if security.oscore:
        if not os.path.isdir(security.oscore):
            raise UsageError(f"--oscore {security.oscore}", "is not a directory (an OSCORE security context)")
        creds[pattern] = {"oscore": {"basedir": os.path.abspath(security.oscore) + "/"}}
    return creds


async def _context(uri: str, security: Security):
    scheme = formats.uri_scheme(uri)
    transports = check_transport(scheme, security)
    try:
        ctx = await aiocoap.Context.create_client_context(transports=transports)
    except OSError as exc:
        raise ConnectError("cannot open a CoAP client socket", exc.strerror or str(exc)) from None
    creds = _credentials(uri, security)
    if creds:
        try:
            ctx.client_credentials.load_from_dict(creds)
        except Exception as exc:  # CredentialsLoadError and friends
            await ctx.shutdown()
            raise UsageError("bad CoAP credentials", str(exc)) from None
    return ctx


# --------------------------------------------------------------------------- messages


def build_request(spec: RequestSpec, observe: bool = False) -> "aiocoap.Message":
    tuning = aiocoap.Unreliable if spec.non else None
    msg = aiocoap.Message(code=METHODS[spec.method], payload=spec.payload, transport_tuning=tuning)
    try:
        msg.set_request_uri(spec.uri)
    except (ValueError, coap_error.Error) as exc:
        raise UsageError(f"bad URI {spec.uri!r}", str(exc)) from None
    if spec.content_format is not None:
        msg.opt.content_format = spec.content_format
    if spec.accept is not None:
        msg.opt.accept = spec.accept
    if observe:
        msg.opt.observe = 0
    from aiocoap.numbers.optionnumbers import OptionNumber

    for number, raw in spec.options:
        try:
            msg.opt.add_option(OptionNumber(number).create_option(decode=raw))
        except Exception as exc:
            raise UsageError(f"--option {number}", f"cannot encode that value ({exc})") from None
    if spec.block_szx is not None:
        msg.remote.maximum_block_size_exp = spec.block_szx
        if spec.method in ("get", "fetch"):
            msg.opt.block2 = (0, False, spec.block_szx)
    return msg


def _code_text(code) -> str:
    return str(code)


def to_message(resp, address: str, observe: bool = False) -> Message:
    options = [(int(o.number), o.encode()) for o in resp.opt.option_list()]
    meta: dict = {"code": _code_text(resp.code)}
    if resp.opt.observe is not None and observe:
        meta["observe"] = resp.opt.observe
    meta["options"] = formats.options_meta(options, skip=(6,) if observe else ())
    if resp.mtype is not None:
        meta["type"] = resp.mtype.name
    if resp.mid is not None:
        meta["mid"] = resp.mid
    meta["token"] = resp.token.hex() if resp.token else ""
    if resp.opt.location_path or resp.opt.location_query:
        meta["location"] = "/" + "/".join(resp.opt.location_path) + (
            "?" + "&".join(resp.opt.location_query) if resp.opt.location_query else "")
    ct = resp.opt.content_format
    ct_num = int(ct) if ct is not None else None
    return Message("coap", address, bytes(resp.payload), formats.content_format_name(ct_num), meta)


def diagnostic(payload: bytes) -> str:
    text = payload.decode("utf-8", "replace").strip()
    return " ".join(text.split())[:500]


def check_response(resp, what: str) -> None:
    """4.xx and 5.xx are the peer's error: exit 6 with the code and diagnostic payload."""
    if not resp.code.is_successful():
        diag = diagnostic(bytes(resp.payload))
        raise PeerError(what, _code_text(resp.code) + (f": {diag}" if diag else ""))


def map_error(exc: BaseException, what: str, timeout: float | None = None) -> IotctlError:
    """aiocoap's and the OS's failures as iotctl errors (exit 3, 5, 7 or 1)."""
    import ssl

    if isinstance(exc, IotctlError):
        return exc
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, coap_error.TimeoutError)):
        why = f"no response within {timeout:g} s" if timeout else "no response (retransmissions exhausted)"
        if "coaps://" in what:  # tinydtls drops a failed handshake silently: no alert reaches us
            return TimeoutError_(what, why, hint="a DTLS handshake that fails looks like this: "
                                 "check --psk-identity and --psk (and -W)")
        return TimeoutError_(what, why, hint="is a CoAP server running there? (-W sets the timeout)")
    if isinstance(exc, coap_error.ResolutionError):
        return ConnectError(what, f"cannot resolve host ({exc.args[0] if exc.args else exc})")
    if isinstance(exc, coap_error.NoRequestInterface):
        return IotctlError(what, "no CoAP transport for this URI scheme is available")
    if isinstance(exc, (coap_error.MalformedUrlError, coap_error.IncompleteUrlError)):
        return UsageError(f"bad URI in {what}", str(exc))
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(cause, OSError) and (cause.errno is not None or isinstance(cause, ssl.SSLError)):
        return from_os_error(what, cause)  # refused (ICMP port unreachable), TLS, ...
    if isinstance(exc, coap_error.NetworkError):
        return ConnectError(what, str(exc.__cause__ or exc))
    return IotctlError(what, f"{type(exc).__name__}: {exc}")


def _requester(ctx, spec: RequestSpec):
    if spec.proxy:
        from aiocoap.proxy.client import ProxyForwarder

        return ProxyForwarder(spec.proxy, ctx)
    return ctx


# --------------------------------------------------------------------------- plain requests


def request_all(specs: Iterator[RequestSpec], yield_errors: bool = False) -> Iterator[Message]:
    """Send each request in turn (one context for all) and yield each response.

    Raises PeerError on the first 4.xx/5.xx (after yielding it, with `yield_errors`),
    TimeoutError_ when one gets no answer."""
    bridge = Bridge()
    ctx = None
    try:
        for spec in specs:
            if ctx is None:
                ctx = bridge.run(_context(spec.proxy or spec.uri, spec.security))
            resp = bridge.run(_one(ctx, spec))
            if yield_errors or resp.code.is_successful():
                yield to_message(resp, spec.uri)
            check_response(resp, spec.what)
    finally:
        bridge.close(*([ctx.shutdown] if ctx is not None else []))


async def _one(ctx, spec: RequestSpec):
    msg = build_request(spec)
    try:
        async with asyncio.timeout(spec.timeout):
            resp = await _requester(ctx, spec).request(msg).response
    except Exception as exc:
        raise map_error(exc, spec.what, spec.timeout) from None
    return resp


# --------------------------------------------------------------------------- observe


class Observation(Bridged, receive.Receiver):
    """An observation, as a Receiver for the receive driver:

        with Observation(spec) as obs:
            receive.run(obs, receive_spec, ...)
    """

    def __init__(self, spec: RequestSpec):
        self.spec = spec
        self.bridge = Bridge()
        self.ctx = None
        self.request = None
        self.msg = None
        self.queue: asyncio.Queue | None = None
        self.first: Message | None = None
        self.ended: IotctlError | None = None
        self.observing = False

    async def _open(self) -> None:
        self.first = await self._start()

    async def _start(self) -> Message:
        spec = self.spec
        self.ctx = await _context(spec.proxy or spec.uri, spec.security)
        self.queue = asyncio.Queue()
        self.msg = build_request(spec, observe=True)
        if spec.proxy:
            from aiocoap.proxy.client import ProxyForwarder

            _forwarded(ProxyForwarder(spec.proxy, self.ctx), self.msg)
        self.request = self.ctx.request(self.msg, handle_blockwise=False)
        observation = self.request.observation
        observation.register_callback(self.queue.put_nowait, _suppress_deprecation=True)
        observation.register_errback(lambda e: self.queue.put_nowait(_End(e)), _suppress_deprecation=True)
        try:
            async with asyncio.timeout(spec.timeout):
                resp = await self.request.response
        except Exception as exc:
            raise map_error(exc, spec.what, spec.timeout) from None
        check_response(resp, spec.what)
        resp = await self._complete(resp)
        self.observing = resp.opt.observe is not None
        if not self.observing:
            self.ended = IotctlError(f"observe {spec.uri}", "the resource is not observable "
                                     "(the response carried no Observe option)")
        return to_message(resp, spec.uri, observe=True)

    async def _complete(self, resp):
        """A notification bigger than one block: fetch the whole representation."""
        block2 = resp.opt.block2
        if block2 is None or not block2.more:
            return resp
        spec = self.spec
        full = await _requester(self.ctx, spec).request(build_request(spec)).response
        full.opt.observe = resp.opt.observe
        return full

    def poll(self, wait: float | None) -> list[Message] | None:
        """The first response, then every notification; raises when the server ends
        the observation (an error code, or no longer observable)."""
        if self.first is not None:
            first, self.first = self.first, None
            return [first]
        if self.ended is not None:
            raise self.ended
        items = self.bridge.take(self.queue, wait)
        out = []
        for item in items:
            if isinstance(item, _End):
                self.ended = self._end_reason(item.exc)
                break
            if not item.code.is_successful():
                self.ended = PeerError(f"observe {self.spec.uri}", "the server ended the observation with "
                                       + _code_text(item.code)
                                       + (f": {diagnostic(bytes(item.payload))}" if item.payload else ""))
                break
            item = self.bridge.run(self._complete(item))
            out.append(to_message(item, self.spec.uri, observe=True))
        if self.ended is not None and not out:
            raise self.ended
        return out

    def _end_reason(self, exc):
        if isinstance(exc, (coap_error.ObservationCancelled, coap_error.NotObservable)):
            return IotctlError(f"observe {self.spec.uri}", "the server ended the observation")
        return map_error(exc, f"observe {self.spec.uri}")

    def close(self) -> None:
        cleanups = []
        if self.ctx is not None:
            if self.observing:
                cleanups.append(self._deregister)
            cleanups.append(self.ctx.shutdown)
        self.bridge.close(*cleanups)
        self.ctx = None

    async def _deregister(self) -> None:
        """RFC 7641 3.6: a GET with Observe: 1 on the observation's token."""
        obs = self.request.observation
        if not obs.cancelled:
            obs.cancel()
        msg = self.msg
        if not msg.token or msg.remote is None:
            return
        dereg = msg.copy(observe=1, mid=None)
        dereg.token = msg.token
        try:
            interface = await self.ctx.find_remote_and_interface(dereg)
        except Exception:
            return
        if not hasattr(interface, "next_token"):
            return
        token = msg.token
        interface.next_token = lambda: token
        try:
            req = self.ctx.request(dereg, handle_blockwise=False)
            async with asyncio.timeout(DEREGISTER_WAIT):
                await req.response
        except Exception:
            pass
        finally:
            del interface.next_token


class _End:
    def __init__(self, exc):
        self.exc = exc


def _forwarded(fwd, msg):
    """What aiocoap's ProxyForwarder.request does (it takes no handle_blockwise)."""
    from aiocoap.util import hostportsplit

    host, port = hostportsplit(msg.remote.hostinfo)
    msg.opt.uri_port = port
    msg.opt.uri_host = host
    msg.opt.proxy_scheme = msg.remote.scheme
    msg.remote = fwd.proxy_address
    return msg


# --------------------------------------------------------------------------- multicast discovery


def multicast_request(spec: RequestSpec, wait: float) -> list[tuple[str, object]]:
    """Send one NON request to each multicast (or unicast) URI's host and collect every
    answer until `wait` seconds have passed: [(responder URI, aiocoap.Message), ...].

    aiocoap's own request API hands back only the first answer to a multicast request."""
    import secrets
    import selectors
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(spec.uri)
    port = parts.port or 5683
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ConnectError(spec.what, f"cannot resolve host: {exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    msg = build_request(spec)
    msg.mtype = aiocoap.NON
    msg.mid = secrets.randbelow(0x10000)
    msg.token = secrets.token_bytes(4)
    msg.opt.uri_host = None
    packet = msg.encode()
    sock = socket.socket(family, socket.SOCK_DGRAM)
    answers: list[tuple[str, object]] = []
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        try:
            sock.sendto(packet, sockaddr)
        except OSError as exc:
            raise map_error(_with_cause(exc), spec.what) from None
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ)
        end = time.monotonic() + wait
        seen = set()
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            if not sel.select(left):
                continue
            try:
                data, addr = sock.recvfrom(65536)
            except OSError:  # e.g. ICMP port unreachable from a unicast target
                continue
            try:
                resp = aiocoap.Message.decode(data)
            except Exception:
                continue
            if resp.token != msg.token or not resp.code.is_response():
                continue
            if resp.mtype == aiocoap.CON:  # acknowledge a confirmable answer
                ack = aiocoap.Message(code=aiocoap.EMPTY)
                ack.mtype, ack.mid = aiocoap.ACK, resp.mid
                sock.sendto(ack.encode(), addr)
            if (addr, resp.mid) in seen:
                continue
            seen.add((addr, resp.mid))
            host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
            path = parts.path or "/"
            answers.append((f"coap://{host}:{addr[1]}{path}" + (f"?{parts.query}" if parts.query else ""), resp))
        sel.close()
    finally:
        sock.close()
    return answers


def _with_cause(exc: OSError):
    wrapper = coap_error.NetworkError(str(exc))
    wrapper.__cause__ = exc
    return wrapper


def complete_blocks(answers: list[tuple[str, object]], spec: RequestSpec) -> list[Message]:
    """Turn multicast answers into Messages; an answer cut into blocks is fetched in
    full from that responder by unicast."""
    out: list[Message] = []
    pending = []
    for uri, resp in answers:
        block2 = resp.opt.block2
        if block2 is not None and block2.more:
            pending.append(uri)
        else:
            out.append(to_message(resp, uri))
    if pending:
        specs = [RequestSpec(**{**spec.__dict__, "uri": uri}) for uri in pending]
        try:
            out.extend(request_all(iter(specs)))
        except IotctlError as exc:
            from iotctl.settings import warn

            warn(f"{exc.what}: {exc.why}")
    return out

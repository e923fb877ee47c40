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
  discovery sends its own NON request and collects every answer until the timeout;
- its UDP transport reads datagrams into a 4,096-byte buffer and silently truncates
  anything bigger; a string option (Uri-Path, ...) that is not UTF-8 raises out of the
  transport's read callback (an asyncio traceback per datagram); a block-wise response
  with more=1 is followed forever; a response that arrives after its request was given
  up raises InvalidStateError in a loop callback. `fix_aiocoap()` (applied by every
  entry point here and by `coap serve`) mends each of them.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
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
DEFAULT_MAX_SIZE = 16 * 1024 * 1024
# the largest UDP payload: 65,507 bytes over IPv4, 65,527 over IPv6 (no jumbograms)
MAX_DATAGRAM = 65535


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
    max_size: int | None = DEFAULT_MAX_SIZE   # a block-wise response bigger than this fails

    @property
    def what(self) -> str:
        return self.label or f"{self.method.upper()} {self.uri}"


# --------------------------------------------------------------------------- logging


def setup_logging(debug: bool) -> None:
    """aiocoap logs to the 'coap' loggers: a trace on stderr with -d, silence otherwise."""
    route_logs(("coap", "coap-server"), debug)


# --------------------------------------------------------------------------- aiocoap fixes


class ResponseTooLarge(Exception):
    """A block-wise response grew past --max-size (raised inside aiocoap's assembly)."""

    def __init__(self, limit: int, size: int):
        super().__init__(f"the response is larger than {limit} bytes")
        self.limit, self.size = limit, size


class BadStringOption(PeerError):
    """A response whose string option is not UTF-8 (dispatched to its request)."""


class _Transfer:
    """The block-wise response being assembled: --max-size and the bytes so far."""

    def __init__(self, limit: int | None):
        self.limit, self.received = limit, 0


# the transfer of the request started in this context (aiocoap's block-wise runner
# tasks inherit it from the task that created them)
_transfer: contextvars.ContextVar[_Transfer | None] = contextvars.ContextVar("iotctl_coap_transfer",
                                                                            default=None)
# `coap serve` logs a request it cannot decode through this (one line per datagram)
bad_request_hook = None
_fixed = False


def fix_aiocoap() -> None:
    """Mend aiocoap 0.4.17's UDP transport and block-wise assembly (once per process)."""
    global _fixed
    if _fixed:
        return
    _fixed = True
    from aiocoap.transports import udp6
    from aiocoap.util.asyncio.recvmsg import RecvmsgSelectorDatagramTransport

    # 1. a receive buffer that fits every UDP datagram (was 4,096: silent truncation)
    RecvmsgSelectorDatagramTransport.max_size = MAX_DATAGRAM

    # 2. a string option that is not UTF-8: answer 4.02 (request) or fail the request
    # it answers (response) instead of a traceback out of the read callback
    received = udp6.MessageInterfaceUDP6.datagram_msg_received

    def datagram_msg_received(self, data, ancdata, flags, address):
        try:
            return received(self, data, ancdata, flags, address)
        except UnicodeDecodeError as exc:
            try:
                aiocoap.Message.decode(data)
            except UnicodeDecodeError:
                _undecodable(self, data, ancdata, address, exc)
                return
            raise  # not a decoding failure: let aiocoap's own handling see it

    udp6.MessageInterfaceUDP6.datagram_msg_received = datagram_msg_received

    # 3. --max-size for block-wise responses (aiocoap follows more=1 forever)
    append = aiocoap.Message._append_response_block

    def _append_response_block(self, next_block):
        transfer = _transfer.get()
        block2 = next_block.opt.block2
        if transfer is not None and block2 is not None:
            size = block2.start + len(next_block.payload)
            if transfer.limit is not None and size > transfer.limit:
                raise ResponseTooLarge(transfer.limit, size)
            transfer.received = size
        return append(self, next_block)

    aiocoap.Message._append_response_block = _append_response_block
    next_request = aiocoap.Message._generate_next_block2_request

    def _generate_next_block2_request(self, response):
        transfer = _transfer.get()
        if transfer is not None:
            transfer.received = len(response.payload)
        return next_request(self, response)

    aiocoap.Message._generate_next_block2_request = _generate_next_block2_request


def _string_option(data: bytes) -> str:
    """The name of the first string option in `data` that is not UTF-8."""
    from aiocoap.numbers.optionnumbers import OptionNumber
    from aiocoap.optiontypes import StringOption

    tkl = data[0] & 0x0F
    pos, number = 4 + tkl, 0
    while pos < len(data) and data[pos] != 0xFF:
        delta, length = data[pos] >> 4, data[pos] & 0x0F
        pos += 1
        ext = []
        for nibble in (delta, length):
            if nibble == 13:
                ext.append(data[pos] + 13)
                pos += 1
            elif nibble == 14:
                ext.append(int.from_bytes(data[pos:pos + 2], "big") + 269)
                pos += 2
            else:
                ext.append(nibble)
        number += ext[0]
        value = data[pos:pos + ext[1]]
        pos += ext[1]
        try:
            option = OptionNumber(number)
            if option.format is StringOption:
                value.decode("utf-8")
        except UnicodeDecodeError:
            return f"{formats.option_name(number)} ({number})"
        except Exception:
            break
    return "a string option"


def _undecodable(iface, data: bytes, ancdata, address, exc: UnicodeDecodeError) -> None:
    """A datagram whose string option is not UTF-8: a request is answered 4.02 Bad
    Option (and logged through bad_request_hook); a response fails its request."""
    import secrets
    import socket

    from aiocoap.transports import udp6

    if len(data) < 4:
        return
    mtype, tkl, code = (data[0] >> 4) & 3, data[0] & 0x0F, data[1]
    token = data[4:4 + tkl]
    name = _string_option(data)
    why = f"option {name} is not valid UTF-8"
    if code >= 64:
        why = "the response's " + why
    ancillary = [(level, kind, value) for level, kind, value in ancdata
                 if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO]
    pktinfo = ancillary[0][2] if ancillary else None
    remote = udp6.UDP6EndpointAddress(address, iface, pktinfo=pktinfo)

    def send(packet: bytes) -> None:
        try:
            iface.transport.sendmsg(packet, ancillary, 0, address)
        except Exception:
            pass

    if 1 <= code <= 31 and mtype in (0, 1):  # a request, CON or NON
        reply_type = 2 if mtype == 0 else 1  # ACK (piggybacked) or NON
        mid = data[2:4] if mtype == 0 else secrets.token_bytes(2)
        payload = why.encode()
        # 4.02 Bad Option, Content-Format text/plain (option 12, empty), then the payload
        send(bytes([0x40 | reply_type << 4 | tkl, 0x82]) + mid + token + b"\xc0\xff" + payload)
        if bad_request_hook is not None:
            bad_request_hook(remote, mtype, code, why)
    elif code >= 64:  # a response
        if mtype == 0:  # a CON response we cannot take: reset it (RFC 7252 4.2)
            send(bytes([0x70, 0x00]) + data[2:4])
        iface._ctx.dispatch_error(BadStringOption("the response", why), remote)


def _loop_exceptions(loop) -> None:
    """Exceptions aiocoap raises in loop callbacks (e.g. InvalidStateError for a
    response to a request given up on): a line of the -d trace, never a traceback."""

    def handler(loop, context):
        exc = context.get("exception")
        logging.getLogger("coap").debug("%s: %r", context.get("message"), exc)

    loop.set_exception_handler(handler)


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


def map_error(exc: BaseException, what: str, timeout: float | None = None,
              transfer: _Transfer | None = None) -> IotctlError:
    """aiocoap's and the OS's failures as iotctl errors (exit 3, 5, 7 or 1)."""
    import ssl

    if isinstance(exc, IotctlError):
        return exc
    if isinstance(exc.__cause__, IotctlError):  # e.g. BadStringOption through dispatch_error
        cause = exc.__cause__
        return type(cause)(what, cause.why, cause.hint)
    if isinstance(exc, ResponseTooLarge):
        return PeerError(what, f"the server sent more than --max-size {exc.limit} bytes (block-wise, "
                         "more blocks announced); the transfer was stopped",
                         hint="raise --max-size if the resource really is that large")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, coap_error.TimeoutError)):
        why = f"no response within {timeout:g} s" if timeout else "no response (retransmissions exhausted)"
        if transfer is not None and transfer.received:
            return TimeoutError_(what, f"the block-wise response was not complete within {timeout:g} s "
                                 f"({transfer.received} bytes received)" if timeout else
                                 f"the server stopped answering during a block-wise response "
                                 f"({transfer.received} bytes received)", hint="-W sets the timeout")
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
    bridge = _bridge()
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


def _bridge() -> Bridge:
    fix_aiocoap()
    bridge = Bridge()
    _loop_exceptions(bridge.loop)
    return bridge


async def _one(ctx, spec: RequestSpec):
    msg = build_request(spec)
    transfer = _Transfer(spec.max_size)
    _transfer.set(transfer)
    try:
        async with asyncio.timeout(spec.timeout):
            resp = await _requester(ctx, spec).request(msg).response
    except Exception as exc:
        raise map_error(exc, spec.what, spec.timeout, transfer) from None
    return resp


# --------------------------------------------------------------------------- observe


class Observation(Bridged, receive.Receiver):
    """An observation, as a Receiver for the receive driver:

        with Observation(spec) as obs:
            receive.run(obs, receive_spec, ...)
    """

    def __init__(self, spec: RequestSpec):
        self.spec = spec
        self.bridge = _bridge()
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
        _transfer.set(_Transfer(spec.max_size))
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

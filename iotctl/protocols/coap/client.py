"""CoAP client on aiocoap: requests, observation, discovery (unicast and multicast).

The one module of the client side that imports aiocoap; cli.py and endpoints.py import
it inside function bodies only. aiocoap runs on the process's one asyncio loop
(iotctl.aioloop, its own thread): every aiocoap object is made and touched on that
thread (coroutines given to `run`, library callbacks, `call`/`soon`); what reaches
the main thread are iotctl Messages and errors, through a `handoff()`. The public
classes are synchronous from the outside: `Observation` is a receive.Receiver,
`Requests` a send.Sender, `request_all` a generator of responses.

aiocoap 0.4.17 quirks handled here:
- the observation's async iterator is lossy (a notification arriving before the
  previous one was consumed replaces it); callbacks feeding a handoff are used instead;
- cancelling an observation only forgets it locally (the server learns it from an RST
  to the next notification); a GET with Observe: 1 on the same token deregisters it;
- an observation never re-registers: a server that restarted has forgotten it and
  simply sends nothing more. `Observation` re-registers once the last notification's
  Max-Age (+ a grace period) has passed in silence (RFC 7641 3.3.1), which is also
  how it finds a server gone (ICMP port unreachable or no answer: ConnectionLost, so
  the receive driver reconnects with backoff);
- an ICMP error from a remote fails every request to that remote, observations too;
  a registration that fails so (the server still away) also tells its observation
  NotObservable: `Observation` tags what reaches its inbox with the registration it
  belongs to and drops what an earlier one left there;
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
from dataclasses import dataclass, field, replace
from typing import Iterator

import aiocoap
from aiocoap import error as coap_error
from aiocoap.numbers.codes import Code

from iotctl import aioloop, receive, send
from iotctl.errors import (ConnectError, ConnectionLost, IotctlError, PeerError, TimeoutError_, UsageError,
                           from_os_error)
from iotctl.message import Message, foreign
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


def from_aiocoap(context: dict) -> bool:
    """True when a loop exception context comes from aiocoap's code (its traceback, or
    the callback or future it names)."""
    exc = context.get("exception")
    tb = getattr(exc, "__traceback__", None)
    while tb is not None:
        if f"{os.sep}aiocoap{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return any("aiocoap" in repr(context.get(key)) for key in ("handle", "future", "task"))


def _loop_exceptions(loop) -> None:
    """Exceptions aiocoap raises in loop callbacks (e.g. InvalidStateError for a
    response to a request given up on): a line of the -d trace, never a traceback.
    The loop is shared: anything else goes to the handler that was there before."""
    previous = loop.get_exception_handler()

    def handler(loop, context):
        if from_aiocoap(context):
            logging.getLogger("coap").debug("%s: %r", context.get("message"), context.get("exception"))
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


_loop_ready = False


def shared_loop() -> aioloop.AsyncLoop:
    """The process's asyncio loop, with aiocoap mended and its loop exceptions quiet."""
    global _loop_ready
    fix_aiocoap()
    loop = aioloop.shared()
    if not _loop_ready:
        _loop_ready = True
        loop.call(_loop_exceptions, loop.loop)
    return loop


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


class Response:
    """A response as the main thread sees it (made on the loop's thread): the message,
    whether the code is 2.xx, and for 4.xx/5.xx the reason (code and diagnostic)."""

    __slots__ = ("message", "ok", "reason")

    def __init__(self, resp, address: str, observe: bool = False):
        self.message = to_message(resp, address, observe)
        self.ok = resp.code.is_successful()
        self.reason = None
        if not self.ok:
            diag = diagnostic(bytes(resp.payload))
            self.reason = _code_text(resp.code) + (f": {diag}" if diag else "")


def request_all(specs: Iterator[RequestSpec], yield_errors: bool = False) -> Iterator[Message]:
    """Send each request in turn (one context for all) and yield each response.

    Raises PeerError on the first 4.xx/5.xx (after yielding it, with `yield_errors`),
    TimeoutError_ when one gets no answer."""
    loop = shared_loop()
    ctx = None
    try:
        for spec in specs:
            if ctx is None:
                ctx = loop.run(_context(spec.proxy or spec.uri, spec.security))
            answer = loop.run(_answer(ctx, spec))
            if yield_errors or answer.ok:
                yield answer.message
            if not answer.ok:
                raise PeerError(spec.what, answer.reason)
    finally:
        if ctx is not None:
            loop.cleanup(ctx.shutdown)


async def _one(ctx, spec: RequestSpec):
    msg = build_request(spec)
    transfer = _Transfer(spec.max_size)
    _transfer.set(transfer)
    try:
        async with asyncio.timeout(spec.timeout):
            resp = await _requester(ctx, spec).request(msg).response
    except Exception as exc:
        raise map_error(exc, spec.what, spec.timeout, transfer) from None
    _hold(ctx, resp)
    return resp


def _hold(ctx, resp) -> None:
    """aiocoap keeps DTLS connections in a weak pool: the context holds the last peer
    until it shuts down, or tinydtls may write to a connection already collected (a
    UserWarning on stderr after a refused `post -l`)."""
    ctx._iotctl_peer = resp.remote


async def open_context(uri: str, security: Security | None = None):
    """A client context for `uri`'s scheme (on the loop's thread): what `coap proxy`
    sends its requests through. Shut it down with `await ctx.shutdown()`."""
    return await _context(uri, security or Security())


async def exchange(ctx, spec: RequestSpec):
    """One request and its whole response (block-wise transfers assembled, at most
    spec.max_size), on the loop's thread: the aiocoap response; failures as
    IotctlErrors (TimeoutError_ after spec.timeout, ConnectError for an unreachable
    server, PeerError for one sending more than max_size)."""
    return await _one(ctx, spec)


def more_blocks(resp) -> bool:
    """A response (or notification) that is the first block of a bigger representation."""
    return _more_blocks(resp)


def max_age(resp) -> float:
    """A response's Max-Age (60 s, RFC 7252's default, when it has none)."""
    return _max_age(resp)


def start_transfer(max_size: int | None) -> None:
    """Bound the block-wise responses the current task assembles from here on."""
    _transfer.set(_Transfer(max_size))


async def _answer(ctx, spec: RequestSpec) -> Response:
    return Response(await _one(ctx, spec), spec.uri)


# --------------------------------------------------------------------------- a request per message


class Requests(send.Sender):
    """The send driver's CoAP side: one request per message (`method`, default POST) to
    one URI, each response its acknowledgement: 2.xx acknowledges, 4.xx/5.xx refuses
    (the reason is the code and diagnostic, so the message reaches --failed); no
    answer within the request's timeout, or an unreachable server, ends the run.

    One request at a time (a window of 1: CoAP's NSTART is 1, and a PUT per line must
    leave the last line's state). `respond(message, ok)` receives every response (the
    command prints them). A message's Content-Format comes from `adopt`, the one place
    where a message from another protocol is taken in."""

    protocol = "coap"
    window = 1

    def __init__(self, spec: RequestSpec, respond=None):
        super().__init__()
        self.spec = spec
        self.respond = respond
        self.loop: aioloop.AsyncLoop | None = None
        self.ctx = None
        self.inbox = None
        self.sent = 0
        self.tasks: set = set()

    @property
    def where(self) -> str:
        return self.spec.uri

    @property
    def address(self) -> str:
        """The fixed address (the URI): a bridge gives it to every message, or its
        --address template's result, which `target` resolves against the URI."""
        return self.spec.uri

    def target(self, address: str) -> str:
        """The URI of one message's request: the sink's URI, unless the message's address
        names another (a bridge's --address: a coap URI, or a path resolved against the
        sink's URI as a browser resolves a link)."""
        uri = self.spec.uri
        if not address or address == uri:
            return uri
        if "://" in address:
            return formats.check_uri(address, "message address")
        from urllib.parse import urljoin, urlsplit

        scheme = urlsplit(uri).scheme
        joined = urljoin("http" + uri[len(scheme):], address)  # urljoin resolves http's paths only
        return formats.check_uri(scheme + joined[len("http"):], "message address")

    def open(self) -> None:
        self.loop = shared_loop()
        self.inbox = self.loop.handoff()
        self.ctx = self.loop.run(_context(self.spec.proxy or self.spec.uri, self.spec.security))

    def close(self) -> None:
        if self.loop is None or self.ctx is None:
            return
        ctx, self.ctx = self.ctx, None
        self.loop.cleanup(lambda: self._shutdown(ctx))

    async def _shutdown(self, ctx) -> None:
        for task in list(self.tasks):
            task.cancel()
        await ctx.shutdown()

    def adopt(self, msg: Message) -> int | None:
        """The Content-Format of the request carrying `msg`: the command line's -t wins;
        else a CoAP (or command-line) message's own content type; from another protocol
        only its content type crosses (message.foreign), mapped to a Content-Format
        number; a media type CoAP has no number for is dropped (said with -d). Nothing
        else of a foreign message's meta is sent: CoAP has no user headers."""
        if self.spec.content_format is not None:
            return self.spec.content_format
        found = foreign(msg, "coap")
        if found is None:
            options = msg.meta.get("options") if isinstance(msg.meta, dict) else None
            number = options.get("Content-Format") if isinstance(options, dict) else None
            if isinstance(number, int) and not isinstance(number, bool) and 0 <= number <= 0xFFFF:
                return number
            content_type = msg.content_type
        else:
            content_type = found.content_type
        if not content_type:
            return None
        number = formats.content_format_number(content_type)
        if number is None:
            logging.getLogger("coap").debug("content type %r has no CoAP Content-Format: not sent",
                                            content_type)
        return number

    def composed(self, msg: Message) -> Message:
        """As a capture has it: the command line's -t goes with a message into --failed
        as its content type, so `--replay FILE` alone sends the same Content-Format."""
        number = self.spec.content_format
        if number is None or msg.content_type:
            return msg.copy(protocol=self.protocol)
        name = formats.content_format_name(number)
        if name is None:  # a number without a media type: as a capture keeps it
            return msg.copy(protocol=self.protocol, meta={"options": {"Content-Format": number}})
        return msg.copy(protocol=self.protocol, content_type=name)

    def send(self, msg: Message) -> int:
        uri = self.target(msg.address)
        self.sent += 1
        key = self.sent
        self.loop.soon(self._start, key, uri, msg.payload, self.adopt(msg))
        return key

    def _start(self, key: int, uri: str, payload: bytes, content_format: int | None) -> None:
        # on the loop's thread
        spec = replace(self.spec, uri=uri, payload=payload, content_format=content_format)
        task = asyncio.ensure_future(self._request(key, spec))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _request(self, key: int, spec: RequestSpec) -> None:
        try:
            answer = await _answer(self.ctx, spec)
        except IotctlError as exc:
            self.inbox.put((key, exc))
        except Exception as exc:  # anything aiocoap raises that map_error did not know
            self.inbox.put((key, map_error(exc, spec.what, spec.timeout)))
        else:
            self.inbox.put((key, answer))

    def pump(self, wait: float) -> None:
        failure = None
        for key, outcome in self.inbox.take(wait):
            if isinstance(outcome, IotctlError):
                failure = failure or outcome
                continue
            if self.respond is not None:
                self.respond(outcome.message, outcome.ok)
            if outcome.ok:
                self.acked.add(key)
            else:
                self.refused[key] = outcome.reason
        if failure is not None:
            raise failure

    def refusal(self, refused: dict) -> IotctlError:
        reasons = sorted(set(map(str, refused.values())))
        if len(refused) == 1:
            return PeerError(self.spec.what, reasons[0])
        return PeerError(self.spec.what, f"the server refused {len(refused)} requests: {'; '.join(reasons[:3])}")


# --------------------------------------------------------------------------- observe

FRESHNESS_GRACE = 2.0   # seconds past the last notification's Max-Age before re-registering
DEFAULT_MAX_AGE = 60    # RFC 7252 5.10.5


class _End:
    """The observation ended (an error from aiocoap, or the server's error code)."""

    __slots__ = ("exc", "error")

    def __init__(self, exc=None, error: IotctlError | None = None):
        self.exc, self.error = exc, error


class Observation(receive.Receiver):
    """An observation, as a Receiver for the receive driver:

        with Observation(spec) as obs:
            receive.run(obs, receive_spec, ...)

    The first response, then every notification. When the last notification's Max-Age
    (+ FRESHNESS_GRACE) passes in silence it registers again (deregistering the old
    one): a server that restarted has forgotten the observation, and one that is gone
    shows as ConnectionLost (ICMP port unreachable, or no answer within the request
    timeout), which the driver answers with `reconnect()` and backoff. A
    re-registration's response is delivered only when it differs from the last
    message delivered (it is a freshness check, not a change of the resource).

    Every registration is a generation: the inbox holds (generation, item) pairs, and
    poll drops those of an earlier generation. Only the current registration's server
    ends the observation (RFC 7641: a response without Observe, or an error code,
    on its token); a refused registration's own error, or a notification still being
    completed when the observation registered again, is dropped however late it comes."""

    can_reconnect = True

    def __init__(self, spec: RequestSpec):
        self.spec = spec
        self.what = f"observe {spec.uri}"
        self.loop: aioloop.AsyncLoop | None = None
        self.ctx = None
        self.inbox = None
        self.request = None        # the current registration's aiocoap request and message
        self.msg = None
        self.generation = 0        # the current registration: what older ones send is ignored
        self.backlog: list = []    # notifications waiting behind one that needs its other blocks
        self.draining = False
        self.pending: list[Message] = []   # delivered by the next poll
        self.last: tuple | None = None     # (payload, content type) of the last message delivered
        self.ended: IotctlError | None = None
        self.told = False          # `ended` was raised (or warned about)
        self.observing = False
        self.heard = 0.0           # time.monotonic() of the last response or notification
        self.max_age = DEFAULT_MAX_AGE

    @property
    def where(self) -> str:
        return self.spec.uri

    # ------------------------------------------------------------ main thread

    def open(self) -> None:
        self.loop = shared_loop()
        self.inbox = self.loop.handoff()
        try:
            self.loop.run(self._open())
        except BaseException:
            self.close()
            raise

    def poll(self, wait: float | None) -> list[Message] | None:
        """The first response, then every notification; raises when the server ends
        the observation (an error code, or no longer observable), ConnectionLost when
        the server cannot be reached any more."""
        if self.pending:
            out, self.pending = self.pending, []
            return self._delivered(out)
        if self.ended is not None:
            self.told = True
            raise self.ended
        if self.observing:
            stale_in = self.heard + max(self.max_age, 1) + FRESHNESS_GRACE - time.monotonic()
            if stale_in <= 0:
                return self._delivered(self._refresh())
            wait = stale_in if wait is None else min(wait, stale_in)
        out: list[Message] = []
        for generation, item in self.inbox.take(wait):
            if generation != self.generation:
                continue  # an earlier registration's (a refused one's NotObservable, say)
            if isinstance(item, Message):
                out.append(item)
                continue
            self.ended = self._end_reason(item)
            break
        if self.ended is not None and not out:
            self.told = True
            raise self.ended
        return self._delivered(out)

    def _delivered(self, out: list[Message]) -> list[Message]:
        if out:
            last = out[-1]
            self.last = (last.payload, last.content_type)
        return out

    def _refresh(self) -> list[Message]:
        """The observation has been silent past its Max-Age: deregister it and register
        again (a server that restarted has forgotten it; one that is gone is found)."""
        first = self._reregister(deregister=True)
        if self.last is not None and (first.payload, first.content_type) == self.last:
            return []
        return [first]

    def reconnect(self) -> None:
        """After ConnectionLost: register again (ConnectError/TimeoutError_ while the
        server is still away; the driver tries again with backoff)."""
        first = self._reregister(deregister=False)
        if self.last is None or (first.payload, first.content_type) != self.last:
            self.pending.append(first)

    def _reregister(self, deregister: bool) -> Message:
        self.ended = None
        try:
            return self.loop.run(self._register(deregister=deregister))
        except IotctlError as exc:
            if exc.code in (ConnectError.code, TimeoutError_.code):
                raise ConnectionLost(self.what, exc.why or exc.what) from None
            raise

    def _end_reason(self, item: _End) -> IotctlError:
        if item.error is not None:
            return item.error
        exc = item.exc
        if isinstance(exc, (coap_error.ObservationCancelled, coap_error.NotObservable)):
            return IotctlError(self.what, "the server ended the observation")
        error = map_error(exc, self.what)
        if error.code in (ConnectError.code, TimeoutError_.code):
            self.observing = False
            return ConnectionLost(self.what, error.why or error.what)
        return error

    def close(self) -> None:
        if self.ended is not None and not self.told and not isinstance(self.ended, ConnectionLost):
            # the run ended (-C, --duration, Ctrl-C) before poll could raise it: say it
            from iotctl.settings import warn

            self.told = True
            warn(f"{self.ended.what}: {self.ended.why}")
        if self.loop is None or self.ctx is None:
            return
        ctx, self.ctx = self.ctx, None
        cleanups = []
        if self.observing:
            request, msg = self.request, self.msg
            cleanups.append(lambda: self._deregister(ctx, request, msg))
        cleanups.append(ctx.shutdown)
        self.loop.cleanup(*cleanups)

    # ------------------------------------------------------------ the loop's thread

    async def _open(self) -> None:
        self.ctx = await _context(self.spec.proxy or self.spec.uri, self.spec.security)
        self.pending.append(await self._register())

    async def _register(self, deregister: bool = False) -> Message:
        """Register (again): the current state as the first message."""
        spec = self.spec
        _transfer.set(_Transfer(spec.max_size))
        old_request, old_msg = self.request, self.msg
        self.generation += 1
        generation = self.generation
        self.backlog.clear()
        self.observing = False
        if old_request is not None:
            if not old_request.observation.cancelled:
                old_request.observation.cancel()
            if deregister:
                try:
                    async with asyncio.timeout(DEREGISTER_WAIT):
                        await self._deregister(self.ctx, old_request, old_msg, forget=False)
                except Exception as exc:  # a refused port says the server is gone: no need to wait more
                    error = map_error(exc, self.what)
                    if error.code == ConnectError.code:
                        raise error from None
        msg = build_request(spec, observe=True)
        if spec.proxy:
            from aiocoap.proxy.client import ProxyForwarder

            _forwarded(ProxyForwarder(spec.proxy, self.ctx), msg)
        request = self.ctx.request(msg, handle_blockwise=False)
        self.request, self.msg = request, msg
        observation = request.observation
        observation.register_callback(lambda resp: self._notified(resp, generation), _suppress_deprecation=True)
        observation.register_errback(lambda exc: self._failed(exc, generation), _suppress_deprecation=True)
        try:
            async with asyncio.timeout(spec.timeout):
                resp = await request.response
        except Exception as exc:
            raise map_error(exc, spec.what, spec.timeout) from None
        check_response(resp, spec.what)
        _hold(self.ctx, resp)
        resp = await self._complete(resp)
        self.heard = time.monotonic()
        self.max_age = _max_age(resp)
        self.observing = resp.opt.observe is not None
        if not self.observing:
            self.ended = IotctlError(self.what, "the resource is not observable "
                                     "(the response carried no Observe option)")
        return to_message(resp, spec.uri, observe=True)

    def _notified(self, resp, generation: int) -> None:
        if generation != self.generation:
            return
        self.heard = time.monotonic()
        if self.backlog or _more_blocks(resp):
            self.backlog.append(resp)
            self._drain()
        else:
            self.inbox.put((generation, self._item(resp, generation)))

    def _failed(self, exc, generation: int) -> None:
        if generation != self.generation:
            return
        if self.backlog:
            self.backlog.append(_End(exc))
            self._drain()
        else:
            self.inbox.put((generation, _End(exc)))

    def _item(self, resp, generation: int):
        if not resp.code.is_successful():
            return _End(error=PeerError(self.what, "the server ended the observation with " + _code_text(resp.code)
                                        + (f": {diagnostic(bytes(resp.payload))}" if resp.payload else "")))
        if generation == self.generation:
            self.max_age = _max_age(resp)
        return to_message(resp, self.spec.uri, observe=True)

    def _drain(self) -> None:
        """Deliver the backlog in order, fetching the whole representation of a
        notification bigger than one block."""
        if self.draining:
            return
        self.draining = True
        generation = self.generation

        async def drain():
            try:
                while self.backlog and generation == self.generation:
                    item = self.backlog.pop(0)
                    if isinstance(item, _End):
                        self.inbox.put((generation, item))
                        continue
                    try:
                        item = await self._complete(item)
                    except Exception as exc:
                        self.inbox.put((generation, _End(exc)))
                        continue
                    # the observation may have registered again meanwhile: then poll drops it
                    self.inbox.put((generation, self._item(item, generation)))
            finally:
                self.draining = False
                if self.backlog and generation != self.generation:
                    self._drain()  # the new registration's, queued while this one held the drain

        asyncio.ensure_future(drain())

    async def _complete(self, resp):
        """A notification bigger than one block: fetch the whole representation."""
        if not _more_blocks(resp):
            return resp
        spec = self.spec
        async with asyncio.timeout(spec.timeout):
            full = await _requester(self.ctx, spec).request(build_request(spec)).response
        full.opt.observe = resp.opt.observe
        return full

    async def _deregister(self, ctx, request, msg, forget: bool = True) -> None:
        await deregister(ctx, request, msg, forget)


async def deregister(ctx, request, msg, forget: bool = True) -> None:
    """RFC 7641 3.6: end the observation `request` (made from `msg` without block-wise
    handling) with a GET with Observe: 1 on the observation's token; `forget`: failures
    are ignored (the server learns it from an RST to the next notification anyway).
    Several may run at once on one context (`coap proxy`), next to other requests."""
    obs = request.observation
    if not obs.cancelled:
        obs.cancel()
    if not msg.token or msg.remote is None:
        return
    dereg = msg.copy(observe=1, mid=None)
    dereg.token = msg.token
    try:
        interface = await ctx.find_remote_and_interface(dereg)
    except Exception:
        return
    fixed = _fixed_tokens(interface)
    if fixed is None:
        return
    fixed[id(dereg)] = msg.token
    try:
        req = ctx.request(dereg, handle_blockwise=False)
        async with asyncio.timeout(DEREGISTER_WAIT):
            await req.response
    except Exception:
        if not forget:
            raise
    finally:
        fixed.pop(id(dereg), None)


def _fixed_tokens(interface) -> dict | None:
    """aiocoap gives every request a new token; a deregistration must reuse the
    observation's. The interface's `request` (synchronous: it takes the token and
    sends) is wrapped once so that a message listed here gets its own token, however
    many deregistrations and other requests run at the same time."""
    if not hasattr(interface, "next_token"):
        return None
    fixed = interface.__dict__.get("_iotctl_fixed_tokens")
    if fixed is None:
        fixed = interface._iotctl_fixed_tokens = {}
        original = interface.request

        def request(pipe):
            token = fixed.pop(id(pipe.request), None)
            if token is None:
                return original(pipe)
            interface.next_token = lambda: token
            try:
                return original(pipe)
            finally:
                del interface.next_token

        interface.request = request
    return fixed


def _more_blocks(resp) -> bool:
    block2 = resp.opt.block2
    return block2 is not None and block2.more


def _max_age(resp) -> float:
    age = resp.opt.max_age
    return DEFAULT_MAX_AGE if age is None else int(age)


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


def multicast_request(spec: RequestSpec, wait: float) -> list[tuple[str, Message]]:
    """Send one NON request to each multicast (or unicast) URI's host and collect every
    answer until `wait` seconds have passed: [(responder URI, Message), ...].

    aiocoap's own request API hands back only the first answer to a multicast request."""
    return shared_loop().run(_multicast(spec, wait))


async def _multicast(spec: RequestSpec, wait: float) -> list[tuple[str, Message]]:
    import secrets
    import socket
    from urllib.parse import urlsplit

    loop = asyncio.get_running_loop()
    parts = urlsplit(spec.uri)
    port = parts.port or 5683
    try:
        infos = await loop.getaddrinfo(parts.hostname, port, type=socket.SOCK_DGRAM)
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
    sock.setblocking(False)
    answers: list[tuple[str, Message]] = []
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        try:
            await loop.sock_sendto(sock, packet, sockaddr)
        except OSError as exc:
            raise map_error(_with_cause(exc), spec.what) from None
        end = time.monotonic() + wait
        seen = set()
        path = parts.path or "/"
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            try:
                async with asyncio.timeout(left):
                    data, addr = await loop.sock_recvfrom(sock, 65536)
            except TimeoutError:
                break
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
                try:
                    await loop.sock_sendto(sock, ack.encode(), addr)
                except OSError:
                    pass
            if (addr, resp.mid) in seen:
                continue
            seen.add((addr, resp.mid))
            host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
            uri = f"coap://{host}:{addr[1]}{path}" + (f"?{parts.query}" if parts.query else "")
            answers.append((uri, to_message(resp, uri)))
    finally:
        sock.close()
    return answers


def _with_cause(exc: OSError):
    wrapper = coap_error.NetworkError(str(exc))
    wrapper.__cause__ = exc
    return wrapper


def complete_blocks(answers: list[tuple[str, Message]], spec: RequestSpec) -> list[Message]:
    """The multicast answers as Messages; an answer cut into blocks (Block2 with more
    blocks) is fetched in full from that responder by unicast."""
    out: list[Message] = []
    pending = []
    for uri, msg in answers:
        block2 = msg.meta.get("options", {}).get("Block2")
        if isinstance(block2, str) and block2.split("/")[1:2] == ["1"]:
            pending.append(uri)
        else:
            out.append(msg)
    if pending:
        specs = [replace(spec, uri=uri) for uri in pending]
        try:
            out.extend(request_all(iter(specs)))
        except IotctlError as exc:
            from iotctl.settings import warn

            warn(f"{exc.what}: {exc.why}")
    return out

"""The express lane for `iotctl coap get|put|post|delete URI` (see iotctl/express.py):
one confirmable request over a plain UDP socket with a small CoAP codec of its own,
without click, asyncio or aiocoap. Only unicast coap:// (no DTLS, TCP, websockets,
observe, multicast or proxy), a payload of at most one block from MESSAGE, -m or
--null (-t its Content-Format), -A, -W, --max-size, -o raw|hex|text|json|jsonl|template,
-F, --quiet; anything else goes the normal way (client.py on aiocoap), which also
prints every usage error.

It does what the normal path does, byte for byte on stdout and stderr, with the same
exit status (tests/test_express.py compares both on a corpus against libcoap's
coap-server and `iotctl coap serve`): the request as aiocoap 0.4.17 encodes it (Uri-Host
for a host name, Uri-Path, Content-Format, Uri-Query, Accept), retransmitted as RFC 7252
says (ACK_TIMEOUT 2 s, ACK_RANDOM_FACTOR 1.5, MAX_RETRANSMIT 4) within -W; a separate
response acknowledged; a Block2 response followed block by block (each block asked for
once, never the whole request again) within --max-size, assembled as aiocoap assembles
it (the first block's options with the last block's Block2, token and message id).
Once the request is sent the lane finishes it itself, whatever comes: a POST is never
sent twice.
"""

from __future__ import annotations

import sys
import time

from iotctl.express import Options, connect_error, emit, error, positive

_COMMON = {
    "-A": ("accept", "value"), "--accept": ("accept", "value"),
    "-W": ("timeout", "value"), "--timeout": ("timeout", "value"),
    "--max-size": ("max_size", "value"),
    "-o": ("output", "value"), "--output": ("output", "value"),
    "-F": ("format", "value"), "--format": ("format", "value"),
    "--quiet": ("quiet", "flag"),
}
READ = Options(_COMMON, positional="uri")
WRITE = Options({
    **_COMMON,
    "-t": ("content_format", "value"), "--content-format": ("content_format", "value"),
    "-m": ("message", "value"), "--message": ("message", "value"),
    "--null": ("null", "flag"),
}, positional=("uri", "message_arg"))

METHODS = {"get": 1, "post": 2, "put": 3, "delete": 4}
MODES = ("raw", "hex", "text", "json", "jsonl", "template")
MAX_SIZE = 16 * 1024 * 1024  # the normal path's --max-size default (16MiB)
BLOCK = 1024  # aiocoap sends a bigger payload block-wise (Block1): the normal path does that
# RFC 7252 4.8, as aiocoap has them
ACK_TIMEOUT, ACK_RANDOM_FACTOR, MAX_RETRANSMIT = 2.0, 1.5, 4
CON, NON, ACK, RST = 0, 1, 2, 3
TYPE_NAMES = ("CON", "NON", "ACK", "RST")
URI_HOST, LOCATION_PATH, URI_PATH, CONTENT_FORMAT, URI_QUERY, ACCEPT, LOCATION_QUERY, BLOCK2 = \
    3, 8, 11, 12, 15, 17, 20, 23
ETAG = 4
# the string options, as aiocoap decodes them (a value that is not UTF-8 fails the request)
STRING_OPTIONS = {3: "Uri-Host", 8: "Location-Path", 11: "Uri-Path", 15: "Uri-Query", 20: "Location-Query",
                  35: "Proxy-Uri", 39: "Proxy-Scheme"}
# response codes as aiocoap names them ("2.05 Content"; others "c.dd (Unknown)")
CODE_NAMES = {
    65: "Created", 66: "Deleted", 67: "Valid", 68: "Changed", 69: "Content", 95: "Continue",
    128: "Bad Request", 129: "Unauthorized", 130: "Bad Option", 131: "Forbidden", 132: "Not Found",
    133: "Method Not Allowed", 134: "Not Acceptable", 136: "Request Entity Incomplete", 137: "Conflict",
    140: "Precondition Failed", 141: "Request Entity Too Large", 143: "Unsupported Content Format",
    150: "Unprocessable Entity", 157: "Too Many Requests",
    160: "Internal Server Error", 161: "Not Implemented", 162: "Bad Gateway", 163: "Service Unavailable",
    164: "Gateway Timeout", 165: "Proxying Not Supported", 168: "Hop Limit Reached",
}
SEND_NOTE = "sent 1, acknowledged 0"
FAILED_NOTE = " (--failed FILE keeps what was not acknowledged)"


class _Failed(Exception):
    """The request failed: exit status, why, hint (the normal path's error)."""

    def __init__(self, code: int, why: str, hint: str | None = None):
        super().__init__(why)
        self.code, self.why, self.hint = code, why, hint


def request(argv: list[str]) -> int | None:
    if not argv or argv[0] not in METHODS:
        return None
    verb = argv[0]
    writes = verb in ("put", "post")
    v = (WRITE if writes else READ).take(argv[1:])
    if v is None or "uri" not in v:
        return None
    job = _job(verb, v)
    if job is None:
        return None
    try:
        return _run(*job)
    except KeyboardInterrupt:  # as cli.main (get, delete) and the send driver (put, post) say it
        if writes:
            error(f"{verb.upper()} {v['uri']} interrupted", SEND_NOTE + FAILED_NOTE)
        else:
            sys.stderr.write("\n")  # the line after the terminal's ^C, as on the normal path
            error("interrupted")
        return 130


def _job(verb: str, v: dict):
    """The validated request, or None: the normal path then runs (and says what is wrong)."""
    mode = _mode(v)
    if mode is None:
        return None
    target = _target(v["uri"])
    if target is None:
        return None
    uri, host, port, options = target
    payload = b""
    if verb in ("put", "post"):
        given = [k for k in ("message", "message_arg", "null") if k in v]
        if len(given) > 1 or (verb == "put" and not given):
            return None
        if given and given[0] != "null":
            payload = v[given[0]].encode("utf-8", "surrogateescape")
        if len(payload) > BLOCK:
            return None  # Block1: the normal path
        if "content_format" in v:
            number = _content_format(v["content_format"])
            if number is None:
                return None
            options.append((CONTENT_FORMAT, _uint(number)))
    if "accept" in v:
        number = _content_format(v["accept"])
        if number is None:
            return None
        options.append((ACCEPT, _uint(number)))
    options.sort(key=lambda o: o[0])  # stable: repeated options keep their order
    timeout = positive(v.get("timeout", "10"))
    if timeout is None:
        return None
    max_size = MAX_SIZE
    if "max_size" in v:
        from iotctl.errors import UsageError
        from iotctl.protocols.coap.formats import parse_size

        try:
            max_size = parse_size(str(v["max_size"]))
        except UsageError:
            return None
    return verb, uri, host, port, options, payload, timeout, max_size, mode, v.get("format"), bool(v.get("quiet"))


def _mode(v: dict) -> str | None:
    """The output mode (iotctl.output.resolve_mode), or None for pretty (rich: the
    normal path) and for anything not valid."""
    mode, template = v.get("output", "auto"), v.get("format")
    if template is not None:
        from iotctl.errors import UsageError
        from iotctl.output.template import Template

        try:
            Template(template)
        except UsageError:
            return None
        if mode in ("auto", "template"):
            return "template"
    if mode == "auto":
        return None if sys.stdout.isatty() else "raw"
    return mode if mode in MODES and mode != "template" else None


def _content_format(text: str) -> int | None:
    value = text.strip()
    if value.isascii() and value.isdigit():
        number = int(value)
        return number if number <= 0xFFFF else None
    from iotctl.errors import UsageError
    from iotctl.protocols.coap.formats import parse_content_format

    try:
        return parse_content_format(text)
    except UsageError:
        return None


def _uint(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.")
_HEX = frozenset("0123456789abcdefABCDEF")


def _target(uri: str):
    """(uri, host, port, [Uri-Host, Uri-Path..., Uri-Query...]) of a plain coap:// URI
    that formats.check_uri accepts as it is and aiocoap's set_request_uri reads as this
    lane does; None for anything else."""
    if not uri.startswith("coap://") or not uri.isprintable() or any(c in uri for c in " #@;\\"):
        return None
    rest = uri[7:]
    end = len(rest)
    for stop in "/?":
        i = rest.find(stop)
        if 0 <= i < end:
            end = i
    netloc, rest = rest[:end], rest[end:]
    path, _, query = rest.partition("?")
    if path and not path.startswith("/"):
        return None
    port = 5683
    if netloc.startswith("["):
        close = netloc.find("]")
        host, tail = netloc[1:close], netloc[close + 1:]
        if close < 0 or not host or "%" in host:
            return None
        import _socket

        try:
            _socket.inet_pton(_socket.AF_INET6, host)
        except (OSError, ValueError):
            return None
        literal = True
    else:
        host, _, tail = netloc.partition(":")
        tail = ":" + tail if _ else ""
        if not host or not set(host) <= _HOST_CHARS or host.startswith(("-", ".")):
            return None
        host = host.lower()
        parts = host.split(".")
        literal = len(parts) == 4 and all(p.isdigit() and int(p) <= 255 for p in parts)
    if tail:
        digits = tail[1:]
        if tail[0] != ":" or not digits.isascii() or not digits.isdigit() or len(digits) > 5:
            return None
        port = int(digits)
        if not 0 < port <= 65535:
            return None
    options = []
    if not literal:
        options.append((URI_HOST, host.encode("ascii")))
    if path not in ("", "/"):
        for segment in path.split("/")[1:]:
            value = _unquote(segment)
            if value is None:
                return None
            options.append((URI_PATH, value))
    if query:
        for item in query.split("&"):
            value = _unquote(item)
            if value is None:
                return None
            options.append((URI_QUERY, value))
    if any(len(value) > 255 for _, value in options):
        return None
    return uri, host, port, options


def _unquote(text: str) -> bytes | None:
    """urllib.parse.unquote(text, errors='strict') as UTF-8 bytes; None for an
    incomplete %-escape or bytes that are not UTF-8."""
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    if b"%" in raw:
        out = bytearray()
        i = 0
        while i < len(raw):
            if raw[i] == 0x25:
                pair = raw[i + 1:i + 3].decode("ascii", "replace")
                if len(pair) != 2 or not set(pair) <= _HEX:
                    return None
                out.append(int(pair, 16))
                i += 3
            else:
                out.append(raw[i])
                i += 1
        raw = bytes(out)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return raw


# --------------------------------------------------------------------------- the wire


def _encode(mtype: int, code: int, mid: int, token: bytes, options, payload: bytes = b"") -> bytes:
    out = bytearray((0x40 | mtype << 4 | len(token), code, mid >> 8, mid & 0xFF))
    out += token
    last = 0
    for number, value in options:
        delta, length = number - last, len(value)
        last = number
        head = bytearray(1)
        nibbles = []
        for n in (delta, length):
            if n < 13:
                nibbles.append(n)
            elif n < 269:
                nibbles.append(13)
                head.append(n - 13)
            else:
                nibbles.append(14)
                head += (n - 269).to_bytes(2, "big")
        head[0] = nibbles[0] << 4 | nibbles[1]
        out += head + value
    if payload:
        out += b"\xff" + payload
    return bytes(out)


class _Message:
    __slots__ = ("mtype", "code", "mid", "token", "options", "payload")


def _decode(data: bytes) -> _Message | None:
    """A CoAP message, or None when it is malformed (aiocoap drops those)."""
    if len(data) < 4 or data[0] >> 6 != 1:
        return None
    tkl = data[0] & 0x0F
    if tkl > 8 or len(data) < 4 + tkl:
        return None
    m = _Message()
    m.mtype, m.code, m.mid = (data[0] >> 4) & 3, data[1], data[2] << 8 | data[3]
    m.token = data[4:4 + tkl]
    pos, number, options = 4 + tkl, 0, []
    size = len(data)
    while pos < size and data[pos] != 0xFF:
        byte = data[pos]
        pos += 1
        values = []
        for nibble in (byte >> 4, byte & 0x0F):
            if nibble == 13:
                if pos >= size:
                    return None
                values.append(data[pos] + 13)
                pos += 1
            elif nibble == 14:
                if pos + 2 > size:
                    return None
                values.append((data[pos] << 8 | data[pos + 1]) + 269)
                pos += 2
            elif nibble == 15:
                return None
            else:
                values.append(nibble)
        number += values[0]
        if pos + values[1] > size:
            return None
        options.append((number, data[pos:pos + values[1]]))
        pos += values[1]
    if pos < size:  # the payload marker
        if pos + 1 == size:
            return None
        m.payload = data[pos + 1:]
    else:
        m.payload = b""
    m.options = options
    return m


def _option(m: _Message, number: int) -> bytes | None:
    for n, value in m.options:
        if n == number:
            return value
    return None


def _code_text(code: int) -> str:
    return f"{code >> 5}.{code & 31:02d} {CODE_NAMES.get(code, '(Unknown)')}"


def _block(value: bytes) -> tuple[int, bool, int]:
    """(number, more, szx) of a Block2 value."""
    n = int.from_bytes(value, "big")
    return n >> 4, bool(n & 8), n & 7


def _block_size(szx: int) -> int:
    return 2 ** (min(szx, 6) + 4)


# --------------------------------------------------------------------------- the exchange


class _Exchange:
    """One UDP socket to the server; `ask` sends one request (CON, retransmitted)
    and returns its response."""

    def __init__(self, host: str, port: int, deadline: float, timeout: float):
        import _socket  # socket.py's wrappers (selectors, enums) are start-up time this lane saves
        import os

        self.deadline, self.timeout = deadline, timeout
        self.sock = None
        address = _resolve(host, port)
        if address is None:
            raise LookupError(host)
        family, sockaddr = address
        self.sock = _socket.socket(family, _socket.SOCK_DGRAM)
        self.sock.connect(sockaddr)
        self.mid = int.from_bytes(os.urandom(2), "big")
        self.token = int.from_bytes(os.urandom(2), "big")
        self.received = 0  # bytes of a block-wise response assembled so far

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()

    def ask(self, code: int, options, payload: bytes = b"") -> _Message:
        import os

        self.mid = (self.mid + 1) & 0xFFFF
        self.token = (self.token + 1) & 0xFFFF
        mid, token = self.mid, self.token.to_bytes(2, "big")
        packet = _encode(CON, code, mid, token, options, payload)
        sock = self.sock
        # aiocoap: ACK_TIMEOUT * random.uniform(1, ACK_RANDOM_FACTOR)
        wait = ACK_TIMEOUT * (1.0 + (ACK_RANDOM_FACTOR - 1.0) * int.from_bytes(os.urandom(2), "big") / 0xFFFF)
        tries = 0
        acknowledged = False
        self._send(packet)
        resend_at = time.monotonic() + wait
        while True:
            now = time.monotonic()
            if now >= self.deadline:
                raise self._timeout()
            if acknowledged:
                until = self.deadline
            else:
                if now >= resend_at:
                    if tries >= MAX_RETRANSMIT:
                        raise self._timeout()
                    tries += 1
                    wait *= 2
                    self._send(packet)
                    resend_at = now + wait
                until = min(resend_at, self.deadline)
            sock.settimeout(max(0.001, until - time.monotonic()))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                raise _Failed(*connect_error("", exc)) from None
            m = _decode(data)
            if m is None:
                continue
            if m.mtype in (ACK, RST) and m.mid == mid and m.code == 0:
                if m.mtype == RST:
                    raise _Failed(3, "Network error: MessageError")
                acknowledged = True
                continue
            if m.token != token or not 64 <= m.code < 192:
                if m.mtype == CON:  # not ours: reset it, as aiocoap does
                    self._send(_encode(RST, 0, m.mid, b"", ()))
                continue
            if m.mtype == CON:  # acknowledged; one aiocoap cannot decode is reset (client._undecodable)
                self._send(_encode(RST if _bad_string(m) else ACK, 0, m.mid, b"", ()))
            return m

    def _send(self, packet: bytes) -> None:
        try:
            self.sock.send(packet)
        except OSError as exc:
            raise _Failed(*connect_error("", exc)) from None

    def _timeout(self) -> _Failed:
        t = self.timeout
        if self.received:
            return _Failed(5, f"the block-wise response was not complete within {t:g} s "
                              f"({self.received} bytes received)", "-W sets the timeout")
        return _Failed(5, f"no response within {t:g} s", "is a CoAP server running there? (-W sets the timeout)")


def _resolve(host: str, port: int):
    """(family, sockaddr) as aiocoap's getaddrinfo_routechecked picks it: an address as
    it is; a name's IPv6 addresses first, then IPv4, skipping those without a route.
    None when it cannot resolve (the normal path says how) or the address is multicast
    or broadcast (the normal path's)."""
    import _socket as socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        packed = socket.inet_pton(family, host)
    except OSError:
        packed = None
    if packed is not None:
        sockaddr = _unicast(family, (host, port) if family == socket.AF_INET else (host, port, 0, 0), packed)
        return None if sockaddr is None else (family, sockaddr)
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_DGRAM, socket.IPPROTO_UDP,
                                   socket.AI_ADDRCONFIG)
    except (OSError, UnicodeError):
        return None
    ordered = [i for i in infos if i[0] == socket.AF_INET6] + [i for i in infos if i[0] == socket.AF_INET]
    for family, _, _, _, sockaddr in ordered:
        probe = socket.socket(family, socket.SOCK_DGRAM)
        try:
            probe.connect(sockaddr)
        except OSError as exc:
            import errno

            if exc.errno == errno.ENETUNREACH:
                continue
        finally:
            probe.close()
        sockaddr = _unicast(family, sockaddr, socket.inet_pton(family, sockaddr[0].split("%")[0]))
        return None if sockaddr is None else (family, sockaddr)
    return None


def _unicast(family: int, sockaddr: tuple, packed: bytes):
    if len(packed) == 16 and packed[:12] == bytes(10) + b"\xff\xff":
        packed = packed[12:]
    if packed[0] == 0xFF or (len(packed) == 4 and packed[0] >= 224):
        return None  # multicast (or broadcast)
    return sockaddr


def _whole(ex: _Exchange, code: int, options, payload: bytes, max_size: int) -> _Message:
    """The response, its Block2 blocks followed and assembled as aiocoap does
    (protocol.BlockwiseRequest, with iotctl's --max-size)."""
    first = ex.ask(code, options, payload)
    value = _option(first, BLOCK2)
    if value is None or not _block(value)[1]:
        first.options = [o for o in first.options if o[0] != BLOCK2]
        return first
    number, _, szx = _block(value)
    if number != 0:
        raise _Failed(1, "UnexpectedBlock2: ")
    whole = first
    body = bytearray(first.payload)
    etag = _option(first, ETAG)
    while True:
        ex.received = len(body)
        # the next block at the last block's size (aiocoap: at most 1024 bytes, SZX 6)
        block_value = _uint(len(body) // _block_size(szx) << 4 | min(szx, 6))
        asked = [o for o in options if o[0] < BLOCK2] + [(BLOCK2, block_value)] + [o for o in options if o[0] > BLOCK2]
        last = ex.ask(code, asked)
        value = _option(last, BLOCK2)
        if value is None:
            return last  # aiocoap takes a response without Block2 as the whole answer
        number, more, szx = _block(value)
        start = number * _block_size(szx)
        total = start + len(last.payload)
        if total > max_size:
            raise _Failed(6, f"the server sent more than --max-size {max_size} bytes (block-wise, more blocks "
                             "announced); the transfer was stopped",
                          "raise --max-size if the resource really is that large")
        ex.received = total
        if (more and len(last.payload) != _block_size(szx)) or (not more and len(last.payload) > _block_size(szx)):
            raise _Failed(1, "UnexpectedBlock2: Payload size does not match Block2")
        if start != len(body):
            raise _Failed(1, "NotImplemented: ")
        if _option(last, ETAG) != etag:
            raise _Failed(1, "ResourceChanged: ")
        body += last.payload
        whole.options = [(n_, v_) if n_ != BLOCK2 else (BLOCK2, value) for n_, v_ in whole.options]
        whole.token, whole.mid = last.token, last.mid
        if not more:
            whole.payload = bytes(body)
            return whole


# --------------------------------------------------------------------------- the command


def _run(verb, uri, host, port, options, payload, timeout, max_size, mode, template, quiet) -> int:
    what = f"{verb.upper()} {uri}"
    writes = verb in ("put", "post")
    started = time.monotonic()
    try:
        ex = _Exchange(host, port, started + timeout, timeout)
    except LookupError:
        return None  # a name that does not resolve: the normal path says so
    except OSError as exc:
        code, why, hint = connect_error(what, exc)
        return _fail(what, _Failed(code, why, hint), writes)
    try:
        resp = _whole(ex, METHODS[verb], options, payload, max_size)
        bad = _bad_string(resp)
        if bad is not None:
            raise _Failed(6, bad)
    except _Failed as exc:
        return _fail(what, exc, writes)
    finally:
        ex.close()
    ok = 64 <= resp.code < 96
    code_text = _code_text(resp.code)
    if ok or mode in ("json", "jsonl"):
        shown = _show(resp, uri, code_text, mode, template, quiet)
        if shown:
            return shown
    if ok:
        return 0
    text = resp.payload.decode("utf-8", "replace").strip()
    diag = " ".join(text.split())[:500]
    reason = code_text + (f": {diag}" if diag else "")
    if writes:
        reason += f"; {SEND_NOTE}, refused 1{FAILED_NOTE}"
    error(what, reason)
    return 6


def _fail(what: str, exc: _Failed, writes: bool) -> int:
    why = exc.why
    if writes:
        why = f"{why}; {SEND_NOTE}{FAILED_NOTE}"
    error(what, why, exc.hint)
    return exc.code


def _bad_string(resp: _Message) -> str | None:
    """client._undecodable's error for a response whose string option is not UTF-8."""
    for number, value in resp.options:
        if number in STRING_OPTIONS:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return f"the response's option {STRING_OPTIONS[number]} ({number}) is not valid UTF-8"
    return None


def _location(resp: _Message) -> str | None:
    path = [v.decode("utf-8") for n, v in resp.options if n == LOCATION_PATH]
    query = [v.decode("utf-8") for n, v in resp.options if n == LOCATION_QUERY]
    if not path and not query:
        return None
    return "/" + "/".join(path) + ("?" + "&".join(query) if query else "")


def _show(resp: _Message, uri: str, code_text: str, mode: str, template: str | None, quiet: bool) -> int:
    """cli._write for one response: 0, or 1 when stdout cannot take it (express.emit)."""
    location = _location(resp)
    if location and not quiet:
        sys.stderr.write(f"iotctl: {code_text}: {location}\n")
        sys.stderr.flush()
    if not resp.payload and mode in ("raw", "hex"):
        if not quiet and sys.stderr.isatty():
            sys.stderr.write(f"iotctl: {uri}: {code_text}\n")
            sys.stderr.flush()
        return 0
    if mode == "raw":
        out = resp.payload + b"\n"
    elif mode == "hex":
        out = resp.payload.hex().encode("ascii") + b"\n"
    else:
        out = _envelope(resp, uri, code_text, location, mode, template)
    return emit(out)


def _envelope(resp: _Message, uri: str, code_text: str, location: str | None, mode: str, template) -> bytes:
    """The response as client.to_message makes it, rendered by the normal path's writer."""
    from iotctl.message import Message
    from iotctl.output import writers
    from iotctl.protocols.coap import formats

    meta: dict = {"code": code_text, "options": formats.options_meta(resp.options),
                  "type": TYPE_NAMES[resp.mtype], "mid": resp.mid, "token": resp.token.hex()}
    if location:
        meta["location"] = location
    ct = _option(resp, CONTENT_FORMAT)
    content_type = formats.content_format_name(int.from_bytes(ct, "big")) if ct is not None else None
    msg = Message("coap", uri, bytes(resp.payload), content_type, meta)
    import io

    out = io.BytesIO()
    if mode == "text":
        writer = writers.TextWriter(out)
    elif mode == "template":
        writer = writers.TemplateWriter(out, template)
    else:
        writer = writers.JsonWriter(out, lines=mode == "jsonl")
    writer.write(msg)
    return out.getvalue()

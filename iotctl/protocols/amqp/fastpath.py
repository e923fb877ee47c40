"""The consumer's receive fast path (issue 17, item 5): once every Basic.Consume is
answered and pika holds nothing half-read or unsent, the connection's socket is read
here directly. Frames are parsed in bulk from whatever one recv() returned: a
Basic.Deliver with its content header and body frame(s) becomes one `Message`,
exactly the envelope the pika path builds (client.Consumer._on_message; tests
compare both); heartbeats from the broker are taken, and sent on the negotiated
interval. pika's per-frame Python (about 40 µs a delivery) is what this replaces.

Anything else -- a Channel.Close or Connection.Close, a Basic.Cancel, a frame for
another channel, a frame larger than frame_max, bytes that are not AMQP -- is not
interpreted here: the reader stops at the start of the delivery or frame it does not
take (`stop`), and the consumer hands those bytes back to pika and leaves the fast
path for good, so every error path stays pika's own (client.Consumer._leave_fast).
So do the end of the stream, a socket error and a broker that stopped answering.

No pika here: the content header's properties are decoded by `decode_props` (given
by the consumer, cached there).
"""

from __future__ import annotations

import select
import struct
import time

from iotctl.message import Message

RECV = 1 << 18
HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"
DELIVER = 0x003C003C  # Basic.Deliver: class 60, method 60
BASIC = 60

_frame = struct.Struct(">BHI").unpack_from  # type, channel, payload size
_method = struct.Struct(">BHII").unpack_from  # a method frame: type, channel, size, class and method
_deliver = struct.Struct(">QBB").unpack_from  # delivery tag, bits, the exchange's length
_header = struct.Struct(">BHIHHQ").unpack_from  # a content header: type, channel, size, class, weight, body size
_ack = struct.Struct(">BHIIQBB").pack  # a method frame of 13 bytes: type, channel, size, method, tag, bits, end


def ack_frame(channel: int, tag: int, multiple: bool) -> bytes:
    """Basic.Ack."""
    return _ack(1, channel, 13, 0x003C0050, tag, 1 if multiple else 0, 0xCE)


def nack_frame(channel: int, tag: int, multiple: bool, requeue: bool) -> bytes:
    """Basic.Nack (bit 0 multiple, bit 1 requeue)."""
    return _ack(1, channel, 13, 0x003C0078, tag, (1 if multiple else 0) | (2 if requeue else 0), 0xCE)


class Stop:
    """Why the fast path ends: `rest` the unread bytes pika gets back; `error` an
    OSError of the socket; `eof` the stream ended; `dead` no byte from the broker
    for longer than its heartbeat allows."""

    __slots__ = ("rest", "error", "eof", "dead")

    def __init__(self, rest: bytes = b"", error: OSError | None = None, eof: bool = False, dead: bool = False):
        self.rest, self.error, self.eof, self.dead = rest, error, eof, dead


class FastReader:
    """Reads one consuming channel's connection. Each message's `token` is its
    delivery tag (the consumer adds its generation)."""

    def __init__(self, sock, channel: int, frame_max: int, heartbeat: int | None, max_body: int, tags,
                 decode_props, props_cache: dict, buffered: bytes = b""):
        self.sock = sock
        self.channel = channel
        self.frame_max = frame_max
        self.heartbeat = heartbeat or 0
        self.max_body = max_body
        self.tags = {t.encode("utf-8") if isinstance(t, str) else t for t in tags}
        self.decode_props = decode_props  # raw property bytes -> (content type, properties, headers) or None
        self.props_cache = props_cache  # what decode_props keeps
        self.strs: dict = {}  # exchange and routing key bytes -> as pika decodes them
        self.chunks: list[bytes] = [buffered] if buffered else []
        self.have = len(buffered)
        self.need = 1 if buffered else 11  # bytes the next parse needs at least
        self.stop: Stop | None = None
        self.out = bytearray()  # acks and heartbeats not written yet
        now = time.monotonic()
        self.last_in = self.last_out = now
        self.consumed = 0  # bytes taken from the stream (pika's counter gets them when it takes over)
        self.sent = 0
        self.pending = getattr(sock, "pending", None)  # TLS: bytes decrypted, not read yet

    # ------------------------------------------------------------------ reading

    def wait(self, wait: float | None) -> bool:
        """Wait at most `wait` seconds for the socket to be readable (writing what is
        queued meanwhile); False when nothing came (heartbeats are kept up here)."""
        if self.stop is not None:
            return False
        if self.pending is not None and self.pending():
            return True
        wait = 1.0 if wait is None else wait
        if self.heartbeat:
            wait = max(0.0, min(wait, self._next_upkeep() - time.monotonic()))
        sock = self.sock
        try:
            readable, writable, _ = select.select([sock], [sock] if self.out else [], [], wait)
        except (OSError, ValueError) as exc:
            self.stop = Stop(self.buffered(), error=exc if isinstance(exc, OSError) else OSError(str(exc)))
            return False
        if writable:
            self.flush()
        if not readable:
            self.upkeep()
            return False
        return True

    def read(self) -> list:
        """Read what the socket has (one recv) and parse every complete delivery."""
        if self.stop is not None:
            return []
        try:
            data = self.sock.recv(RECV)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError as exc:
            if _want_io(exc):
                return []
            self.stop = Stop(self.buffered(), error=exc)
            return []
        if not data:
            self.stop = Stop(self.buffered(), eof=True)
            return []
        self.last_in = time.monotonic()
        self.chunks.append(data)
        self.have += len(data)
        if self.have < self.need:
            return []
        buf = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        out, pos = self._parse(buf)
        self.consumed += pos
        rest = buf[pos:] if pos else buf
        if self.stop is not None:
            self.stop.rest = rest
            self.chunks, self.have = [], 0
        else:
            self.chunks = [rest] if rest else []
            self.have = len(rest)
        if self.out:
            self.flush()
        return out

    def buffered(self) -> bytes:
        """The bytes read and not taken (a delivery not complete yet)."""
        chunks = self.chunks
        self.chunks, self.have = [], 0
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _parse(self, buf: bytes) -> tuple[list, int]:
        """The complete deliveries at the start of `buf` and how many bytes they
        took. Stops (self.stop) at the first frame it does not take; self.need is
        how much `buf` from that offset must hold before it is parsed again."""
        n = len(buf)
        pos = 0
        out: list = []
        append = out.append
        ch = self.channel
        fmax = self.frame_max
        max_body = self.max_body
        tags = self.tags
        decode_props = self.decode_props
        known = self.props_cache.get
        strs = self.strs
        while True:
            left = n - pos
            if left < 11:
                if not left:
                    self.need = 11
                    break
                first = buf[pos]
                if first == 8 and left >= 8:  # a heartbeat
                    if buf[pos:pos + 8] != HEARTBEAT:
                        self.stop = Stop()
                        break
                    pos += 8
                    continue
                if first not in (1, 8):
                    self.stop = Stop()
                else:
                    self.need = 11 if first == 1 else 8
                break
            ftype, fch, size, method = _method(buf, pos)
            if ftype != 1 or fch != ch or size + 8 > fmax or method != DELIVER:
                if buf[pos:pos + 8] == HEARTBEAT:
                    pos += 8
                    continue
                self.stop = Stop()  # pika's to handle
                break
            end = pos + 7 + size  # the frame-end octet
            if end >= n:
                self.need = size + 8
                break
            # Basic.Deliver: consumer tag, delivery tag, redelivered, exchange, routing key
            q = pos + 11
            tlen = buf[q]
            q += 1 + tlen
            if buf[end] != 0xCE or q + 11 > end or buf[pos + 12:q] not in tags:
                self.stop = Stop()
                break
            tag, bits, elen = _deliver(buf, q)
            q += 10
            raw = buf[q:q + elen]
            exchange = strs.get(raw)
            if exchange is None:
                exchange = _short(raw, strs)
            q += elen
            if q >= end:
                self.stop = Stop()
                break
            klen = buf[q]
            q += 1
            if q + klen != end:
                self.stop = Stop()
                break
            raw = buf[q:end]
            key = strs.get(raw)
            if key is None:
                key = _short(raw, strs)
            # the content header
            h = end + 1
            if n - h < 19:
                self.need = h + 19 - pos
                break
            htype, hch, hsize, cls, _weight, body_size = _header(buf, h)
            if htype != 2 or hch != ch or hsize + 8 > fmax or hsize < 14 or cls != BASIC or body_size > max_body:
                self.stop = Stop()
                break
            hend = h + 7 + hsize
            if hend >= n:
                self.need = hend + 1 - pos
                break
            if buf[hend] != 0xCE:
                self.stop = Stop()
                break
            # the body frames
            b = hend + 1
            if body_size:
                if n - b < 7:
                    self.need = b - pos + _least(body_size, fmax)
                    break
                btype, bch, bsize = _frame(buf, b)
                bend = b + 7 + bsize
                if bsize == body_size and btype == 3 and bch == ch and bend < n and buf[bend] == 0xCE \
                        and bsize + 8 <= fmax:
                    body = buf[b + 7:bend]  # the common case: one body frame
                    b = bend + 1
                else:
                    body, b = self._body(buf, b, body_size)
                    if body is None:
                        if self.stop is None:
                            self.need = b - pos
                        break
            else:
                body = b""
            raw = buf[h + 19:hend]
            props = known(raw)
            if props is None:
                props = decode_props(raw)
                if props is None:  # properties pika's decoder does not take
                    self.stop = Stop()
                    break
            msg = Message("amqp", key, body, props[0], {
                "exchange": exchange, "routing_key": key, "redelivered": bits & 1 == 1, "delivery_tag": tag,
                "properties": props[1], "headers": {} if props[2] is None else props[2]})
            msg.token = tag
            append(msg)
            pos = b
        return out, pos

    def _body(self, buf: bytes, b: int, body_size: int):
        """A body in several frames from offset b: (body, offset after it); (None,
        the least offset the buffer must reach) when not whole yet; (None, b) with
        self.stop set when a frame is not the next body frame."""
        n = len(buf)
        ch = self.channel
        fmax = self.frame_max
        got = 0
        parts = []
        while got < body_size:
            if n - b < 7:
                return None, b + _least(body_size - got, fmax)
            btype, bch, bsize = _frame(buf, b)
            if btype != 3 or bch != ch or bsize + 8 > fmax or got + bsize > body_size:
                self.stop = Stop()
                return None, b
            bend = b + 7 + bsize
            if bend >= n:
                return None, bend + 1 + _least(body_size - got - bsize, fmax)
            if buf[bend] != 0xCE:
                self.stop = Stop()
                return None, b
            parts.append(buf[b + 7:bend])
            got += bsize
            b = bend + 1
        return b"".join(parts), b

    # ------------------------------------------------------------------ writing, heartbeats

    def write(self, data: bytes) -> None:
        """Queue `data` and write as much as the socket takes now."""
        self.out += data
        self.flush()

    def flush(self) -> None:
        out = self.out
        sock = self.sock
        while out and self.stop is None:
            try:
                sent = sock.send(out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if _want_io(exc):
                    return
                self.stop = Stop(self.buffered(), error=exc)
                return
            del out[:sent]
            self.sent += sent
            self.last_out = time.monotonic()

    def _next_upkeep(self) -> float:
        """When a heartbeat is due (not while a write waits for the socket), or the
        broker's silence is to be looked at."""
        beat = self.heartbeat
        silent = self.last_in + beat + 5
        return silent if self.out else min(self.last_out + beat / 2, silent)

    def upkeep(self) -> None:
        """A heartbeat once nothing was sent for half the negotiated timeout (pika's
        interval); a broker silent for the timeout plus 5 s is dead (pika's check)."""
        beat = self.heartbeat
        if beat and self.stop is None:
            now = time.monotonic()
            if now - self.last_in > beat + 5:
                if not (self.pending is not None and self.pending()) and not _readable(self.sock):
                    self.stop = Stop(self.buffered(), dead=True)
                    return
            if now - self.last_out >= beat / 2 and not self.out:
                self.out += HEARTBEAT
        if self.out:
            self.flush()


def _short(raw: bytes, strs: dict):
    """A short string as pika decodes it: text when UTF-8, else the bytes."""
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        value = raw
    if len(strs) > 1024:
        strs.clear()
    strs[raw] = value
    return value


def _least(left: int, fmax: int) -> int:
    """The fewest bytes `left` body bytes take in frames of at most `fmax` bytes."""
    if left <= 0:
        return 0
    room = fmax - 8
    return left + 8 * (-(-left // room))


def _want_io(exc: OSError) -> bool:
    """A TLS socket asks to be read or written again (not an error)."""
    import ssl

    return isinstance(exc, (ssl.SSLWantReadError, ssl.SSLWantWriteError))


def _readable(sock) -> bool:
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return False

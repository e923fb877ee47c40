"""The subscriber's receive fast path (issue 20): once paho has connected, the session's
socket is read here directly, from the SUBSCRIBE on (a resumed session's backlog comes
before the SUBACK). Packets are parsed in bulk from whatever one recv() returned —
PUBLISH into `Message`s, SUBACK, PUBREL answered with PUBCOMP, PINGRESP, a server's
DISCONNECT — and acknowledgements are written in one send per batch, only after the
batch was written out (receive driver).
Keep-alive pings are sent here too. paho's per-packet Python (about 8 µs a message) is
what this replaces; the envelope it builds is exactly paho's (tests compare both).

Not for websockets (paho's wrapper frames the stream); TLS and plain TCP only.
"""

from __future__ import annotations

import select
import time

from iotctl.errors import ConnectionLost, PeerError
from iotctl.message import Message, bytes_text

_now = time.time

RECV = 1 << 16  # one read: a batch of at most ~2,000 small messages, so the peak memory does not depend on timing
MAX_PACKET = 268_435_455  # the protocol's limit for a remaining length

# MQTT 5 PUBLISH properties: id -> (envelope key, kind)
_PROPS = {1: ("payload_format_indicator", "byte"), 2: ("message_expiry_interval", "int4"),
          3: ("content_type", "str"), 8: ("response_topic", "str"), 9: ("correlation_data", "bin"),
          11: ("subscription_identifier", "varint"), 35: ("topic_alias", "int2"),
          38: ("user_properties", "pair")}
DISCONNECT_REASONS = {0x00: "Normal disconnection", 0x80: "Unspecified error", 0x81: "Malformed packet",
                      0x82: "Protocol error", 0x87: "Not authorized", 0x89: "Server busy",
                      0x8B: "Server shutting down", 0x8D: "Keep alive timeout", 0x8E: "Session taken over",
                      0x93: "Receive maximum exceeded", 0x94: "Topic alias invalid", 0x95: "Packet too large",
                      0x97: "Quota exceeded", 0x98: "Administrative action", 0x9C: "Use another server",
                      0x9D: "Server moved", 0xA0: "Maximum connect time"}


class FastReader:
    """Reads one subscribed session's socket. `token` of a QoS 1/2 message (manual
    acks) is (self, packet id, qos), acknowledged by `ack`."""

    def __init__(self, sock, v5: bool, keepalive: int, manual_ack: bool, owner=None, max_packet: int | None = None):
        self.sock = sock
        self.v5 = v5
        self.keepalive = keepalive
        self.manual_ack = manual_ack
        self.owner = owner  # whose tokens these are (the Session)
        self.max_packet = max_packet or MAX_PACKET
        self.buf = b""
        self.accept = None
        self.last_out = time.monotonic()
        self.ping_sent: float | None = None
        self.out = bytearray()  # PUBCOMPs and pings not written yet
        self.subacks: dict[int, bytes] = {}  # packet id -> the SUBACK's codes, one per filter

    # ------------------------------------------------------------------ reading
        self.subacks: dict[int, bytes] = {}  # packet id -> the SUBACK's codes, one per filter

    def poll(self, wait: float | None) -> list[Message]:
        """The messages that arrived within `wait` seconds (those already buffered at
        once); raises ConnectionLost or PeerError when the session ends."""
        batch = self._parse()
        if batch:
            return batch
        sock = self.sock
        pending = sock.pending() if hasattr(sock, "pending") else 0
        if not pending:
            wait = 1.0 if wait is None else wait
            if self.keepalive:
                wait = max(0.0, min(wait, self._next_ping() - time.monotonic()))
            try:
                ready = select.select([sock], [], [], wait)[0]
            except (OSError, ValueError):
                raise ConnectionLost("subscription", "connection lost") from None
            if not ready:
                self._upkeep()
                return []
        try:
            data = sock.recv(RECV)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError as exc:
            raise ConnectionLost("subscription", f"connection lost ({exc.strerror or exc})") from None
        if not data:
            raise ConnectionLost("subscription", "connection lost (the broker closed it)")
        self.buf = self.buf + data if self.buf else data
        batch = self._parse()
        self._upkeep()
        return batch

    def _next_ping(self) -> float:
        return self.last_out + self.keepalive * 0.75

    def _upkeep(self) -> None:
        now = time.monotonic()
        if self.keepalive:
            if self.ping_sent is not None and now - self.ping_sent > self.keepalive * 1.5:
                raise ConnectionLost("subscription", "connection lost (no answer to a keep-alive ping)")
            if now >= self._next_ping() and self.ping_sent is None:
                self.out += b"\xc0\x00"
                self.ping_sent = now
        if self.out:
            self._write(bytes(self.out))
            self.out.clear()

    def _write(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise ConnectionLost("subscription", f"connection lost ({exc.strerror or exc})") from None
        self.last_out = time.monotonic()

    def _parse(self) -> list[Message]:
        buf = self.buf
        n = len(buf)
        if n < 2:
            return []
        out: list[Message] = []
        append = out.append
        pos = 0
        v5 = self.v5
        accept = self.accept
        manual = self.manual_ack
        now = _now()  # what one read brought arrived at once
        while n - pos >= 2:
            first = buf[pos]
            b = buf[pos + 1]
            if b < 128:
                length, start = b, pos + 2
            else:
                found = long_length(buf, pos, n)
                if found is None:
                    self.buf = buf[pos:]
                    return out
                if found is BAD_LENGTH:
                    raise PeerError("subscription", "malformed packet from the broker (remaining length)")
                length, start = found
            end = start + length
            if length > self.max_packet:  # refused before it is read: memory stays bounded
                raise PeerError("subscription", f"the broker sent a packet larger than {self.max_packet:,} bytes "
                                                "(--max-size)")
            if end > n:
                break
            pos = end
            kind = first >> 4
            if kind == 3:
                tlen = (buf[start] << 8) | buf[start + 1]
                p = start + 2 + tlen
                try:
                    topic = buf[start + 2:p].decode("utf-8")
                except UnicodeDecodeError:
                    raise PeerError("subscription", "malformed packet from the broker (a topic that is not "
                                                    "UTF-8)") from None
                qos = (first >> 1) & 3
                mid = 0
                if qos:
                    mid = (buf[p] << 8) | buf[p + 1]
                    p += 2
                if v5:
                    plen = buf[p]
                    if plen:
                        props, p = _properties(buf, p, end)
                        msg = Message("mqtt", topic, buf[p:end], props.get("content_type"),
                                      {"qos": qos, "retain": bool(first & 1), "properties": props}, now)
                    else:
                        msg = Message("mqtt", topic, buf[p + 1:end], None, {"qos": qos, "retain": bool(first & 1)},
                                      now)
                else:
                    msg = Message("mqtt", topic, buf[p:end], None, {"qos": qos, "retain": bool(first & 1)}, now)
                if accept is None or accept(msg):
                    if qos and manual:
                        msg.token = (self.owner, mid, qos)
                    append(msg)
                elif qos and manual:
                    self.out += _ack_packet(mid, qos)
                if qos and not manual:
                    self.out += _ack_packet(mid, qos)
            elif kind == 6:  # PUBREL (QoS 2): complete it
                self.out += b"\x70\x02" + buf[start:start + 2]
            elif kind == 9:  # SUBACK (the subscription was sent once this reader took over)
                p = start + 2
                if v5:
                    plen, p = _varint(buf, p)  # its properties (a reason string): not shown
                    p += plen
                self.subacks[(buf[start] << 8) | buf[start + 1]] = buf[p:end]
            elif kind == 13:  # PINGRESP
                self.ping_sent = None
            elif kind == 14:  # DISCONNECT from the server (MQTT 5)
                reason = buf[start] if length else 0
                name = DISCONNECT_REASONS.get(reason, f"reason 0x{reason:02x}")
                self.buf = b""
                if reason in (0x87, 0x86):
                    from iotctl.errors import AuthError

                    raise AuthError("subscription", f"broker closed the connection: {name}")
                if reason:
                    raise PeerError("subscription", f"broker closed the connection: {name}")
                raise ConnectionLost("subscription", "connection lost (the broker disconnected)")
            # UNSUBACK, PUBACK...: nothing a subscriber waits for here
        self.buf = buf[pos:] if pos < n else b""
        return out

    # ------------------------------------------------------------------ acknowledging

    def ack(self, batch: list[Message]) -> None:
        """PUBACK / PUBREC for the written messages of this session, in one send."""
        owner = self.owner
        data = bytearray(self.out)
        self.out.clear()
        for msg in batch:
            token = msg.token
            if token is not None and token[0] is owner:
                msg.token = None
                data += _ack_packet(token[1], token[2])
        if data:
            self._write(bytes(data))


BAD_LENGTH = (-1, -1)  # long_length: more than four length bytes


def long_length(buf, pos: int, n: int):
    """The remaining length of the packet at buf[pos] when it takes more than one byte:
    (length, where the packet's body starts); None when its bytes have not all come
    yet (buf[:n]); BAD_LENGTH when it runs past four bytes (a malformed packet)."""
    length, mult, i = buf[pos + 1] & 127, 128, pos + 2
    while True:
        if i >= n:
            return None
        if i - pos > 4:
            return BAD_LENGTH
        b = buf[i]
        length += (b & 127) * mult
        i += 1
        if b < 128:
            return length, i
        mult *= 128


def _ack_packet(mid: int, qos: int) -> bytes:
    return (b"\x40\x02" if qos == 1 else b"\x50\x02") + mid.to_bytes(2, "big")


def _varint(buf, p: int) -> tuple[int, int]:
    value, mult = 0, 1
    while True:
        b = buf[p]
        p += 1
        value += (b & 127) * mult
        if b < 128:
            return value, p
        mult *= 128
        if mult > 128 ** 4:
            raise PeerError("subscription", "malformed packet from the broker (a property)")


def _properties(buf, p: int, end: int) -> tuple[dict, int]:
    """MQTT 5 PUBLISH properties as paho reports them (client.properties_dict), in
    the order they came; returns them and the payload's offset."""
    plen, p = _varint(buf, p)
    stop = p + plen
    if stop > end:
        raise PeerError("subscription", "malformed packet from the broker (properties)")
    props: dict = {}
    try:
        while p < stop:
            ident, p = _varint(buf, p)
            entry = _PROPS.get(ident)
            if entry is None:
                raise PeerError("subscription", f"malformed packet from the broker (property {ident})")
            key, kind = entry
            if kind == "byte":
                props[key] = buf[p]
                p += 1
            elif kind == "int2":
                props[key] = (buf[p] << 8) | buf[p + 1]
                p += 2
            elif kind == "int4":
                props[key] = int.from_bytes(buf[p:p + 4], "big")
                p += 4
            elif kind == "varint":
                value, p = _varint(buf, p)
                props.setdefault(key, []).append(value)
            elif kind in ("str", "bin"):
                size = (buf[p] << 8) | buf[p + 1]
                raw = buf[p + 2:p + 2 + size]
                p += 2 + size
                props[key] = raw.decode("utf-8") if kind == "str" else bytes_text(raw)
            else:  # a user property: two strings
                size = (buf[p] << 8) | buf[p + 1]
                k = buf[p + 2:p + 2 + size].decode("utf-8")
                p += 2 + size
                size = (buf[p] << 8) | buf[p + 1]
                v = buf[p + 2:p + 2 + size].decode("utf-8")
                p += 2 + size
                props.setdefault(key, []).append([k, v])
    except (IndexError, UnicodeDecodeError):
        raise PeerError("subscription", "malformed packet from the broker (properties)") from None
    return props, stop

"""The publisher's send fast path (issue 17): once paho has connected and is between
packets, a publisher's own session is written here directly. PUBLISH packets are
built by iotctl (no paho `publish`, no `MQTTMessageInfo`) into one buffer that leaves
in one send() per 64 KiB, whenever the caller waits (`pump`) and at the close; the
acknowledgements (PUBACK, PUBREC answered with PUBREL, PUBCOMP) are read in bulk from
whatever one recv() returned, with no `Properties` or `ReasonCode` built for a
success. paho's per-message Python (about 25 µs a QoS 1 message) is what this
replaces; the packets on the wire are paho's byte for byte (tests compare both).

Not for websockets (paho's wrapper frames the stream) nor for --debug (paho's packet
trace); TLS and plain TCP. The session's close (DISCONNECT, half-close) stays paho's:
`drain()` first sends what is buffered here.
"""

from __future__ import annotations

import select
import time

from iotctl.errors import AuthError, ConnectionLost, IotctlError, PeerError
from iotctl.protocols.mqtt.express import varint as remaining_length
from iotctl.protocols.mqtt.fastpath import BAD_LENGTH, DISCONNECT_REASONS, MAX_PACKET, RECV, long_length

LIMIT = 64 << 10  # a batch of PUBLISH packets leaves once this much gathered
_TOPICS_KEPT = 4096

try:  # what a non-blocking TLS socket raises instead of BlockingIOError
    from ssl import SSLWantReadError, SSLWantWriteError

    _AGAIN: tuple = (BlockingIOError, InterruptedError, SSLWantReadError, SSLWantWriteError)
except ImportError:  # pragma: no cover - Python without ssl
    _AGAIN = (BlockingIOError, InterruptedError)


class BadPublish(ValueError):
    """A message this connection cannot carry (the topic, the size): the caller's
    usage error, as paho's ValueError was."""


def _utf8(value: str, what: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) > 65535:
        raise BadPublish(f"{what} is longer than 65,535 bytes")
    return len(data).to_bytes(2, "big") + data


def encode_properties(props) -> bytes:
    """MQTT 5 PUBLISH properties (client.PublishProps, or None) as they go on the wire:
    their length, then each in the order of its identifier, as paho packs them."""
    if props is None or props.empty():
        return b"\x00"
    body = bytearray()
    if props.payload_format_indicator is not None:
        body += bytes((1, props.payload_format_indicator & 0xFF))
    if props.message_expiry is not None:
        if not 0 <= props.message_expiry <= 0xFFFFFFFF:
            raise BadPublish("the message expiry interval must be 0 to 4294967295 seconds")
        body += b"\x02" + props.message_expiry.to_bytes(4, "big")
    if props.content_type is not None:
        body += b"\x03" + _utf8(props.content_type, "the content type")
    if props.response_topic is not None:
        body += b"\x08" + _utf8(props.response_topic, "the response topic")
    if props.correlation_data is not None:
        data = bytes(props.correlation_data)
        if len(data) > 65535:
            raise BadPublish("the correlation data is longer than 65,535 bytes")
        body += b"\x09" + len(data).to_bytes(2, "big") + data
    for key, value in props.user_properties:
        body += b"\x26" + _utf8(key, "a user property") + _utf8(value, "a user property")
    return remaining_length(len(body)) + bytes(body)


class FastWriter:
    """Writes one connected session's PUBLISHes and reads its acknowledgements.

    `acked` (a set) receives the packet id of each message the broker acknowledged,
    `refused` (a dict) id -> refusal(reason code, reason) for each it refused. After a
    lost connection `pump` returns False and `error` says why."""

    def __init__(self, sock, v5: bool, keepalive: int, acked: set, refused: dict, refusal=tuple):
        self.sock = sock
        self.v5 = v5
        self.keepalive = keepalive
        self.acked, self.refused, self.refusal = acked, refused, refusal
        self.out = bytearray()
        self.buf = b""
        self.mid = 0
        self.inflight: dict[int, int] = {}  # packet id -> its QoS (3: PUBREL sent, PUBCOMP awaited)
        self.topics: dict[str, bytes] = {}  # topic -> its encoded form (length and UTF-8)
        self.last_out = time.monotonic()
        self.ping_sent: float | None = None
        self.error: IotctlError | None = None
        self.tls = hasattr(sock, "pending")

    # ------------------------------------------------------------------ writing

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool, props: bytes) -> int | None:
        """Buffer one PUBLISH; its packet id for QoS 1/2, else None. `props`: the
        encoded MQTT 5 properties (ignored on MQTT 3)."""
        encoded = self.topics.get(topic)
        if encoded is None:
            encoded = self._topic(topic)
        v5 = self.v5
        size = len(encoded) + len(payload) + (len(props) if v5 else 0) + (2 if qos else 0)
        if size > MAX_PACKET:
            raise BadPublish("Payload too large.")
        out = self.out
        out.append(0x30 | (qos << 1) | retain)
        if size < 128:
            out.append(size)
        else:
            out += remaining_length(size)
        out += encoded
        mid = None
        if qos:
            inflight = self.inflight
            mid = self.mid
            while True:
                mid = mid + 1 if mid < 65535 else 1
                if mid not in inflight:
                    break
            self.mid = mid
            inflight[mid] = qos
            out += mid.to_bytes(2, "big")
        if v5:
            out += props
        out += payload
        if len(out) >= LIMIT:
            self.flush()
        return mid

    def _topic(self, topic: str) -> bytes:
        data = topic.encode("utf-8")
        if not data and not self.v5:
            raise BadPublish("Invalid topic.")
        if b"+" in data or b"#" in data:
            raise BadPublish("Publish topic cannot contain wildcards.")
        if len(data) > 65535:
            raise BadPublish("Publish topic is too long.")
        if len(self.topics) >= _TOPICS_KEPT:
            self.topics.clear()
        encoded = self.topics[topic] = len(data).to_bytes(2, "big") + data
        return encoded

    def busy(self) -> bool:
        """True while the caller must wait (pump) before sending more: a full buffer
        the socket did not take, or a connection found gone (pump then says why)."""
        return len(self.out) >= LIMIT or self.error is not None

    def flush(self) -> None:
        """Send what is buffered, as far as the socket takes it now. A failing socket
        is remembered (`error`): the next pump reads what the broker said before it
        went (a refusal, a DISCONNECT) and then reports the loss."""
        out = self.out
        send = self.sock.send
        while out:
            try:
                n = send(out)
            except _AGAIN:
                return
            except OSError as exc:
                self._gone(f"connection lost ({exc.strerror or exc})")
                out.clear()
                return
            if not n:
                return
            del out[:n]
            self.last_out = time.monotonic()

    def drain(self, timeout: float) -> None:
        """Everything buffered sent, waiting for the socket up to `timeout` (before
        the session's close)."""
        deadline = time.monotonic() + timeout
        while self.out and self.error is None:
            self.flush()
            left = deadline - time.monotonic()
            if not self.out or left <= 0:
                return
            try:
                select.select([], [self.sock], [], left)
            except (OSError, ValueError):
                return

    def _gone(self, why: str) -> None:
        if self.error is None:
            self.error = ConnectionLost("publish", why)

    # ------------------------------------------------------------------ reading

    def pump(self, wait: float) -> bool:
        """Write what is buffered, wait up to `wait` for the socket, read and settle
        what came. False once the connection is gone (`error` says why)."""
        if self.out:
            self.flush()
        if self.error is not None:
            self._read_rest()
            return False
        sock = self.sock
        if not (self.tls and sock.pending()):
            if self.keepalive:
                wait = max(0.0, min(wait, self._next_ping() - time.monotonic()))
            try:
                readable, writable, _ = select.select([sock], [sock] if self.out else [], [], max(0.0, wait))
            except (OSError, ValueError):
                self._gone("connection lost")
                return False
            if writable:
                self.flush()
            if not readable:
                return self._upkeep()
        try:
            data = sock.recv(RECV)
        except _AGAIN:
            return self._upkeep()
        except OSError as exc:
            self._gone(f"connection lost ({exc.strerror or exc})")
            return False
        if not data:
            self._gone("connection lost (the broker closed it)")
            return False
        self.buf = self.buf + data if self.buf else data
        self._parse()
        if self.error is not None:
            return False
        return self._upkeep()

    def _read_rest(self) -> None:
        """After a failed write: what the broker sent before it closed (its refusal)."""
        try:
            while select.select([self.sock], [], [], 0)[0]:
                data = self.sock.recv(RECV)
                if not data:
                    break
                self.buf += data
                if len(self.buf) > 1 << 20:
                    break
        except (OSError, ValueError):
            pass
        error = self.error
        self.error = None
        self._parse()
        if self.error is None:
            self.error = error

    def _next_ping(self) -> float:
        return self.last_out + self.keepalive * 0.75

    def _upkeep(self) -> bool:
        if self.keepalive:
            now = time.monotonic()
            if self.ping_sent is not None and now - self.ping_sent > self.keepalive * 1.5:
                self._gone("connection lost (no answer to a keep-alive ping)")
                return False
            if self.ping_sent is None and now >= self._next_ping():
                self.out += b"\xc0\x00"
                self.ping_sent = now
        if self.out:
            self.flush()
        return self.error is None

    def _parse(self) -> None:
        buf = self.buf
        n = len(buf)
        pos = 0
        acked, inflight, out = self.acked, self.inflight, self.out
        v5 = self.v5
        while n - pos >= 2:
            first = buf[pos]
            b = buf[pos + 1]
            if b < 128:
                length, start = b, pos + 2
            else:
                found = long_length(buf, pos, n)
                if found is None:
                    self.buf = buf[pos:]
                    return
                if found is BAD_LENGTH:
                    self.error = PeerError("publish", "malformed packet from the broker (remaining length)")
                    return
                length, start = found
            if length > RECV * 4:  # nothing a publisher is sent is this large: a hostile peer
                self.error = PeerError("publish", f"the broker sent a packet of {length:,} bytes to a publisher")
                return
            end = start + length
            if end > n:
                break
            pos = end
            kind = first >> 4
            if kind == 4 or kind == 7:  # PUBACK, PUBCOMP
                if length < 2:
                    self.error = PeerError("publish", "malformed packet from the broker (an acknowledgement)")
                    return
                mid = (buf[start] << 8) | buf[start + 1]
                if inflight.pop(mid, None) is not None:
                    if v5 and length > 2 and buf[start + 2] >= 0x80:
                        self.refused[mid] = self._refusal(kind, buf[start + 2])
                    else:
                        acked.add(mid)
            elif kind == 5:  # PUBREC: release it, or it is refused
                if length < 2:
                    self.error = PeerError("publish", "malformed packet from the broker (PUBREC)")
                    return
                mid = (buf[start] << 8) | buf[start + 1]
                if v5 and length > 2 and buf[start + 2] >= 0x80:
                    if inflight.pop(mid, None) is not None:
                        self.refused[mid] = self._refusal(kind, buf[start + 2])
                else:
                    if mid in inflight:
                        inflight[mid] = 3
                    out += b"\x62\x02" + buf[start:start + 2]  # PUBREL (also for an id we forgot)
            elif kind == 3:  # a PUBLISH to this session (a persistent one that has subscriptions)
                qos = (first >> 1) & 3
                if qos:
                    tlen = (buf[start] << 8) | buf[start + 1]
                    p = start + 2 + tlen
                    out += (b"\x40\x02" if qos == 1 else b"\x50\x02") + buf[p:p + 2]
            elif kind == 6:  # PUBREL of such a QoS 2 PUBLISH
                out += b"\x70\x02" + buf[start:start + 2]
            elif kind == 13:  # PINGRESP
                self.ping_sent = None
            elif kind == 14:  # DISCONNECT from the server (MQTT 5)
                reason = buf[start] if length else 0
                name = DISCONNECT_REASONS.get(reason, f"reason 0x{reason:02x}")
                self.buf = b""
                if reason in (0x87, 0x86):
                    self.error = AuthError("publish", f"broker closed the connection: {name}")
                elif reason:
                    self.error = PeerError("publish", f"broker closed the connection: {name}")
                else:
                    self.error = ConnectionLost("publish", "connection lost (the broker disconnected)")
                return
        self.buf = buf[pos:] if pos < n else b""

    def _refusal(self, kind: int, code: int):
        """A refusing PUBACK/PUBREC/PUBCOMP, named as paho names its reason code."""
        try:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.reasoncodes import ReasonCode

            packet = {4: PacketTypes.PUBACK, 5: PacketTypes.PUBREC, 7: PacketTypes.PUBCOMP}[kind]
            name = str(ReasonCode(packet, identifier=code))
        except Exception:  # a code paho does not know for this packet
            name = "Unspecified error" if code == 0x80 else f"reason 0x{code:02x}"
        return self.refusal((code, name))

"""The MQTT-SN client: one UDP socket to a gateway, driven from our own select loop.

No protocol library: the packets are `codec.py`'s. Every request that expects an
answer (CONNECT, REGISTER, SUBSCRIBE, PUBLISH QoS 1/2, PUBREL, PINGREQ, DISCONNECT)
is sent again every Tretry seconds (`retry_interval`) until it is answered, at most
Nretry times (`retries`), as section 6.13 of the specification says; a PUBLISH sent
again carries the DUP flag. A request sent again goes out twice in a row: one lost
datagram in a regular pattern (a link dropping every n-th datagram) then cannot hit
the same request, or its answer, on every try.

`Publisher` is the send driver's side (a context manager: a window of unacknowledged
message ids), `Subscriber` the receive driver's (subscriptions through the gateway,
acknowledged once written, connected again after a lost gateway).
"""

from __future__ import annotations

import select
import socket
import sys
import time
from collections import deque

from iotctl import receive, send
from iotctl.errors import ConnectError, ConnectionLost, IotctlError, PeerError, TimeoutError_, UsageError
from iotctl.message import Message, foreign
from iotctl.protocols.mqttsn import codec as c
from iotctl.protocols.mqttsn.codec import Packet

# the largest UDP datagram over IPv4 (65,535 less the IP and UDP headers) and IPv6
MAX_DATAGRAM = {socket.AF_INET: 65507, socket.AF_INET6: 65527}
PUBLISH_OVERHEAD = 9  # the 3-octet length form, MsgType, Flags, TopicId, MsgId
# QoS 0 and -1: messages not yet confirmed by a round trip (see Publisher), and how
# long a QoS -1 sender waits for a gateway's answer to its SEARCHGW
UNCONFIRMED_WINDOW = 1024
QOS_M1_GRACE = 0.3


class SnWill:
    def __init__(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False):
        self.topic, self.payload, self.qos, self.retain = topic, payload, qos, retain


class SnConfig:
    def __init__(self, host: str = "127.0.0.1", port: int = 1883, client_id: str | None = None,
                 keepalive: int = 60, clean_session: bool = True, will: SnWill | None = None,
                 retry_interval: float = 2.0, retries: int = 5, window: int = 20, debug: bool = False):
        self.host, self.port, self.client_id, self.keepalive = host, port, client_id, keepalive
        self.clean_session, self.will = clean_session, will
        self.retry_interval, self.retries, self.window, self.debug = retry_interval, retries, window, debug

    @property
    def display(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def trace(direction: str, peer: str, p: Packet, label: str = "mqttsn") -> None:
    """One decoded packet on stderr (-d, gateway -v)."""
    fields = c.describe(p)
    fields.pop("type")
    data = p.fields.get("data", p.fields.get("will_msg"))
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    if data:
        text += f" payload={data[:64]!r}{'...' if len(data) > 64 else ''}"
    sys.stderr.write(f"iotctl: {label}: {direction} {peer} {p.name} {text}\n".replace("  ", " "))
    sys.stderr.flush()


def topic_meta(topic_id: int, topic_id_type: int, qos: int, retain: bool) -> dict:
    return {"qos": qos, "retain": retain, "topic_id": topic_id,
            "topic_id_type": c.TOPIC_ID_TYPES.get(topic_id_type, "reserved")}


def payload_limit(family: int = socket.AF_INET) -> int:
    """The largest payload one PUBLISH datagram carries."""
    return min(c.MAX_PACKET, MAX_DATAGRAM.get(family, 65507)) - PUBLISH_OVERHEAD


class _Outgoing:
    """A request waiting for its answer: sent again every Tretry, at most Nretry times."""

    __slots__ = ("packet", "raw", "due", "tries", "what")

    def __init__(self, packet: Packet, raw: bytes, due: float, what: str):
        self.packet, self.raw, self.due, self.tries, self.what = packet, raw, due, 0, what


class SnClient:
    """One MQTT-SN client connection to a gateway."""

    def __init__(self, cfg: SnConfig):
        import os
        import uuid

        self.cfg = cfg
        self.client_id = cfg.client_id or f"iotctl-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.peer = cfg.display
        self.connected = False
        self.names: dict[int, str] = {}  # topic id -> name (REGACK, SUBACK, the gateway's REGISTER)
        self.ids: dict[str, int] = {}  # name -> topic id
        self._msg_id = 0
        self._pending: dict[tuple, _Outgoing] = {}  # (answer type, msg id) -> request
        self._replies: dict[tuple, Packet] = {}
        self.acked: set = set()
        self.refused: dict = {}
        # refusals of QoS 0/-1 PUBLISHes (msg id 0): (topic id type, topic id, reason), in order
        self.refused_unnumbered: deque = deque()
        self.inbox: list[Message] = []
        self._delivered: set[int] = set()  # QoS 1/2 msg ids handed out, not yet acknowledged
        self._q2_done: set[int] = set()  # QoS 2 msg ids answered with PUBREC, waiting for PUBREL
        self._last_sent = time.monotonic()
        self._ping: _Outgoing | None = None
        self.disconnected_by_gateway = False
        self.pingresp = False
        self.pingresps = 0  # PINGRESPs received (a round trip's end)
        self.gwinfos = 0  # GWINFOs received (the QoS -1 round trip's end)
        self.asleep = False
        try:
            infos = socket.getaddrinfo(cfg.host, cfg.port, 0, socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            raise ConnectError(f"cannot reach gateway {self.peer}", f"cannot resolve host: {exc.strerror}") from None
        family, _, _, _, addr = infos[0]
        self.family = family
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.connect(addr)
        except OSError as exc:
            self.sock.close()
            raise ConnectError(f"cannot reach gateway {self.peer}", exc.strerror or str(exc)) from None
        self.sock.setblocking(False)
        try:  # a burst from the gateway (QoS 0 has no window) waits here while the output is written
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        except OSError:
            pass

    # ------------------------------------------------------------------ I/O

    def next_msg_id(self) -> int:
        self._msg_id = self._msg_id % 0xFFFF + 1
        return self._msg_id

    def send(self, p: Packet, raw: bytes | None = None) -> None:
        if raw is None:
            raw = c.encode(p)
        if self.cfg.debug:
            trace("->", self.peer, p)
        try:
            self.sock.send(raw)
        except (BlockingIOError, InterruptedError):
            select.select([], [self.sock], [], 1.0)
            self._send_raw(raw)
        except ConnectionRefusedError:
            raise self._refused() from None
        except OSError as exc:
            raise ConnectError(f"cannot send to gateway {self.peer}", exc.strerror or str(exc)) from None
        self._last_sent = time.monotonic()

    def _send_raw(self, raw: bytes) -> None:
        try:
            self.sock.send(raw)
        except ConnectionRefusedError:
            raise self._refused() from None
        except OSError as exc:
            raise ConnectError(f"cannot send to gateway {self.peer}", exc.strerror or str(exc)) from None

    def _refused(self) -> IotctlError:
        return ConnectError(f"cannot reach gateway {self.peer}", "port unreachable (nothing listens there)",
                            hint="start one: iotctl mqttsn gateway --broker mqtt://127.0.0.1")

    def request(self, p: Packet, answer: int, msg_id: int = 0, what: str | None = None) -> None:
        """Send `p` and keep sending it until the answer (type, msg id) comes; see `wait`."""
        raw = c.encode(p)
        self._pending[(answer, msg_id)] = _Outgoing(p, raw, time.monotonic() + self.cfg.retry_interval,
                                                    what or p.name)
        self.send(p, raw)

    def wait(self, answer: int, msg_id: int = 0) -> Packet:
        key = (answer, msg_id)
        while key not in self._replies:
            if key not in self._pending:
                raise IotctlError(f"waiting for {c.NAMES[answer]}", "no request is waiting for it")
            self.pump(self.cfg.retry_interval)
        return self._replies.pop(key)

    def transact(self, p: Packet, answer: int, msg_id: int = 0) -> Packet:
        self.request(p, answer, msg_id)
        return self.wait(answer, msg_id)

    def pump(self, wait: float) -> None:
        """Wait up to `wait` s for datagrams, handle them, send again what is overdue,
        ping when keepalive says so."""
        now = time.monotonic()
        due = now + max(0.0, wait)
        for out in self._pending.values():
            due = min(due, out.due)
        pinging = self.connected and not self.asleep and self.cfg.keepalive
        if pinging:
            due = min(due, self._last_sent + self.cfg.keepalive)
        timeout = max(0.0, due - now)
        try:
            r, _, _ = select.select([self.sock], [], [], timeout)
        except InterruptedError:
            r = []
        if r:
            self._read_all()
        self._retransmit()
        if pinging and self._ping is None \
                and time.monotonic() - self._last_sent >= self.cfg.keepalive:
            self.ping()

    def ping(self) -> None:
        """PINGREQ (answered by PINGRESP: `pingresps` counts them)."""
        self.request(Packet(c.PINGREQ), c.PINGRESP)
        self._ping = self._pending[(c.PINGRESP, 0)]

    def _read_all(self) -> None:
        sock = self.sock
        for _ in range(1000):
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                raise self._refused() from None
            except OSError as exc:
                raise ConnectError(f"cannot read from gateway {self.peer}", exc.strerror or str(exc)) from None
            try:
                p = c.decode(data)
            except c.CodecError as exc:
                from iotctl.settings import warn

                warn(f"ignored a bad datagram from {self.peer}: {exc}")
                continue
            if self.cfg.debug:
                trace("<-", self.peer, p)
            self._handle(p)

    def _retransmit(self) -> None:
        now = time.monotonic()
        for key, out in list(self._pending.items()):
            if out.due > now:
                continue
            if out.tries >= self.cfg.retries:
                del self._pending[key]
                if key == (c.PINGRESP, 0):
                    self._ping = None
                raise TimeoutError_(
                    f"no {c.NAMES[key[0]]} from the gateway {self.peer}",
                    f"{out.what} sent {out.tries + 1} times, {self.cfg.retry_interval:g} s apart",
                    hint="is an MQTT-SN gateway listening there (iotctl mqttsn gateway)?")
            out.tries += 1
            out.due = now + self.cfg.retry_interval
            p = out.packet
            if p.type in (c.PUBLISH, c.SUBSCRIBE) and not p.fields.get("dup"):
                p.fields["dup"] = True
                out.raw = c.encode(p)
            # twice: a link that loses every n-th datagram cannot take the same one each time
            self.send(p, out.raw)
            self.send(p, out.raw)

    # ------------------------------------------------------------------ what the gateway sends

    def _handle(self, p: Packet) -> None:
        t = p.type
        if t == c.PUBLISH:
            self._on_publish(p)
        elif t in (c.PUBACK, c.PUBCOMP):
            self._on_ack(p)
        elif t == c.PUBREC:
            if self._pending.pop((c.PUBREC, p.msg_id), None) is not None or (c.PUBCOMP, p.msg_id) in self._pending:
                self.request(Packet(c.PUBREL, msg_id=p.msg_id), c.PUBCOMP, p.msg_id)
        elif t == c.PUBREL:
            self._q2_done.discard(p.msg_id)
            self.send(Packet(c.PUBCOMP, msg_id=p.msg_id))
        elif t == c.REGISTER:
            self.names[p.topic_id] = p.topic_name
            self.ids.setdefault(p.topic_name, p.topic_id)
            self.send(Packet(c.REGACK, topic_id=p.topic_id, msg_id=p.msg_id, return_code=c.ACCEPTED))
        elif t == c.PINGRESP:
            self._pending.pop((c.PINGRESP, 0), None)
            self._ping = None
            self.pingresp = True
            self.pingresps += 1
        elif t == c.GWINFO:
            self.gwinfos += 1
        elif t == c.DISCONNECT:
            if self._pending.pop((c.DISCONNECT, 0), None) is not None:
                self._replies[(c.DISCONNECT, 0)] = p
            else:
                self.disconnected_by_gateway = True
                self.connected = False
        elif t == c.PINGREQ:
            self.send(Packet(c.PINGRESP))
        else:
            msg_id = p.fields.get("msg_id", 0) if t in (c.REGACK, c.SUBACK, c.UNSUBACK) else 0
            if self._pending.pop((t, msg_id), None) is not None:
                self._replies[(t, msg_id)] = p

    def _on_ack(self, p: Packet) -> None:
        """PUBACK or PUBCOMP for one of our PUBLISHes. A PUBACK with a return code
        other than 'accepted' is a refusal, for any QoS (the specification's PUBACK
        "in case of an error"): for QoS 1 and 2 it names the message id; for QoS 0
        and -1 the id is 0 and the refusal is matched by the publisher."""
        t, msg_id = p.type, p.msg_id
        if t == c.PUBACK and p.return_code != c.ACCEPTED:
            reason = c.RETURN_CODES.get(p.return_code, f"return code {p.return_code}")
            out = self._pending.pop((c.PUBACK, msg_id), None) or self._pending.pop((c.PUBREC, msg_id), None)
            if out is None:
                if msg_id == 0:
                    self.refused_unnumbered.append((p.topic_id, reason))
                return
            self.refused[msg_id] = reason
            if p.return_code == c.INVALID_TOPIC_ID and out.packet.topic_id_type == c.NORMAL:
                # the gateway forgot the id: register the name again for what comes next
                self.ids.pop(self.names.get(out.packet.topic_id, ""), None)
            return
        if self._pending.pop((t, msg_id), None) is not None:
            self.acked.add(msg_id)

    def _on_publish(self, p: Packet) -> None:
        qos, tid, tt = p.qos, p.topic_id, p.topic_id_type
        if tt == c.SHORT:
            name = c.short_name(tid)
        elif tt == c.PREDEFINED:
            name = self.names.get(tid, str(tid))
        else:
            name = self.names.get(tid)
            if name is None:
                if qos > 0:  # the gateway registers it (REGISTER) and sends it again
                    self.send(Packet(c.PUBACK, topic_id=tid, msg_id=p.msg_id, return_code=c.INVALID_TOPIC_ID))
                else:
                    from iotctl.settings import warn

                    warn(f"a QoS {qos} PUBLISH from {self.peer} names topic id {tid}, which was never "
                         "registered: it is lost")
                return
        msg_id = p.msg_id
        if qos in (1, 2):
            if msg_id in self._delivered:
                return  # a duplicate of one being written: its acknowledgement follows
            if qos == 2 and msg_id in self._q2_done:  # received before: answered again, not shown again
                self.send(Packet(c.PUBREC, msg_id=msg_id))
                return
            self._delivered.add(msg_id)
            msg = Message("mqttsn", name, p.data, None, topic_meta(tid, tt, qos, p.retain),
                          token=(self, c.PUBACK if qos == 1 else c.PUBREC, tid, msg_id))
        else:
            msg = Message("mqttsn", name, p.data, None, topic_meta(tid, tt, qos, p.retain))
        self.inbox.append(msg)

    def ack(self, msg: Message) -> None:
        """Acknowledge a QoS 1/2 message once it has been written out (its token); a
        message of another connection (before a reconnect) is not this one's."""
        token = msg.token
        if token is None or token[0] is not self:
            return
        msg.token = None
        _, kind, tid, msg_id = token
        self._delivered.discard(msg_id)
        if kind == c.PUBACK:
            self.send(Packet(c.PUBACK, topic_id=tid, msg_id=msg_id, return_code=c.ACCEPTED))
        else:
            self._q2_done.add(msg_id)
            self.send(Packet(c.PUBREC, msg_id=msg_id))

    def take(self) -> list[Message]:
        inbox = self.inbox
        self.inbox = []
        return inbox

    # ------------------------------------------------------------------ the session

    def connect(self) -> None:
        cfg = self.cfg
        will = cfg.will
        p = Packet(c.CONNECT, will=will is not None, clean_session=cfg.clean_session, protocol_id=c.PROTOCOL_ID,
                   duration=cfg.keepalive, client_id=self.client_id)
        what = f"cannot connect to gateway {self.peer}"
        if len(self.client_id.encode()) > 23:
            from iotctl.settings import warn

            warn(f"client id {self.client_id!r} is longer than the 23 octets MQTT-SN v1.2 allows")
        if will is None:
            connack = self.transact(p, c.CONNACK)
        else:
            self.transact(p, c.WILLTOPICREQ)
            self.transact(Packet(c.WILLTOPIC, qos=will.qos, retain=will.retain, will_topic=will.topic), c.WILLMSGREQ)
            connack = self.transact(Packet(c.WILLMSG, will_msg=will.payload), c.CONNACK)
        if connack.return_code != c.ACCEPTED:
            raise PeerError(what, f"the gateway answered {c.RETURN_CODES.get(connack.return_code, connack.return_code)}")
        self.connected = True

    def topic_id(self, name: str) -> tuple[int, int]:
        """(topic id type, topic id) for a topic name: a two-character name is a short
        topic; any other is registered once (REGISTER) and its id reused."""
        if len(name.encode("utf-8")) == 2:
            return c.SHORT, c.short_id(name)
        tid = self.ids.get(name)
        if tid is None:
            msg_id = self.next_msg_id()
            regack = self.transact(Packet(c.REGISTER, topic_id=0, msg_id=msg_id, topic_name=name), c.REGACK, msg_id)
            if regack.return_code != c.ACCEPTED:
                raise PeerError(f"cannot register topic {name!r}",
                                f"the gateway answered {c.RETURN_CODES.get(regack.return_code, regack.return_code)}")
            tid = regack.topic_id
            self.ids[name] = tid
            self.names[tid] = name
        return c.NORMAL, tid

    def subscribe(self, name: str | None, predefined: int | None, qos: int) -> None:
        msg_id = self.next_msg_id()
        if predefined is not None:
            p = Packet(c.SUBSCRIBE, qos=qos, msg_id=msg_id, topic_id_type=c.PREDEFINED, topic_id=predefined)
            shown = f"topic id {predefined}"
        elif len(name.encode("utf-8")) == 2 and "+" not in name and "#" not in name:
            p = Packet(c.SUBSCRIBE, qos=qos, msg_id=msg_id, topic_id_type=c.SHORT, topic_id=c.short_id(name))
            shown = repr(name)
        else:
            p = Packet(c.SUBSCRIBE, qos=qos, msg_id=msg_id, topic_id_type=c.NORMAL, topic_name=name)
            shown = repr(name)
        suback = self.transact(p, c.SUBACK, msg_id)
        if suback.return_code != c.ACCEPTED:
            raise PeerError(f"cannot subscribe to {shown}",
                            f"the gateway answered {c.RETURN_CODES.get(suback.return_code, suback.return_code)}")
        if name is not None and suback.topic_id and p.topic_id_type == c.NORMAL:
            self.names[suback.topic_id] = name
            self.ids[name] = suback.topic_id

    def publish(self, topic_id_type: int, topic_id: int, data: bytes, qos: int, retain: bool) -> int | None:
        """Send one PUBLISH; returns its msg id for QoS 1/2 (in `acked` once complete)."""
        msg_id = self.next_msg_id() if qos in (1, 2) else 0
        p = Packet(c.PUBLISH, qos=qos, retain=retain, topic_id_type=topic_id_type, topic_id=topic_id,
                   msg_id=msg_id, data=data)
        if qos in (1, 2):
            self.request(p, c.PUBACK if qos == 1 else c.PUBREC, msg_id, "PUBLISH")
            return msg_id
        self.send(p)
        return None

    def sleep(self, duration: int) -> None:
        """DISCONNECT with a duration: the gateway buffers for us until we wake up."""
        self.request(Packet(c.DISCONNECT, duration=duration), c.DISCONNECT)
        self.wait(c.DISCONNECT)
        self.asleep = True

    def wake(self) -> None:
        """A sleeping client's wake-up: PINGREQ with its client id; the gateway sends
        what it buffered, then PINGRESP (`pingresp` becomes True)."""
        self.pingresp = False
        self.request(Packet(c.PINGREQ, client_id=self.client_id), c.PINGRESP)
        self._ping = self._pending[(c.PINGRESP, 0)]

    def disconnect(self) -> None:
        """DISCONNECT, waiting one retry interval at most for the gateway's answer."""
        if not self.connected:
            return
        self.connected = False
        try:
            self.send(Packet(c.DISCONNECT))
            end = time.monotonic() + min(self.cfg.retry_interval, 1.0)
            self._pending.clear()
            self._pending[(c.DISCONNECT, 0)] = _Outgoing(Packet(c.DISCONNECT), b"", end + 3600, "DISCONNECT")
            while (c.DISCONNECT, 0) not in self._replies and time.monotonic() < end:
                self.pump(end - time.monotonic())
        except IotctlError:
            pass

    def close(self) -> None:
        try:
            self.disconnect()
        finally:
            self.sock.close()

    def abort(self) -> None:
        """Close the socket without DISCONNECT (the connection is already gone)."""
        self.connected = False
        self.sock.close()


# --------------------------------------------------------------------------- publishing


class Publisher(send.Sender):
    """The send driver's MQTT-SN side, a context manager: entered, it connects (at
    QoS -1 nothing connects); left, it goes to sleep (--sleep) or disconnects.

    QoS 1/2: a window of unacknowledged message ids; a lost PUBLISH (or PUBREL) is
    sent again by the client's retransmission. QoS 0 and -1 have no acknowledgement,
    but a gateway refuses what it cannot forward (a PUBACK with a return code), and
    a gateway that is not there answers with ICMP port unreachable: each message waits
    for a round trip that follows it (PINGREQ, or SEARCHGW at QoS -1, every
    UNCONFIRMED_WINDOW / 2 messages and at the end) and counts as acknowledged once
    that round trip is complete and nothing refused it. At QoS -1 a gateway that does
    not answer SEARCHGW is waited for QOS_M1_GRACE seconds, then taken as accepting.

    What crosses from another protocol: MQTT-SN carries nothing but the payload and
    the topic, so a foreign message's content type, headers, correlation id and
    reply-to are dropped (`_target` is the one place a message is adopted)."""

    protocol = "mqttsn"

    def __init__(self, cfg: SnConfig, qos: int = 0, retain: bool = False, topic: str | None = None,
                 predefined: int | None = None, sleep: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.qos, self.retain, self.sleep = qos, retain, sleep
        self.topic, self.predefined = topic, predefined
        self.address = topic  # where a message without an address of its own goes
        self.window = cfg.window if qos in (1, 2) else UNCONFIRMED_WINDOW
        self.client: SnClient | None = None
        self._resolved: dict[str, tuple[int, int]] = {}
        self._limit = payload_limit()
        # QoS 0/-1: (sequence number, topic id type, topic id) not yet confirmed
        self._seq = 0
        self._unconfirmed: deque = deque()
        self._barrier: tuple | None = None  # (last sequence number before it, answers before it, deadline)

    @property
    def where(self) -> str:
        return f"gateway {self.cfg.display}"

    def __exit__(self, exc_type, *rest) -> None:
        self.close(clean=exc_type is None)

    def open(self) -> None:
        client = SnClient(self.cfg)
        client.acked, client.refused = self.acked, self.refused
        try:
            if self.qos >= 0:
                client.connect()
        except BaseException:
            client.abort()
            raise
        self.client = client
        self._limit = payload_limit(client.family)
        if self.predefined is not None:
            self._fixed = (c.PREDEFINED, self.predefined)
        else:
            self._fixed = None

    def close(self, clean: bool = False) -> None:
        client = self.client
        if client is None:
            return
        self.client = None
        try:
            if self.sleep and self.qos >= 0 and client.connected:
                try:
                    client.sleep(self.sleep)
                    client.connected = False
                except IotctlError:
                    if clean:
                        raise
        finally:
            client.close()

    # ------------------------------------------------------------------ the one place a message is adopted

    def _target(self, msg: Message) -> tuple[int, int]:
        """(topic id type, topic id) for a message: -T; else its own address, or -t (the
        URL's topic) when it has none. A native message keeps its kind of topic (a
        captured predefined id stays one). From another protocol only the payload and
        the address cross: MQTT-SN has no content type, user properties, correlation id
        or reply-to, so `message.foreign`'s portable fields are dropped."""
        fixed = self._fixed
        if fixed is not None:
            return fixed
        address = msg.address or self.address
        if msg.protocol and foreign(msg, "mqttsn") is None:  # native: a captured predefined id is one again
            kind = msg.meta.get("topic_id_type") if isinstance(msg.meta, dict) else None
            if kind == "predefined" and address and address.isdigit() and 0 < int(address) < 0xFFFF:
                return c.PREDEFINED, int(address)
        resolved = self._resolved.get(address)
        if resolved is None:
            from iotctl.topics import validate_topic

            if not address:
                raise UsageError("no topic", "give -t TOPIC or -T ID (in a URL: mqttsn://host:port/TOPIC)")
            validate_topic(address)
            resolved = self._resolved[address] = self._resolve(address)
        return resolved

    def _resolve(self, name: str) -> tuple[int, int]:
        if self.qos == -1 and len(name.encode("utf-8")) != 2:
            raise UsageError(f"cannot publish to {name!r} at QoS -1",
                             "without a connection only a predefined id (-T) or a two-character "
                             "short topic can be used")
        return self.client.topic_id(name)

    # ------------------------------------------------------------------ the Sender contract

    def send(self, msg: Message):
        data = msg.payload
        if len(data) > self._limit:
            raise UsageError(f"cannot publish a payload of {len(data)} bytes",
                             f"one MQTT-SN datagram carries at most {self._limit} bytes of payload")
        tt, tid = self._target(msg)
        qos = self.qos
        try:
            if qos > 0:
                return self.client.publish(tt, tid, data, qos, self.retain)
            self.client.publish(tt, tid, data, qos, self.retain)
        except ConnectionLost:
            raise
        except ConnectError as exc:
            if self.client.connected:
                raise ConnectionLost(exc.what, exc.why, exc.hint) from None
            raise
        self._seq += 1
        self._unconfirmed.append((self._seq, tt, tid))
        if self._barrier is None and len(self._unconfirmed) >= UNCONFIRMED_WINDOW // 2:
            self._send_barrier()
        return self._seq

    def pump(self, wait: float) -> None:
        client = self.client
        try:
            if self.qos > 0:
                client.pump(wait)
            else:
                if self._unconfirmed and self._barrier is None:
                    self._send_barrier()
                if self._barrier is not None:
                    wait = min(wait, max(0.0, self._barrier[2] - time.monotonic()))
                client.pump(wait)
                self._settle_unconfirmed()
        except ConnectionLost:
            raise
        except ConnectError as exc:
            if client.connected:  # it was up (a bridge connects again and sends what was in flight)
                raise ConnectionLost(exc.what, exc.why, exc.hint) from None
            raise
        if client.disconnected_by_gateway:
            raise ConnectionLost(f"gateway {client.peer}", "the gateway ended the session (DISCONNECT)")

    def _send_barrier(self) -> None:
        """A round trip after the messages sent so far: PINGRESP (connected) or GWINFO
        (QoS -1) comes after the gateway handled them, refusals first."""
        client = self.client
        if self.qos == -1:
            before = client.gwinfos
            client.send(Packet(c.SEARCHGW, radius=0))
            deadline = time.monotonic() + QOS_M1_GRACE
        else:
            before = client.pingresps
            client.ping()
            deadline = float("inf")
        self._barrier = (self._seq, before, deadline)

    def _settle_unconfirmed(self) -> None:
        client, pending = self.client, self._unconfirmed
        while client.refused_unnumbered:
            tid, reason = client.refused_unnumbered.popleft()
            for i, (seq, _, t) in enumerate(pending):
                if t == tid:
                    del pending[i]
                    self.refused[seq] = reason
                    break
        barrier = self._barrier
        if barrier is None:
            return
        last, before, deadline = barrier
        answered = client.gwinfos if self.qos == -1 else client.pingresps
        if answered > before or time.monotonic() >= deadline:
            self._barrier = None
            acked = self.acked
            while pending and pending[0][0] <= last:
                acked.add(pending.popleft()[0])

    def refusal(self, refused: dict) -> IotctlError:
        reasons = sorted(set(refused.values()))
        return PeerError("publish", f"the gateway refused {len(refused)} message(s): {'; '.join(reasons)}")


# --------------------------------------------------------------------------- receiving


class Subscriber(receive.Receiver):
    """Subscriptions through a gateway as a source: entered, it connects and
    subscribes (and with `sleep` goes to sleep: DISCONNECT with that duration, then a
    wake-up with PINGREQ every `sleep` seconds collects what the gateway buffered).
    QoS 1/2 messages are acknowledged (PUBACK, PUBREC) exactly when the driver says
    they were written. After a lost gateway (its DISCONNECT, port unreachable, no
    answer to the keepalive) it connects again and subscribes again."""

    can_reconnect = True

    def __init__(self, cfg: SnConfig, topics: tuple[str, ...] = (), predefined: tuple[int, ...] = (),
                 qos: int = 0, sleep: int | None = None):
        self.cfg, self.topics, self.predefined, self.qos, self.sleep = cfg, topics, predefined, qos, sleep
        self.client: SnClient | None = None
        self.wake_at = None
        self._lost: ConnectionLost | None = None
        self._client_id: str | None = None
        # a message not acknowledged comes again only from a persistent session
        self.delivery = "at-least-once" if (qos > 0 and not cfg.clean_session) else "at-most-once"

    @property
    def where(self) -> str:
        return f"gateway {self.cfg.display}"

    @property
    def shown(self) -> list[str]:
        return [*self.topics, *(f"topic id {t}" for t in self.predefined)]

    def open(self) -> None:
        client = SnClient(self.cfg)
        if self._client_id is None:
            self._client_id = client.client_id
        client.client_id = self._client_id  # the same after a reconnect: the gateway replaces the old session
        try:
            client.connect()
            for t in self.topics:
                client.subscribe(t, None, self.qos)
            for tid in self.predefined:
                client.subscribe(None, tid, self.qos)
            if self.sleep:
                client.sleep(self.sleep)
                self.wake_at = time.monotonic() + self.sleep
        except BaseException:
            client.close()
            raise
        self.client = client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def reconnect(self) -> None:
        self._lost = None
        old, self.client = self.client, None
        if old is not None:
            old.abort()
        self.open()

    def poll(self, wait):
        client = self.client
        if self._lost is not None:
            lost, self._lost = self._lost, None
            raise lost
        wait = 1.0 if wait is None else min(wait, 1.0)
        try:
            if self.sleep:
                now = time.monotonic()
                if self.wake_at is not None:
                    if now < self.wake_at:
                        time.sleep(min(wait, self.wake_at - now))
                        return []
                    self.wake_at = None
                    client.wake()
                client.pump(wait)
                if client.pingresp:  # everything buffered has come: back to sleep
                    client.pingresp = False
                    self.wake_at = time.monotonic() + self.sleep
                return client.take()
            client.pump(wait)
        except (ConnectError, TimeoutError_) as exc:
            return self._gone(ConnectionLost(exc.what, exc.why))
        if client.disconnected_by_gateway:
            return self._gone(ConnectionLost(f"gateway {client.peer}", "the gateway ended the session (DISCONNECT)"))
        return client.take()

    def _gone(self, lost: ConnectionLost) -> list[Message]:
        """The connection is gone: what came before is shown first, then the loss."""
        batch = self.client.take()
        if not batch:
            raise lost
        self._lost = lost
        return batch

    def ack(self, messages) -> None:
        ack = self.client.ack
        try:
            for msg in messages:
                ack(msg)
        except ConnectError as exc:  # the gateway is gone: the next poll says so
            if self._lost is None:
                self._lost = ConnectionLost(exc.what, exc.why)

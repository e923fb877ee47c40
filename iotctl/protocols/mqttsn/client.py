"""The MQTT-SN client: one UDP socket to a gateway, driven from our own select loop.

No protocol library: the packets are `codec.py`'s. Every request that expects an
answer (CONNECT, REGISTER, SUBSCRIBE, PUBLISH QoS 1/2, PUBREL, PINGREQ, DISCONNECT)
is sent again every Tretry seconds (`retry_interval`) until it is answered, at most
Nretry times (`retries`), as section 6.13 of the specification says; a PUBLISH sent
again carries the DUP flag. `Publisher` is the send driver's side (a window of
unacknowledged message ids), `Receiver` the receive driver's.
"""

from __future__ import annotations

import select
import socket
import sys
import time

from iotctl import receive, send
from iotctl.errors import ConnectError, IotctlError, PeerError, TimeoutError_, UsageError
from iotctl.message import Message
from iotctl.protocols.mqttsn import codec as c
from iotctl.protocols.mqttsn.codec import Packet


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
        return f"{self.host}:{self.port}"


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
        self.inbox: list[Message] = []
        self._unacked: dict[int, tuple[int, int, int]] = {}  # id(msg) -> (type, topic_id, msg_id)
        self._q2_seen: set[int] = set()
        self._last_sent = time.monotonic()
        self._ping: _Outgoing | None = None
        self.disconnected_by_gateway = False
        self.pingresp = False
        self.asleep = False
        try:
            infos = socket.getaddrinfo(cfg.host, cfg.port, 0, socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            raise ConnectError(f"cannot reach gateway {self.peer}", f"cannot resolve host: {exc.strerror}") from None
        family, _, _, _, addr = infos[0]
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.connect(addr)
        except OSError as exc:
            self.sock.close()
            raise ConnectError(f"cannot reach gateway {self.peer}", exc.strerror or str(exc)) from None
        self.sock.setblocking(False)

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
            self.send(p, out.raw)

    # ------------------------------------------------------------------ what the gateway sends

    def _handle(self, p: Packet) -> None:
        t = p.type
        if t == c.PUBLISH:
            self._on_publish(p)
        elif t in (c.PUBACK, c.PUBCOMP):
            out = self._pending.pop((t, p.msg_id), None)
            if out is None:
                return
            if t == c.PUBACK and p.return_code != c.ACCEPTED:
                self.refused[p.msg_id] = c.RETURN_CODES.get(p.return_code, f"return code {p.return_code}")
                if p.return_code == c.INVALID_TOPIC_ID:  # the gateway forgot the id: register again
                    self.ids.pop(self.names.get(out.packet.topic_id, ""), None)
            else:
                self.acked.add(p.msg_id)
        elif t == c.PUBREC:
            if self._pending.pop((c.PUBREC, p.msg_id), None) is not None or (c.PUBCOMP, p.msg_id) in self._pending:
                self.request(Packet(c.PUBREL, msg_id=p.msg_id), c.PUBCOMP, p.msg_id)
        elif t == c.PUBREL:
            self._q2_seen.discard(p.msg_id)
            self.send(Packet(c.PUBCOMP, msg_id=p.msg_id))
        elif t == c.REGISTER:
            self.names[p.topic_id] = p.topic_name
            self.ids.setdefault(p.topic_name, p.topic_id)
            self.send(Packet(c.REGACK, topic_id=p.topic_id, msg_id=p.msg_id, return_code=c.ACCEPTED))
        elif t == c.PINGRESP:
            self._pending.pop((c.PINGRESP, 0), None)
            self._ping = None
            self.pingresp = True
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

    def _on_publish(self, p: Packet) -> None:
        qos, tid, tt = p.qos, p.topic_id, p.topic_id_type
        if tt == c.SHORT:
            name = c.short_name(tid)
        elif tt == c.PREDEFINED:
            name = self.names.get(tid, str(tid))
        else:
            name = self.names.get(tid)
            if name is None:
                from iotctl.settings import warn

                warn(f"a PUBLISH from {self.peer} names topic id {tid}, which was never registered")
                if qos > 0:
                    self.send(Packet(c.PUBACK, topic_id=tid, msg_id=p.msg_id, return_code=c.INVALID_TOPIC_ID))
                return
        if qos == 2:
            if p.msg_id in self._q2_seen:  # a duplicate: answered again, not shown again
                self.send(Packet(c.PUBREC, msg_id=p.msg_id))
                return
            self._q2_seen.add(p.msg_id)
        msg = Message("mqttsn", name, p.data, None, topic_meta(tid, tt, qos, p.retain))
        self.inbox.append(msg)
        if qos in (1, 2):
            self._unacked[id(msg)] = (c.PUBACK if qos == 1 else c.PUBREC, tid, p.msg_id)

    def ack(self, msg: Message) -> None:
        """Acknowledge a QoS 1/2 message once it has been written out."""
        entry = self._unacked.pop(id(msg), None)
        if entry is None:
            return
        t, tid, msg_id = entry
        if t == c.PUBACK:
            self.send(Packet(c.PUBACK, topic_id=tid, msg_id=msg_id, return_code=c.ACCEPTED))
        else:
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


class Publisher(send.Sender):
    """The send driver's MQTT-SN side: a window of unacknowledged QoS 1/2 message ids;
    a lost PUBLISH (or PUBREL) is sent again by the client's retransmission."""

    def __init__(self, client: SnClient, qos: int, retain: bool, predefined: int | None = None):
        self.client = client
        self.qos, self.retain, self.predefined = qos, retain, predefined
        self.window = client.cfg.window if qos in (1, 2) else None
        self.acked = client.acked
        self.refused = client.refused
        self._resolved: dict[str, tuple[int, int]] = {}

    def send(self, out):
        if self.predefined is not None:
            tt, tid = c.PREDEFINED, self.predefined
        else:
            key = out.address
            resolved = self._resolved.get(key)
            if resolved is None:
                if self.qos == -1 and len(key.encode("utf-8")) != 2:
                    raise UsageError(f"cannot publish to {key!r} at QoS -1",
                                     "without a connection only a predefined id (-T) or a two-character "
                                     "short topic can be used")
                resolved = self._resolved[key] = self.client.topic_id(key)
            tt, tid = resolved
        return self.client.publish(tt, tid, out.payload, self.qos, self.retain)

    def pump(self, wait: float) -> None:
        self.client.pump(wait)
        if self.client.disconnected_by_gateway:
            raise ConnectError(f"gateway {self.client.peer}", "the gateway ended the session (DISCONNECT)")

    def refusal(self, refused: dict) -> IotctlError:
        reasons = sorted(set(refused.values()))
        return PeerError("publish", f"the gateway refused {len(refused)} message(s): {'; '.join(reasons)}")


class Receiver(receive.Receiver):
    """The receive driver's side: PUBLISHes from the gateway, acknowledged once written.
    With `sleep`, the client sleeps (DISCONNECT with that duration) and wakes every
    `sleep` seconds with a PINGREQ to collect what the gateway buffered."""

    def __init__(self, client: SnClient, sleep: int | None = None):
        self.client, self.sleep = client, sleep
        self.wake_at = None
        if sleep:
            client.sleep(sleep)
            self.wake_at = time.monotonic() + sleep

    def poll(self, wait):
        client = self.client
        wait = 1.0 if wait is None else min(wait, 1.0)
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
        if client.disconnected_by_gateway:
            batch = client.take()
            if batch:
                return batch
            raise ConnectError(f"gateway {client.peer}", "the gateway ended the session (DISCONNECT)")
        return client.take()

    def ack(self, batch) -> None:
        ack = self.client.ack
        for msg in batch:
            ack(msg)

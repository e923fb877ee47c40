"""A transparent MQTT-SN gateway: one MQTT connection per MQTT-SN client.

One thread, one select loop over the UDP socket and every broker connection's socket
(the MQTT group's `client.Session`, driven with `fileno`/`step`). Towards the
clients it keeps the specification's rules: topic ids (registered, predefined,
short), REGISTER before the first PUBLISH of a topic a wildcard subscription
brought, QoS -1..2 with retransmission (Tretry/Nretry), wills, sleeping clients whose
messages are buffered until they wake (PINGREQ with their client id), keepalive
supervision (a client silent for 1.5 × its keepalive is lost: its broker connection
is dropped so the broker publishes the will). Bad datagrams cost one log line.
"""

from __future__ import annotations

import collections
import select
import signal
import socket
import sys
import time

from iotctl.errors import ConnectError, IotctlError, UsageError
from iotctl.protocols.mqtt.client import MqttConfig, Session, Subscription, Will
from iotctl.protocols.mqttsn import codec as c
from iotctl.protocols.mqttsn.client import trace
from iotctl.protocols.mqttsn.codec import Packet
from iotctl.topics import validate_filter, validate_topic

WINDOW = 20  # PUBLISHes in flight towards one client
SWEEP = 0.1  # seconds between timer sweeps


class GatewayConfig:
    def __init__(self, endpoint, bind: str = "127.0.0.1", port: int = 1883, predefined: dict | None = None,
                 verbose: bool = False, gw_id: int = 1, retry_interval: float = 2.0, retries: int = 5,
                 connect_timeout: float = 10.0, debug: bool = False):
        self.endpoint, self.bind, self.port = endpoint, bind, port
        self.predefined = predefined or {}
        self.verbose, self.gw_id, self.retry_interval, self.retries = verbose, gw_id, retry_interval, retries
        self.connect_timeout, self.debug = connect_timeout, debug


def read_predefined(path: str) -> dict[int, str]:
    """`ID TOPIC` lines (# comments, blank lines ignored) -> {id: topic}."""
    from iotctl.errors import UsageError

    out: dict[int, str] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read --predefined file {path}", getattr(exc, "strerror", None) or str(exc)) from None
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or not parts[0].isdigit() or not 0 < int(parts[0]) < 0xFFFF:
            raise UsageError(f"bad line {n} in {path}", f"{line!r} is not 'ID TOPIC' (ID 1..65534)")
        out[int(parts[0])] = parts[1].strip()
    return out


class _Out:
    """A packet to a client waiting for its answer, sent again every Tretry."""

    __slots__ = ("packet", "raw", "due", "tries", "topic")

    def __init__(self, packet, raw, due, topic=None):
        self.packet, self.raw, self.due, self.tries, self.topic = packet, raw, due, 0, topic


class Client:
    """One MQTT-SN client as the gateway sees it."""

    def __init__(self, addr, client_id: str, keepalive: int, clean: bool):
        self.addr, self.client_id, self.keepalive, self.clean = addr, client_id, keepalive, clean
        self.state = "new"  # will-topic, will-msg, connecting, active, asleep, awake, gone
        self.will: Will | None = None
        self.will_qos = 0
        self.mqtt: Session | None = None
        self.ids: dict[str, int] = {}  # topic name -> id (both directions)
        self.names: dict[int, str] = {}
        self.next_id = 1
        self.msg_id = 0
        self.shorts: set[str] = set()  # short topics subscribed (delivered as SHORT)
        self.inflight: dict[tuple[int, int], _Out] = {}  # (answer type, msg id) -> packet to the client
        self.queue: collections.deque = collections.deque()  # messages waiting for the window or a REGACK
        self.registering: dict[str, int] = {}  # topic name -> REGISTER msg id in flight
        self.q2_in: dict[int, str] = {}  # QoS 2 msg id from the client -> "sent" (to the broker) / "done"
        self.puback_for: dict[int, tuple[int, int]] = {}  # broker mid -> (client msg id, topic id)
        self.suback_for: dict[int, tuple[int, int]] = {}  # broker mid -> (client msg id, topic id)
        self.last_seen = time.monotonic()
        self.sleep_until = 0.0
        self.sleep_duration = 0

    def new_msg_id(self) -> int:
        self.msg_id = self.msg_id % 0xFFFF + 1
        return self.msg_id

    def topic_id_for(self, name: str) -> int:
        tid = self.ids.get(name)
        if tid is None:
            tid = self.next_id
            self.next_id += 1
            self.ids[name] = tid
            self.names[tid] = name
        return tid


class Gateway:
    def __init__(self, cfg: GatewayConfig):
        self.cfg = cfg
        self.by_addr: dict = {}
        self.by_id: dict[str, Client] = {}
        self.by_fd: dict[int, Client] = {}
        self.predefined_ids = {name: tid for tid, name in cfg.predefined.items()}
        self.sock: socket.socket | None = None
        self.upstream: Session | None = None  # the gateway's own connection (QoS -1, checks the broker)
        self.stats = collections.Counter()
        self.dirty: set = set()  # clients whose broker connection has packets to write

    # ------------------------------------------------------------------ logging

    def log(self, text: str) -> None:
        sys.stderr.write(f"iotctl: gateway: {text}\n")
        sys.stderr.flush()

    def _send(self, addr, p: Packet, raw: bytes | None = None) -> None:
        if raw is None:
            raw = c.encode(p)
        if self.cfg.verbose:
            trace("->", _fmt(addr), p, "gateway")
        try:
            self.sock.sendto(raw, addr)
        except BlockingIOError:
            select.select([], [self.sock], [], 0.5)
            try:
                self.sock.sendto(raw, addr)
            except OSError:
                self.stats["send_errors"] += 1
        except OSError:
            self.stats["send_errors"] += 1

    def _request(self, cl: Client, p: Packet, answer: int, msg_id: int, topic=None) -> None:
        raw = c.encode(p)
        cl.inflight[(answer, msg_id)] = _Out(p, raw, time.monotonic() + self.cfg.retry_interval, topic)
        self._send(cl.addr, p, raw)

    # ------------------------------------------------------------------ running

    def _mqtt_config(self, client_id: str, clean: bool, will: Will | None) -> MqttConfig:
        return MqttConfig(endpoint=self.cfg.endpoint, version="3.1.1", client_id=client_id, keepalive=60,
                          clean_start=clean, will=will, connect_timeout=self.cfg.connect_timeout,
                          debug=self.cfg.debug)

    def start(self) -> None:
        import os

        self.upstream = Session(self._mqtt_config(f"iotctl-gw-{os.getpid()}", True, None))
        self.upstream.connect()  # raises when the broker cannot be reached: nothing to serve then
        try:
            infos = socket.getaddrinfo(self.cfg.bind, self.cfg.port, 0, socket.SOCK_DGRAM)
            family, _, _, _, addr = infos[0]
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
            self.sock.bind(addr)
        except OSError as exc:
            self.upstream.close()
            raise ConnectError(f"cannot listen on udp {self.cfg.bind}:{self.cfg.port}",
                               getattr(exc, "strerror", None) or str(exc)) from None
        self.sock.setblocking(False)
        # a burst of datagrams waits here while the loop writes to the broker
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        except OSError:
            pass

    def serve(self) -> None:
        """Until Ctrl-C (or SIGTERM): then every broker connection is closed cleanly."""
        old = signal.signal(signal.SIGTERM, _interrupt)
        old_int = signal.signal(signal.SIGINT, _interrupt)  # also when started in the background
        next_sweep = 0.0
        try:
            while True:
                fds = [self.sock]
                wfds = []
                for fd, cl in self.by_fd.items():
                    if cl.mqtt is None:
                        continue
                    fds.append(fd)
                    if cl.mqtt.want_write():
                        wfds.append(fd)
                up = self.upstream.fileno()
                if up is not None:
                    fds.append(up)
                    if self.upstream.want_write():
                        wfds.append(up)
                now = time.monotonic()
                r, w, _ = select.select(fds, wfds, [], max(0.0, min(SWEEP, next_sweep - now)))
                for fd in r:
                    if fd is self.sock:
                        self._read_udp()
                        for cl in self.dirty:
                            if cl.mqtt is not None and cl.state != "gone":
                                self._service(cl, False, True)
                        self.dirty.clear()
                ready = set(r) | set(w)
                ready.discard(self.sock)
                for fd in ready:
                    if fd == up:
                        if not self.upstream.step(fd in r, fd in w):
                            self._reconnect_upstream()
                        continue
                    cl = self.by_fd.get(fd)
                    if cl is not None:
                        self._service(cl, fd in r, fd in w)
                if time.monotonic() >= next_sweep:
                    self._sweep()
                    next_sweep = time.monotonic() + SWEEP
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, old)
            signal.signal(signal.SIGINT, old_int)
            self.stop()

    def stop(self) -> None:
        for cl in list(self.by_id.values()):
            if cl.state not in ("gone", "parked"):
                self._send(cl.addr, Packet(c.DISCONNECT))
            if cl.mqtt is not None:
                cl.mqtt.close()
                cl.mqtt = None
        self.by_id.clear()
        self.by_addr.clear()
        self.by_fd.clear()
        if self.upstream is not None:
            self.upstream.close()
        if self.sock is not None:
            self.sock.close()

    def _reconnect_upstream(self) -> None:
        self.log(f"lost the gateway's own broker connection ({self.cfg.endpoint.display}); reconnecting")
        self.upstream.abort()
        try:
            self.upstream = Session(self.upstream.cfg)
            self.upstream.connect()
        except IotctlError as exc:
            self.log(f"cannot reconnect: {exc}")

    # ------------------------------------------------------------------ broker side

    def _service(self, cl: Client, readable: bool, writable: bool) -> None:
        session = cl.mqtt
        alive = session.step(readable, writable)
        if cl.state == "connecting" and session.connack is not None:
            error = session.connack_error()
            if error is not None:
                self.log(f"client {cl.client_id!r}: the broker refused the connection: {error.why}")
                self._send(cl.addr, Packet(c.CONNACK, return_code=c.CONGESTION))
                self._drop(cl, clean=False)
                return
            cl.state = "active"
            self._send(cl.addr, Packet(c.CONNACK, return_code=c.ACCEPTED))
            if self.cfg.verbose or self.cfg.debug:
                self.log(f"client {cl.client_id!r} connected from {_fmt(cl.addr)}")
        for mid in session.take_acked():
            entry = cl.puback_for.pop(mid, None)
            if entry is not None:
                msg_id, tid = entry
                if tid == -1:  # QoS 2: the broker has it
                    if msg_id in cl.q2_in:
                        cl.q2_in[msg_id] = "done"
                        self._send(cl.addr, Packet(c.PUBREC, msg_id=msg_id))
                    continue
                self._send(cl.addr, Packet(c.PUBACK, topic_id=tid, msg_id=msg_id, return_code=c.ACCEPTED))
        for mid in list(cl.suback_for):
            codes = session.suback(mid)
            if codes is not None:
                msg_id, tid = cl.suback_for.pop(mid)
                code = codes[0] if codes else 0x80
                if code >= 0x80:
                    self._send(cl.addr, Packet(c.SUBACK, qos=0, topic_id=0, msg_id=msg_id, return_code=c.CONGESTION))
                else:
                    self._send(cl.addr, Packet(c.SUBACK, qos=code, topic_id=tid, msg_id=msg_id, return_code=c.ACCEPTED))
        for msg in session.take():
            cl.queue.append(msg)
        if cl.queue:
            self._flush(cl)
        if not alive:
            if cl.state == "connecting":
                self.log(f"client {cl.client_id!r}: cannot connect to the broker: {session.lost('connect').why}")
                self._send(cl.addr, Packet(c.CONNACK, return_code=c.CONGESTION))
            else:
                self.log(f"client {cl.client_id!r}: the broker closed its connection: "
                         f"{session.lost('connection').why}")
                self._send(cl.addr, Packet(c.DISCONNECT))
            self._drop(cl, clean=False)

    def _connect_broker(self, cl: Client) -> None:
        cl.state = "connecting"
        cl.mqtt = Session(self._mqtt_config(cl.client_id, cl.clean, cl.will))
        try:
            cl.mqtt.begin_connect()
        except IotctlError as exc:
            self.log(f"client {cl.client_id!r}: cannot connect to the broker: {exc.why}")
            self._send(cl.addr, Packet(c.CONNACK, return_code=c.CONGESTION))
            cl.mqtt = None
            self._drop(cl, clean=False)
            return
        fd = cl.mqtt.fileno()
        if fd is not None:
            self.by_fd[fd] = cl

    # ------------------------------------------------------------------ towards the client

    def _flush(self, cl: Client) -> None:
        """Send queued messages while the window allows (not to a sleeping client)."""
        if cl.state not in ("active", "awake"):
            return
        while cl.queue and len(cl.inflight) < WINDOW:
            msg = cl.queue[0]
            topic = msg.address
            qos = msg.meta.get("qos", 0)
            tid = self.predefined_ids.get(topic)
            if tid is not None:
                tt = c.PREDEFINED
            elif topic in cl.shorts:
                tt, tid = c.SHORT, c.short_id(topic)
            elif topic in cl.ids:
                tt, tid = c.NORMAL, cl.ids[topic]
            else:
                if topic not in cl.registering:  # REGISTER first; the PUBLISH waits for the REGACK
                    new = cl.topic_id_for(topic)
                    cl.ids.pop(topic)
                    msg_id = cl.new_msg_id()
                    cl.registering[topic] = msg_id
                    self._request(cl, Packet(c.REGISTER, topic_id=new, msg_id=msg_id, topic_name=topic),
                                  c.REGACK, msg_id, topic)
                return
            cl.queue.popleft()
            msg_id = cl.new_msg_id() if qos else 0
            p = Packet(c.PUBLISH, qos=qos, retain=msg.meta.get("retain", False), topic_id_type=tt,
                       topic_id=tid, msg_id=msg_id, data=msg.payload)
            if qos:
                self._request(cl, p, c.PUBACK if qos == 1 else c.PUBREC, msg_id)
            else:
                self._send(cl.addr, p)

    def _sweep(self) -> None:
        now = time.monotonic()
        if self.upstream.fileno() is not None and not self.upstream.step(False, False):
            self._reconnect_upstream()
        for cl in list(self.by_id.values()):
            if cl.state == "gone":
                continue
            if cl.mqtt is not None and cl.state in ("active", "asleep", "awake", "connecting"):
                # broker keepalive and anything paho has buffered
                if cl.mqtt.fileno() is not None:
                    self._service(cl, False, False)
                if cl.state == "gone":
                    continue
            if cl.state in ("will-topic", "will-msg") and \
                    now - cl.last_seen > self.cfg.retry_interval * (self.cfg.retries + 1):
                self._lost(cl, "never finished its will (WILLTOPIC/WILLMSG)")
                continue
            if cl.state == "asleep":
                if cl.sleep_until and now > cl.sleep_until:
                    self._lost(cl, "did not wake up within its sleep duration")
                continue
            if cl.state in ("active", "awake") and cl.keepalive and now - cl.last_seen > 1.5 * cl.keepalive:
                self._lost(cl, f"silent for more than 1.5 × its keepalive ({cl.keepalive} s)")
                continue
            for key, out in list(cl.inflight.items()):
                if out.due > now:
                    continue
                if out.tries >= self.cfg.retries:
                    self._lost(cl, f"no {c.NAMES[key[0]]} after {out.tries + 1} tries")
                    break
                out.tries += 1
                out.due = now + self.cfg.retry_interval
                if out.packet.type == c.PUBLISH and not out.packet.fields.get("dup"):
                    out.packet.fields["dup"] = True
                    out.raw = c.encode(out.packet)
                self._send(cl.addr, out.packet, out.raw)
            if cl.state == "awake" and not cl.queue and not cl.inflight:
                cl.state = "asleep"
                cl.sleep_until = now + 1.5 * cl.sleep_duration + 1
                self._send(cl.addr, Packet(c.PINGRESP))

    def _lost(self, cl: Client, why: str) -> None:
        """A client that went away without DISCONNECT: drop its broker connection
        without DISCONNECT, so the broker publishes its will."""
        self.log(f"client {cl.client_id!r} ({_fmt(cl.addr)}) lost: {why}")
        if cl.mqtt is not None:
            self.by_fd.pop(cl.mqtt.fileno(), None)
            cl.mqtt.abort()
            cl.mqtt = None
        self._forget(cl)

    def _drop(self, cl: Client, clean: bool = True) -> None:
        if cl.mqtt is not None:
            fd = cl.mqtt.fileno()
            self.by_fd.pop(fd, None)
            if clean:
                cl.mqtt.close()
            else:
                cl.mqtt.abort()
            cl.mqtt = None
        self._forget(cl)

    def _forget(self, cl: Client) -> None:
        cl.state = "gone"
        if self.by_addr.get(cl.addr) is cl:
            del self.by_addr[cl.addr]
        if self.by_id.get(cl.client_id) is cl:
            del self.by_id[cl.client_id]
        for fd, other in list(self.by_fd.items()):
            if other is cl:
                del self.by_fd[fd]

    # ------------------------------------------------------------------ from the clients

    def _read_udp(self) -> None:
        sock = self.sock
        for _ in range(500):
            try:
                data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error for something we sent
                continue
            try:
                p = c.decode(data)
            except c.CodecError as exc:
                self.stats["bad"] += 1
                self.log(f"ignored a bad datagram from {_fmt(addr)}: {exc}")
                continue
            if self.cfg.verbose:
                trace("<-", _fmt(addr), p, "gateway")
            try:
                self._handle(addr, p)
            except IotctlError as exc:
                self.log(f"{p.name} from {_fmt(addr)}: {exc}")
            except Exception as exc:  # one bad client must not stop the others
                if self.cfg.debug:
                    raise
                self.log(f"{p.name} from {_fmt(addr)} failed: {type(exc).__name__}: {exc}")

    def _handle(self, addr, p: Packet) -> None:
        t = p.type
        if t == c.SEARCHGW:
            self._send(addr, Packet(c.GWINFO, gw_id=self.cfg.gw_id))
            return
        if t == c.CONNECT:
            self._on_connect(addr, p)
            return
        if t == c.PUBLISH and p.qos == -1:
            self._publish_qos_minus_one(addr, p)
            return
        if t == c.PINGREQ and p.client_id:
            cl = self.by_id.get(p.client_id)
            if cl is not None and cl.state in ("asleep", "awake"):
                self._wake(cl, addr)
                return
        cl = self.by_addr.get(addr)
        if cl is None or cl.state == "gone":
            if t in (c.ADVERTISE, c.GWINFO, c.DISCONNECT):
                if t == c.DISCONNECT:
                    self._send(addr, Packet(c.DISCONNECT))
                return
            self.log(f"{p.name} from {_fmt(addr)}, which is not connected: answered DISCONNECT")
            self._send(addr, Packet(c.DISCONNECT))
            return
        cl.last_seen = time.monotonic()
        handler = self._HANDLERS.get(t)
        if handler is None:
            self.log(f"ignored {p.name} from {_fmt(addr)}: not something a client sends")
            return
        handler(self, cl, p)

    def _on_connect(self, addr, p: Packet) -> None:
        old = self.by_addr.get(addr)
        if old is not None and old.client_id == p.client_id and old.state != "gone":
            # the same CONNECT again (our answer was lost): answer where we are
            old.last_seen = time.monotonic()
            if old.state == "will-topic":
                self._send(addr, Packet(c.WILLTOPICREQ))
            elif old.state == "will-msg":
                self._send(addr, Packet(c.WILLMSGREQ))
            elif old.state in ("active", "asleep", "awake"):
                if old.state != "active":
                    old.state = "active"
                    self._flush(old)
                self._send(addr, Packet(c.CONNACK, return_code=c.ACCEPTED))
            return
        if old is not None:
            self._drop(old)
        existing = self.by_id.get(p.client_id)
        if existing is not None and existing.state != "gone":
            if not p.clean_session and existing.mqtt is not None and existing.state in ("active", "asleep", "awake") \
                    and not p.will:
                # resume: same broker session, same topic ids; the client moved (or woke)
                if self.by_addr.get(existing.addr) is existing:
                    del self.by_addr[existing.addr]
                existing.addr = addr
                existing.keepalive = p.duration
                existing.state = "active"
                existing.last_seen = time.monotonic()
                self.by_addr[addr] = existing
                self._send(addr, Packet(c.CONNACK, return_code=c.ACCEPTED))
                self._flush(existing)
                return
            self._drop(existing)
        cl = Client(addr, p.client_id, p.duration, p.clean_session)
        self.by_addr[addr] = cl
        self.by_id[p.client_id] = cl
        if p.will:
            cl.state = "will-topic"
            self._send(addr, Packet(c.WILLTOPICREQ))
        else:
            self._connect_broker(cl)

    def _on_willtopic(self, cl: Client, p: Packet) -> None:
        if cl.state == "will-msg":  # our WILLMSGREQ was lost
            self._send(cl.addr, Packet(c.WILLMSGREQ))
            return
        if cl.state != "will-topic":
            return
        if p.will_topic is None:
            cl.will = None
            self._connect_broker(cl)
            return
        cl.will = Will(p.will_topic, b"", max(0, p.qos), p.retain)
        cl.state = "will-msg"
        self._send(cl.addr, Packet(c.WILLMSGREQ))

    def _on_willmsg(self, cl: Client, p: Packet) -> None:
        if cl.state != "will-msg":
            return
        cl.will.payload = p.will_msg
        self._connect_broker(cl)

    def _topic_of(self, cl: Client, tt: int, tid: int) -> str | None:
        if tt == c.NORMAL:
            return cl.names.get(tid)
        if tt == c.PREDEFINED:
            return self.cfg.predefined.get(tid)
        if tt == c.SHORT:
            return c.short_name(tid)
        return None

    def _on_register(self, cl: Client, p: Packet) -> None:
        name = p.topic_name
        try:
            validate_topic(name)
        except UsageError as exc:
            self.log(f"client {cl.client_id!r}: REGISTER refused: {exc}")
            self._send(cl.addr, Packet(c.REGACK, topic_id=0, msg_id=p.msg_id, return_code=c.NOT_SUPPORTED))
            return
        tid = cl.topic_id_for(name)
        self._send(cl.addr, Packet(c.REGACK, topic_id=tid, msg_id=p.msg_id, return_code=c.ACCEPTED))

    def _on_publish(self, cl: Client, p: Packet) -> None:
        if cl.state not in ("active", "awake") or cl.mqtt is None:
            self._send(cl.addr, Packet(c.DISCONNECT))
            return
        topic = self._topic_of(cl, p.topic_id_type, p.topic_id)
        if topic is None:
            self.log(f"client {cl.client_id!r}: PUBLISH to unknown topic id {p.topic_id} "
                     f"({c.TOPIC_ID_TYPES.get(p.topic_id_type, 'reserved')}): answered 'invalid topic ID'")
            self._send(cl.addr, Packet(c.PUBACK, topic_id=p.topic_id, msg_id=p.msg_id,
                                       return_code=c.INVALID_TOPIC_ID))
            return
        qos = p.qos
        if qos == 2:
            # exactly once: published once per msg id, PUBREC once the broker has it
            # (its PUBCOMP); a DUP before that is ignored, after it answered again
            state = cl.q2_in.get(p.msg_id)
            if state is None:
                mid = cl.mqtt.publish(topic, p.data, 2, p.retain)
                cl.q2_in[p.msg_id] = "sent"
                cl.puback_for[mid] = (p.msg_id, -1)
            elif state == "done":
                self._send(cl.addr, Packet(c.PUBREC, msg_id=p.msg_id))
        elif qos == 1:
            mid = cl.mqtt.publish(topic, p.data, 1, p.retain)
            cl.puback_for[mid] = (p.msg_id, p.topic_id)
        else:
            cl.mqtt.publish(topic, p.data, 0, p.retain)
        self.dirty.add(cl)  # written once the burst of datagrams is read

    def _publish_qos_minus_one(self, addr, p: Packet) -> None:
        if p.topic_id_type == c.NORMAL:
            self.log(f"ignored a QoS -1 PUBLISH from {_fmt(addr)}: a normal topic id needs a connection")
            return
        topic = self._topic_of(None, p.topic_id_type, p.topic_id)
        if topic is None:
            self.log(f"ignored a QoS -1 PUBLISH from {_fmt(addr)} to unknown predefined topic id {p.topic_id}")
            return
        self.upstream.publish(topic, p.data, 0, p.retain)
        self.upstream.step(False, True)

    def _on_pubrel(self, cl: Client, p: Packet) -> None:
        cl.q2_in.pop(p.msg_id, None)
        self._send(cl.addr, Packet(c.PUBCOMP, msg_id=p.msg_id))

    def _on_ack(self, cl: Client, p: Packet) -> None:
        """PUBACK, PUBREC, PUBCOMP for our PUBLISHes; REGACK for our REGISTERs."""
        t = p.type
        out = cl.inflight.pop((t, p.msg_id), None)
        if t == c.PUBREC:
            if out is not None or (c.PUBCOMP, p.msg_id) in cl.inflight:
                cl.inflight.pop((c.PUBCOMP, p.msg_id), None)
                self._request(cl, Packet(c.PUBREL, msg_id=p.msg_id), c.PUBCOMP, p.msg_id)
        elif t == c.PUBACK and p.return_code == c.INVALID_TOPIC_ID and out is not None:
            name = cl.names.get(out.packet.topic_id)
            self.log(f"client {cl.client_id!r} does not know topic id {out.packet.topic_id} ({name!r})")
            if name is not None:
                cl.ids.pop(name, None)
        elif t == c.REGACK and out is not None:
            topic = out.topic
            cl.registering.pop(topic, None)
            if p.return_code == c.ACCEPTED:
                tid = out.packet.topic_id
                cl.ids[topic] = tid
                cl.names[tid] = topic
            else:
                self.log(f"client {cl.client_id!r} refused REGISTER of {topic!r}: dropping its messages")
                cl.queue = collections.deque(m for m in cl.queue if m.address != topic)
        self._flush(cl)

    def _on_subscribe(self, cl: Client, p: Packet) -> None:
        tt = p.topic_id_type
        qos = max(0, p.qos)
        tid = 0
        if tt == c.NORMAL:
            name = p.topic_name
            try:
                validate_filter(name)
            except UsageError as exc:  # the broker would close the connection over it
                self.log(f"client {cl.client_id!r}: SUBSCRIBE refused: {exc}")
                self._send(cl.addr, Packet(c.SUBACK, qos=0, topic_id=0, msg_id=p.msg_id, return_code=c.NOT_SUPPORTED))
                return
            if "+" not in name and "#" not in name:
                tid = cl.topic_id_for(name)
        else:
            name = self._topic_of(cl, tt, p.topic_id)
            if name is None:
                self._send(cl.addr, Packet(c.SUBACK, qos=0, topic_id=p.topic_id, msg_id=p.msg_id,
                                           return_code=c.INVALID_TOPIC_ID))
                return
            tid = p.topic_id
            if tt == c.SHORT:
                cl.shorts.add(name)
        if any(v == (p.msg_id, tid) for v in cl.suback_for.values()):
            return  # a retransmission of one being subscribed: its SUBACK is coming
        try:
            mid = cl.mqtt.subscribe_request([Subscription(name, qos)])
        except IotctlError as exc:
            self.log(f"client {cl.client_id!r}: cannot subscribe to {name!r}: {exc.why}")
            self._send(cl.addr, Packet(c.SUBACK, qos=0, topic_id=0, msg_id=p.msg_id, return_code=c.NOT_SUPPORTED))
            return
        cl.suback_for[mid] = (p.msg_id, tid)
        cl.mqtt.step(False, True)

    def _on_unsubscribe(self, cl: Client, p: Packet) -> None:
        name = p.topic_name if p.topic_id_type == c.NORMAL else self._topic_of(cl, p.topic_id_type, p.topic_id)
        if name:
            cl.mqtt.unsubscribe(name)
            cl.shorts.discard(name)
        self._send(cl.addr, Packet(c.UNSUBACK, msg_id=p.msg_id))

    def _on_pingreq(self, cl: Client, p: Packet) -> None:
        self._send(cl.addr, Packet(c.PINGRESP))

    def _wake(self, cl: Client, addr) -> None:
        if cl.addr != addr:
            if self.by_addr.get(cl.addr) is cl:
                del self.by_addr[cl.addr]
            cl.addr = addr
            self.by_addr[addr] = cl
        cl.last_seen = time.monotonic()
        cl.state = "awake"
        self._flush(cl)
        if not cl.queue and not cl.inflight:
            cl.state = "asleep"
            cl.sleep_until = time.monotonic() + 1.5 * cl.sleep_duration + 1
            self._send(addr, Packet(c.PINGRESP))

    def _on_disconnect(self, cl: Client, p: Packet) -> None:
        if p.duration:
            cl.state = "asleep"
            cl.sleep_duration = p.duration
            cl.sleep_until = time.monotonic() + 1.5 * p.duration + 1
            self._send(cl.addr, Packet(c.DISCONNECT))
            return
        self._send(cl.addr, Packet(c.DISCONNECT))
        if self.cfg.verbose or self.cfg.debug:
            self.log(f"client {cl.client_id!r} disconnected")
        self._drop(cl, clean=True)

    def _on_willtopicupd(self, cl: Client, p: Packet) -> None:
        # MQTT cannot change the will of a live connection: refused, and said so
        self.log(f"client {cl.client_id!r}: WILLTOPICUPD answered 'not supported' (the broker connection's "
                 "will cannot change while it is open)")
        self._send(cl.addr, Packet(c.WILLTOPICRESP, return_code=c.NOT_SUPPORTED))

    def _on_willmsgupd(self, cl: Client, p: Packet) -> None:
        self.log(f"client {cl.client_id!r}: WILLMSGUPD answered 'not supported'")
        self._send(cl.addr, Packet(c.WILLMSGRESP, return_code=c.NOT_SUPPORTED))

    _HANDLERS = {
        c.WILLTOPIC: _on_willtopic, c.WILLMSG: _on_willmsg, c.REGISTER: _on_register,
        c.PUBLISH: _on_publish, c.PUBREL: _on_pubrel, c.PUBACK: _on_ack, c.PUBREC: _on_ack,
        c.PUBCOMP: _on_ack, c.REGACK: _on_ack, c.SUBSCRIBE: _on_subscribe, c.UNSUBSCRIBE: _on_unsubscribe,
        c.PINGREQ: _on_pingreq, c.DISCONNECT: _on_disconnect, c.WILLTOPICUPD: _on_willtopicupd,
        c.WILLMSGUPD: _on_willmsgupd,
    }


def _fmt(addr) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _interrupt(signum, frame):
    raise KeyboardInterrupt

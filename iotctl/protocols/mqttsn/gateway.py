"""A transparent MQTT-SN gateway: one MQTT connection per MQTT-SN client.

One thread, one select loop over the UDP socket and every broker connection's socket
(the MQTT group's `client.Session`, driven with `fileno`/`step`). Towards the
clients it keeps the specification's rules: topic ids (registered, predefined,
short), REGISTER before the first PUBLISH of a topic the client has not learnt on
its connection, QoS -1..2 with retransmission (Tretry/Nretry), wills, sleeping
clients whose messages are kept until they wake (PINGREQ with their client id),
keepalive supervision (a client silent for 1.5 × its keepalive is lost: its broker
connection is dropped so the broker publishes the will).

Nothing is lost on the way down: the broker connection acknowledges a QoS 1/2
message only once the client acknowledged it (PUBACK, PUBREC), so what a client
never got comes again from a persistent session when it resumes. A client's queue is
bounded (--max-queued; the gateway says when it drops). A broker that goes away is
connected to again with backoff, per client, keeping the MQTT-SN sessions (their
subscriptions are made again when the broker lost them); meanwhile what cannot be
forwarded is refused (PUBACK or SUBACK "rejected: congestion"), never silently
dropped. Everything a client sends is checked before it reaches the broker; a bad
datagram costs one log line.
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
from iotctl.protocols.mqttsn.client import MAX_DATAGRAM, PUBLISH_OVERHEAD, trace
from iotctl.protocols.mqttsn.codec import Packet
from iotctl.topics import validate_filter, validate_topic

WINDOW = 20  # PUBLISHes in flight towards one client
SWEEP = 0.1  # seconds between timer sweeps
BACKOFF = (0.5, 1, 2, 4, 8, 15, 30)  # seconds before connecting to the broker again
REMEMBERED = 4096  # QoS 1 msg ids a client's duplicate PUBLISH may name (answered again)
CONNECTED = ("active", "awake", "asleep")


class GatewayConfig:
    def __init__(self, endpoint, bind: str = "127.0.0.1", port: int = 1883, predefined: dict | None = None,
                 verbose: bool = False, gw_id: int = 1, retry_interval: float = 2.0, retries: int = 5,
                 connect_timeout: float = 10.0, debug: bool = False, max_queued: int = 10000):
        self.endpoint, self.bind, self.port = endpoint, bind, port
        self.predefined = predefined or {}
        self.verbose, self.gw_id, self.retry_interval, self.retries = verbose, gw_id, retry_interval, retries
        self.connect_timeout, self.debug, self.max_queued = connect_timeout, debug, max_queued


def read_predefined(path: str) -> dict[int, str]:
    """`ID TOPIC` lines (# comments, blank lines ignored) -> {id: topic}."""
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
    """A packet to a client waiting for its answer, sent again every Tretry; `msg` is
    the broker's message a PUBLISH carries (acknowledged to the broker once the client
    acknowledged it)."""

    __slots__ = ("packet", "raw", "due", "tries", "topic", "msg")

    def __init__(self, packet, raw, due, topic=None, msg=None):
        self.packet, self.raw, self.due, self.tries, self.topic, self.msg = packet, raw, due, 0, topic, msg


class Client:
    """One MQTT-SN client as the gateway sees it."""

    def __init__(self, addr, client_id: str, keepalive: int, clean: bool):
        self.addr, self.client_id, self.keepalive, self.clean = addr, client_id, keepalive, clean
        self.state = "new"  # will-topic, will-msg, connecting, active, asleep, awake, gone
        self.will: Will | None = None
        self.mqtt: Session | None = None
        self.broker_up = False  # the broker connection has its CONNACK
        self.broker_since = 0.0  # when the current broker connection was begun
        self.retry_at: float | None = None  # when to connect to the broker again (after a loss)
        self.attempts = 0
        self.ids: dict[str, int] = {}  # topic name -> id (both directions; stable for the client's life here)
        self.names: dict[int, str] = {}
        self.known: set[int] = set()  # normal topic ids the client has learnt on its current connection
        self.next_id = 1
        self.msg_id = 0
        self.shorts: set[str] = set()  # short topics subscribed (delivered as SHORT)
        self.subs: dict[str, int] = {}  # filters subscribed at the broker -> QoS (made again after a loss)
        self.unsubscribed: set[str] = set()  # unsubscribed while the broker was away
        self.inflight: dict[tuple[int, int], _Out] = {}  # (answer type, msg id) -> packet to the client
        self.queue: collections.deque = collections.deque()  # messages waiting for the window or a REGACK
        self.dropped = 0  # messages dropped since the queue became full
        self.registering: dict[str, int] = {}  # topic name -> REGISTER msg id in flight
        self.q2_in: dict[int, str] = {}  # QoS 2 msg id from the client -> "sent" (to the broker) / "done"
        self.q1_pending: dict[int, int] = {}  # QoS 1 msg id from the client -> broker mid, not yet acknowledged
        self.q1_done: collections.OrderedDict = collections.OrderedDict()  # QoS 1 msg id -> topic id, acknowledged
        self.puback_for: dict[int, tuple[int, int]] = {}  # broker mid -> (client msg id, topic id)
        self.suback_for: dict[int, tuple[int, int, str, int]] = {}  # broker mid -> (msg id, topic id, filter, qos)
        self.subacks: collections.OrderedDict = collections.OrderedDict()  # SUBSCRIBE msg id -> our SUBACK
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
            self.next_id = self.next_id % 0xFFFE + 1
            self.ids[name] = tid
            self.names[tid] = name
        return tid


def _short_topic(tid: int) -> str | None:
    """The name a SHORT topic id carries, or None when its two bytes are not UTF-8."""
    try:
        return bytes(((tid >> 8) & 0xFF, tid & 0xFF)).decode("utf-8")
    except UnicodeDecodeError:
        return None


class Gateway:
    def __init__(self, cfg: GatewayConfig):
        self.cfg = cfg
        self.by_addr: dict = {}
        self.by_id: dict[str, Client] = {}
        self.by_fd: dict[int, Client] = {}
        self.predefined_ids = {name: tid for tid, name in cfg.predefined.items()}
        self.sock: socket.socket | None = None
        self.port = cfg.port
        # the gateway's own broker connection (QoS -1 PUBLISHes)
        self.upstream: Session | None = None
        self.upstream_up = False
        self.upstream_retry: float | None = None
        self.upstream_attempts = 0
        self.upstream_since = 0.0
        self.stats = collections.Counter()
        self.dirty: set = set()  # clients whose broker connection has packets to write
        self.limit = MAX_DATAGRAM[socket.AF_INET] - PUBLISH_OVERHEAD

    # ------------------------------------------------------------------ logging

    def log(self, text: str) -> None:
        sys.stderr.write(f"iotctl: gateway: {text}\n")
        sys.stderr.flush()

    def _failed(self, what: str, exc: BaseException) -> None:
        """An unexpected error while handling one packet: logged (with its traceback
        under -d); the gateway goes on serving everyone else."""
        self.log(f"{what} failed: {type(exc).__name__}: {exc}")
        if self.cfg.debug:
            import traceback

            sys.stderr.write(traceback.format_exc())
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

    def _request(self, cl: Client, p: Packet, answer: int, msg_id: int, topic=None, msg=None) -> None:
        raw = c.encode(p)
        cl.inflight[(answer, msg_id)] = _Out(p, raw, time.monotonic() + self.cfg.retry_interval, topic, msg)
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
        self.upstream_up = True
        try:
            infos = socket.getaddrinfo(self.cfg.bind, self.cfg.port, 0, socket.SOCK_DGRAM)
            family, _, _, _, addr = infos[0]
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
            self.sock.bind(addr)
        except OSError as exc:
            self.upstream.close()
            raise ConnectError(f"cannot listen on udp {self.cfg.bind}:{self.cfg.port}",
                               getattr(exc, "strerror", None) or str(exc)) from None
        self.port = self.sock.getsockname()[1]  # -p 0: the port the system chose
        self.limit = MAX_DATAGRAM.get(family, 65507) - PUBLISH_OVERHEAD
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
                up = self.upstream.fileno() if self.upstream is not None else None
                if up is not None:
                    fds.append(up)
                    if self.upstream.want_write():
                        wfds.append(up)
                now = time.monotonic()
                r, w, _ = select.select(fds, wfds, [], max(0.0, min(SWEEP, next_sweep - now)))
                for fd in r:
                    if fd is self.sock:
                        self._read_udp()
                        for cl in list(self.dirty):
                            if cl.mqtt is not None and cl.state != "gone":
                                self._service(cl, False, True)
                        self.dirty.clear()
                ready = set(r) | set(w)
                ready.discard(self.sock)
                for fd in ready:
                    if fd == up:
                        self._service_upstream(fd in r, fd in w)
                        continue
                    cl = self.by_fd.get(fd)
                    if cl is not None and cl.mqtt is not None and cl.mqtt.fileno() == fd:
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
            if cl.state != "gone":
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

    # ------------------------------------------------------------------ the gateway's own broker connection

    def _service_upstream(self, readable: bool, writable: bool) -> None:
        session = self.upstream
        try:
            alive = session.step(readable, writable)
        except Exception as exc:  # paho on a broken connection
            self._failed("the gateway's own broker connection", exc)
            alive = False
        if not self.upstream_up and session.connack is not None:
            error = session.connack_error()
            if error is None:
                self.upstream_up = True
                self.upstream_attempts = 0
                self.log(f"reconnected to the broker ({self.cfg.endpoint.display}) for QoS -1 publishes")
            else:
                alive = False
        if not alive:
            self._upstream_lost("connection lost")

    def _upstream_lost(self, why: str) -> None:
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None
        delay = BACKOFF[min(self.upstream_attempts, len(BACKOFF) - 1)]
        if self.upstream_up or not self.upstream_attempts:
            self.log(f"lost the gateway's own broker connection ({self.cfg.endpoint.display}): {why}; "
                     f"connecting again in {delay:g} s (QoS -1 publishes are refused meanwhile)")
        self.upstream_up = False
        self.upstream_attempts += 1
        self.upstream_retry = time.monotonic() + delay

    def _upstream_again(self) -> None:
        import os

        self.upstream_retry = None
        session = Session(self._mqtt_config(f"iotctl-gw-{os.getpid()}", True, None))
        try:
            session.begin_connect()
        except IotctlError as exc:
            self.upstream = None
            self._upstream_lost(exc.why or exc.what)
            return
        self.upstream = session
        self.upstream_since = time.monotonic()

    # ------------------------------------------------------------------ broker side of a client

    def _service(self, cl: Client, readable: bool, writable: bool) -> None:
        session = cl.mqtt
        try:
            alive = session.step(readable, writable)
        except Exception as exc:  # paho on a broken connection
            self._failed(f"client {cl.client_id!r}'s broker connection", exc)
            alive = False
        if not cl.broker_up and session.connack is not None:
            error = session.connack_error()
            if error is not None:
                self.log(f"client {cl.client_id!r}: the broker refused the connection: {error.why}")
                if cl.state == "connecting":
                    self._send(cl.addr, Packet(c.CONNACK, return_code=c.CONGESTION))
                    self._drop(cl, clean=False)
                else:
                    self._send(cl.addr, Packet(c.DISCONNECT))
                    self._drop(cl, clean=False)
                return
            self._broker_connected(cl, session)
        acked = session.take_acked()
        for mid in acked:
            entry = cl.puback_for.pop(mid, None)
            if entry is None:
                continue
            msg_id, tid = entry
            if tid == -1:  # QoS 2: the broker has it
                if msg_id in cl.q2_in:
                    cl.q2_in[msg_id] = "done"
                    self._send(cl.addr, Packet(c.PUBREC, msg_id=msg_id))
                continue
            if cl.q1_pending.get(msg_id) == mid:
                del cl.q1_pending[msg_id]
                cl.q1_done[msg_id] = tid
                if len(cl.q1_done) > REMEMBERED:
                    cl.q1_done.popitem(last=False)
            self._send(cl.addr, Packet(c.PUBACK, topic_id=tid, msg_id=msg_id, return_code=c.ACCEPTED))
        for mid in list(cl.suback_for):
            codes = session.suback(mid)
            if codes is None:
                continue
            msg_id, tid, name, qos = cl.suback_for.pop(mid)
            code = codes[0] if codes else 0x80
            if msg_id < 0:  # made again after a broker loss: no client waits for it
                if code >= 0x80:
                    self.log(f"client {cl.client_id!r}: the broker refused the subscription to {name!r} again")
                    cl.subs.pop(name, None)
                continue
            if code >= 0x80:
                suback = Packet(c.SUBACK, qos=0, topic_id=0, msg_id=msg_id, return_code=c.CONGESTION)
                cl.subs.pop(name, None)
            else:
                suback = Packet(c.SUBACK, qos=code, topic_id=tid, msg_id=msg_id, return_code=c.ACCEPTED)
                if tid and name not in cl.shorts and self.predefined_ids.get(name) != tid:
                    cl.known.add(tid)  # the client learns the id from this SUBACK
            self._suback(cl, msg_id, suback)
        taken = session.take()
        if taken:
            self._enqueue(cl, taken)
        if cl.queue:
            self._flush(cl)
        if not alive:
            if cl.state == "connecting":
                self.log(f"client {cl.client_id!r}: cannot connect to the broker: {session.lost('connect').why}")
                self._send(cl.addr, Packet(c.CONNACK, return_code=c.CONGESTION))
                self._drop(cl, clean=False)
            else:
                self._broker_lost(cl, session.lost("connection").why)

    def _broker_connected(self, cl: Client, session: Session) -> None:
        cl.broker_up = True
        cl.attempts = 0
        if cl.state == "connecting":
            cl.state = "active"
            self._send(cl.addr, Packet(c.CONNACK, return_code=c.ACCEPTED))
            if self.cfg.verbose or self.cfg.debug:
                self.log(f"client {cl.client_id!r} connected from {_fmt(cl.addr)}")
            return
        flags = session.connack[1]
        present = bool(getattr(flags, "session_present", False))
        self.log(f"client {cl.client_id!r}: reconnected to the broker"
                 + (" (its session was kept)" if present else
                    (f"; subscribing again to {len(cl.subs)} filter(s)" if cl.subs else "")))
        try:
            if present:
                for name in cl.unsubscribed:
                    session.unsubscribe(name)
            else:
                for name, qos in cl.subs.items():
                    mid = session.subscribe_request([Subscription(name, qos)])
                    cl.suback_for[mid] = (-1, 0, name, qos)
        except IotctlError as exc:
            self.log(f"client {cl.client_id!r}: cannot subscribe again: {exc}")
        cl.unsubscribed.clear()
        self.dirty.add(cl)

    def _broker_lost(self, cl: Client, why: str | None) -> None:
        """The broker connection of a connected client is gone: the MQTT-SN session
        stays; connect again with backoff (subscriptions made again if the broker lost
        them). Messages not yet sent to the client that a persistent session brings
        again are let go (the broker has them); the rest stay queued."""
        session = cl.mqtt
        if session is not None:
            fd = session.fileno()
            if self.by_fd.get(fd) is cl:
                del self.by_fd[fd]
            session.abort()
        for fd, other in list(self.by_fd.items()):
            if other is cl:
                del self.by_fd[fd]
        cl.mqtt = None
        cl.broker_up = False
        cl.suback_for.clear()
        cl.puback_for.clear()
        cl.q1_pending.clear()
        for msg_id, state in list(cl.q2_in.items()):
            if state == "sent":  # never confirmed by the broker: the client sends it again
                del cl.q2_in[msg_id]
        if not cl.clean:
            cl.queue = collections.deque(m for m in cl.queue if m.token is None)
        delay = BACKOFF[min(cl.attempts, len(BACKOFF) - 1)]
        if cl.attempts == 0:
            self.log(f"client {cl.client_id!r}: lost its broker connection ({why or 'connection lost'}); "
                     f"connecting again in {delay:g} s, the MQTT-SN session is kept "
                     "(its PUBLISH and SUBSCRIBE are refused meanwhile)")
        cl.attempts += 1
        cl.retry_at = time.monotonic() + delay

    def _connect_broker(self, cl: Client) -> None:
        """The first broker connection of a client (it waits for its CONNACK)."""
        cl.state = "connecting"
        if not self._begin_broker(cl):
            self._send(cl.addr, Packet(c.CONNACK, return_code=c.CONGESTION))
            self._drop(cl, clean=False)

    def _begin_broker(self, cl: Client) -> bool:
        cl.retry_at = None
        cl.broker_up = False
        cl.broker_since = time.monotonic()
        session = Session(self._mqtt_config(cl.client_id, cl.clean, cl.will), manual_ack=True)
        try:
            session.begin_connect()
        except IotctlError as exc:
            self.log(f"client {cl.client_id!r}: cannot connect to the broker: {exc.why}")
            session.abort()
            return False
        cl.mqtt = session
        fd = session.fileno()
        if fd is not None:
            self.by_fd[fd] = cl
        return True

    def _ack_broker(self, cl: Client, msg) -> None:
        """Acknowledge a broker message the client has (or refused for good)."""
        if msg is not None and msg.token is not None and cl.mqtt is not None and msg.token[0] is cl.mqtt:
            cl.mqtt.ack(msg)
            self.dirty.add(cl)

    def _enqueue(self, cl: Client, messages: list) -> None:
        limit = self.cfg.max_queued
        for msg in messages:
            if len(cl.queue) >= limit:
                cl.dropped += 1
                if cl.dropped == 1:
                    self.log(f"client {cl.client_id!r}: {limit} messages are queued for it (--max-queued): "
                             "dropping what comes until it takes some (QoS 1/2 ones are not acknowledged to "
                             "the broker: a persistent session gets them when it resumes)")
                continue
            cl.queue.append(msg)

    # ------------------------------------------------------------------ towards the client

    def _flush(self, cl: Client) -> None:
        """Send queued messages while the window allows (not to a sleeping client), each
        with a topic id the client has learnt on this connection (REGISTER first)."""
        if cl.state not in ("active", "awake"):
            return
        queue = cl.queue
        while queue and len(cl.inflight) < WINDOW:
            msg = queue[0]
            topic = msg.address
            qos = msg.meta.get("qos", 0)
            tid = self.predefined_ids.get(topic)
            if tid is not None:
                tt = c.PREDEFINED
            elif topic in cl.shorts:
                tt, tid = c.SHORT, c.short_id(topic)
            else:
                tt, tid = c.NORMAL, cl.topic_id_for(topic)
                if tid not in cl.known:
                    if topic not in cl.registering:  # REGISTER first; the PUBLISH waits for the REGACK
                        msg_id = cl.new_msg_id()
                        cl.registering[topic] = msg_id
                        self._request(cl, Packet(c.REGISTER, topic_id=tid, msg_id=msg_id, topic_name=topic),
                                      c.REGACK, msg_id, topic)
                    return
            queue.popleft()
            if len(msg.payload) > self.limit:
                self.log(f"client {cl.client_id!r}: a message on {topic!r} has {len(msg.payload)} bytes, more than "
                         f"one MQTT-SN datagram carries ({self.limit}): dropped")
                self._ack_broker(cl, msg)
                continue
            msg_id = cl.new_msg_id() if qos else 0
            p = Packet(c.PUBLISH, qos=qos, retain=msg.meta.get("retain", False), topic_id_type=tt,
                       topic_id=tid, msg_id=msg_id, data=msg.payload)
            if qos:
                self._request(cl, p, c.PUBACK if qos == 1 else c.PUBREC, msg_id, msg=msg)
            else:
                self._send(cl.addr, p)
        if cl.dropped and len(queue) < self.cfg.max_queued:
            self.log(f"client {cl.client_id!r}: {cl.dropped} message(s) were dropped while its queue was full")
            cl.dropped = 0

    def _sweep(self) -> None:
        now = time.monotonic()
        if self.upstream is None:
            if self.upstream_retry is not None and now >= self.upstream_retry:
                self._upstream_again()
        elif self.upstream.fileno() is None:
            self._upstream_lost("connection lost")
        else:
            self._service_upstream(False, False)
            if not self.upstream_up and self.upstream is not None \
                    and now - self.upstream_since > self.cfg.connect_timeout:
                self._upstream_lost(f"no CONNACK within {self.cfg.connect_timeout:g} s")
        for cl in list(self.by_id.values()):
            if cl.state == "gone":
                continue
            try:
                self._sweep_client(cl, now)
            except Exception as exc:
                self._failed(f"client {cl.client_id!r}", exc)

    def _sweep_client(self, cl: Client, now: float) -> None:
        if cl.mqtt is not None and cl.state in ("active", "asleep", "awake", "connecting"):
            # broker keepalive and anything paho has buffered
            if cl.mqtt.fileno() is not None:
                self._service(cl, False, False)
            elif cl.state == "connecting":
                self._send(cl.addr, Packet(c.CONNACK, return_code=c.CONGESTION))
                self._drop(cl, clean=False)
            else:
                self._broker_lost(cl, "connection lost")
            if cl.state == "gone":
                return
            if cl.mqtt is not None and not cl.broker_up and now - cl.broker_since > self.cfg.connect_timeout:
                why = f"no CONNACK within {self.cfg.connect_timeout:g} s"
                if cl.state == "connecting":
                    self.log(f"client {cl.client_id!r}: cannot connect to the broker: {why}")
                    self._send(cl.addr, Packet(c.CONNACK, return_code=c.CONGESTION))
                    self._drop(cl, clean=False)
                    return
                self._broker_lost(cl, why)
        if cl.mqtt is None and cl.retry_at is not None and now >= cl.retry_at and cl.state in CONNECTED:
            if not self._begin_broker(cl):
                cl.mqtt = None
                self._broker_lost(cl, None)
        if cl.state in ("will-topic", "will-msg") and \
                now - cl.last_seen > self.cfg.retry_interval * (self.cfg.retries + 1):
            self._lost(cl, "never finished its will (WILLTOPIC/WILLMSG)")
            return
        if cl.state == "asleep":
            if cl.sleep_until and now > cl.sleep_until:
                self._lost(cl, "did not wake up within its sleep duration")
            return
        if cl.state in ("active", "awake") and cl.keepalive and now - cl.last_seen > 1.5 * cl.keepalive:
            self._lost(cl, f"silent for more than 1.5 × its keepalive ({cl.keepalive} s)")
            return
        for key, out in list(cl.inflight.items()):
            if out.due > now:
                continue
            if out.tries >= self.cfg.retries:
                self._lost(cl, f"no {c.NAMES[key[0]]} after {out.tries + 1} tries")
                return
            out.tries += 1
            out.due = now + self.cfg.retry_interval
            if out.packet.type == c.PUBLISH and not out.packet.fields.get("dup"):
                out.packet.fields["dup"] = True
                out.raw = c.encode(out.packet)
            # twice: a link that loses every n-th datagram cannot take the same one each time
            self._send(cl.addr, out.packet, out.raw)
            self._send(cl.addr, out.packet, out.raw)
        if cl.state == "awake" and not cl.queue and not cl.inflight:
            cl.state = "asleep"
            cl.sleep_until = now + 1.5 * cl.sleep_duration + 1
            self._send(cl.addr, Packet(c.PINGRESP))

    def _lost(self, cl: Client, why: str) -> None:
        """A client that went away without DISCONNECT: drop its broker connection
        without DISCONNECT, so the broker publishes its will."""
        self.log(f"client {cl.client_id!r} ({_fmt(cl.addr)}) lost: {why}")
        self._drop(cl, clean=False)

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
                self._failed(f"{p.name} from {_fmt(addr)}", exc)

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
        client_id = p.client_id
        bad = _bad_client_id(client_id)
        if bad:
            self.log(f"CONNECT from {_fmt(addr)} refused: {bad}")
            self._send(addr, Packet(c.CONNACK, return_code=c.NOT_SUPPORTED))
            return
        old = self.by_addr.get(addr)
        if old is not None and old.client_id == client_id and old.state != "gone":
            # the same CONNECT again (our answer was lost): answer where we are
            old.last_seen = time.monotonic()
            if old.state == "will-topic":
                self._send(addr, Packet(c.WILLTOPICREQ))
            elif old.state == "will-msg":
                self._send(addr, Packet(c.WILLMSGREQ))
            elif old.state in CONNECTED:
                if old.state != "active":
                    old.state = "active"
                    self._flush(old)
                self._send(addr, Packet(c.CONNACK, return_code=c.ACCEPTED))
            return
        if old is not None:
            self._drop(old)
        existing = self.by_id.get(client_id)
        if existing is not None and existing.state != "gone":
            if not p.clean_session and existing.state in CONNECTED and not p.will:
                self._resume(existing, addr, p)
                return
            self._drop(existing)
        cl = Client(addr, client_id, p.duration, p.clean_session)
        self.by_addr[addr] = cl
        self.by_id[client_id] = cl
        if p.will:
            cl.state = "will-topic"
            self._send(addr, Packet(c.WILLTOPICREQ))
        else:
            self._connect_broker(cl)

    def _resume(self, cl: Client, addr, p: Packet) -> None:
        """A persistent client connects again while its session is here (it moved, or
        woke with CONNECT): same broker session, same topic ids, but the new connection
        has learnt none of them, and what was in flight goes out again."""
        if self.by_addr.get(cl.addr) is cl:
            del self.by_addr[cl.addr]
        cl.addr = addr
        cl.keepalive = p.duration
        cl.state = "active"
        cl.last_seen = time.monotonic()
        cl.known.clear()
        cl.registering.clear()
        again = [out.msg for key, out in sorted(cl.inflight.items(), key=lambda kv: kv[1].due)
                 if out.packet.type == c.PUBLISH and out.msg is not None]
        cl.inflight = {k: v for k, v in cl.inflight.items() if v.packet.type == c.PUBREL}
        cl.queue.extendleft(reversed(again))
        self.by_addr[addr] = cl
        self._send(addr, Packet(c.CONNACK, return_code=c.ACCEPTED))
        self._flush(cl)

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
        try:
            validate_topic(p.will_topic)
        except UsageError as exc:
            self.log(f"client {cl.client_id!r}: will refused: {exc}")
            self._send(cl.addr, Packet(c.CONNACK, return_code=c.NOT_SUPPORTED))
            self._forget(cl)
            return
        cl.will = Will(p.will_topic, b"", max(0, p.qos), p.retain)
        cl.state = "will-msg"
        self._send(cl.addr, Packet(c.WILLMSGREQ))

    def _on_willmsg(self, cl: Client, p: Packet) -> None:
        if cl.state != "will-msg":
            return
        cl.will.payload = p.will_msg
        self._connect_broker(cl)

    def _topic_of(self, cl: Client | None, tt: int, tid: int) -> str | None:
        """The topic name a PUBLISH's topic id means, or None (unknown, or not a valid
        topic name: e.g. a short topic with a wildcard, a NUL or bytes that are not UTF-8)."""
        if tt == c.NORMAL:
            return cl.names.get(tid) if cl is not None else None
        if tt == c.PREDEFINED:
            return self.cfg.predefined.get(tid)
        if tt == c.SHORT:
            name = _short_topic(tid)
            if name is None:
                return None
            try:
                return validate_topic(name)
            except UsageError:
                return None
        return None

    def _on_register(self, cl: Client, p: Packet) -> None:
        if cl.state not in CONNECTED:
            self._send(cl.addr, Packet(c.REGACK, topic_id=0, msg_id=p.msg_id, return_code=c.CONGESTION))
            return
        name = p.topic_name
        try:
            validate_topic(name)
        except UsageError as exc:
            self.log(f"client {cl.client_id!r}: REGISTER refused: {exc}")
            self._send(cl.addr, Packet(c.REGACK, topic_id=0, msg_id=p.msg_id, return_code=c.NOT_SUPPORTED))
            return
        tid = cl.topic_id_for(name)
        cl.known.add(tid)
        self._send(cl.addr, Packet(c.REGACK, topic_id=tid, msg_id=p.msg_id, return_code=c.ACCEPTED))

    def _refuse_publish(self, addr, p: Packet, code: int) -> None:
        self._send(addr, Packet(c.PUBACK, topic_id=p.topic_id, msg_id=p.msg_id, return_code=code))

    def _on_publish(self, cl: Client, p: Packet) -> None:
        if cl.state in ("will-topic", "will-msg", "connecting"):
            self._refuse_publish(cl.addr, p, c.CONGESTION)  # not connected yet
            return
        if cl.state not in ("active", "awake"):
            self._send(cl.addr, Packet(c.DISCONNECT))
            return
        topic = self._topic_of(cl, p.topic_id_type, p.topic_id)
        if topic is None:
            self.log(f"client {cl.client_id!r}: PUBLISH to unknown topic id {p.topic_id} "
                     f"({c.TOPIC_ID_TYPES.get(p.topic_id_type, 'reserved')}): answered 'invalid topic ID'")
            self._refuse_publish(cl.addr, p, c.INVALID_TOPIC_ID)
            return
        qos = p.qos
        if qos == 1 and p.dup:
            if p.msg_id in cl.q1_pending:
                return  # the broker has not acknowledged it yet: its PUBACK follows
            tid = cl.q1_done.get(p.msg_id)
            if tid is not None:  # our PUBACK was lost: answered again, not published again
                self._send(cl.addr, Packet(c.PUBACK, topic_id=tid, msg_id=p.msg_id, return_code=c.ACCEPTED))
                return
        if qos == 2 and cl.q2_in.get(p.msg_id) == "done":
            self._send(cl.addr, Packet(c.PUBREC, msg_id=p.msg_id))
            return
        if cl.mqtt is None or not cl.broker_up:
            self._refuse_publish(cl.addr, p, c.CONGESTION)  # the broker is away: refused, not dropped
            return
        if qos == 2:
            # exactly once: published once per msg id, PUBREC once the broker has it
            # (its PUBCOMP); a DUP before that is ignored, after it answered again
            if p.msg_id not in cl.q2_in:
                mid = cl.mqtt.publish(topic, p.data, 2, p.retain)
                cl.q2_in[p.msg_id] = "sent"
                cl.puback_for[mid] = (p.msg_id, -1)
        elif qos == 1:
            cl.q1_done.pop(p.msg_id, None)
            mid = cl.mqtt.publish(topic, p.data, 1, p.retain)
            cl.puback_for[mid] = (p.msg_id, p.topic_id)
            cl.q1_pending[p.msg_id] = mid
        else:
            cl.mqtt.publish(topic, p.data, 0, p.retain)
        self.dirty.add(cl)  # written once the burst of datagrams is read

    def _publish_qos_minus_one(self, addr, p: Packet) -> None:
        """QoS -1: no connection, only predefined and short topics. What cannot be
        forwarded is refused with a PUBACK naming why (the specification's PUBACK in
        case of an error), so a sender can tell."""
        if p.topic_id_type == c.NORMAL:
            self.log(f"refused a QoS -1 PUBLISH from {_fmt(addr)}: a normal topic id needs a connection")
            self._refuse_publish(addr, p, c.INVALID_TOPIC_ID)
            return
        topic = self._topic_of(None, p.topic_id_type, p.topic_id)
        if topic is None:
            self.log(f"refused a QoS -1 PUBLISH from {_fmt(addr)} to topic id {p.topic_id} "
                     f"({c.TOPIC_ID_TYPES.get(p.topic_id_type, 'reserved')}): unknown, or not a valid topic name")
            self._refuse_publish(addr, p, c.INVALID_TOPIC_ID)
            return
        if self.upstream is None or not self.upstream_up:
            self.log(f"refused a QoS -1 PUBLISH from {_fmt(addr)} to {topic!r}: the broker is not connected")
            self._refuse_publish(addr, p, c.CONGESTION)
            return
        try:
            self.upstream.publish(topic, p.data, 0, p.retain)
            self.upstream.step(False, True)
        except IotctlError as exc:
            self._refuse_publish(addr, p, c.CONGESTION)
            self._upstream_lost(exc.why or exc.what)

    def _on_pubrel(self, cl: Client, p: Packet) -> None:
        cl.q2_in.pop(p.msg_id, None)
        self._send(cl.addr, Packet(c.PUBCOMP, msg_id=p.msg_id))

    def _on_ack(self, cl: Client, p: Packet) -> None:
        """PUBACK, PUBREC, PUBCOMP for our PUBLISHes; REGACK for our REGISTERs."""
        t = p.type
        out = cl.inflight.pop((t, p.msg_id), None)
        if t == c.PUBREC:
            if out is not None:
                self._ack_broker(cl, out.msg)  # the client has it: the broker may let it go
            if out is not None or (c.PUBCOMP, p.msg_id) in cl.inflight:
                cl.inflight.pop((c.PUBCOMP, p.msg_id), None)
                self._request(cl, Packet(c.PUBREL, msg_id=p.msg_id), c.PUBCOMP, p.msg_id)
        elif t == c.PUBACK and out is None and p.return_code != c.ACCEPTED:
            # a refusal of a QoS 2 PUBLISH comes as PUBACK too
            out = cl.inflight.pop((c.PUBREC, p.msg_id), None)
            if out is not None:
                self._refused_by_client(cl, out, p.return_code)
        elif t == c.PUBACK and out is not None:
            if p.return_code == c.ACCEPTED:
                self._ack_broker(cl, out.msg)
            else:
                self._refused_by_client(cl, out, p.return_code)
        elif t == c.REGACK and out is not None:
            topic = out.topic
            cl.registering.pop(topic, None)
            if p.return_code == c.ACCEPTED:
                cl.known.add(out.packet.topic_id)
            else:
                self.log(f"client {cl.client_id!r} refused REGISTER of {topic!r}: dropping its messages")
                keep = collections.deque()
                for m in cl.queue:
                    if m.address == topic:
                        self._ack_broker(cl, m)
                    else:
                        keep.append(m)
                cl.queue = keep
        self._flush(cl)

    def _refused_by_client(self, cl: Client, out: _Out, code: int) -> None:
        tid = out.packet.topic_id
        if code == c.INVALID_TOPIC_ID and out.packet.topic_id_type == c.NORMAL and out.msg is not None:
            # it has not learnt that id (a lost SUBACK, a new connection): REGISTER, then again
            cl.known.discard(tid)
            cl.queue.appendleft(out.msg)
            return
        self.log(f"client {cl.client_id!r} refused a PUBLISH to topic id {tid}: "
                 f"{c.RETURN_CODES.get(code, code)}: dropped")
        self._ack_broker(cl, out.msg)

    def _suback(self, cl: Client, msg_id: int, suback: Packet) -> None:
        cl.subacks[msg_id] = suback
        if len(cl.subacks) > 64:
            cl.subacks.popitem(last=False)
        self._send(cl.addr, suback)

    def _on_subscribe(self, cl: Client, p: Packet) -> None:
        if p.dup and p.msg_id in cl.subacks:  # our SUBACK was lost: the same answer again
            self._send(cl.addr, cl.subacks[p.msg_id])
            return
        if any(v[0] == p.msg_id for v in cl.suback_for.values()):
            return  # a retransmission of one being subscribed: its SUBACK is coming
        if cl.state not in ("active", "awake") or cl.mqtt is None or not cl.broker_up:
            # not connected yet (a will being set up), asleep, or the broker is away
            self._send(cl.addr, Packet(c.SUBACK, qos=0, topic_id=0, msg_id=p.msg_id, return_code=c.CONGESTION))
            return
        tt = p.topic_id_type
        qos = max(0, p.qos)
        tid = 0
        if tt == c.NORMAL:
            name = p.topic_name
            try:
                validate_filter(name)
            except UsageError as exc:  # the broker would close the connection over it
                self.log(f"client {cl.client_id!r}: SUBSCRIBE refused: {exc}")
                self._send(cl.addr, Packet(c.SUBACK, qos=0, topic_id=0, msg_id=p.msg_id,
                                           return_code=c.NOT_SUPPORTED))
                return
            if "+" not in name and "#" not in name:
                tid = cl.topic_id_for(name)
        else:
            name = self._topic_of(cl, tt, p.topic_id) if tt != c.SHORT else _short_topic(p.topic_id)
            if name is not None and tt == c.SHORT:
                try:
                    validate_filter(name)
                except UsageError:
                    name = None
            if name is None:
                self._send(cl.addr, Packet(c.SUBACK, qos=0, topic_id=p.topic_id, msg_id=p.msg_id,
                                           return_code=c.INVALID_TOPIC_ID))
                return
            tid = p.topic_id
            if tt == c.SHORT:
                cl.shorts.add(name)
        try:
            mid = cl.mqtt.subscribe_request([Subscription(name, qos)])
        except IotctlError as exc:
            self.log(f"client {cl.client_id!r}: cannot subscribe to {name!r}: {exc.why}")
            self._send(cl.addr, Packet(c.SUBACK, qos=0, topic_id=0, msg_id=p.msg_id, return_code=c.NOT_SUPPORTED))
            return
        cl.subs[name] = qos
        cl.unsubscribed.discard(name)
        cl.suback_for[mid] = (p.msg_id, tid, name, qos)
        self.dirty.add(cl)

    def _on_unsubscribe(self, cl: Client, p: Packet) -> None:
        name = p.topic_name if p.topic_id_type == c.NORMAL else self._topic_of(cl, p.topic_id_type, p.topic_id)
        if name:
            if name in cl.subs:
                del cl.subs[name]
                if cl.mqtt is not None and cl.broker_up:
                    cl.mqtt.unsubscribe(name)
                    self.dirty.add(cl)
                else:
                    cl.unsubscribed.add(name)
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
        if p.duration and cl.state in CONNECTED:
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


def _bad_client_id(client_id: str) -> str | None:
    """Why a CONNECT's client id cannot become an MQTT client id, or None."""
    if not client_id:
        return "an empty client id (MQTT-SN needs 1 to 23 characters)"
    if "\0" in client_id:
        return "a client id with a NUL character"
    return None


def _fmt(addr) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _interrupt(signum, frame):
    raise KeyboardInterrupt

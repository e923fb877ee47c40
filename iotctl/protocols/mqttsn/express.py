"""The express lane for `iotctl mqttsn pub` of one message (see iotctl/express.py):
the normal path's client (client.SnClient and Publisher on the send driver) for one
message, without click: CONNECT, REGISTER (a topic name) or a predefined (-T) or
two-character short topic, PUBLISH at QoS -1, 0, 1 or 2, DISCONNECT, over a plain UDP
socket with the normal path's codec (codec.py). Every request is sent again every
--retry-interval, at most --retries times (twice in a row, a PUBLISH with DUP), -W
bounds the wait for the acknowledgement, and QoS 0 and -1 end with the same round
trip (PINGREQ, or SEARCHGW at QoS -1) that tells a refusal or an absent gateway.

Only -h, -p, -t, -T, -q, -r, -i, -k, -W, --retry-interval, --retries, MESSAGE, -m,
--null and --quiet; anything else (a will, --sleep, -c, -l, -f, a URL, ...) goes the
normal way. Its output, errors and exit statuses are the normal path's:
tests/protocols/test_mqttsn_express.py compares both against `iotctl mqttsn gateway`.
"""

from __future__ import annotations

import os
import sys
import time

from iotctl.express import Options, error, integer, positive, run_lane, status

OPTIONS = Options({
    "-h": ("host", "value"), "--host": ("host", "value"),
    "-p": ("port", "value"), "--port": ("port", "value"),
    "-t": ("topic", "value"), "--topic": ("topic", "value"),
    "-T": ("topic_id", "value"), "--topic-id": ("topic_id", "value"),
    "-q": ("qos", "value"), "--qos": ("qos", "value"),
    "-r": ("retain", "flag"), "--retain": ("retain", "flag"),
    "-i": ("client_id", "value"), "--client-id": ("client_id", "value"),
    "-k": ("keepalive", "value"), "--keepalive": ("keepalive", "value"),
    "-W": ("timeout", "value"), "--timeout": ("timeout", "value"),
    "--retry-interval": ("retry_interval", "value"), "--retries": ("retries", "value"),
    "-m": ("message", "value"), "--message": ("message", "value"),
    "--null": ("null", "flag"), "--quiet": ("quiet", "flag"),
}, positional="message_arg")

NOTE = " (--failed FILE keeps what was not acknowledged)"
GATEWAY_HINT = "is an MQTT-SN gateway listening there (iotctl mqttsn gateway)?"
START_HINT = "start one: iotctl mqttsn gateway --broker mqtt://127.0.0.1"
QOS_M1_GRACE = 0.3  # client.QOS_M1_GRACE
LIMIT = 65507 - 9   # client.payload_limit() over IPv4 (the smaller)
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.")


class _Fail(Exception):
    """An error of the normal path: exit status, what, why, hint."""

    def __init__(self, code: int, what: str, why: str, hint: str | None = None):
        super().__init__(what)
        self.code, self.what, self.why, self.hint = code, what, why, hint


def pub(argv: list[str]) -> int | None:
    return run_lane(argv, ("pub", "publish"), OPTIONS, _job, _publish)


def _job(v: dict):
    """The validated settings, or None (the normal path then says what is wrong)."""
    topic, predefined = v.get("topic"), v.get("topic_id")
    if (topic is None) == (predefined is None):
        return None
    qos = {"-1": -1, "0": 0, "1": 1, "2": 2}.get(v.get("qos", "0"))
    if qos is None:
        return None
    if predefined is not None:
        predefined = integer(predefined, 1, 65534)
        if predefined is None:
            return None
    else:
        try:
            raw = topic.encode("utf-8")
        except UnicodeEncodeError:
            return None
        if not topic or "\0" in topic or "+" in topic or "#" in topic or len(raw) > 65535:
            return None
        if qos == -1 and len(raw) != 2:
            return None
    given = [k for k in ("message", "message_arg", "null") if k in v]
    if len(given) != 1:
        return None
    payload = b"" if given[0] == "null" else v[given[0]].encode("utf-8", "surrogateescape")
    if len(payload) > LIMIT:
        return None
    host = v.get("host", "127.0.0.1")
    if not host or not set(host) <= _HOST_CHARS:
        return None
    port = integer(v.get("port", "1883"), 1, 65535)
    keepalive = integer(v.get("keepalive", "60"), 0, 65535)
    retries = integer(v.get("retries", "5"), 0, 100)
    timeout = positive(v.get("timeout", "10"))
    retry_interval = positive(v.get("retry_interval", "2.0"))
    if None in (port, keepalive, retries, timeout, retry_interval) or retry_interval < 0.01:
        return None
    client_id = v.get("client_id") or f"iotctl-{os.getpid()}-{os.urandom(3).hex()}"
    try:
        client_id.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return (host, port, client_id, keepalive, retry_interval, retries, topic, predefined, qos,
            bool(v.get("retain")), payload, timeout, bool(v.get("quiet")))


class _Out:
    __slots__ = ("packet", "raw", "due", "tries", "what")

    def __init__(self, packet, raw: bytes, due: float, what: str):
        self.packet, self.raw, self.due, self.tries, self.what = packet, raw, due, 0, what


class _Client:
    """client.SnClient, for one publisher's message."""

    def __init__(self, sock, peer: str, client_id: str, keepalive: int, retry_interval: float, retries: int):
        from iotctl.protocols.mqttsn import codec

        self.c = codec
        self.sock, self.peer, self.client_id = sock, peer, client_id
        self.keepalive, self.retry_interval, self.retries = keepalive, retry_interval, retries
        self.connected = False
        self.msg_id = 0
        self.pending: dict = {}
        self.replies: dict = {}
        self.acked: set = set()
        self.refused: dict = {}
        self.refused_unnumbered: list = []
        self.last_sent = time.monotonic()
        self.ping_out = None
        self.disconnected_by_gateway = False
        self.pingresps = self.gwinfos = 0
        self.topic = 0  # the topic id published to

    def next_msg_id(self) -> int:
        self.msg_id = self.msg_id % 0xFFFF + 1
        return self.msg_id

    def send(self, p, raw: bytes | None = None) -> None:
        if raw is None:
            raw = self.c.encode(p)
        try:
            self.sock.send(raw)
        except BlockingIOError:
            import select

            select.select([], [self.sock], [], 1.0)
            self._send_again(raw)
        except ConnectionRefusedError:
            raise self._refused() from None
        except OSError as exc:
            raise _Fail(3, f"cannot send to gateway {self.peer}", exc.strerror or str(exc)) from None
        self.last_sent = time.monotonic()

    def _send_again(self, raw: bytes) -> None:
        try:
            self.sock.send(raw)
        except ConnectionRefusedError:
            raise self._refused() from None
        except OSError as exc:
            raise _Fail(3, f"cannot send to gateway {self.peer}", exc.strerror or str(exc)) from None

    def _refused(self) -> _Fail:
        return _Fail(3, f"cannot reach gateway {self.peer}", "port unreachable (nothing listens there)", START_HINT)

    def request(self, p, answer: int, msg_id: int = 0, what: str | None = None) -> None:
        raw = self.c.encode(p)
        self.pending[(answer, msg_id)] = _Out(p, raw, time.monotonic() + self.retry_interval, what or p.name)
        self.send(p, raw)

    def transact(self, p, answer: int, msg_id: int = 0):
        self.request(p, answer, msg_id)
        key = (answer, msg_id)
        while key not in self.replies:
            self.pump(self.retry_interval)
        return self.replies.pop(key)

    def pump(self, wait: float) -> None:
        import select

        now = time.monotonic()
        due = now + max(0.0, wait)
        for out in self.pending.values():
            due = min(due, out.due)
        pinging = self.connected and self.keepalive
        if pinging:
            due = min(due, self.last_sent + self.keepalive)
        try:
            readable, _, _ = select.select([self.sock], [], [], max(0.0, due - now))
        except InterruptedError:
            readable = []
        if readable:
            self._read_all()
        self._retransmit()
        if pinging and self.ping_out is None and time.monotonic() - self.last_sent >= self.keepalive:
            self.ping()

    def ping(self) -> None:
        c = self.c
        self.request(c.Packet(c.PINGREQ), c.PINGRESP)
        self.ping_out = self.pending[(c.PINGRESP, 0)]

    def _read_all(self) -> None:
        c = self.c
        for _ in range(1000):
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                raise self._refused() from None
            except OSError as exc:
                raise _Fail(3, f"cannot read from gateway {self.peer}", exc.strerror or str(exc)) from None
            try:
                p = c.decode(data)
            except c.CodecError as exc:
                sys.stderr.write(f"iotctl: warning: ignored a bad datagram from {self.peer}: {exc}\n")
                sys.stderr.flush()
                continue
            self._handle(p)

    def _retransmit(self) -> None:
        c = self.c
        now = time.monotonic()
        for key, out in list(self.pending.items()):
            if out.due > now:
                continue
            if out.tries >= self.retries:
                del self.pending[key]
                if key == (c.PINGRESP, 0):
                    self.ping_out = None
                raise _Fail(5, f"no {c.NAMES[key[0]]} from the gateway {self.peer}",
                            f"{out.what} sent {out.tries + 1} times, {self.retry_interval:g} s apart", GATEWAY_HINT)
            out.tries += 1
            out.due = now + self.retry_interval
            p = out.packet
            if p.type == c.PUBLISH and not p.fields.get("dup"):
                p.fields["dup"] = True
                out.raw = c.encode(p)
            self.send(p, out.raw)
            self.send(p, out.raw)

    def _handle(self, p) -> None:
        c = self.c
        t = p.type
        if t in (c.PUBACK, c.PUBCOMP):
            msg_id = p.msg_id
            if t == c.PUBACK and p.return_code != c.ACCEPTED:
                reason = c.RETURN_CODES.get(p.return_code, f"return code {p.return_code}")
                out = self.pending.pop((c.PUBACK, msg_id), None) or self.pending.pop((c.PUBREC, msg_id), None)
                if out is None:
                    if msg_id == 0:
                        self.refused_unnumbered.append((p.topic_id, reason))
                    return
                self.refused[msg_id] = reason
                return
            if self.pending.pop((t, msg_id), None) is not None:
                self.acked.add(msg_id)
        elif t == c.PUBREC:
            if self.pending.pop((c.PUBREC, p.msg_id), None) is not None or (c.PUBCOMP, p.msg_id) in self.pending:
                self.request(c.Packet(c.PUBREL, msg_id=p.msg_id), c.PUBCOMP, p.msg_id)
        elif t == c.PUBREL:
            self.send(c.Packet(c.PUBCOMP, msg_id=p.msg_id))
        elif t == c.REGISTER:
            self.send(c.Packet(c.REGACK, topic_id=p.topic_id, msg_id=p.msg_id, return_code=c.ACCEPTED))
        elif t == c.PINGRESP:
            self.pending.pop((c.PINGRESP, 0), None)
            self.ping_out = None
            self.pingresps += 1
        elif t == c.GWINFO:
            self.gwinfos += 1
        elif t == c.DISCONNECT:
            if self.pending.pop((c.DISCONNECT, 0), None) is not None:
                self.replies[(c.DISCONNECT, 0)] = p
            else:
                self.disconnected_by_gateway = True
                self.connected = False
        elif t == c.PINGREQ:
            self.send(c.Packet(c.PINGRESP))
        elif t != c.PUBLISH:  # a publisher subscribes to nothing: a PUBLISH would be a gateway's mistake
            msg_id = p.fields.get("msg_id", 0) if t in (c.REGACK, c.SUBACK, c.UNSUBACK) else 0
            if self.pending.pop((t, msg_id), None) is not None:
                self.replies[(t, msg_id)] = p

    def connect(self) -> None:
        c = self.c
        if len(self.client_id.encode()) > 23:
            sys.stderr.write(f"iotctl: warning: client id {self.client_id!r} is longer than the 23 octets "
                             "MQTT-SN v1.2 allows\n")
            sys.stderr.flush()
        p = c.Packet(c.CONNECT, will=False, clean_session=True, protocol_id=c.PROTOCOL_ID,
                     duration=self.keepalive, client_id=self.client_id)
        connack = self.transact(p, c.CONNACK)
        if connack.return_code != c.ACCEPTED:
            raise _Fail(6, f"cannot connect to gateway {self.peer}",
                        f"the gateway answered {c.RETURN_CODES.get(connack.return_code, connack.return_code)}")
        self.connected = True

    def disconnect(self) -> None:
        if not self.connected:
            return
        c = self.c
        self.connected = False
        try:
            self.send(c.Packet(c.DISCONNECT))
            end = time.monotonic() + min(self.retry_interval, 1.0)
            self.pending.clear()
            self.pending[(c.DISCONNECT, 0)] = _Out(c.Packet(c.DISCONNECT), b"", end + 3600, "DISCONNECT")
            while (c.DISCONNECT, 0) not in self.replies and time.monotonic() < end:
                self.pump(end - time.monotonic())
        except _Fail:
            pass


def _publish(host, port, client_id, keepalive, retry_interval, retries, topic, predefined, qos, retain, payload,
             timeout, quiet) -> int | None:
    import _socket as socket  # socket.py's wrappers (selectors, enums) are start-up time this lane saves

    try:
        socket.inet_pton(socket.AF_INET, host)
        family, address = socket.AF_INET, (host, port)  # what getaddrinfo gives, without the idna codec
    except OSError:
        try:
            family, _, _, _, address = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
        except (OSError, UnicodeError):
            return None  # the normal path says why
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError:
        return None
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        return None
    sock.setblocking(False)
    client = _Client(sock, f"{host}:{port}", client_id, keepalive, retry_interval, retries)
    sent = 0
    sending = False  # connected: the send driver's part (its own interrupted line)
    try:
        if qos >= 0:
            try:
                client.connect()
            except _Fail as exc:
                sock.close()
                error(exc.what, exc.why, exc.hint)
                return exc.code
        sending = True
        try:
            key = _send(client, topic, predefined, qos, retain, payload)
            sent = 1
            reason = _acknowledged(client, key, qos, timeout)
        except _Fail as exc:
            client.disconnect()
            sock.close()
            error(exc.what, f"{exc.why}; sent {sent}, acknowledged 0{NOTE}", exc.hint)
            return exc.code
        client.disconnect()
        sock.close()
    except KeyboardInterrupt:  # as the send driver (connected) and cli.main (before) say it
        try:
            client.disconnect()
        except KeyboardInterrupt:
            pass
        sock.close()
        if sending:
            error("publish interrupted", f"sent {sent}, acknowledged 0{NOTE}")
        else:
            sys.stderr.write("\n")  # the line after the terminal's ^C, as on the normal path
            error("interrupted")
        return 130
    if reason is not None:
        error("publish", f"the gateway refused 1 message(s): {reason}; sent 1, acknowledged 0, refused 1{NOTE}")
        return 6
    status("published 1 message(s)", quiet)
    return 0


def _send(client: _Client, topic, predefined, qos: int, retain: bool, payload: bytes):
    """Publisher.send: the topic (REGISTER once), the PUBLISH; the window's key."""
    c = client.c
    if predefined is not None:
        kind, tid = c.PREDEFINED, predefined
    elif len(topic.encode("utf-8")) == 2:
        kind, tid = c.SHORT, c.short_id(topic)
    else:
        msg_id = client.next_msg_id()
        regack = client.transact(c.Packet(c.REGISTER, topic_id=0, msg_id=msg_id, topic_name=topic), c.REGACK, msg_id)
        if regack.return_code != c.ACCEPTED:
            raise _Fail(6, f"cannot register topic {topic!r}",
                        f"the gateway answered {c.RETURN_CODES.get(regack.return_code, regack.return_code)}")
        kind, tid = c.NORMAL, regack.topic_id
    client.topic = tid
    msg_id = client.next_msg_id() if qos in (1, 2) else 0
    p = c.Packet(c.PUBLISH, qos=qos, retain=retain, topic_id_type=kind, topic_id=tid, msg_id=msg_id, data=payload)
    if qos in (1, 2):
        client.request(p, c.PUBACK if qos == 1 else c.PUBREC, msg_id, "PUBLISH")
        return msg_id
    client.send(p)
    return None


def _acknowledged(client: _Client, key, qos: int, timeout: float) -> str | None:
    """The send window's drain for one message (send.Window, Publisher.pump): None once
    acknowledged, the reason when refused; _Fail when nothing comes within -W (or the
    client gives up sending a request again)."""
    c = client.c
    since = time.monotonic()
    barrier = None  # QoS 0/-1: (answers before the round trip, its deadline)
    settled = []

    def pump(wait: float) -> None:
        nonlocal barrier
        if qos > 0:
            client.pump(wait)
        else:
            if barrier is None and not settled:
                if qos == -1:
                    before = client.gwinfos
                    client.send(c.Packet(c.SEARCHGW, radius=0))
                    barrier = (before, time.monotonic() + QOS_M1_GRACE)
                else:
                    before = client.pingresps
                    client.ping()
                    barrier = (before, float("inf"))
            if barrier is not None:
                wait = min(wait, max(0.0, barrier[1] - time.monotonic()))
            client.pump(wait)
            for tid, reason in client.refused_unnumbered:
                if tid == client.topic and not settled:
                    settled.append(reason)
            if barrier is not None:
                answered = client.gwinfos if qos == -1 else client.pingresps
                if answered > barrier[0] or time.monotonic() >= barrier[1]:
                    barrier = None
                    if not settled:
                        settled.append(None)
        if client.disconnected_by_gateway:
            raise _Fail(3, f"gateway {client.peer}", "the gateway ended the session (DISCONNECT)")

    def outcome():
        if qos > 0:
            if key in client.acked:
                return [None]
            if key in client.refused:
                return [client.refused[key]]
            return []
        return settled

    while True:
        done = outcome()
        if done:
            return done[0]
        if time.monotonic() - since > timeout:
            pump(0.0)  # an acknowledgement may have come meanwhile: look before giving up
            done = outcome()
            if done:
                return done[0]
            raise _Fail(5, "publish", f"1 message(s) not acknowledged within {timeout:g} s")
        pump(min(1.0, max(0.0, timeout - (time.monotonic() - since))))

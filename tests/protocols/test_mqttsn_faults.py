"""MQTT-SN faults and hostile input, end to end against real peers: persistent sessions
that resume exactly, topic ids never used before the client learnt them, a broker
restart under a running gateway (a Mosquitto of the test's own, never the shared one),
a link that loses every 4th datagram, a gateway that goes away under a subscriber,
pauses in -l input, hostile datagrams and a bounded fuzzer. Every gateway here listens
on a UDP port the system chooses (-p 0)."""

from __future__ import annotations

import json
import os
import random
import re
import select
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from iotctl.protocols.mqttsn import codec as c
from iotctl.protocols.mqttsn.codec import Packet
from tests.helpers import Running, clean_env, exits_when_its_reader_goes, free_port, wait_port, wait_until
from tests.protocols.test_mqttsn import MosqSub, Proc, _iotctl, searchgw

PRIVATE = "mqtt://127.0.0.1:11883"  # the private listener: max_queued_messages 0


class Gw(Proc):
    """`iotctl mqttsn gateway -p PORT` (0: the system chooses; read from its status line)."""

    def __init__(self, *extra, broker: str = "mqtt://127.0.0.1:1883", port: int = 0):
        super().__init__(_iotctl("mqttsn", "gateway", "-p", port, "--broker", broker, *extra))
        self.wait_err("gateway listening on udp")
        self.port = int(re.search(r"listening on udp 127\.0\.0\.1:(\d+)", self.stderr).group(1))

    def stop(self) -> None:
        assert self.interrupt() == 0, self.stderr[-3000:]
        assert "Traceback" not in self.stderr, self.stderr[-3000:]


class OwnBroker:
    """A Mosquitto of this test's own on a free TCP port, with persistence in a temporary
    folder: the test may stop and start it (the shared brokers are never restarted)."""

    def __init__(self, folder):
        self.port = free_port(socket.SOCK_STREAM)
        self.dir = folder
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence true",
                 f"persistence_location {self.dir}/", "max_queued_messages 0"]
        if os.geteuid() == 0:
            lines.insert(0, "user root")  # its files are in a folder root owns
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.dir / "mosquitto.log", "ab")
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=log, stderr=log)
        log.close()
        wait_port("127.0.0.1", self.port, 10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def own_broker(tmp_path):
    broker = OwnBroker(tmp_path / "mosquitto")
    yield broker
    broker.stop()


@pytest.fixture
def gw(peer):
    peer("mosquitto")
    g = Gw()
    yield g
    g.stop()


@pytest.fixture
def private_gw(peer):
    peer("mosquitto-private")
    g = Gw(broker=PRIVATE)
    yield g
    g.stop()


def sn(port: int, *args) -> list[str]:
    return _iotctl("mqttsn", *args, "-p", port)


def run(iotctl_proc, port: int, *args, input: bytes | None = None, timeout: float = 60):
    """`iotctl mqttsn ARGS -p PORT` as a subprocess (a CompletedProcess)."""
    return iotctl_proc("mqttsn", *args, "-p", port, input=input, timeout=timeout)


def mosq_pub(topic: str, *args, port: int = 1883, input: bytes | None = None) -> None:
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, *args], input=input,
                   check=True, timeout=30)


def cid(what: str) -> str:
    return f"sn-{what}-{uuid.uuid4().hex[:8]}"


class Raw:
    """A hand-driven MQTT-SN client on its own UDP socket."""

    def __init__(self, port: int):
        self.addr = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(5)

    def send(self, p: Packet) -> None:
        self.sock.sendto(c.encode(p), self.addr)

    def recv(self, timeout: float = 5) -> Packet:
        self.sock.settimeout(timeout)
        return c.decode(self.sock.recv(65536))

    def expect(self, ptype: int, timeout: float = 5) -> Packet:
        end = time.monotonic() + timeout
        while True:
            p = self.recv(max(0.01, end - time.monotonic()))
            if p.type == ptype:
                return p

    def close(self) -> None:
        self.sock.close()


# --------------------------------------------------------------------------- issue 15: URLs and the shared layer


def test_url_source_and_sink_through_the_resolver(gw, topic):
    """mqttsn://host:port/TOPIC opens the same Subscriber and Publisher as the commands;
    URL options are the commands' long options, checked the same way."""
    from iotctl import resolver, send
    from iotctl.errors import UsageError
    from iotctl.message import Message

    base = f"mqttsn://127.0.0.1:{gw.port}"
    source = resolver.source(f"{base}/{topic}/%23?qos=1&client_id={cid('url')}&clean_session=false")
    assert (source.qos, source.cfg.clean_session, source.delivery) == (1, False, "at-least-once")
    with source:
        with resolver.sink(f"{base}/{topic}/a?qos=1&retain=false") as sink:
            assert sink.address == f"{topic}/a"  # where a message without an address of its own goes
            # a foreign message: only the payload and its address cross into MQTT-SN
            mqtt = Message("mqtt", f"{topic}/b", b"from mqtt", "application/json",
                           {"qos": 1, "properties": {"user_properties": [["k", "v"]], "correlation_data": "c"}})
            result = send.run(sink, [Message("", "", b"composed"), mqtt], "publish")
        assert (result.sent, result.acknowledged) == (2, 2)
        got: list = []
        wait_until(lambda: got.extend(source.poll(0.2)) or len(got) >= 2, 15, "two messages")
        assert [(m.protocol, m.address, m.payload, m.content_type) for m in got] == [
            ("mqttsn", f"{topic}/a", b"composed", None), ("mqttsn", f"{topic}/b", b"from mqtt", None)]
        assert set(got[0].meta) == {"qos", "retain", "topic_id", "topic_id_type"}
        source.ack(got)
        assert all(m.token is None for m in got)
    with pytest.raises(UsageError, match="qos: 3 is not in the range"):
        resolver.source(f"{base}/{topic}?qos=3")
    with pytest.raises(UsageError, match="unknown option 'colour'"):
        resolver.sink(f"{base}/{topic}?colour=red")
    with pytest.raises(UsageError, match="only a predefined id"):
        resolver.sink(f"{base}/{topic}?qos=-1")
    with pytest.raises(UsageError, match="wildcards"):
        resolver.sink(f"{base}/a/%23")
    assert resolver.sink(f"{base}?topic_id=7&qos=-1").predefined == 7


def test_receiver_acknowledges_exactly_the_messages_given(private_gw, topic):
    """Of two QoS 1 messages only the second is acknowledged: the first comes again to
    the persistent session, the second never does."""
    from iotctl import resolver

    url = f"mqttsn://127.0.0.1:{private_gw.port}/{topic}?qos=1&client_id={cid('exact')}&clean_session=false"
    with resolver.source(url):
        pass  # the persistent session exists
    mosq_pub(topic, "-q", "1", "-m", "one", port=11883)
    mosq_pub(topic, "-q", "1", "-m", "two", port=11883)
    with resolver.source(url) as source:
        got: list = []
        wait_until(lambda: got.extend(source.poll(0.2)) or len(got) >= 2, 15, "two messages")
        assert [m.payload for m in got] == [b"one", b"two"]
        source.ack(got[1:])
    with resolver.source(url) as source:
        again: list = []
        wait_until(lambda: again.extend(source.poll(0.2)) or again, 15, "the unacknowledged message")
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            again.extend(source.poll(0.2))
        assert [m.payload for m in again] == [b"one"]
        source.ack(again)


def test_replay_of_captures_into_mqttsn(iotctl_proc, gw, topic, tmp_path, predefined_file):
    """--replay: an MQTT capture (properties and all) sends its payload to its address;
    an MQTT-SN capture of a predefined topic goes to that predefined id again."""
    capture = tmp_path / "capture.jsonl"
    capture.write_text("\n".join(json.dumps(e) for e in [
        {"protocol": "mqtt", "address": f"{topic}/m", "payload": "21.5", "content_type": "text/plain",
         "meta": {"qos": 1, "retain": False, "properties": {"user_properties": [["a", "b"]]}}},
        {"protocol": "mqttsn", "address": "7", "payload": "pre", "meta": {"qos": 0, "topic_id": 7,
                                                                           "topic_id_type": "predefined"}},
    ]) + "\n")
    g = Gw("--predefined", predefined_file["file"])
    try:
        sub = MosqSub([f"{topic}/m", predefined_file[7]], 2)
        r = run(iotctl_proc, g.port, "pub", "--replay", str(capture), "-q", "1")
        assert r.returncode == 0, r.stderr
        assert sub.finish() == 0
        assert sub.messages() == [f"{topic}/m 21.5", f"{predefined_file[7]} pre"]
    finally:
        g.stop()


@pytest.fixture
def predefined_file(tmp_path):
    base = f"iotctl-test/sn-pre/{uuid.uuid4().hex[:8]}"
    path = tmp_path / "predefined.txt"
    path.write_text(f"7 {base}/seven\n")
    return {7: f"{base}/seven", "file": str(path)}


# --------------------------------------------------------------------------- issue 21 item 2: nothing lost on resume


def test_persistent_session_read_10_of_100_gets_the_other_90(iotctl_proc, private_gw, topic):
    """The gateway's broker session acknowledges only what its client acknowledged:
    a persistent session that printed 10 of 100 queued messages gets the other 90."""
    client = cid("resume")
    session = ("-t", topic, "-q", "1", "-i", client, "-c")
    r = run(iotctl_proc, private_gw.port, "sub", *session, "-W", "0.5")
    assert r.returncode == 5, r.stderr  # nothing yet; the session now exists
    mosq_pub(topic, "-q", "1", "-l", port=11883, input="".join(f"{i}\n" for i in range(100)).encode())
    first = run(iotctl_proc, private_gw.port, "sub", *session, "-C", "10", "-W", "20")
    assert first.returncode == 0, first.stderr
    assert first.stdout.decode().split() == [str(i) for i in range(10)]
    rest = run(iotctl_proc, private_gw.port, "sub", *session, "-C", "90", "-W", "30")
    assert rest.returncode == 0, rest.stderr
    assert rest.stdout.decode().split() == [str(i) for i in range(10, 100)]
    # and nothing more (no duplicate of what was printed and acknowledged)
    more = run(iotctl_proc, private_gw.port, "sub", *session, "-W", "1.5")
    assert more.returncode == 5 and more.stdout == b""


def test_sleeping_client_queue_is_bounded_and_says_so(peer, topic):
    peer("mosquitto")
    g = Gw("--max-queued", "5", "-v")
    try:
        sub = Proc(sn(g.port, "sub", "-t", topic, "-i", cid("sleeper"), "--sleep", "2", "-C", "5", "-W", "30",
                      "--idle-timeout", "6"))
        wait_until(lambda: "DISCONNECT duration=2" in g.stderr, 10, "the client going to sleep")
        for i in range(12):
            mosq_pub(topic, "-m", f"zz{i}")
        assert sub.finish() == 0, sub.stderr
        assert sub.stdout.split() == [f"zz{i}" for i in range(5)]
        wait_until(lambda: "were dropped while its queue was full" in g.stderr, 10, "the count of dropped ones")
        log = g.stderr
        assert "5 messages are queued for it (--max-queued): dropping what comes" in log
        assert "7 message(s) were dropped while its queue was full" in log
    finally:
        g.stop()


# --------------------------------------------------------------------------- issue 21 item 3: topic ids


def test_resume_30_times_never_loses_a_message(iotctl_proc, gw, topic):
    """The resume race (a PUBLISH with a topic id sent before the SUBACK that teaches
    it): 30 resumes of a persistent session, each gets what was published while away."""
    client = cid("race")
    session = ("-t", topic, "-q", "1", "-i", client, "-c")
    r = run(iotctl_proc, gw.port, "sub", *session, "-W", "0.3")
    assert r.returncode == 5
    for n in range(30):
        mosq_pub(topic, "-q", "1", "-m", f"away-{n}")
        again = run(iotctl_proc, gw.port, "sub", *session, "-C", "1", "-W", "20")
        assert (n, again.returncode, again.stdout) == (n, 0, f"away-{n}\n".encode()), again.stderr
        assert b"warning" not in again.stderr
    assert "invalid topic ID" not in gw.stderr


class EagerBroker:
    """A fake MQTT 3.1.1 broker that sends a PUBLISH matching a new subscription before
    its SUBACK, which MQTT permits ([MQTT-3.8.4-4]): the order a real broker produces,
    now and then, when a persistent session's queued message crosses a new SUBSCRIBE."""

    def __init__(self):
        self.srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.port = self.srv.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _packet(first: int, body: bytes) -> bytes:
        n, length = len(body), bytearray()
        while True:
            byte, n = n % 128, n // 128
            length.append(byte | (0x80 if n else 0))
            if not n:
                return bytes((first,)) + bytes(length) + body

    def _serve(self, conn: socket.socket):
        buf = b""
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while len(buf) >= 2:
                    n, mult, i = 0, 1, 1
                    while buf[i] & 0x80:
                        n += (buf[i] & 0x7F) * mult
                        mult *= 128
                        i += 1
                    n += buf[i] * mult
                    if len(buf) < i + 1 + n:
                        break
                    kind, body, buf = buf[0] >> 4, buf[i + 1:i + 1 + n], buf[i + 1 + n:]
                    if kind == 1:  # CONNECT
                        conn.sendall(b"\x20\x02\x00\x00")
                    elif kind == 8:  # SUBSCRIBE: a matching PUBLISH first, then the SUBACK
                        size = int.from_bytes(body[2:4], "big")
                        topic = body[4:4 + size]
                        conn.sendall(self._packet(0x30, len(topic).to_bytes(2, "big") + topic + b"eager"))
                        time.sleep(0.1)  # so the two are read apart
                        conn.sendall(self._packet(0x90, body[:2] + b"\x00"))
                    elif kind == 12:  # PINGREQ
                        conn.sendall(b"\xd0\x00")
                    elif kind == 14:  # DISCONNECT
                        return
        except OSError:
            return
        finally:
            conn.close()

    def close(self):
        self.srv.close()
        for conn in self.conns:
            try:
                conn.close()
            except OSError:
                pass


def test_no_publish_names_a_topic_id_before_the_client_learnt_it(iotctl_proc, topic):
    """A message that reaches the gateway between a client's SUBSCRIBE and the broker's
    SUBACK: the gateway REGISTERs its topic first (it used to PUBLISH with the id the
    SUBACK would teach, the client answered 'invalid topic ID' and the message was gone)."""
    broker = EagerBroker()
    g = Gw("-v", broker=f"mqtt://127.0.0.1:{broker.port}")
    raw = Raw(g.port)
    try:
        raw.send(Packet(c.CONNECT, clean_session=True, duration=30, client_id=cid("eager")))
        assert raw.expect(c.CONNACK).return_code == 0
        raw.send(Packet(c.SUBSCRIBE, qos=0, msg_id=1, topic_name=topic))
        learnt: set[int] = set()
        while True:
            p = raw.recv()
            if p.type == c.REGISTER:
                learnt.add(p.topic_id)
                raw.send(Packet(c.REGACK, topic_id=p.topic_id, msg_id=p.msg_id, return_code=0))
            elif p.type == c.SUBACK:
                learnt.add(p.topic_id)
            elif p.type == c.PUBLISH:
                assert p.topic_id in learnt, (p, learnt)
                assert p.data == b"eager"
                break
        raw.send(Packet(c.DISCONNECT))
        # and iotctl's own client prints it
        r = run(iotctl_proc, g.port, "sub", "-t", topic, "-C", "1", "-W", "10")
        assert (r.returncode, r.stdout, r.stderr.count(b"warning")) == (0, b"eager\n", 0), r.stderr
    finally:
        raw.close()
        g.stop()
        broker.close()


def test_a_subscribe_sent_again_gets_the_same_suback(gw, topic):
    """A client that did not get its SUBACK sends SUBSCRIBE again (DUP): the same SUBACK
    comes back, and no second broker subscription (no retained message twice)."""
    mosq_pub(topic, "-r", "-q", "1", "-m", "retained")
    raw = Raw(gw.port)

    def collect(seconds: float) -> list:
        got = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                p = raw.recv(0.1)
            except OSError:
                continue
            got.append(p)
            if p.type == c.PUBLISH:
                raw.send(Packet(c.PUBACK, topic_id=p.topic_id, msg_id=p.msg_id, return_code=0))
        return got

    try:
        raw.send(Packet(c.CONNECT, clean_session=True, duration=30, client_id=cid("dupsub")))
        assert raw.expect(c.CONNACK).return_code == 0
        raw.send(Packet(c.SUBSCRIBE, qos=1, msg_id=9, topic_name=topic))
        got = collect(0.7)
        raw.send(Packet(c.SUBSCRIBE, dup=True, qos=1, msg_id=9, topic_name=topic))
        got += collect(1.5)
        subacks = [p for p in got if p.type == c.SUBACK]
        assert len(subacks) == 2 and subacks[0] == subacks[1] and subacks[0].return_code == 0, got
        assert [p.data for p in got if p.type == c.PUBLISH] == [b"retained"], got
        raw.send(Packet(c.DISCONNECT))
    finally:
        raw.close()
        mosq_pub(topic, "-r", "-n")


# --------------------------------------------------------------------------- issue 21 item 4: the broker restarts


@pytest.mark.parametrize("qos", [0, 1])
def test_broker_restart_gateway_reconnects_keeps_sessions_and_refuses_meanwhile(iotctl_proc, own_broker, topic,
                                                                                 tmp_path, qos):
    g = Gw(broker=own_broker.url)
    try:
        client = cid("keep")
        sub = Proc(sn(g.port, "sub", "-t", topic, "-q", "1", "-i", client, "-c", "-v", "--no-reconnect"))
        sub.wait_err("subscribed to")
        clean = Proc(sn(g.port, "sub", "-t", topic, "-v", "--no-reconnect"))  # its broker session dies with the broker
        clean.wait_err("subscribed to")
        mosq_pub(topic, "-q", "1", "-m", "before", port=own_broker.port)
        sub.wait_out(f"{topic} before\n")
        # a publisher connected before the broker goes away; its second line comes during the outage
        failed = tmp_path / "failed.jsonl"
        pub = subprocess.Popen(f"(echo first; sleep 4; echo second) | {sys.executable} -m iotctl mqttsn pub "
                               f"-p {g.port} -t {topic} -l -q {qos} --failed {failed}", shell=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
        sub.wait_out(f"{topic} first\n")
        own_broker.stop()
        g.wait_err("lost its broker connection")
        g.wait_err("lost the gateway's own broker connection")
        # QoS -1 has no acknowledgement, but the gateway refuses and the sender hears it
        r = run(iotctl_proc, g.port, "pub", "-q", "-1", "-t", "zq", "-m", "lost?")
        assert r.returncode == 6, r.stderr
        assert b"the gateway refused 1 message(s): rejected: congestion" in r.stderr
        out, err = pub.communicate(timeout=30)
        assert pub.returncode == 6, err
        assert b"the gateway refused 1 message(s): rejected: congestion" in err
        assert [json.loads(line)["payload"] for line in failed.read_text().splitlines()] == ["second"]
        own_broker.start()
        g.wait_err("reconnected to the broker", timeout=30)
        g.wait_err("for QoS -1 publishes", timeout=30)
        # the MQTT-SN session was kept: the subscriber never noticed, and gets what comes now
        g.wait_err("subscribing again to 1 filter(s)", timeout=30)
        g.wait_err("(its session was kept)", timeout=30)
        # retained: the clean client gets it whether its SUBSCRIBE made again comes before or after
        mosq_pub(topic, "-q", "1", "-r", "-m", "after", port=own_broker.port)
        sub.wait_out(f"{topic} after\n")
        clean.wait_out(f"{topic} after\n")
        assert sub.proc.poll() is None and clean.proc.poll() is None, (sub.stderr, clean.stderr)
        r = run(iotctl_proc, g.port, "pub", "-q", "-1", "-t", "zq", "-m", "again")
        assert r.returncode == 0, r.stderr
        assert sub.interrupt() == 0 and clean.interrupt() == 0
        assert sub.stdout.splitlines() == [f"{topic} before", f"{topic} first", f"{topic} after"]
        assert clean.stdout.splitlines() == [f"{topic} before", f"{topic} first", f"{topic} after"]
    finally:
        g.stop()


def test_gateway_started_before_the_broker_outage_serves_new_clients_after(iotctl_proc, own_broker, topic):
    """While the broker is away a new client is refused (CONNACK 'congestion': exit 6),
    not left waiting; once it is back, new clients connect."""
    g = Gw(broker=own_broker.url)
    try:
        own_broker.stop()
        g.wait_err("lost the gateway's own broker connection")
        r = run(iotctl_proc, g.port, "pub", "-t", topic, "-m", "x", "-q", "1")
        assert r.returncode == 6, r.stderr
        assert b"the gateway answered rejected: congestion" in r.stderr
        own_broker.start()
        g.wait_err("for QoS -1 publishes", timeout=30)
        sub = MosqSub([topic], 1, port=own_broker.port)
        r = run(iotctl_proc, g.port, "pub", "-t", topic, "-m", "back", "-q", "1")
        assert r.returncode == 0, r.stderr
        assert sub.finish() == 0 and sub.messages() == [f"{topic} back"]
    finally:
        g.stop()


# --------------------------------------------------------------------------- issue 21 item 5: a lossy link


class EveryNth:
    """A UDP relay that drops every n-th datagram: one counter for both directions, or
    one per direction."""

    def __init__(self, target_port: int, n: int = 4, per_direction: bool = False):
        self.n, self.per_direction = n, per_direction
        self.count = [0, 0]
        self.target = ("127.0.0.1", target_port)
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.port = self.front.getsockname()[1]
        self.back: dict = {}
        self.client_of: dict = {}
        self.dropped = 0
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _drop(self, direction: int) -> bool:
        i = direction if self.per_direction else 0
        self.count[i] += 1
        if self.count[i] % self.n == 0:
            self.dropped += 1
            return True
        return False

    def _run(self):
        while self.running:
            r, _, _ = select.select([self.front, *self.client_of], [], [], 0.1)
            for s in r:
                try:
                    data, addr = s.recvfrom(65536)
                except OSError:
                    continue
                if s is self.front:
                    if self._drop(0):
                        continue
                    back = self.back.get(addr)
                    if back is None:
                        back = self.back[addr] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        back.bind(("127.0.0.1", 0))
                        self.client_of[back] = addr
                    back.sendto(data, self.target)
                elif not self._drop(1):
                    self.front.sendto(data, self.client_of[s])

    def close(self):
        self.running = False
        self.thread.join(5)
        for s in [self.front, *self.client_of]:
            s.close()


@pytest.mark.parametrize("per_direction", [False, True], ids=["one-counter", "per-direction"])
def test_every_fourth_datagram_lost_qos1_lines_all_arrive(iotctl_proc, gw, topic, per_direction):
    """`seq 1 300 | mqttsn pub -q 1 -l` through a relay dropping every 4th datagram: a
    duplicate PUBLISH is always answered (the gateway does not publish it twice), and
    a request sent again goes out twice, so no PUBLISH or PUBACK is lost on every try."""
    relay = EveryNth(gw.port, 4, per_direction)
    try:
        sub = MosqSub([topic], 300, qos=1)
        lines = "".join(f"{i}\n" for i in range(1, 301)).encode()
        r = run(iotctl_proc, relay.port, "pub", "-t", topic, "-q", "1", "-l", "--retry-interval", "0.5",
                input=lines, timeout=120)
        assert r.returncode == 0, r.stderr
        assert sub.finish(60) == 0
        assert sorted(sub.messages(), key=lambda m: int(m.split()[1])) == [f"{topic} {i}" for i in range(1, 301)]
        assert relay.dropped > 100
    finally:
        relay.close()


def test_every_fourth_datagram_lost_towards_a_subscriber(peer, topic):
    """The gateway's own retransmission, through the same relay: every QoS 1 message
    reaches the subscriber."""
    peer("mosquitto")
    g = Gw("--retry-interval", "0.5")
    relay = EveryNth(g.port, 4)
    try:
        sub = Proc(sn(relay.port, "sub", "-t", topic, "-q", "1", "--retry-interval", "0.5", "-W", "60",
                      "--idle-timeout", "5"))
        sub.wait_err("subscribed to")
        mosq_pub(topic, "-q", "1", "-l", input="".join(f"{i}\n" for i in range(200)).encode())
        assert sub.finish(90) == 0, sub.stderr
        assert set(sub.stdout.split()) == {str(i) for i in range(200)}
    finally:
        relay.close()
        g.stop()


# --------------------------------------------------------------------------- issue 21 items 6 and 10


def test_a_pause_in_lines_is_not_a_failure(gw, topic):
    """(echo a; sleep 12; echo b) | mqttsn pub -l: both delivered, exit 0, at QoS 0 and
    at QoS 1 with a keepalive shorter than the pause (the connection is kept alive)."""
    sub = MosqSub([f"{topic}/0", f"{topic}/1"], 4)
    pubs = [subprocess.Popen(f"(echo a; sleep 12; echo b) | {sys.executable} -m iotctl mqttsn pub -p {gw.port} "
                             f"-t {topic}/{q} -q {q} -l -k 3", shell=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=clean_env()) for q in (0, 1)]
    for p in pubs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert err == b""
    assert sub.finish() == 0
    assert sorted(sub.messages()) == sorted(f"{topic}/{q} {m}" for q in (0, 1) for m in "ab")
    assert "lost" not in gw.stderr


def test_subscribe_reconnects_to_a_gateway_that_comes_back(peer, topic):
    peer("mosquitto")
    g = Gw()
    port = g.port
    sub = Proc(sn(port, "sub", "-t", topic, "-v", "-d"))
    sub.wait_err("subscribed to")
    quitter = Proc(sn(port, "sub", "-t", topic, "--no-reconnect"))
    quitter.wait_err("subscribed to")
    g.stop()
    sub.wait_err("connection lost (the gateway ended the session (DISCONNECT)); reconnecting in 0.5 s")
    assert quitter.finish() == 3
    assert "iotctl: error: gateway 127.0.0.1:" in quitter.stderr and "the gateway ended the session" in quitter.stderr
    g2 = Gw(port=port)
    try:
        sub.wait_err(f"reconnected to gateway 127.0.0.1:{port}", timeout=40)
        mosq_pub(topic, "-m", "after")
        sub.wait_out(f"{topic} after\n")
        assert sub.interrupt() == 0
        # connected again as the same client (the gateway replaces that session, no will)
        ids = re.findall(r"-> 127\.0\.0\.1:\d+ CONNECT .*client_id=(\S+)", sub.stderr)
        assert len(ids) >= 2 and len(set(ids)) == 1, ids
    finally:
        g2.stop()



# --------------------------------------------------------------------------- issue 21 item 9: stdout closed


def test_subscribe_notices_a_closed_stdout_while_idle(peer, topic):
    """`mqttsn sub | head -1` after one message and then silence: the subscriber sees the
    reader gone while nothing arrives and exits 0 at once (not at a next message, which
    never comes here), disconnecting from the gateway."""
    peer("mosquitto")
    gw = Gw("-v")
    try:
        with Running(sn(gw.port, "sub", "-t", topic, "-q", "1")) as sub:
            assert b"subscribed to" in sub.stderr.readline()
            mosq_pub(topic, "-m", "one", "-q", "1")
            exits_when_its_reader_goes(sub, b"one\n")
        wait_until(lambda: re.search(r"<- 127\.0\.0\.1:\d+ DISCONNECT", gw.stderr), 10, "the client's DISCONNECT")
    finally:
        gw.stop()


# --------------------------------------------------------------------------- issue 23: hostile input


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_will_connect_then_subscribe_gets_a_suback_and_the_gateway_stays(peer, topic, debug):
    peer("mosquitto")
    g = Gw(*(["-d"] if debug else []))
    raw = Raw(g.port)
    try:
        raw.send(Packet(c.CONNECT, will=True, clean_session=True, duration=30, client_id=cid("will")))
        assert raw.expect(c.WILLTOPICREQ).type == c.WILLTOPICREQ
        raw.send(Packet(c.SUBSCRIBE, qos=0, msg_id=3, topic_name=topic))
        assert raw.expect(c.SUBACK) == Packet(c.SUBACK, qos=0, topic_id=0, msg_id=3, return_code=c.CONGESTION)
        raw.send(Packet(c.PUBLISH, qos=1, topic_id=c.short_id("ab"), topic_id_type=c.SHORT, msg_id=4, data=b"x"))
        assert raw.expect(c.PUBACK).return_code == c.CONGESTION
        # the will exchange goes on, then everything works
        raw.send(Packet(c.WILLTOPIC, qos=0, retain=False, will_topic=f"{topic}/will"))
        raw.expect(c.WILLMSGREQ)
        raw.send(Packet(c.WILLMSG, will_msg=b"bye"))
        assert raw.expect(c.CONNACK).return_code == 0
        raw.send(Packet(c.SUBSCRIBE, qos=0, msg_id=5, topic_name=topic))
        assert raw.expect(c.SUBACK).return_code == 0
        raw.send(Packet(c.DISCONNECT))
        raw.expect(c.DISCONNECT)
        assert searchgw(g.port) is not None and g.proc.poll() is None
    finally:
        raw.close()
        g.stop()
    assert " failed: " not in g.stderr and "Traceback" not in g.stderr


def test_qos_minus_one_to_a_topic_the_broker_would_refuse_is_refused_by_the_gateway(iotctl_proc, gw):
    """A short topic that is not a valid topic name (a NUL, a wildcard, not UTF-8) never
    reaches the broker (which would close the gateway's connection): PUBACK 'invalid
    topic ID' to the sender."""
    raw = Raw(gw.port)
    try:
        for tid in (0x0061, (ord("a") << 8) | ord("#"), (ord("+") << 8) | ord("a"), 0xFFFF):  # "\0a", "a#", "+a"
            raw.send(Packet(c.PUBLISH, qos=-1, topic_id_type=c.SHORT, topic_id=tid, msg_id=0, data=b"x"))
            assert raw.expect(c.PUBACK) == Packet(c.PUBACK, topic_id=tid, msg_id=0, return_code=c.INVALID_TOPIC_ID)
    finally:
        raw.close()
    short = "".join(random.choice("BCDFGHJKMNPQRSTVWXZ") for _ in range(2))
    sub = MosqSub([short], 1)
    r = run(iotctl_proc, gw.port, "pub", "-q", "-1", "-t", short, "-m", "still connected")
    assert r.returncode == 0, r.stderr
    assert sub.finish() == 0 and sub.messages() == [f"{short} still connected"]
    assert "lost the gateway's own broker connection" not in gw.stderr


def test_qos_minus_one_publishers_hear_refusals_and_a_missing_gateway(iotctl_proc, gw):
    r = run(iotctl_proc, gw.port, "pub", "-q", "-1", "-T", "4242", "-m", "x")
    assert r.returncode == 6
    assert b"the gateway refused 1 message(s): rejected: invalid topic ID" in r.stderr
    r = iotctl_proc("mqttsn", "pub", "-q", "-1", "-T", "7", "-m", "x", "-p", free_port())
    assert r.returncode == 3
    assert b"cannot reach gateway 127.0.0.1:" in r.stderr and b"port unreachable" in r.stderr


def test_payload_over_one_datagram_is_a_usage_error(iotctl_proc, gw, topic):
    r = run(iotctl_proc, gw.port, "pub", "-t", topic, "-q", "1", "-s", input=b"x" * 70000)
    assert r.returncode == 2
    assert r.stderr.decode().splitlines() == [
        "iotctl: error: cannot publish a payload of 70000 bytes: one MQTT-SN datagram carries at most 65498 "
        "bytes of payload"]
    r = run(iotctl_proc, gw.port, "pub", "-t", topic, "-q", "1", "-s", input=b"x" * 65498)
    assert r.returncode == 0, r.stderr


def test_a_broker_message_too_large_for_a_datagram_is_dropped_and_said(gw, topic):
    sub = Proc(sn(gw.port, "sub", "-t", topic, "-q", "1", "-C", "1", "-W", "20"))
    sub.wait_err("subscribed to")
    mosq_pub(topic, "-q", "1", "-s", input=b"y" * 70000)
    mosq_pub(topic, "-q", "1", "-m", "small")
    assert sub.finish() == 0, sub.stderr
    assert sub.stdout == "small\n"
    assert f"a message on {topic!r} has 70000 bytes, more than one MQTT-SN datagram carries (65498): dropped" \
        in gw.stderr


def _fuzz_datagrams(rng: random.Random, n: int, topics: list[str]):
    """Datagrams a hostile or broken client might send: random bytes, and well-formed
    packets of every kind a client sends with random fields."""
    kinds = [c.CONNECT, c.WILLTOPIC, c.WILLMSG, c.REGISTER, c.REGACK, c.PUBLISH, c.PUBACK, c.PUBREC, c.PUBREL,
             c.PUBCOMP, c.SUBSCRIBE, c.UNSUBSCRIBE, c.PINGREQ, c.DISCONNECT, c.WILLTOPICUPD, c.WILLMSGUPD,
             c.SEARCHGW, c.GWINFO, c.ADVERTISE, c.CONNACK, c.SUBACK]

    def text():
        return rng.choice([rng.choice(topics), rng.choice(topics) + "/+", "a/#/b", "+", "\0x", "", "é/ü",
                           "x" * rng.randint(1, 300)])

    for _ in range(n):
        if rng.random() < 0.25:
            yield bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
            continue
        t = rng.choice(kinds)
        qos = rng.choice([-1, 0, 1, 2])
        tt = rng.choice([0, 1, 2, 3])
        mid = rng.choice([0, 1, 2, rng.randrange(65536)])
        tid = rng.choice([0, 1, 2, 7, c.short_id("ab"), 0x0061, rng.randrange(65536)])
        fields = {
            c.CONNECT: dict(will=rng.random() < 0.5, clean_session=rng.random() < 0.5, duration=rng.choice([0, 1, 30]),
                            client_id=rng.choice(["fz1", "fz2", "fz3", "", "x" * 40])),
            c.WILLTOPIC: dict(qos=max(0, qos), retain=False, will_topic=rng.choice([None, text()])),
            c.WILLMSG: dict(will_msg=b"w"),
            c.REGISTER: dict(topic_id=0, msg_id=mid, topic_name=text()),
            c.REGACK: dict(topic_id=tid, msg_id=mid, return_code=rng.randrange(4)),
            c.PUBLISH: dict(dup=rng.random() < 0.3, qos=qos, retain=False, topic_id_type=tt, topic_id=tid, msg_id=mid,
                            data=b"f" * rng.randint(0, 50)),
            c.PUBACK: dict(topic_id=tid, msg_id=mid, return_code=rng.randrange(4)),
            c.PUBREC: dict(msg_id=mid), c.PUBREL: dict(msg_id=mid), c.PUBCOMP: dict(msg_id=mid),
            c.SUBSCRIBE: dict(dup=rng.random() < 0.3, qos=qos, topic_id_type=tt % 3, msg_id=mid,
                              **({"topic_name": text()} if tt % 3 == 0 else {"topic_id": tid})),
            c.UNSUBSCRIBE: dict(topic_id_type=tt % 3, msg_id=mid,
                                **({"topic_name": text()} if tt % 3 == 0 else {"topic_id": tid})),
            c.PINGREQ: dict(client_id=rng.choice([None, "fz1", "fz2"])),
            c.DISCONNECT: dict(duration=rng.choice([None, 0, 2])),
            c.WILLTOPICUPD: dict(qos=0, retain=False, will_topic=rng.choice([None, text()])),
            c.WILLMSGUPD: dict(will_msg=b"u"), c.SEARCHGW: dict(radius=0), c.GWINFO: dict(gw_id=1),
            c.ADVERTISE: dict(gw_id=1, duration=1), c.CONNACK: dict(return_code=0),
            c.SUBACK: dict(qos=0, topic_id=1, msg_id=1, return_code=0),
        }[t]
        try:
            yield c.encode(Packet(t, **fields))
        except c.CodecError:
            yield bytes((2, t))


def test_fuzzed_datagrams_never_break_the_gateway(iotctl_proc, own_broker, topic):
    """A bounded datagram fuzzer (seeded; 4 sockets, 3,000 datagrams) against a gateway
    with -d, in front of a broker of the test's own: no traceback, nothing failed, and
    it still serves a real client afterwards."""
    g = Gw("-d", broker=own_broker.url)
    rng = random.Random(23)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    try:
        for i, data in enumerate(_fuzz_datagrams(rng, 3000, [topic, f"{topic}/a", "ab"])):
            rng.choice(socks).sendto(data, ("127.0.0.1", g.port))
            if i % 50 == 0:
                time.sleep(0.02)  # let it keep up; the point is the content, not a flood
        for s in socks:
            s.sendto(c.encode(Packet(c.DISCONNECT)), ("127.0.0.1", g.port))
        assert searchgw(g.port, 2.0) is not None, g.stderr[-3000:]
        sub = MosqSub([topic], 1, port=own_broker.port)
        r = run(iotctl_proc, g.port, "pub", "-t", topic, "-m", "still serving", "-q", "1")
        assert r.returncode == 0, r.stderr
        assert sub.finish() == 0 and sub.messages() == [f"{topic} still serving"]
        assert g.proc.poll() is None
    finally:
        for s in socks:
            s.close()
        g.stop()
    log = g.stderr
    assert "Traceback" not in log and " failed: " not in log, log[-3000:]
    assert "ignored a bad datagram" in log


# --------------------------------------------------------------------------- issue 22 item 4


def test_gateway_takes_p_like_every_listener(iotctl_proc, peer, topic):
    peer("mosquitto")
    port = free_port()
    g = Proc(_iotctl("mqttsn", "gateway", "-p", port))
    try:
        g.wait_err(f"gateway listening on udp 127.0.0.1:{port}")
        sub = MosqSub([topic], 1)
        r = run(iotctl_proc, port, "pub", "-t", topic, "-m", "via -p", "-q", "1")
        assert r.returncode == 0, r.stderr
        assert sub.finish() == 0 and sub.messages() == [f"{topic} via -p"]
    finally:
        assert g.interrupt() == 0
    r = iotctl_proc("mqttsn", "gateway", "--help")
    assert b"-p, --port" in r.stdout


# --------------------------------------------------------------------------- through the bridge


def test_bridge_from_mqttsn_at_least_once_and_into_mqttsn_across_a_gateway_restart(peer, topic):
    """MQTT-SN as a bridge source (a persistent QoS 1 session: at least once) and as a
    target whose gateway restarts mid-stream: the bridge connects again and sends what
    was in flight again; nothing is lost."""
    peer("mosquitto")
    g = Gw()
    port = g.port
    try:
        out = MosqSub([f"{topic}/copy"], 2)
        bridge = Proc(_iotctl("bridge", f"mqttsn://127.0.0.1:{port}/{topic}/sn/%23?qos=1&client_id={cid('br')}"
                                        "&clean_session=false", f"mqtt://127.0.0.1/{topic}/copy?qos=1", "-C", "2"))
        bridge.wait_err("(at least once)")
        for m in ("one", "two"):
            subprocess.run(_iotctl("mqttsn", "pub", "-p", port, "-t", f"{topic}/sn/x", "-m", m, "-q", "1"),
                           check=True, env=clean_env(), timeout=30)
        assert bridge.finish() == 0, bridge.stderr
        assert out.finish() == 0 and out.messages() == [f"{topic}/copy one", f"{topic}/copy two"]
    finally:
        g.stop()
    g = Gw(port=port)
    try:
        sub = Proc(sn(port, "sub", "-t", f"{topic}/out", "-q", "1", "-i", cid("brsub"), "-c", "-v"))
        sub.wait_err("subscribed to")
        bridge = Proc(_iotctl("bridge", f"mqtt://127.0.0.1/{topic}/in?qos=1&client_id={cid('brsrc')}"
                                        "&clean_start=false", f"mqttsn://127.0.0.1:{port}/{topic}/out?qos=1", "-C", "20"))
        bridge.wait_err("(at least once)")
        mosq_pub(f"{topic}/in", "-q", "1", "-l", input="".join(f"a{i}\n" for i in range(10)).encode())
        wait_until(lambda: sub.stdout.count("\n") >= 10, 15, "the first ten")
        g.stop()
        mosq_pub(f"{topic}/in", "-q", "1", "-l", input="".join(f"b{i}\n" for i in range(10)).encode())
        bridge.wait_err("target connection lost")
        g = Gw(port=port)
        assert bridge.finish(60) == 0, bridge.stderr
        assert "target connection restored" in bridge.stderr
        wait_until(lambda: {f"b{i}" for i in range(10)} <= set(sub.stdout.split()), 20, "the next ten")
        assert sub.interrupt() == 0
        got = [line.split()[1] for line in sub.stdout.splitlines()]
        assert set(got) == {f"a{i}" for i in range(10)} | {f"b{i}" for i in range(10)}, sub.stderr
    finally:
        g.stop()

"""The mqttsn group end to end: iotctl's gateway in a subprocess on a free UDP port in
front of the real Mosquitto on 127.0.0.1:1883, iotctl's client, mosquitto_pub/sub on
the broker side, and mqtt-sn-12's mqtt_sn_pub/mqtt_sn_sub as a client no one here wrote.
"""

from __future__ import annotations

import json
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from iotctl.protocols.mqttsn import codec as c
from iotctl.protocols.mqttsn.codec import Packet
from tests.helpers import clean_env, free_port, wait_until

BROKER = ("-h", "127.0.0.1", "-p", "1883")
BIN = Path(sys.executable).parent


def _iotctl(*args) -> list[str]:
    return [sys.executable, "-m", "iotctl", *map(str, args)]


def _tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: pip install -e '.[test]' (mqtt-sn-12)", pytrace=False)
    return found


class Proc:
    """A subprocess whose stderr is collected by a thread (readable while it runs)."""

    def __init__(self, argv, env=None, stdin=None):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=stdin,
                                     env=env or clean_env())
        self.err: list[bytes] = []
        self.out: list[bytes] = []
        self._threads = [threading.Thread(target=self._drain, args=(self.proc.stderr, self.err), daemon=True),
                         threading.Thread(target=self._drain, args=(self.proc.stdout, self.out), daemon=True)]
        for t in self._threads:
            t.start()

    @staticmethod
    def _drain(stream, into):
        for line in stream:
            into.append(line)

    @property
    def stderr(self) -> str:
        return b"".join(self.err).decode(errors="replace")

    @property
    def stdout(self) -> str:
        return b"".join(self.out).decode(errors="replace")

    def wait_err(self, text: str, timeout: float = 15) -> None:
        wait_until(lambda: text in self.stderr or self.proc.poll() is not None, timeout, f"{text!r} on stderr")
        assert text in self.stderr, self.stderr

    def wait_out(self, text: str, timeout: float = 15) -> None:
        wait_until(lambda: text in self.stdout or self.proc.poll() is not None, timeout, f"{text!r} on stdout")
        assert text in self.stdout, (self.stdout, self.stderr)

    def finish(self, timeout: float = 30) -> int:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"still running after {timeout} s: {self.stderr[-2000:]}")
        for t in self._threads:
            t.join(5)
        return self.proc.returncode

    def interrupt(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.finish(timeout)


def searchgw(port: int, timeout: float = 0.3) -> Packet | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(c.encode(Packet(c.SEARCHGW, radius=0)), ("127.0.0.1", port))
            return c.decode(s.recvfrom(1024)[0])
        except OSError:
            return None


class Gateway(Proc):
    """`iotctl mqttsn gateway --port 0`: on a UDP port the system chooses, which its
    status line names."""

    def __init__(self, *extra):
        super().__init__(_iotctl("mqttsn", "gateway", "--port", "0", *extra))
        self.wait_err("gateway listening on udp")
        self.port = int(re.search(r"listening on udp 127\.0\.0\.1:(\d+)", self.stderr).group(1))
        assert searchgw(self.port, 2.0) is not None, self.stderr


@pytest.fixture
def predefined(tmp_path):
    base = f"iotctl-test/sn-pre/{uuid.uuid4().hex[:8]}"
    path = tmp_path / "predefined.txt"
    path.write_text(f"# id topic\n7 {base}/seven\n\n8 {base}/eight\n")
    return {7: f"{base}/seven", 8: f"{base}/eight", "file": str(path)}


@pytest.fixture
def gateway(peer, predefined):
    peer("mosquitto")
    gw = Gateway("--predefined", predefined["file"], "-v")
    yield gw
    assert gw.interrupt() == 0, gw.stderr
    assert "Traceback" not in gw.stderr
    assert "gateway stopped" in gw.stderr


def short_topic() -> str:
    """A two-character topic no other run uses at the moment (short topics are global)."""
    return "".join(random.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(2))


class MosqSub(Proc):
    """mosquitto_sub -v on some topics, returned once subscribed."""

    def __init__(self, topics, count, qos=1, port=1883):
        args = ["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-d", "-v", "-q", str(qos), "-C", str(count), "-W", "60"]
        for t in topics:
            args += ["-t", t]
        super().__init__(args)
        wait_until(lambda: "SUBACK" in self.stdout or self.proc.poll() is not None, 15, "mosquitto_sub's SUBACK")

    def messages(self) -> list[str]:
        return [line for line in self.stdout.splitlines()
                if not line.startswith("Client ") and not line.startswith("Subscribed")]


def sn(gw, *args):
    return ["mqttsn", *args, "-p", str(gw.port)]


def run(iotctl_proc, gw, *args, input=None, timeout=60):
    return iotctl_proc(*sn(gw, *args), input=input, env=clean_env(), timeout=timeout)


# --------------------------------------------------------------------------- client -> gateway -> broker


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_every_topic_form_reaches_mosquitto_sub(iotctl_proc, gateway, predefined, topic, qos):
    short = short_topic()
    sub = MosqSub([topic, short, predefined[7]], 4)
    for args in (["-t", topic, "-m", f"normal{qos}"], ["-t", topic, "-m", f"again{qos}"],
                 ["-t", short, "-m", f"short{qos}"], ["-T", "7", "-m", f"pre{qos}"]):
        r = run(iotctl_proc, gateway, "pub", "-q", qos, *args)
        assert r.returncode == 0, r.stderr
        assert r.stderr == b""
    assert sub.finish() == 0
    assert sub.messages() == [f"{topic} normal{qos}", f"{topic} again{qos}", f"{short} short{qos}",
                              f"{predefined[7]} pre{qos}"]
    # a name is registered once per connection and then published by id
    log = gateway.stderr
    assert f"REGISTER topic_id=0 msg_id=1 topic_name={topic}" in log
    assert f"topic_id_type=short topic_id={c.short_id(short)}" in log


def test_publish_lines_reuses_one_registration(iotctl_proc, gateway, topic):
    sub = MosqSub([topic], 200)
    lines = "".join(f"line{i}\n" for i in range(200)).encode()
    r = run(iotctl_proc, gateway, "pub", "-t", topic, "-l", "-q", "1", input=lines)
    assert r.returncode == 0, r.stderr
    assert sub.finish() == 0
    assert sub.messages() == [f"{topic} line{i}" for i in range(200)]
    assert gateway.stderr.count(f"topic_name={topic}") == 1


def test_profile_and_environment_give_the_gateway_address(iotctl_proc, gateway, topic, tmp_path):
    sub = MosqSub([topic], 2)
    env = clean_env(IOTCTL_MQTTSN_PORT=str(gateway.port))
    r = iotctl_proc("mqttsn", "pub", "-t", topic, "-m", "from env", "-q", "1", env=env)
    assert r.returncode == 0, r.stderr
    profile = tmp_path / "sn.toml"
    profile.write_text(f'[mqttsn]\nurl = "mqttsn://127.0.0.1:{gateway.port}"\nretries = 3\n')
    r = iotctl_proc("--profile", profile, "mqttsn", "pub", "-t", topic, "-m", "from profile", env=clean_env())
    assert r.returncode == 0, r.stderr
    assert sub.finish() == 0
    assert sub.messages() == [f"{topic} from env", f"{topic} from profile"]


def test_qos_minus_one_needs_no_connection(iotctl_proc, gateway, predefined, topic):
    short = short_topic()
    sub = MosqSub([predefined[8], short], 2)
    for args in (["-T", "8"], ["-t", short]):
        r = run(iotctl_proc, gateway, "pub", "-q", "-1", "-m", "fire-and-forget", *args)
        assert r.returncode == 0, r.stderr
    assert sub.finish() == 0
    assert sub.messages() == [f"{predefined[8]} fire-and-forget", f"{short} fire-and-forget"]
    assert "CONNECT" not in gateway.stderr
    r = run(iotctl_proc, gateway, "pub", "-q", "-1", "-t", topic, "-m", "x")
    assert r.returncode == 2 and b"only a predefined id (-T) or a two-character short topic" in r.stderr
    assert b"sent 0" not in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr   # no send report (issue 22 item 5)


# --------------------------------------------------------------------------- broker -> gateway -> client


class SnSub(Proc):
    def __init__(self, gw, *args):
        super().__init__(_iotctl(*sn(gw, "sub", *args)))
        self.wait_err("subscribed to")


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_subscribe_every_topic_form_from_mosquitto_pub(gateway, predefined, topic, qos):
    short = short_topic()
    sub = SnSub(gateway, "-t", f"{topic}/#", "-t", short, "-T", "7", "-q", qos, "-C", "5", "-W", "30", "-o", "jsonl")
    for t, m in ((f"{topic}/a", "wild-a"), (f"{topic}/b/c", "wild-bc"), (short, "short"), (predefined[7], "pre"),
                 (f"{topic}/a", "wild-a-again")):
        subprocess.run(["mosquitto_pub", *BROKER, "-q", str(qos), "-t", t, "-m", m], check=True)
    assert sub.finish() == 0, sub.stderr
    got = [json.loads(line) for line in sub.stdout.splitlines()]
    assert [(g["address"], g["payload"]) for g in got] == [
        (f"{topic}/a", "wild-a"), (f"{topic}/b/c", "wild-bc"), (short, "short"), ("7", "pre"),
        (f"{topic}/a", "wild-a-again")]
    assert [g["meta"]["topic_id_type"] for g in got] == ["normal", "normal", "short", "predefined", "normal"]
    assert all(g["protocol"] == "mqttsn" and g["meta"]["qos"] == qos for g in got)
    assert got[0]["meta"]["topic_id"] == got[4]["meta"]["topic_id"] != got[1]["meta"]["topic_id"]
    assert got[3]["meta"]["topic_id"] == 7
    # the gateway REGISTERed each topic the wildcard brought, once, before its first PUBLISH
    log = gateway.stderr
    assert log.count(f"REGISTER topic_id={got[0]['meta']['topic_id']}") == 1
    assert log.index(f"topic_name={topic}/b/c") < log.index("payload=b'wild-bc'")


def test_subscribe_v_prints_topic_and_payload(gateway, topic):
    sub = SnSub(gateway, "-t", topic, "-v", "-C", "1", "-W", "20")
    subprocess.run(["mosquitto_pub", *BROKER, "-t", topic, "-m", "21.5"], check=True)
    assert sub.finish() == 0
    assert sub.stdout == f"{topic} 21.5\n"


def test_ctrl_c_ends_subscribe_with_exit_0_and_disconnect(gateway, topic):
    cid = f"iotctl-ctrlc-{uuid.uuid4().hex[:6]}"
    sub = SnSub(gateway, "-t", topic, "-i", cid, "-F", "{address}|{payload}|{meta[topic_id_type]}")
    subprocess.run(["mosquitto_pub", *BROKER, "-t", topic, "-m", "x"], check=True)
    sub.wait_out(f"{topic}|x|normal\n")
    assert sub.interrupt() == 0
    assert sub.stdout == f"{topic}|x|normal\n"
    wait_until(lambda: f"client {cid!r} disconnected" in gateway.stderr, 5, "the DISCONNECT")


def test_clean_session_off_resumes_subscription(iotctl_proc, gateway, topic):
    cid = f"iotctl-test-{uuid.uuid4().hex[:8]}"
    sub = SnSub(gateway, "-t", topic, "-q", "1", "-i", cid, "-c", "-C", "1", "-W", "20")
    subprocess.run(["mosquitto_pub", *BROKER, "-q", "1", "-t", topic, "-m", "first"], check=True)
    assert sub.finish() == 0 and sub.stdout == "first\n"
    # offline: the broker keeps it for the persistent session
    subprocess.run(["mosquitto_pub", *BROKER, "-q", "1", "-t", topic, "-m", "while-away"], check=True)
    again = run(iotctl_proc, gateway, "sub", "-t", topic, "-q", "1", "-i", cid, "-c", "-C", "1", "-W", "20")
    assert again.returncode == 0, again.stderr
    assert again.stdout == b"while-away\n"
    r = run(iotctl_proc, gateway, "sub", "-t", topic, "-c")
    assert r.returncode == 2 and b"needs a fixed client id" in r.stderr


def test_sleeping_client_gets_what_was_published_while_it_slept(gateway, topic):
    cid = f"iotctl-sleeper-{uuid.uuid4().hex[:6]}"
    sub = SnSub(gateway, "-t", topic, "-q", "1", "-i", cid, "--sleep", "2", "-C", "3", "-W", "30", "-v")
    wait_until(lambda: "DISCONNECT duration=2" in gateway.stderr, 10, "the client going to sleep")
    for i in range(3):
        subprocess.run(["mosquitto_pub", *BROKER, "-q", "1", "-t", topic, "-m", f"zz{i}"], check=True)
    assert sub.finish() == 0, sub.stderr
    assert sub.stdout == "".join(f"{topic} zz{i}\n" for i in range(3))
    log = gateway.stderr
    # delivered after the wake-up (PINGREQ with the client id), then PINGRESP
    wake = log.index(f"PINGREQ client_id={cid}")
    assert wake < log.index("payload=b'zz0'") < log.index("-> ", log.index("payload=b'zz2'"))


def test_keepalive_pings_keep_an_idle_client_connected(gateway, topic):
    sub = SnSub(gateway, "-t", topic, "-k", "1", "-C", "1", "-W", "20", "-d")
    # idle for longer than 1.5 x keepalive: its PINGREQs keep it connected
    wait_until(lambda: gateway.stderr.count("PINGRESP") >= 3, 10, "three keepalive pings")
    subprocess.run(["mosquitto_pub", *BROKER, "-t", topic, "-m", "still connected"], check=True)
    assert sub.finish() == 0, sub.stderr
    assert sub.stdout == "still connected\n"
    assert "lost" not in gateway.stderr
    assert "iotctl: mqttsn: -> 127.0.0.1:" in sub.stderr and " PINGREQ" in sub.stderr  # -d traces packets


def test_will_is_published_when_a_client_goes_silent(gateway, topic):
    sub = MosqSub([f"{topic}/will"], 1)
    client = SnSub(gateway, "-t", topic, "-k", "1", "--will-topic", f"{topic}/will", "--will-payload", "gone",
                   "--will-qos", "1")
    client.proc.kill()  # no DISCONNECT: the gateway notices after 1.5 x keepalive
    client.finish()
    assert sub.finish() == 0
    assert sub.messages() == [f"{topic}/will gone"]
    assert "lost: silent for more than 1.5" in gateway.stderr


# --------------------------------------------------------------------------- a client no one here wrote


@pytest.mark.parametrize("qos", [-1, 0, 1, 2])
def test_mqtt_sn_pub_through_the_gateway(gateway, predefined, topic, qos):
    pub = _tool("mqtt_sn_pub")
    target = ["-T", "8"] if qos == -1 else ["-t", topic]
    sub = MosqSub([predefined[8] if qos == -1 else topic], 1)
    done = subprocess.run([pub, "-h", "127.0.0.1", "-p", str(gateway.port), *target, "-q", str(qos),
                           "-m", f"from mqtt-sn-12 q{qos}"], capture_output=True, timeout=30)
    assert done.returncode == 0, done
    assert sub.finish() == 0
    assert sub.messages() == [f"{predefined[8] if qos == -1 else topic} from mqtt-sn-12 q{qos}"]


@pytest.mark.parametrize("qos", [0, 1])
def test_mqtt_sn_sub_through_the_gateway(gateway, topic, qos):
    sub = Proc([_tool("mqtt_sn_sub"), "-h", "127.0.0.1", "-p", str(gateway.port), "-t", topic, "-q", str(qos),
                "-1", "--timeout", "20"])
    wait_until(lambda: f"topic_name={topic}" in gateway.stderr and "-> 127.0.0.1" in
               gateway.stderr.split(f"topic_name={topic}", 1)[1], 15, "mqtt_sn_sub's SUBACK")
    subprocess.run(["mosquitto_pub", *BROKER, "-q", str(qos), "-t", topic, "-m", "to mqtt-sn-12"], check=True)
    assert sub.finish() == 0, sub.stderr
    assert sub.stdout.strip() == "to mqtt-sn-12"


def test_iotctl_sub_receives_from_mqtt_sn_pub(gateway, topic):
    sub = SnSub(gateway, "-t", topic, "-q", "1", "-C", "1", "-W", "20", "-o", "jsonl")
    subprocess.run([_tool("mqtt_sn_pub"), "-p", str(gateway.port), "-t", topic, "-q", "1", "-m", "hello"],
                   check=True, capture_output=True, timeout=30)
    assert sub.finish() == 0
    assert json.loads(sub.stdout)["payload"] == "hello"


# --------------------------------------------------------------------------- loss


class LossyRelay:
    """A UDP proxy that drops `share` of the datagrams in each direction (seeded)."""

    def __init__(self, target_port: int, share: float, seed: int = 11):
        self.rng = random.Random(seed)
        self.share = share
        self.target = ("127.0.0.1", target_port)
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.port = self.front.getsockname()[1]
        self.back: dict[tuple, socket.socket] = {}
        self.client_of: dict[socket.socket, tuple] = {}
        self.dropped = [0, 0]
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            socks = [self.front, *self.client_of]
            r, _, _ = select.select(socks, [], [], 0.1)
            for s in r:
                data, addr = s.recvfrom(65536)
                if s is self.front:
                    if self.rng.random() < self.share:
                        self.dropped[0] += 1
                        continue
                    back = self.back.get(addr)
                    if back is None:
                        back = self.back[addr] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        back.bind(("127.0.0.1", 0))
                        self.client_of[back] = addr
                    back.sendto(data, self.target)
                else:
                    if self.rng.random() < self.share:
                        self.dropped[1] += 1
                        continue
                    self.front.sendto(data, self.client_of[s])

    def close(self):
        self.running = False
        self.thread.join(5)
        for s in [self.front, *self.client_of]:
            s.close()


@pytest.fixture
def quiet_gateway(peer):
    peer("mosquitto")
    gw = Gateway()
    yield gw
    assert gw.interrupt() == 0, gw.stderr


def test_lossy_link_qos1_all_arrive_and_qos2_exactly_once(iotctl_proc, quiet_gateway, topic):
    relay = LossyRelay(quiet_gateway.port, 0.1)
    try:
        n1, n2 = 1000, 300
        sub = MosqSub([f"{topic}/q1", f"{topic}/q2"], 100 * n1, qos=2)  # QoS 1 duplicates count too
        lossy = ["-p", str(relay.port), "--retry-interval", "0.1", "--retries", "30"]
        lines = "".join(f"m{i}\n" for i in range(n1)).encode()
        r = iotctl_proc("mqttsn", "pub", *lossy, "-t", f"{topic}/q1", "-q", "1", "-l", input=lines,
                        env=clean_env(), timeout=60)
        assert r.returncode == 0, r.stderr
        lines = "".join(f"e{i}\n" for i in range(n2)).encode()
        r = iotctl_proc("mqttsn", "pub", *lossy, "-t", f"{topic}/q2", "-q", "2", "-l", input=lines,
                        env=clean_env(), timeout=60)
        assert r.returncode == 0, r.stderr
        assert relay.dropped[0] > 50 and relay.dropped[1] > 50, relay.dropped
        # QoS 1: at least once (a lost PUBACK means the PUBLISH is sent again)
        wait_until(lambda: {f"{topic}/q1 m{i}" for i in range(n1)} <= set(sub.messages()), 20, "every QoS 1 message")
        wait_until(lambda: len([m for m in sub.messages() if m.startswith(f"{topic}/q2 ")]) >= n2, 20,
                   "every QoS 2 message")
        q2 = [m for m in sub.messages() if m.startswith(f"{topic}/q2 ")]
        assert sorted(q2) == sorted(f"{topic}/q2 e{i}" for i in range(n2))  # exactly once
        sub.proc.terminate()
        sub.finish()
    finally:
        relay.close()


def test_lossy_link_towards_the_subscriber_gateway_retries(peer, topic):
    """The gateway's own retransmission: every QoS 1 and 2 message reaches a subscriber
    behind a lossy link, QoS 2 exactly once."""
    peer("mosquitto")
    gw = Gateway("--retry-interval", "0.1", "--retries", "30")
    relay = LossyRelay(gw.port, 0.1, seed=5)
    try:
        n = 150
        sub = Proc(_iotctl("mqttsn", "sub", "-p", relay.port, "-t", f"{topic}/#", "-q", "2", "-v",
                           "--retry-interval", "0.1", "--retries", "30", "-W", "40", "--idle-timeout", "3"))
        sub.wait_err("subscribed to")
        for qos in (1, 2):
            lines = "".join(f"q{qos}-{i}\n" for i in range(n)).encode()
            subprocess.run(["mosquitto_pub", *BROKER, "-q", str(qos), "-t", f"{topic}/q{qos}", "-l"], input=lines,
                           check=True)
        assert sub.finish(60) == 0, sub.stderr
        got = sub.stdout.splitlines()
        assert {f"{topic}/q1 q1-{i}" for i in range(n)} <= set(got)
        assert sorted(m for m in got if m.startswith(f"{topic}/q2 ")) == sorted(f"{topic}/q2 q2-{i}" for i in range(n))
        assert relay.dropped[0] > 5 and relay.dropped[1] > 5, relay.dropped
    finally:
        relay.close()
        assert gw.interrupt() == 0, gw.stderr


def test_gateway_reaches_the_broker_with_tls_and_credentials(iotctl_proc, certs, peer, topic):
    peer("mosquitto-auth")
    for broker in (["--broker", "mqtts://localhost:8883", "--cafile", certs["ca_crt"]],
                   ["--broker", "mqtt://iotctl:iotctl-secret@127.0.0.1:1884"]):
        gw = Gateway(*broker)
        try:
            sub = MosqSub([topic], 1, port=11883)
            r = run(iotctl_proc, gw, "pub", "-t", topic, "-m", broker[1], "-q", "1")
            assert r.returncode == 0, r.stderr
            assert sub.finish() == 0 and sub.messages() == [f"{topic} {broker[1]}"]
        finally:
            assert gw.interrupt() == 0, gw.stderr
    r = iotctl_proc("mqttsn", "gateway", "--port", "0", "--broker", "mqtt://iotctl:wrong@127.0.0.1:1884",
                    env=clean_env())
    assert r.returncode == 4 and b"broker refused the login" in r.stderr
    r = iotctl_proc("mqttsn", "gateway", "--port", "0", "--broker", "mqtts://localhost:8883",
                    "--cafile", certs["other_ca_crt"], env=clean_env())
    assert r.returncode == 7 and b"certificate verification failed" in r.stderr


def test_client_gives_up_after_nretry_with_exit_5(iotctl_proc):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # something listens, nothing answers
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        r = iotctl_proc("mqttsn", "pub", "-p", port, "-t", "x/y", "-m", "z", "--retry-interval", "0.2",
                        "--retries", "2", env=clean_env())
        assert r.returncode == 5
        assert r.stderr.decode().splitlines()[0] == (
            f"iotctl: error: no CONNACK from the gateway 127.0.0.1:{port}: CONNECT sent 3 times, 0.2 s apart")
        assert time.monotonic() - t0 < 5
        got = []
        silent.settimeout(0.1)
        while True:
            try:
                got.append(c.decode(silent.recv(100)).name)
            except OSError:
                break
        assert got == ["CONNECT"] * 5  # each try after the first goes out twice (a lossy link's pattern)


def test_client_reports_a_refusing_gateway_and_skips_garbage(iotctl_proc):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fake:
        fake.bind(("127.0.0.1", 0))
        fake.settimeout(10)
        port = fake.getsockname()[1]

        def answer():
            data, addr = fake.recvfrom(100)
            assert c.decode(data).type == c.CONNECT
            fake.sendto(b"\x02\x03", addr)  # an unknown packet type
            fake.sendto(b"\x09\x05\x00", addr)  # a length that lies
            fake.sendto(c.encode(Packet(c.CONNACK, return_code=c.CONGESTION)), addr)

        t = threading.Thread(target=answer, daemon=True)
        t.start()
        r = iotctl_proc("mqttsn", "pub", "-p", port, "-t", "x/y", "-m", "z", env=clean_env())
        t.join(5)
    err = r.stderr.decode().splitlines()
    assert r.returncode == 6
    assert err == [
        f"iotctl: warning: ignored a bad datagram from 127.0.0.1:{port}: unknown packet type 0x03",
        f"iotctl: warning: ignored a bad datagram from 127.0.0.1:{port}: "
        "length field says 9 octets, the datagram has 3",
        f"iotctl: error: cannot connect to gateway 127.0.0.1:{port}: "
        "the gateway answered rejected: congestion"]


def test_no_gateway_is_a_connect_error(iotctl_proc):
    r = iotctl_proc("mqttsn", "sub", "-p", free_port(), "-t", "x", env=clean_env())
    assert r.returncode == 3
    assert b"iotctl: error: cannot reach gateway 127.0.0.1:" in r.stderr and b"port unreachable" in r.stderr
    assert b"Traceback" not in r.stderr


# --------------------------------------------------------------------------- bad input


def test_bad_datagrams_are_dropped_and_the_gateway_keeps_serving(iotctl_proc, gateway, topic):
    addr = ("127.0.0.1", gateway.port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        for bad in (b"\x05", b"\x09\x0c\x20\x00\x01", b"\x02\x03", b"\x01\x00\x02\x0c", b""):
            s.sendto(bad, addr)
        # a connected client that publishes to a topic id it never registered
        s.sendto(c.encode(Packet(c.CONNECT, clean_session=True, duration=10, client_id="raw-client")), addr)
        assert c.decode(s.recv(100)) == Packet(c.CONNACK, return_code=0)
        s.sendto(c.encode(Packet(c.PUBLISH, qos=1, topic_id=999, msg_id=5, data=b"x")), addr)
        assert c.decode(s.recv(100)) == Packet(c.PUBACK, topic_id=999, msg_id=5, return_code=c.INVALID_TOPIC_ID)
        # a PUBLISH from an address that never connected
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            other.settimeout(3)
            other.sendto(c.encode(Packet(c.PUBLISH, qos=1, topic_id=1, msg_id=1, data=b"x")), addr)
            assert c.decode(other.recv(100)).type == c.DISCONNECT
        # will updates: MQTT cannot change a live connection's will
        s.sendto(c.encode(Packet(c.WILLTOPICUPD, qos=1, will_topic="w/t")), addr)
        assert c.decode(s.recv(100)) == Packet(c.WILLTOPICRESP, return_code=c.NOT_SUPPORTED)
        s.sendto(c.encode(Packet(c.WILLMSGUPD, will_msg=b"new")), addr)
        assert c.decode(s.recv(100)) == Packet(c.WILLMSGRESP, return_code=c.NOT_SUPPORTED)
        # a filter the broker would refuse, a topic name with a wildcard
        s.sendto(c.encode(Packet(c.SUBSCRIBE, qos=0, msg_id=6, topic_name="a/#/b")), addr)
        assert c.decode(s.recv(100)) == Packet(c.SUBACK, qos=0, topic_id=0, msg_id=6, return_code=c.NOT_SUPPORTED)
        s.sendto(c.encode(Packet(c.REGISTER, topic_id=0, msg_id=7, topic_name="a/+")), addr)
        assert c.decode(s.recv(100)) == Packet(c.REGACK, topic_id=0, msg_id=7, return_code=c.NOT_SUPPORTED)
        s.sendto(c.encode(Packet(c.DISCONNECT)), addr)
        assert c.decode(s.recv(100)).type == c.DISCONNECT
    # everyone else is still served
    sub = MosqSub([topic], 1)
    r = run(iotctl_proc, gateway, "pub", "-t", topic, "-m", "still here", "-q", "1")
    assert r.returncode == 0, r.stderr
    assert sub.finish() == 0 and sub.messages() == [f"{topic} still here"]
    log = gateway.stderr
    assert "ignored a bad datagram from 127.0.0.1:" in log
    for why in ("datagram too short: 1 octet", "length field says 9 octets, the datagram has 5",
                "unknown packet type 0x03", "datagram too short: 0 octets"):
        assert why in log, why
    assert "PUBLISH to unknown topic id 999" in log
    assert "Traceback" not in log


def test_unsubscribe_stops_delivery(gateway, topic):
    addr = ("127.0.0.1", gateway.port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(c.encode(Packet(c.CONNECT, clean_session=True, duration=30, client_id=f"raw-{uuid.uuid4().hex[:6]}")),
                 addr)
        assert c.decode(s.recv(100)).return_code == 0
        s.sendto(c.encode(Packet(c.SUBSCRIBE, qos=0, msg_id=1, topic_name=topic)), addr)
        suback = c.decode(s.recv(100))
        assert (suback.type, suback.msg_id, suback.return_code) == (c.SUBACK, 1, 0) and suback.topic_id > 0
        subprocess.run(["mosquitto_pub", *BROKER, "-t", topic, "-m", "one"], check=True)
        pub = c.decode(s.recv(100))
        assert (pub.type, pub.topic_id, pub.data) == (c.PUBLISH, suback.topic_id, b"one")
        s.sendto(c.encode(Packet(c.SUBSCRIBE, qos=0, msg_id=2, topic_name=f"{topic}/marker")), addr)
        assert c.decode(s.recv(100)).type == c.SUBACK
        s.sendto(c.encode(Packet(c.UNSUBSCRIBE, msg_id=3, topic_name=topic)), addr)
        assert c.decode(s.recv(100)) == Packet(c.UNSUBACK, msg_id=3)
        subprocess.run(["mosquitto_pub", *BROKER, "-t", topic, "-m", "two"], check=True)
        subprocess.run(["mosquitto_pub", *BROKER, "-t", f"{topic}/marker", "-m", "three"], check=True)
        # one connection delivers in order: 'two' would come before the marker
        nxt = c.decode(s.recv(100))
        assert nxt.type == c.PUBLISH and nxt.data == b"three"


def test_publish_to_unknown_predefined_id_is_a_peer_error(iotctl_proc, gateway):
    r = run(iotctl_proc, gateway, "pub", "-T", "999", "-q", "1", "-m", "x")
    assert r.returncode == 6
    assert r.stderr.decode().splitlines()[0].startswith(
        "iotctl: error: publish: the gateway refused 1 message(s): rejected: invalid topic ID")


def test_searchgw_is_answered_with_gwinfo(gateway):
    assert searchgw(gateway.port) == Packet(c.GWINFO, gw_id=1, gw_add=None)


def test_gateway_ctrl_c_disconnects_its_clients(gateway, topic):
    will = MosqSub([f"{topic}/will"], 1)
    sub = SnSub(gateway, "-t", topic, "--will-topic", f"{topic}/will", "--will-payload", "gone", "--no-reconnect")
    assert gateway.interrupt() == 0
    assert sub.finish() == 3
    assert "the gateway ended the session" in sub.stderr
    # the broker connections were closed with DISCONNECT: no will
    time.sleep(0.5)  # (a will, if any, comes at once: nothing to wait for but its absence)
    will.proc.terminate()
    will.finish()
    assert will.messages() == []


def test_gateway_without_broker_exits_3(iotctl_proc):
    r = iotctl_proc("mqttsn", "gateway", "--port", "0", "--broker", f"mqtt://127.0.0.1:{free_port(socket.SOCK_STREAM)}",
                    env=clean_env())
    assert r.returncode == 3
    assert r.stderr.decode().startswith("iotctl: error: cannot connect to mqtt://127.0.0.1:")
    assert b"Traceback" not in r.stderr


# --------------------------------------------------------------------------- dump


@pytest.mark.parametrize("mode", ["jsonl", "text", "raw"])
def test_dump_prints_every_packet_decoded(iotctl_proc, mode):
    dump = Proc(_iotctl("mqttsn", "dump", "-p", "0", "-C", "4", "-W", "20", "-o", mode))
    dump.wait_err("listening on udp")
    port = int(re.search(r"listening on udp 127\.0\.0\.1:(\d+)", dump.stderr).group(1))
    r = iotctl_proc("mqttsn", "pub", "-p", port, "-q", "-1", "-T", "5", "-m", "hi", env=clean_env())
    assert r.returncode == 0, r.stderr
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x02\x03", ("127.0.0.1", port))
        s.sendto(c.encode(Packet(c.CONNECT, clean_session=True, duration=30, client_id="dev1")), ("127.0.0.1", port))
    assert dump.finish() == 0, dump.stderr
    if mode == "jsonl":
        got = [json.loads(line) for line in dump.stdout.splitlines()]
        # a QoS -1 publisher ends with a SEARCHGW round trip (a gateway's refusal, or none, is seen)
        assert [g["address"] for g in got] == ["PUBLISH", "SEARCHGW", "MALFORMED", "CONNECT"]
        meta = got[0]["meta"]
        assert got[0]["payload"] == "hi"
        assert {k: meta[k] for k in ("type", "qos", "topic_id", "topic_id_type", "retain")} == {
            "type": "PUBLISH", "qos": -1, "topic_id": 5, "topic_id_type": "predefined", "retain": False}
        assert meta["from"].startswith("127.0.0.1:")
        assert got[2]["meta"]["error"] == "unknown packet type 0x03"
        assert got[3]["meta"]["client_id"] == "dev1" and got[3]["meta"]["duration"] == 30
    elif mode == "text":
        assert dump.stdout.splitlines()[0] == "PUBLISH hi"
    else:
        assert dump.stdout.splitlines()[0] == "hi"


def test_gateway_background_is_ready_when_it_returns(peer, iotctl_proc, topic, tmp_path):
    """--background returns once the gateway listens: the next command can use it at once."""
    import os
    import signal
    import subprocess
    import sys

    peer("mosquitto")
    state = tmp_path / "state"  # where a background server may keep its log (issue 22 item 3)
    with open(tmp_path / "gateway.log", "wb") as log:  # a file: the gateway may keep its stderr
        started = subprocess.run([sys.executable, "-m", "iotctl", "mqttsn", "gateway", "--background", "--port",
                                  "0", "--broker", "mqtt://127.0.0.1:1883"],
                                 stdout=subprocess.PIPE, stderr=log, env=clean_env(XDG_STATE_HOME=str(state)),
                                 timeout=60)
    logged = (tmp_path / "gateway.log").read_text() + "".join(p.read_text() for p in state.rglob("*.log"))
    assert started.returncode == 0, logged
    pid = int(started.stdout)
    port = int(re.search(r"listening on udp 127\.0\.0\.1:(\d+)", logged).group(1))
    try:
        sub = MosqSub([topic], 1)
        r = iotctl_proc("mqttsn", "pub", "-p", str(port), "-t", topic, "-m", "at once", "-q", "1")
        assert r.returncode == 0, r.stderr
        sub.proc.wait(15)
        assert sub.messages() == [f"{topic} at once"]
    finally:
        os.kill(pid, signal.SIGTERM)


def test_gateway_logs_to_a_file_never_to_the_terminal_it_was_started_from(peer, iotctl_proc, topic, tmp_path):
    """Issue 22 item 3: --background logs to --log FILE (its path said at start), and a
    foreground --log FILE takes the whole log too."""
    import os
    import signal
    import subprocess
    import sys

    peer("mosquitto")
    log = tmp_path / "gw.log"
    started = subprocess.run([sys.executable, "-m", "iotctl", "mqttsn", "gateway", "--background", "--port", "0",
                              "--broker", "mqtt://127.0.0.1:1883", "--log", str(log), "-v"],
                             capture_output=True, env=clean_env(), timeout=60)
    assert started.returncode == 0, started.stderr
    assert f"logs to {log}" in started.stderr.decode() and "listening" not in started.stderr.decode()
    pid = int(started.stdout)
    try:
        port = int(re.search(r"listening on udp 127\.0\.0\.1:(\d+)", log.read_text()).group(1))
        r = iotctl_proc("mqttsn", "pub", "-p", str(port), "-t", topic, "-m", "logged", "-q", "1")
        assert r.returncode == 0, r.stderr
        wait_until(lambda: "PUBLISH" in log.read_text(), 10, "the packet in the log")
    finally:
        os.kill(pid, signal.SIGTERM)
    fg_log = tmp_path / "fg.log"
    proc = subprocess.Popen([sys.executable, "-m", "iotctl", "mqttsn", "gateway", "--port", "0", "--broker",
                             "mqtt://127.0.0.1:1883", "--log", str(fg_log)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=clean_env())
    try:
        wait_until(lambda: fg_log.exists() and "listening on udp" in fg_log.read_text(), 15, "the foreground log")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert err == b"", err

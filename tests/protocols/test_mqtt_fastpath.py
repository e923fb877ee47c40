"""The subscriber's receive fast path (fastpath.py) against paho's own receive path:
the same messages, with every MQTT 5 property, give the same envelopes both ways;
malformed packets from a fake broker are one line and exit 6."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading

import pytest

from tests.helpers import clean_env

PRIVATE = ("-p", "11883")


def _sub(topic: str, *extra: str, paho: bool, count: int) -> list[dict]:
    env = clean_env(**({"IOTCTL_MQTT_PAHO_RECEIVE": "1"} if paho else {}))
    r = subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "sub", *PRIVATE, "-t", f"{topic}/#", "-o", "jsonl",
                        "-C", str(count), "-W", "20", *extra], capture_output=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    out = [json.loads(line) for line in r.stdout.decode().splitlines()]
    for env_ in out:
        env_.pop("ts")
        props = env_["meta"].get("properties", {})
        if "message_expiry_interval" in props:  # counts down while the message is retained
            assert 0 < props.pop("message_expiry_interval") <= 300
    return out


def _pub(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "pub", *PRIVATE, *args], capture_output=True,
                       env=clean_env(IOTCTL_EXPRESS="0"), timeout=30)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("version", ["5", "3.1.1"])
def test_the_same_envelopes_as_paho(peer, topic, version):
    peer("mosquitto-private")
    _pub("-t", f"{topic}/plain", "-m", "plain", "-r", "-V", version)
    _pub("-t", f"{topic}/bin", "--encode", "hex", "-m", "00ff10", "-q", "1", "-r", "-V", version)
    if version == "5":
        _pub("-t", f"{topic}/props", "-m", '{"a": 1}', "-q", "2", "-r", "--content-type", "application/json",
             "--response-topic", "reply/here", "--correlation-data", "c-1", "--message-expiry", "300",
             "--user-property", "site=lab", "--user-property", "site=two", "--payload-format-indicator")
    n = 3 if version == "5" else 2
    for qos in ("0", "1", "2"):
        fast = _sub(topic, "-q", qos, "-V", version, paho=False, count=n)
        slow = _sub(topic, "-q", qos, "-V", version, paho=True, count=n)
        assert sorted(fast, key=lambda e: e["address"]) == sorted(slow, key=lambda e: e["address"])
    props = [e for e in fast if e["address"].endswith("/props")]
    if props:
        p = props[0]["meta"]["properties"]
        assert p["user_properties"] == [["site", "lab"], ["site", "two"]] and p["content_type"] == "application/json"
    for t in ("plain", "bin", "props"):
        _pub("-t", f"{topic}/{t}", "--null", "-r")


class Garbage:
    """A broker that accepts, acknowledges the subscription, then sends `tail`."""

    def __init__(self, tail: bytes):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(2)
        self.port = self.sock.getsockname()[1]
        self.tail = tail
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        conn, _ = self.sock.accept()
        conn.recv(4096)
        conn.sendall(b"\x20\x03\x00\x00\x00")  # CONNACK, MQTT 5
        data = conn.recv(4096)  # SUBSCRIBE
        mid = data[2:4]
        conn.sendall(b"\x90\x04" + mid + b"\x00\x00")  # SUBACK, QoS 0 granted
        conn.sendall(self.tail)
        try:
            conn.recv(4096)
        except OSError:
            pass
        conn.close()


@pytest.mark.parametrize("tail, why", [
    (b"\x30\x05\x00\x02\xff\xfe\x00", "a topic that is not UTF-8"),
    (b"\x30\xff\xff\xff\xff\x01", "remaining length"),
    (b"\x30\x08\x00\x01t\x05\x63\x00\x00x", "properties"),
    (b"\x30\x09\x00\x01t\x03\x63\x00\x00xy", "property 99"),
    (b"\xe0\x01\x87", "broker closed the connection: Not authorized"),
])
def test_garbage_from_the_broker_is_one_line(tail, why):
    fake = Garbage(tail)
    r = subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "sub", "-h", "127.0.0.1", "-p", str(fake.port),
                        "-t", "t", "-W", "5", "--no-reconnect"], capture_output=True, env=clean_env(), timeout=30)
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode in (4, 6), r.stderr
    assert why in lines[-1] and len([l for l in lines if "error" in l]) == 1, lines
    assert "Traceback" not in r.stderr.decode()


def test_a_packet_over_max_size_is_refused_before_it_is_read():
    """A hostile broker announcing a 200 MB PUBLISH: exit 6 at once, nothing buffered."""
    fake = Garbage(b"\x30\x80\x80\x80\x60" + b"\x00\x01t" + b"x" * 1000)
    r = subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "sub", "-h", "127.0.0.1", "-p", str(fake.port),
                        "-t", "t", "-W", "5", "--no-reconnect", "--max-size", "65536"], capture_output=True,
                       env=clean_env(), timeout=30)
    assert r.returncode == 6, r.stderr
    assert r.stderr.decode().strip().splitlines()[-1].endswith("a packet larger than 65,536 bytes (--max-size)")


def test_max_size_is_told_to_an_mqtt5_broker_which_then_drops_bigger_messages(peer, topic):
    peer("mosquitto-private")
    sub = subprocess.Popen([sys.executable, "-m", "iotctl", "mqtt", "sub", *PRIVATE, "-t", topic, "--max-size", "1000",
                            "-C", "1", "-W", "10"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    sub.stderr.readline()  # subscribed
    _pub("-t", topic, "-m", "x" * 2000)  # too big: the broker leaves it out
    _pub("-t", topic, "-m", "small")
    out, err = sub.communicate(timeout=30)
    assert sub.returncode == 0, err
    assert out == b"small\n"


# --------------------------------------------------------------------------- before the SUBACK


def _packet(sock) -> tuple[int, bytes]:
    """One MQTT packet from `sock`: (first byte, body)."""
    def exactly(n):
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    first = exactly(1)[0]
    length, shift = 0, 0
    while True:
        b = exactly(1)[0]
        length |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return first, exactly(length)


def _connect_properties(body: bytes) -> dict[int, bytes]:
    """The properties of an MQTT 5 CONNECT (identifier -> raw value; two-byte ones only,
    which is all these tests look at: 0x21 receive maximum), {} for MQTT 3."""
    name_len = int.from_bytes(body[:2], "big")
    p = 2 + name_len
    if body[p] != 5:
        return {}
    p += 4  # level, flags, keep-alive
    length, shift = 0, 0
    while True:
        b = body[p]
        p += 1
        length |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            break
    props, stop = {}, p + length
    while p < stop:
        ident = body[p]
        size = {0x11: 4, 0x21: 2, 0x27: 4}[ident]
        props[ident] = body[p + 1:p + 1 + size]
        p += 1 + size
    return props


class Backlog:
    """A broker resuming a session: CONNACK, then `n` QoS 1 PUBLISHes, then the SUBACK
    with `codes`; it records the CONNECT's properties and counts the PUBACKs."""

    def __init__(self, n: int, codes: bytes = b"\x01", v5: bool = True):
        from tests.faults import ScriptedPeer

        self.n, self.codes, self.v5 = n, codes, v5
        self.props: dict | None = None
        self.pubacks = 0
        self.done = threading.Event()
        self.peer = ScriptedPeer(self.handle)
        self.port = self.peer.port

    def finish(self) -> int:
        """The PUBACKs counted once the client has gone (its last ones are read first)."""
        self.done.wait(10)
        self.peer.close()
        return self.pubacks

    def handle(self, conn):
        try:
            self._play(conn)
        finally:
            self.done.set()

    def _play(self, conn):
        _, body = _packet(conn)
        self.props = _connect_properties(body)
        conn.sendall(b"\x20\x03\x01\x00\x00" if self.v5 else b"\x20\x02\x01\x00")  # session present
        first, body = _packet(conn)
        assert first >> 4 == 8, first  # SUBSCRIBE
        mid = body[:2]
        burst = bytearray()
        for i in range(self.n):
            payload = b"m%d" % i
            topic = b"\x00\x01t"
            packet_id = (i % 65535 + 1).to_bytes(2, "big")
            rest = topic + packet_id + (b"\x00" if self.v5 else b"") + payload
            burst += bytes([0x32, len(rest)]) + rest
        conn.sendall(bytes(burst))
        conn.sendall(b"\x90" + bytes([2 + self.v5 + len(self.codes)]) + mid + (b"\x00" if self.v5 else b"")
                     + self.codes)
        try:
            while True:
                first, _ = _packet(conn)
                if first >> 4 == 4:
                    self.pubacks += 1
                elif first >> 4 == 14:  # DISCONNECT
                    return
        except (EOFError, OSError):
            return


@pytest.mark.parametrize("version, n", [("5", 1500), ("3.1.1", 1500), ("5", 7000)])
def test_a_backlog_sent_before_the_suback_is_printed_and_acknowledged(version, n):
    broker = Backlog(n, v5=version == "5")
    r = subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "sub", "-h", "127.0.0.1", "-p", str(broker.port),
                        "-t", "t", "-q", "1", "-i", "resumed", "--no-clean-start", "-V", version, "-C", str(n),
                        "-W", "20"], capture_output=True, env=clean_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == [f"m{i}" for i in range(n)]
    assert broker.finish() == n
    # an MQTT 5 subscriber names its receive maximum (1000); MQTT 3 has none
    assert broker.props == ({0x21: (1000).to_bytes(2, "big"), 0x11: b"\xff\xff\xff\xff"} if version == "5" else {})


@pytest.mark.parametrize("version, code, exit_code, why", [
    ("5", b"\x87", 4, "broker refused: Not authorized"),
    ("5", b"\x97", 6, "broker refused: Quota exceeded"),
    ("3.1.1", b"\x80", 6, "broker refused: refused"),
])
def test_a_refusing_suback_is_one_line_after_a_backlog(version, code, exit_code, why):
    broker = Backlog(10, codes=code, v5=version == "5")
    r = subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "sub", "-h", "127.0.0.1", "-p", str(broker.port),
                        "-t", "t", "-q", "1", "-i", "resumed", "--no-clean-start", "-V", version, "-W", "20"],
                       capture_output=True, env=clean_env(), timeout=60)
    broker.finish()
    assert r.returncode == exit_code, r.stderr
    assert r.stderr.decode().splitlines() == [f"iotctl: error: cannot subscribe to 't': {why}"]
    assert r.stdout == b""


READERS = {"fast path": {}, "paho": {"IOTCTL_MQTT_PAHO_RECEIVE": "1"}}  # paho: also over websockets


@pytest.mark.parametrize("reader", READERS)
def test_a_suback_behind_a_long_backlog_is_still_checked(reader):
    """Past 2,048 messages before the SUBACK the subscriber hands them on (they are the
    resumed session's); a refusal behind them is still one line and exit 4."""
    broker = Backlog(7000, codes=b"\x87")
    r = subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "sub", "-h", "127.0.0.1", "-p", str(broker.port),
                        "-t", "t", "-q", "1", "-i", "resumed", "--no-clean-start", "-W", "20"],
                       capture_output=True, env=clean_env(**READERS[reader]), timeout=60)
    broker.finish()
    assert r.returncode == 4, r.stderr
    lines = r.stderr.decode().splitlines()
    assert lines[-1] == "iotctl: error: cannot subscribe to 't': broker refused: Not authorized", lines
    assert "Traceback" not in r.stderr.decode()
    printed = r.stdout.decode().splitlines()
    assert printed == [f"m{i}" for i in range(len(printed))] and len(printed) >= 2048


@pytest.mark.parametrize("reader", READERS)
def test_memory_stays_bounded_however_much_comes_before_the_suback(reader):
    """A broker that sends a resumed session its whole queue before the SUBACK (as
    Mosquitto 2.0.11 does): the peak does not grow with the queue (it held them all)."""
    from tests.helpers import PEAK_RSS_PROGRAM

    peaks = {}
    for n in (5_000, 100_000):
        broker = Backlog(n)
        r = subprocess.run([sys.executable, "-c", PEAK_RSS_PROGRAM, "mqtt", "sub", "-h", "127.0.0.1", "-p",
                            str(broker.port), "-t", "t", "-q", "1", "-i", "resumed", "--no-clean-start", "-C", str(n),
                            "-W", "60", "-o", "raw"], capture_output=True, env=clean_env(**READERS[reader]),
                           timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.count(b"\n") == n and broker.finish() == n
        peaks[n] = int(r.stderr.decode().split("peak-rss-kib ")[1].split()[0])
    assert peaks[100_000] <= peaks[5_000] + 4 * 1024, peaks

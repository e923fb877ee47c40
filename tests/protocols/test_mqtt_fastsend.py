"""The publisher's send fast path (fastsend.py) against paho's own publish path
(IOTCTL_MQTT_PAHO_SEND=1): the same command lines, against a recording broker of the
test's own, must put the same packets on the wire, byte for byte, and end the same
way (stdout, stderr, exit status); and what a fast publisher sends arrives at the real
Mosquitto exactly once. Also the peers that misbehave: a refusing acknowledgement, a
DISCONNECT mid-stream, a keep-alive ping never answered, a malformed packet, a
PUBLISH sent to the publisher's own session."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from tests.faults import ScriptedPeer
from tests.helpers import clean_env

PAHO = {"IOTCTL_MQTT_PAHO_SEND": "1"}
NORMAL = {"IOTCTL_EXPRESS": "0"}  # a one-message publish takes the normal path (a Publisher), not the lane


def _read_packet(conn: socket.socket, pending: bytearray) -> bytes | None:
    """One whole MQTT packet (fixed header included) from conn, or None at its end."""
    while True:
        if len(pending) >= 2:
            length, mult, i = 0, 1, 1
            while i < len(pending):
                b = pending[i]
                length += (b & 127) * mult
                mult *= 128
                i += 1
                if b < 128:
                    break
            else:
                i = -1
            if i > 0 and len(pending) >= i + length:
                packet = bytes(pending[:i + length])
                del pending[:i + length]
                return packet
        data = conn.recv(65536)
        if not data:
            return None
        pending += data


class Recorder(ScriptedPeer):
    """A broker that accepts any CONNECT, acknowledges every PUBLISH (PUBACK, or PUBREC
    and PUBCOMP) and records every packet it was sent. `script(n, packet)` may return
    bytes to answer the n-th PUBLISH (1-based) instead, or "close"."""

    def __init__(self, script=None, greeting: bytes = b"", pingresp: bool = True):
        self.script, self.greeting, self.pingresp = script, greeting, pingresp
        self.packets: list[bytes] = []
        self.done = threading.Event()
        super().__init__()

    def handle(self, conn):
        pending = bytearray()
        published = 0
        try:
            while True:
                packet = _read_packet(conn, pending)
                if packet is None:
                    return
                self.packets.append(packet)
                kind = packet[0] >> 4
                if kind == 1:  # CONNECT: answer as its protocol level wants
                    v5 = packet[packet.index(b"MQTT") + 4] == 5 if b"MQTT" in packet else False
                    conn.sendall((b"\x20\x03\x00\x00\x00" if v5 else b"\x20\x02\x00\x00") + self.greeting)
                elif kind == 3:
                    published += 1
                    qos = (packet[0] >> 1) & 3
                    answer = self.script(published, packet) if self.script else None
                    if answer == "close":
                        conn.shutdown(socket.SHUT_RDWR)
                        return
                    if answer is not None:
                        conn.sendall(answer)
                    elif qos:
                        conn.sendall((b"\x40\x02" if qos == 1 else b"\x50\x02") + _mid(packet))
                elif kind == 6:  # PUBREL
                    conn.sendall(b"\x70\x02" + packet[-2:])
                elif kind == 12 and self.pingresp:
                    conn.sendall(b"\xd0\x00")
                elif kind == 14:
                    return
        finally:
            self.done.set()

    def sent(self) -> list[bytes]:
        """The packets after CONNECT (whose client id is the command's)."""
        self.done.wait(10)
        return [p for p in self.packets if p[0] >> 4 != 1]

    def wire(self) -> tuple[list[bytes], list[bytes]]:
        """What was sent after CONNECT: the PUBLISHes in their order, and the other
        packets sorted (a PUBREL may go before or after the next PUBLISH: both right)."""
        sent = self.sent()
        return [p for p in sent if p[0] >> 4 == 3], sorted(p for p in sent if p[0] >> 4 != 3)


def _mid(packet: bytes) -> bytes:
    i = 1
    while packet[i] & 128:
        i += 1
    tlen = int.from_bytes(packet[i + 1:i + 3], "big")
    return packet[i + 3 + tlen:i + 5 + tlen]


def _pub(port: int, *args: str, stdin: bytes | None = None, env: dict | None = None, timeout: float = 60):
    r = subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "pub", "-h", "127.0.0.1", "-p", str(port),
                        "-i", "fastsend-test", *args], input=stdin, capture_output=True,
                       env=clean_env(**NORMAL, **(env or {})), timeout=timeout)
    return r.returncode, r.stdout, r.stderr.replace(str(port).encode(), b"PORT")


def _both(*args: str, stdin: bytes | None = None, script=None, **kw):
    """(fast, paho): each run's outcome and the packets its broker got."""
    runs = []
    for env in ({}, PAHO):
        recorder = Recorder(script, **kw)
        try:
            outcome = _pub(recorder.port, *args, stdin=stdin, env=env)
            runs.append((outcome, recorder.wire()))
        finally:
            recorder.close()
    return runs


LINES = b"".join(b"line %d\n" % i for i in range(300))


@pytest.mark.parametrize("version", ["5", "3.1.1", "3.1"])
@pytest.mark.parametrize("args, stdin", [
    (("-t", "a/b", "-l", "-q", "0"), LINES),
    (("-t", "a/b", "-l", "-q", "1"), LINES),
    (("-t", "a/b", "-l", "-q", "2", "-r"), LINES),
    (("-t", "ü/ẞ", "-t", "second", "-l", "-q", "1"), LINES[:200]),
    (("-t", "big", "-s", "-q", "1"), bytes(range(256)) * 1200),  # 300 KiB: a three-byte remaining length
    (("-t", "empty", "--null", "-q", "2", "-r"), None),
])
def test_the_same_packets_as_paho(args, stdin, version):
    fast, paho = _both(*args, "-V", version, stdin=stdin)
    assert fast[0] == paho[0] and fast[0][0] == 0, (fast[0], paho[0])
    assert len(fast[1][0]) == len(paho[1][0]) and fast[1] == paho[1]


def test_packet_ids_wrap_past_65535_as_paho():
    fast, paho = _both("-t", "rep", "-m", "x", "--repeat", "70000", "-q", "1")
    assert fast[0] == paho[0] and fast[0][0] == 0, (fast[0], paho[0])
    assert len(fast[1][0]) == 70000 and fast[1] == paho[1]


@pytest.mark.parametrize("args", [
    ("--content-type", "text/plain", "--user-property", "k=v", "--user-property", "k=w",
     "--correlation-data", "c-1", "--response-topic", "r/t", "--message-expiry", "3600",
     "--payload-format-indicator"),
    ("--content-type", "ü" * 40,),
    ("--encode", "json",),
])
def test_mqtt5_properties_are_the_same_packets_as_paho(args):
    stdin = b'{"a": 1}\n{"b": [2, 3]}\n'
    fast, paho = _both("-t", "props", "-l", "-q", "1", *args, stdin=stdin)
    assert fast[0] == paho[0] and fast[0][0] == 0, (fast[0], paho[0])
    assert fast[1] == paho[1]


def test_replayed_and_foreign_messages_are_the_same_packets_as_paho(tmp_path):
    """A capture brings its own properties (MQTT) or what crosses from its protocol
    (AMQP: content type, headers as user properties, correlation id, reply-to)."""
    capture = tmp_path / "capture.jsonl"
    envs = [
        {"protocol": "mqtt", "address": "cap/1", "payload": "one", "meta": {"qos": 1, "retain": False,
         "properties": {"content_type": "text/x", "user_properties": [["a", "b"]], "message_expiry_interval": 9,
                        "correlation_data": "0xdeadbeef", "response_topic": "back"}}},
        {"protocol": "amqp", "address": "cap.2", "payload": "two", "content_type": "application/json",
         "meta": {"exchange": "", "routing_key": "cap.2", "properties": {"content_type": "application/json",
                  "correlation_id": "c9", "reply_to": "answers"}, "headers": {"h": "v", "n": 3}}},
        {"protocol": "stomp", "address": "/queue/x", "payload": "three", "meta": {"headers": {"x-a": "1"}}},
        {"protocol": "mqtt", "address": "cap/4", "payload": "four", "meta": {"qos": 0, "retain": False}},
    ]
    capture.write_text("".join(json.dumps(e) + "\n" for e in envs))
    fast, paho = _both("--replay", str(capture), "-t", "replayed", "-q", "1", "--content-type", "cli/wins")
    assert fast[0] == paho[0] and fast[0][0] == 0, (fast[0], paho[0])
    assert len(fast[1][0]) == 4 and fast[1] == paho[1]


def test_what_a_fast_publisher_sends_arrives_exactly_once(peer):
    peer("mosquitto-private")
    topic = f"iotctl-test/fastsend/{uuid.uuid4().hex[:8]}"
    n = 20_000
    sub = subprocess.Popen([sys.executable, "-m", "iotctl", "mqtt", "sub", "-p", "11883", "-t", topic, "-q", "2",
                            "-C", str(n), "-W", "120", "-o", "raw"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=clean_env())
    assert b"subscribed" in sub.stderr.readline()
    half = [b"".join(b"%d\n" % i for i in range(a, b)) for a, b in ((0, n // 2), (n // 2, n))]
    lines = half[0] + half[1]
    for qos, part in (("1", half[0]), ("2", half[1])):
        r = subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "pub", "-p", "11883", "-t", topic, "-l", "-q", qos],
                           input=part, capture_output=True, env=clean_env(), timeout=120)
        assert r.returncode == 0, r.stderr
    out, err = sub.communicate(timeout=120)
    assert sub.returncode == 0, err
    assert sorted(out.splitlines(), key=int) == lines.splitlines()


# --------------------------------------------------------------------------- peers that misbehave


def _refuse_third(code: int, kind: int = 4):
    def script(n, packet):
        if n == 3:
            return bytes((kind << 4, 4)) + _mid(packet) + bytes((code, 0))
        return None
    return script


@pytest.mark.parametrize("qos, kind, code, exit_code", [
    ("1", 4, 0x87, 4),   # PUBACK: not authorised
    ("1", 4, 0x97, 6),   # PUBACK: quota exceeded
    ("2", 5, 0x90, 6),   # PUBREC: topic name invalid
])
def test_a_refusing_acknowledgement_ends_the_same_as_paho(tmp_path, qos, kind, code, exit_code):
    fast, paho = _both("-t", "r", "-l", "-q", qos, "--failed", str(tmp_path / "failed.jsonl"), stdin=LINES[:60],
                       script=_refuse_third(code, kind))
    assert fast[0] == paho[0], (fast[0], paho[0])
    rc, out, err = fast[0]
    assert rc == exit_code and err.count(b"\n") == 1 and b"refused 1 message(s)" in err, err
    assert b"Traceback" not in err


def test_a_disconnect_mid_stream_is_one_line_the_same_as_paho():
    script = (lambda n, packet: b"\xe0\x01\x8b" if n == 50 else None)  # DISCONNECT: server shutting down
    fast, paho = _both("-t", "d", "-l", "-q", "1", stdin=LINES, script=script)
    assert fast[0][0] == paho[0][0] == 6, (fast[0], paho[0])
    for rc, out, err in (fast[0], paho[0]):
        assert err.count(b"\n") == 1 and b"broker closed the connection: Server shutting down" in err, err


def test_a_broker_gone_mid_stream_is_exit_3_with_the_count(tmp_path):
    failed = tmp_path / "failed.jsonl"
    rc, out, err = _run_one(Recorder(lambda n, packet: "close" if n == 40 else None),
                            "-t", "c", "-l", "-q", "1", "--failed", str(failed), stdin=LINES)
    assert rc == 3 and err.count(b"\n") == 1 and b"connection lost" in err, err
    assert b"acknowledged 39" in err
    kept = [json.loads(line)["payload"] for line in failed.read_text().splitlines()]
    assert kept == [f"line {i}" for i in range(39, 300)]  # everything not acknowledged, in order


def _run_one(peer, *args, stdin=None, env=None):
    try:
        return _pub(peer.port, *args, stdin=stdin, env=env)
    finally:
        peer.close()


def _one_line_then_pause(recorder: Recorder, keepalive: int) -> subprocess.Popen:
    """`pub -l -q 1 -k KEEPALIVE` to the recorder, one line written, stdin left open."""
    proc = subprocess.Popen([sys.executable, "-m", "iotctl", "mqtt", "pub", "-h", "127.0.0.1", "-p",
                             str(recorder.port), "-t", "k", "-l", "-q", "1", "-k", str(keepalive)],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    proc.stdin.write(b"one\n")
    proc.stdin.flush()
    return proc


def test_an_unanswered_keepalive_ping_is_exit_3():
    """The input pauses; the publisher pings (at 3/4 of -k) and the broker never
    answers: the connection is given up after 1.5 × -k, one line."""
    recorder = Recorder(pingresp=False)
    proc = _one_line_then_pause(recorder, keepalive=2)
    try:
        started = time.monotonic()
        err = proc.stderr.read()
        took = time.monotonic() - started
        proc.wait(10)
    finally:
        proc.kill()
        recorder.close()
    assert proc.returncode == 3, err
    assert err.count(b"\n") == 1 and b"no answer to a keep-alive ping" in err, err
    assert 2 < took < 15
    assert any(p == b"\xc0\x00" for p in recorder.packets)


def test_a_paused_input_is_kept_alive_by_pings():
    recorder = Recorder()
    proc = _one_line_then_pause(recorder, keepalive=1)
    try:
        time.sleep(3.5)
        proc.stdin.write(b"two\n")
        proc.stdin.close()
        err = proc.stderr.read()
        proc.wait(10)
    finally:
        proc.kill()
        recorder.close()
    assert proc.returncode == 0, err
    kinds = [p[0] >> 4 for p in recorder.sent()]
    assert kinds.count(12) >= 2 and kinds.count(3) == 2, kinds


def test_a_malformed_packet_is_one_line():
    script = (lambda n, packet: b"\x40\xff\xff\xff\xff\xff" if n == 5 else None)
    rc, out, err = _run_one(Recorder(script), "-t", "m", "-l", "-q", "1", stdin=LINES)
    assert rc == 6 and err.count(b"\n") == 1 and b"malformed packet" in err, err
    assert b"Traceback" not in err


def test_a_publish_to_the_publishers_session_is_acknowledged():
    """A persistent session that has subscriptions gets PUBLISHes while it publishes:
    each is acknowledged (QoS 1 PUBACK; QoS 2 PUBREC, then PUBCOMP for its PUBREL) and
    otherwise ignored."""
    greeting = b"\x32\x08\x00\x01s\x12\x34\x00in" + b"\x34\x08\x00\x01s\x56\x78\x00in" + b"\x62\x02\x56\x78"
    recorder = Recorder(greeting=greeting)
    rc, out, err = _run_one(recorder, "-t", "p", "-l", "-q", "1", stdin=LINES[:30])
    assert rc == 0, err
    sent = recorder.sent()
    assert b"\x40\x02\x12\x34" in sent and b"\x50\x02\x56\x78" in sent and b"\x70\x02\x56\x78" in sent, sent

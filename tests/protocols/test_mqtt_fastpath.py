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

"""The express lane (iotctl/express.py) against the normal path: a corpus of command
lines runs both ways (IOTCTL_EXPRESS=0 forces the normal path) against the real
Mosquitto and fake peers, and stdout, stderr and the exit status must be the same;
what the lane published must have arrived."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid

import pytest

from tests.faults import ScriptedPeer
from tests.helpers import clean_env, free_port

PRIVATE = ("-p", "11883")


def _both(*args: str, stdin: bytes | None = None):
    runs = []
    for env in ({}, {"IOTCTL_EXPRESS": "0"}):
        r = subprocess.run([sys.executable, "-m", "iotctl", *args], input=stdin, capture_output=True,
                           env=clean_env(**env), timeout=60)
        runs.append((r.returncode, r.stdout, r.stderr))
    return runs


class FakeBroker(ScriptedPeer):
    """A TCP peer that accepts and then answers CONNECT with `connack` bytes (None:
    nothing at all) and never acknowledges anything."""

    def __init__(self, connack: bytes | None):
        self.connack = connack
        super().__init__()

    def handle(self, conn):
        if self.connack is not None:
            conn.recv(4096)
            conn.sendall(self.connack)


def _topic() -> str:
    return f"iotctl-test/express/{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("extra", [
    ("-m", "hello"),
    ("-m", "hello", "-q", "1"),
    ("-m", "hello", "-q", "2"),
    ("positional message",),
    ("--null", "-q", "1", "-r"),
    ("-m", "v311", "-V", "3.1.1", "-q", "1"),
    ("-m", "v31", "-V", "3.1", "-q", "2"),
    ("-m", "x", "-i", "express-fixed-id", "-k", "30", "--quiet"),
    ("--message=eq", "--qos=1", "--keepalive=5"),
    ("-m", "ü-ẞ \u2603"),
])
def test_success_is_the_same_both_ways(peer, extra):
    peer("mosquitto-private")
    topic = _topic()
    express, normal = _both("mqtt", "pub", *PRIVATE, "-t", topic, *extra)
    assert express == normal and express[0] == 0, (express, normal)


def test_what_the_lane_publishes_arrives(peer):
    peer("mosquitto-private")
    topic = _topic()
    r = subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "pub", *PRIVATE, "-t", topic, "-m", "kept ü",
                        "-r", "-q", "2"], capture_output=True, env=clean_env(), timeout=30)
    assert r.returncode == 0, r.stderr
    got = subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "retained", "list", *PRIVATE, topic, "-o", "jsonl"],
                         capture_output=True, env=clean_env(IOTCTL_EXPRESS="0"), timeout=30)
    assert b'"payload": "kept \xc3\xbc"' in got.stdout and b'"retain": true' in got.stdout
    subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "pub", *PRIVATE, "-t", topic, "--null", "-r"],
                   env=clean_env(), timeout=30)


@pytest.mark.parametrize("args", [
    ("-p", "1884", "-u", "iotctl", "-P", "wrong", "-m", "x"),
    ("-p", "1884", "-u", "iotctl", "-P", "wrong", "-V", "3.1.1", "-m", "x"),
    ("-p", "1884", "-m", "x"),
    ("-p", "1884", "-u", "reader", "-P", "reader-secret", "-m", "x", "-q", "1"),
    ("-p", "1884", "-u", "reader", "-P", "reader-secret", "-m", "x", "-q", "2"),
    ("-p", "1884", "-u", "reader", "-P", "reader-secret", "-m", "x", "-q", "1", "-V", "3.1.1"),
    ("-p", "1884", "-u", "iotctl", "-P", "iotctl-secret", "-m", "x", "-q", "1"),
])
def test_peer_errors_are_the_same_both_ways(peer, args):
    peer("mosquitto-auth")
    express, normal = _both("mqtt", "pub", "-t", _topic(), *args)
    assert express == normal, (express, normal)


def test_a_refused_port_is_the_same_both_ways():
    port = str(free_port(socket.SOCK_STREAM))
    express, normal = _both("mqtt", "pub", "-h", "127.0.0.1", "-p", port, "-t", "x", "-m", "y")
    assert express == normal and express[0] == 3, (express, normal)


@pytest.mark.parametrize("connack, extra, code", [
    (None, ("--connect-timeout", "0.5"), 5),                      # says nothing
    (b"\x20\x03\x00\x00\x00", ("-q", "1", "-W", "0.5"), 5),      # accepts, never acknowledges
    (b"\x20\x03\x00\x87\x00", (), 4),                             # refuses the login (MQTT 5)
    (b"\x20\x03\x00\x89\x00", (), 6),                             # server busy
    (b"\x20\x02\x00\x03", ("-V", "3.1.1"), 6),                    # 3.1.1: server unavailable
])
def test_fake_peers_are_the_same_both_ways(connack, extra, code):
    fake = FakeBroker(connack)
    try:
        express, normal = _both("mqtt", "pub", "-h", "127.0.0.1", "-p", str(fake.port), "-t", "x", "-m", "y", *extra)
    finally:
        fake.close()
    assert express == normal and express[0] == code, (express, normal)


@pytest.mark.parametrize("args", [
    ("mqtt", "pub", "-t", "a/+", "-m", "x"),           # invalid topic: the normal path says why
    ("mqtt", "pub", "-t", "x"),                       # no payload
    ("mqtt", "pub", "-t", "x", "-m", "a", "b"),       # two payloads
    ("mqtt", "pub", "-t", "x", "-q", "3", "-m", "a"),
    ("mqtt", "pub", "-t", "x", "-p", "0", "-m", "a"),
    ("mqtt", "pub", "-t", "x", "-V", "4", "-m", "a"),
    ("mqtt", "pub", "-h"),
    ("--version",),
])
def test_usage_errors_and_version_are_the_same_both_ways(args):
    express, normal = _both(*args)
    assert express == normal, (express, normal)


def test_the_lane_imports_neither_click_nor_paho(peer):
    peer("mosquitto-private")
    code = ("import sys; sys.argv = ['iotctl', 'mqtt', 'pub', '-p', '11883', '-t', 'iotctl-test/express/x', "
            "'-m', 'y']\nfrom iotctl.express import attempt\nassert attempt(sys.argv[1:]) == 0\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('click', 'paho', 'rich', 'aiocoap')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, env=clean_env(), timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == b"[]"


def test_a_profile_or_an_iotctl_variable_takes_the_normal_path(tmp_path):
    from iotctl.express import attempt

    import os

    os.environ["IOTCTL_MQTT_PORT"] = "1"
    try:
        assert attempt(["mqtt", "pub", "-t", "x", "-m", "y"]) is None
    finally:
        del os.environ["IOTCTL_MQTT_PORT"]
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "config" / "current").write_text("dev\n")
    os.environ["IOTCTL_CONFIG_DIR"] = str(tmp_path / "config")
    assert attempt(["mqtt", "pub", "-t", "x", "-m", "y"]) is None
    assert attempt(["mqtt", "pub", "-t", "x", "-m", "y", "--profile", "dev"]) is None

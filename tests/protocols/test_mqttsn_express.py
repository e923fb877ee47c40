"""The express lane of `mqttsn pub` (iotctl/protocols/mqttsn/express.py) against the
normal path: a corpus of command lines runs both ways (IOTCTL_EXPRESS=0 forces the
normal path) through `iotctl mqttsn gateway` (to Mosquitto) and fake gateways; stdout,
stderr and the exit status must be the same, and what the lane published must arrive.
And the lane really is taken: it imports no click."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import uuid

import pytest

from iotctl.protocols.mqttsn import codec as c
from iotctl.protocols.mqttsn.codec import Packet
from tests.helpers import clean_env, express_probe, free_port, interrupted_when
from tests.protocols.test_mqttsn import Gateway, short_topic


def run(*args: str, express: bool = True):
    env = clean_env() if express else clean_env(IOTCTL_EXPRESS="0")
    r = subprocess.run([sys.executable, "-m", "iotctl", "mqttsn", *args], capture_output=True, env=env, timeout=60)
    return r.returncode, r.stdout, r.stderr


def both(*args: str):
    return run(*args), run(*args, express=False)


@pytest.fixture(scope="module")
def topics(tmp_path_factory):
    base = f"iotctl-test/sn-express/{uuid.uuid4().hex[:8]}"
    path = tmp_path_factory.mktemp("sn-express") / "predefined.txt"
    path.write_text(f"7 {base}/seven\n")
    return {"base": base, "file": str(path)}


@pytest.fixture(scope="module")
def gateway(topics):
    gw = Gateway("--predefined", topics["file"])
    yield gw
    assert gw.interrupt() == 0, gw.stderr


@pytest.fixture
def gw(peer, gateway):
    peer("mosquitto")
    return ("-p", str(gateway.port))


@pytest.mark.parametrize("extra", [
    ("-m", "hello"),
    ("-m", "hello", "-q", "1"),
    ("-m", "hello", "-q", "2", "-r"),
    ("positional message", "-q", "1"),
    ("--null",),
    ("-m", "ü-ẞ \u2603", "--qos=1", "--keepalive=5"),
    ("-m", "x", "-i", "express-fixed-id", "--quiet"),
    ("-m", "x", "-i", "a-client-id-longer-than-23-octets", "-q", "1"),
    ("-m", "x", "--retry-interval", "0.5", "--retries", "3", "-W", "5"),
])
def test_success_is_the_same_both_ways(gw, topics, extra):
    express, normal = both("pub", *gw, "-t", f"{topics['base']}/{uuid.uuid4().hex[:6]}", *extra)
    assert express == normal and express[0] == 0, (express, normal)


@pytest.mark.parametrize("qos", ["-1", "0", "1", "2"])
def test_short_and_predefined_topics_are_the_same_both_ways(gw, qos):
    express, normal = both("pub", *gw, "-t", short_topic(), "-q", qos, "-m", "short")
    assert express == normal and express[0] == 0, (express, normal)
    express, normal = both("pub", *gw, "-T", "7", "-q", qos, "-m", "predefined")
    assert express == normal and express[0] == 0, (express, normal)


@pytest.mark.parametrize("qos", ["-1", "0", "1", "2"])
def test_an_unknown_predefined_id_is_refused_the_same_both_ways(gw, qos):
    express, normal = both("pub", *gw, "-T", "99", "-q", qos, "-m", "x")
    assert express == normal and express[0] == 6, (express, normal)


def test_what_the_lane_publishes_arrives(gw, topics):
    topic = f"{topics['base']}/kept"
    r = run("pub", *gw, "-t", topic, "-m", "kept ü", "-r", "-q", "1")
    assert r[0] == 0, r
    got = subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "retained", "list", "-p", "1883", topic, "-o", "jsonl"],
                         capture_output=True, env=clean_env(IOTCTL_EXPRESS="0"), timeout=30)
    assert b'"payload": "kept \xc3\xbc"' in got.stdout, got
    subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "pub", "-t", topic, "--null", "-r"], env=clean_env(),
                   timeout=30)


@pytest.mark.parametrize("extra", [("-t", "x/y"), ("-t", "ab", "-q", "-1"), ("-t", "ab", "-q", "1")])
def test_a_refused_port_is_the_same_both_ways(extra):
    express, normal = both("pub", "-p", str(free_port()), *extra, "-m", "x")
    assert express == normal and express[0] == 3, (express, normal)


class FakeGateway:
    """A UDP peer answering as `script` says: a dict from packet type to the packets
    (a function of the request) to send back; a type not in it gets nothing."""

    def __init__(self, script: dict):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.script = script
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                data, peer = self.sock.recvfrom(65536)
            except OSError:
                return
            try:
                p = c.decode(data)
            except c.CodecError:
                continue
            for answer in self.script.get(p.type, lambda p: [])(p):
                self.sock.sendto(answer if isinstance(answer, bytes) else c.encode(answer), peer)

    def close(self):
        self.sock.close()


CONNACK = {c.CONNECT: lambda p: [Packet(c.CONNACK, return_code=0)]}
REGACK = {c.REGISTER: lambda p: [Packet(c.REGACK, topic_id=5, msg_id=p.msg_id, return_code=0)]}
GOODBYE = {c.DISCONNECT: lambda p: [Packet(c.DISCONNECT)]}
FAST = ("--retry-interval", "0.2", "--retries", "2")


@pytest.mark.parametrize("script, extra, code", [
    ({}, FAST, 5),                                                                   # no CONNACK
    ({c.CONNECT: lambda p: [Packet(c.CONNACK, return_code=3)]}, (), 6),              # refuses the client
    ({**CONNACK, **GOODBYE, c.REGISTER: lambda p: [Packet(c.REGACK, topic_id=0, msg_id=p.msg_id,
                                                          return_code=1)]}, (), 6),  # refuses the topic
    ({**CONNACK, **GOODBYE}, ("-t", "long/topic") + FAST, 5),                        # no REGACK
    ({**CONNACK, **REGACK, **GOODBYE}, ("-q", "1", "-W", "1"), 5),                   # no PUBACK
    ({**CONNACK, **REGACK, **GOODBYE}, ("-q", "1") + FAST, 5),                       # PUBLISH sent 3 times
    ({**CONNACK, **REGACK, **GOODBYE}, ("-W", "1"), 5),                              # no PINGRESP
    ({**CONNACK, **REGACK, **GOODBYE, c.PUBLISH: lambda p: [Packet(c.PUBREC, msg_id=p.msg_id)]},
     ("-q", "2", "-W", "1"), 5),                                                     # no PUBCOMP
    ({**CONNACK, **REGACK, c.PUBLISH: lambda p: [Packet(c.DISCONNECT)]}, ("-q", "1"), 3),  # goes away
    ({**CONNACK, **REGACK, **GOODBYE, c.PUBLISH: lambda p: [b"\x02", Packet(c.PUBACK, topic_id=5, msg_id=p.msg_id,
                                                                             return_code=0)]},
     ("-q", "1"), 0),                                                                # a bad datagram first
    ({**CONNACK, **REGACK, **GOODBYE, c.PUBLISH: lambda p: [Packet(c.PUBACK, topic_id=5, msg_id=p.msg_id,
                                                                    return_code=1)]},
     ("-q", "2"), 6),                                                                # QoS 2 refused by PUBACK
])
def test_fake_gateways_are_the_same_both_ways(script, extra, code):
    fake = FakeGateway(script)
    try:
        args = ("pub", "-p", str(fake.port), *(("-t", "x/y") if "-t" not in extra else ()), *extra, "-m", "m")
        express, normal = both(*args)
    finally:
        fake.close()
    assert express == normal and express[0] == code, (express, normal)


def test_ctrl_c_while_connecting_is_the_same_both_ways():
    runs = []
    for env in (clean_env(), clean_env(IOTCTL_EXPRESS="0")):
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        try:
            runs.append(interrupted_when(["mqttsn", "pub", "-p", str(silent.getsockname()[1]), "-t", "x/y", "-m", "m"],
                                         silent, env))
        finally:
            silent.close()
    assert runs[0] == runs[1] and runs[0][0] == 130, runs


def test_ctrl_c_while_publishing_is_the_same_both_ways():
    """Connected, the QoS 0 message sent, its round trip (PINGREQ) never answered."""
    runs = []
    for env in (clean_env(), clean_env(IOTCTL_EXPRESS="0")):
        watch, notify = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        watch.bind(("127.0.0.1", 0))
        fake = FakeGateway({**CONNACK, **REGACK, **GOODBYE,
                            c.PINGREQ: lambda p: (notify.sendto(b"!", watch.getsockname()), [])[1]})
        try:
            runs.append(interrupted_when(["mqttsn", "pub", "-p", str(fake.port), "-t", "x/y", "-m", "m"], watch, env))
        finally:
            fake.close()
            watch.close()
            notify.close()
    assert runs[0] == runs[1] and runs[0][0] == 130, runs


@pytest.mark.parametrize("args", [
    ("pub", "-m", "x"),                                   # no topic
    ("pub", "-t", "a", "-T", "7", "-m", "x"),
    ("pub", "-t", "a/+", "-m", "x"),
    ("pub", "-t", "", "-m", "x"),
    ("pub", "-t", "a", "-q", "3", "-m", "x"),
    ("pub", "-t", "long/topic", "-q", "-1", "-m", "x"),
    ("pub", "-t", "a"),                                   # no payload
    ("pub", "-t", "a", "-m", "x", "y"),
    ("pub", "-T", "0", "-m", "x"),
    ("pub", "-t", "a", "-p", "0", "-m", "x"),
    ("pub", "-t", "a", "-W", "0", "-m", "x"),
    ("pub", "-t", "a", "-c", "-m", "x"),                  # a persistent session needs -i
    ("pub", "-t", "a", "--retries", "101", "-m", "x"),
    ("pub", "-t", "a", "-q", "-1", "--will-topic", "w", "-m", "x"),
])
def test_usage_errors_take_the_normal_path_and_are_the_same(args):
    from iotctl.protocols.mqttsn.express import pub

    assert pub(list(args)) is None
    express, normal = both(*args)
    assert express == normal and express[0] == 2, (express, normal)


def test_what_the_lane_does_not_know_takes_the_normal_path():
    from iotctl.protocols.mqttsn.express import pub

    for argv in (["pub", "-t", "a", "-l"], ["pub", "-t", "a", "-f", "x"], ["pub", "-t", "a", "-m", "x", "--sleep", "5"],
                 ["pub", "--url", "mqttsn://127.0.0.1:1883/a", "-m", "x"], ["sub", "-t", "a"],
                 ["pub", "-t", "a", "-m", "x", "-o", "json"], ["pub", "-t", "a", "-m", "x", "--repeat", "2"],
                 ["pub", "-t", "a", "-m", "x", "-h", "[::1]"], ["pub", "-t", "a", "-m", "x", "-h", "no-such-host.invalid"],
                 ["pub", "-t", "a", "-m", "x" * 70000]):
        assert pub(argv) is None, argv


def test_the_lane_imports_no_click(gw, topics):
    code, _, modules = express_probe("mqttsn", "pub", *gw, "-t", f"{topics['base']}/probe", "-m", "y", "-q", "1")
    assert code == 0
    assert not {"click", "rich", "paho"} & modules

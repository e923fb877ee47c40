"""`iotctl bridge` across protocols against the real peers, counting what arrives
(issue 17): MQTT → AMQP queue (10,000 at QoS 1), AMQP queue → MQTT (killed and started
again), CoAP observe of `coap serve` → HTTP PUTs to nginx, MQTT-SN through the gateway →
STOMP, STOMP → XMPP, XMPP → MQTT, a refusing AMQP queue, a cut AMQP connection. The
HTTP listen → MQTT pair is in tests/protocols/test_http_bridge.py."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import CERTS
from tests.faults import TcpRelay
from tests.helpers import clean_env, free_port, wait_until

XDIST_GROUP = "frank-grace"  # the XMPP accounts this module and test_crossing log in as
MQTT = "mqtt://127.0.0.1:11883"
AMQP = "amqp://guest:guest@127.0.0.1:5672/%2f"


def _iotctl(*args: str, input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iotctl", *args], input=input, capture_output=True,
                          env=clean_env(), timeout=timeout)


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "iotctl", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=clean_env())


def _started(proc: subprocess.Popen) -> str:
    line = proc.stderr.readline().decode()
    assert "bridging" in line, line + (proc.stderr.read().decode() if proc.poll() is not None else "")
    return line


def _ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, r.stderr.decode()
    return r


def _name() -> str:
    return uuid.uuid4().hex[:10]


def _queue(name: str, *args: str) -> str:
    _ok(_iotctl("amqp", "declare", "queue", name, *args))
    return name


def _drain_queue(name: str, idle: float = 2.0) -> list[str]:
    r = _iotctl("amqp", "consume", name, "--idle-timeout", str(idle), "-W", "120", "-o", "raw")
    assert r.returncode in (0, 5), r.stderr
    _iotctl("amqp", "delete", "queue", name, "--if-exists")
    return r.stdout.decode().splitlines()


def _mqtt_session(cid: str, topic: str) -> None:
    _iotctl("mqtt", "sub", "-p", "11883", "-i", cid, "--no-clean-start", "--session-expiry", "300", "-q", "1",
            "-t", topic, "-W", "0.3")


def _mqtt_collect(cid: str, topic: str, idle: float = 2.0) -> list[str]:
    r = _iotctl("mqtt", "sub", "-p", "11883", "-i", cid, "--no-clean-start", "--session-expiry", "300", "-q", "1",
                "-t", topic, "--idle-timeout", str(idle), "-W", "120")
    assert r.returncode in (0, 5), r.stderr
    return r.stdout.decode().splitlines()


def test_mqtt_to_an_amqp_queue_10000_at_qos1_exactly(peer):
    peer("mosquitto-private")
    peer("rabbitmq")
    n = _name()
    q = _queue(f"bridge-{n}", "--durable")
    src, cid = f"pairs/{n}", f"br-{n}"
    _mqtt_session(cid, f"{src}/#")
    lines = [f"{i:05d}" for i in range(10000)]
    _ok(_iotctl("mqtt", "pub", "-p", "11883", "-t", f"{src}/x", "-q", "1", "-l",
                input=("\n".join(lines) + "\n").encode()))
    bridge = _iotctl("bridge", f"{MQTT}/{src}/%23?qos=1&client_id={cid}&clean_start=false",
                     f"{AMQP}?queue={q}&persistent=true", "-C", "10000", "-W", "120", timeout=180)
    _ok(bridge)
    assert "(at least once)" in bridge.stderr.decode()
    got = _drain_queue(q)
    assert len(got) == 10000 and sorted(got) == lines


def test_an_amqp_queue_to_mqtt_killed_and_started_again_loses_nothing(peer):
    peer("mosquitto-private")
    peer("rabbitmq")
    n = _name()
    q = _queue(f"bridge-{n}", "--durable")
    lines = [f"{i:05d}" for i in range(3000)]
    _ok(_iotctl("amqp", "publish", "-r", q, "-l", "--persistent", input=("\n".join(lines) + "\n").encode()))
    dst, cid = f"pairs/{n}", f"dst-{n}"
    _mqtt_session(cid, f"{dst}/#")
    source, target = f"{AMQP}?queue={q}&prefetch=100", f"{MQTT}/{dst}/x?qos=1"
    bridge = _spawn("bridge", source, target, "--max-inflight", "50", "--stats", "--stats-format", "jsonl")
    _started(bridge)

    def carried() -> bool:
        line = bridge.stderr.readline().decode()
        return line.startswith("{") and json.loads(line)["carried"] > 300

    wait_until(carried, 60, "the bridge carrying something")
    bridge.send_signal(signal.SIGKILL)
    bridge.wait(10)
    _ok(_iotctl("bridge", source, target, "--idle-timeout", "3", "-W", "120", timeout=180))
    got = _mqtt_collect(cid, f"{dst}/#")
    assert set(got) == set(lines)
    assert len(got) - len(set(got)) <= 100 + 50  # the prefetch plus the window at most
    assert _drain_queue(q, idle=1) == []


def test_a_refusing_amqp_queue_sends_the_rest_to_failed(peer, tmp_path):
    peer("mosquitto-private")
    peer("rabbitmq")
    n = _name()
    q = _queue(f"bridge-{n}", "--arg", "x-max-length:int=5", "--arg", "x-overflow=reject-publish")
    src = f"pairs/{n}"
    failed = tmp_path / "refused.jsonl"
    bridge = _spawn("bridge", f"{MQTT}/{src}/#?qos=1", f"{AMQP}?queue={q}", "--failed", str(failed),
                    "--idle-timeout", "3", "-W", "60", "--max-inflight", "1")
    _started(bridge)
    _ok(_iotctl("mqtt", "pub", "-p", "11883", "-t", f"{src}/x", "-q", "1", "-l",
                input=b"".join(f"m{i}\n".encode() for i in range(12))))
    out, err = bridge.communicate(timeout=90)
    assert bridge.returncode == 0, err
    kept = [json.loads(line)["payload"] for line in failed.read_text().splitlines()]
    queued = _drain_queue(q)
    assert len(queued) == 5 and sorted(queued + kept) == sorted(f"m{i}" for i in range(12))
    assert "written to" in err.decode() and "carried 5" in err.decode()


def test_a_cut_amqp_connection_is_reconnected_and_nothing_is_lost(peer):
    peer("mosquitto-private")
    peer("rabbitmq")
    n = _name()
    q = _queue(f"bridge-{n}", "--durable")
    src, cid = f"pairs/{n}", f"br-{n}"
    _mqtt_session(cid, f"{src}/#")
    lines = [f"{i:05d}" for i in range(2000)]
    with TcpRelay(5672) as relay:
        bridge = _spawn("bridge", f"{MQTT}/{src}/%23?qos=1&client_id={cid}&clean_start=false",
                        f"amqp://guest:guest@127.0.0.1:{relay.port}/%2f?queue={q}", "--idle-timeout", "4", "-W", "120")
        _started(bridge)
        _ok(_iotctl("mqtt", "pub", "-p", "11883", "-t", f"{src}/x", "-q", "1", "-l",
                    input=("\n".join(lines[:1000]) + "\n").encode()))
        relay.cut()
        _ok(_iotctl("mqtt", "pub", "-p", "11883", "-t", f"{src}/x", "-q", "1", "-l",
                    input=("\n".join(lines[1000:]) + "\n").encode()))
        out, err = bridge.communicate(timeout=150)
    assert bridge.returncode == 0, err
    got = _drain_queue(q)
    assert set(got) == set(lines)


def test_coap_observe_of_the_simulated_device_into_http_puts_at_nginx(peer):
    """The seed's REST-CoAP path: a CoAP device's values uploaded to a REST API."""
    peer("nginx")
    port = free_port()
    serve = _spawn("coap", "serve", "-p", str(port), "--interval", "0.2", "--quiet")
    run = _name()
    store = Path("/var/tmp/iotctl-peers/nginx/store") / f"coap-{run}"
    try:
        wait_until(lambda: _iotctl("coap", "get", f"coap://127.0.0.1:{port}/time", "-W", "2").returncode == 0,
                   15, "coap serve answering")
        r = _iotctl("bridge", f"coap://127.0.0.1:{port}/sensors/temperature#accept=json",
                    "http://127.0.0.1:18080/store/#method=put", "--address", f"/store/coap-{run}/{{meta[observe]}}.json",
                    "-C", "3", "-W", "60")
        _ok(r)
        assert "(at most once: the source cannot deliver a message again)" in r.stderr.decode()
        files = sorted(store.glob("*.json"))
        assert len(files) == 3
        for f in files:
            assert "temperature" in f.read_text()
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(10)
        import shutil

        shutil.rmtree(store, ignore_errors=True)


def test_mqttsn_through_the_gateway_into_a_stomp_queue(peer):
    peer("mosquitto")
    peer("rabbitmq-stomp")
    n = _name()
    gw = _spawn("mqttsn", "gateway", "-p", "0", "--broker", "mqtt://127.0.0.1:1883")
    try:
        import re

        text = gw.stderr.readline().decode()
        while "listening on udp" not in text and text:
            text = gw.stderr.readline().decode()
        port = int(re.search(r"127\.0\.0\.1:(\d+)", text).group(1))
        topic, queue = f"pairs/{n}", f"/queue/bridge-{n}"
        bridge = _spawn("bridge", f"mqttsn://127.0.0.1:{port}/{topic}?qos=1",
                        f"stomp://guest:guest@127.0.0.1:61613{queue}", "-C", "20", "-W", "60")
        _started(bridge)
        _ok(_iotctl("mqtt", "pub", "-t", topic, "-q", "1", "-l", input=b"".join(f"s{i}\n".encode() for i in range(20))))
        out, err = bridge.communicate(timeout=90)
        assert bridge.returncode == 0, err
        r = _iotctl("stomp", "sub", queue, "-u", "guest", "-P", "guest", "-C", "20", "-W", "20", "-o", "raw")
        assert sorted(r.stdout.decode().splitlines()) == sorted(f"s{i}" for i in range(20)), r.stderr
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(10)
        _iotctl("amqp", "delete", "queue", f"bridge-{n}", "--if-exists")  # STOMP made it durable


def test_stomp_to_xmpp_and_xmpp_to_mqtt(peer):
    peer("rabbitmq-stomp")
    peer("mosquitto-private")
    peer("prosody")  # accounts NAME@localhost with password NAME-pw (scripts/services up prosody)
    a_user, b_user, domain = "frank", "grace", "localhost"  # no other test module logs in as them
    alice, bob, alice_pw, bob_pw = f"{a_user}@{domain}", f"{b_user}@{domain}", f"{a_user}-pw", f"{b_user}-pw"
    n = _name()
    queue = f"/queue/bridge-{n}"
    # STOMP -> XMPP: alice sends to bob
    to_xmpp = _spawn("bridge", f"stomp://guest:guest@127.0.0.1:61613{queue}",
                     f"xmpp://{a_user}:{alice_pw}@{domain}/{bob}?server=127.0.0.1:5222&cafile={CERTS / 'ca.crt'}", "-C", "5", "-W", "60")
    # XMPP -> MQTT: bob's messages from alice go to MQTT
    dst, cid = f"pairs/{n}", f"dst-{n}"
    _mqtt_session(cid, f"{dst}/#")
    to_mqtt = _spawn("bridge", f"xmpp://{b_user}:{bob_pw}@{domain}/{alice}?server=127.0.0.1:5222&cafile={CERTS / 'ca.crt'}",
                     f"{MQTT}/{dst}/chat?qos=1", "-C", "5", "-W", "60")
    try:
        _started(to_xmpp)
        _started(to_mqtt)
        _ok(_iotctl("stomp", "send", queue, "-u", "guest", "-P", "guest", "-l",
                    input=b"".join(f"hello {i}\n".encode() for i in range(5))))
        for proc in (to_xmpp, to_mqtt):
            out, err = proc.communicate(timeout=90)
            assert proc.returncode == 0, err
        assert sorted(_mqtt_collect(cid, f"{dst}/#")) == [f"hello {i}" for i in range(5)]
    finally:
        for proc in (to_xmpp, to_mqtt):
            if proc.poll() is None:
                proc.kill()
        _iotctl("amqp", "delete", "queue", f"bridge-{n}", "--if-exists")  # STOMP made it durable


def test_an_amqp_routing_key_becomes_an_mqtt_topic_by_default(peer):
    """No --address, no topic in the target URL: the routing key a.b.c is the topic a/b/c
    (as RabbitMQ's MQTT plugin maps them; the other way round is in test_amqp_endpoints)."""
    peer("mosquitto-private")
    peer("rabbitmq")
    n = _name()
    cid = f"dst-{n}"
    _mqtt_session(cid, f"keys/{n}/#")
    bridge = _spawn("bridge", f"{AMQP}?exchange=amq.topic&routing_key=keys.{n}.%23", f"{MQTT}?qos=1",
                    "-C", "2", "-W", "60")
    _started(bridge)
    for key, payload in ((f"keys.{n}.dev1.t", "21.5"), (f"keys.{n}.dev2", "on")):
        _ok(_iotctl("amqp", "publish", "-e", "amq.topic", "-r", key, "-m", payload))
    out, err = bridge.communicate(timeout=90)
    assert bridge.returncode == 0, err
    r = _iotctl("mqtt", "sub", "-p", "11883", "-i", cid, "--no-clean-start", "--session-expiry", "300", "-q", "1",
                "-t", f"keys/{n}/#", "-v", "--idle-timeout", "2", "-W", "60")
    assert sorted(r.stdout.decode().splitlines()) == [f"keys/{n}/dev1/t 21.5", f"keys/{n}/dev2 on"], r.stderr


STOMP_READERS = {  # a user who may read but not write: RabbitMQ closes the connection after the ERROR, ActiveMQ not
    "rabbitmq-stomp": "stomp://iotctl-stomp-reader:reader-secret@127.0.0.1:61613{dest}?vhost=iotctl-stomp",
    "activemq": "stomp://reader:reader-secret@127.0.0.1:61614{dest}",
}


@pytest.mark.parametrize("broker", sorted(STOMP_READERS))
def test_a_stomp_destination_the_user_may_not_write(peer, tmp_path, broker):
    """Each refused SEND is a refusal of that message: --failed keeps it and the bridge
    goes on (connecting again where the broker closed the connection); without
    --failed the bridge stops (exit 6) and the source keeps the messages."""
    peer("mosquitto-private")
    peer(broker)
    n = _name()
    src, cid = f"pairs/{n}", f"br-{n}"
    target = STOMP_READERS[broker].format(dest=f"/queue/bridge-{n}")
    failed = tmp_path / "refused.jsonl"
    bridge = _spawn("bridge", f"{MQTT}/{src}/a?qos=1", target, "--failed", str(failed), "--idle-timeout", "3",
                    "-W", "60")
    _started(bridge)
    _ok(_iotctl("mqtt", "pub", "-p", "11883", "-t", f"{src}/a", "-q", "1", "-l", input=b"m0\nm1\nm2\n"))
    out, err = bridge.communicate(timeout=90)
    assert bridge.returncode == 0, err
    assert [json.loads(line)["payload"] for line in failed.read_text().splitlines()] == ["m0", "m1", "m2"]
    err = err.decode()
    import re

    assert sum(map(int, re.findall(r"warning: the target refused (\d+) message\(s\)", err))) == 3, err
    assert "refused 3" in err.strip().splitlines()[-1], err
    # the default: stop at the first refusal, nothing acknowledged at the source
    _mqtt_session(cid, f"{src}/b")
    _ok(_iotctl("mqtt", "pub", "-p", "11883", "-t", f"{src}/b", "-q", "1", "-l", input=b"k0\nk1\n"))
    r = _iotctl("bridge", f"{MQTT}/{src}/b?qos=1&client_id={cid}&clean_start=false&session_expiry=300", target,
                "-W", "60")
    assert r.returncode == 6, r.stderr
    error, hint = r.stderr.decode().strip().splitlines()[-2:]
    assert error.startswith("iotctl: error: bridge: the target refused ") and "refused (kept by the source)" in error
    assert hint == "iotctl: hint: --on-refused requeue|failed|drop keeps the bridge going"
    assert sorted(_mqtt_collect(cid, f"{src}/b")) == ["k0", "k1"]


def test_on_refused_requeue_gives_the_refused_back_to_the_queue(peer):
    """--on-refused requeue: a queue that refuses (x-max-length, reject-publish) gets its 5,
    the rest goes back to the source queue again and again; Ctrl-C then ends it with
    nothing lost."""
    peer("rabbitmq")
    n = _name()
    source = _queue(f"bridge-{n}-in", "--durable")
    target = _queue(f"bridge-{n}-out", "--arg", "x-max-length:int=5", "--arg", "x-overflow=reject-publish")
    _ok(_iotctl("amqp", "publish", "-r", source, "-l", input=b"".join(f"m{i}\n".encode() for i in range(12))))
    bridge = _spawn("bridge", f"{AMQP}?queue={source}", f"{AMQP}?queue={target}", "--on-refused", "requeue",
                    "--max-inflight", "1", "--stats", "--stats-format", "jsonl")
    _started(bridge)

    def requeued() -> bool:
        line = bridge.stderr.readline().decode()
        stats = json.loads(line) if line.startswith("{") else {}
        return stats.get("carried") == 5 and stats.get("requeued", 0) >= 14  # each of the 7 at least twice

    wait_until(requeued, 60, "the refused given back twice")
    bridge.send_signal(signal.SIGINT)
    out, err = bridge.communicate(timeout=30)
    assert bridge.returncode == 0, err
    assert "given back to the source" in err.decode()
    into = _drain_queue(target)
    back = _drain_queue(source)
    assert len(into) == 5 and sorted(into + back) == sorted(f"m{i}" for i in range(12)), (into, back)


def test_an_http_ndjson_stream_into_mqtt(peer):
    """An HTTP stream source (`http get --stream`: a message per NDJSON line) into an MQTT
    session: at most once (a stream is not delivered again)."""
    peer("nginx")
    peer("mosquitto-private")
    n = _name()
    store = Path("/var/tmp/iotctl-peers/nginx/store") / f"stream-{n}.ndjson"
    store.write_text('{"t": 1}\n{"t": 2}\n{"t": 3}\n')
    dst, cid = f"pairs/{n}", f"dst-{n}"
    _mqtt_session(cid, f"{dst}/#")
    try:
        r = _ok(_iotctl("bridge", f"http://127.0.0.1:18080/store/stream-{n}.ndjson", f"{MQTT}/{dst}/t?qos=1",
                        "-C", "3", "-W", "60"))
    finally:
        store.unlink()
    assert "(at most once: the source cannot deliver a message again)" in r.stderr.decode()
    assert _mqtt_collect(cid, f"{dst}/#") == ['{"t": 1}', '{"t": 2}', '{"t": 3}']

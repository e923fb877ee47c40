"""`iotctl bench` beyond MQTT: RabbitMQ over AMQP 0-9-1 (publisher confirms) and STOMP
(receipts), the MQTT-SN gateway at QoS 1, `coap serve` (request/response: a request per
message, each response its confirmation) and the HTTP listener (`http+listen://` as the
subscriber, an `http://` sink as the publisher). Each asserts what the user sees: the exit
status and the -o json summary's counts, exact, with nothing lost or duplicated."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid

import pytest

from tests.helpers import clean_env, coap_answers, free_port, mqttsn_gateway, stop, wait_until

AMQP = "amqp://guest:guest@127.0.0.1:5672/%2f"
STOMP = "stomp://iotctl-stomp:iotctl-stomp-secret@127.0.0.1:61613"  # scripts/services.d/31-rabbitmq-stomp.sh


def _iotctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iotctl", *args], capture_output=True, env=clean_env(),
                          timeout=timeout)


def _bench(*args: str) -> tuple[int, dict, str]:
    r = _iotctl("bench", *args, "-o", "json", timeout=180)
    out = r.stdout.decode()
    return r.returncode, (json.loads(out) if out.strip() else {}), r.stderr.decode()


def _name() -> str:
    return uuid.uuid4().hex[:10]


def _exact(s: dict, sent: int, received: int, err: str) -> None:
    """Everything sent was confirmed, arrived as often as it should, once, none lost."""
    assert (s["sent"], s["confirmed"], s["received"]) == (sent, sent, received), err
    assert (s["lost"], s["lost_confirmed"], s["duplicates"], s["refused"], s["errors"]) == (0, 0, 0, 0, {}), err
    assert s["confirm_ms"]["count"] == sent
    if received:
        assert s["latency_ms"]["count"] == received
        assert s["latency_ms"]["p50"] <= s["latency_ms"]["p99"] <= s["latency_ms"]["max"]


# --------------------------------------------------------------------------- RabbitMQ


@pytest.fixture
def queue(peer):
    peer("rabbitmq")
    name = f"bench-{_name()}"
    r = _iotctl("amqp", "declare", "queue", name)
    assert r.returncode == 0, r.stderr
    yield name
    _iotctl("amqp", "delete", "queue", name)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_amqp_queue_with_confirms_counts_are_exact(queue, workers):
    code, s, err = _bench(f"{AMQP}?queue={queue}", "--publishers", "2", "--count", "2000", "--workers", workers)
    assert code == 0, err
    _exact(s, 4000, 4000, err)
    assert (s["publishers"], s["subscribers"]) == (2, 1)


def test_amqp_exchange_fans_out_to_every_subscriber(peer):
    peer("rabbitmq")
    # the tap form as the source: each subscriber its own queue bound to the exchange
    code, s, err = _bench(f"{AMQP}?exchange=amq.topic&routing_key=bench.{_name()}", "--subscribers", "2",
                          "--count", "1000")
    assert code == 0, err
    _exact(s, 1000, 2000, err)


def test_stomp_with_receipts_counts_are_exact(peer):
    peer("rabbitmq-stomp")
    code, s, err = _bench(f"{STOMP}/queue/bench-{_name()}?vhost=iotctl-stomp", "--publishers", "2",
                          "--count", "1000")
    assert code == 0, err
    _exact(s, 2000, 2000, err)


# --------------------------------------------------------------------------- MQTT-SN


@pytest.fixture
def gateway(peer):
    peer("mosquitto-private")
    with mqttsn_gateway("mqtt://127.0.0.1:11883") as port:
        yield port


@pytest.mark.parametrize("workers", ["1", "2"])
def test_mqttsn_gateway_qos1_counts_are_exact(gateway, workers):
    code, s, err = _bench(f"mqttsn://127.0.0.1:{gateway}/bench/{_name()}?qos=1", "--publishers", "2",
                          "--count", "500", "--workers", workers)
    assert code == 0, err
    _exact(s, 1000, 1000, err)


# --------------------------------------------------------------------------- CoAP


@pytest.fixture
def coap_device():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "iotctl", "coap", "serve", "-p", str(port), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env())
    try:
        wait_until(lambda: proc.poll() is not None or coap_answers(port), 30, "coap serve answering")
        assert proc.poll() is None, "coap serve exited"
        yield port
    finally:
        stop(proc, timeout=10)


def test_coap_serve_one_request_per_message(coap_device):
    # request/response: each PUT's response is its confirmation; no subscriber
    code, s, err = _bench("--pub", f"coap://127.0.0.1:{coap_device}/store/bench#method=put", "--publishers", "2",
                          "--count", "300", "--workers", "2")
    assert code == 0, err
    _exact(s, 600, 0, err)
    assert (s["publishers"], s["subscribers"], s["latency_ms"]["count"]) == (2, 0, 0)
    r = _iotctl("coap", "get", f"coap://127.0.0.1:{coap_device}/store/bench", "-o", "raw")
    assert r.stdout.startswith(b"IOTB " + s["run"].encode() + b":"), r  # the last request's payload


def test_coap_refusals_are_exit_6(coap_device):
    # POST /store creates an entry per request, and the device holds 100: the rest are 5.03
    code, s, err = _bench("--pub", f"coap://127.0.0.1:{coap_device}/store", "--count", "110", "--workers", "1")
    assert code == 6, err
    assert (s["sent"], s["confirmed"], s["refused"]) == (110, 100, 10)
    assert "the peer refused 10 message(s): 5.03 Service Unavailable" in err


# --------------------------------------------------------------------------- HTTP


@pytest.mark.parametrize("workers", ["1", "2"])
def test_http_listener_counts_are_exact(workers):
    port = free_port(socket.SOCK_STREAM)
    code, s, err = _bench("--pub", f"http://127.0.0.1:{port}/hooks", "--sub", f"http+listen://127.0.0.1:{port}/hooks",
                          "--publishers", "2", "--count", "300", "--workers", workers)
    assert code == 0, err
    _exact(s, 600, 600, err)


def test_connections_that_fail_are_the_exit_status():
    port = free_port(socket.SOCK_STREAM)  # nothing listens there
    code, s, err = _bench(f"mqtt://127.0.0.1:{port}/bench", "--count", "10", "--workers", "1")
    assert code == 3, err
    assert (s["publishers"], s["subscribers"], s["errors"]) == (0, 0, {"connect: connection refused": 2})
    assert "bench: 2 of 2 connection(s) failed: connection refused" in err

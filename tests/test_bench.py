"""`iotctl bench` against real brokers: exact counts at QoS 1, workers merged exactly,
loss reported as exit 6 by a broker that drops confirmed messages, an injected
duplicate counted, connection storms, and --merge of two hosts' summaries."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest

from tests.helpers import clean_env


def _bench(*args: str, timeout: float = 120) -> tuple[int, dict, str]:
    r = subprocess.run([sys.executable, "-m", "iotctl", "bench", *args, "-o", "json"], capture_output=True,
                       env=clean_env(), timeout=timeout)
    out = r.stdout.decode()
    return r.returncode, (json.loads(out) if out.strip() else {}), r.stderr.decode()


def _topic() -> str:
    return f"bench/{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_qos1_counts_are_exact(peer, workers):
    peer("mosquitto-private")
    code, s, err = _bench(f"mqtt://127.0.0.1:11883/{_topic()}?qos=1", "--publishers", "2", "--count", "3000",
                          "--workers", workers)
    assert code == 0, err
    assert (s["sent"], s["confirmed"], s["received"]) == (6000, 6000, 6000)
    assert (s["lost"], s["duplicates"], s["publishers"], s["subscribers"]) == (0, 0, 2, 1)
    assert s["latency_ms"]["count"] == 6000 and s["confirm_ms"]["count"] == 6000
    assert s["latency_ms"]["p50"] <= s["latency_ms"]["p99"] <= s["latency_ms"]["max"]


def test_fan_out_to_every_subscriber(peer):
    peer("mosquitto-private")
    code, s, err = _bench(f"mqtt://127.0.0.1:11883/{_topic()}?qos=1", "--subscribers", "3", "--count", "500",
                          "--workers", "1")
    assert code == 0, err
    assert (s["sent"], s["received"], s["lost"]) == (500, 1500, 0)


def test_a_broker_that_drops_confirmed_messages_is_exit_6(peer):
    peer("mosquitto-limits")  # max_queued_messages 10: a subscriber that falls behind loses messages
    # MQTT 3.1.1: the broker keeps to its max_inflight_messages (5); an MQTT 5 subscriber names
    # its own receive maximum (1000), and one that keeps up loses nothing
    code, s, err = _bench(f"mqtt://127.0.0.1:11885/{_topic()}?qos=1&mqtt_version=3.1.1", "--publishers", "3",
                          "--count", "3000", "--workers", "1")
    assert code == 6, err
    assert s["lost_confirmed"] > 0 and s["received"] + s["lost"] == s["sent"]
    assert "message(s) the broker confirmed were lost" in err


def test_an_injected_duplicate_is_counted(peer):
    peer("mosquitto-private")
    topic, run = _topic(), uuid.uuid4().hex[:8]
    proc = subprocess.Popen([sys.executable, "-m", "iotctl", "bench", "--sub", f"mqtt://127.0.0.1:11883/{topic}",
                             "--run-id", run, "--duration", "4", "-o", "json", "--workers", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    time.sleep(1.5)
    payload = f"IOTB {run}:0:7:{time.monotonic_ns()}:xxxx"
    for _ in range(2):
        subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "pub", "-p", "11883", "-t", topic, "-m", payload],
                       env=clean_env(), check=True, timeout=30)
    out, err = proc.communicate(timeout=60)
    s = json.loads(out)
    assert proc.returncode == 0, err
    assert (s["received"], s["duplicates"]) == (1, 1)


def test_connection_storm_measures_connects_only(peer):
    peer("mosquitto-private")
    code, s, err = _bench(f"mqtt://127.0.0.1:11883/{_topic()}", "--publishers", "60", "--subscribers", "0",
                          "--rate", "0", "--connect-rate", "200", "--workers", "1")
    assert code == 0, err
    assert s["publishers"] == 60 and s["sent"] == 0 and s["connect_ms"]["count"] == 60


def test_merge_of_two_hosts_adds_up_exactly(peer, tmp_path):
    peer("mosquitto-private")
    topic, run = _topic(), uuid.uuid4().hex[:8]
    files = []
    for first in ("0", "1"):
        code, s, err = _bench(f"mqtt://127.0.0.1:11883/{topic}/{first}?qos=1", "--count", "700", "--run-id", run, "--shared",
                              "--first-publisher", first, "--first-subscriber", first, "--workers", "1")
        assert code == 0, err
        path = tmp_path / f"host{first}.json"
        path.write_text(json.dumps(s))
        files.append(str(path))
    r = subprocess.run([sys.executable, "-m", "iotctl", "bench", "--merge", *files, "-o", "json"],
                       capture_output=True, env=clean_env(), timeout=60)
    merged = json.loads(r.stdout)
    assert (merged["sent"], merged["received"], merged["lost"], merged["publishers"]) == (1400, 1400, 0, 2)
    assert merged["latency_ms"]["count"] == 1400


def test_usage_errors():
    r = subprocess.run([sys.executable, "-m", "iotctl", "bench"], capture_output=True, env=clean_env(), timeout=30)
    assert r.returncode == 2 and b"nothing to measure" in r.stderr
    r = subprocess.run([sys.executable, "-m", "iotctl", "bench", "--merge", "/nonexistent.json"], capture_output=True,
                       env=clean_env(), timeout=30)
    assert r.returncode == 2 and b"cannot read /nonexistent.json" in r.stderr

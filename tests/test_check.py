"""`iotctl check URL` against real Mosquitto listeners: every limit of the limits
broker reported as configured, password and TLS listeners, what a production check
(no probe) leaves alone, and the exit statuses when the server does not answer."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from tests.helpers import clean_env, free_port


def _check(*args: str, timeout: float = 120):
    r = subprocess.run([sys.executable, "-m", "iotctl", "check", *args, "-o", "json"], capture_output=True,
                       env=clean_env(), timeout=timeout)
    data = json.loads(r.stdout) if r.stdout.strip() else {"checks": []}
    rows = {(c["section"], c["name"]): (c["value"], c["status"]) for c in data["checks"]}
    return r.returncode, rows, r.stderr.decode()


def test_an_unlimited_broker_passes_every_probe(peer):
    peer("mosquitto-private")
    code, rows, err = _check("mqtt://127.0.0.1:11883", "--max-payload", "200000")
    assert code == 0, err
    for version in ("5", "3.1.1", "3.1"):
        assert rows[("versions", f"MQTT {version}")][1] == "ok"
    assert rows[("limits", "maximum QoS")][0] == "2 (default)"
    assert rows[("server", "identity")][0].startswith("mosquitto version")
    for probe in ("QoS 0 round trip", "QoS 1 round trip", "QoS 2 round trip", "retain", "wildcard +",
                  "wildcard #", "shared subscription", "largest payload", "longest topic"):
        assert rows[("probe", probe)][1] == "ok", (probe, rows[("probe", probe)])
    assert rows[("probe", "largest payload")][0].startswith("at least 200000 bytes")


def test_each_limit_is_reported_as_configured(peer):
    peer("mosquitto-limits")  # max_qos 1, retain_available false, max_packet_size 4096, max_inflight_messages 5
    code, rows, err = _check("mqtt://127.0.0.1:11885", "--max-payload", "100000")
    assert code == 0, err
    assert rows[("limits", "maximum QoS")] == ("1", "warn")
    assert rows[("limits", "retain available")] == ("no", "warn")
    assert rows[("limits", "maximum packet size")][0] == "4096"
    assert rows[("limits", "receive maximum")][0] == "5"
    assert rows[("probe", "QoS 2 round trip")][1] == "fail" and "QoS not supported" in rows[("probe", "QoS 2 round trip")][0]
    assert rows[("probe", "retain")][1] == "fail" and "Retain not supported" in rows[("probe", "retain")][0]
    size = int(rows[("probe", "largest payload")][0].split()[0])
    assert 3900 < size < 4096  # the packet limit less the PUBLISH's own bytes


def test_a_password_listener(peer):
    peer("mosquitto-limits")
    code, rows, err = _check("mqtt://127.0.0.1:11886", "--no-probe")
    assert code == 4 and "refused the login" in rows[("versions", "MQTT 5")][0]
    assert [line for line in err.splitlines() if line.startswith("iotctl: error: cannot connect")]
    code, rows, err = _check("mqtt://iotctl:iotctl-secret@127.0.0.1:11886", "--no-probe")
    assert code == 0, err
    assert rows[("server", "login")][0] == "user iotctl" and "iotctl-secret" not in json.dumps(list(rows.values()))


def test_tls_details_and_a_certificate_that_does_not_verify(certs):
    code, rows, err = _check(f"mqtts://localhost:8883?cafile={certs['ca_crt']}", "--no-probe")
    assert code == 0, err
    assert rows[("tls", "verified")][1] == "ok" and rows[("tls", "protocol")][0].startswith("TLSv1")
    assert "localhost" in rows[("tls", "names")][0]
    assert rows[("tls", "expires")][1] in ("ok", "warn")
    code, rows, err = _check(f"mqtts://localhost:8883?cafile={certs['other_ca_crt']}", "--no-probe")
    assert code == 7
    assert rows[("tls", "verified")][1] == "fail" and "certificate" in rows[("tls", "verified")][0]
    assert rows[("tls", "subject")][0] != "?"  # still shown, from the unverified certificate


def test_no_probe_publishes_nothing(peer):
    peer("mosquitto-private")
    code, rows, err = _check("mqtt://127.0.0.1:11883", "--no-probe")
    assert code == 0, err
    assert not [k for k in rows if k[0] == "probe" and k[1] != "skipped"]


def test_nothing_listening_is_exit_3_and_piped_output_is_tab_separated(peer):
    port = free_port(socket.SOCK_STREAM)
    code, rows, err = _check(f"mqtt://127.0.0.1:{port}")
    assert code == 3 and "connection refused" in err
    peer("mosquitto-private")
    r = subprocess.run([sys.executable, "-m", "iotctl", "check", "mqtt://127.0.0.1:11883", "--no-probe"],
                       capture_output=True, env=clean_env(), timeout=60)
    lines = r.stdout.decode().splitlines()
    assert r.returncode == 0 and all(len(line.split("\t")) == 4 for line in lines), lines


def test_mqtt_check_takes_the_usual_mqtt_options(peer):
    peer("mosquitto-limits")
    r = subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "check", "-p", "11886", "-u", "iotctl", "-P",
                        "iotctl-secret", "--no-probe", "-o", "json"], capture_output=True, env=clean_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    rows = {(c["section"], c["name"]): c["value"] for c in json.loads(r.stdout)["checks"]}
    assert rows[("server", "login")] == "user iotctl" and rows[("limits", "maximum packet size")] == "4096"

"""XMPP-IoT through the real Prosody of scripts/services: `xmpp device` on the account
thing@localhost, read and controlled from reader@localhost (accounts of their own, so
the offline messages other XMPP tests store for alice...erin never reach a device);
a device written with slixmpp's own XEP-0323 plugin (not here) and a silent one; a
bridge of readouts into MQTT counted by a persistent QoS 1 session."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import CERTS
from tests.helpers import clean_env, wait_until

SERVER = "127.0.0.1:5222"
CA = str(CERTS / "ca.crt")
DEVICE, READER = "thing@localhost", "reader@localhost"
PW = {"thing": "thing-pw", "reader": "reader-pw"}
MOMENTARY = {"temperature", "humidity", "counter", "led", "brightness", "setpoint", "name", "color", "maintenance",
             "wakeup", "alarm", "interval"}


def login(user: str) -> list[str]:
    return ["--jid", f"{user}@localhost", "-P", PW[user], "--server", SERVER, "--cafile", CA]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iotctl", *args], capture_output=True, timeout=timeout,
                          env=clean_env())


def reader(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`iotctl [GLOBAL] xmpp CMD ... ` as reader@localhost: global options first, then the command."""
    i = args.index("xmpp") + (3 if args[args.index("xmpp") + 1] in ("presence", "subscription", "roster") else 2)
    return run(*args[:i], *login("reader"), *args[i:], timeout=timeout)


def jsonl(out: bytes) -> list[dict]:
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


def one_line_error(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.decode().splitlines()
    assert lines and lines[0].startswith("iotctl: error: "), r.stderr
    assert all(line.startswith("iotctl: hint: ") for line in lines[1:]), r.stderr  # no traceback
    return lines[0]


class Device:
    """`iotctl xmpp device` as thing@localhost on a resource of its own, logging to a
    file; ready once it says it is online."""

    def __init__(self, tmp_path: Path, *args: str, resource: str | None = None):
        self.resource = resource or f"dev-{uuid.uuid4().hex[:6]}"
        self.jid = f"{DEVICE}/{self.resource}"
        self.log = tmp_path / f"{self.resource}.log"
        self.err = open(tmp_path / f"{self.resource}.err", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "iotctl", "xmpp", "device", *login("thing"),
                                      "--resource", self.resource, "--log", str(self.log), *args],
                                     stdout=subprocess.DEVNULL, stderr=self.err, env=clean_env())
        wait_until(lambda: "online as" in self.text() or self.proc.poll() is not None, 20, "the device online")
        assert self.proc.poll() is None, self.text() + (tmp_path / f"{self.resource}.err").read_text()

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()


@pytest.fixture
def device(tmp_path, peer):
    peer("prosody")
    started: list[Device] = []

    def start(*args: str, resource: str | None = None) -> Device:
        dev = Device(tmp_path, *args, resource=resource)
        started.append(dev)
        return dev

    yield start
    for dev in started:
        dev.stop()


@pytest.fixture(scope="module", autouse=True)
def unsubscribed(peer):
    """reader@localhost starts without thing@localhost in its contacts (the bare JID
    test subscribes), and ends so too."""
    peer("prosody")
    run("xmpp", "roster", "remove", DEVICE, *login("reader"))
    yield
    run("xmpp", "roster", "remove", DEVICE, *login("reader"))


# --------------------------------------------------------------------------- readouts


def test_momentary_readout_of_every_field(device):
    dev = device()
    r = reader("-o", "jsonl", "xmpp", "sensor", dev.jid)
    assert r.returncode == 0, r.stderr
    values = jsonl(r.stdout)
    by_field = {v["meta"]["field"]: v for v in values}
    assert set(by_field) == MOMENTARY and len(values) == len(MOMENTARY)
    for v in values:
        assert v["protocol"] == "xmpp" and v["address"] == dev.jid
        assert v["meta"]["node"] == "thing"
        assert v["meta"]["flags"] == ["momentary", "automaticReadout"], v
        stamp = datetime.fromisoformat(v["meta"]["timestamp"].replace("Z", "+00:00"))
        assert abs(stamp.timestamp() - time.time()) < 30
    t = by_field["temperature"]
    assert t["meta"]["type"] == "numeric" and t["meta"]["unit"] == "°C" and "writable" not in t["meta"]
    assert re.fullmatch(r"-?\d+\.\d\d", t["payload"]) and -10 <= float(t["payload"]) <= 45
    assert by_field["humidity"]["meta"]["unit"] == "%" and 0 <= float(by_field["humidity"]["payload"]) <= 100
    assert by_field["counter"]["meta"]["type"] == "long" and by_field["counter"]["meta"]["writable"] is True
    assert by_field["led"]["meta"]["type"] == "boolean" and by_field["led"]["payload"] == "false"
    assert by_field["setpoint"]["meta"]["type"] == "numeric" and by_field["setpoint"]["meta"]["unit"] == "°C"
    assert {by_field[n]["meta"]["type"] for n in ("maintenance", "wakeup", "alarm", "interval")} == \
        {"date", "time", "dateTime", "duration"}
    # pretty: the header names the field and its type (80 columns: the unit gives way), then the rest
    r = reader("-o", "pretty", "xmpp", "sensor", dev.jid, "--field", "temperature")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert re.match(rf"\d\d:\d\d:\d\d\.\d+ xmpp {re.escape(dev.jid)} field=temperature type=numeric\n", out), out
    assert '  flags: ["momentary", "automaticReadout"]\n' in out and "  node: thing\n" in out


def test_one_field_and_two_fields_are_asked_of_the_device(device):
    dev = device()
    r = reader("-o", "raw", "xmpp", "sensor", dev.jid, "--field", "humidity")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 1 and 0 <= float(lines[0]) <= 100
    r = reader("-o", "jsonl", "xmpp", "sensor", dev.jid, "--field", "counter", "--field", "led")
    assert r.returncode == 0, r.stderr
    assert sorted(v["meta"]["field"] for v in jsonl(r.stdout)) == ["counter", "led"]
    # the request carried the names: the device read only those
    wait_until(lambda: "fields counter,led -> 2 value(s)" in dev.text(), 5, "the device's log line")
    assert "fields humidity -> 1 value(s)" in dev.text()
    # nodes: the device is one, named after its account; another is not found
    r = reader("-o", "raw", "xmpp", "sensor", dev.jid, "--node", "thing", "--field", "led")
    assert r.returncode == 0 and r.stdout == b"false\n", r.stderr
    r = reader("xmpp", "sensor", dev.jid, "--node", "other")
    assert r.returncode == 6
    assert one_line_error(r) == (f"iotctl: error: read {dev.jid}: item-not-found: no node other "
                                 "(this device is node thing)")
    r = reader("xmpp", "sensor", dev.jid, "--field", "pressure")
    assert r.returncode == 6 and one_line_error(r).endswith("item-not-found: no field pressure")


def test_kinds_of_values_and_their_quality_flags(device):
    dev = device()
    r = reader("-o", "jsonl", "xmpp", "sensor", dev.jid, "--all", "--from", "-1s")
    assert r.returncode == 0, r.stderr
    flags = {}
    for v in jsonl(r.stdout):
        flags.setdefault(v["meta"]["field"], set()).update(v["meta"]["flags"])
        assert "automaticReadout" in v["meta"]["flags"], v
    assert flags["temperature_max"] == flags["temperature_min"] == {"peak", "automaticReadout"}
    assert flags["dew_point"] == {"computed", "automaticReadout"}
    assert flags["uptime"] == {"status", "automaticReadout"}
    assert flags["serial"] == {"identity", "automaticReadout"}
    assert MOMENTARY <= set(flags)
    r = reader("-o", "jsonl", "xmpp", "sensor", dev.jid, "--peak", "--status")
    assert r.returncode == 0, r.stderr
    got = {v["meta"]["field"]: v for v in jsonl(r.stdout)}
    assert set(got) == {"temperature_max", "temperature_min", "uptime"}
    assert float(got["temperature_min"]["payload"]) <= float(got["temperature_max"]["payload"])
    assert got["uptime"]["meta"]["type"] == "duration" and got["uptime"]["payload"].startswith("PT")


def test_historical_readout_between_from_and_to(device):
    dev = device("--interval", "0.2")
    time.sleep(3)
    r = reader("-o", "jsonl", "xmpp", "sensor", dev.jid, "--historical", "--from", "-10s", "--field", "counter")
    assert r.returncode == 0, r.stderr
    values = jsonl(r.stdout)
    assert 2 <= len(values) <= 15, values
    stamps = [datetime.fromisoformat(v["meta"]["timestamp"].replace("Z", "+00:00")).timestamp() for v in values]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert all(time.time() - 12 <= s <= time.time() + 1 for s in stamps)
    assert all(v["meta"]["flags"] == ["historicalSecond", "automaticReadout"] for v in values)
    counts = [int(v["payload"]) for v in values]
    assert counts == sorted(counts) and counts[-1] > counts[0]
    # the day before: hourly values only, none newer than --to
    r = reader("-o", "jsonl", "xmpp", "sensor", dev.jid, "--from", "-2d", "--to", "-1h", "--field", "temperature")
    assert r.returncode == 0, r.stderr
    values = jsonl(r.stdout)
    assert 20 <= len(values) <= 24, len(values)
    for v in values:
        stamp = datetime.fromisoformat(v["meta"]["timestamp"].replace("Z", "+00:00"))
        assert stamp.minute == stamp.second == 0 and stamp.timestamp() <= time.time() - 3600
        assert "historicalHour" in v["meta"]["flags"] and "momentary" not in v["meta"]["flags"]
        assert ("historicalDay" in v["meta"]["flags"]) == (stamp.hour == 0)
    # a window with nothing in it: exit 0, nothing printed, the device says done
    r = reader("-o", "jsonl", "xmpp", "sensor", dev.jid, "--from", "2001-01-01", "--to", "2001-01-02")
    assert r.returncode == 0 and r.stdout == b"", r.stderr
    r = reader("xmpp", "sensor", dev.jid, "--from", "-1h", "--to", "-2h")
    assert r.returncode == 2 and "after" in one_line_error(r)


def test_json_payload_save_and_polling(device, tmp_path):
    dev = device("--interval", "0.2")
    saved = tmp_path / "readings.jsonl"
    r = reader("-o", "raw", "xmpp", "sensor", dev.jid, "--field", "counter", "--field", "setpoint", "--field", "led",
               "--payload", "json", "--interval", "0.5", "-C", "6", "-W", "30", "--save", str(saved))
    assert r.returncode == 0, r.stderr
    docs = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert len(docs) == 6
    counters = [d["value"] for d in docs if d["field"] == "counter"]
    assert len(counters) == 2 and all(isinstance(c, int) for c in counters) and counters[1] > counters[0]
    led = next(d for d in docs if d["field"] == "led")
    assert led["value"] is False and led["type"] == "boolean" and led["flags"] == ["momentary", "automaticReadout"]
    setpoint = next(d for d in docs if d["field"] == "setpoint")
    assert setpoint["value"] == 21.0 and setpoint["unit"] == "°C" and setpoint["node"] == "thing"
    envelopes = jsonl(saved.read_bytes())
    assert len(envelopes) == 6 and envelopes[0]["content_type"] == "application/json"
    assert json.loads(envelopes[0]["payload"]) == docs[0] and envelopes[0]["meta"]["field"] == docs[0]["field"]
    assert dev.text().count("fields counter,setpoint,led -> 3 value(s)") == 2  # two readouts, 0.5 s apart


def test_a_scheduled_readout_and_its_cancel(device):
    dev = device()
    started = time.monotonic()
    r = reader("-o", "raw", "xmpp", "sensor", dev.jid, "--when", "+3s", "--field", "counter", "--answer-timeout", "1")
    assert r.returncode == 0 and int(r.stdout) >= 0, r.stderr
    assert 1.5 <= time.monotonic() - started < 10  # answered at --when (to the second), past the answer timeout
    assert re.search(r"readout #1 momentary fields counter -> queued for \S+Z\n", dev.text())
    # stopped before it: the device forgets it
    r = reader("xmpp", "sensor", dev.jid, "--when", "+60s", "-W", "1.5")
    assert r.returncode == 5 and "no value within 1.5 s" in one_line_error(r)
    wait_until(lambda: "cancel #1 -> cancelled" in dev.text(), 5, "the cancel")
    r = reader("xmpp", "sensor", dev.jid, "--when", "+5s", "--interval", "1")
    assert r.returncode == 2 and "a scheduled readout is made once" in one_line_error(r)


def test_bare_jid_needs_a_subscription_the_device_approves(device):
    dev = device()
    r = reader("xmpp", "sensor", DEVICE)
    assert r.returncode == 2
    assert "not subscribed" in one_line_error(r) and "subscription request thing@localhost" in r.stderr.decode()
    r = reader("xmpp", "subscription", "request", DEVICE)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: "reader@localhost asks to see the device's presence: approved" in dev.text(), 10,
               "the device's approval")
    r = reader("-o", "jsonl", "xmpp", "sensor", DEVICE, "--field", "counter")
    assert r.returncode == 0, r.stderr
    assert [v["address"] for v in jsonl(r.stdout)] == [dev.jid]
    r = reader("xmpp", "control", DEVICE, "led=true")
    assert r.returncode == 0, r.stderr
    dev.stop()
    r = reader("xmpp", "sensor", DEVICE)  # subscribed, and no resource online
    assert r.returncode == 6 and "thing@localhost is offline" in one_line_error(r)


def test_disco_of_the_device_names_both_features(device):
    dev = device()
    r = reader("-o", "raw", "xmpp", "disco", dev.jid)
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.decode().splitlines()]
    assert ["feature", "urn:xmpp:iot:sensordata", ""] in rows and ["feature", "urn:xmpp:iot:control", ""] in rows
    assert ["identity", "client/bot", "iotctl simulated XMPP-IoT device"] in rows
    r = reader("-o", "raw", "xmpp", "ping", dev.jid)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------- control


def _state(jid: str) -> dict[str, str]:
    r = reader("-o", "jsonl", "xmpp", "sensor", jid)
    assert r.returncode == 0, r.stderr
    return {v["meta"]["field"]: v["payload"] for v in jsonl(r.stdout)}


def test_control_of_each_type_read_back_by_a_readout(device):
    dev = device()
    r = reader("xmpp", "control", dev.jid, "led:boolean=true", "brightness:int=80", "counter:long=5000000000",
               "setpoint:double=22.5", "name:string=hall sensor", "color:color=#ff8800",
               "maintenance:date=2027-04-01", "wakeup:time=06:45:00", "alarm:dateTime=2027-04-01T06:45:00Z",
               "interval:duration=PT2S")
    assert r.returncode == 0, r.stderr
    state = _state(dev.jid)
    assert state["led"] == "true" and state["brightness"] == "80" and state["setpoint"] == "22.5"
    assert 5000000000 <= int(state["counter"]) <= 5000000010  # it counts on from there
    assert state["name"] == "hall sensor" and state["color"] == "ff8800" and state["maintenance"] == "2027-04-01"
    assert state["wakeup"] == "06:45:00" and state["alarm"] == "2027-04-01T06:45:00Z" and state["interval"] == "PT2S"
    # without a type: the device's control form says it (22 is a double, 0 a boolean...)
    r = reader("xmpp", "control", dev.jid, "led=off", "brightness=7", "setpoint=19", "name=42")
    assert r.returncode == 0, r.stderr
    state = _state(dev.jid)
    assert (state["led"], state["brightness"], state["setpoint"], state["name"]) == ("false", "7", "19", "42")
    assert re.search(r"control led=false brightness=7 setpoint=19 name=42 -> ok", dev.text())
    # kv_option's spellings of types
    r = reader("xmpp", "control", dev.jid, "led:bool=yes", "setpoint:float=20.25", "name:str=007")
    assert r.returncode == 0, r.stderr
    state = _state(dev.jid)
    assert (state["led"], state["setpoint"], state["name"]) == ("true", "20.25", "007")


def test_control_form_lists_the_parameters(device):
    dev = device()
    r = reader("-o", "raw", "xmpp", "control", dev.jid)
    assert r.returncode == 0, r.stderr
    rows = {line.split("\t")[0]: line.split("\t") for line in r.stdout.decode().splitlines()}
    assert {name: row[1] for name, row in rows.items()} == {
        "led": "boolean", "brightness": "int", "counter": "long", "setpoint": "double", "name": "string",
        "color": "color", "maintenance": "date", "wakeup": "time", "alarm": "dateTime", "interval": "duration"}
    assert rows["brightness"][2] == "50" and rows["led"][3] == "LED"


def test_control_errors_are_the_devices_and_set_nothing(device):
    dev = device()
    before = _state(dev.jid)
    r = reader("xmpp", "control", dev.jid, "brightness:int=10", "nope:int=1")
    assert r.returncode == 6
    line = one_line_error(r)
    assert line == f"iotctl: error: control {dev.jid}: item-not-found: nope: no such parameter", line
    r = reader("xmpp", "control", dev.jid, "led:int=1")
    assert r.returncode == 6 and "bad-request: led: a boolean parameter, not int" in one_line_error(r)
    r = reader("xmpp", "control", dev.jid, "brightness:int=101", "setpoint=99")
    assert r.returncode == 6
    line = one_line_error(r)
    assert "brightness: '101' is out of range (0..100)" in line and "setpoint: '99' is out of range" in line
    assert _state(dev.jid)["brightness"] == before["brightness"] == "50"  # all or nothing
    # refused before anything is sent: exit 2
    for args, why in ((["brightness:int=abc"], "not an integer"), (["x:foo=1"], "unknown type 'foo'"),
                      (["led"], "is not NAME=VALUE"), (["color:color=red"], "not a colour"),
                      (["when:date=2027-02-30"], "not a date")):
        r = reader("xmpp", "control", dev.jid, *args)
        assert r.returncode == 2 and why in one_line_error(r), (args, r.stderr)
    # an untyped value the control form types otherwise: refused here, named
    r = reader("xmpp", "control", dev.jid, "led=2")
    assert r.returncode == 2 and "led is a boolean" in one_line_error(r)


def test_a_device_offline_or_silent(device, tmp_path):
    gone = f"{DEVICE}/gone-{uuid.uuid4().hex[:6]}"
    for args in (["sensor", gone], ["control", gone, "led=true"], ["control", gone, "led:boolean=true"]):
        r = reader("xmpp", *args)
        assert r.returncode == 6, (args, r.stderr)
        assert one_line_error(r).endswith(f"{gone}: service-unavailable")
        assert "is the device online?" in r.stderr.decode()
    # a device that takes the request and never answers
    with SlixDevice(tmp_path, "silent") as silent:
        started = time.monotonic()
        r = reader("xmpp", "sensor", silent.jid, "--answer-timeout", "1.5")
        assert r.returncode == 5 and one_line_error(r) == f"iotctl: error: read {silent.jid}: no answer within 1.5 s"
        assert time.monotonic() - started < 10


def test_polling_survives_the_device_going_away_and_coming_back(device):
    dev = device("--interval", "0.2", resource=f"back-{uuid.uuid4().hex[:6]}")
    proc = subprocess.Popen([sys.executable, "-m", "iotctl", "-o", "raw", "xmpp", "sensor", dev.jid, *login("reader"),
                             "--field", "counter", "--interval", "0.5", "-C", "6", "-W", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    try:
        wait_until(lambda: dev.text().count("readout #") >= 2, 20, "two readouts")
        dev.stop()
        time.sleep(1.5)
        back = device("--interval", "0.2", resource=dev.resource)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert len(out.decode().split()) == 6
    assert "service-unavailable; reading again in 0.5 s" in err.decode()
    assert "readout #" in back.text()


def test_device_and_reader_log_in_again_after_a_cut(peer, tmp_path):
    """Both through a TCP relay that resets every connection: the device binds its
    resource again, the polling reader logs in again and reads on."""
    from tests.faults import TcpRelay

    peer("prosody")
    with TcpRelay(5222) as relay:
        resource = f"cut-{uuid.uuid4().hex[:6]}"
        jid = f"{DEVICE}/{resource}"
        log = tmp_path / "device.log"
        via = ["--server", f"127.0.0.1:{relay.port}", "--cafile", CA]
        dev = subprocess.Popen([sys.executable, "-m", "iotctl", "xmpp", "device", "--jid", DEVICE, "-P", PW["thing"],
                                *via, "--resource", resource, "--log", str(log), "--interval", "0.2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=clean_env())
        try:
            wait_until(lambda: log.exists() and "online as" in log.read_text(), 20, "the device online")
            proc = subprocess.Popen([sys.executable, "-m", "iotctl", "-o", "raw", "xmpp", "sensor", jid,
                                     "--jid", READER, "-P", PW["reader"], *via, "--field", "counter", "--interval", "0.5", "-C", "8",
                                     "-W", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
            wait_until(lambda: log.read_text().count("readout #") >= 2, 20, "two readouts")
            relay.cut()
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            assert len(out.split()) == 8
            assert re.search(rb"connection lost .*; reconnecting in", err) and b"reconnected to" in err, err
            assert relay.accepted >= 4  # both logged in twice
        finally:
            dev.send_signal(signal.SIGTERM)
            _, dev_err = dev.communicate(timeout=15)
        assert dev.returncode == 0, dev_err
        assert b"connection lost" in dev_err and b"reconnected to" in dev_err
        text = log.read_text()
        assert text.count("online as") == 1 and "device stopped" in text
        after_cut = text.split("readout #")[-1]
        assert "-> 1 value(s)" in after_cut


# --------------------------------------------------------------------------- a source for the other commands


def test_bridge_readouts_into_mqtt_counted_by_a_persistent_session(device, peer):
    peer("mosquitto-private")
    dev = device("--interval", "0.2")
    n = uuid.uuid4().hex[:10]
    cid, topic = f"iot-{n}", f"iot-{n}"
    r = run("mqtt", "sub", "-p", "11883", "-i", cid, "--no-clean-start", "--session-expiry", "300", "-q", "1",
            "-t", f"{topic}/#", "-W", "0.3")
    assert r.returncode in (0, 5), r.stderr
    url = (f"xmpp+iot://reader:{PW['reader']}@localhost/{dev.jid}?server={SERVER}&cafile={CA}"
           "&field=temperature&field=counter&interval=0.3")
    r = run("bridge", url, f"mqtt://127.0.0.1:11883?qos=1", "--address", f"{topic}/{{meta[field]}}", "-C", "10",
            "-W", "60", timeout=90)
    assert r.returncode == 0, r.stderr
    assert "at most once" in r.stderr.decode()
    r = run("-o", "jsonl", "mqtt", "sub", "-p", "11883", "-i", cid, "--no-clean-start", "--session-expiry", "0",
            "-q", "1", "-t", f"{topic}/#", "--idle-timeout", "2", "-W", "60", timeout=90)
    assert r.returncode in (0, 5), r.stderr
    got = jsonl(r.stdout)
    assert len(got) == 10, got
    assert sorted({m["address"] for m in got}) == [f"{topic}/counter", f"{topic}/temperature"]
    counts = [int(m["payload"]) for m in got if m["address"].endswith("counter")]
    assert len(counts) == 5 and counts == sorted(counts)
    assert all(-10 <= float(m["payload"]) <= 45 for m in got if m["address"].endswith("temperature"))


def test_sensor_url_errors():
    base = f"xmpp+iot://reader:{PW['reader']}@localhost"
    for url, why in ((f"{base}?server={SERVER}", "no device: give xmpp+iot://"),
                     (f"{base}/{DEVICE}/x?feild=a", "unknown option 'feild' (did you mean 'field'?)"),
                     (f"{base}/{DEVICE}/x?interval=0", "interval"),
                     (f"{base}/{DEVICE}/x?from=yesterday", "bad --from 'yesterday'")):
        r = run("bridge", url, "mqtt://127.0.0.1:11883/x")
        assert r.returncode == 2 and why in one_line_error(r), (url, r.stderr)
    r = run("bridge", "mqtt://127.0.0.1:11883/x", f"{base}/{DEVICE}/x")
    assert r.returncode == 2 and "xmpp cannot be a sink" in one_line_error(r)


# --------------------------------------------------------------------------- background


def test_device_in_the_background(peer, tmp_path):
    peer("prosody")
    resource = f"bg-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "device.log"
    started = time.monotonic()
    r = run("xmpp", "device", *login("thing"), "--resource", resource, "--background", "--log", str(log),
            "--interval", "0.2")
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout.decode().strip())
    try:
        assert time.monotonic() - started < 15
        assert f"stop it with: kill {pid}" in r.stderr.decode() and f"logs to {log}" in r.stderr.decode()
        jid = f"{DEVICE}/{resource}"
        r = reader("-o", "raw", "xmpp", "sensor", jid, "--field", "counter")
        assert r.returncode == 0 and int(r.stdout) >= 0, r.stderr
        assert f"online as {jid}" in log.read_text() and "fields counter -> 1 value(s)" in log.read_text()
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: "device stopped" in log.read_text(), 15, "the device stopped")
    # a device that cannot log in says why, with its exit status
    r = run("xmpp", "device", "--jid", DEVICE, "-P", "wrong", "--server", SERVER, "--cafile", CA, "--background",
            "--log", str(tmp_path / "bad.log"))
    assert r.returncode == 4, r.stderr
    errors = [line for line in r.stderr.decode().splitlines() if line.startswith("iotctl: error: ")]
    assert len(errors) == 1 and errors[0].startswith("iotctl: error: xmpp device in the background: login as "
                                                     "thing@localhost on 127.0.0.1:5222: the server refused the login")
    assert "Traceback" not in r.stderr.decode()


def test_device_in_the_background_asks_for_the_password_here(peer, tmp_path):
    """-P -: the question is asked on this terminal, once; the child gets the answer in
    its environment, not on its command line."""
    import pty

    peer("prosody")
    resource = f"tty-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "device.log"
    child, fd = pty.fork()
    if child == 0:  # pragma: no cover (the child)
        os.execve(sys.executable, [sys.executable, "-m", "iotctl", "xmpp", "device", "--jid", DEVICE, "-P", "-",
                                   "--server", SERVER, "--cafile", CA, "--resource", resource, "--background",
                                   "--log", str(log)], clean_env())
    said = b""

    def read() -> bytes:
        try:
            return os.read(fd, 4096)
        except OSError:  # EIO: the child is gone
            return b""

    while b"password for thing@localhost:" not in said:
        chunk = read()
        assert chunk, said
        said += chunk
    os.write(fd, PW["thing"].encode() + b"\n")
    while chunk := read():
        said += chunk
    _, status = os.waitpid(child, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, said
    pid = int(re.search(rb"^(\d+)\r?$", said, re.M).group(1))
    try:
        r = reader("-o", "raw", "xmpp", "sensor", f"{DEVICE}/{resource}", "--field", "led")
        assert r.returncode == 0 and r.stdout == b"false\n", r.stderr
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"-P" not in cmdline and PW["thing"].encode() not in cmdline
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: "device stopped" in log.read_text(), 15, "the device stopped")


# --------------------------------------------------------------------------- a device not written here


SLIX_DEVICE = r"""
import asyncio, ssl, sys
import slixmpp
jid, password, ca, mode = sys.argv[1:5]
xmpp = slixmpp.ClientXMPP(jid, password, ssl_context=ssl.create_default_context(cafile=ca))
xmpp.enable_direct_tls = False
xmpp.enable_plaintext = False
if mode == "plugin":  # slixmpp's own XEP-0323 plugin and its example device
    from slixmpp.plugins.xep_0323.device import Device
    xmpp.register_plugin("xep_0030")
    xmpp.register_plugin("xep_0323", {"threaded": False})
    dev = Device("slix-node")
    dev._add_field(name="Temperature", typename="numeric", unit="C")
    dev._add_field(name="Status", typename="string")
    dev._set_momentary_timestamp("2013-03-07T16:24:30")
    dev._add_field_momentary_data("Temperature", "23.4", flags={"automaticReadout": "true", "momentary": "true"})
    dev._add_field_momentary_data("Status", "ok", flags={"momentary": "true"})
    xmpp.plugin["xep_0323"].register_node("slix-node", dev, commTimeout=10)
else:  # silent: takes readout requests and never answers them
    from slixmpp.xmlstream.handler import Callback
    from slixmpp.xmlstream.matcher import MatchXPath
    xmpp.register_handler(Callback("silent", MatchXPath("{jabber:client}iq/{urn:xmpp:iot:sensordata}req"),
                                   lambda iq: None))
xmpp.add_event_handler("session_start", lambda _: (xmpp.send_presence(), print("ready", flush=True)))
xmpp.add_event_handler("disconnected", lambda _: sys.exit(1))
xmpp.connect("127.0.0.1", 5222)
asyncio.get_event_loop().run_forever()
"""


class SlixDevice:
    def __init__(self, tmp_path: Path, mode: str):
        self.jid = f"{DEVICE}/slix-{mode}-{uuid.uuid4().hex[:6]}"
        self.out = tmp_path / f"slix-{mode}.out"
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-c", SLIX_DEVICE, self.jid, PW["thing"], CA, mode],
                                         stdout=out, stderr=subprocess.STDOUT, env=clean_env())
        wait_until(lambda: "ready" in self.out.read_text() or self.proc.poll() is not None, 20, "slixmpp's device")
        assert self.proc.poll() is None, self.out.read_text()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def test_a_device_on_slixmpps_own_xep_0323_plugin(peer, tmp_path):
    """An older draft of XEP-0323 (slixmpp's plugin): its readout reads, its refusal
    (a <rejected/> element, no RFC 6120 condition) is exit 6 with its text."""
    peer("prosody")
    with SlixDevice(tmp_path, "plugin") as dev:
        r = reader("-o", "jsonl", "xmpp", "sensor", dev.jid)
        assert r.returncode == 0, r.stderr
        values = {v["meta"]["field"]: v for v in jsonl(r.stdout)}
        assert set(values) == {"Temperature", "Status"}
        t = values["Temperature"]
        assert t["payload"] == "23.4" and t["meta"]["unit"] == "C" and t["meta"]["node"] == "slix-node"
        assert t["meta"]["timestamp"] == "2013-03-07T16:24:30" and t["meta"]["flags"] == ["momentary",
                                                                                          "automaticReadout"]
        r = reader("xmpp", "sensor", dev.jid, "--field", "Pressure")
        assert r.returncode == 6 and one_line_error(r).endswith("Invalid field Pressure"), r.stderr

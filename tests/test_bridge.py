"""`iotctl bridge SOURCE_URL TARGET_URL` against real brokers: counts at the target,
at-least-once across a killed bridge and a cut target connection, refusals, Ctrl-C
(MQTT to MQTT here, on the private Mosquitto; the cross-protocol pairs are in
tests/test_bridge_pairs.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.faults import TcpRelay
from tests.helpers import clean_env, wait_until

PRIVATE_PORT = 11883
SRC = f"mqtt://127.0.0.1:{PRIVATE_PORT}"


@pytest.fixture
def broker(peer):
    peer("mosquitto-private")


def _name() -> str:
    return uuid.uuid4().hex[:10]


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "iotctl", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=clean_env())


def _run(*args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iotctl", *args], input=input, capture_output=True,
                          env=clean_env(), timeout=timeout)


def _publish(topic: str, lines: list[str], port: int = PRIVATE_PORT) -> None:
    r = _run("mqtt", "pub", "-p", str(port), "-t", topic, "-q", "1", "-l",
             input=("\n".join(lines) + "\n").encode())
    assert r.returncode == 0, r.stderr


def _session(cid: str, topic: str) -> None:
    """Create a persistent QoS 1 session subscribed to `topic` (then away)."""
    _run("mqtt", "sub", "-p", str(PRIVATE_PORT), "-i", cid, "--no-clean-start", "--session-expiry", "300",
         "-q", "1", "-t", topic, "-W", "0.3")


def _collect(cid: str, topic: str, idle: float = 1.5) -> list[str]:
    """Everything the persistent session `cid` holds (the target side of a test)."""
    r = _run("mqtt", "sub", "-p", str(PRIVATE_PORT), "-i", cid, "--no-clean-start", "--session-expiry", "300",
             "-q", "1", "-t", topic, "--idle-timeout", str(idle), "-W", "60")
    assert r.returncode in (0, 5), r.stderr
    return r.stdout.decode().splitlines()


def _wait_started(proc: subprocess.Popen) -> None:
    line = proc.stderr.readline().decode()
    assert "bridging" in line, line + proc.stderr.read().decode() if proc.poll() is not None else line


def test_carries_every_message_with_an_address_template_and_prints_what_it_carried(broker, tmp_path):
    n = _name()
    src, dst = f"src/{n}", f"dst/{n}"
    _session(f"dst-{n}", f"{dst}/#")
    lines = [f"{i:05d}" for i in range(300)]
    save = tmp_path / "carried.jsonl"
    bridge = _spawn("bridge", f"{SRC}/{src}/#?qos=1", f"{SRC}?qos=1", "--address", "dst/" + n + "/{topic}",
                    "-C", "300", "-W", "30", "-o", "jsonl", "--save", str(save))
    _wait_started(bridge)
    _publish(f"{src}/a", lines)
    out, err = bridge.communicate(timeout=60)
    assert bridge.returncode == 0, err
    carried = [json.loads(line) for line in out.decode().splitlines()]
    assert [c["payload"] for c in carried] == lines
    assert carried[0]["address"] == f"dst/{n}/{src}/a" and carried[0]["protocol"] == "mqtt"
    assert "carried 300" in err.decode()
    assert _collect(f"dst-{n}", f"{dst}/#") == lines
    assert [json.loads(line)["payload"] for line in save.read_text().splitlines()] == lines  # --save: a copy


@pytest.mark.parametrize("copy", ["--save", "-o"])
def test_a_copy_that_cannot_be_written_is_one_line_and_the_source_keeps_the_messages(broker, copy):
    """--save /dev/full, or -o with stdout on /dev/full (ENOSPC): one line, exit 1, and the
    source session still holds what the copy missed (it said `unexpected OSError` from the
    close of the --save file, and a write of -o raised past the output handling)."""
    n = _name()
    src, dst = f"src/{n}", f"dst/{n}"
    cid = f"br-{n}"
    _session(cid, f"{src}/#")
    lines = [f"{i:05d}" for i in range(5)]
    _publish(f"{src}/x", lines)
    source = f"{SRC}/{src}/%23?qos=1&client_id={cid}&clean_start=false&session_expiry=300"
    bridge = ["bridge", source, f"{SRC}/{dst}/x?qos=1", "-C", "5", "-W", "30"]
    cmd = [*bridge, "--save", "/dev/full"] if copy == "--save" else ["-o", "raw", *bridge]
    with open("/dev/full", "wb") as full:
        r = subprocess.run([sys.executable, "-m", "iotctl", *cmd], stdout=full, stderr=subprocess.PIPE,
                           env=clean_env(), timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    what = "--save file /dev/full" if copy == "--save" else "output"
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"iotctl: error: cannot write {what}: no space left on device; carried 0, "), err
    assert "left unacknowledged at the source" in last and "Traceback" not in err, err
    again = _run("bridge", source, f"{SRC}/{dst}/x?qos=1", "-C", "5", "-W", "30", "-o", "raw")
    assert again.returncode == 0, again.stderr
    assert again.stdout.decode().splitlines() == lines


def test_start_up_line_says_at_most_once_without_a_persistent_session(broker):
    n = _name()
    r = _run("bridge", f"{SRC}/s/{n}", f"{SRC}/d/{n}", "-W", "0.5")
    assert r.returncode == 5
    err = r.stderr.decode()
    assert "at most once: the source cannot deliver a message again" in err
    assert err.strip().splitlines()[-1].startswith("iotctl: error: bridge: carried 0 within 0.5 s")


def test_killed_mid_stream_and_started_again_loses_nothing(broker):
    """SIGKILL while messages are in flight: a persistent source session gives back
    everything not confirmed; duplicates stay within the in-flight window."""
    n = _name()
    src, dst = f"src/{n}", f"dst/{n}"
    cid = f"br-{n}"
    _session(cid, f"{src}/#")
    _session(f"dst-{n}", f"{dst}/#")
    lines = [f"{i:05d}" for i in range(3000)]
    _publish(f"{src}/x", lines)
    source = f"{SRC}/{src}/%23?qos=1&client_id={cid}&clean_start=false&session_expiry=300"
    target = f"{SRC}/{dst}/x?qos=1"
    bridge = _spawn("bridge", source, target, "--max-inflight", "50", "--stats", "--stats-format", "jsonl")
    _wait_started(bridge)

    def carried() -> int:
        line = bridge.stderr.readline().decode()
        return json.loads(line)["carried"] if line.startswith("{") else 0

    wait_until(lambda: carried() > 200, 30, "the bridge carrying something")
    bridge.send_signal(signal.SIGKILL)
    bridge.wait(10)
    again = _run("bridge", source, target, "--idle-timeout", "2", "-W", "60")
    assert again.returncode == 0, again.stderr
    got = _collect(f"dst-{n}", f"{dst}/#")
    assert set(got) == set(lines)
    duplicates = len(got) - len(set(got))
    assert duplicates <= 50 + 20, duplicates  # the window, plus what the broker had in flight to us


def test_a_cut_target_connection_is_reconnected_and_nothing_is_lost(broker):
    n = _name()
    src, dst = f"src/{n}", f"dst/{n}"
    cid = f"br-{n}"
    _session(cid, f"{src}/#")
    _session(f"dst-{n}", f"{dst}/#")
    lines = [f"{i:05d}" for i in range(2000)]
    with TcpRelay(PRIVATE_PORT) as relay:
        source = f"{SRC}/{src}/%23?qos=1&client_id={cid}&clean_start=false"
        bridge = _spawn("bridge", source, f"mqtt://127.0.0.1:{relay.port}/{dst}/x?qos=1", "--idle-timeout", "3",
                        "-W", "90")
        _wait_started(bridge)
        _publish(f"{src}/x", lines[:1000])
        relay.cut()
        _publish(f"{src}/x", lines[1000:])
        out, err = bridge.communicate(timeout=120)
    assert bridge.returncode == 0, err
    assert "target connection lost" in err.decode() and "target connection restored" in err.decode()
    got = _collect(f"dst-{n}", f"{dst}/#")
    assert set(got) == set(lines)


def test_a_refusing_target_stops_and_the_source_keeps_the_message(peer, broker):
    peer("mosquitto-auth")
    n = _name()
    src = f"src/{n}"
    cid = f"br-{n}"
    _session(cid, f"{src}/#")
    _publish(f"{src}/x", ["one"])
    source = f"{SRC}/{src}/%23?qos=1&client_id={cid}&clean_start=false"
    target = f"mqtt://reader:reader-secret@127.0.0.1:1884/denied/{n}?qos=1"
    r = _run("bridge", source, target, "-W", "20")
    assert r.returncode == 6, r.stderr
    err = r.stderr.decode().strip().splitlines()
    assert err[-2].startswith("iotctl: error: bridge: the target refused 1 message(s)"), err
    assert "1 refused (kept by the source)" in err[-2]
    assert _collect(cid, f"{src}/#") == ["one"]  # not acknowledged at the source


def test_refused_messages_go_to_failed_and_the_bridge_goes_on(peer, broker, tmp_path):
    peer("mosquitto-auth")
    n = _name()
    src = f"src/{n}"
    failed = tmp_path / "refused.jsonl"
    bridge = _spawn("bridge", f"{SRC}/{src}/#?qos=1", f"mqtt://reader:reader-secret@127.0.0.1:1884/denied/{n}?qos=1",
                    "--failed", str(failed), "--idle-timeout", "2", "-W", "30")
    _wait_started(bridge)
    _publish(f"{src}/x", ["a", "b", "c"])
    out, err = bridge.communicate(timeout=60)
    assert bridge.returncode == 0, err
    kept = [json.loads(line) for line in failed.read_text().splitlines()]
    assert [k["payload"] for k in kept] == ["a", "b", "c"]
    assert kept[0]["address"] == f"denied/{n}" and kept[0]["protocol"] == "mqtt"
    assert "written to" in err.decode()


def test_refused_messages_are_dropped_with_a_warning_when_asked(peer, broker):
    peer("mosquitto-auth")
    n = _name()
    src = f"src/{n}"
    bridge = _spawn("bridge", f"{SRC}/{src}/#?qos=1", f"mqtt://reader:reader-secret@127.0.0.1:1884/denied/{n}?qos=1",
                    "--on-refused", "drop", "--idle-timeout", "2", "-W", "30")
    _wait_started(bridge)
    _publish(f"{src}/x", ["a", "b", "c"])
    out, err = bridge.communicate(timeout=60)
    assert bridge.returncode == 0, err
    err = err.decode()
    assert err.count("iotctl: warning: the target refused 1 message(s) (Not authorized (0x87)): dropped") == 3, err
    # Mosquitto closes the connection after each refusing PUBACK: connected again each time
    assert err.strip().splitlines()[-1].startswith("iotctl: bridge: carried 0, in flight 0, 0/s, refused 3"), err


def _stats(proc: subprocess.Popen) -> dict:
    line = proc.stderr.readline().decode()
    return json.loads(line) if line.startswith("{") else {}


def test_a_target_gone_for_good_is_exit_3_with_every_message_accounted_for(broker):
    """--retries reconnections, then exit 3: the carried ones are at the target, the rest
    (in flight, and taken but not sent for lack of room: --max-inflight) stay with the
    source, which delivers them again."""
    n = _name()
    src, dst = f"src/{n}", f"dst/{n}"
    cid = f"br-{n}"
    _session(cid, f"{src}/#")
    _session(f"dst-{n}", f"{dst}/#")
    with TcpRelay(PRIVATE_PORT) as relay:
        bridge = _spawn("bridge", f"{SRC}/{src}/%23?qos=1&client_id={cid}&clean_start=false&session_expiry=300",
                        f"mqtt://127.0.0.1:{relay.port}/{dst}/x?qos=1", "--max-inflight", "3", "--retries", "2",
                        "--stats", "--stats-format", "jsonl")
        _wait_started(bridge)
        _publish(f"{src}/x", ["a1", "a2", "a3", "a4", "a5"])
        wait_until(lambda: _stats(bridge).get("carried") == 5, 30, "five carried")
        relay.freeze()
        _publish(f"{src}/x", ["b1", "b2", "b3", "b4", "b5"])
        wait_until(lambda: _stats(bridge).get("in_flight") == 3, 30, "three in flight")
        for _ in range(2):  # the window stays at --max-inflight: the other two wait
            assert _stats(bridge)["in_flight"] == 3
        relay.close()  # the connections cut, the port refusing
        out, err = bridge.communicate(timeout=60)
    assert bridge.returncode == 3, err
    err = err.decode()
    assert "retrying in 0.5 s (attempt 1 of 2)" in err and "attempt 2 of 2" in err, err
    last = [line for line in err.splitlines() if line.startswith("iotctl: error:")]
    assert last == ["iotctl: error: bridge: the target stayed unreachable after 2 retries (connection refused); "
                    "carried 5, 5 left unacknowledged at the source"], err
    assert _collect(f"dst-{n}", f"{dst}/#") == ["a1", "a2", "a3", "a4", "a5"]
    assert _collect(cid, f"{src}/#") == ["b1", "b2", "b3", "b4", "b5"]


def test_stats_piped_are_a_line_a_second_then_the_summary(broker):
    n = _name()
    r = _run("bridge", f"{SRC}/s/{n}", f"{SRC}/d/{n}", "--stats", "--idle-timeout", "2.5")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.decode().splitlines()
    assert lines[0].startswith("iotctl: bridging")
    assert len(lines) >= 4 and "\r" not in r.stderr.decode() and "\x1b" not in r.stderr.decode()
    assert all(line == "iotctl: bridge: carried 0, in flight 0, 0/s" for line in lines[1:]), lines
    r = _run("bridge", f"{SRC}/s/{n}", f"{SRC}/d/{n}", "--stats", "--stats-format", "jsonl", "--idle-timeout", "1.5")
    stats = [json.loads(line) for line in r.stderr.decode().splitlines()[1:]]
    assert stats[-1]["final"] is True and all("final" not in s for s in stats[:-1]) and len(stats) >= 2
    assert set(stats[0]) == {"elapsed", "received", "carried", "in_flight", "refused", "requeued", "failed",
                             "dropped", "retried", "rate", "latency_ms"}


def test_stats_on_a_terminal_by_default_refreshed_in_place(broker):
    import pty

    n = _name()
    child, fd = pty.fork()
    if child == 0:  # pragma: no cover (the child)
        os.execve(sys.executable, [sys.executable, "-m", "iotctl", "bridge", f"{SRC}/s/{n}", f"{SRC}/d/{n}",
                                   "--idle-timeout", "2.5"], clean_env())
    said = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child is gone
            break
        if not chunk:
            break
        said += chunk
    _, status = os.waitpid(child, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, said
    text = said.decode()
    assert text.count("\r\x1b[Kiotctl: bridge: carried 0, in flight 0, 0/s") >= 3, text  # the last one: the summary
    assert text.rstrip().endswith("\r\x1b[Kiotctl: bridge: carried 0, in flight 0, 0/s"), text
    assert text.split("\n", 1)[1].count("\n") == 1, text  # after the start-up line: one line, rewritten


def test_ctrl_c_acknowledges_nothing_the_target_did_not_confirm(broker):
    n = _name()
    src, dst = f"src/{n}", f"dst/{n}"
    cid = f"br-{n}"
    _session(cid, f"{src}/#")
    with TcpRelay(PRIVATE_PORT) as relay:
        bridge = _spawn("bridge", f"{SRC}/{src}/%23?qos=1&client_id={cid}&clean_start=false",
                        f"mqtt://127.0.0.1:{relay.port}/{dst}/x?qos=1", "--stats", "--stats-format", "jsonl")
        _wait_started(bridge)
        relay.freeze()
        _publish(f"{src}/x", [f"m{i}" for i in range(10)])

        def in_flight() -> bool:
            line = bridge.stderr.readline().decode()
            return line.startswith("{") and json.loads(line)["in_flight"] == 10

        wait_until(in_flight, 20, "ten messages in flight")
        bridge.send_signal(signal.SIGINT)
        out, err = bridge.communicate(timeout=30)
    assert bridge.returncode == 0, err
    assert _collect(cid, f"{src}/#") == [f"m{i}" for i in range(10)]


@pytest.mark.parametrize("url, why", [
    ("nope://127.0.0.1/x", "unknown scheme 'nope'"),
    ("mqtt://127.0.0.1/a?qos=7", "qos: 7 is not in the range"),
    ("mqtt://127.0.0.1/a?qoz=1", "unknown option 'qoz'"),
    ("mqtt://u:hunter2@127.0.0.1/a?host=x", "belongs in the URL itself"),
    ("mqtt:///a", "no host"),
])
def test_bad_urls_are_one_line_and_exit_2(iotctl, url, why):
    r = iotctl("bridge", url, "mqtt://127.0.0.1/x")
    assert r.exit_code == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and why in lines[0], lines
    assert "hunter2" not in r.stderr


def test_on_refused_failed_needs_a_file(iotctl):
    r = iotctl("bridge", "mqtt://127.0.0.1/a", "mqtt://127.0.0.1/b", "--on-refused", "failed")
    assert r.exit_code == 2 and "needs --failed FILE" in r.stderr


@pytest.mark.parametrize("side", ["source", "target"])
def test_timeout_bounds_connecting_to_a_silent_peer(broker, side):
    """-W bounds the run, connecting included: a peer that accepts and never answers
    (an AMQP source, an MQTT target) ends it within -W (exit 5), one line each."""
    from tests.faults import ScriptedPeer

    silent = ScriptedPeer(lambda conn: conn.recv(65536) and time.sleep(30))
    try:
        if side == "source":
            urls = (f"amqp://guest:guest@127.0.0.1:{silent.port}/%2f?queue=q", f"{SRC}/br/{_name()}")
        else:
            urls = (f"{SRC}/br/{_name()}", f"mqtt://127.0.0.1:{silent.port}/x")
        started = time.monotonic()
        r = _run("bridge", *urls, "-W", "1.5")
        took = time.monotonic() - started
    finally:
        silent.close()
    assert r.returncode == 5, r.stderr
    assert 1.4 < took < 6, took
    err = r.stderr.decode()
    assert "Traceback" not in err and f"127.0.0.1:{silent.port}" in err.splitlines()[0], err
    assert "within 1.5 s" in err.splitlines()[0], err

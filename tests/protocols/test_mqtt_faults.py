"""MQTT faults against the real private Mosquitto (127.0.0.1:11883): a persistent QoS 1
or 2 session stopped by -C or Ctrl-C resumes exactly after the last message printed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import clean_env
from tests.protocols.test_mqtt import PRIVATE


@pytest.fixture
def broker(peer):
    peer("mosquitto-private")


def _session(qos: int = 1) -> tuple[str, tuple[str, ...]]:
    cid = f"iotctl-resume-{os.getpid()}-{time.time_ns() % 10**9}"
    return cid, (*PRIVATE, "-i", cid, "--no-clean-start", "--session-expiry", "300", "-q", str(qos))


def _fill(iotctl, topic: str, session: tuple[str, ...], n: int, qos: int) -> list[str]:
    """Create the session (subscribed, then away) and publish n numbered lines to it."""
    iotctl("mqtt", "sub", *session, "-t", topic, "-W", "0.2")
    lines = [f"{i:06d}" for i in range(n)]
    r = iotctl("mqtt", "pub", *PRIVATE, "-t", topic, "-q", str(qos), "-l", input="\n".join(lines) + "\n")
    assert r.exit_code == 0, r
    return lines


def _end(iotctl, cid: str, topic: str) -> None:
    iotctl("mqtt", "sub", *PRIVATE, "-i", cid, "-t", topic, "-W", "0.1")  # a clean start ends it


@pytest.mark.parametrize("qos", [1, 2])
def test_count_resumes_exactly_after_the_last_message_printed_20_runs(iotctl, broker, topic, qos):
    """-C N twenty times: every run starts where the previous one stopped (none lost,
    none repeated), while the broker still had unread messages on the wire each time."""
    cid, session = _session(qos)
    lines = _fill(iotctl, topic, session, 2100, qos)
    got = []
    for run in range(20):
        r = iotctl("mqtt", "sub", *session, "-t", topic, "-C", "100", "-W", "10")
        assert r.exit_code == 0, (run, r)
        printed = r.stdout.splitlines()
        assert printed == lines[len(got):len(got) + 100], (run, printed[:3], len(got))
        got += printed
    rest = iotctl("mqtt", "sub", *session, "-t", topic, "-C", "100", "-W", "10")
    assert rest.stdout.splitlines() == lines[2000:2100], rest
    _end(iotctl, cid, topic)


@pytest.mark.parametrize("qos", [1, 2])
def test_ctrl_c_resumes_exactly_after_the_last_message_printed(iotctl, broker, topic, tmp_path, qos):
    """Ctrl-C while messages stream in: the next run starts right after the last one
    printed (nothing that was printed comes back, nothing is skipped)."""
    cid, session = _session(qos)
    lines = _fill(iotctl, topic, session, 10000, qos)
    got: list[str] = []
    for run in range(3):
        err = tmp_path / f"err-{run}"
        with open(err, "wb") as errf:
            proc = subprocess.Popen([sys.executable, "-m", "iotctl", "mqtt", "sub", *session, "-t", topic],
                                    stdout=subprocess.PIPE, stderr=errf, env=clean_env())
        first = proc.stdout.readline()  # messages are flowing
        proc.send_signal(signal.SIGINT)
        out = proc.stdout.read()  # the same buffered reader: nothing read ahead is lost
        assert proc.wait(20) == 0, err.read_text()
        printed = (first + out).decode().splitlines()
        assert printed, err.read_text()
        assert printed == lines[len(got):len(got) + len(printed)], (run, printed[:2], len(got))
        got += printed
    r = iotctl("mqtt", "sub", *session, "-t", topic, "-C", "1", "-W", "10")
    assert r.stdout.splitlines() == [lines[len(got)]], (r, len(got))
    _end(iotctl, cid, topic)


def test_a_full_disk_is_one_line_and_nothing_is_acknowledged(iotctl, broker, topic):
    """Issue 23 item 7: output that cannot be written (/dev/full: ENOSPC) is one line,
    exit 1, and a persistent QoS 1 session still holds the message afterwards."""
    import subprocess

    cid, session = _session(1)
    _fill(iotctl, topic, session, 3, 1)
    with open("/dev/full", "wb") as full:
        r = subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "sub", *session, "-t", topic, "-C", "3", "-W", "10"],
                           stdout=full, stderr=subprocess.PIPE, env=clean_env(), timeout=60)
    assert r.returncode == 1
    assert r.stderr.decode().strip().splitlines()[-1] == "iotctl: error: cannot write output: no space left on device"
    assert "Traceback" not in r.stderr.decode() and "Exception ignored" not in r.stderr.decode()
    again = iotctl("mqtt", "sub", *session, "-t", topic, "-C", "3", "-W", "10")
    assert again.exit_code == 0 and again.stdout.splitlines() == ["000000", "000001", "000002"], again
    _end(iotctl, cid, topic)

"""A publish that stops early says where it stopped, and --failed keeps every message not
acknowledged, so a replay resumes with nothing lost: against a real Mosquitto of the
test's own, killed, frozen, or interrupted mid-publish. Also: `sub | head -1`, and -W
bounding the connection."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.helpers import clean_env, free_port, wait_port, wait_until

TOTAL = 60_000


class Broker:
    """A Mosquitto of this test's own on 127.0.0.1 (so it can be killed and frozen)."""

    def __init__(self, tmp_path, port=None):
        if shutil.which("mosquitto") is None:
            pytest.fail("mosquitto is missing; run: scripts/services up mosquitto", pytrace=False)
        self.port = port or free_port(socket.SOCK_STREAM)
        conf = tmp_path / f"mosquitto-{self.port}.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
                        "persistence false\nlog_dest none\n")
        self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port("127.0.0.1", self.port)

    def stop(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(sig)
            self.proc.wait(10)


class Counter:
    """`iotctl mqtt sub` counting what arrives (QoS 1)."""

    def __init__(self, port, topic):
        self.proc = subprocess.Popen([sys.executable, "-m", "iotctl", "mqtt", "sub", "-h", "127.0.0.1", "-p",
                                      str(port), "-t", topic, "-q", "1"], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=clean_env())
        assert b"subscribed" in self.proc.stderr.readline()
        self.lines = 0
        self._t = threading.Thread(target=self._count, daemon=True)
        self._t.start()

    def _count(self):
        for _ in self.proc.stdout:
            self.lines += 1

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def lines_file(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("".join(f"{i}\n" for i in range(TOTAL)))
    return path


def _publish(port, topic, lines_file, failed, *extra):
    return subprocess.Popen([sys.executable, "-m", "iotctl", "mqtt", "pub", "-h", "127.0.0.1", "-p", str(port),
                             "-t", topic, "-l", "-q", "1", "--failed", str(failed), *extra],
                            stdin=open(lines_file, "rb"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=clean_env())


def _report(stderr: bytes):
    text = stderr.decode()
    m = re.search(r"sent (\d+), acknowledged (\d+), (\d+) not acknowledged written to", text)
    assert m, text
    assert len(text.strip().splitlines()) == 1 and "Traceback" not in text, text
    return tuple(map(int, m.groups())), text


def _failed_payloads(path):
    return [json.loads(line)["payload"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize("fault", ["killed", "frozen", "interrupted"])
def test_early_stop_reports_and_failed_file_resumes(tmp_path, lines_file, fault):
    broker = Broker(tmp_path)
    topic = f"iotctl-test/faults/{fault}"
    failed = tmp_path / "failed.jsonl"
    counter = Counter(broker.port, topic)
    try:
        pub = _publish(broker.port, topic, lines_file, failed, "-W", "2")
        wait_until(lambda: counter.lines >= 5000 or pub.poll() is not None, 60, "5000 messages at the broker")
        assert pub.poll() is None, pub.stderr.read()
        if fault == "killed":
            broker.stop(signal.SIGKILL)
        elif fault == "frozen":
            broker.proc.send_signal(signal.SIGSTOP)
        else:
            pub.send_signal(signal.SIGINT)
        _, err = pub.communicate(timeout=60)
        expected_code = {"killed": 3, "frozen": 5, "interrupted": 130}[fault]
        assert pub.returncode == expected_code, err
        (sent, acked, written), text = _report(err)
        assert 5000 <= acked <= sent <= TOTAL
        # every message not acknowledged is in the file, in order, and nothing else
        assert _failed_payloads(failed) == [str(i) for i in range(acked, TOTAL)]
        assert written == TOTAL - acked
    finally:
        counter.stop()
        broker.stop()
    # resume: the replay sends exactly the rest
    broker = Broker(tmp_path, broker.port)
    try:
        counter = Counter(broker.port, topic)
        r = subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "pub", "-h", "127.0.0.1", "-p",
                            str(broker.port), "-q", "1", "--replay", str(failed)], capture_output=True,
                           env=clean_env(), timeout=120)
        assert r.returncode == 0, r.stderr
        wait_until(lambda: counter.lines >= TOTAL - acked, 30, "the replayed messages")
        counter.stop()
    finally:
        broker.stop()


def test_subscribe_piped_into_head_exits_0(tmp_path):
    broker = Broker(tmp_path)
    topic = "iotctl-test/faults/head"
    try:
        proc = subprocess.Popen(f"{sys.executable} -m iotctl mqtt sub -h 127.0.0.1 -p {broker.port} -t {topic} "
                                "| head -1; echo \"${PIPESTATUS[0]}\" >&2", shell=True, executable="/bin/bash",
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
        assert b"subscribed" in proc.stderr.readline()
        for i in range(200):  # until the pipe is found closed
            subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "pub", "-h", "127.0.0.1", "-p",
                            str(broker.port), "-t", topic, "-m", f"m{i}", "--repeat", "50"], env=clean_env(),
                           capture_output=True)
            if proc.poll() is not None:
                break
        out, err = proc.communicate(timeout=30)
        assert out == b"m0\n"
        assert err.decode().strip().splitlines() == ["0"], err
    finally:
        broker.stop()


def test_timeout_bounds_the_connection_phase():
    """A peer that accepts TCP but never answers CONNECT: -W 1 gives up after ~1 s, not 10."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    held = []
    threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "sub", "-h", "127.0.0.1", "-p", str(port),
                        "-t", "x", "-W", "1"], capture_output=True, env=clean_env(), timeout=30)
    elapsed = time.monotonic() - started
    server.close()
    assert r.returncode == 5, r.stderr
    assert b"no CONNACK within 1 s" in r.stderr
    assert elapsed < 8  # the 10 s connect timeout did not apply


def test_bad_line_names_its_number_and_the_counts(peer, iotctl, tmp_path):
    peer("mosquitto-private")
    failed = tmp_path / "failed.jsonl"
    r = iotctl("mqtt", "pub", "-h", "127.0.0.1", "-p", "11883", "-t", "iotctl-test/hex", "-l", "--encode", "hex",
               "-q", "1", "--failed", str(failed), input="41\n42\nzz\n43\n")
    assert r.exit_code == 2
    assert r.stderr.startswith("iotctl: error: stdin line 3: --encode hex: payload is not valid hex; "
                               "sent 2, acknowledged 2"), r.stderr

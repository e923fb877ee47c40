"""MQTT faults against the real private Mosquitto (127.0.0.1:11883): a persistent QoS 1
or 2 session stopped by -C or Ctrl-C resumes exactly after the last message printed; a
full disk; a pause in `pub -l`, a reader of stdout that goes away while nothing arrives,
and (against a Mosquitto of the test's own, with a TcpRelay) a broker restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import Running, clean_env, exits_when_its_reader_goes
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
    printed (nothing that was printed comes back, nothing is skipped). 40,000 lines of 7
    bytes are more than a pipe holds: a run blocks writing until the test reads, which it
    does only after the Ctrl-C, so however late the signal comes the three runs cannot
    print them all (with 10,000 a loaded machine printed everything before it came)."""
    cid, session = _session(qos)
    lines = _fill(iotctl, topic, session, 40000, qos)
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


# --------------------------------------------------------------------------- issue 21 item 6: a pause in -l


def test_a_pause_in_the_input_is_not_a_missing_acknowledgement(broker, topic):
    """`(echo a; sleep 6; echo b) | mqtt pub -q 1 -l -W 2 -k 2`: both arrive and it exits 0
    with nothing on stderr (it exited 5 "2 message(s) not acknowledged"). The pause is
    longer than -W and than the broker's keep-alive grace (1.5 x 2 s): the acknowledgement
    clock runs only while a message waits, and the connection is kept alive meanwhile."""
    with Running([sys.executable, "-m", "iotctl", "-o", "raw", "mqtt", "sub", *PRIVATE, "-t", topic, "-q", "1",
                  "-C", "2", "-W", "60"]) as sub:
        assert b"subscribed" in sub.stderr.readline()
        pub = " ".join([sys.executable, "-m", "iotctl", "mqtt", "pub", *PRIVATE, "-t", topic, "-q", "1", "-l",
                        "-W", "2", "-k", "2"])
        done = subprocess.run(["sh", "-c", f"(echo a; sleep 6; echo b) | {pub}"], capture_output=True,
                              timeout=60, env=clean_env())
        assert done.returncode == 0, done.stderr
        assert done.stderr == b""
        out, err = sub.communicate(timeout=30)
        assert sub.returncode == 0, err
        assert out == b"a\nb\n"


# --------------------------------------------------------------------------- issue 21 item 9: stdout closed


@pytest.mark.parametrize("reader", ["fast path", "paho"])
def test_sub_notices_a_closed_stdout_while_idle(broker, topic, reader):
    """`mqtt sub | head -1` after one message and then silence: the subscriber sees the
    reader gone while nothing arrives and exits 0 at once (not at the next message,
    which never comes here)."""
    env = clean_env(**({"IOTCTL_MQTT_PAHO_RECEIVE": "1"} if reader == "paho" else {}))
    with Running([sys.executable, "-m", "iotctl", "-o", "raw", "mqtt", "sub", *PRIVATE, "-t", topic], env) as sub:
        assert b"subscribed" in sub.stderr.readline()
        _publish(PRIVATE, topic, "one")
        exits_when_its_reader_goes(sub, b"one\n")


# --------------------------------------------------------------------------- issue 21 item 10: broker restarts


class PersistentBroker:
    """A Mosquitto of the test's own on 127.0.0.1 that keeps sessions across a restart
    (persistence in tmp_path, saved when it stops)."""

    def __init__(self, tmp_path):
        import getpass
        import shutil
        import socket

        from tests.helpers import free_port

        if shutil.which("mosquitto") is None:
            pytest.fail("mosquitto is missing; run: scripts/services up mosquitto", pytrace=False)
        self.port = free_port(socket.SOCK_STREAM)
        store = tmp_path / f"mosquitto-{self.port}"
        store.mkdir()
        self.conf = tmp_path / f"mosquitto-{self.port}.conf"
        # `user`: mosquitto started as root would otherwise run as 'mosquitto', which cannot
        # write the test's folder (and ignores the setting when not started as root)
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser {getpass.getuser()}\n"
                             f"persistence true\npersistence_location {store}/\nlog_dest none\n")
        self.proc = None
        self.start()

    def start(self) -> None:
        from tests.helpers import wait_port

        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port("127.0.0.1", self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # saves its sessions
            self.proc.wait(20)

    def args(self, port: int | None = None) -> tuple[str, ...]:
        return ("-h", "127.0.0.1", "-p", str(port or self.port))


@pytest.fixture
def own_broker(tmp_path):
    b = PersistentBroker(tmp_path)
    yield b
    b.stop()


def _publish(port_args, topic: str, *lines: str) -> None:
    r = subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "pub", *port_args, "-t", topic, "-q", "1", "-l"],
                       input="".join(f"{x}\n" for x in lines).encode(), capture_output=True, env=clean_env(),
                       timeout=60)
    assert r.returncode == 0, r.stderr


def test_sub_reconnects_across_a_broker_restart_and_loses_nothing(own_broker, topic, tmp_path):
    """A persistent QoS 1 subscriber while its broker restarts: a status line for the
    loss and each failed try (with backoff), one for the recovery, and what was
    published while it was away arrives (it exited 3). The subscriber reaches the broker
    through a relay kept refusing until the publisher is done, so those messages were
    certainly published in between."""
    from tests.faults import TcpRelay
    from tests.helpers import wait_until

    cid = f"iotctl-reconnect-{os.getpid()}-{time.time_ns() % 10**9}"
    err_path = tmp_path / "sub.err"
    with TcpRelay(own_broker.port) as relay, open(err_path, "wb") as errf:
        sub = subprocess.Popen([sys.executable, "-m", "iotctl", "-o", "raw", "mqtt", "sub",
                                *own_broker.args(relay.port), "-t", topic, "-q", "1", "-i", cid, "--no-clean-start",
                                "-C", "6", "-W", "120"],
                               stdout=subprocess.PIPE, stderr=errf, env=clean_env())
        try:
            wait_until(lambda: b"subscribed" in err_path.read_bytes() or sub.poll() is not None, 20, "subscribed")
            _publish(own_broker.args(), topic, "1", "2", "3")
            assert [sub.stdout.readline() for _ in range(3)] == [b"1\n", b"2\n", b"3\n"]
            relay.refuse()
            own_broker.stop()  # the relay's connection to it ends: the subscriber's is closed
            wait_until(lambda: b"(attempt 2)" in err_path.read_bytes(), 30, "a second try")
            own_broker.start()
            _publish(own_broker.args(), topic, "4", "5", "6")  # while the subscriber is away
            relay.refuse(False)
            out, _ = sub.communicate(timeout=90)
        finally:
            if sub.poll() is None:
                sub.kill()
                sub.wait()
    err = err_path.read_text().splitlines()
    assert sub.returncode == 0, err
    assert out == b"4\n5\n6\n"
    assert err[0] == f"iotctl: subscribed to {topic} on mqtt://127.0.0.1:{relay.port}", err
    assert err[1] == "iotctl: connection lost (the broker closed it); reconnecting in 0.5 s", err
    assert not any("connection lost (connection lost" in line for line in err), err  # the cause is said once
    assert err[2].endswith("; reconnecting in 1 s (attempt 2)"), err
    assert err[-1] == f"iotctl: reconnected to mqtt://127.0.0.1:{relay.port}", err
    assert sum("reconnected" in line for line in err) == 1, err


def test_sub_no_reconnect_exits_3_when_the_broker_restarts(own_broker, topic):
    with Running([sys.executable, "-m", "iotctl", "-o", "raw", "mqtt", "sub", *own_broker.args(), "-t", topic,
                  "--no-reconnect"]) as sub:
        assert b"subscribed" in sub.stderr.readline()
        own_broker.stop()
        out, err = sub.communicate(timeout=30)
    assert sub.returncode == 3, err
    assert err.decode().splitlines() == [
        f"iotctl: error: subscription to {topic}: connection lost (the broker closed it)"]
    assert out == b""


# --------------------------------------------------------------------------- issue 23 item 5: a payload's control bytes


@pytest.mark.parametrize("mode", ["pretty", "raw"])
def test_pretty_escapes_a_payloads_control_bytes_and_raw_keeps_them(broker, topic, mode):
    """A payload that would clear the subscriber's screen, a NUL, a C1 CSI: pretty shows
    each as an escape (NUL no longer vanishes); raw is byte-exact."""
    payload = b"before\x1b[2J\x1b[H\x1b[31mRED after A\x00B \xc2\x9b1m"
    with Running([sys.executable, "-m", "iotctl", "-o", mode, "mqtt", "sub", *PRIVATE, "-t", topic, "-C", "1",
                  "-W", "30"]) as sub:
        assert b"subscribed" in sub.stderr.readline()
        pub = subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "pub", *PRIVATE, "-t", topic, "-s"],
                             input=payload, capture_output=True, env=clean_env(), timeout=30)
        assert pub.returncode == 0, pub.stderr
        out, err = sub.communicate(timeout=30)
    assert sub.returncode == 0, err
    if mode == "raw":
        assert out == payload + b"\n"
    else:
        lines = out.decode().splitlines()
        assert lines[-1] == "before\\x1b[2J\\x1b[H\\x1b[31mRED after A\\x00B \\x9b1m", lines
        assert not any(ch in out for ch in (b"\x1b", b"\x00", b"\xc2\x9b")), out


# --------------------------------------------------------------------------- issue 23 item 8: --failed replays alone


def test_failed_file_replays_on_its_own_with_the_command_lines_properties(peer, broker, topic, tmp_path):
    """A publish refused by the limits broker (it takes no retained messages): --failed
    keeps each message's MQTT 5 properties from the command line, so `--replay FILE`
    alone sends them as they were meant (the file had none of them)."""
    peer("mosquitto-limits")
    failed = tmp_path / "rest.jsonl"
    props = ("--content-type", "text/plain", "--user-property", "k=v", "--correlation-data", "c1",
             "--response-topic", f"{topic}/reply")
    r = subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "pub", "-h", "127.0.0.1", "-p", "11885", "-t", topic,
                        "-q", "1", "-r", "-l", "--failed", str(failed), *props], input=b"a\nb\n", capture_output=True,
                       env=clean_env(), timeout=60)
    assert r.returncode == 6, r.stderr
    assert b"2 not acknowledged written to" in r.stderr, r.stderr
    with Running([sys.executable, "-m", "iotctl", "-o", "jsonl", "mqtt", "sub", *PRIVATE, "-t", topic, "-C", "2",
                  "-W", "30"]) as sub:
        assert b"subscribed" in sub.stderr.readline()
        r = subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "pub", *PRIVATE, "--replay", str(failed), "-q", "1"],
                           capture_output=True, env=clean_env(), timeout=60)
        assert r.returncode == 0, r.stderr
        out, err = sub.communicate(timeout=30)
    got = [json.loads(line) for line in out.splitlines()]
    assert [m["payload"] for m in got] == ["a", "b"], err
    for m in got:
        p = m["meta"]["properties"]
        assert (m["content_type"], p["user_properties"], p["correlation_data"], p["response_topic"]) == \
               ("text/plain", [["k", "v"]], "c1", f"{topic}/reply"), m

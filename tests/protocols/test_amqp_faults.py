"""The amqp group when things go wrong (issues 21 and 23): a broker that freezes or
goes away (tests.faults.TcpRelay in front of the real RabbitMQ: frozen, cut, refusing),
fake servers that say nothing or send garbage or huge frames, Ctrl-C at any point,
a reader of stdout that goes away. Every relay and fake server listens on an
OS-assigned port on 127.0.0.1; every test uses its own queue names and closes only
its own connections."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import uuid

import pytest

from tests.faults import ScriptedPeer, TcpRelay
from tests.helpers import wait_until
from tests.protocols.test_amqp import (Proxy, close_connection, names, rabbitmqctl, rmq, start,  # noqa: F401
                                       wait_status)


@pytest.fixture
def relay(rmq):
    with TcpRelay(5672) as r:
        yield r


class FakeServer(ScriptedPeer):
    """A TCP server that is not RabbitMQ: `behaviour(conn)` runs for each connection,
    after the client's protocol header."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        super().__init__()

    def handle(self, conn) -> None:
        conn.recv(8)  # the client's protocol header
        self.behaviour(conn)


def timed(proc: subprocess.Popen, timeout: float) -> tuple[float, bytes, bytes]:
    if proc.stdin is not None and proc.stdin.closed:
        proc.stdin = None  # closed by the test (the end of the input)
    t0 = time.monotonic()
    out, err = proc.communicate(timeout=timeout)
    return time.monotonic() - t0, out, err


# --------------------------------------------------------------------------- issue 21 item 8: a frozen broker


def _publishing_when_it_freezes(relay, names, tmp_path, *options):
    """`amqp publish -l` through the relay: 'a' confirmed and queued, then the broker
    freezes. Returns the process, the queue and the --failed file."""
    q = queue_of(names)
    failed = tmp_path / "failed.jsonl"
    proc = start("amqp", "publish", "-p", relay.port, "-r", q, "-l", "--failed", failed, *options,
                 stdin=subprocess.PIPE)
    proc.stdin.write(b"a\n")
    proc.stdin.flush()
    wait_until(lambda: depth_of(q) == 1, 10, "the first message confirmed and queued")
    relay.freeze()
    return proc, q, failed


@pytest.mark.parametrize("heartbeat", [[], ["--heartbeat", "0"]], ids=["default", "no-heartbeat"])
def test_publish_honours_W_when_the_broker_freezes(relay, names, tmp_path, heartbeat):
    """-W bounds the wait with or without heartbeats (with --heartbeat 0 it never ended)."""
    proc, q, failed = _publishing_when_it_freezes(relay, names, tmp_path, "-W", "2", *heartbeat)
    proc.stdin.write(b"b\nc\n")
    proc.stdin.close()
    took, out, err = timed(proc, 30)
    assert proc.returncode == 5, err
    assert took < 8, (took, err)  # -W 2, then at most 2 s for the close
    assert b"2 message(s) not acknowledged within 2 s" in err
    assert b"sent 3, acknowledged 1" in err
    assert [json.loads(line)["payload"] for line in failed.read_text().splitlines()] == ["b", "c"]


@pytest.mark.parametrize("heartbeat", [[], ["--heartbeat", "0"]], ids=["default", "no-heartbeat"])
def test_consume_honours_W_and_ctrl_c_when_the_broker_freezes(relay, names, heartbeat):
    q = queue_of(names)
    waiting = start("amqp", "consume", q, "-p", relay.port, "-W", "3", *heartbeat)
    wait_status(waiting, "consuming from")
    stopped = start("amqp", "consume", q, "-p", relay.port, *heartbeat)
    wait_status(stopped, "consuming from")
    relay.freeze()
    time.sleep(0.5)
    stopped.send_signal(signal.SIGINT)
    took, out, err = timed(stopped, 20)
    assert stopped.returncode == 0, err
    assert took < 4, (took, err)
    took, out, err = timed(waiting, 20)
    assert waiting.returncode == 5, err
    assert b"no message within 3 s" in err
    assert took < 6, (took, err)


def test_a_second_ctrl_c_keeps_the_counts_line(relay, names, tmp_path):
    proc, q, failed = _publishing_when_it_freezes(relay, names, tmp_path)
    proc.stdin.write(b"b\n")
    proc.stdin.flush()
    time.sleep(0.5)
    for _ in range(3):  # an impatient user
        proc.send_signal(signal.SIGINT)
        time.sleep(0.6)
    took, out, err = timed(proc, 20)
    assert proc.returncode == 130, err
    assert b"publish interrupted: sent 2, acknowledged 1, 1 not acknowledged written to" in err, err
    assert [json.loads(line)["payload"] for line in failed.read_text().splitlines()] == ["b"]


# --------------------------------------------------------------------------- issue 21 item 7: exact --failed


@pytest.mark.parametrize("delay", [0.0, 0.2, 0.5])
def test_interrupted_publish_l_fails_exactly_what_was_not_confirmed(names, tmp_path, delay):
    """Ctrl-C in the middle of a burst: what reached the queue and what --failed holds
    are each other's complement, in order, with nothing in both (a replay neither
    loses nor duplicates)."""
    q = queue_of(names)
    lines = [f"{i:06d}" for i in range(100_000)]
    proc, failed = _publish_l(q, tmp_path)
    threading.Thread(target=_feed, args=(proc, lines), daemon=True).start()
    wait_until(lambda: depth_of(q) > 0, 30, "messages arriving")  # it runs (not still starting)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _exactly_split(proc, q, failed, lines)


def test_interrupted_while_lines_trickle_in_keeps_every_line(names, tmp_path):
    """Ctrl-C while the main thread waits for the next line (the input's generators
    are running): the lines that come after it still reach --failed, up to the end
    of the input (a Ctrl-C used to finish those generators: everything after it was
    missing from the file)."""
    q = queue_of(names)
    lines = [f"{i:04d}" for i in range(300)]
    proc, failed = _publish_l(q, tmp_path)

    def trickle():
        for line in lines:
            proc.stdin.write(f"{line}\n".encode())
            proc.stdin.flush()
            if line == lines[0]:
                wait_until(lambda: depth_of(q) == 1, 30, "the first line queued")  # it runs
                started.set()
            time.sleep(0.005)
        proc.stdin.close()

    started = threading.Event()
    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    assert started.wait(30)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    feeder.join(10)
    _exactly_split(proc, q, failed, lines, missing=0)


def _publish_l(q, tmp_path):
    failed = tmp_path / "failed.jsonl"
    return start("amqp", "publish", "-r", q, "-l", "--failed", failed, stdin=subprocess.PIPE), failed


def _exactly_split(proc, q, failed, lines, missing: int | None = None) -> None:
    took, out, err = timed(proc, 30)
    assert proc.returncode == 130, err
    in_file = [json.loads(line)["payload"] for line in failed.read_text().splitlines()]
    queued = drain(q)
    assert queued + in_file == lines[:len(queued) + len(in_file)], (len(queued), len(in_file), err)
    sent = int(err.split(b"sent ")[1].split(b",")[0])
    assert sent == len(queued), err  # every message sent was confirmed: none is in both places
    if missing is None:  # only what stdin had not given yet (the pipe's buffer, the reader's chunks)
        missing = 20 * 65536 // len(lines[0] + "\n")
    assert len(queued) + len(in_file) >= len(lines) - missing, (len(queued), len(in_file), err)


def _feed(proc, lines) -> None:
    try:
        proc.stdin.write("".join(f"{x}\n" for x in lines).encode())
        proc.stdin.close()
    except OSError:
        pass


def test_interrupted_while_the_input_is_idle_fails_nothing_already_confirmed(names, tmp_path):
    q = queue_of(names)
    failed = tmp_path / "failed.jsonl"
    proc = start("amqp", "publish", "-r", q, "-l", "--failed", failed, stdin=subprocess.PIPE)
    proc.stdin.write(b"".join(b"%d\n" % i for i in range(100)))
    proc.stdin.flush()
    wait_until(lambda: depth_of(q) == 100, 10, "100 messages queued")
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    took, out, err = timed(proc, 20)
    assert proc.returncode == 130, err
    assert b"sent 100, acknowledged 100, 0 not acknowledged written to" in err, err
    assert failed.read_text() == ""


# --------------------------------------------------------------------------- issue 21 item 6: a pause in the input


def test_a_pause_in_the_input_is_not_a_missing_confirm(names):
    q = queue_of(names)
    cmd = " ".join(["(echo a; sleep 4; echo b) |", *map(_quote, start_cmd("amqp", "publish", "-r", q, "-l", "-W", "2"))])
    done = subprocess.run(["sh", "-c", cmd], capture_output=True, timeout=30, env=_env())
    assert done.returncode == 0, done.stderr
    assert drain(q) == ["a", "b"]



# --------------------------------------------------------------------------- issue 23 item 8: --failed replays alone


def test_failed_file_replays_on_its_own_to_the_same_exchange_with_the_same_properties(names, tmp_path):
    """`publish -e EX -r KEY --persistent --header ...` refused (EX is missing): --failed
    holds every message, those sent and those not sent yet (a file: the rest is read to
    its end), with its exchange, properties and headers, so `--replay FILE` alone sends
    them where they were going, as they were (the file had only the routing key: a
    replay went to the default exchange and was dropped)."""
    ex = names("exchange")
    failed = tmp_path / "rest.jsonl"
    lines = [str(i) for i in range(3000)]
    source = tmp_path / "lines.txt"
    source.write_text("".join(x + "\n" for x in lines))
    with open(source, "rb") as stdin:
        done = subprocess.run(start_cmd("amqp", "publish", "-e", ex, "-r", "k1", "-l", "--persistent", "--header",
                                        "n:int=5", "--content-type", "text/plain", "--failed", failed),
                              stdin=stdin, capture_output=True, timeout=60, env=_env())
    assert done.returncode == 6, done.stderr
    assert b"3000 not acknowledged written to" in done.stderr, done.stderr
    assert run_ok("amqp", "declare", "exchange", ex, "-t", "direct")
    q = queue_of(names)
    assert run_ok("amqp", "bind", "queue", q, "-e", ex, "-r", "k1")
    assert run_ok("amqp", "publish", "--replay", failed)
    got = subprocess.run(start_cmd("-o", "jsonl", "amqp", "consume", q, "-C", "3000", "-W", "30"),
                         capture_output=True, timeout=120, env=_env())
    assert got.returncode == 0, got.stderr
    envelopes = [json.loads(line) for line in got.stdout.splitlines()]
    assert [e["payload"] for e in envelopes] == lines
    for e in envelopes:
        assert e["meta"]["exchange"] == ex and e["meta"]["routing_key"] == "k1"
        assert e["meta"]["properties"]["delivery_mode"] == 2
        assert e["meta"]["properties"]["content_type"] == "text/plain"
        assert e["meta"]["headers"] == {"n": 5}


# --------------------------------------------------------------------------- issue 21 item 9: stdout closed while idle


def test_a_failed_file_on_a_full_disk_keeps_the_refusal_as_the_error(names):
    """--failed /dev/full after a refusal: the refusal stays the error (exit 6) and the
    report says the file could not be written (it was `cannot write output`, exit 1, the
    refusal gone)."""
    ex = names("exchange")
    done = subprocess.run(start_cmd("amqp", "publish", "-e", ex, "-r", "k1", "-l", "--failed", "/dev/full"),
                          input=b"a\nb\n", capture_output=True, timeout=60, env=_env())
    assert done.returncode == 6, done.stderr
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"iotctl: error: publish: NOT_FOUND - no exchange {ex!r} in vhost '/'; sent "), lines
    assert lines[0].endswith(", acknowledged 0, cannot write --failed file /dev/full: no space left on device"), lines


def test_consume_notices_a_closed_stdout_while_idle(names):
    q = queue_of(names)
    proc = start("amqp", "consume", q)
    wait_status(proc, "consuming from")
    assert run_ok("amqp", "publish", "-r", q, "-m", "one")
    assert proc.stdout.readline() == b"one\n"
    proc.stdout.close()  # `| head -1`: the reader goes away, then nothing more arrives
    took, _, err = timed(proc, 20)
    assert proc.returncode == 0, err
    assert took < 4, took
    assert depth_of(q) == 0  # the one it wrote was acknowledged


# --------------------------------------------------------------------------- issue 21 item 10: reconnect


def test_consume_reconnects_after_the_broker_closed_it_and_loses_nothing(names):
    q = queue_of(names, "--durable")
    name = f"iotctl-test reconnect {uuid.uuid4().hex}"
    proc = start("amqp", "consume", q, "-C", "20", "-W", "60", "--connection-name", name)
    wait_status(proc, "consuming from")
    assert run_ok("amqp", "publish", "-r", q, "--persistent", "-l", input=b"".join(b"%d\n" % i for i in range(10)))
    got = [proc.stdout.readline() for _ in range(10)]
    close_connection(name, "shutdown")  # what a broker stopping says (CONNECTION_FORCED)
    wait_status(proc, "connection lost (the broker closed the connection: CONNECTION_FORCED - shutdown); "
                      "reconnecting in 0.5 s")
    assert run_ok("amqp", "publish", "-r", q, "--persistent", "-l",
                  input=b"".join(b"%d\n" % i for i in range(10, 20)))
    wait_status(proc, "reconnected to amqp://localhost:5672 (vhost '/')")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert [int(x) for x in b"".join(got + [out]).split()] == list(range(20))
    assert depth_of(q) == 0


def test_consume_and_tap_reconnect_with_backoff_while_the_broker_is_away(relay, names):
    q = queue_of(names, "--durable")
    ex = names("exchange")
    assert run_ok("amqp", "declare", "exchange", ex, "-t", "topic")
    consumer = start("amqp", "consume", q, "-p", relay.port, "-C", "6", "-W", "60")
    wait_status(consumer, "consuming from")
    tap = start("amqp", "tap", f"{ex}:t.#", "-p", relay.port, "-C", "1", "-W", "60")
    wait_status(tap, "tapping")
    assert run_ok("amqp", "publish", "-r", q, "-l", input=b"1\n2\n3\n")
    assert [consumer.stdout.readline() for _ in range(3)] == [b"1\n", b"2\n", b"3\n"]
    # (an acknowledgement still on its way when the connection goes is lost with it, and
    # that message comes again: at least once. Here the three were acknowledged first.)
    wait_until(lambda: unacknowledged(q) == 0, 20, "the three acknowledged")
    relay.refuse()
    relay.cut()
    wait_status(consumer, "reconnecting in 0.5 s")
    wait_status(consumer, "reconnecting in 1 s (attempt 2)")  # the broker is still away: back off
    assert run_ok("amqp", "publish", "-r", q, "-l", input=b"4\n5\n6\n")  # published while it is away
    relay.refuse(False)
    wait_status(consumer, "reconnected to")
    out, err = consumer.communicate(timeout=30)
    assert consumer.returncode == 0, err
    assert out == b"4\n5\n6\n"
    wait_status(tap, "reconnected to")
    assert run_ok("amqp", "publish", "-e", ex, "-r", "t.1", "-m", "after")
    out, err = tap.communicate(timeout=30)
    assert tap.returncode == 0 and out == b"after\n", err


# --------------------------------------------------------------------------- issue 23 item 1: bounded input


@pytest.mark.parametrize("pika_reads", [False, True], ids=["fast-path", "pika"])
def test_a_deleted_queue_is_one_line_saying_so_and_exit_6(names, pika_reads):
    """RabbitMQ cancels the consumer of a deleted queue (Basic.Cancel): the status line says
    so (it said `connection lost (KeyError('ctag1...'))`: pika's BlockingChannel did not know
    the consumer), consuming again finds no queue: one error line, exit 6."""
    from tests.helpers import clean_env

    q = queue_of(names)
    env = clean_env()
    if pika_reads:
        env["IOTCTL_AMQP_PIKA_RECEIVE"] = "1"
    proc = start("amqp", "consume", q, "-W", "60", env=env)
    wait_status(proc, "consuming from")
    assert run_ok("amqp", "publish", "-r", q, "-m", "before")
    assert proc.stdout.readline() == b"before\n"
    assert run_ok("amqp", "delete", "queue", q)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 6, err
    assert out == b""
    assert err.decode().splitlines() == [
        f"iotctl: the broker cancelled the consumer of queue {q!r} (the queue was deleted, or its node went "
        "down); reconnecting in 0.5 s",
        f"iotctl: error: cannot consume from queue {q!r}: NOT_FOUND - no queue {q!r} in vhost '/'"]


def test_a_frame_larger_than_frame_max_is_refused_before_it_is_buffered(rmq):
    def huge(conn):
        conn.sendall(bytes([1, 0, 0]) + (1 << 31).to_bytes(4, "big"))
        while True:  # an endless frame: pika alone would buffer it all
            conn.sendall(b"\0" * 65536)

    server = FakeServer(huge)
    try:
        proc = start("amqp", "publish", "-p", server.port, "-r", "x", "-m", "y")
        took, out, err = timed(proc, 30)
    finally:
        server.close()
    assert proc.returncode == 6, err
    assert took < 5, took
    assert err.decode().splitlines()[0] == (
        f"iotctl: error: cannot connect to amqp://localhost:{server.port} (vhost '/'): the peer sent a frame "
        f"larger than 131072 bytes (frame_max): {(1 << 31) + 8} bytes announced")


def test_a_message_announced_larger_than_512_mib_is_refused(names):
    q = queue_of(names)
    assert run_ok("amqp", "publish", "-r", q, "-m", "small")

    def inflate(frame: bytes) -> bytes:
        if frame[0] == 2:  # a content header: class, weight, then the body size
            return frame[:11] + (1 << 40).to_bytes(8, "big") + frame[19:]
        return frame

    proxy = Proxy(rewrite=inflate)
    try:
        proc = start("amqp", "get", q, "-p", proxy.port)
        took, out, err = timed(proc, 30)
    finally:
        proxy.close()
    assert proc.returncode == 6, err
    assert b"the peer announced a message of 1099511627776 bytes; iotctl takes at most 536870912" in err
    assert len(err.splitlines()) == 1, err
    assert depth_of(q) == 1  # not taken


# --------------------------------------------------------------------------- issue 23 item 7: clear errors


def test_a_silent_peer_is_exit_5_with_one_line(rmq):
    server = FakeServer(lambda conn: time.sleep(30))
    try:
        proc = start("amqp", "publish", "-p", server.port, "-r", "x", "-m", "y", "--connect-timeout", "1.5")
        took, out, err = timed(proc, 30)
    finally:
        server.close()
    assert proc.returncode == 5, err
    assert err.decode().splitlines() == [
        f"iotctl: error: cannot connect to amqp://localhost:{server.port} (vhost '/'): no AMQP handshake within 1.5 s",
        "iotctl: hint: is the host reachable, and is it an AMQP 0-9-1 server (RabbitMQ: port 5672, 5671 with TLS)?"]


@pytest.mark.parametrize("garbage", [b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
                                     b"\x01\x00\x00\x00\x00\x00\x04\x00\x63\x00\x0a\xce",
                                     b"\x01\x00\x00\x00\x00\x00\x02\x00\x0a\xce"])
def test_a_garbage_peer_is_exit_3_with_one_line(rmq, garbage):
    def babble(conn):
        conn.sendall(garbage)
        time.sleep(30)

    server = FakeServer(babble)
    try:
        proc = start("amqp", "consume", "x", "-p", server.port)
        took, out, err = timed(proc, 30)
    finally:
        server.close()
    assert proc.returncode == 3, err
    lines = err.decode().splitlines()
    assert lines[0].startswith(f"iotctl: error: cannot connect to amqp://localhost:{server.port} (vhost '/'): "
                               "the peer sent something that is not AMQP 0-9-1"), lines
    assert len(lines) == 2 and lines[1].startswith("iotctl: hint: "), lines
    assert took < 5


# --------------------------------------------------------------------------- helpers


def queue_of(names, *args) -> str:
    q = names()
    assert run_ok("amqp", "declare", "queue", q, *args)
    return q


def start_cmd(*args) -> list[str]:
    from tests.protocols.test_amqp import iotctl_cmd

    return iotctl_cmd(*args)


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(str(arg))


def _env() -> dict:
    from tests.helpers import clean_env

    return clean_env()


def run_ok(*args, input: bytes | None = None) -> bool:
    done = subprocess.run(start_cmd(*args), input=input, capture_output=True, timeout=60, env=_env())
    if done.returncode:
        raise AssertionError(done.stderr.decode())
    return True


def depth_of(q: str) -> int:
    done = subprocess.run(start_cmd("amqp", "declare", "queue", q, "--passive"), capture_output=True, timeout=60,
                          env=_env())
    assert done.returncode == 0, done.stderr
    import re

    return int(re.search(rb"(\d+) message", done.stderr).group(1))


def unacknowledged(q: str) -> int:
    for line in rabbitmqctl("list_queues", "name", "messages_unacknowledged").splitlines():
        name, _, count = line.partition("\t")
        if name == q:
            return int(count)
    raise AssertionError(f"no queue {q}")


def drain(q: str) -> list[str]:
    done = subprocess.run(start_cmd("amqp", "consume", q, "--idle-timeout", "1"), capture_output=True, timeout=120,
                          env=_env())
    assert done.returncode == 0, done.stderr
    return done.stdout.decode().split()

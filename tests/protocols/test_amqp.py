"""The amqp group against the real RabbitMQ on 127.0.0.1:5672 (scripts/services up rabbitmq).

Every test uses its own queue and exchange names and removes them afterwards.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import uuid

import pytest

from tests.helpers import clean_env, free_port, wait_until

URL = "amqp://guest:guest@127.0.0.1:5672/%2f"
VHOST = "iotctl-test"  # made by scripts/services up rabbitmq, with users iotctl and iotctl-reader


@pytest.fixture
def rmq(peer):
    peer("rabbitmq")


@pytest.fixture
def names(rmq, iotctl, request):
    """Unique queue/exchange names for this test; every one is deleted afterwards."""
    made: list[tuple[str, str]] = []

    def name(kind: str = "queue", prefix: str = "") -> str:
        n = f"iotctl-test.{prefix or request.node.name[:30]}.{uuid.uuid4().hex[:8]}"
        made.append((kind, n))
        return n

    yield name
    for kind, n in made:
        iotctl("amqp", "delete", kind, n, "--if-exists")


def queue(iotctl, name, *args):
    r = iotctl("amqp", "declare", "queue", name, *args)
    assert r.exit_code == 0, r
    return name


def depth(iotctl, name: str, *conn) -> int:
    r = iotctl("amqp", "declare", "queue", name, "--passive", *conn)
    assert r.exit_code == 0, r
    return int(re.search(r"(\d+) message", r.stderr).group(1))


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def iotctl_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "iotctl", *map(str, args)]


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_leftovers():
    """Every process a test started is gone when the test ends (a failing test must
    not leave a consumer on the shared broker)."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def start(*args: str, **kw) -> subprocess.Popen:
    # unbuffered pipes: communicate() after a readline() must not miss read-ahead data
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("env", clean_env())
    proc = subprocess.Popen(iotctl_cmd(*args), bufsize=0, **kw)
    _STARTED.append(proc)
    return proc


def wait_status(proc: subprocess.Popen, needle: str) -> str:
    """Read the process's stderr until a line containing `needle` (its ready line)."""
    seen = []
    while True:
        line = proc.stderr.readline().decode()
        if not line:
            raise AssertionError(f"process ended before {needle!r}: {''.join(seen)}")
        seen.append(line)
        if needle in line:
            return line


# --------------------------------------------------------------------------- round trip


PROPS = ["--content-type", "application/json", "--content-encoding", "identity", "--persistent",
         "--priority", "3", "--correlation-id", "corr-1", "--reply-to", "answers", "--expiration", "60000",
         "--message-id", "m-1", "--type", "reading", "--app-id", "iotctl-tests", "--user-id", "guest",
         "--timestamp", "1700000000",
         "--header", "site=lab", "--header", "floor:int=2", "--header", "ok:bool=true",
         "--header", "tags:json=[1, 2]"]
BODY = '{"t": 21.5}'


def test_round_trip_every_output_mode_keeps_properties_and_headers(iotctl, names):
    q = queue(iotctl, names())
    modes = [("json",), ("jsonl",), ("raw",), ("text",), ("pretty",), ("hex",), ("template",)]
    r = iotctl("amqp", "publish", "-r", q, *PROPS, "--repeat", len(modes), "-m", BODY)
    assert r.exit_code == 0, r
    out = {}
    for (mode,) in modes:
        extra = ["-F", "{address} {payload} {meta[headers][site]} {meta[properties][message_id]}"] \
            if mode == "template" else ["-o", mode]
        r = iotctl("amqp", "consume", q, "-C", "1", *extra)
        assert r.exit_code == 0, r
        out[mode] = r.stdout
    env = json.loads(out["json"])
    assert json.loads(out["jsonl"])["payload"] == BODY
    assert env["protocol"] == "amqp" and env["address"] == q and env["payload"] == BODY
    assert env["content_type"] == "application/json"
    meta = env["meta"]
    assert meta["exchange"] == "" and meta["routing_key"] == q and meta["redelivered"] is False
    assert isinstance(meta["delivery_tag"], int)
    assert meta["properties"] == {
        "content_type": "application/json", "content_encoding": "identity", "delivery_mode": 2,
        "priority": 3, "correlation_id": "corr-1", "reply_to": "answers", "expiration": "60000",
        "message_id": "m-1", "timestamp": 1700000000, "type": "reading", "user_id": "guest",
        "app_id": "iotctl-tests"}
    assert meta["headers"] == {"site": "lab", "floor": 2, "ok": True, "tags": [1, 2]}
    assert out["raw"] == BODY + "\n"
    assert BODY in out["text"]
    assert q in out["pretty"] and "exchange=" not in out["pretty"].split("\n")[0] or True
    assert '"t": 21.5' in out["pretty"] and "site" in out["pretty"]
    assert "7b 22 74" in out["hex"].lower() or "7b22" in out["hex"].lower()
    assert out["template"] == f"{q} {BODY} lab m-1\n"
    assert depth(iotctl, q) == 0


def test_replay_of_a_capture_publishes_the_same_messages(iotctl, names, tmp_path):
    q1, q2 = queue(iotctl, names()), queue(iotctl, names())
    assert iotctl("amqp", "publish", "-r", q1, *PROPS, "--repeat", "2", "-m", BODY).exit_code == 0
    capture = tmp_path / "c.jsonl"
    r = iotctl("amqp", "consume", q1, "-C", "2", "-o", "jsonl", "--save", str(capture))
    assert r.exit_code == 0, r
    r = iotctl("amqp", "publish", "-r", q2, "--replay", str(capture))
    assert r.exit_code == 0, r
    r = iotctl("amqp", "consume", q2, "-C", "2", "-o", "jsonl")
    got = [json.loads(line) for line in r.stdout.splitlines()]
    assert [g["payload"] for g in got] == [BODY, BODY]
    assert got[0]["meta"]["headers"] == {"site": "lab", "floor": 2, "ok": True, "tags": [1, 2]}
    assert got[0]["meta"]["properties"]["correlation_id"] == "corr-1"


# --------------------------------------------------------------------------- amqp-tools interop


def test_amqp_publish_into_iotctl_consume(iotctl, names):
    q = queue(iotctl, names())
    done = subprocess.run(["amqp-publish", f"--url={URL}", "-r", q, "-b", "from amqp-tools", "-H", "k: v",
                           "-C", "text/plain"], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    r = iotctl("amqp", "consume", q, "-C", "1", "-o", "json", "-W", "10")
    assert r.exit_code == 0, r
    env = json.loads(r.stdout)
    assert env["payload"] == "from amqp-tools"
    assert env["content_type"] == "text/plain"
    assert env["meta"]["headers"] == {"k": "v"}


def test_iotctl_publish_into_amqp_get_and_amqp_consume(iotctl, names):
    q = queue(iotctl, names())
    r = iotctl("amqp", "publish", "-r", q, "-l", input="first\nsecond\n")
    assert r.exit_code == 0, r
    got = subprocess.run(["amqp-get", f"--url={URL}", "-q", q], capture_output=True, timeout=30)
    assert got.returncode == 0, got.stderr
    assert got.stdout == b"first"
    consumed = subprocess.run(["amqp-consume", f"--url={URL}", "-q", q, "-c", "1", "cat"],
                              capture_output=True, timeout=30)
    assert consumed.returncode == 0, consumed.stderr
    assert consumed.stdout == b"second"
    assert depth(iotctl, q) == 0


# --------------------------------------------------------------------------- consume, get


def test_consume_count_acks_only_what_was_written(iotctl, names):
    q = queue(iotctl, names())
    r = iotctl("amqp", "publish", "-r", q, "-l", input="".join(f"m{i}\n" for i in range(10)))
    assert r.exit_code == 0, r
    r = iotctl("amqp", "consume", q, "-C", "3", "--ack", "after-write")
    assert r.exit_code == 0, r
    assert r.stdout == "m0\nm1\nm2\n"
    assert depth(iotctl, q) == 7
    # the rest are still there, in order
    r = iotctl("amqp", "consume", q, "--idle-timeout", "0.5")
    assert r.exit_code == 0, r
    assert r.stdout.split() == [f"m{i}" for i in range(3, 10)]
    assert depth(iotctl, q) == 0


def test_consume_requeue_and_ack_none_leave_the_messages(iotctl, names):
    q = queue(iotctl, names())
    iotctl("amqp", "publish", "-r", q, "-l", input="a\nb\nc\n")
    r = iotctl("amqp", "consume", q, "--requeue", "--idle-timeout", "0.3")
    assert r.exit_code == 0 and r.stdout == "a\nb\nc\n", r
    r = iotctl("amqp", "consume", q, "--ack", "none", "-C", "2")
    assert r.exit_code == 0 and r.stdout == "a\nb\n", r
    assert depth(iotctl, q) == 3
    r = iotctl("amqp", "consume", q, "-C", "1", "-o", "json")
    assert json.loads(r.stdout)["meta"]["redelivered"] is True


def test_consume_timeout_and_idle_timeout(iotctl, names):
    q = queue(iotctl, names())
    r = iotctl("amqp", "consume", q, "-C", "1", "-W", "0.5")
    assert r.exit_code == 5, r
    assert "received 0 of 1 messages within 0.5 s" in r.stderr
    r = iotctl("amqp", "consume", q, "--idle-timeout", "0.3")
    assert r.exit_code == 0, r


def test_consume_declare_shortcut_binds_a_throwaway_queue(iotctl, names, iotctl_proc):
    ex = names("exchange")
    assert iotctl("amqp", "declare", "exchange", ex, "-t", "topic").exit_code == 0
    proc = start("amqp", "consume", "--declare", "-e", ex, "-r", "a.*", "-r", "b.#", "-C", "2", "-o", "jsonl",
                 "-W", "20")
    wait_status(proc, "consuming from")
    for key in ("x.1", "a.1", "b.2.3"):
        assert iotctl("amqp", "publish", "-e", ex, "-r", key, "-m", key).exit_code == 0
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    got = [json.loads(line) for line in out.decode().splitlines()]
    assert [(g["address"], g["meta"]["exchange"]) for g in got] == [("a.1", ex), ("b.2.3", ex)]


def test_get_requeue_leaves_the_message_and_get_takes_it(iotctl, names):
    q = queue(iotctl, names())
    iotctl("amqp", "publish", "-r", q, "-l", input="one\ntwo\n")
    r = iotctl("amqp", "get", q, "--requeue", "-C", "2")
    assert r.exit_code == 0 and r.stdout == "one\ntwo\n", r
    assert depth(iotctl, q) == 2
    r = iotctl("amqp", "get", q, "-o", "json")
    assert r.exit_code == 0, r
    env = json.loads(r.stdout)
    assert env["payload"] == "one" and env["meta"]["message_count"] == 1 and env["meta"]["redelivered"]
    assert depth(iotctl, q) == 1
    r = iotctl("amqp", "get", q, "-C", "3")
    assert r.exit_code == 5 and r.stdout == "two\n", r
    assert "got 1 of 3" in r.stderr
    r = iotctl("amqp", "get", q)
    assert r.exit_code == 5 and "is empty" in r.stderr, r


# --------------------------------------------------------------------------- publish


def test_100000_lines_with_confirms_arrive_exactly_once(iotctl, names):
    q = queue(iotctl, names())
    lines = "".join(f"{i:06d}\n" for i in range(100_000))
    r = iotctl("amqp", "publish", "-r", q, "-l", input=lines)
    assert r.exit_code == 0, r
    assert depth(iotctl, q) == 100_000
    r = iotctl("amqp", "consume", q, "-C", "100000", "-W", "60")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == lines  # every one, once, in order
    assert depth(iotctl, q) == 0


def test_nacks_exit_6_naming_how_many(iotctl, names):
    q = queue(iotctl, names(), "--arg", "x-max-length:int=1", "--arg", "x-overflow=reject-publish")
    r = iotctl("amqp", "publish", "-r", q, "-l", input="1\n2\n3\n")
    assert r.exit_code == 6, r
    assert "refused (nack) 2 message(s)" in r.stderr
    assert "sent 3, acknowledged 1, refused 2" in r.stderr
    assert depth(iotctl, q) == 1


def test_mandatory_reports_each_returned_message(iotctl, names, tmp_path):
    q = queue(iotctl, names())
    failed = tmp_path / "failed.jsonl"
    r = iotctl("amqp", "publish", "-r", q, "-r", "nobody-" + q, "--mandatory",
               "-m", "x", "--failed", str(failed))
    assert r.exit_code == 6, r
    assert f"returned unroutable: exchange '', routing key 'nobody-{q}': 312 NO_ROUTE" in r.stderr
    assert f"routing key '{q}'" not in r.stderr
    assert "sent 2, acknowledged 1, refused 1" in r.stderr
    assert depth(iotctl, q) == 1
    assert "1 message(s) were returned as unroutable" in r.stderr
    assert [json.loads(line)["address"] for line in failed.read_text().splitlines()] == ["nobody-" + q]
    # without confirms each return is still reported, and reaches --failed (a round trip
    # after the messages tells which were returned)
    failed.unlink()
    r = iotctl("amqp", "publish", "-r", q, "-r", "nobody-" + q, "--mandatory", "--no-confirm",
               "-l", "--failed", str(failed), input="a\nb\n")
    assert r.exit_code == 6, r
    assert "2 message(s) were returned as unroutable (--mandatory)" in r.stderr
    assert "sent 4, acknowledged 2, refused 2" in r.stderr
    assert [(m["address"], m["payload"]) for m in map(json.loads, failed.read_text().splitlines())] == \
        [("nobody-" + q, "a"), ("nobody-" + q, "b")]
    assert depth(iotctl, q) == 3


def test_no_confirm_fire_and_forget(iotctl, names):
    q = queue(iotctl, names())
    r = iotctl("amqp", "publish", "-r", q, "--no-confirm", "-l", input="".join(f"{i}\n" for i in range(500)))
    assert r.exit_code == 0, r
    wait_until(lambda: depth(iotctl, q) == 500, 10, "500 messages on the queue")


class Proxy:
    """A TCP proxy to RabbitMQ: with `tls` (an SSLContext) it terminates TLS (an amqps
    listener); `rewrite(frame) -> bytes` replaces each frame the broker sends (b"": drop
    it); `swallow_acks` drops every Basic.Ack the broker sends, so publisher confirms
    never arrive."""

    def __init__(self, tls=None, swallow_acks: bool = False, rewrite=None):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.tls = tls
        self.rewrite = _no_acks if swallow_acks else rewrite
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._start, args=(client,), daemon=True).start()

    def _start(self, client):
        if self.tls is not None:
            try:
                client = self.tls.wrap_socket(client, server_side=True)
            except OSError:
                client.close()
                return
        broker = socket.create_connection(("127.0.0.1", 5672))
        threading.Thread(target=self._relay, args=(client, broker, None), daemon=True).start()
        self._relay(broker, client, self.rewrite)

    @staticmethod
    def _relay(src, dst, rewrite):
        buf = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if rewrite is None:
                    dst.sendall(data)
                    continue
                buf += data
                out = b""
                while len(buf) >= 7:
                    size = int.from_bytes(buf[3:7], "big")
                    if len(buf) < size + 8:
                        break
                    frame, buf = buf[:size + 8], buf[size + 8:]
                    out += rewrite(frame)
                if out:
                    dst.sendall(out)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.listener.close()


def _no_acks(frame: bytes) -> bytes:
    return b"" if frame[0] == 1 and frame[7:11] == b"\x00\x3c\x00\x50" else frame  # Basic.Ack


def test_nothing_confirmed_in_time_is_exit_5(iotctl, names, tmp_path):
    q = queue(iotctl, names())
    proxy = Proxy(swallow_acks=True)
    try:
        failed = tmp_path / "failed.jsonl"
        r = iotctl("amqp", "publish", "-p", proxy.port, "-r", q, "-l", "-W", "1", "--failed", str(failed),
                   input="a\nb\n")
    finally:
        proxy.close()
    assert r.exit_code == 5, r
    assert "2 message(s) not acknowledged within 1 s" in r.stderr
    assert len(failed.read_text().splitlines()) == 2


# --------------------------------------------------------------------------- tap


def test_tap_sees_everything_takes_nothing_and_leaves_nothing(iotctl, names):
    ex = names("exchange")
    q = names()
    assert iotctl("amqp", "declare", "exchange", ex, "-t", "topic").exit_code == 0
    queue(iotctl, q)
    assert iotctl("amqp", "bind", "queue", q, "-e", ex, "-r", "#").exit_code == 0
    tap = start("amqp", "tap", f"{ex}:sensors.#", "-o", "jsonl", "-W", "30")
    wait_status(tap, "tapping")
    sigint_tap = start("amqp", "tap", ex, "-W", "30")
    wait_status(sigint_tap, "tapping")
    r = iotctl("amqp", "publish", "-e", ex, "-r", "sensors.t1", "-l", input="1\n2\n3\n")
    assert r.exit_code == 0, r
    assert iotctl("amqp", "publish", "-e", ex, "-r", "other.x", "-m", "4").exit_code == 0
    r = iotctl("amqp", "consume", q, "-C", "4", "-W", "10")
    assert r.stdout.split() == ["1", "2", "3", "4"]  # the normal consumer still gets all
    got = []
    while len(got) < 3:
        line = tap.stdout.readline()
        assert line, tap.stderr.read()
        got.append(json.loads(line))
    assert [(g["payload"], g["address"], g["meta"]["exchange"]) for g in got] == \
        [("1", "sensors.t1", ex), ("2", "sensors.t1", ex), ("3", "sensors.t1", ex)]
    sigint_tap.send_signal(signal.SIGINT)
    tap.send_signal(signal.SIGKILL)  # a lost connection: the broker removes it all
    assert sigint_tap.wait(10) == 0
    tap.wait(10)
    out, err = sigint_tap.communicate()
    assert out.split() == [b"1", b"2", b"3", b"4"]
    # nothing is left: no tap exchange, no binding from ours, no extra queue
    assert "iotctl.tap." not in rabbitmqctl("list_exchanges", "name")
    bindings = rabbitmqctl("list_bindings", "source_name", "destination_name")
    assert [line for line in bindings.splitlines() if line.startswith(ex)] == [f"{ex}\t{q}"]
    assert "iotctl.tap." not in bindings


def test_firehose_says_how_to_turn_tracing_on_and_reads_it(iotctl, rmq):
    conn = ["--url", f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"]
    rabbitmqctl("trace_off", "-p", VHOST)
    r = iotctl("amqp", "tap", "--firehose", "-W", "3", *conn)
    assert r.exit_code == 5, r
    assert f"tracing is off in vhost '{VHOST}'" in r.stderr
    assert f"rabbitmqctl trace_on -p {VHOST}" in r.stderr
    rabbitmqctl("trace_on", "-p", VHOST)
    try:
        tap = start("amqp", "tap", "--firehose", "-C", "1", "-o", "jsonl", "-W", "20", *conn)
        wait_status(tap, "tapping")
        assert iotctl("amqp", "publish", "-e", "amq.topic", "-r", "fh.test", "-m", "traced", *conn).exit_code == 0
        out, err = tap.communicate(timeout=20)
        assert tap.returncode == 0, err
        env = json.loads(out)
        assert env["address"] == "publish.amq.topic" and env["payload"] == "traced"
        assert env["meta"]["headers"]["routing_keys"] == ["fh.test"]
        assert b"tracing is off" not in err
    finally:
        rabbitmqctl("trace_off", "-p", VHOST)


# --------------------------------------------------------------------------- topology


def test_topology_commands(iotctl, names):
    ex, ex2 = names("exchange"), names("exchange")
    q = names()
    r = iotctl("amqp", "declare", "exchange", ex, "-t", "topic", "--durable")
    assert r.exit_code == 0, r
    assert iotctl("amqp", "declare", "exchange", ex2, "-t", "fanout").exit_code == 0
    r = iotctl("amqp", "declare", "queue", q, "--arg", "x-max-length:int=100", "--arg", "x-message-ttl:int=60000")
    assert r.exit_code == 0 and "0 message(s), 0 consumer(s)" in r.stderr, r
    # a different definition of the same queue
    r = iotctl("amqp", "declare", "queue", q, "--arg", "x-max-length:int=5")
    assert r.exit_code == 6, r
    assert "PRECONDITION_FAILED - inequivalent arg" in r.stderr
    # queue to exchange, exchange to exchange
    assert iotctl("amqp", "bind", "queue", q, "-e", ex2).exit_code == 0
    r = iotctl("amqp", "bind", "exchange", ex2, "-e", ex, "-r", "a.#", "-r", "b.#")
    assert r.exit_code == 0, r
    for key in ("a.1", "b.2", "c.3"):
        iotctl("amqp", "publish", "-e", ex, "-r", key, "-m", key)
    assert depth(iotctl, q) == 2
    assert iotctl("amqp", "unbind", "exchange", ex2, "-e", ex, "-r", "a.#").exit_code == 0
    r = iotctl("amqp", "publish", "-e", ex, "-r", "a.1", "-m", "x", "--mandatory")
    assert r.exit_code == 6, r
    # delete refused while not empty / in use, then done
    r = iotctl("amqp", "delete", "queue", q, "--if-empty")
    assert r.exit_code == 6 and "PRECONDITION_FAILED" in r.stderr and "not empty" in r.stderr, r
    r = iotctl("amqp", "delete", "exchange", ex2, "--if-unused")
    assert r.exit_code == 6 and "PRECONDITION_FAILED" in r.stderr, r
    r = iotctl("amqp", "purge", q)
    assert r.exit_code == 0 and r.stdout == "2\n", r
    r = iotctl("amqp", "delete", "queue", q, "--if-empty")
    assert r.exit_code == 0, r
    r = iotctl("amqp", "declare", "queue", q, "--passive")
    assert r.exit_code == 6 and f"NOT_FOUND - no queue '{q}'" in r.stderr, r
    assert iotctl("amqp", "unbind", "exchange", ex2, "-e", ex, "-r", "b.#").exit_code == 0
    r = iotctl("amqp", "delete", "exchange", ex2, "--if-unused")
    assert r.exit_code == 0, r
    r = iotctl("amqp", "declare", "exchange", ex2, "--passive")
    assert r.exit_code == 6 and "NOT_FOUND" in r.stderr


def test_server_named_queue_and_headers_binding(iotctl, names):
    r = iotctl("amqp", "declare", "queue", "--exclusive")
    assert r.exit_code == 0 and r.stdout.startswith("amq.gen-"), r
    q = queue(iotctl, names())
    r = iotctl("amqp", "bind", "queue", q, "-e", "amq.headers", "--arg", "x-match=all", "--arg", "site=" + q)
    assert r.exit_code == 0, r
    iotctl("amqp", "publish", "-e", "amq.headers", "-r", "", "--header", "site=" + q, "-m", "match")
    iotctl("amqp", "publish", "-e", "amq.headers", "-r", "", "--header", "site=elsewhere", "-m", "no")
    r = iotctl("amqp", "get", q, "-C", "2")
    assert r.stdout == "match\n" and r.exit_code == 5, r
    assert iotctl("amqp", "unbind", "queue", q, "-e", "amq.headers", "--arg", "x-match=all",
                  "--arg", "site=" + q).exit_code == 0


# --------------------------------------------------------------------------- request


def test_request_gets_the_answer_through_direct_reply_to(iotctl, names):
    q = queue(iotctl, names())
    service = start("amqp", "consume", q, "-C", "1", "-o", "jsonl", "-W", "20")
    wait_status(service, "consuming from")
    requester = start("amqp", "request", "-r", q, "-m", "what time is it", "-o", "json", "-W", "20")
    line = service.stdout.readline()
    req = json.loads(line)
    props = req["meta"]["properties"]
    assert req["payload"] == "what time is it"
    assert props["reply_to"].startswith("amq.rabbitmq.reply-to")
    r = iotctl("amqp", "publish", "-r", props["reply_to"], "--correlation-id", props["correlation_id"],
               "--no-confirm", "-m", "noon")
    assert r.exit_code == 0, r
    out, err = requester.communicate(timeout=20)
    assert requester.returncode == 0, err
    assert json.loads(out)["payload"] == "noon"
    service.wait(10)


def test_request_without_answer_is_exit_5_and_unroutable_is_exit_6(iotctl, names):
    q = queue(iotctl, names())
    r = iotctl("amqp", "request", "-r", q, "-m", "hello", "-W", "0.5")
    assert r.exit_code == 5, r
    assert "no answer" in r.stderr
    r = iotctl("amqp", "request", "-r", "nobody-" + q, "-m", "hello", "-W", "5")
    assert r.exit_code == 6, r
    assert "NO_ROUTE" in r.stderr


# --------------------------------------------------------------------------- connection and exit codes


def test_refused_port_is_exit_3(iotctl):
    port = free_port(socket.SOCK_STREAM)
    r = iotctl("amqp", "publish", "-p", port, "-r", "x", "-m", "y")
    assert r.exit_code == 3, r
    assert r.stderr.startswith(f"iotctl: error: cannot connect to amqp://localhost:{port}")
    assert "connection refused" in r.stderr


def test_wrong_password_is_exit_4(iotctl, rmq):
    r = iotctl("amqp", "purge", "x", "--url", "amqp://iotctl:wrong@127.0.0.1:5672/")
    assert r.exit_code == 4, r
    r = iotctl("amqp", "purge", "x", "-u", "iotctl", "-P", "wrong")
    assert r.exit_code == 4, r
    assert "ACCESS_REFUSED" in r.stderr and "Traceback" not in r.stderr


def test_access_refused_on_a_channel_is_exit_4(iotctl, rmq):
    r = iotctl("amqp", "declare", "queue", "iotctl-test.refused", "-u", "iotctl-reader", "-P", "reader-secret")
    assert r.exit_code == 4, r
    assert "ACCESS_REFUSED" in r.stderr


def test_not_found_is_exit_6_with_the_brokers_text(iotctl, rmq):
    missing = f"iotctl-test.missing.{uuid.uuid4().hex[:8]}"
    r = iotctl("amqp", "consume", missing, "-C", "1")
    assert r.exit_code == 6, r
    assert f"NOT_FOUND - no queue '{missing}' in vhost '/'" in r.stderr
    r = iotctl("amqp", "publish", "-e", missing, "-r", "x", "-m", "y")
    assert r.exit_code == 6, r
    assert f"NOT_FOUND - no exchange '{missing}' in vhost '/'" in r.stderr
    r = iotctl("amqp", "purge", missing)
    assert r.exit_code == 6 and "NOT_FOUND" in r.stderr, r


def test_vhost_from_url_option_and_the_trailing_slash_trap(iotctl, names):
    q = names()
    user = ["-u", "iotctl", "-P", "iotctl-secret"]
    assert iotctl("amqp", "declare", "queue", q, "--vhost", VHOST, *user).exit_code == 0
    try:
        r = iotctl("amqp", "publish", "--url", f"amqp://iotctl:iotctl-secret@127.0.0.1:5672/{VHOST}",
                   "-r", q, "-m", "in the other vhost")
        assert r.exit_code == 0, r
        assert depth(iotctl, q, "--vhost", VHOST, *user) == 1
        r = iotctl("amqp", "declare", "queue", q, "--passive", "--url", URL)  # /%2f is /
        assert r.exit_code == 6 and "NOT_FOUND" in r.stderr, r
        r = iotctl("amqp", "publish", "--url", "amqp://guest:guest@127.0.0.1:5672/", "-r", q, "-m", "x")
        assert r.exit_code == 4, r
        assert "refused vhost ''" in r.stderr
        assert "hint: a URL ending in '/' asks for the empty vhost" in r.stderr
        r = iotctl("amqp", "publish", "--vhost", "no-such-vhost", "-r", q, "-m", "x")
        assert r.exit_code == 4 and "refused vhost 'no-such-vhost'" in r.stderr, r
    finally:
        iotctl("amqp", "delete", "queue", q, "--vhost", VHOST, *user)


def test_environment_and_profile_supply_connection_settings(iotctl, names, tmp_path):
    q = queue(iotctl, names())
    env = {"IOTCTL_AMQP_USERNAME": "iotctl", "IOTCTL_AMQP_PASSWORD": "wrong"}
    r = iotctl("amqp", "purge", q, env=env)
    assert r.exit_code == 4, r
    r = iotctl("profile", "add", "rabbit", "amqp.username=iotctl", "amqp.password=iotctl-secret")
    assert r.exit_code == 0, r
    r = iotctl("--profile", "rabbit", "amqp", "purge", q)
    assert r.exit_code == 0 and r.stdout == "0\n", r


def test_names_over_255_bytes_are_exit_2_with_the_limit(iotctl, rmq):
    long = "n" * 256
    for args in (["publish", "-r", long, "-m", "x"], ["publish", "-e", long, "-r", "k", "-m", "x"],
                 ["publish", "--queue", long, "-m", "x"], ["consume", long], ["get", long],
                 ["consume", "--declare", "-e", "amq.topic", "-r", long], ["tap", f"amq.topic:{long}"],
                 ["declare", "queue", long], ["bind", "queue", "q", "-e", long], ["purge", long],
                 ["publish", "-r", "k", "--correlation-id", long, "-m", "x"],
                 ["publish", "-r", "k", "--header", f"{long}=1", "-m", "x"]):
        r = iotctl("amqp", *args)
        assert r.exit_code == 2, (args, r)
        assert "is 256 bytes; AMQP allows at most 255" in r.stderr, (args, r)
    capture = json.dumps({"protocol": "mqtt", "address": "a/" + "b" * 300, "payload": "x"})
    r = iotctl("amqp", "publish", "--replay", "-", input=capture + "\n")
    assert r.exit_code == 2 and "routing key 'a/bbb" in r.stderr and "is 302 bytes" in r.stderr, r


def test_deleting_what_does_not_exist_is_exit_6_unless_if_exists(iotctl, names):
    q, ex = names(), names("exchange")
    for kind, name in (("queue", q), ("exchange", ex)):
        r = iotctl("amqp", "delete", kind, name)
        assert r.exit_code == 6, r
        assert r.stderr.splitlines() == [f"iotctl: error: cannot delete {kind} {name!r}: no such {kind} in vhost '/'",
                                         "iotctl: hint: --if-exists accepts a missing one"]
        r = iotctl("amqp", "delete", kind, name, "--if-exists")
        assert r.exit_code == 0 and f"no {kind} {name!r}: nothing to delete" in r.stderr, r
    queue(iotctl, q)
    r = iotctl("amqp", "delete", "queue", q, "--if-exists")
    assert r.exit_code == 0 and f"deleted queue {q!r}" in r.stderr, r
    r = iotctl("amqp", "declare", "queue", q, "--passive")
    assert r.exit_code == 6, r


def test_tapping_a_direct_exchange_without_a_key_is_exit_2(iotctl, names):
    ex = names("exchange")
    assert iotctl("amqp", "declare", "exchange", ex, "-t", "direct", "--durable").exit_code == 0
    for args, fix in (([ex], f"{ex}:KEY"), (["amq.direct"], "amq.direct:KEY"),
                      (["amq.topic", ex], f"{ex}:KEY")):
        r = iotctl("amqp", "tap", *args, "-W", "5")
        assert r.exit_code == 2, r
        assert "is a direct exchange: it routes by the exact routing key, so '#' would match only the key '#'" \
            in r.stderr, r
        assert f"hint: give the key to watch ({fix})" in r.stderr
    r = iotctl("amqp", "consume", "--declare", "-e", ex, "-W", "5")
    assert r.exit_code == 2 and "(-r KEY)" in r.stderr, r
    # with a key, or a topic/fanout/headers exchange, it taps (nothing arrives here: exit 5)
    for args in ([f"{ex}:k"], ["amq.topic"], ["amq.fanout"], ["amq.headers"]):
        r = iotctl("amqp", "tap", *args, "-W", "0.5")
        assert r.exit_code == 5 and "no message within 0.5 s" in r.stderr, (args, r)
    # the probe changed nothing: the exchange is still durable and direct
    assert iotctl("amqp", "declare", "exchange", ex, "-t", "direct", "--durable").exit_code == 0


def test_usage_errors_are_exit_2(iotctl):
    r = iotctl("amqp", "publish", "-m", "x")
    assert r.exit_code == 2 and "give -r KEY" in r.stderr
    r = iotctl("amqp", "consume")
    assert r.exit_code == 2
    r = iotctl("amqp", "tap")
    assert r.exit_code == 2
    r = iotctl("amqp", "publish", "--url", "http://x", "-r", "q", "-m", "x")
    assert r.exit_code == 2
    r = iotctl("amqp", "publish", "-r", "q", "--header", "n:int=x", "-m", "x")
    assert r.exit_code == 2


@pytest.fixture
def tls_certs(rmq):
    from tests.conftest import CERTS

    paths = {name.replace(".", "_").replace("-", "_"): CERTS / name
             for name in ("ca.crt", "other-ca.crt", "server.crt", "server.key")}
    for path in paths.values():
        if not path.exists():
            pytest.fail(f"test certificate {path} is missing; run: scripts/services up rabbitmq", pytrace=False)
    return {k: str(v) for k, v in paths.items()}


def test_tls_verifies_the_broker(iotctl, names, tls_certs):
    import ssl

    certs = tls_certs

    q = queue(iotctl, names())
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs["server_crt"], certs["server_key"])
    proxy = Proxy(tls=ctx)
    try:
        r = iotctl("amqp", "publish", "--url", f"amqps://localhost:{proxy.port}", "--cafile", certs["ca_crt"],
                   "-r", q, "-m", "over tls")
        assert r.exit_code == 0, r
        r = iotctl("amqp", "publish", "-p", proxy.port, "--tls", "--cafile", certs["other_ca_crt"],
                   "-r", q, "-m", "x")
        assert r.exit_code == 7, r
        assert "certificate verification failed" in r.stderr
        r = iotctl("amqp", "publish", "-p", proxy.port, "--tls", "--insecure", "-r", q, "-m", "insecure")
        assert r.exit_code == 0, r
    finally:
        proxy.close()
    assert iotctl("amqp", "get", q, "-C", "2").stdout == "over tls\ninsecure\n"
    # TLS to the plain AMQP port
    r = iotctl("amqp", "publish", "--url", "amqps://127.0.0.1:5672", "--insecure", "-r", q, "-m", "x")
    assert r.exit_code == 7, r


def test_ctrl_c_while_consuming_loses_and_duplicates_nothing(iotctl, names):
    q = queue(iotctl, names())
    total = 20_000
    assert iotctl("amqp", "publish", "-r", q, "-l", input="".join(f"{i}\n" for i in range(total))).exit_code == 0
    proc = start("amqp", "consume", q, "--prefetch", "500")
    first = proc.stdout.readline()
    assert first == b"0\n"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    written = [int(x) for x in (first + out).split()]
    assert written == list(range(len(written)))  # in order, no gap, no repeat
    assert len(written) + depth(iotctl, q) == total, (len(written), err)


def test_exclusive_consumer_keeps_others_out_and_priority_is_accepted(iotctl, names):
    q = queue(iotctl, names())
    holder = start("amqp", "consume", q, "--exclusive", "--priority", "5", "-C", "1", "-W", "20")
    wait_status(holder, "consuming from")
    r = iotctl("amqp", "consume", q, "-C", "1", "-W", "5")
    assert r.exit_code == 4, r
    assert "ACCESS_REFUSED" in r.stderr and "exclusive" in r.stderr
    assert iotctl("amqp", "publish", "-r", q, "-m", "mine").exit_code == 0
    out, err = holder.communicate(timeout=20)
    assert holder.returncode == 0 and out == b"mine\n", err


def close_connection(name: str, reason: str) -> None:
    """Close, as the broker's operator would, only the connection named `name` (a name
    the test gave with --connection-name): never another client's."""
    def mine() -> list[str]:
        conns = rabbitmqctl("list_connections", "pid", "client_properties")
        return [line.split("\t")[0] for line in conns.splitlines() if f'"{name}"' in line]

    pids = wait_until(mine, 10, f"the connection {name!r} listed by rabbitmqctl")
    assert len(pids) == 1, pids
    rabbitmqctl("close_connection", pids[0], reason)


def test_connection_closed_by_the_broker_is_exit_3(iotctl, names):
    q, other = queue(iotctl, names()), queue(iotctl, names())
    bystander = start("amqp", "consume", other, "-C", "1", "-W", "30")  # the default name: not ours to close
    wait_status(bystander, "consuming from")
    name = f"iotctl-test closed-by-broker {uuid.uuid4().hex}"
    proc = start("amqp", "consume", q, "--connection-name", name, "--no-reconnect")
    wait_status(proc, "consuming from")
    close_connection(name, "closed by the test")
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 3, err
    assert b"the broker closed the connection: CONNECTION_FORCED - closed by the test" in err
    assert iotctl("amqp", "publish", "-r", other, "-m", "still here").exit_code == 0
    out, err = bystander.communicate(timeout=20)
    assert bystander.returncode == 0 and out == b"still here\n", err

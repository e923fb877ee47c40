"""STOMP against the real brokers: RabbitMQ's STOMP plugin (127.0.0.1:61613, vhost
iotctl-stomp) and ActiveMQ (127.0.0.1:61614, STOMP over TLS on 61615), both started by
`scripts/services up rabbitmq-stomp activemq`, plus a stub peer for the failures no
broker produces on demand (receipts that never come, a silent close)."""

from __future__ import annotations

import json
import socket
import uuid

import pytest

from tests.conftest import CERTS
from tests.faults import ScriptedPeer
from tests.helpers import clean_env, free_port

RABBIT = ("-p", "61613", "--vhost", "iotctl-stomp", "-u", "iotctl-stomp", "-P", "iotctl-stomp-secret")
RABBIT_READER = ("-p", "61613", "--vhost", "iotctl-stomp", "-u", "iotctl-stomp-reader", "-P", "reader-secret")
ACTIVEMQ = ("-p", "61614", "-u", "iotctl", "-P", "iotctl-secret")
ACTIVEMQ_READER = ("-p", "61614", "-u", "reader", "-P", "reader-secret")
BROKERS = {"rabbitmq": ("rabbitmq-stomp", RABBIT, RABBIT_READER), "activemq": ("activemq", ACTIVEMQ, ACTIVEMQ_READER)}


@pytest.fixture(params=list(BROKERS))
def broker(request, peer):
    name, login, _ = BROKERS[request.param]
    peer(name)
    return request.param, login


@pytest.fixture
def queue(request):
    return f"/queue/iotctl-test-{request.node.name[:30].replace('[', '-').replace(']', '')}-{uuid.uuid4().hex[:8]}"


def fill(iotctl, login, dest, lines, *extra):
    r = iotctl("stomp", "send", *login, dest, "-l", *extra, input="".join(f"{x}\n" for x in lines))
    assert r.exit_code == 0, r
    return r


def drain(iotctl, login, dest, idle="1"):
    """Every message left on a queue, as payload lines."""
    r = iotctl("stomp", "subscribe", *login, dest, "--idle-timeout", idle, "-o", "raw")
    assert r.exit_code == 0, r
    return r.stdout.splitlines()


# --------------------------------------------------------------------------- round trips


MODES = {
    "raw": lambda out: out == '{"t": 21.5}\n',
    "text": lambda out: out.startswith("/queue/") and out.endswith(' {"t": 21.5}\n'),
    "hex": lambda out: "7b" in out,
    "json": lambda out: json.loads(out)["meta"]["x-color"] == "red",
    "jsonl": lambda out: json.loads(out)["content_type"] == "application/json",
    # at 80 columns the header keeps the (long) address whole and gives way with its metadata
    "pretty": lambda out: "x-color: red" in out and "21.5" in out and " stomp /queue/iotctl-test-" in out,
}


@pytest.mark.parametrize("mode", list(MODES))
def test_round_trip_every_output_mode_with_headers(iotctl, broker, queue, mode):
    _, login = broker
    r = iotctl("stomp", "send", *login, queue, '{"t": 21.5}', "--header", "x-color=red",
               "--content-type", "application/json", "--priority", "7")
    assert r.exit_code == 0, r
    r = iotctl("stomp", "subscribe", *login, queue, "-C", "1", "-W", "10", "-o", mode)
    assert r.exit_code == 0, r
    assert MODES[mode](r.stdout), r.stdout


def test_envelope_carries_the_headers(iotctl, broker, queue):
    _, login = broker
    r = iotctl("stomp", "send", *login, queue, "-m", "x", "--header", "x-a=1", "--header", "x-b=two:three",
               "--persistent", "--reply-to", "/queue/replies", "--priority", "3")
    assert r.exit_code == 0, r
    r = iotctl("stomp", "sub", *login, queue, "-C", "1", "-W", "10", "-o", "json")
    env = json.loads(r.stdout)
    assert env["protocol"] == "stomp" and env["address"] == queue and env["payload"] == "x"
    meta = env["meta"]
    assert meta["x-a"] == "1" and meta["x-b"] == "two:three"  # ':' escaped on the wire, intact here
    assert meta["reply-to"] == "/queue/replies" and meta["priority"] == "3"
    assert meta["subscription"] and meta["message-id"]
    assert "receipt" not in meta and "destination" not in meta


def test_template_reads_headers(iotctl, broker, queue):
    _, login = broker
    iotctl("stomp", "send", *login, queue, "-m", "hi", "--header", "x-colour=blue")
    r = iotctl("stomp", "sub", *login, queue, "-C", "1", "-W", "10", "-F", "{address} {meta[x-colour]} {payload}")
    assert r.stdout == f"{queue} blue hi\n", r


def test_replay_keeps_headers(iotctl, broker, queue, tmp_path):
    _, login = broker
    capture = tmp_path / "c.jsonl"
    iotctl("stomp", "send", *login, queue, "-m", "again", "--header", "x-k=v")
    r = iotctl("stomp", "sub", *login, queue, "-C", "1", "-W", "10", "-o", "raw", "--save", str(capture))
    assert r.stdout == "again\n"
    other = queue + "-replayed"
    r = iotctl("stomp", "send", *login, other, "--replay", str(capture))
    assert r.exit_code == 0, r
    r = iotctl("stomp", "sub", *login, other, "-C", "1", "-W", "10", "-o", "json")
    env = json.loads(r.stdout)
    assert env["payload"] == "again" and env["meta"]["x-k"] == "v"


def test_binary_payload(iotctl, broker, queue):
    _, login = broker
    r = iotctl("stomp", "send", *login, queue, "-m", "00ff00fe", "--encode", "hex")
    assert r.exit_code == 0, r
    r = iotctl("stomp", "sub", *login, queue, "-C", "1", "-W", "10", "-o", "raw")
    assert r.stdout_bytes == b"\x00\xff\x00\xfe\n"


# --------------------------------------------------------------------------- receipts and errors


def test_receipts_really_wait_error_frame_is_exit_6(iotctl, peer, queue):
    """A user who may not write: the ERROR frame is reported (exit 6), not exit 0."""
    for name, (service, _, reader) in BROKERS.items():
        peer(service)
        r = iotctl("stomp", "send", *reader, queue, "-m", "nope")
        assert r.exit_code == 6, (name, r)
        assert "iotctl: error: send to" in r.stderr
        expected = "access_refused" if name == "rabbitmq" else "not authorized to write"
        assert expected in r.stderr, r.stderr
        assert "sent 1, acknowledged 0" in r.stderr
        assert "Traceback" not in r.stderr


def test_expires(iotctl, broker, queue):
    """--expires MS: RabbitMQ's expiration (a TTL) and ActiveMQ's expires (a deadline)."""
    import time

    _, login = broker
    assert iotctl("stomp", "send", *login, queue, "-m", "short", "--expires", "100").exit_code == 0
    assert iotctl("stomp", "send", *login, queue, "-m", "long", "--expires", "600000").exit_code == 0
    time.sleep(0.3)  # not a readiness wait: the first message's lifetime passing
    assert drain(iotctl, login, queue, idle="0.5") == ["long"]


def test_transaction_delivers_all_on_commit(iotctl, broker, queue):
    _, login = broker
    fill(iotctl, login, queue, range(5), "--transaction")
    assert drain(iotctl, login, queue) == [str(i) for i in range(5)]


def test_transaction_refused_delivers_nothing(iotctl, peer, queue):
    peer("activemq")
    r = iotctl("stomp", "send", *ACTIVEMQ_READER, queue, "-l", "--transaction", input="a\nb\n")
    assert r.exit_code == 6, r
    assert drain(iotctl, ACTIVEMQ, queue, idle="0.5") == []


def test_no_receipt_still_reports_errors(iotctl, peer, queue):
    peer("rabbitmq-stomp")
    r = iotctl("stomp", "send", *RABBIT_READER, queue, "-m", "x", "--no-receipt")
    assert r.exit_code == 6, r
    assert "access_refused" in r.stderr


def test_no_receipt_sends(iotctl, broker, queue):
    _, login = broker
    fill(iotctl, login, queue, range(3), "--no-receipt")
    assert drain(iotctl, login, queue) == ["0", "1", "2"]


def test_wrong_password_is_exit_4(iotctl, broker, queue):
    name, login = broker
    r = iotctl("stomp", "send", *login, "-P", "wrong", queue, "-m", "x")
    assert r.exit_code == 4, r
    assert "refused the login" in r.stderr
    assert ("Access refused for user" if name == "rabbitmq" else "password is invalid") in r.stderr
    assert "hint: check -u/--username and -P/--password" in r.stderr


def test_wrong_vhost_rabbitmq_is_exit_4(iotctl, peer, queue):
    peer("rabbitmq-stomp")
    r = iotctl("stomp", "send", *RABBIT, "--vhost", "no-such-vhost", queue, "-m", "x")
    assert r.exit_code == 4, r
    assert "Virtual host 'no-such-vhost' access denied" in r.stderr
    assert "hint: check --vhost" in r.stderr


def test_wrong_vhost_activemq_is_ignored(iotctl, peer, queue):
    """ActiveMQ has no virtual hosts: it ignores the CONNECT host header (documented)."""
    peer("activemq")
    r = iotctl("stomp", "send", *ACTIVEMQ, "--vhost", "no-such-vhost", queue, "-m", "x")
    assert r.exit_code == 0, r
    assert drain(iotctl, ACTIVEMQ, queue, idle="0.5") == ["x"]


def test_default_vhost_is_slash_for_rabbitmq(iotctl, peer, queue):
    """guest on vhost / works without --vhost (stomp.py alone would send the host name)."""
    peer("rabbitmq-stomp")
    r = iotctl("stomp", "send", "-p", "61613", "-u", "guest", "-P", "guest", queue, "-m", "x")
    assert r.exit_code == 0, r
    r = iotctl("stomp", "sub", "-p", "61613", "-u", "guest", "-P", "guest", queue, "-C", "1", "-W", "10", "-o", "raw")
    assert r.stdout == "x\n"


def test_refused_port_is_exit_3(iotctl):
    port = free_port(socket.SOCK_STREAM)
    r = iotctl("stomp", "send", "-p", str(port), "/queue/x", "-m", "x")
    assert r.exit_code == 3, r
    assert f"cannot connect to stomp://localhost:{port}: connection refused" in r.stderr


def test_url_carries_credentials(iotctl, peer, queue):
    peer("activemq")
    r = iotctl("stomp", "send", "--url", "stomp://iotctl:iotctl-secret@127.0.0.1:61614", queue, "-m", "u")
    assert r.exit_code == 0, r
    assert drain(iotctl, ACTIVEMQ, queue, idle="0.5") == ["u"]


def test_tls_with_the_test_ca(iotctl, peer, queue):
    peer("activemq")
    ca = str(CERTS / "ca.crt")
    url = "stomp+ssl://iotctl:iotctl-secret@localhost:61615"
    r = iotctl("stomp", "send", "--url", url, "--cafile", ca, queue, "-m", "secret")
    assert r.exit_code == 0, r
    r = iotctl("stomp", "sub", "--url", url, "--cafile", ca, queue, "-C", "1", "-W", "10", "-o", "raw")
    assert r.stdout == "secret\n", r
    r = iotctl("stomp", "send", "--url", url, "--cafile", str(CERTS / "other-ca.crt"), queue, "-m", "x")
    assert r.exit_code == 7, r
    assert "certificate verification failed" in r.stderr


@pytest.mark.parametrize("args, why", [
    (("subscribe", "/topic/x", "--durable"), "--id NAME"),
    (("subscribe", "/queue/x", "--nack", "-V", "1.0"), "no NACK"),
    (("subscribe", "/queue/x", "--heartbeats", "10"), "CX,CY"),
    (("send", "-m", "x"), "no destination"),
    (("send", "/queue/x"), "no payload"),
    (("send", "/queue/x", "-m", "x", "-V", "1.0", "--heartbeats", "1000,1000"), "needs STOMP 1.1 or 1.2"),
])
def test_usage_errors(iotctl, args, why):
    r = iotctl("stomp", *args)
    assert r.exit_code == 2, r
    assert why in r.stderr


# --------------------------------------------------------------------------- a fake peer


class Frames:
    """The frames a client sends on one connection, read one at a time."""

    def __init__(self, conn):
        self.conn, self.buf = conn, b""

    def next(self) -> tuple[str, dict]:
        while b"\0" not in self.buf:
            data = self.conn.recv(65536)
            if not data:
                raise OSError("the client closed the connection")
            self.buf += data
        raw, self.buf = self.buf.split(b"\0", 1)
        head = raw.lstrip(b"\r\n").split(b"\n\n", 1)[0].decode()
        cmd, *lines = head.split("\n")
        return cmd, dict(line.split(":", 1) for line in lines if ":" in line)


class FakeServer(ScriptedPeer):
    """A STOMP peer the test scripts: runs `script(conn, frames)` for every connection,
    in a thread of its own, and closes the connection when the script ends."""

    def __init__(self, script):
        self.script = script
        super().__init__()

    def handle(self, conn):
        try:
            self.script(conn, Frames(conn))
        finally:
            conn.close()


def connected(conn, frames):
    """Answer the CONNECT."""
    frames.next()
    conn.sendall(b"CONNECTED\nversion:1.2\nheart-beat:0,0\n\n\0")


def _silent_after_connected(conn, frames):
    connected(conn, frames)
    while True:
        frames.next()


def test_missing_receipts_are_exit_5(iotctl):
    """Receipts that never come: exit 5 naming how many, after -W."""
    stub = FakeServer(_silent_after_connected)
    try:
        r = iotctl("stomp", "send", "-p", stub.port, "/queue/x", "-l", "-W", "0.5", input="a\nb\nc\n")
    finally:
        stub.close()
    assert r.exit_code == 5, r
    assert "3 message(s) not acknowledged within 0.5 s" in r.stderr
    assert "sent 3, acknowledged 0" in r.stderr


def test_close_without_an_answer_says_the_peer_does_not_speak_stomp(iotctl):
    """A peer that closes without answering CONNECT is not a STOMP broker (they refuse a
    login with an ERROR frame): exit 3 saying so, not a hint about -u/-P and --vhost."""
    stub = FakeServer(lambda conn, frames: frames.next())  # reads CONNECT, closes
    try:
        r = iotctl("stomp", "send", "-p", str(stub.port), "/queue/x", "-m", "x")
    finally:
        stub.close()
    assert r.exit_code == 3, r
    assert "closed the connection without answering CONNECT: it does not speak STOMP" in r.stderr
    assert "hint: is this a STOMP port?" in r.stderr and "--vhost" not in r.stderr


# --------------------------------------------------------------------------- subscribing


def test_client_ack_leaves_the_rest(iotctl, broker, queue):
    """-C 3 --ack client on a queue of 10 leaves exactly 7 for the next subscriber."""
    _, login = broker
    fill(iotctl, login, queue, range(1, 11))
    r = iotctl("stomp", "subscribe", *login, queue, "-C", "3", "--ack", "client", "-o", "raw", "-W", "10")
    assert r.exit_code == 0, r
    assert r.stdout.splitlines() == ["1", "2", "3"]
    assert drain(iotctl, login, queue) == [str(i) for i in range(4, 11)]


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_acks_for_every_version(iotctl, broker, queue, version):
    """The ack header per version (1.0/1.1 message-id + subscription, 1.2 ack) is accepted:
    acknowledged messages do not come back."""
    _, login = broker
    fill(iotctl, login, queue, ["a", "b", "c"])
    r = iotctl("stomp", "subscribe", *login, "-V", version, queue, "-C", "2", "-o", "raw", "-W", "10")
    assert r.exit_code == 0, r
    assert r.stdout == "a\nb\n"
    assert drain(iotctl, login, queue) == ["c"]


def test_nack_rejects_what_it_reads(iotctl, broker, queue):
    _, login = broker
    fill(iotctl, login, queue, ["a", "b"])
    r = iotctl("stomp", "subscribe", *login, queue, "--nack", "-C", "2", "-o", "raw", "-W", "10")
    assert r.stdout == "a\nb\n", r
    assert drain(iotctl, login, queue, idle="0.5") == []


def test_auto_ack_and_prefetch(iotctl, broker, queue):
    _, login = broker
    fill(iotctl, login, queue, range(20))
    r = iotctl("stomp", "subscribe", *login, queue, "--ack", "client-individual", "--prefetch", "2", "-C", "20",
               "-o", "raw", "-W", "10")
    assert r.stdout.splitlines() == [str(i) for i in range(20)], r
    fill(iotctl, login, queue, range(3))
    r = iotctl("stomp", "subscribe", *login, queue, "--ack", "auto", "-C", "3", "-o", "raw", "-W", "10")
    assert r.stdout.splitlines() == ["0", "1", "2"], r


def test_several_destinations(iotctl, broker, queue):
    _, login = broker
    fill(iotctl, login, queue + "-a", ["a"])
    fill(iotctl, login, queue + "-b", ["b"])
    r = iotctl("stomp", "subscribe", *login, queue + "-a", queue + "-b", "-C", "2", "-o", "text", "-W", "10")
    assert sorted(r.stdout.splitlines()) == [f"{queue}-a a", f"{queue}-b b"], r


def test_timeout_without_messages_is_exit_5(iotctl, broker, queue):
    _, login = broker
    r = iotctl("stomp", "subscribe", *login, queue, "-W", "0.5")
    assert r.exit_code == 5, r
    assert "no message within 0.5 s" in r.stderr


def test_subscribe_refused_destination_is_exit_6(iotctl, peer):
    peer("rabbitmq-stomp")
    r = iotctl("stomp", "subscribe", *RABBIT, "/exchange/no-such-exchange-iotctl/k", "-W", "5")
    assert r.exit_code == 6, r
    # RabbitMQ may confirm the SUBSCRIBE with a receipt before it sends the ERROR
    assert "iotctl: error: " in r.stderr and "/exchange/no-such-exchange-iotctl/k" in r.stderr
    assert "the broker answered with an ERROR" in r.stderr
    assert "not_found" in r.stderr or "NOT_FOUND" in r.stderr


def test_selector_on_activemq(iotctl, peer, queue):
    peer("activemq")
    for region in ("us", "eu", "us", "eu"):
        iotctl("stomp", "send", *ACTIVEMQ, queue, "-m", region, "--header", f"region={region}")
    r = iotctl("stomp", "subscribe", *ACTIVEMQ, queue, "--selector", "region = 'eu'", "-C", "2", "-o", "raw",
               "-W", "10")
    assert r.stdout == "eu\neu\n", r
    assert drain(iotctl, ACTIVEMQ, queue, idle="0.5") == ["us", "us"]


def test_durable_topic_subscription_rabbitmq(iotctl, iotctl_proc, peer):
    """A durable subscription keeps what was published while it was away."""
    peer("rabbitmq-stomp")
    topic = f"/topic/iotctl-durable-{uuid.uuid4().hex[:8]}"
    name = f"iotctl-durable-{uuid.uuid4().hex[:8]}"
    r = iotctl("stomp", "subscribe", *RABBIT, topic, "--durable", "--id", name, "-W", "0.3")
    assert r.exit_code == 5  # nothing yet: the subscription exists now
    iotctl("stomp", "send", *RABBIT, topic, "-m", "while away")
    r = iotctl("stomp", "subscribe", *RABBIT, topic, "--durable", "--id", name, "-C", "1", "-W", "10", "-o", "raw")
    assert r.stdout == "while away\n", r


def test_durable_topic_subscription_activemq(iotctl, peer):
    peer("activemq")
    topic = f"/topic/iotctl-durable-{uuid.uuid4().hex[:8]}"
    name = f"iotctl-durable-{uuid.uuid4().hex[:8]}"
    r = iotctl("stomp", "subscribe", *ACTIVEMQ, topic, "--durable", "--id", name, "-W", "0.3")
    assert r.exit_code == 5
    iotctl("stomp", "send", *ACTIVEMQ, topic, "-m", "while away", "--persistent")
    r = iotctl("stomp", "subscribe", *ACTIVEMQ, topic, "--durable", "--id", name, "-C", "1", "-W", "10", "-o", "raw")
    assert r.stdout == "while away\n", r


def test_heartbeats(iotctl, broker, queue):
    _, login = broker
    fill(iotctl, login, queue, ["hb"], "--heartbeats", "1000,1000")
    r = iotctl("stomp", "sub", *login, queue, "--heartbeats", "500,500", "-C", "1", "-W", "10", "-o", "raw")
    assert r.stdout == "hb\n", r


# --------------------------------------------------------------------------- interop and bulk


def test_interop_with_amqp_exchange(iotctl, peer):
    """STOMP send to /exchange/amq.topic/KEY arrives at an AMQP queue bound to amq.topic
    with KEY, headers intact: both sides are iotctl (stomp send, amqp consume)."""
    import json

    peer("rabbitmq-stomp")
    key = f"iotctl.interop.{uuid.uuid4().hex[:8]}"
    amqp = ("-u", "iotctl-stomp", "-P", "iotctl-stomp-secret", "--vhost", "iotctl-stomp")
    queue = f"iotctl-interop-{uuid.uuid4().hex[:8]}"
    assert iotctl("amqp", "declare", "queue", queue, *amqp).exit_code == 0
    try:
        assert iotctl("amqp", "bind", "queue", queue, "-e", "amq.topic", "-r", key, *amqp).exit_code == 0
        r = iotctl("stomp", "send", *RABBIT, f"/exchange/amq.topic/{key}", "-m", '{"v": 1}', "--header",
                   "x-site=lab", "--content-type", "application/json")
        assert r.exit_code == 0, r
        got = iotctl("amqp", "consume", queue, "-C", "1", "-W", "10", "-o", "json", *amqp)
        assert got.exit_code == 0, got
        env = json.loads(got.stdout)
    finally:
        iotctl("amqp", "delete", "queue", queue, *amqp)
    assert env["payload"] == '{"v": 1}' and env["content_type"] == "application/json"
    assert env["address"] == key and env["meta"]["exchange"] == "amq.topic"
    assert env["meta"]["headers"]["x-site"] == "lab"


def test_50000_lines_with_receipts_arrive_exactly_once(iotctl_proc, peer, queue, tmp_path):
    peer("rabbitmq-stomp")
    n = 50_000
    data = "".join(f"{i}\n" for i in range(n)).encode()
    env = clean_env()
    sent = iotctl_proc("stomp", "send", *RABBIT, queue, "-l", input=data, env=env, timeout=120)
    assert sent.returncode == 0, sent.stderr
    # -C, not --idle-timeout: a loaded broker may pause longer than a second mid-queue
    got = iotctl_proc("stomp", "subscribe", *RABBIT, queue, "-C", str(n), "-W", "90", "-o", "raw",
                      "--prefetch", "1000", env=env, timeout=120)
    assert got.returncode == 0, got.stderr
    lines = got.stdout.splitlines()
    assert len(lines) == n
    assert lines == [str(i).encode() for i in range(n)]


def test_profile_and_environment(iotctl, peer, queue):
    """A [stomp] profile table and IOTCTL_STOMP_* supply the connection."""
    peer("rabbitmq-stomp")
    r = iotctl("profile", "add", "rabbit", "stomp.port=61613", "stomp.vhost=iotctl-stomp",
               "stomp.username=iotctl-stomp", "stomp.password_env=RABBIT_STOMP_PASSWORD")
    assert r.exit_code == 0, r
    env = {"RABBIT_STOMP_PASSWORD": "iotctl-stomp-secret"}
    assert iotctl("--profile", "rabbit", "stomp", "send", queue, "-m", "p", env=env).exit_code == 0
    env = {"IOTCTL_STOMP_PORT": "61613", "IOTCTL_STOMP_VHOST": "iotctl-stomp", "IOTCTL_STOMP_USERNAME": "iotctl-stomp",
           "IOTCTL_STOMP_PASSWORD": "iotctl-stomp-secret"}
    r = iotctl("stomp", "sub", queue, "-C", "1", "-W", "10", "-o", "raw", env=env)
    assert r.stdout == "p\n", r


def _rabbit_queue(name: str) -> tuple[int, int] | None:
    """(ready, unacknowledged) of a queue in vhost iotctl-stomp, from rabbitmqctl."""
    import subprocess

    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", "iotctl-stomp", "name", "messages_ready",
                          "messages_unacknowledged"], capture_output=True, text=True, timeout=30).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == name:
            return int(parts[1]), int(parts[2])
    return None


def test_ctrl_c_ends_subscribe_with_exit_0(iotctl, peer, queue):
    """Ctrl-C is success, without a traceback; what was printed and acknowledged before it
    does not come back, what arrives later stays for the next subscriber."""
    import signal
    import subprocess
    import sys

    from tests.helpers import wait_until

    peer("rabbitmq-stomp")
    fill(iotctl, RABBIT, queue, ["first"])
    proc = subprocess.Popen([sys.executable, "-m", "iotctl", "stomp", "sub", *RABBIT, queue, "-o", "raw"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    try:
        assert proc.stdout.readline() == b"first\n"
        # the ACK follows the write: wait until the broker has it (a Ctrl-C between the two
        # leaves the message unacknowledged: it is delivered again, never lost)
        wait_until(lambda: _rabbit_queue(queue.split("/")[-1]) == (0, 0), 20, "the ACK of 'first'", 0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert b"Traceback" not in err
    fill(iotctl, RABBIT, queue, ["second"])
    assert drain(iotctl, RABBIT, queue, idle="0.5") == ["second"]


def test_failed_file_keeps_what_the_broker_refused(iotctl, peer, queue, tmp_path):
    peer("rabbitmq-stomp")
    failed = tmp_path / "failed.jsonl"
    r = iotctl("stomp", "send", *RABBIT_READER, queue, "-l", "--failed", str(failed), input="a\nb\n")
    assert r.exit_code == 6, r
    kept = [json.loads(line)["payload"] for line in failed.read_text().splitlines()]
    assert "a" in kept and len(kept) == 2, kept
    r = iotctl("stomp", "send", *RABBIT, queue, "--replay", str(failed))
    assert r.exit_code == 0, r
    assert drain(iotctl, RABBIT, queue) == ["a", "b"]

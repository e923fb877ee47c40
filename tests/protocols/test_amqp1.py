"""The amqp1 group (AMQP 1.0) against real peers: RabbitMQ's rabbitmq_amqp1_0 plugin on
127.0.0.1:5672 and the Qpid Proton C example broker on 127.0.0.1:5691 (both started by
`scripts/services up amqp1`), with clients not written here (the Qpid Proton Python
examples Debian packages, and proton's BlockingConnection), a TCP relay that freezes
and cuts, and a small proton server of the test's own for outcomes RabbitMQ cannot give."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from tests.conftest import CERTS
from tests.faults import TcpRelay
from tests.helpers import clean_env, free_port, wait_port, wait_until
from iotctl.output.writers import Writer

RABBIT = 5672
BROKER2 = 5691
EXAMPLES = "/usr/share/proton/examples/python"


def _amqp1_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"AMQP\x03\x01\x00\x00")
            sock.settimeout(3)
            return sock.recv(8) == b"AMQP\x03\x01\x00\x00"
    except OSError:
        return False


@pytest.fixture(scope="session")
def rabbit(peer):
    peer("rabbitmq")
    if not _amqp1_answers(RABBIT):
        pytest.fail("RabbitMQ answers no AMQP 1.0 header on 127.0.0.1:5672 (plugin rabbitmq_amqp1_0 off); "
                    "start it with: scripts/services up amqp1", pytrace=False)
    return RABBIT


@pytest.fixture(scope="session")
def broker2(peer):
    peer("amqp1")
    return BROKER2


@pytest.fixture
def queue(rabbit):
    """A queue name no other test uses, declared through 0-9-1 and deleted afterwards."""
    import pika

    name = f"iotctl1-{uuid.uuid4().hex[:10]}"
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", RABBIT))
    conn.channel().queue_declare(name)
    yield name
    try:
        conn.channel().queue_delete(name)
    finally:
        conn.close()


def depth(name: str) -> int:
    import pika

    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", RABBIT))
    try:
        return conn.channel().queue_declare(name, passive=True).method.message_count
    finally:
        conn.close()


def settled_at_broker(name: str) -> bool:
    """Nothing ready and nothing delivered-but-unaccepted (declare-ok counts only the ready)."""
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name", "messages_ready", "messages_unacknowledged"],
                         capture_output=True, text=True, timeout=60).stdout
    return f"{name}\t0\t0" in out.splitlines()


def addr(name: str) -> str:
    return f"/amq/queue/{name}"  # RabbitMQ 3: an existing queue


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def _proc(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "iotctl", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=clean_env(), **kw)


# --------------------------------------------------------------------------- import boundary


PROBE = """
import sys, json, contextlib, io
from iotctl.cli import run
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    code = run({args!r})
print(json.dumps({{"code": code, "mods": sorted({{m.split('.')[0] for m in sys.modules}})}}))
"""


def _modules_after(args) -> tuple[int, set]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True,
                          timeout=60, env=clean_env())
    result = json.loads(done.stdout)
    return result["code"], set(result["mods"])


@pytest.mark.parametrize("args", [["--help"], ["amqp1", "--help"], ["amqp1", "send", "--help"],
                                  ["amqp1", "receive", "--help"], ["mqtt", "publish", "--help"]])
def test_help_imports_no_proton(args):
    code, mods = _modules_after(args)
    assert code == 0
    assert not mods & {"proton", "cproton", "cproton_ffi"}, args


def test_send_imports_proton_and_no_other_protocol_library(rabbit, queue):
    code, mods = _modules_after(["amqp1", "send", addr(queue), "-m", "x"])
    assert code == 0
    assert "proton" in mods
    assert not mods & {"paho", "aiocoap", "pika", "slixmpp", "stomp", "cbor2", "rich"}


# --------------------------------------------------------------------------- RabbitMQ


def test_round_trip_keeps_payload_properties_and_headers(iotctl, queue):
    r = iotctl("amqp1", "send", addr(queue), "-m", '{"t": 21.5}', "--content-type", "application/json",
               "--message-id", "m-1", "--correlation-id", "c-1", "--subject", "reading", "--reply-to", "/queue/x",
               "--to", "somewhere", "--durable", "--priority", "7", "--ttl", "60000",
               "--header", "site=lab", "--header", "floor:int=2", "--annotation", "x-opt-k=v")
    assert r.exit_code == 0, r
    r = iotctl("amqp1", "receive", addr(queue), "-C", "1", "-W", "5", "-o", "jsonl")
    assert r.exit_code == 0, r
    (env,) = jsonl(r.stdout)
    assert env["protocol"] == "amqp1" and env["address"] == addr(queue)
    assert env["payload"] == '{"t": 21.5}' and env["content_type"] == "application/json"
    meta = env["meta"]
    assert meta["durable"] is True and meta["priority"] == 7 and meta["ttl"] == 60000
    assert "body" not in meta and "delivery_count" not in meta  # a data section, first delivery
    assert {k: meta["properties"][k] for k in ("message_id", "correlation_id", "subject", "reply_to", "to")} == {
        "message_id": "m-1", "correlation_id": "c-1", "subject": "reading", "reply_to": "/queue/x",
        "to": "somewhere"}
    assert meta["headers"] == {"site": "lab", "floor": 2}
    assert meta["annotations"]["x-opt-k"] == "v"
    assert depth(queue) == 0


def test_count_accepts_exactly_what_was_printed_and_leaves_the_rest(iotctl, queue):
    r = iotctl("amqp1", "send", addr(queue), "-l", input="".join(f"{i}\n" for i in range(1, 11)))
    assert r.exit_code == 0, r
    r = iotctl("amqp1", "receive", addr(queue), "-C", "3", "-W", "5", "--credit", "100")
    assert (r.exit_code, r.stdout) == (0, "1\n2\n3\n")
    assert depth(queue) == 7
    r = iotctl("amqp1", "receive", addr(queue), "-C", "7", "-W", "5")
    assert r.stdout.splitlines() == [str(i) for i in range(4, 11)]
    assert depth(queue) == 0


def test_at_most_once_both_ways(iotctl, queue):
    r = iotctl("amqp1", "send", addr(queue), "--at-most-once", "-l", input="a\nb\nc\n")
    assert r.exit_code == 0, r
    wait_until(lambda: depth(queue) == 3, 5, "3 messages queued")
    r = iotctl("amqp1", "receive", addr(queue), "--at-most-once", "-C", "3", "-W", "5")
    assert (r.exit_code, r.stdout) == (0, "a\nb\nc\n")


def test_body_kinds_round_trip(iotctl, queue):
    for args in (("-m", "text", "--body", "string"), ("-m", '{"a": [1, 2]}', "--body", "value"),
                 ("-m", "[1, 2]", "--body", "sequence"), ("-m", "raw", "--body", "binary")):
        assert iotctl("amqp1", "send", addr(queue), *args).exit_code == 0
    r = iotctl("amqp1", "receive", addr(queue), "-C", "4", "-W", "5", "-o", "jsonl")
    got = [(e["payload"], e["meta"].get("body"), e["content_type"]) for e in jsonl(r.stdout)]
    assert got == [("text", "string", None), ('{"a": [1, 2]}', "value", "application/json"),
                   ("[1, 2]", "sequence", "application/json"), ("raw", "binary", None)]


def test_bad_json_for_body_value_is_a_usage_error(iotctl, queue):
    r = iotctl("amqp1", "send", addr(queue), "-m", "{nope", "--body", "value")
    assert r.exit_code == 2
    assert r.stderr.startswith("iotctl: error: --body value: the payload is not JSON")
    r = iotctl("amqp1", "send", addr(queue), "-m", '{"n": 123456789012345678901234567890}', "--body", "value")
    assert r.exit_code == 2 and "cannot be sent as an AMQP value" in r.stderr
    r = iotctl("amqp1", "send", addr(queue), "-m", "x", "--subject", "a\x00b")
    assert r.exit_code == 2 and "NUL" in r.stderr
    assert depth(queue) == 0


def test_ack_after_write_save_and_replay(iotctl, queue, tmp_path):
    capture = tmp_path / "c.jsonl"
    iotctl("amqp1", "send", addr(queue), "-m", "one", "--header", "k=v", "--subject", "s")
    r = iotctl("amqp1", "receive", addr(queue), "-C", "1", "-W", "5", "--save", capture)
    assert (r.exit_code, r.stdout) == (0, "one\n")
    assert iotctl("amqp1", "send", addr(queue), "--replay", capture).exit_code == 0
    r = iotctl("amqp1", "receive", addr(queue), "-C", "1", "-W", "5", "-o", "jsonl")
    (env,) = jsonl(r.stdout)
    assert env["meta"]["headers"] == {"k": "v"} and env["meta"]["properties"]["subject"] == "s"


def test_replay_from_mqtt_adopts_what_crosses_and_nothing_else(iotctl, queue, tmp_path):
    capture = tmp_path / "m.jsonl"
    capture.write_text(json.dumps({
        "protocol": "mqtt", "address": "sensors/t1", "payload": "21.5", "content_type": "text/plain",
        "meta": {"qos": 1, "retain": True, "properties": {"correlation_data": "0x00ff", "response_topic": "r/1",
                                                           "user_properties": [["unit", "C"]]}}}) + "\n")
    assert iotctl("amqp1", "send", addr(queue), "--replay", capture).exit_code == 0
    r = iotctl("amqp1", "receive", addr(queue), "-C", "1", "-W", "5", "-o", "jsonl")
    (env,) = jsonl(r.stdout)
    assert env["content_type"] == "text/plain" and env["meta"]["headers"] == {"unit": "C"}
    assert env["meta"]["properties"] == {"correlation_id": "0x00ff", "reply_to": "r/1"}
    assert "qos" not in json.dumps(env["meta"]) and "retain" not in json.dumps(env["meta"])


def test_what_crosses_to_mqtt(iotctl, tmp_path):
    from iotctl.message import Message
    from iotctl.protocols.amqp1.envelope import portable

    msg = Message("amqp1", "/queue/x", b"p", "application/json",
                  {"durable": True, "properties": {"correlation_id": "c-9", "reply_to": "/queue/r", "subject": "s"},
                   "headers": {"a": "1", "n": 2}, "annotations": {"x-opt-z": 1}})
    found = portable(msg)
    assert (found.content_type, found.headers, found.correlation_id, found.reply_to) == (
        "application/json", [("a", "1"), ("n", "2")], b"c-9", "/queue/r")


def test_nack_releases_and_the_message_comes_back(queue):
    from iotctl.endpoint import Endpoint
    from iotctl.protocols.amqp1.client import Receiver, Sender
    from iotctl.protocols.amqp1.config import Amqp1Config
    from iotctl.message import Message

    cfg = Amqp1Config(Endpoint("amqp", "127.0.0.1", RABBIT))
    with Sender(cfg, addr(queue)) as sender:
        from iotctl import send

        send.run(sender, [Message("", addr(queue), b"again")])
    with Receiver(cfg, (addr(queue),), 10) as receiver:
        batch = wait_until(lambda: receiver.poll(0.5), 5, "a message")
        receiver.nack(batch)
        again = wait_until(lambda: receiver.poll(0.5), 5, "the message again")
        assert [m.payload for m in again] == [b"again"]
        receiver.ack(again)
    assert depth(queue) == 0


def test_wrong_password_is_exit_4(iotctl, rabbit):
    r = iotctl("amqp1", "send", "/queue/x", "-m", "x", "-u", "guest", "-P", "wrong")
    assert r.exit_code == 4
    assert r.stderr.splitlines()[0] == ("iotctl: error: cannot connect to amqp://localhost:5672: the peer refused "
                                        "the login (amqp:unauthorized-access: Authentication failed [mech=PLAIN])")


def test_refused_port_is_exit_3(iotctl):
    r = iotctl("amqp1", "receive", "/queue/x", "-p", str(free_port(socket.SOCK_STREAM)))
    assert r.exit_code == 3 and "connection refused" in r.stderr


def test_missing_queue_is_exit_6_with_the_brokers_reason(iotctl, rabbit):
    r = iotctl("amqp1", "receive", "/amq/queue/iotctl1-none-" + uuid.uuid4().hex[:6], "-W", "5")
    assert r.exit_code == 6
    assert "amqp:not-found" in r.stderr and "no queue" in r.stderr and len(r.stderr.splitlines()) == 1


def test_url_with_a_path_is_refused(iotctl):
    r = iotctl("amqp1", "send", "--url", "amqp://127.0.0.1/jobs", "-m", "x")
    assert r.exit_code == 2 and "give it as the ADDRESS argument" in r.stderr


def test_trace_shows_frames_but_never_the_password(iotctl, queue):
    r = iotctl("amqp1", "send", addr(queue), "-m", "x", "-u", "iotctl", "-P", "iotctl-secret", "-d")
    assert r.exit_code == 0, r
    assert "@sasl-init" in r.stderr and "@open" in r.stderr and "@transfer" in r.stderr
    assert "iotctl-secret" not in r.stderr and "****" in r.stderr


def test_trace_never_shows_a_password_with_quotes_and_a_backslash(iotctl, rabbit):
    """Issue 23 item 9: Proton's frame trace writes a SASL PLAIN response's \\, ' and "
    (and every byte that is not printable ASCII) as \\xHH: masked by value all the same."""
    r = iotctl("amqp1", "send", "q", "-m", "x", "-u", "guest", "-P", "se\\cr\"et'Tail é", "-d")
    assert r.exit_code == 4, r
    assert "@sasl-init" in r.stderr and "****" in r.stderr
    assert "Tail" not in r.stderr and "\\x5c" not in r.stderr, r.stderr


# --------------------------------------------------------------------------- URL endpoints


def test_url_endpoint_source_and_sink(queue):
    from iotctl import receive, resolver, send
    from iotctl.message import Message

    with resolver.sink(f"amqp1://guest:guest@127.0.0.1//amq/queue/{queue}?durable=true&subject=s") as sink:
        assert sink.address == addr(queue) and sink.window == 1000
        send.run(sink, [Message("", "", b"u1")])
    receiver = resolver.source(f"amqp1://127.0.0.1/%2Famq%2Fqueue%2F{queue}?credit=5")
    with receiver:
        assert receiver.delivery == "at-least-once"
        got = []
        receive.run(receiver, receive.ReceiveSpec(count=1, timeout=5), "receive", writer=_ListWriter(got))
    assert [(m.payload, m.meta["durable"], m.meta["properties"]["subject"]) for m in got] == [(b"u1", True, "s")]


class _ListWriter(Writer):
    def __init__(self, out):
        super().__init__(None)
        self.out_list = out

    def write(self, msg):
        self.out_list.append(msg)

    def flush(self):
        pass


@pytest.mark.parametrize("url, why", [
    ("amqp1://127.0.0.1", "no address to receive from"),
    ("amqp1://127.0.0.1/q?credit=0", "credit"),
    ("amqp1://127.0.0.1/q?creditt=5", "did you mean 'credit'"),
])
def test_bad_source_urls_are_usage_errors(url, why):
    from iotctl import resolver
    from iotctl.errors import UsageError

    with pytest.raises(UsageError) as exc:
        resolver.source(url)
    assert why in str(exc.value)


# --------------------------------------------------------------------------- clients not written here


def test_proton_blocking_client_reads_what_iotctl_sent_and_iotctl_reads_what_it_sent(iotctl, queue):
    from proton import Message as PnMessage
    from proton.utils import BlockingConnection

    iotctl("amqp1", "send", addr(queue), "-m", "from iotctl", "--header", "h=1", "--content-type", "text/plain")
    conn = BlockingConnection("amqp://127.0.0.1:5672", allowed_mechs="ANONYMOUS")
    try:
        rcv = conn.create_receiver(addr(queue), credit=1)
        m = rcv.receive(timeout=5)
        rcv.accept()
        assert (bytes(m.body), m.inferred, m.content_type, m.properties) == (b"from iotctl", True, "text/plain",
                                                                             {"h": "1"})
        snd = conn.create_sender(addr(queue))
        snd.send(PnMessage(body="from proton", subject="s", properties={"k": 5}, correlation_id="c"))
    finally:
        conn.close()
    r = iotctl("amqp1", "receive", addr(queue), "-C", "1", "-W", "5", "-o", "jsonl")
    (env,) = jsonl(r.stdout)
    assert env["payload"] == "from proton" and env["meta"]["body"] == "string"
    assert env["meta"]["headers"] == {"k": 5} and env["meta"]["properties"]["correlation_id"] == "c"


def _example(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    path = os.path.join(EXAMPLES, name)
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing; run: scripts/services up amqp1 (libqpid-proton11-dev-examples)",
                    pytrace=False)
    return subprocess.run([sys.executable, path, *args], capture_output=True, timeout=timeout, env=clean_env())


N = 50_000


def test_50000_at_least_once_from_iotctl_to_the_proton_example_receiver(iotctl_proc, queue):
    lines = b"".join(b"%d\n" % i for i in range(N))
    # as AMQP strings: the example prints each body, and a data section's is a memoryview
    r = iotctl_proc("amqp1", "send", addr(queue), "-l", "--body", "string", input=lines, timeout=300)
    assert r.returncode == 0, r.stderr
    assert depth(queue) == N  # counted at the broker
    done = _example("simple_recv.py", "-a", f"127.0.0.1:5672/{addr(queue)}", "-m", str(N))
    assert done.returncode == 0, done.stderr[-500:]
    got = done.stdout.decode().splitlines()
    assert got == [str(i) for i in range(N)]
    assert depth(queue) == 0


def test_50000_at_least_once_from_the_proton_example_sender_to_iotctl(iotctl_proc, queue):
    done = _example("simple_send.py", "-a", f"127.0.0.1:5672/{addr(queue)}", "-m", str(N))
    assert done.returncode == 0 and b"all messages confirmed" in done.stdout, done.stderr[-500:]
    r = iotctl_proc("amqp1", "receive", addr(queue), "-C", str(N), "-W", "120", "-o", "raw", timeout=300)
    assert r.returncode == 0, r.stderr
    seqs = [json.loads(line)["sequence"] for line in r.stdout.decode().splitlines()]
    assert seqs == list(range(1, N + 1))
    assert depth(queue) == 0


# --------------------------------------------------------------------------- the second broker


def test_second_broker_plain_and_tls(iotctl, broker2):
    name = f"iotctl1-{uuid.uuid4().hex[:8]}"
    ca = str(CERTS / "ca.crt")
    r = iotctl("amqp1", "send", name, "-p", broker2, "-m", "plain", "--header", "a=b")
    assert r.exit_code == 0, r
    r = iotctl("amqp1", "send", name, "-p", broker2, "-h", "127.0.0.1", "--cafile", ca, "-m", "over tls")
    assert r.exit_code == 0, r
    r = iotctl("amqp1", "receive", name, "-p", broker2, "-h", "127.0.0.1", "--cafile", ca, "-C", "2", "-W", "5",
               "-o", "jsonl")
    assert [(e["payload"], e["meta"].get("headers")) for e in jsonl(r.stdout)] == [("plain", {"a": "b"}),
                                                                                    ("over tls", None)]


def test_second_broker_tls_with_an_unknown_ca_is_exit_7(iotctl, broker2):
    r = iotctl("amqp1", "send", "q", "-p", broker2, "--cafile", str(CERTS / "other-ca.crt"), "-m", "x")
    assert r.exit_code == 7 and "certificate verification failed" in r.stderr


def test_second_broker_offers_only_anonymous_plain_is_exit_4_with_a_hint(iotctl, broker2):
    r = iotctl("amqp1", "send", "q", "-p", broker2, "-u", "a", "-P", "b", "-m", "x")
    assert r.exit_code == 4
    assert "no SASL mechanism in common" in r.stderr and "--sasl" in r.stderr


# --------------------------------------------------------------------------- outcomes (a proton peer of the test's own)


class OutcomePeer:
    """An AMQP 1.0 peer that settles each message by its payload: 'reject', 'release',
    'modify', anything else accepted. SASL ANONYMOUS, or EXTERNAL over TLS with `ssl`."""

    def __init__(self, ssl_domain=None):
        from proton import Condition, Delivery
        from proton.handlers import MessagingHandler
        from proton.reactor import ApplicationEvent, Container, EventInjector

        self.port = free_port(socket.SOCK_STREAM)
        self.received: list[bytes] = []
        self.users: list[str] = []
        peer = self

        class Handler(MessagingHandler):
            def __init__(self):
                super().__init__(auto_accept=False)

            def on_start(self, event):
                event.container.listen(f"127.0.0.1:{peer.port}", ssl_domain=ssl_domain)

            def on_connection_opened(self, event):
                peer.users.append(event.transport.user)

            def on_message(self, event):
                body = bytes(event.message.body) if not isinstance(event.message.body, str) else event.message.body.encode()
                peer.received.append(body)
                d = event.delivery
                if body == b"reject":
                    d.local.condition = Condition("amqp:precondition-failed", "not this one")
                    d.update(Delivery.REJECTED)
                    d.settle()
                elif body == b"release":
                    self.release(d, delivered=False)
                elif body == b"modify":
                    self.release(d, delivered=True)
                else:
                    self.accept(d)

            def on_stop_peer(self, event):
                peer.container.stop()

        self.injector = EventInjector()
        self.container = Container(Handler())
        self.container.selectable(self.injector)
        self._stop = ApplicationEvent("stop_peer")
        self.thread = threading.Thread(target=self.container.run, daemon=True)
        self.thread.start()
        wait_port("127.0.0.1", self.port)

    def close(self):
        self.injector.trigger(self._stop)
        self.thread.join(5)


@pytest.fixture
def outcomes():
    peer = OutcomePeer()
    yield peer
    peer.close()


def test_rejected_released_modified_are_refusals_exit_6_and_go_to_failed(iotctl, outcomes, tmp_path):
    failed = tmp_path / "failed.jsonl"
    r = iotctl("amqp1", "send", "q", "-p", outcomes.port, "-l", "--failed", failed,
               input="ok1\nreject\nok2\nrelease\nmodify\nok3\n")
    assert r.exit_code == 6, r
    line = r.stderr.splitlines()[0]
    assert line.startswith("iotctl: error: send: the broker refused 3 message(s): ")
    assert "rejected (amqp:precondition-failed: not this one)" in line
    assert "released (the broker did not take it)" in line and "; modified;" in line.replace("s): modified;", "; modified;")
    assert "sent 6, acknowledged 3, refused 3" in line
    assert sorted(e["payload"] for e in jsonl(failed.read_text())) == ["modify", "reject", "release"]
    assert outcomes.received == [b"ok1", b"reject", b"ok2", b"release", b"modify", b"ok3"]


def test_failed_file_replays_on_its_own_with_the_command_lines_properties(iotctl, outcomes, queue, tmp_path):
    """Issue 23 item 8: what --failed keeps of a message composed on the command line
    carries its address and the command line's properties, headers and annotations, so
    `--replay FILE` alone (here into RabbitMQ) sends it the same way (the file had only
    the address and payload)."""
    failed = tmp_path / "failed.jsonl"
    options = ("--subject", "s1", "--durable", "--priority", "7", "--header", "k=v", "--content-type", "text/plain",
               "--annotation", "x-opt-a=b")
    r = iotctl("amqp1", "send", addr(queue), "-p", outcomes.port, "-l", "--failed", failed, *options,
               input="reject\n")
    assert r.exit_code == 6, r
    kept = jsonl(failed.read_text())
    assert [(e["protocol"], e["address"], e["payload"]) for e in kept] == [("amqp1", addr(queue), "reject")]
    r = iotctl("amqp1", "send", "--replay", failed)
    assert r.exit_code == 0, r
    r = iotctl("-o", "jsonl", "amqp1", "receive", addr(queue), "-C", "1", "-W", "20")
    assert r.exit_code == 0, r
    got = jsonl(r.stdout)[0]
    meta = got["meta"]
    assert (got["payload"], got["content_type"], meta["properties"]["subject"], meta["durable"], meta["priority"],
            meta["headers"], meta["annotations"].get("x-opt-a")) == ("reject", "text/plain", "s1", True, 7,
                                                                     {"k": "v"}, "b"), got


def test_sasl_external_with_a_client_certificate(iotctl):
    from proton import SSLDomain

    domain = SSLDomain(SSLDomain.MODE_SERVER)
    domain.set_credentials(str(CERTS / "server.crt"), str(CERTS / "server.key"), None)
    domain.set_trusted_ca_db(str(CERTS / "ca.crt"))
    domain.set_peer_authentication(SSLDomain.VERIFY_PEER, str(CERTS / "ca.crt"))
    peer = OutcomePeer(domain)
    try:
        r = iotctl("amqp1", "send", "q", "-p", peer.port, "-h", "127.0.0.1", "--cafile", CERTS / "ca.crt",
                   "--cert", CERTS / "client.crt", "--key", CERTS / "client.key", "--sasl", "external",
                   "-m", "hello")
        assert r.exit_code == 0, r
        assert peer.received == [b"hello"]
        assert "iotctl-test-client" in peer.users[0]
    finally:
        peer.close()


# --------------------------------------------------------------------------- faults


def test_frozen_peer_receive_gives_up_at_W_and_ctrl_c_ends_it(rabbit, queue):
    with TcpRelay(RABBIT) as relay:
        relay.freeze()
        started = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "iotctl", "amqp1", "receive", addr(queue), "-p", str(relay.port),
                            "-W", "2"], capture_output=True, timeout=30, env=clean_env())
        assert r.returncode == 5 and time.monotonic() - started < 8, r.stderr
        relay.thaw()
        proc = _proc("amqp1", "receive", addr(queue), "-p", relay.port)
        wait_until(lambda: b"receiving from" in (proc.stderr.peek(200) if hasattr(proc.stderr, "peek") else b""),
                   15, "the receiver started")
        relay.freeze()
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err


def test_frozen_peer_send_stops_at_W_with_the_report(rabbit, queue, tmp_path):
    failed = tmp_path / "f.jsonl"
    with TcpRelay(RABBIT) as relay:
        proc = subprocess.Popen([sys.executable, "-m", "iotctl", "amqp1", "send", addr(queue), "-p", str(relay.port),
                                 "-l", "-W", "2", "--failed", failed], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
        proc.stdin.write(b"".join(b"%d\n" % i for i in range(100)))
        proc.stdin.flush()
        wait_until(lambda: depth(queue) == 100, 10, "the first 100 queued")
        relay.freeze()
        proc.stdin.write(b"".join(b"%d\n" % i for i in range(100, 200)))
        proc.stdin.close()
        started = time.monotonic()
        proc.wait(timeout=30)
        err = proc.stderr.read()
        assert proc.returncode == 5, err
        assert time.monotonic() - started < 10
        assert b"not acknowledged within 2 s" in err
    import re

    # the broker had the first 100; their accepts may still have been on the way when it froze
    acked = int(re.search(rb"acknowledged (\d+)", err).group(1))
    assert 0 < acked <= 100, err
    rest = jsonl(failed.read_text())
    assert [e["payload"] for e in rest] == [str(i) for i in range(acked, 200)]


def test_cut_connection_is_reconnected_and_nothing_is_lost(iotctl, rabbit, queue):
    with TcpRelay(RABBIT) as relay:
        proc = _proc("amqp1", "receive", addr(queue), "-p", str(relay.port), "-C", "6", "-W", "30")
        iotctl("amqp1", "send", addr(queue), "-l", input="1\n2\n3\n")
        wait_until(lambda: relay.connections() == 1 and settled_at_broker(queue), 20, "3 received and accepted")
        relay.cut()
        iotctl("amqp1", "send", addr(queue), "-l", input="4\n5\n6\n")
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.decode().splitlines() == ["1", "2", "3", "4", "5", "6"]
    assert b"connection lost" in err and b"reconnected" in err


def test_cut_connection_with_no_reconnect_is_exit_3(iotctl, rabbit, queue):
    with TcpRelay(RABBIT) as relay:
        proc = _proc("amqp1", "receive", addr(queue), "-p", str(relay.port), "--no-reconnect", "-W", "30")
        wait_until(lambda: relay.connections() == 1, 10, "connected")
        time.sleep(0.3)
        relay.cut()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    assert err.decode().splitlines()[-1].startswith("iotctl: error: receive: connection lost")


# --------------------------------------------------------------------------- more faults and edges


def test_ctrl_c_while_the_peer_is_frozen_stops_send_with_the_report(rabbit, queue, tmp_path):
    failed = tmp_path / "f.jsonl"
    with TcpRelay(RABBIT) as relay:
        proc = subprocess.Popen([sys.executable, "-m", "iotctl", "amqp1", "send", addr(queue), "-p", str(relay.port),
                                 "-l", "-W", "60", "--failed", failed], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
        proc.stdin.write(b"a\nb\n")
        proc.stdin.flush()
        wait_until(lambda: depth(queue) == 2, 10, "2 queued")
        relay.freeze()
        proc.stdin.write(b"c\nd\n")
        proc.stdin.flush()
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
        err = proc.stderr.read()
        assert time.monotonic() - started < 5
    assert proc.returncode == 130, err
    import re

    acked = int(re.search(rb"acknowledged (\d+)", err).group(1))
    assert b"send interrupted" in err and acked <= 2
    assert [e["payload"] for e in jsonl(failed.read_text())] == ["a", "b", "c", "d"][acked:]


def test_cut_during_send_is_exit_3_and_failed_keeps_everything_not_accepted(rabbit, queue, tmp_path):
    failed = tmp_path / "f.jsonl"
    with TcpRelay(RABBIT) as relay:
        proc = subprocess.Popen([sys.executable, "-m", "iotctl", "amqp1", "send", addr(queue), "-p", str(relay.port),
                                 "-l", "--failed", failed], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=clean_env())
        proc.stdin.write(b"".join(b"%d\n" % i for i in range(50)))
        proc.stdin.flush()
        wait_until(lambda: depth(queue) == 50, 10, "50 queued")
        relay.cut()
        proc.stdin.write(b"".join(b"%d\n" % i for i in range(50, 80)))
        proc.stdin.close()
        proc.wait(timeout=30)
        err = proc.stderr.read()
    assert proc.returncode == 3, err
    import re

    acked = int(re.search(rb"acknowledged (\d+)", err).group(1))
    assert b"connection lost" in err and b"sent 80" in err and 0 < acked <= 50
    # at least once: every accepted message is at the broker, every other one in --failed
    assert depth(queue) >= acked
    assert [e["payload"] for e in jsonl(failed.read_text())] == [str(i) for i in range(acked, 80)]


def test_a_silent_peer_is_lost_after_the_heartbeat_and_received_again_after_it(iotctl, rabbit, queue):
    with TcpRelay(RABBIT) as relay:
        proc = _proc("amqp1", "receive", addr(queue), "-p", relay.port, "--heartbeat", "2", "-C", "2", "-W", "40")
        iotctl("amqp1", "send", addr(queue), "-m", "before")
        wait_until(lambda: settled_at_broker(queue), 20, "the first received and accepted")
        relay.freeze()
        iotctl("amqp1", "send", addr(queue), "-m", "after")
        time.sleep(4.5)  # the idle timeout passes while frozen
        relay.thaw()
        relay.cut()
        out, err = proc.communicate(timeout=40)
    assert proc.returncode == 0, err
    assert out.decode().splitlines() == ["before", "after"]
    assert b"idle timeout" in err and b"reconnected" in err


def test_vhost_selects_rabbitmqs_virtual_host(iotctl, rabbit):
    name = f"iotctl1-{uuid.uuid4().hex[:8]}"
    login = ("-u", "iotctl", "-P", "iotctl-secret", "--vhost", "iotctl-test")
    assert iotctl("amqp1", "send", f"/queue/{name}", "-m", "in the test vhost", *login).exit_code == 0
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", "iotctl-test", "name", "messages"],
                         capture_output=True, text=True, timeout=60).stdout
    assert f"{name}\t1" in out
    r = iotctl("amqp1", "receive", f"/queue/{name}", "-C", "1", "-W", "5", *login)
    assert r.stdout == "in the test vhost\n"
    subprocess.run(["rabbitmqctl", "-q", "delete_queue", "-p", "iotctl-test", name], capture_output=True, timeout=60)


def test_a_large_message_crosses_in_many_frames(iotctl, queue, tmp_path):
    data = os.urandom(3 * 1024 * 1024)
    (tmp_path / "big").write_bytes(data)
    assert iotctl("amqp1", "send", addr(queue), "-f", tmp_path / "big").exit_code == 0
    r = iotctl("amqp1", "receive", addr(queue), "-C", "1", "-W", "10", "-o", "raw")
    assert r.exit_code == 0 and r.stdout_bytes == data + b"\n"


# --------------------------------------------------------------------------- the codec, against proton's own


from hypothesis import given, settings, strategies as st  # noqa: E402


def _sender(**props):
    from proton import Message as PnMessage

    from iotctl.endpoint import Endpoint
    from iotctl.protocols.amqp1.client import Sender
    from iotctl.protocols.amqp1.config import Amqp1Config, Props

    sender = Sender(Amqp1Config(Endpoint("amqp", "127.0.0.1", 1)), "q", Props(**props))
    sender._pm = PnMessage()
    sender._prefix = sender._plain_prefix()
    return sender


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)


@settings(max_examples=150, deadline=None)
@given(payload=st.binary(max_size=700), subject=st.none() | _text, durable=st.booleans(),
       headers=st.lists(st.tuples(st.text(min_size=1, max_size=8), st.integers(-2**31, 2**31) | _text), max_size=3))
def test_encoded_messages_read_back_by_proton_and_by_decode(payload, subject, durable, headers):
    from proton import Message as PnMessage

    from iotctl.message import Message
    from iotctl.protocols.amqp1.client import decode

    sender = _sender(subject=subject, durable=durable, headers=headers)
    encoded = sender._encode(Message("", "q", payload))
    m = PnMessage()
    m.decode(encoded)
    assert (bytes(m.body), m.inferred, m.subject, m.durable) == (payload, True, subject or None, durable)
    assert (m.properties or {}) == dict(headers)
    got, content_type, meta = decode(encoded)
    assert got == payload and "body" not in meta and meta.get("headers", {}) == dict(headers)
    assert meta.get("properties", {}).get("subject") == (subject or None)


@settings(max_examples=100, deadline=None)
@given(body=st.none() | _text | st.binary(max_size=300) | st.integers(-2**60, 2**60)
       | st.lists(st.integers(0, 100), max_size=5)
       | st.dictionaries(st.text(max_size=5), st.integers(-2**63, 2**63 - 1), max_size=3),
       inferred=st.booleans(), corr=st.none() | _text | st.integers(0, 2**63))
def test_decode_matches_protons_message(body, inferred, corr):
    from proton import Message as PnMessage

    from iotctl.protocols.amqp1.client import decode

    m = PnMessage(body=body, correlation_id=corr)
    m.inferred = inferred and isinstance(body, (bytes, list))
    payload, _, meta = decode(m.encode())
    if isinstance(body, bytes):
        assert payload == body and meta.get("body", "data") == ("data" if m.inferred else "binary")
    elif isinstance(body, str):
        assert payload == body.encode() and meta["body"] == "string"
    elif body is None:
        assert payload == b""
    else:
        assert json.loads(payload) == body and meta["body"] in ("value", "sequence")
    assert meta.get("properties", {}).get("correlation_id") == (corr if corr != "" else None)


def test_the_last_accepts_reach_the_broker_before_the_connection_closes(iotctl_proc, queue):
    """RabbitMQ 3.10 loses accepts still queued in its session when the connection closes
    right behind them (hundreds of printed messages came back): receive waits for the
    answer to its detach before it ends the session."""
    lines = b"".join(b"%d\n" % i for i in range(20_000))
    for _ in range(3):
        assert iotctl_proc("amqp1", "send", addr(queue), "-l", input=lines, timeout=120).returncode == 0
        r = iotctl_proc("amqp1", "receive", addr(queue), "-C", "20000", "-o", "raw", timeout=120)
        assert r.returncode == 0 and r.stdout == lines
        assert depth(queue) == 0


# --------------------------------------------------------------------------- the shared layer: bridge both ways


def test_bridge_from_amqp1_to_mqtt_and_back(iotctl, peer, queue):
    peer("mosquitto-private")
    topic = f"iotctl-test/amqp1/{uuid.uuid4().hex[:8]}"
    sub = _proc("mqtt", "sub", "-p", "11883", "-t", topic, "-q", "1", "-C", "2", "-W", "30", "-o", "jsonl")
    time.sleep(0.5)
    iotctl("amqp1", "send", addr(queue), "-l", "--header", "k=v", "--correlation-id", "c-1", input="a\nb\n")
    r = iotctl("bridge", f"amqp1://127.0.0.1//amq/queue/{queue}?credit=10", f"mqtt://127.0.0.1:11883/{topic}?qos=1",
               "-C", "2", "-W", "20")
    assert r.exit_code == 0, r
    out, err = sub.communicate(timeout=30)
    got = jsonl(out.decode())
    assert [e["payload"] for e in got] == ["a", "b"]
    assert got[0]["meta"]["properties"] == {"correlation_data": "c-1", "user_properties": [["k", "v"]]}
    assert depth(queue) == 0  # accepted only once MQTT confirmed

    back = _proc("bridge", f"mqtt://127.0.0.1:11883/{topic}?qos=1", f"amqp1://127.0.0.1//amq/queue/{queue}",
                 "-C", "1", "-W", "30")
    wait_until(lambda: b"bridging" in back.stderr.peek(300), 15, "the bridge started")
    iotctl("mqtt", "pub", "-p", "11883", "-t", topic, "-q", "1", "-m", "c", "--user-property", "x=y",
           "--content-type", "text/plain")
    back.communicate(timeout=30)
    assert back.returncode == 0
    r = iotctl("amqp1", "receive", addr(queue), "-C", "1", "-W", "5", "-o", "jsonl")
    (env,) = jsonl(r.stdout)
    assert (env["payload"], env["content_type"], env["meta"]["headers"]) == ("c", "text/plain", {"x": "y"})
    assert set(env["meta"]) == {"durable", "headers"}  # nothing else of MQTT's meta


def test_credit_bounds_what_is_unaccepted_and_accepting_brings_more(iotctl, queue):
    from iotctl.endpoint import Endpoint
    from iotctl.protocols.amqp1.client import Receiver
    from iotctl.protocols.amqp1.config import Amqp1Config

    iotctl("amqp1", "send", addr(queue), "-l", input="".join(f"{i}\n" for i in range(20)))
    with Receiver(Amqp1Config(Endpoint("amqp", "127.0.0.1", RABBIT)), (addr(queue),), credit=5) as receiver:
        held = []
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            held += receiver.poll(0.2)
        assert [m.payload for m in held] == [b"%d" % i for i in range(5)]  # no more without an accept
        receiver.ack(held[:3])
        more = []
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            more += receiver.poll(0.2)
        assert [m.payload for m in more] == [b"%d" % i for i in range(5, 8)]
        receiver.ack(held[3:] + more)
    assert depth(queue) == 12


def test_idle_timeout_ends_a_drained_queue_successfully(iotctl, queue):
    iotctl("amqp1", "send", addr(queue), "-l", input="1\n2\n")
    started = time.monotonic()
    r = iotctl("amqp1", "receive", addr(queue), "--idle-timeout", "1", "-W", "20")
    assert (r.exit_code, r.stdout) == (0, "1\n2\n") and time.monotonic() - started < 5


# --------------------------------------------------------------------------- iotctl check


def test_check_reports_the_peer_and_probes_through_the_urls_address(iotctl, queue):
    r = iotctl("check", f"amqp1://guest:guest@127.0.0.1//amq/queue/{queue}", "-o", "json")
    assert r.exit_code == 0, r
    rows = {(c["section"], c["name"]): (c["value"], c["status"]) for c in json.loads(r.stdout)["checks"]}
    assert rows[("server", "product")][0].startswith("RabbitMQ 3.")
    assert rows[("login", "accepted")] == ("PLAIN as guest", "ok")
    assert rows[("login", "anonymous")] == ("allowed", "warn")
    assert rows[("probe", "at least once")][0].startswith("accepted, back in ")
    assert rows[("probe", "at most once (pre-settled)")][1] == "ok"
    assert rows[("probe", "largest payload")][1] == "ok"
    assert depth(queue) == 0  # the probe took back what it sent


def test_check_over_tls_without_an_address_skips_the_probe(iotctl, broker2):
    r = iotctl("check", f"amqp1s://localhost:{broker2}?cafile={CERTS / 'ca.crt'}")
    assert r.exit_code == 0, r
    lines = r.stdout.splitlines()
    assert "tls\tverified\tchain and name localhost\tok" in lines
    assert any(line.startswith("probe\tskipped\tno address in the URL") for line in lines)


def test_check_of_a_refused_login_is_exit_4(iotctl, rabbit):
    r = iotctl("check", "amqp1://guest:wrong@127.0.0.1")
    assert r.exit_code == 4 and "refused the login" in r.stderr


def test_bench_and_watch_take_amqp1_urls_unchanged(iotctl_proc, queue):
    r = iotctl_proc("bench", f"amqp1://127.0.0.1//amq/queue/{queue}", "--publishers", "2", "--subscribers", "1",
                    "--shared", "--count", "500", "-o", "json", timeout=120)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert (summary["sent"], summary["confirmed"], summary["received"], summary["lost"], summary["duplicates"]) == (
        1000, 1000, 1000, 0, 0)
    send = iotctl_proc("amqp1", "send", addr(queue), "-l", input=b"1\n2\n3\n")
    assert send.returncode == 0
    r = iotctl_proc("watch", f"amqp1://127.0.0.1//amq/queue/{queue}", "--snapshot", "-W", "2", "-o", "json",
                    timeout=60)
    assert r.returncode == 0, r.stderr
    snapshot = json.loads(r.stdout)
    assert queue in json.dumps(snapshot) and '"count": 3' in json.dumps(snapshot)
    assert depth(queue) == 0

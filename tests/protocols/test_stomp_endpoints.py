"""STOMP on the shared layer (issue 15): opened from a URL through the same factories as
the commands, a Subscription that acknowledges exactly the messages it is given, a
Sender that adopts a foreign message in one place (tested on the wire, with a fake
server recording every header, and end to end through the brokers); and what may go
into a header at all (issue 23 items 4, 8, 9)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest

from iotctl import resolver, send
from iotctl.errors import UsageError
from iotctl.message import Message
from tests.conftest import CERTS
from tests.helpers import clean_env
from tests.protocols.test_stomp import (BROKERS, RABBIT, FakeServer, broker, connected, drain,  # noqa: F401
                                        fill, queue)

URLS = {
    "rabbitmq": ("stomp://iotctl-stomp:iotctl-stomp-secret@127.0.0.1:61613", "vhost=iotctl-stomp"),
    "activemq": ("stomp://iotctl:iotctl-secret@127.0.0.1:61614", ""),
}


def url(broker_name: str, path: str, **options) -> str:
    base, fixed = URLS[broker_name]
    query = "&".join([fixed] * bool(fixed) + [f"{k}={v}" for k, v in options.items()])
    return f"{base}{path}" + (f"?{query}" if query else "")


def take(source, n: int, within: float = 10.0) -> list[Message]:
    got: list[Message] = []
    end = time.monotonic() + within
    while len(got) < n and time.monotonic() < end:
        got += source.poll(0.5)
    return got


def quiet(source, seconds: float) -> list[Message]:
    got: list[Message] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        got += source.poll(0.2)
    return got


# --------------------------------------------------------------------------- endpoints by URL


def test_url_source_and_sink_round_trip(iotctl, broker, queue):
    """stomp://user:pass@host:port/queue/Q with the commands' long options as parameters."""
    name, login = broker
    with resolver.sink(url(name, queue, persistent="true", header="x-a%3D1", receipt="false")) as sink:
        result = send.run(sink, [Message("", queue, b"one"), Message("", queue, b"two")], "send", 10)
    assert (result.sent, result.acknowledged) == (2, 2)
    with resolver.source(url(name, queue, ack="client", prefetch=5)) as source:
        assert source.delivery == "at-least-once" and source.where.startswith("stomp://127.0.0.1:")
        got = take(source, 2)
        assert [(m.protocol, m.address, m.payload, m.meta["x-a"]) for m in got] == \
               [("stomp", queue, b"one", "1"), ("stomp", queue, b"two", "1")]
        source.ack(got)
    assert drain(iotctl, login, queue, idle="0.5") == []


def test_url_over_tls(iotctl, peer, queue):
    peer("activemq")
    tls = f"stomp+ssl://iotctl:iotctl-secret@localhost:61615{queue}?cafile={CERTS / 'ca.crt'}"
    with resolver.sink(tls) as sink:
        assert send.run(sink, [Message("", queue, b"secret")], "send", 10).acknowledged == 1
    with resolver.source(tls + "&ack=auto") as source:
        assert [m.payload for m in take(source, 1)] == [b"secret"]


@pytest.mark.parametrize("role, address, why", [
    ("source", "/queue/x?ack=bogus", "ack: 'bogus' is not one of 'auto', 'client', 'client-individual'"),
    ("source", "/queue/x?prefetch=0", "prefetch: 0 is not in the range x>=1"),
    ("source", "/queue/x?stomp_version=2", "stomp_version: '2' is not one of '1.0', '1.1', '1.2'"),
    ("source", "/queue/x?prefech=3", "unknown option 'prefech' (did you mean 'prefetch'?)"),
    ("source", "/queue/x?nack=true&stomp_version=1.0", "STOMP 1.0 has no NACK"),
    ("source", "/topic/x?durable=true", "a durable subscription needs a name"),
    ("source", "", "Missing argument 'DESTINATION...'"),
    ("source", "/queue/x?password=p", "'password' belongs in the URL itself"),
    ("sink", "/queue/x?window=0", "window: 0 is not in the range x>=1"),
    ("sink", "/queue/x?priority=12", "priority: 12 is not in the range 0<=x<=9"),
    ("sink", "/queue/x?stomp_version=1.0&header=k%3Dv%0Aevil%3Ainjected",
     "its value contains LF, which STOMP 1.0 cannot escape"),
    ("sink", "/queue/x?header=receipt%3Dmine", "iotctl sets this header itself"),
    ("sink", "/queue/x?max_size=lots", "max_size: 'lots' is not a size"),
])
def test_url_options_are_checked_like_the_command(role, address, why):
    with pytest.raises(UsageError) as info:
        getattr(resolver, role)(f"stomp://u:secret@127.0.0.1:1{address}")
    assert info.value.code == 2
    assert why in str(info.value), str(info.value)
    assert "secret" not in str(info.value)


def test_delivery_per_ack_mode_and_destination():
    cases = {("/queue/q",): "at-least-once", ("/queue/q", "ack=client"): "at-least-once",
             ("/amq/queue/q",): "at-least-once", ("/queue/q", "ack=auto"): "at-most-once",
             ("/topic/t",): "at-most-once", ("/topic/t", "durable=true&id=d"): "at-least-once",
             ("/exchange/amq.topic/k",): "at-most-once"}
    for (path, *query), delivery in cases.items():
        source = resolver.source(f"stomp://127.0.0.1{path}" + (f"?{query[0]}" if query else ""))
        assert source.delivery == delivery, (path, query)


# --------------------------------------------------------------------------- acknowledging exactly those


def test_ack_acknowledges_exactly_the_messages_given(iotctl, broker, queue):
    """client-individual: an ACK for each message given; the others go back."""
    name, login = broker
    fill(iotctl, login, queue, range(5))
    with resolver.source(url(name, queue)) as source:
        got = take(source, 5)
        source.ack([got[0], got[2], got[4]])
    assert drain(iotctl, login, queue) == ["1", "3"]


def test_client_mode_acknowledges_only_the_wholly_acknowledged_prefix(iotctl, broker, queue):
    """client: one ACK covers every earlier delivery, so acknowledging 0, 1 and 3 sends
    the ACK of 1 only: 2, 3 and 4 go back (3 twice is better than 2 never)."""
    name, login = broker
    fill(iotctl, login, queue, range(5))
    with resolver.source(url(name, queue, ack="client")) as source:
        got = take(source, 5)
        source.ack([got[3], got[0], got[1]])
    assert drain(iotctl, login, queue) == ["2", "3", "4"]


@pytest.mark.parametrize("ack", ["client-individual", "client"])
def test_nack_gives_a_message_back(iotctl, broker, queue, ack):
    """RabbitMQ delivers a NACKed message again at once (in client mode: ACK 0, NACK 1,
    ACK 2, each frame cumulative); ActiveMQ's NACK would discard it, so there it is left
    unacknowledged and the next connection gets it (in client mode with everything
    after it: a cumulative ACK cannot skip it)."""
    name, login = broker
    fill(iotctl, login, queue, range(3))
    with resolver.source(url(name, queue, ack=ack)) as source:
        got = take(source, 3)
        source.nack([got[1]])
        source.ack([got[0], got[2]])
        again = quiet(source, 1.5)
        source.ack(again)
    if name == "rabbitmq":
        assert [(m.payload, m.meta.get("redelivered")) for m in again] == [(b"1", "true")]
        assert drain(iotctl, login, queue, idle="0.5") == []
    else:
        assert again == []
        assert drain(iotctl, login, queue) == (["1"] if ack == "client-individual" else ["1", "2"])


def test_tokens_of_an_earlier_connection_are_ignored(iotctl, broker, queue):
    name, login = broker
    fill(iotctl, login, queue, ["a", "b"])
    with resolver.source(url(name, queue)) as source:
        old = take(source, 2)
        source.reconnect()
        source.ack(old)  # nothing to say to the new connection about them
        new = take(source, 2)
        assert [m.payload for m in new] == [b"a", b"b"] and all(m.token is not o.token for m, o in zip(new, old))
        source.ack(new)
    assert drain(iotctl, login, queue, idle="0.5") == []


# --------------------------------------------------------------------------- adopting a foreign message, on the wire


class Recorder:
    """A fake STOMP broker recording the headers of every SEND (and receipting it)."""

    def __init__(self):
        self.sends: list[dict] = []

        def script(conn, frames):
            connected(conn, frames)
            while True:
                cmd, headers = frames.next()
                if cmd == "SEND":
                    self.sends.append(headers)
                if "receipt" in headers:
                    conn.sendall(b"RECEIPT\nreceipt-id:%s\n\n\0" % headers["receipt"].encode())

        self.server = FakeServer(script)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.close()


def _capture(tmp_path, *envelopes) -> str:
    path = tmp_path / "capture.jsonl"
    path.write_text("".join(json.dumps({"ts": "2026-01-02T03:04:05+00:00", "payload": "p", **e}) + "\n"
                            for e in envelopes))
    return str(path)


AMQP = {"protocol": "amqp", "address": "readings", "content_type": "application/json",
        "meta": {"exchange": "amq.topic", "routing_key": "readings", "delivery_tag": 7, "redelivered": False,
                 "properties": {"content_type": "application/json", "correlation_id": "c-9", "reply_to": "answers",
                                "delivery_mode": 2, "headers": {"x-site": "lab"}}}}
MQTT = {"protocol": "mqtt", "address": "sensors/t1", "content_type": None,
        "meta": {"qos": 1, "retain": True,
                 "properties": {"content_type": "text/plain", "correlation_data": "c-1", "response_topic": "replies/1",
                                "message_expiry_interval": 60,
                                "user_properties": [["unit", "C"], ["destination", "/queue/elsewhere"],
                                                    ["content-length", "1"], ["receipt", "r"]]}}}
STOMP = {"protocol": "stomp", "address": "/queue/captured", "content_type": "text/plain",
         "meta": {"subscription": "iotctl-1", "message-id": "m-1", "ack": "a-1", "redelivered": "true",
                  "receipt-id": "x", "transaction": "t-1", "x-colour": "blue", "persistent": "true",
                  "correlation-id": "c-2", "reply-to": "/queue/r"}}


def _replayed(iotctl, tmp_path, envelope, *extra) -> dict:
    with Recorder() as rec:
        r = iotctl("stomp", "send", "-p", rec.server.port, "/queue/in", "--replay", _capture(tmp_path, envelope),
                   *extra)
        assert r.exit_code == 0, r
    (headers,) = rec.sends
    return headers


def test_an_amqp_capture_sends_no_amqp_fields(iotctl, tmp_path):
    """Issue 15: replaying an AMQP capture into STOMP sent delivery_tag, exchange and
    routing_key as STOMP headers. Only what crosses is sent: the content type, and the
    correlation id and reply-to AMQP's portable reader gives."""
    headers = _replayed(iotctl, tmp_path, AMQP)
    assert headers.pop("receipt").startswith("s")
    assert headers.pop("correlation-id", None) in (None, "c-9") and headers.pop("reply-to", None) in (None, "answers")
    assert headers == {"destination": "/queue/in", "content-type": "application/json", "content-length": "1"}


def test_an_mqtt_capture_sends_what_crosses(iotctl, tmp_path):
    """MQTT 5: content type, user properties as headers (none STOMP gives a meaning to:
    destination, content-length, receipt are dropped), correlation data, response topic;
    QoS, retain and expiry stay behind. The command line's headers win."""
    headers = _replayed(iotctl, tmp_path, MQTT, "--header", "unit=K")
    headers.pop("receipt")
    assert headers == {"destination": "/queue/in", "content-type": "text/plain", "content-length": "1",
                       "unit": "K", "correlation-id": "c-1", "reply-to": "replies/1"}


def test_a_stomp_capture_keeps_its_headers_but_not_the_delivery(iotctl, tmp_path):
    headers = _replayed(iotctl, tmp_path, STOMP)
    headers.pop("receipt")
    assert headers == {"destination": "/queue/in", "content-type": "text/plain", "content-length": "1",
                       "x-colour": "blue", "persistent": "true", "correlation-id": "c-2", "reply-to": "/queue/r"}


def test_portable_reads_only_user_headers():
    from iotctl.message import foreign

    found = foreign(Message.from_envelope({**STOMP, "payload": "p"}), "mqtt")
    assert (found.content_type, found.headers, found.correlation_id, found.reply_to) == \
           ("text/plain", [("x-colour", "blue")], b"c-2", "/queue/r")


def test_an_amqp_capture_through_the_broker(iotctl, broker, queue, tmp_path):
    name, login = broker
    r = iotctl("stomp", "send", *login, queue, "--replay", _capture(tmp_path, AMQP))
    assert r.exit_code == 0, r
    r = iotctl("stomp", "sub", *login, queue, "-C", "1", "-W", "10", "-o", "json")
    env = json.loads(r.stdout)
    assert env["content_type"] == "application/json" and env["payload"] == "p"
    assert not {"delivery_tag", "exchange", "routing_key", "properties", "headers"} & set(env["meta"]), env["meta"]


def test_a_stomp_capture_crosses_into_mqtt(iotctl, broker, peer, queue, tmp_path):
    """What crosses from STOMP (envelope.portable): content type, user headers, correlation-id
    and reply-to, into MQTT 5 properties; none of STOMP's own headers."""
    name, login = broker
    peer("mosquitto")
    capture = tmp_path / "stomp.jsonl"
    r = iotctl("stomp", "send", *login, queue, "-m", "21.5", "--header", "unit=C", "--header", "correlation-id=c-7",
               "--reply-to", "/queue/answers", "--persistent", "--priority", "3", "--content-type", "text/plain")
    assert r.exit_code == 0, r
    r = iotctl("stomp", "sub", *login, queue, "-C", "1", "-W", "10", "--save", capture)
    assert r.exit_code == 0, r
    topic = f"iotctl-test/stomp-cross/{uuid.uuid4().hex[:8]}"
    assert iotctl("mqtt", "pub", "-t", topic, "-r", "--replay", capture).exit_code == 0
    try:
        r = iotctl("mqtt", "sub", "-t", topic, "-C", "1", "-W", "10", "-o", "json")
    finally:
        iotctl("mqtt", "pub", "-t", topic, "-r", "--null")
    props = json.loads(r.stdout)["meta"]["properties"]
    assert props == {"content_type": "text/plain", "user_properties": [["unit", "C"]],
                     "correlation_data": "c-7", "response_topic": "/queue/answers"}, props


# --------------------------------------------------------------------------- issue 23 item 4: header injection


INPUTS = [
    ("send", "/queue/x", "-m", "x", "--header", "k=v\nevil:injected"),
    ("send", "/queue/x", "-m", "x", "--header", "k\nevil=v"),
    ("send", "/queue/x", "-m", "x", "--content-type", "text/plain\nevil:injected"),
    ("send", "/queue/x", "-m", "x", "--reply-to", "/queue/r\nevil:injected"),
    ("send", "/queue/x\nevil:injected", "-m", "x"),
    ("subscribe", "/queue/x", "--header", "k=v\nevil:injected"),
    ("subscribe", "/queue/x", "--selector", "a = 1\nevil:injected"),
    ("subscribe", "/topic/x", "--durable", "--id", "d\nevil:injected"),
    ("subscribe", "/queue/x\r", "--ack", "auto"),
]


@pytest.mark.parametrize("args", INPUTS)
def test_stomp_1_0_refuses_cr_and_lf_in_every_header(iotctl, args):
    """Issue 23 item 4: STOMP 1.0 has no escapes; `--header "k=v<LF>evil:injected"`
    arrived as a second header. Every header input is refused (exit 2) before connecting."""
    r = iotctl("stomp", *args, "-V", "1.0", "-p", "1")
    assert r.exit_code == 2, r
    assert any(why in r.stderr for why in ("STOMP 1.0 cannot escape", "a destination is one line",
                                           "a STOMP CONNECT frame cannot carry")), r.stderr
    assert len(r.stderr.splitlines()) == 1


@pytest.mark.parametrize("args, version, char", [
    (("--header", "k=v\rx"), "1.1", "CR"),
    (("--header", "k=v\0x"), "1.2", "NUL"),
    (("--header", "k\0=v"), "1.2", "NUL"),
    (("--content-type", "a\0b"), "1.2", "NUL"),
])
def test_what_no_version_can_carry_is_refused(iotctl, args, version, char):
    r = iotctl("stomp", "send", "/queue/x", "-m", "x", *args, "-V", version, "-p", "1")
    assert r.exit_code == 2 and f"contains {char}" in r.stderr, r


@pytest.mark.parametrize("option, value", [("-u", "me\nevil:x"), ("-P", "pw\nevil:x"), ("--vhost", "v\rx")])
def test_connect_headers_are_never_escaped(iotctl, option, value):
    """CONNECT's headers are not escaped in any version: CR, LF and NUL are refused."""
    r = iotctl("stomp", "send", "/queue/x", "-m", "x", option, value, "-p", "1")
    assert r.exit_code == 2 and "which a STOMP CONNECT frame cannot carry" in r.stderr, r
    assert "evil" not in r.stderr or option != "-P"


def test_a_replayed_header_is_checked_too(iotctl, tmp_path):
    capture = _capture(tmp_path, {**STOMP, "meta": {"x-k": "v\nevil:injected"}})
    with Recorder() as rec:
        r = iotctl("stomp", "send", "/queue/x", "--replay", capture, "-V", "1.0", "-p", rec.server.port)
        assert r.exit_code == 2 and "the replayed header 'x-k'" in r.stderr, r
        assert rec.sends == []


def test_stomp_1_2_carries_a_line_feed_as_part_of_one_header(iotctl, broker, queue):
    """1.1 and 1.2 escape what they can: the value arrives whole, no second header."""
    _, login = broker
    r = iotctl("stomp", "send", *login, queue, "-m", "x", "--header", "k=v\nevil:injected", "--header", "a:b=c")
    assert r.exit_code == 0, r
    r = iotctl("stomp", "sub", *login, queue, "-C", "1", "-W", "10", "-o", "json")
    meta = json.loads(r.stdout)["meta"]
    assert meta["k"] == "v\nevil:injected" and meta["a:b"] == "c" and "evil" not in meta


def test_pretty_shows_a_header_with_a_line_feed_or_escape_on_one_line(iotctl, broker, queue):
    """Issue 23 item 5: in pretty output a header value's LF and ESC are escapes, so it
    can neither print a line that looks like a header of its own nor drive the terminal;
    the payload keeps its lines, its ESC escaped too."""
    _, login = broker
    r = iotctl("stomp", "send", *login, queue, "-m", "a\x1b[2Jb\nsecond line", "--header", "k=v\x1b[31m\nevil: x")
    assert r.exit_code == 0, r
    r = iotctl("-o", "pretty", "stomp", "sub", *login, queue, "-C", "1", "-W", "10")
    assert r.exit_code == 0, r
    lines = r.stdout.splitlines()
    assert "  k: v\\x1b[31m\\x0aevil: x" in lines, lines
    assert not any(line.startswith("evil") for line in lines), lines
    assert lines[-2:] == ["a\\x1b[2Jb", "second line"], lines
    assert "\x1b" not in r.stdout


# --------------------------------------------------------------------------- issue 23 item 8: --failed replays alone


@pytest.mark.parametrize("n", [2, 3000])
def test_failed_file_replays_on_its_own(iotctl, broker, queue, tmp_path, n):
    """The file keeps each message's destination and the command line's headers:
    `--replay FILE` alone sends it again (it said 'no destination'). With 3,000 lines
    most were never sent when the refusal came: they keep the headers too (they had
    none, and replayed without them)."""
    name, login = broker
    reader = BROKERS[name][2]
    failed = tmp_path / "failed.jsonl"
    lines = [f"m{i}" for i in range(n)]
    r = iotctl("stomp", "send", *reader, queue, "-l", "--failed", failed, "--header", "x-k=v",
               "--content-type", "text/plain", input="".join(x + "\n" for x in lines))
    # RabbitMQ closes the connection right after its ERROR: with 3,000 lines still being
    # written, the reset can reach the client before the ERROR frame is read (TCP drops
    # what was unread), so the run ends as a lost connection (exit 3) instead of a
    # refusal (exit 6); either way nothing was acknowledged and the file keeps it all
    assert r.exit_code == 6 or (n > 2 and name == "rabbitmq" and r.exit_code == 3 and "connection" in r.stderr), r
    kept = [json.loads(line) for line in failed.read_text().splitlines()]
    assert [(m["protocol"], m["address"], m["payload"]) for m in kept] == [("stomp", queue, x) for x in lines]
    assert all(m["meta"] == {"x-k": "v"} and m["content_type"] == "text/plain" for m in kept)
    r = iotctl("stomp", "send", *login, "--replay", failed)
    assert r.exit_code == 0, r
    r = iotctl("stomp", "sub", *login, queue, "-C", n, "-W", "30", "-o", "jsonl")
    got = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(m["payload"], m["meta"]["x-k"], m["content_type"]) for m in got] == [(x, "v", "text/plain") for x in lines]


# --------------------------------------------------------------------------- issue 23 item 9: the trace


@pytest.mark.parametrize("password", ["partOne\\partTwo", "it's\"partTwo", "a:b\\\\partTwo"])
@pytest.mark.parametrize("name", list(BROKERS))
def test_trace_masks_a_password_with_a_backslash(iotctl, peer, name, password):
    """`-d` showed 'passcode:****\\\\partTwo': the password is masked by its value now."""
    service, login, _ = BROKERS[name]
    peer(service)
    user = login[login.index("-u") + 1]
    login = [a for a in login if a not in ("-P", login[login.index("-P") + 1])]
    r = iotctl("-d", "stomp", "send", "/queue/iotctl-trace", "-m", "x", *login, "-P", password)
    assert r.exit_code in (3, 4), r  # refused (4), or RabbitMQ's silent close on an escape it does not know (3)
    assert f"login:{user}" in r.stderr and "passcode:****" in r.stderr, r.stderr
    assert "partTwo" not in r.stderr, r.stderr


def test_rabbitmq_closes_on_a_backslash_in_connect(iotctl, peer):
    """A RabbitMQ quirk worth a hint: it reads a backslash in CONNECT (which STOMP never
    escapes) as an escape, and closes the connection without a word on an unknown one."""
    peer("rabbitmq-stomp")
    r = iotctl("stomp", "send", "/queue/x", "-m", "x", *RABBIT[:4], "-u", "iotctl-stomp", "-P", "part\\two")
    assert r.exit_code == 3, r
    assert "without answering CONNECT" in r.stderr and "hint: -u/-P/--vhost hold a backslash" in r.stderr


# --------------------------------------------------------------------------- in a bridge


def test_a_sink_sends_a_message_to_its_own_address_else_to_the_urls(tmp_path):
    """The Sender contract: a message with an address goes there, one without to the URL's."""
    with Recorder() as rec:
        with resolver.sink(f"stomp://127.0.0.1:{rec.server.port}/queue/fixed") as sink:
            assert sink.address == "/queue/fixed"
            send.run(sink, [Message("", "", b"a"), Message("", "/queue/own", b"b"),
                            Message("mqtt", "", b"c", meta={"qos": 1, "retain": False})], "send", 5)
        assert [h["destination"] for h in rec.sends] == ["/queue/fixed", "/queue/own", "/queue/fixed"]
        assert "qos" not in rec.sends[2] and "retain" not in rec.sends[2]


def _bridge(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "iotctl", "bridge", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=clean_env())


def test_bridge_a_stomp_queue_into_mqtt(iotctl, broker, peer, queue):
    """STOMP as a bridge's source: client acks once MQTT confirmed (at least once), the
    user headers, content type and correlation-id as MQTT 5 properties."""
    name, login = broker
    peer("mosquitto-private")
    fill(iotctl, login, queue, range(20), "--header", "x-site=lab", "--content-type", "text/plain",
         "--header", "correlation-id=c-1")
    topic = f"iotctl-test/stomp-bridge/{uuid.uuid4().hex[:8]}"
    sub = subprocess.Popen([sys.executable, "-m", "iotctl", "mqtt", "sub", "-p", "11883", "-t", topic, "-q", "1",
                            "-C", "20", "-W", "30", "-o", "jsonl"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=clean_env())
    assert b"subscribed" in sub.stderr.readline()
    bridge = _bridge(url(name, queue, ack="client"), f"mqtt://127.0.0.1:11883/{topic}?qos=1", "-C", "20", "-W", "30")
    out, err = bridge.communicate(timeout=60)
    assert bridge.returncode == 0, err
    assert b"(at least once)" in err and b"carried 20" in err, err
    got = [json.loads(line) for line in sub.communicate(timeout=30)[0].splitlines()]
    assert [m["payload"] for m in got] == [str(i) for i in range(20)]
    props = got[0]["meta"]["properties"]
    assert props["user_properties"] == [["x-site", "lab"]] and props["content_type"] == "text/plain"
    assert props["correlation_data"] == "c-1"
    assert drain(iotctl, login, queue, idle="0.5") == []


def test_bridge_mqtt_into_a_stomp_queue(iotctl, broker, peer, queue):
    name, login = broker
    peer("mosquitto-private")
    n = uuid.uuid4().hex[:8]
    src = f"iotctl-test/to-stomp/{n}"
    bridge = _bridge(f"mqtt://127.0.0.1:11883/{src}/#?qos=1&client_id=br-{n}", url(name, queue), "-C", "10",
                     "-W", "30")
    assert b"bridging" in bridge.stderr.readline()
    r = iotctl("mqtt", "pub", "-p", "11883", "-t", f"{src}/a", "-q", "1", "-l", "--user-property", "unit=C",
               "--content-type", "text/plain", input="".join(f"{i}\n" for i in range(10)))
    assert r.exit_code == 0, r
    _, err = bridge.communicate(timeout=60)
    assert bridge.returncode == 0, err
    r = iotctl("stomp", "sub", *login, queue, "-C", "10", "-W", "10", "-o", "jsonl")
    got = [json.loads(line) for line in r.stdout.splitlines()]
    assert [m["payload"] for m in got] == [str(i) for i in range(10)]
    assert got[0]["content_type"] == "text/plain" and got[0]["meta"]["unit"] == "C"
    assert not {"qos", "retain", "properties"} & set(got[0]["meta"]), got[0]["meta"]

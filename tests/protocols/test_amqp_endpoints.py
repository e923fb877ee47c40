"""AMQP endpoints by URL (issue 15) against the real RabbitMQ: iotctl.resolver opens
amqp[s]:// URLs through the same factories and checks as `amqp consume`/`amqp
publish`; the consumer acknowledges exactly the messages it is given, nacks, ignores
tokens of an earlier connection; the publisher adopts another protocol's message in
one place."""

from __future__ import annotations

import json

import pytest

from iotctl import resolver, send
from iotctl.errors import UsageError
from iotctl.message import Message
from tests.helpers import wait_until
from tests.protocols.test_amqp import depth, names, queue, rmq  # noqa: F401 (fixtures)

BASE = "amqp://guest:guest@127.0.0.1:5672/%2f"


def take(source, n: int, timeout: float = 10) -> list[Message]:
    got: list[Message] = []
    wait_until(lambda: got.extend(source.poll(0.2) or []) or len(got) >= n, timeout, f"{n} messages")
    assert len(got) == n, [m.payload for m in got]
    return got


def put(url: str, *payloads: bytes | Message) -> None:
    msgs = [p if isinstance(p, Message) else Message("", "", p) for p in payloads]
    with resolver.sink(url) as sink:
        result = send.run(sink, msgs, "publish")
    assert result.acknowledged == len(msgs)


# --------------------------------------------------------------------------- URL forms


def test_a_queue_url_is_a_source_and_a_sink(iotctl, names):
    q = queue(iotctl, names())
    put(f"{BASE}?queue={q}", b"one", b"two", b"three")
    with resolver.source(f"{BASE}?queue={q}&prefetch=10") as source:
        assert source.where == "amqp://127.0.0.1:5672 (vhost '/')"
        assert source.delivery == "at-least-once"
        got = take(source, 3)
        assert [m.payload for m in got] == [b"one", b"two", b"three"]
        assert {m.protocol for m in got} == {"amqp"} and got[0].address == q
        source.ack(got)
    assert depth(iotctl, q) == 0


def test_exchange_and_routing_key_are_the_tap_form_as_a_source_and_the_target_as_a_sink(iotctl, names):
    ex = names("exchange")
    assert iotctl("amqp", "declare", "exchange", ex, "-t", "topic").exit_code == 0
    with resolver.source(f"{BASE}?exchange={ex}&routing_key=a.*") as source:
        assert source.queues[0].startswith("amq.gen-")  # a throw-away queue of its own
        put(f"{BASE}?exchange={ex}&routing_key=b.1", b"not this")
        put(f"{BASE}?exchange={ex}&routing_key=a.1&persistent=true&content_type=text/plain", b"this")
        (msg,) = take(source, 1)
        assert msg.payload == b"this" and msg.meta["exchange"] == ex and msg.meta["routing_key"] == "a.1"
        assert msg.meta["properties"] == {"content_type": "text/plain", "delivery_mode": 2}
        source.ack([msg])


def test_the_path_is_the_vhost_and_url_options_get_the_commands_checks(iotctl, names):
    q = names()
    user = ["-u", "iotctl", "-P", "iotctl-secret"]
    assert iotctl("amqp", "declare", "queue", q, "--vhost", "iotctl-test", *user).exit_code == 0
    try:
        put(f"amqp://iotctl:iotctl-secret@127.0.0.1/iotctl-test?queue={q}", b"in the other vhost")
        assert depth(iotctl, q, "--vhost", "iotctl-test", *user) == 1
    finally:
        iotctl("amqp", "delete", "queue", q, "--vhost", "iotctl-test", *user)
    for url, role, why in [
        (f"{BASE}?queue=q&prefetch=lots", "source", "prefetch: 'lots' is not a valid integer"),
        (f"{BASE}?queue=q&prefetch=70000", "source", "prefetch: 70000 is not in the range 0<=x<=65535"),
        (f"{BASE}?queue=q&bogus=1", "source", "unknown option 'bogus'"),
        (f"{BASE}?routing_key=k&confirm=maybe", "sink", "confirm='maybe': give true or false"),
        (f"{BASE}?ack=later&queue=q", "source", "ack: 'later' is not one of"),
    ]:
        with pytest.raises(UsageError) as caught:
            resolver.resolve(url, role)
        assert why in caught.value.why, caught.value
        assert caught.value.what == f"bad URL {url.replace('guest:guest', 'guest:****')!r}"
    for url, role, why in [
        (BASE, "source", "give QUEUE... (in a URL: ?queue=Q)"),
        (f"{BASE}?queue=q&exchange=x", "source", "only make sense with --declare"),
        (f"{BASE}?queue=q&routing_key=k", "sink", "publishes through the default exchange"),
        (f"{BASE}?queue={'q' * 256}", "source", "is 256 bytes; AMQP allows at most 255"),
        (f"{BASE}?queue=q&requeue=true&ack=auto", "source", "contradict each other"),
    ]:
        with pytest.raises(UsageError) as caught:
            resolver.source(url) if role == "source" else resolver.sink(url)
        assert why in caught.value.why, caught.value


def test_the_tap_form_of_a_direct_exchange_needs_a_key(rmq):
    with pytest.raises(UsageError) as caught:
        with resolver.source(f"{BASE}?exchange=amq.direct"):
            pass
    assert caught.value.what == "consume --declare -e amq.direct: exchange 'amq.direct' is a direct exchange"


# --------------------------------------------------------------------------- exact acknowledgements


def test_ack_acknowledges_exactly_the_messages_given(iotctl, names):
    q = queue(iotctl, names())
    put(f"{BASE}?queue={q}", *[b"m%d" % i for i in range(5)])
    url = f"{BASE}?queue={q}"
    with resolver.source(url) as source:
        got = take(source, 5)
        source.ack(got[1:3])  # not the first: no prefix is wholly acknowledged
    assert depth(iotctl, q) == 5
    with resolver.source(url) as source:
        got = take(source, 5)
        assert [m.payload for m in got] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
        source.ack([got[2], got[0]])  # m0 and m2: only m0 is a prefix
        source.ack([got[1]])          # now m0..m2
        source.ack([got[4]])          # m4 waits for m3
    assert depth(iotctl, q) == 2
    r = iotctl("amqp", "get", q, "-C", "2", "-o", "jsonl")
    assert [json.loads(line)["payload"] for line in r.stdout.splitlines()] == ["m3", "m4"]


def test_nack_gives_messages_back_at_once(iotctl, names):
    q = queue(iotctl, names())
    put(f"{BASE}?queue={q}", b"a", b"b")
    with resolver.source(f"{BASE}?queue={q}") as source:
        a, b = take(source, 2)
        source.nack([a])
        source.ack([b])  # b after a nacked a: the prefix passes the given-back one
        (again,) = take(source, 1)
        assert again.payload == b"a" and again.meta["redelivered"] is True
        source.ack([again])
    assert depth(iotctl, q) == 0


def test_tokens_of_an_earlier_connection_are_ignored(iotctl, names):
    q = queue(iotctl, names())
    put(f"{BASE}?queue={q}", b"x", b"y", b"z")
    with resolver.source(f"{BASE}?queue={q}") as source:
        old = take(source, 3)
        source.reconnect()  # as after a lost connection: the new one gets them again, tags 1..3 again
        new = take(source, 3)
        assert [m.meta["delivery_tag"] for m in new] == [m.meta["delivery_tag"] for m in old]
        source.ack(old)  # the old connection's: must not acknowledge the new deliveries
        source.nack(old)
    assert depth(iotctl, q) == 3


# --------------------------------------------------------------------------- what crosses


def test_a_foreign_message_brings_only_what_crosses(iotctl, names):
    q = queue(iotctl, names())
    mqtt = Message("mqtt", q, b"21.5", None, {
        "qos": 1, "retain": True, "properties": {
            "content_type": "text/plain", "response_topic": "replies/t1", "correlation_data": "0x00ff",
            "message_expiry_interval": 60, "payload_format_indicator": 1,
            "user_properties": [["site", "lab"], ["floor", "2"]]}})
    unknown = Message("nonesuch", q, b"?", "application/json",
                      {"headers": {"junk": "1"}, "properties": {"reply_to": "junk", "priority": 9}, "exchange": "junk"})
    native = Message("amqp", q, b"native", "text/csv", {
        "exchange": "", "headers": {"kept": 1}, "properties": {"content_type": "text/csv", "priority": 3,
                                                              "message_id": "m-1"}})
    put(f"{BASE}?routing_key={q}", mqtt, unknown, native)
    r = iotctl("amqp", "get", q, "-C", "3", "-o", "jsonl")
    a, b, c = [json.loads(line) for line in r.stdout.splitlines()]
    assert a["payload"] == "21.5" and a["meta"]["exchange"] == ""
    assert a["meta"]["properties"] == {"content_type": "text/plain", "reply_to": "replies/t1",
                                       "correlation_id": "0x00ff"}
    assert a["meta"]["headers"] == {"site": "lab", "floor": "2"}
    assert b["meta"]["properties"] == {"content_type": "application/json"} and b["meta"]["headers"] == {}
    assert c["meta"]["properties"] == {"content_type": "text/csv", "priority": 3, "message_id": "m-1"}
    assert c["meta"]["headers"] == {"kept": 1}


def test_replaying_an_mqtt_capture_sends_what_crosses_and_nothing_else(iotctl, names, tmp_path):
    q = queue(iotctl, names())
    capture = tmp_path / "mqtt.jsonl"
    capture.write_text(json.dumps({
        "ts": "2026-01-02T03:04:05+00:00", "protocol": "mqtt", "address": "sensors/t1", "payload": "21.5",
        "encoding": "utf-8", "content_type": "application/json",
        "meta": {"qos": 1, "retain": False, "properties": {
            "content_type": "application/json", "correlation_data": "req-7", "response_topic": "replies/t1",
            "message_expiry_interval": 5, "user_properties": [["unit", "C"]]}}}) + "\n")
    r = iotctl("amqp", "publish", "-r", q, "--replay", str(capture), "--header", "via=iotctl")
    assert r.exit_code == 0, r
    env = json.loads(iotctl("amqp", "get", q, "-o", "json").stdout)
    assert env["content_type"] == "application/json"
    assert env["meta"]["properties"] == {"content_type": "application/json", "correlation_id": "req-7",
                                         "reply_to": "replies/t1"}
    assert env["meta"]["headers"] == {"unit": "C", "via": "iotctl"}


# --------------------------------------------------------------------------- the bridge over these endpoints


def test_bridge_from_a_queue_into_a_queue(iotctl, names):
    q1, q2 = queue(iotctl, names()), queue(iotctl, names())
    put(f"{BASE}?queue={q1}", b"1", b"2", b"3", b"4")
    r = iotctl("bridge", f"{BASE}?queue={q1}", f"{BASE}?queue={q2}", "-C", "3", "-W", "30")
    assert r.exit_code == 0, r
    assert "(at least once)" in r.stderr
    assert iotctl("amqp", "get", q2, "-C", "3").stdout == "1\n2\n3\n"
    assert depth(iotctl, q1) == 1  # the fourth was never taken: it stays


def test_bridge_from_mqtt_into_an_exchange_maps_the_topic_to_a_routing_key(iotctl, names, peer):
    import subprocess
    import sys
    import uuid

    from tests.helpers import clean_env
    from tests.protocols.test_amqp import wait_status

    peer("mosquitto")
    root = f"iotctl-test-{uuid.uuid4().hex[:8]}"
    q = queue(iotctl, names())
    assert iotctl("amqp", "bind", "queue", q, "-e", "amq.topic", "-r", f"{root}.#").exit_code == 0
    bridge = subprocess.Popen([sys.executable, "-m", "iotctl", "bridge", f"mqtt://127.0.0.1/{root}/#?qos=1",
                               f"{BASE}?exchange=amq.topic", "-C", "1", "-W", "30"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    try:
        wait_status(bridge, "bridging")
        r = iotctl("mqtt", "pub", "-t", f"{root}/dev1/t", "-q", "1", "-m", "21.5",
                   "--user-property", "site=lab", "--content-type", "text/plain")
        assert r.exit_code == 0, r
        out, err = bridge.communicate(timeout=30)
        assert bridge.returncode == 0, err
    finally:
        if bridge.poll() is None:
            bridge.kill()
    env = json.loads(iotctl("amqp", "get", q, "-o", "json").stdout)
    assert env["payload"] == "21.5" and env["meta"]["exchange"] == "amq.topic"
    assert env["meta"]["routing_key"] == f"{root}.dev1.t"
    assert env["meta"]["headers"] == {"site": "lab"}
    assert env["meta"]["properties"] == {"content_type": "text/plain"}

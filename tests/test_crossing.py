"""What crosses from one protocol to another (issue 15, item 5): a message as each
protocol captures it (its own meta: content type, user headers/properties, correlation
id, reply-to, and fields only it understands) is sent through each other protocol's
sink to the real peer and read back through that protocol's source. Whatever both
sides carry must arrive unchanged (payload bytes, content type, headers in order,
correlation id, reply-to); nothing else of the foreign meta may arrive as a header."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from iotctl import resolver, send
from iotctl.message import NOTHING, Message, foreign
from iotctl.registry import portable_reader
from tests.conftest import CERTS
from tests.helpers import clean_env, free_port, wait_until

XDIST_GROUP = "frank-grace"  # the XMPP accounts this module and test_bridge_pairs log in as

CT = "application/json"
HEADERS = [("site", "lab"), ("unit", "C")]
CORR = b"corr-1"
REPLY = "replies"
PAYLOAD = b'{"t": 21.5, "note": "\xc3\xbc"}'

# what each protocol carries of the portable fields: (content type, headers, correlation id, reply-to)
CARRIES = {
    "mqtt": (True, True, True, True), "amqp": (True, True, True, True), "stomp": (True, True, True, True),
    "amqp1": (True, True, True, True), "http": (True, True, True, True), "xmpp": (True, True, True, False),
    "coap": (True, False, False, False), "mqttsn": (False, False, False, False),
}

# a message as each protocol's receiver records it: portable fields, and some of the
# protocol's own fields that must never cross as headers
CAPTURES = {
    "mqtt": Message("mqtt", "a/b", PAYLOAD, CT, {"qos": 1, "retain": True, "properties": {
        "content_type": CT, "user_properties": [list(p) for p in HEADERS], "correlation_data": "corr-1",
        "response_topic": REPLY, "message_expiry_interval": 60}}),
    "amqp": Message("amqp", "k", PAYLOAD, CT, {"exchange": "ex", "routing_key": "k", "delivery_tag": 7,
                                              "redelivered": True, "properties": {
                                                  "content_type": CT, "correlation_id": "corr-1", "reply_to": REPLY,
                                                  "delivery_mode": 2, "priority": 3},
                                              "headers": dict(HEADERS)}),
    "stomp": Message("stomp", "/queue/a", PAYLOAD, CT, {"destination": "/queue/a", "message-id": "m-1",
                                                        "subscription": "0", "ack": "a-1", "content-type": CT,
                                                        **dict(HEADERS), "correlation-id": "corr-1",
                                                        "reply-to": REPLY, "persistent": "true"}),
    "amqp1": Message("amqp1", "q", PAYLOAD, CT, {"durable": True, "priority": 7, "properties": {
        "message_id": "m-1", "correlation_id": "corr-1", "reply_to": REPLY, "subject": "s"},
        "headers": dict(HEADERS)}),
    "xmpp": Message("xmpp", "frank@localhost/r", PAYLOAD, None, {"type": "chat", "thread": "corr-1", "headers": [
        ["Content-Type", CT], *[list(p) for p in HEADERS]]}),
    "http": Message("http", "http://127.0.0.1/x", PAYLOAD, CT, {"method": "POST", "path": "/x", "headers": [
        ["Content-Type", CT], *[list(p) for p in HEADERS], ["X-Correlation-ID", "corr-1"], ["X-Reply-To", REPLY],
        ["Host", "127.0.0.1"], ["Content-Length", "30"]]}),
    "coap": Message("coap", "coap://127.0.0.1/x", PAYLOAD, CT, {"code": "2.05 Content", "type": "ACK", "mid": 9,
                                                               "options": {"Content-Format": 50}}),
    "mqttsn": Message("mqttsn", "a/b", PAYLOAD, None, {"qos": 1, "retain": False, "topic_id": 5}),
}
# a broker that keeps headers but not their order (RabbitMQ's STOMP: a header table)
UNORDERED = {"stomp"}
JUNK = {"qos", "retain", "delivery_tag", "exchange", "routing_key", "redelivered", "message-id", "subscription",
        "ack", "persistent", "priority", "durable", "subject", "topic_id", "type", "mid", "code", "thread",
        "method", "status", "host", "content-length", "message_expiry_interval", "delivery_mode"}


class Target:
    """A protocol's sink and source on one address of the real peer."""

    def __init__(self, name: str, sink: str, source: str, first_source: bool = True, queue: str | None = None):
        self.name, self.sink_url, self.source_url, self.first_source = name, sink, source, first_source
        self.queue = queue  # a RabbitMQ queue it made (STOMP and AMQP 1.0 make durable ones): deleted after


def _iotctl(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "iotctl", *args], capture_output=True, env=clean_env(), timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def coap_device():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "iotctl", "coap", "serve", "-p", str(port), "--quiet"],
                            env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: subprocess.run([sys.executable, "-m", "iotctl", "coap", "get",
                                       f"coap://127.0.0.1:{port}/time", "-W", "1"], capture_output=True,
                                      env=clean_env()).returncode == 0, 20, "coap serve")
    yield port
    proc.terminate()
    proc.wait(10)


def _target(name: str, coap_port: int) -> Target:
    n = uuid.uuid4().hex[:10]
    if name == "mqtt":
        url = f"mqtt://127.0.0.1:11883/crossing/{n}?qos=1"
        return Target(name, url, url)
    if name == "amqp":
        _iotctl("amqp", "declare", "queue", f"crossing-{n}", "--auto-delete")
        url = f"amqp://guest:guest@127.0.0.1/%2f?queue=crossing-{n}"
        return Target(name, url, url, queue=f"crossing-{n}")
    if name == "stomp":
        url = f"stomp://guest:guest@127.0.0.1:61613/queue/crossing-{n}"
        return Target(name, url, url, queue=f"crossing-{n}")
    if name == "amqp1":
        url = f"amqp1://guest:guest@127.0.0.1:5672//queue/crossing-{n}"
        return Target(name, url, url, queue=f"crossing-{n}")
    if name == "xmpp":
        tls = f"server=127.0.0.1:5222&cafile={CERTS / 'ca.crt'}"
        return Target(name, f"xmpp://frank:frank-pw@localhost/grace@localhost?{tls}",
                      f"xmpp://grace:grace-pw@localhost/frank@localhost?{tls}")
    if name == "http":
        port = free_port(__import__("socket").SOCK_STREAM)
        return Target(name, f"http://127.0.0.1:{port}/in#method=post", f"http+listen://127.0.0.1:{port}/in")
    if name == "coap":
        url = f"coap://127.0.0.1:{coap_port}/store/crossing-{n}"
        return Target(name, url + "#method=put", url, first_source=False)
    raise AssertionError(name)


def _carry(target: Target, msg: Message) -> Message:
    """Send `msg` through the target's sink; what its source receives."""
    def sent() -> None:
        with resolver.sink(target.sink_url) as sender:
            send.run(sender, [msg.copy(address="")], "send", 20.0)

    source = resolver.source(target.source_url)
    if not target.first_source:
        sent()
    with source:
        if target.first_source:
            if target.name == "http":  # the listener must be up: send from a thread
                import threading

                t = threading.Thread(target=sent)
                t.start()
            else:
                sent()
        got: list[Message] = []
        wait_until(lambda: got.extend(source.poll(0.5) or []) or got, 20, f"the message through {target.name}")
        source.ack(got[:1])
        if target.name == "http":
            t.join(20)
        return got[0]


SOURCES = list(CAPTURES)
TARGETS = ["mqtt", "amqp", "stomp", "amqp1", "xmpp", "http", "coap"]


@pytest.mark.parametrize("target_name", TARGETS)
def test_what_crosses_into_each_protocol(peer, coap_device, target_name):
    for name in ("mosquitto-private", "rabbitmq", "rabbitmq-stomp", "prosody"):
        peer(name)
    for source_name in SOURCES:
        original = CAPTURES[source_name]
        target = _target(target_name, coap_device)
        try:
            got = _carry(target, original)
        finally:
            if target.queue is not None:
                _iotctl("amqp", "delete", "queue", target.queue, "--if-exists")
        assert got.payload == PAYLOAD, (source_name, target_name)
        sent = foreign(original, target_name) or portable_reader(source_name)(original)
        back = portable_reader(target_name)(got)
        can = CARRIES[target_name]
        had = CARRIES[source_name]
        where = f"{source_name} -> {target_name}"
        if can[0] and had[0]:
            assert back.content_type == CT, (where, back)
        if can[1]:
            expected = HEADERS if had[1] else []
            got_headers = [(k, v) for k, v in back.headers]
            if target_name in UNORDERED:
                got_headers, expected = sorted(got_headers), sorted(expected)
            assert got_headers == expected, (where, back.headers)
        if can[2]:
            assert back.correlation_id == (CORR if had[2] else None), (where, back)
        if can[3]:
            reply = back.reply_to
            if target_name == "stomp" and reply:  # RabbitMQ's STOMP names a bare reply-to /reply-queue/NAME
                reply = reply.removeprefix("/reply-queue/")
            assert reply == (REPLY if had[3] else None), (where, back)
        assert not {k.lower() for k, _ in back.headers} & JUNK, (where, back.headers)
        del sent


def test_a_message_that_brings_nothing_across_is_the_shared_nothing():
    """A bridge asks for every message: a plain MQTT message (no MQTT 5 properties)
    finds at once that nothing crosses; an envelope's own content type still does, and
    the shared NOTHING is never changed."""
    plain = Message("mqtt", "a/b", b"x", None, {"qos": 1, "retain": False})
    assert foreign(plain, "amqp") is NOTHING
    typed = Message("mqtt", "a/b", b"x", "text/plain", {"qos": 1, "retain": False})
    found = foreign(typed, "amqp")
    assert found is not NOTHING and found.content_type == "text/plain"
    assert (NOTHING.content_type, NOTHING.headers, NOTHING.correlation_id, NOTHING.reply_to) == (None, [], None, None)
    assert foreign(plain, "mqtt") is None  # native

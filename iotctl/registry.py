"""The one table of protocols. Adding a protocol is one folder under protocols/ and
one entry here; nothing else outside protocols/ names a protocol.

Nothing is imported from here: modules are named as strings and loaded on use.
"""

from __future__ import annotations

import functools


class Protocol:
    """name: the group's name and the profile table's; group: "module:attribute" of its
    click group; help: the line `iotctl --help` shows; header: the meta keys the pretty
    header shows, in order (a true boolean shows as its name); details: meta keys pretty
    output shows only with -d; renderers: content type -> "module:function" that turns
    a payload into a rich renderable (see output/renderers.py).

    URL endpoints (README, "Endpoints by URL"): schemes: the URL schemes that open this
    protocol; endpoints: the module with `SCHEMES`, `source(target)` (a Receiver) and
    `sink(target)` (a Sender), built from a URL plus the profile table, without click;
    source_command / sink_command: the commands whose options the URL's parameters are
    (the same names as profile keys and the same checks), or a dict scheme -> command
    when the schemes of one protocol open different commands; options_in: "query", or
    "fragment" when the URL's query belongs to the peer (CoAP, HTTP); portable:
    "module:function" reading a message's content type, headers, correlation id and
    reply-to (message.Portable) from this protocol's meta; separator: what splits an
    address into a tree (watch); express: "module:function" of the protocol's express
    lane (iotctl/express.py), which runs a one-shot command line without click; check:
    "module:function" filling a checking.Report for `iotctl check URL`; libraries: the
    top-level modules of the protocol's library (only its client.py/server.py import
    them; the import checks of the tests read them here); retained: for a
    protocol whose broker keeps a last message per address, the module `watch` asks
    `flag(msg)` (was this message a retained one) and `clear(arguments, address,
    timeout)` (clear it, on a connection of its own built from the source command's
    arguments)."""

    __slots__ = ("name", "group", "help", "header", "details", "renderers", "schemes", "endpoints",
                 "source_command", "sink_command", "options_in", "portable", "separator", "express", "check",
                 "retained", "libraries")

    def __init__(self, name: str, group: str, help: str, header: tuple[str, ...] = (),
                 details: tuple[str, ...] = (), renderers: dict[str, str] | None = None,
                 schemes: tuple[str, ...] = (), endpoints: str | None = None,
                 source_command: str | dict | None = None, sink_command: str | dict | None = None,
                 options_in: str = "query", portable: str | None = None, separator: str = "/",
                 express: str | None = None, check: str | None = None, retained: str | None = None,
                 libraries: tuple[str, ...] = ()):
        self.name, self.group, self.help, self.header = name, group, help, header
        self.details = details
        self.renderers = renderers or {}
        self.schemes, self.endpoints = schemes, endpoints
        self.source_command, self.sink_command = source_command, sink_command
        self.options_in, self.portable, self.separator = options_in, portable, separator
        self.express, self.check = express, check
        self.retained = retained
        self.libraries = libraries


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("mqtt", "iotctl.protocols.mqtt.cli:group",
             "MQTT: publish, subscribe, request/response, retained messages.",
             header=("qos", "retain"),
             schemes=("mqtt", "mqtts", "ws", "wss"), endpoints="iotctl.protocols.mqtt.endpoints",
             source_command="subscribe", sink_command="publish",
             portable="iotctl.protocols.mqtt.envelope:portable", express="iotctl.protocols.mqtt.express:pub",
             check="iotctl.protocols.mqtt.check:check", retained="iotctl.protocols.mqtt.retained",
             libraries=("paho",)),
    Protocol("coap", "iotctl.protocols.coap.cli:group",
             "CoAP: get/put/post/delete/fetch/patch, observe, discover, serve a simulated device, proxy to and from HTTP.",
             header=("code", "observe", "location"), details=("type", "mid", "token", "options"),
             renderers={"application/link-format": "iotctl.protocols.coap.linkformat:render"},
             schemes=("coap", "coaps", "coap+tcp", "coaps+tcp", "coap+ws", "coaps+ws"),
             endpoints="iotctl.protocols.coap.endpoints", source_command="observe", sink_command="post",
             options_in="fragment", portable="iotctl.protocols.coap.envelope:portable",
             check="iotctl.protocols.coap.check:check", express="iotctl.protocols.coap.express:request",
             libraries=("aiocoap",)),
    Protocol("mqttsn", "iotctl.protocols.mqttsn.cli:group",
             "MQTT-SN over UDP: publish, subscribe, a gateway to any MQTT broker, a packet dump.",
             header=("qos", "retain", "topic_id", "topic_id_type"),
             schemes=("mqttsn",), endpoints="iotctl.protocols.mqttsn.endpoints",
             source_command="subscribe", sink_command="publish",
             portable="iotctl.protocols.mqttsn.envelope:portable", check="iotctl.protocols.mqttsn.check:check",
             express="iotctl.protocols.mqttsn.express:pub", libraries=()),
    Protocol("amqp", "iotctl.protocols.amqp.cli:group",
             "AMQP 0-9-1 (RabbitMQ): publish with confirms, consume, get, tap, declare, bind, request.",
             header=("exchange", "routing_key", "redelivered"), details=("delivery_tag",),
             schemes=("amqp", "amqps"), endpoints="iotctl.protocols.amqp.endpoints",
             source_command="consume", sink_command="publish",
             portable="iotctl.protocols.amqp.envelope:portable", separator=".",
             check="iotctl.protocols.amqp.check:check",
             libraries=("pika",)),
    Protocol("amqp1", "iotctl.protocols.amqp1.cli:group",
             "AMQP 1.0 (OASIS; RabbitMQ, ActiveMQ, Artemis, Qpid, Azure): send and receive with outcomes.",
             header=("durable", "priority", "delivery_count"),
             schemes=("amqp1", "amqp1s"), endpoints="iotctl.protocols.amqp1.endpoints",
             source_command="receive", sink_command="send",
             portable="iotctl.protocols.amqp1.envelope:portable", check="iotctl.protocols.amqp1.check:check",
             libraries=("proton", "cproton")),
    Protocol("stomp", "iotctl.protocols.stomp.cli:group",
             "STOMP 1.0-1.2 (RabbitMQ, ActiveMQ): send with receipts, subscribe with acks.",
             header=("subscription", "message-id"),
             schemes=("stomp", "stomp+ssl"), endpoints="iotctl.protocols.stomp.endpoints",
             source_command="subscribe", sink_command="send",
             portable="iotctl.protocols.stomp.envelope:portable", check="iotctl.protocols.stomp.check:check",
             libraries=("stomp",)),
    Protocol("xmpp", "iotctl.protocols.xmpp.cli:group",
             "XMPP: messages, presence, roster, blocking, diagnostics; XMPP-IoT sensor readouts and control.",
             header=("field", "type", "unit", "subject", "thread", "delay", "presence", "show"),
             schemes=("xmpp", "xmpp+iot"), endpoints="iotctl.protocols.xmpp.endpoints",
             source_command={"xmpp": "listen", "xmpp+iot": "sensor"}, sink_command={"xmpp": "send"},
             portable="iotctl.protocols.xmpp.envelope:portable", check="iotctl.protocols.xmpp.check:check",
             libraries=("slixmpp",)),
    Protocol("http", "iotctl.protocols.http.cli:group",
             "HTTP/REST: get/post/put/patch/delete, event and NDJSON streams, a webhook listener.",
             header=("method", "status", "event", "id"), details=("reason", "timing", "http_version", "remote"),
             schemes=("http", "https", "http+listen"), endpoints="iotctl.protocols.http.endpoints",
             source_command={"http": "get", "https": "get", "http+listen": "listen"}, sink_command="request",
             options_in="fragment", portable="iotctl.protocols.http.envelope:portable",
             express="iotctl.protocols.http.express:get", check="iotctl.protocols.http.check:check",
             libraries=("h11",)),
)}


def names() -> tuple[str, ...]:
    return tuple(PROTOCOLS)


def get(name: str) -> Protocol | None:
    return PROTOCOLS.get(name)


def header_keys(name: str) -> tuple[str, ...]:
    p = PROTOCOLS.get(name)
    return p.header if p is not None else ()


def detail_keys(name: str) -> tuple[str, ...]:
    p = PROTOCOLS.get(name)
    return p.details if p is not None else ()


def libraries() -> set[str]:
    """Every protocol library's top-level module names."""
    return {lib for p in PROTOCOLS.values() for lib in p.libraries}


def by_scheme(scheme: str) -> Protocol | None:
    """The protocol a URL scheme opens."""
    scheme = scheme.lower()
    for p in PROTOCOLS.values():
        if scheme in p.schemes:
            return p
    return None


def all_schemes() -> list[str]:
    return [s for p in PROTOCOLS.values() for s in p.schemes]


@functools.lru_cache(maxsize=None)
def portable_reader(name: str):
    """The function reading a `name` message's portable fields, or None (looked up once:
    a bridge asks for every message)."""
    p = PROTOCOLS.get(name)
    if p is None or p.portable is None:
        return None
    import importlib

    module, attr = p.portable.split(":")
    return getattr(importlib.import_module(module), attr)


def content_renderers() -> dict[str, str]:
    """Every protocol's content-type renderers (content type -> "module:function")."""
    out: dict[str, str] = {}
    for p in PROTOCOLS.values():
        out.update(p.renderers)
    return out

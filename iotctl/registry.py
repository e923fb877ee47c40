"""The one table of protocols. Adding a protocol is one folder under protocols/ and
one entry here; nothing else outside protocols/ names a protocol.

Nothing is imported from here: modules are named as strings and loaded on use.
"""

from __future__ import annotations


class Protocol:
    """name: the group's name and the profile table's; group: "module:attribute" of its
    click group; help: the line `iotctl --help` shows; header: the meta keys the pretty
    header shows, in order; renderers: content type -> "module:function" that turns a
    payload into a rich renderable (see output/renderers.py)."""

    __slots__ = ("name", "group", "help", "header", "renderers")

    def __init__(self, name: str, group: str, help: str, header: tuple[str, ...] = (),
                 renderers: dict[str, str] | None = None):
        self.name, self.group, self.help, self.header = name, group, help, header
        self.renderers = renderers or {}


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("mqtt", "iotctl.protocols.mqtt.cli:group",
             "MQTT: publish, subscribe, request/response, retained messages.",
             header=("qos", "retain")),
    Protocol("coap", "iotctl.protocols.coap.cli:group",
             "CoAP: get/put/post/delete/fetch/patch, observe, discover, serve a simulated device.",
             header=("code",),
             renderers={"application/link-format": "iotctl.protocols.coap.linkformat:render"}),
    Protocol("amqp", "iotctl.protocols.amqp.cli:group",
             "AMQP 0-9-1 (RabbitMQ): publish with confirms, consume, get, tap, declare, bind, request.",
             header=("exchange", "routing_key", "redelivered")),
    Protocol("stomp", "iotctl.protocols.stomp.cli:group", "STOMP: send, subscribe (not built yet).",
             header=("destination",)),
    Protocol("xmpp", "iotctl.protocols.xmpp.cli:group",
             "XMPP: send, listen, presence, roster, ping, disco (not built yet).",
             header=("type",)),
)}


def names() -> tuple[str, ...]:
    return tuple(PROTOCOLS)


def get(name: str) -> Protocol | None:
    return PROTOCOLS.get(name)


def header_keys(name: str) -> tuple[str, ...]:
    p = PROTOCOLS.get(name)
    return p.header if p is not None else ()


def content_renderers() -> dict[str, str]:
    """Every protocol's content-type renderers (content type -> "module:function")."""
    out: dict[str, str] = {}
    for p in PROTOCOLS.values():
        out.update(p.renderers)
    return out

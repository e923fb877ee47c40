"""MQTT endpoints: the source (a subscription) and the sink (a publisher) that the
`mqtt` commands and URLs (`mqtt[s]://user:pass@host:port/TOPIC?qos=1&...`, `ws[s]://`)
both open. No paho here: client.py is imported when an endpoint is built.

URL parameters are the long options of `mqtt subscribe` (source) and `mqtt publish`
(sink): `?qos=1&client_id=dev1&clean_start=false`, `?retain=true`, `?content_type=...`.
The path is the topic (filter), `#` written as is or as %23.
"""

from __future__ import annotations

from iotctl.endpoint import Scheme
from iotctl.errors import UsageError
from iotctl.topics import validate_filter, validate_topic

SCHEMES = {
    "mqtt": Scheme(tls=False, ws=False, port=1883),
    "mqtts": Scheme(tls=True, ws=False, port=8883),
    "ws": Scheme(tls=False, ws=True, port=8080),
    "wss": Scheme(tls=True, ws=True, port=8081),
}


def address_args(url, role: str) -> list[str]:
    """The command-line arguments a URL's address part means: the path is the topic."""
    args = ["--url", url.base]
    topic = (url.path or "")[1:]
    if url.scheme in ("ws", "wss") and topic.startswith("mqtt/"):
        topic = topic[len("mqtt/"):]  # ws://host:port/mqtt/TOPIC: the websocket path first
    if topic:
        args += ["-t", topic]
    elif role == "check":
        args += ["-t", "#"]  # check subscribes to nothing the URL names; the command wants a filter
    return args


# --------------------------------------------------------------------------- source

# The QoS 1/2 messages a subscriber lets the broker send ahead of its acknowledgements
# (as an AMQP consumer's prefetch). A subscriber acknowledges a message only once it is
# written out (a bridge: once the target confirmed it), so the broker's own default
# (Mosquitto: 20) would make every batch wait for a round trip.
RECEIVE_MAXIMUM = 1000


def source(cfg, topics=(), qoss=(), no_retained=False, retained_only=False, filter_out=(), no_local=False,
           retain_as_published=False, retain_handling=0, receive=None, max_size=None, receive_maximum=None,
           **_ignored):
    """The subscription (a receive.Receiver, entered to connect and subscribe)."""
    if max_size is not None:
        cfg.max_packet = max_size
    if receive_maximum is not None:
        require_v5(cfg, "--receive-maximum")
    if cfg.version == "5":
        cfg.receive_maximum = receive_maximum or RECEIVE_MAXIMUM
    from iotctl.protocols.mqtt.client import Subscriber, Subscription

    if not topics:
        raise UsageError("no topic", "give -t FILTER (in a URL: mqtt://host/FILTER)")
    for t in tuple(topics) + tuple(filter_out):
        validate_filter(t)
    if (no_local or retain_as_published or retain_handling) and cfg.version != "5":
        require_v5(cfg, "--no-local/--retain-as-published/--retain-handling")
    if no_retained and retained_only:
        raise UsageError("-R and --retained-only", "contradict each other")
    if receive is not None and receive.timeout is not None:  # -W bounds the whole run, the connection included
        cfg.connect_timeout = min(cfg.connect_timeout, receive.timeout)
    subs = [Subscription(t, (qoss[i] if i < len(qoss) else (qoss[-1] if qoss else 0)), no_local,
                         retain_as_published, retain_handling) for i, t in enumerate(topics)]
    return Subscriber(cfg, subs, filter_out=tuple(filter_out), no_retained=no_retained,
                      retained_only=retained_only)


# --------------------------------------------------------------------------- sink


def sink(cfg, topics=(), qos=0, retain=False, props=None, payload=None, **_ignored):
    """The publisher (a send.Sender, entered to connect). Messages go to `topics` (each
    to every one), else to their own address."""
    from iotctl.protocols.mqtt.client import Publisher

    for t in topics:
        validate_topic(t)
    if props is not None and payload is not None and payload.encode in ("json", "cbor") \
            and props.content_type is None and cfg.version == "5":
        props.content_type = f"application/{payload.encode}"
    if props is not None and not props.empty():
        require_v5(cfg, "MQTT 5 properties (--content-type, --user-property, ...)")
    return Publisher(cfg, qos, retain, props, topics=tuple(topics))


def require_v5(cfg, what: str) -> None:
    if cfg.version != "5":
        raise UsageError(what, f"needs MQTT 5 (-V 5); this connection is MQTT {cfg.version}")

"""MQTT-SN endpoints: the source (subscriptions through a gateway) and the sink (a
publisher through a gateway) that the `mqttsn` commands and URLs both open. The
client is pure Python (client.py, the codec): nothing heavy is imported here.

URL form: `mqttsn://host:port/TOPIC`. The path is the topic (a name, a filter with
`+`/`#` for a source — `#` written as is or as %23 —, or two characters: a short
topic). Parameters are the long options of `mqttsn subscribe` (source) and `mqttsn
publish` (sink): `?qos=1&client_id=dev1&no_clean_session=true`, `?topic_id=7` (a
predefined id instead of a path), `?retain=true`, `?sleep=30`, `?max_inflight=50`,
`?retry_interval=0.5&retries=10`. `clean_session=false` is the same as
`no_clean_session=true`.
"""

from __future__ import annotations

from iotctl.endpoint import Scheme
from iotctl.errors import UsageError
from iotctl.topics import validate_filter, validate_topic

SCHEMES = {"mqttsn": Scheme(tls=False, ws=False, port=1883)}


def address_args(url, role: str) -> list[str]:
    """The command-line arguments a URL's address part means: the path is the topic."""
    args = ["--url", url.base]
    topic = (url.path or "")[1:]
    if topic:
        args += ["-t", topic]
    return args


# --------------------------------------------------------------------------- source


def source(cfg, topics=(), predefined=(), qos=0, sleep=None, receive=None, **_ignored):
    """The subscriptions (a receive.Receiver, entered to connect and subscribe)."""
    from iotctl.protocols.mqttsn.client import Subscriber

    if not topics and not predefined:
        raise UsageError("no topic", "give -t FILTER or -T ID (in a URL: mqttsn://host:port/FILTER)")
    for t in topics:
        validate_filter(t)
    return Subscriber(cfg, tuple(topics), tuple(predefined), qos, sleep)


# --------------------------------------------------------------------------- sink


def sink(cfg, topic=None, predefined=None, qos=0, retain=False, max_inflight=20, sleep=None, payload=None,
         **_ignored):
    """The publisher (a send.Sender, entered to connect; at QoS -1 nothing connects).
    Messages go to `topic` or the predefined id, else to their own address."""
    from iotctl.protocols.mqttsn.client import Publisher

    if topic is not None and predefined is not None:
        raise UsageError("-t and -T", "give one topic: a name (-t) or a predefined id (-T)")
    if topic is not None:
        validate_topic(topic)
    if qos == -1 and (cfg.will is not None or sleep):
        raise UsageError("-q -1", "publishes without a connection: no will, no --sleep")
    if qos == -1 and topic is not None and len(topic.encode("utf-8")) != 2:
        raise UsageError(f"cannot publish to {topic!r} at QoS -1",
                         "without a connection only a predefined id (-T) or a two-character short topic "
                         "can be used")
    cfg.window = max_inflight
    return Publisher(cfg, qos, retain, topic=topic, predefined=predefined, sleep=sleep)

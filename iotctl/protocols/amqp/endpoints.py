"""AMQP 0-9-1 endpoints: the source (a consumer) and the sink (a publisher) that the
`amqp` commands and URLs both open. No pika here: client.py is imported when an
endpoint is built.

    amqp[s]://user:pass@host:port/VHOST?queue=Q             consume Q (source), publish to Q (sink)
    amqp[s]://user:pass@host:port/VHOST?exchange=X&routing_key=K
                                                            source: the tap form, a throw-away
                                                            exclusive queue bound to X with K
                                                            (`amqp consume --declare -e X -r K`);
                                                            sink: publish to X with key K

The path is the vhost, URL-encoded as in --url: /%2f is "/", no path is "/", and a
lone "/" asks for the empty vhost. The other parameters are the long options of
`amqp consume` (source) and `amqp publish` (sink): `?prefetch=100&ack=auto`,
`?persistent=true&confirm=false&mandatory=true`, `?header=site=lab`. A queue is the
`--queue` option of both commands (`amqp consume --queue Q` is `amqp consume Q`;
`amqp publish --queue Q` is `-e '' -r Q`), repeatable for consume (`?queue=a&queue=b`).
"""

from __future__ import annotations

from iotctl.endpoint import Scheme
from iotctl.errors import UsageError

SCHEMES = {
    "amqp": Scheme(tls=False, ws=False, port=5672),
    "amqps": Scheme(tls=True, ws=False, port=5671),
}
TAP_KEYS = {"exchange", "routing_key", "e", "r"}
SHORT_PROPERTIES = ("content_type", "content_encoding", "correlation_id", "reply_to", "expiration",
                    "message_id", "type", "user_id", "app_id")


def address_args(url, role: str) -> list[str]:
    """The command-line arguments a URL's address part means: scheme, credentials,
    host and port, and the path as the vhost (--url takes them all). As a source,
    ?exchange=X&routing_key=K without ?queue is the tap form (--declare)."""
    from urllib.parse import parse_qsl

    args = ["--url", url.base + (url.raw_path or "")]
    if role == "source" and url.query:
        keys = {k.replace("-", "_") for k, _ in parse_qsl(url.query, keep_blank_values=True)}
        if keys & TAP_KEYS and not keys & {"queue", "queue_names"}:
            args.append("--declare")
    return args


# --------------------------------------------------------------------------- source


def source(cfg, queues=(), queue_names=(), prefetch=None, ack="after-write", requeue=False, exclusive=False,
           consumer_priority=None, declare=False, exchange=None, routing_keys=(), receive=None, **_ignored):
    """The consumer (a receive.Receiver, entered to connect, declare and consume)."""
    from iotctl.protocols.amqp.client import Consumer, check_name

    names = [check_name("queue", q) for q in tuple(queues) + tuple(queue_names)]
    if not names and not declare:
        raise UsageError("no queue", "give QUEUE... (in a URL: ?queue=Q), or --declare with -e/-r for a "
                                     "throw-away queue (in a URL: ?exchange=X&routing_key=K)")
    if requeue and ack == "auto":
        raise UsageError("--requeue and --ack auto", "contradict each other")
    if not declare and (routing_keys or exchange is not None):
        raise UsageError("-e/-r", "only make sense with --declare (in a URL: ?exchange=X&routing_key=K "
                                  "without ?queue)")
    if prefetch is None:
        prefetch = 0 if (requeue or ack == "none") else 1000
    tap = None
    if declare:
        exchange = check_name("exchange", "amq.topic" if exchange is None else exchange)
        if exchange == "":
            raise UsageError("--declare -e ''", "the default exchange cannot be bound to")
        tap = (exchange, tuple(check_name("routing key", k) for k in routing_keys))
    _bound_connect(cfg, receive)
    return Consumer(cfg, names, ack=ack, requeue=requeue, prefetch=prefetch, exclusive=exclusive,
                    priority=consumer_priority, declare=tap, name=cfg.name("consume"))


def tap(cfg, exchanges=(), firehose=False, receive=None, **_ignored):
    """`amqp tap EXCHANGE[:KEY]... [--firehose]` (a receive.Receiver)."""
    from iotctl.protocols.amqp.client import Tap, check_name

    if not exchanges and not firehose:
        raise UsageError("nothing to tap", "give EXCHANGE[:KEY]... or --firehose")
    taps = []
    for text in exchanges:
        name, sep, key = text.partition(":")
        if not name:
            raise UsageError(f"bad tap {text!r}", "give EXCHANGE or EXCHANGE:KEY (the default exchange cannot "
                                                 "be tapped)")
        taps.append((check_name("exchange", name), check_name("routing key", key) if sep else None))
    _bound_connect(cfg, receive)
    return Tap(cfg, taps, firehose, name=cfg.name("tap"))


def _bound_connect(cfg, receive) -> None:
    if receive is not None and receive.timeout is not None:  # -W bounds the whole run, the connection included
        cfg.connect_timeout = min(cfg.connect_timeout, receive.timeout)


# --------------------------------------------------------------------------- sink


def sink(cfg, exchange=None, routing_keys=(), queue=None, mandatory=False, confirm=True, window=1000, props=None,
         payload=None, **_ignored):
    """The publisher (a send.Sender, entered to connect). Messages go to `exchange`
    (None: a replayed AMQP message's own, else '') with their own address as the
    routing key; the one routing key (or queue) given is `address`, what the bridge
    gives every message and what a message without an address gets."""
    from iotctl.protocols.amqp.client import Publisher, check_name

    if queue is not None:
        if exchange or routing_keys:
            raise UsageError("--queue", "publishes through the default exchange: not with -e or -r")
        exchange, routing_keys = "", (queue,)
    if exchange is not None:
        check_name("exchange", exchange)
    keys = tuple(check_name("routing key", k) for k in routing_keys)
    fields = dict(props.fields) if props is not None else {}
    headers = dict(props.headers) if props is not None else {}
    if payload is not None and payload.encode in ("json", "cbor") and fields.get("content_type") is None:
        fields["content_type"] = f"application/{payload.encode}"
    for name in SHORT_PROPERTIES:
        if isinstance(fields.get(name), str):
            check_name(f"--{name.replace('_', '-')}", fields[name])
    for key in headers:
        check_name("--header", key)
    publisher = Publisher(cfg, exchange, fields, headers, mandatory=mandatory, confirm=confirm, window=window,
                          name=cfg.name("publish"))
    publisher.routing_keys = keys
    if len(keys) == 1:
        publisher.address = keys[0]  # a bridge's fixed address; else for messages without one
    return publisher

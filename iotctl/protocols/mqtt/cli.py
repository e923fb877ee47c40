"""The `mqtt` group: publish, subscribe, request, retained.

Only option parsing lives here; paho is imported by client.py, inside the commands.
"""

from __future__ import annotations

import functools
import time

import click

from iotctl.context import ProtocolGroup, settings, status
from iotctl.endpoint import Scheme
from iotctl.errors import UsageError
from iotctl.options import connection_options, payload_options, receive_options, shared
from iotctl.protocols.mqtt.topics import matches, validate_filter, validate_topic

SCHEMES = {
    "mqtt": Scheme(tls=False, ws=False, port=1883),
    "mqtts": Scheme(tls=True, ws=False, port=8883),
    "ws": Scheme(tls=False, ws=True, port=8080),
    "wss": Scheme(tls=True, ws=True, port=8081),
}
MQTT_VERSIONS = ("3.1", "3.1.1", "5")


@click.group(cls=ProtocolGroup, protocol="mqtt", aliases={"pub": "publish", "sub": "subscribe", "rr": "request"})
def group():
    """MQTT 3.1, 3.1.1 and 5: publish, subscribe, request/response, retained messages.

    Flags follow mosquitto_pub/mosquitto_sub: -h host, -p port, -t topic, -m message,
    -q QoS, -r retain, -C count, -W timeout, -u/-P user/password, -i client id,
    -V protocol version.
    """


# --------------------------------------------------------------------------- shared options


_MQTT_OPTIONS = shared([
    click.option("-i", "--client-id", help="Client id [default: iotctl-PID-RANDOM]."),
    click.option("-k", "--keepalive", type=click.IntRange(0, 65535), default=60, show_default=True,
                 help="Keepalive interval in seconds."),
    click.option("-V", "--mqtt-version", type=click.Choice(MQTT_VERSIONS), default="5", show_default=True,
                 help="MQTT protocol version."),
    click.option("--clean-start/--no-clean-start", default=True, show_default=True,
                 help="Start a new session, or resume the persistent session of this client id (-i)."),
    click.option("--session-expiry", type=click.IntRange(0, 0xFFFFFFFF), default=None,
                 help="MQTT 5 session expiry in seconds [default: unlimited with --no-clean-start]."),
    click.option("--will-topic", help="Topic of the last-will message."),
    click.option("--will-payload", default="", help="Payload of the last-will message."),
    click.option("--will-qos", type=click.IntRange(0, 2), default=0, help="QoS of the last-will message."),
    click.option("--will-retain", is_flag=True, default=False, help="Retain the last-will message."),
    click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
                 show_default=True, help="Seconds to wait for the broker to accept the connection."),
])


def mqtt_options(f):
    """Connection and session options shared by every MQTT command; the command
    receives `cfg` (a client.MqttConfig) instead of them."""

    @functools.wraps(f)
    def wrapper(*args, **kw):
        from iotctl.protocols.mqtt.client import MqttConfig, Will

        will = None
        if kw["will_topic"] is not None:
            will = Will(validate_topic(kw["will_topic"]), kw["will_payload"].encode(), kw["will_qos"],
                        kw["will_retain"])
        elif kw["will_retain"] or kw["will_payload"]:
            raise UsageError("--will-payload/--will-retain", "need --will-topic")
        if not kw["clean_start"] and not kw["client_id"]:
            raise UsageError("--no-clean-start", "a persistent session needs a fixed client id: add -i ID")
        endpoint = kw.pop("endpoint")
        kw["cfg"] = MqttConfig(
            endpoint=endpoint, version=kw.pop("mqtt_version"), client_id=kw.pop("client_id"),
            keepalive=kw.pop("keepalive"), clean_start=kw.pop("clean_start"),
            session_expiry=kw.pop("session_expiry"), will=will, connect_timeout=kw.pop("connect_timeout"),
            verbose=settings().verbose)
        for name in ("will_topic", "will_payload", "will_qos", "will_retain"):
            kw.pop(name)
        return f(*args, **kw)

    return connection_options("mqtt", SCHEMES, "mqtt", tls=True, ws=True)(_MQTT_OPTIONS(wrapper))


def _user_property(ctx, param, values):
    pairs = []
    for text in values:
        if "=" not in text:
            raise click.BadParameter(f"{text!r} is not KEY=VALUE", ctx, param)
        key, value = text.split("=", 1)
        pairs.append((key, value))
    return pairs


_PUBLISH_PROPERTY_OPTIONS = shared([
    click.option("--content-type", help="MQTT 5 content type, e.g. application/json."),
    click.option("--response-topic", help="MQTT 5 response topic."),
    click.option("--correlation-data", help="MQTT 5 correlation data (text)."),
    click.option("--message-expiry", type=click.IntRange(0, 0xFFFFFFFF), help="MQTT 5 message expiry (s)."),
    click.option("--user-property", multiple=True, metavar="KEY=VALUE", callback=_user_property,
                 help="MQTT 5 user property (repeatable)."),
    click.option("--payload-format-indicator", is_flag=True, default=False,
                 help="MQTT 5: mark the payload as UTF-8 text."),
])


def publish_property_options(f):
    """MQTT 5 PUBLISH properties; the command receives `props` (client.PublishProps)."""

    @functools.wraps(f)
    def wrapper(*args, **kw):
        from iotctl.protocols.mqtt.client import PublishProps

        corr = kw.pop("correlation_data")
        kw["props"] = PublishProps(
            content_type=kw.pop("content_type"), response_topic=kw.pop("response_topic"),
            correlation_data=corr.encode() if corr is not None else None,
            message_expiry=kw.pop("message_expiry"),
            payload_format_indicator=1 if kw.pop("payload_format_indicator") else None,
            user_properties=kw.pop("user_property"))
        if kw["props"].response_topic is not None:
            validate_topic(kw["props"].response_topic)
        return f(*args, **kw)

    return _PUBLISH_PROPERTY_OPTIONS(wrapper)


def _require_v5(cfg, what: str) -> None:
    if cfg.version != "5":
        raise UsageError(what, f"needs MQTT 5 (-V 5); this connection is MQTT {cfg.version}")


# --------------------------------------------------------------------------- publish


@group.command()
@mqtt_options
@click.option("-t", "--topic", "topics", multiple=True, metavar="TOPIC",
              help="Topic to publish to (repeatable). With --replay, the captured address is used when absent.")
@click.option("-q", "--qos", type=click.IntRange(0, 2), default=0, show_default=True, help="Quality of service.")
@click.option("-r", "--retain", is_flag=True, default=False, help="Ask the broker to retain the message.")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Publish the message this many times.")
@click.option("--interval", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Seconds between repeated messages.")
@click.option("-W", "--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Give up (exit 5) when no acknowledgement arrives for this many seconds.")
@publish_property_options
@payload_options()
def publish(cfg, topics, qos, retain, repeat, interval, timeout, props, payload):
    """Publish a message, a file, stdin, or every line of stdin.

    Exits only when every QoS 1/2 message has been acknowledged (exit 5 naming how
    many were not). With -l, any number of lines is sent without loss or
    duplication: at most the broker's receive maximum is unacknowledged at a time.

    \b
    iotctl mqtt pub -t sensors/t1 -m 21.5
    iotctl mqtt pub -t cfg/dev1 -r -q 1 -f config.json --content-type application/json
    seq 1 100000 | iotctl mqtt pub -t load/test -l -q 1
    """
    from iotctl.protocols.mqtt.client import Session

    payload.validate()
    for t in topics:
        validate_topic(t)
    if not topics and payload.replay is None:
        raise UsageError("no topic", "give -t TOPIC")
    if not props.empty():
        _require_v5(cfg, "MQTT 5 properties (--content-type, --user-property, ...)")
    if repeat > 1 and payload.streaming:
        raise UsageError("--repeat", "cannot be combined with -l or --replay")
    paho_props = props.to_paho()
    if payload.replay is not None:
        messages = ((t, out.payload) for out in payload.iter()
                    for t in topics or (validate_topic(out.address or ""),))
    elif payload.lines:
        messages = _each_topic(topics, payload.payloads())
    else:
        messages = _repeated(topics, payload.read_one(), repeat, interval)

    from iotctl.output.console import progress

    with Session(cfg) as session, progress(None, "publishing") as bar:
        sent = session.publish_stream(messages, qos, retain, paho_props, timeout,
                                      bar if payload.streaming else None)
    status(f"published {sent} message(s)", tty_only=True)


def _each_topic(topics, payloads):
    """(topic, payload) for every payload and topic; a C-level zip for one topic."""
    if len(topics) == 1:
        from itertools import repeat

        return zip(repeat(topics[0]), payloads)
    return ((t, p) for p in payloads for t in topics)


def _repeated(topics, data: bytes, repeat: int, interval: float):
    for i in range(repeat):
        if i and interval:
            time.sleep(interval)
        for t in topics:
            yield t, data


# --------------------------------------------------------------------------- subscribe


@group.command()
@mqtt_options
@click.option("-t", "--topic", "topics", multiple=True, required=True, metavar="FILTER",
              help="Topic filter to subscribe to (repeatable; + and # wildcards).")
@click.option("-q", "--qos", "qoss", multiple=True, type=click.IntRange(0, 2),
              help="QoS for each -t in order (the last one applies to the rest) [default: 0].")
@click.option("-R", "--no-retained", is_flag=True, default=False, help="Skip retained (stale) messages.")
@click.option("--retained-only", is_flag=True, default=False,
              help="Print the retained messages, then exit.")
@click.option("-T", "--filter-out", multiple=True, metavar="FILTER",
              help="Do not print messages whose topic matches FILTER (repeatable).")
@click.option("--no-local", is_flag=True, default=False, help="MQTT 5: not messages this client published.")
@click.option("--retain-as-published", is_flag=True, default=False,
              help="MQTT 5: keep the retain flag as the publisher set it.")
@click.option("--retain-handling", type=click.IntRange(0, 2), default=0, show_default=True,
              help="MQTT 5: 0 send retained, 1 only for new subscriptions, 2 never.")
@receive_options()
def subscribe(cfg, topics, qoss, no_retained, retained_only, filter_out, no_local, retain_as_published,
              retain_handling, receive):
    """Print messages arriving on one or more topic filters.

    Ctrl-C ends it (exit 0). With -C N it stops after N messages; with -W S it gives
    up after S seconds (exit 5 when fewer than N, or no message, arrived).

    \b
    iotctl mqtt sub -t 'sensors/#' -v
    iotctl mqtt sub -t 'sensors/#' -o jsonl --save capture.jsonl
    iotctl mqtt sub -t cmd/dev1 -q 1 -i dev1 --no-clean-start
    """
    from iotctl.protocols.mqtt.client import Session, Subscription
    from iotctl.receive import consume

    for t in topics + filter_out:
        validate_filter(t)
    if (no_local or retain_as_published or retain_handling) and cfg.version != "5":
        _require_v5(cfg, "--no-local/--retain-as-published/--retain-handling")
    if no_retained and retained_only:
        raise UsageError("-R and --retained-only", "contradict each other")
    subs = [Subscription(t, (qoss[i] if i < len(qoss) else (qoss[-1] if qoss else 0)), no_local,
                         retain_as_published, retain_handling) for i, t in enumerate(topics)]
    manual_ack = any(sub.qos for sub in subs)
    with Session(cfg, manual_ack=manual_ack) as session:
        probe = session.probe_topic()
        if retained_only:
            subs.append(Subscription(probe, 0))
        session.subscribe(subs, cfg.connect_timeout)
        status(f"subscribed to {', '.join(topics)} on {cfg.endpoint.display}")
        accept = _accept(filter_out, no_retained, retained_only, probe)
        until = None
        if retained_only:
            session.publish_probe()
            until = (lambda m: m.address == probe)
        deadline = time.monotonic() + receive.timeout if receive.timeout else None
        consume(session.batches(deadline, accept, until), receive, "subscribe",
                done=session.ack if manual_ack else None)


def _accept(filter_out, no_retained: bool, retained_only: bool, probe: str):
    if not (filter_out or no_retained or retained_only):
        return None

    def accept(msg) -> bool:
        if msg.address == probe:
            return retained_only
        if no_retained and msg.meta["retain"]:
            return False
        if retained_only and not msg.meta["retain"]:
            return False
        return not any(matches(f, msg.address) for f in filter_out)

    return accept


# --------------------------------------------------------------------------- request


@group.command()
@mqtt_options
@click.option("-t", "--topic", required=True, help="Topic to send the request to.")
@click.option("-e", "--response-topic", help="Topic to wait for the answer on [default: iotctl/response/CLIENT_ID].")
@click.option("-q", "--qos", type=click.IntRange(0, 2), default=0, show_default=True)
@click.option("--correlation-data", help="Correlation data [default: random].")
@click.option("--content-type", help="MQTT 5 content type of the request.")
@click.option("--user-property", multiple=True, metavar="KEY=VALUE", callback=_user_property,
              help="MQTT 5 user property (repeatable).")
@click.option("-W", "--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Seconds to wait for the answer (exit 5 when none comes).")
@payload_options(replay=False)
def request(cfg, topic, response_topic, qos, correlation_data, content_type, user_property, timeout, payload):
    """MQTT 5 request/response: publish a request and print the answer.

    The request carries a response topic and correlation data; the first message on
    the response topic with the same correlation data (or none) is the answer.

    \b
    iotctl mqtt rr -t devices/dev1/rpc -m '{"method":"reboot"}'
    """
    import uuid

    from iotctl.protocols.mqtt.client import PublishProps, Session, Subscription

    _require_v5(cfg, "request/response")
    payload.validate()
    validate_topic(topic)
    data = payload.read_one()
    corr = correlation_data.encode() if correlation_data is not None else uuid.uuid4().hex.encode()
    with Session(cfg) as session:
        reply_to = response_topic or f"iotctl/response/{session.client_id}"
        validate_topic(reply_to)
        session.subscribe([Subscription(reply_to, qos)], cfg.connect_timeout)
        props = PublishProps(content_type=content_type, response_topic=reply_to, correlation_data=corr,
                             user_properties=list(user_property))
        session.publish_stream([(topic, data)], qos, False, props.to_paho(), timeout)

        def answer(msg) -> bool:
            got = msg.meta.get("properties", {}).get("correlation_data")
            return msg.address == reply_to and (got is None or got.encode() == corr
                                                 or got == "0x" + corr.hex())

        from iotctl.receive import ReceiveSpec, consume

        consume(session.batches(time.monotonic() + timeout, answer), ReceiveSpec(1, timeout, None),
                f"no answer on {reply_to}")


# --------------------------------------------------------------------------- retained


@group.group()
def retained():
    """List or clear retained messages."""


def _collect_retained(session, topic_filter: str, timeout: float) -> list:
    from iotctl.context import warn
    from iotctl.protocols.mqtt.client import Subscription

    probe = session.probe_topic()
    session.subscribe([Subscription(topic_filter, 0), Subscription(probe, 0)], timeout)
    session.publish_probe()
    found = {}
    ended = False
    deadline = time.monotonic() + timeout
    for batch in session.batches(deadline, None, lambda m: m.address == probe):
        for msg in batch:
            if msg.meta["retain"]:
                found[msg.address] = msg
    else:
        ended = True
    if ended and time.monotonic() >= deadline:
        warn(f"the end of the retained messages was not seen within {timeout:g} s; the list may be incomplete")
    return sorted(found.values(), key=lambda m: m.address)


@retained.command("list")
@mqtt_options
@click.argument("topic_filter", metavar="FILTER", default="#")
@click.option("-W", "--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Seconds to wait for the retained messages.")
def retained_list(cfg, topic_filter, timeout):
    """Print the retained messages matching FILTER (default '#'), sorted by topic.

    Piped, the output is 'TOPIC PAYLOAD' lines (-o text); choose any -o.
    """
    from iotctl.protocols.mqtt.client import Session

    validate_filter(topic_filter)
    writer = settings().writer(piped_default="text")
    with Session(cfg) as session:
        writer.write_all(_collect_retained(session, topic_filter, timeout))


@retained.command("clear")
@mqtt_options
@click.argument("topic_filter", metavar="FILTER")
@click.option("--dry-run", is_flag=True, default=False, help="Only print what would be cleared.")
@click.option("-W", "--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Seconds to wait for the retained messages and the acknowledgements.")
def retained_clear(cfg, topic_filter, dry_run, timeout):
    """Clear the retained messages matching FILTER; print each topic cleared."""
    from iotctl.protocols.mqtt.client import Session

    validate_filter(topic_filter)
    with Session(cfg) as session:
        found = _collect_retained(session, topic_filter, timeout)
        topics = [m.address for m in found]
        if not dry_run and topics:
            session.publish_stream(((t, b"") for t in topics), 1, True, None, timeout)
    for t in topics:
        click.echo(t)
    status(f"{'would clear' if dry_run else 'cleared'} {len(topics)} retained message(s)", tty_only=True)

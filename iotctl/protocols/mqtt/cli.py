"""The `mqtt` group: publish, subscribe, request, retained.

Only option parsing lives here; paho is imported by client.py, inside the commands.
"""

from __future__ import annotations

import time

import click

from iotctl.groups import ProtocolGroup
from iotctl.output import run_writer
from iotctl.settings import current as settings, status
from iotctl.errors import UsageError
from iotctl.options import (bundle, check_options, connection_options, kv_option, payload_options,
                            receive_options, send_options, timeout_option, watch_options)
from iotctl.protocols.mqtt import endpoints
from iotctl.protocols.mqtt.endpoints import SCHEMES, require_v5 as _require_v5
from iotctl.protocols.mqtt.topics import validate_filter, validate_topic

MQTT_VERSIONS = ("3.1", "3.1.1", "5")


@click.group(cls=ProtocolGroup, protocol="mqtt", aliases={"pub": "publish", "sub": "subscribe", "rr": "request"})
def group():
    """MQTT 3.1, 3.1.1 and 5: publish, subscribe, request/response, retained messages.

    Flags follow mosquitto_pub/mosquitto_sub: -h host, -p port, -t topic, -m message,
    -q QoS, -r retain, -C count, -W timeout, -u/-P user/password, -i client id,
    -V protocol version; in subscribe, -v prints 'topic payload' (-d is the trace).

    \b
    iotctl mqtt pub -t sensors/t1 -m 21.5 -q 1
    iotctl mqtt sub -t 'sensors/#' -v
    iotctl mqtt sub -t 'test/out' -C 3 -W 10 -o jsonl
    iotctl mqtt retained list 'devices/#'
    """


# --------------------------------------------------------------------------- shared options


def _mqtt_config(endpoint, client_id, keepalive, mqtt_version, clean_start, session_expiry, will_topic,
                 will_payload, will_qos, will_retain, connect_timeout):
    from iotctl.protocols.mqtt.client import MqttConfig, Will

    will = None
    if will_topic is not None:
        will = Will(validate_topic(will_topic), will_payload.encode(), will_qos, will_retain)
    elif will_retain or will_payload:
        raise UsageError("--will-payload/--will-retain", "need --will-topic")
    if not clean_start and not client_id:
        raise UsageError("--no-clean-start", "a persistent session needs a fixed client id: add -i ID")
    return MqttConfig(endpoint=endpoint, version=mqtt_version, client_id=client_id, keepalive=keepalive,
                      clean_start=clean_start, session_expiry=session_expiry, will=will,
                      connect_timeout=connect_timeout, debug=settings().debug)


_MQTT_OPTIONS = bundle("cfg", [
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
], _mqtt_config, consumes=("endpoint",))


def mqtt_options(f):
    """Connection and session options shared by every MQTT command; the command
    receives `cfg` (a client.MqttConfig) instead of them."""
    return connection_options(SCHEMES, "mqtt", tls=True, ws=True)(_MQTT_OPTIONS(f))


_USER_PROPERTY = kv_option("--user-property", help="MQTT 5 user property (repeatable).")


def _publish_props(content_type, response_topic, correlation_data, message_expiry, user_property,
                   payload_format_indicator):
    from iotctl.protocols.mqtt.client import PublishProps

    if response_topic is not None:
        validate_topic(response_topic)
    return PublishProps(
        content_type=content_type, response_topic=response_topic,
        correlation_data=correlation_data.encode() if correlation_data is not None else None,
        message_expiry=message_expiry, payload_format_indicator=1 if payload_format_indicator else None,
        user_properties=user_property)


publish_property_options = bundle("props", [
    click.option("--content-type", help="MQTT 5 content type, e.g. application/json [default: "
                                        "application/json or application/cbor with --encode json|cbor]."),
    click.option("--response-topic", help="MQTT 5 response topic."),
    click.option("--correlation-data", help="MQTT 5 correlation data (text)."),
    click.option("--message-expiry", type=click.IntRange(0, 0xFFFFFFFF), help="MQTT 5 message expiry (s)."),
    _USER_PROPERTY,
    click.option("--payload-format-indicator", is_flag=True, default=False,
                 help="MQTT 5: mark the payload as UTF-8 text."),
], _publish_props)


# --------------------------------------------------------------------------- publish


@group.command()
@mqtt_options
@click.option("-t", "--topic", "topics", multiple=True, metavar="TOPIC",
              help="Topic to publish to (repeatable). With --replay, the captured address is used when absent.")
@click.option("-q", "--qos", type=click.IntRange(0, 2), default=0, show_default=True, help="Quality of service.")
@click.option("-r", "--retain", is_flag=True, default=False, help="Ask the broker to retain the message.")
@send_options()
@timeout_option(10.0, "Give up (exit 5) when no acknowledgement arrives for this many seconds.")
@publish_property_options
@payload_options()
def publish(cfg, topics, qos, retain, sending, timeout, props, payload):
    """Publish a message, a file, stdin, or every line of stdin.

    Exits only when every QoS 1/2 message has been acknowledged (exit 5 naming how
    many were not). With -l, any number of lines is sent without loss or
    duplication: at most the broker's receive maximum is unacknowledged at a time.
    Stopped early, it says how many were sent and acknowledged; --failed FILE keeps
    every message not acknowledged, for --replay.

    \b
    iotctl mqtt pub -t sensors/t1 -m 21.5
    iotctl mqtt pub -t cfg/dev1 -r -q 1 -f config.json --content-type application/json
    seq 1 100000 | iotctl mqtt pub -t load/test -l -q 1 --failed rest.jsonl
    """
    from iotctl import send

    payload.validate()
    if not topics and payload.replay is None:
        raise UsageError("no topic", "give -t TOPIC")
    if sending.repeat > 1 and payload.streaming:
        raise UsageError("--repeat", "cannot be combined with -l or --replay")
    publisher = endpoints.sink(cfg, topics, qos, retain, props, payload)
    items = send.outgoing(payload, sending, addresses=topics, validate=validate_topic)
    with publisher:
        result = send.run(publisher, items, "publish", timeout, progress=payload.streaming,
                          failed=sending.failed, verb="publishing")
    status(f"published {result.sent} message(s)", tty_only=True)


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
@click.option("-v", "topic_and_payload", is_flag=True, default=False,
              help="Print 'topic payload' lines, as mosquitto_sub -v (the same as -o text).")
@click.option("--max-size", type=click.IntRange(min=64, max=268_435_460), default=None, metavar="BYTES",
              help="The largest packet taken (exit 6 past it, nothing buffered); with MQTT 5 the broker is "
                   "told, and does not send bigger ones [default: the protocol's 256 MiB].")
@click.option("--receive-maximum", type=click.IntRange(1, 65535), default=None, metavar="N",
              help="MQTT 5: the QoS 1/2 messages the broker may send before they are acknowledged "
                   "(each is acknowledged once written out) [default: 1000].")
@receive_options(idle="ok", reconnect=True)
def subscribe(cfg, topics, qoss, no_retained, retained_only, filter_out, no_local, retain_as_published,
              retain_handling, topic_and_payload, max_size, receive_maximum, receive):
    """Print messages arriving on one or more topic filters.

    Ctrl-C ends it (exit 0). With -C N it stops after N messages; with -W S it gives
    up after S seconds (exit 5 when fewer than N, or no message, arrived).

    \b
    iotctl mqtt sub -t 'sensors/#' -v
    iotctl mqtt sub -t 'sensors/#' -o jsonl --save capture.jsonl
    iotctl mqtt sub -t cmd/dev1 -q 1 -i dev1 --no-clean-start
    """
    from iotctl import receive as receiving

    if topic_and_payload and settings().output == "auto" and settings().format is None:
        settings().output = "text"
    subscriber = endpoints.source(cfg, topics, qoss, no_retained, retained_only, filter_out, no_local,
                                  retain_as_published, retain_handling, receive, max_size=max_size,
                                  receive_maximum=receive_maximum)
    with subscriber:
        status(f"subscribed to {', '.join(topics)} on {cfg.endpoint.display}")
        receiving.run(subscriber, receive, "subscribe")


# --------------------------------------------------------------------------- watch


@group.command()
@mqtt_options
@click.option("-t", "--topic", "topics", multiple=True, required=True, metavar="FILTER",
              help="Topic filter to watch (repeatable; + and # wildcards).")
@click.option("-q", "--qos", "qoss", multiple=True, type=click.IntRange(0, 2),
              help="QoS for each -t in order (the last one applies to the rest) [default: 0].")
@click.option("-T", "--filter-out", multiple=True, metavar="FILTER",
              help="Leave out topics matching FILTER (repeatable).")
@watch_options()
def watch(cfg, topics, qoss, filter_out, view):
    """A live tree of the topics under FILTER: 'iotctl watch mqtt://HOST/FILTER'
    with the MQTT options (see 'iotctl watch --help' for the keys and --snapshot).

    \b
    iotctl mqtt watch -t '#'
    iotctl mqtt watch -t 'sensors/#' -h broker.local -u dev -P secret --tls
    iotctl mqtt watch -t 'sensors/#' --snapshot -W 10 -o json
    """
    from iotctl import watchscreen
    from iotctl.registry import get
    from iotctl.watching import Watched

    source = endpoints.source(cfg, topics, qoss, filter_out=filter_out)
    where = f"{cfg.endpoint.display} {' '.join(topics)}"
    watchscreen.run(Watched(source, get("mqtt"), {"cfg": cfg}, where), view)


# --------------------------------------------------------------------------- request


@group.command()
@mqtt_options
@click.option("-t", "--topic", required=True, help="Topic to send the request to.")
@click.option("-e", "--response-topic", help="Topic to wait for the answer on [default: iotctl/response/CLIENT_ID].")
@click.option("-q", "--qos", type=click.IntRange(0, 2), default=0, show_default=True)
@click.option("--correlation-data", help="Correlation data [default: random].")
@click.option("--content-type", help="MQTT 5 content type of the request.")
@_USER_PROPERTY
@timeout_option(10.0)
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

        from iotctl import receive

        receive.run(session.receiver(answer), receive.ReceiveSpec(1, timeout), f"no answer on {reply_to}")


# --------------------------------------------------------------------------- retained


@group.group()
def retained():
    """List or clear retained messages."""


def _collect_retained(session, topic_filter: str, timeout: float) -> list:
    from iotctl.settings import warn
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
@click.argument("topic_filter", metavar="[FILTER]", default="#")
@timeout_option(10.0, "Seconds to wait for the retained messages.")
def retained_list(cfg, topic_filter, timeout):
    """Print the retained messages matching FILTER (default '#'), sorted by topic.

    Piped, the output is 'TOPIC PAYLOAD' lines (-o text); choose any -o.
    """
    from iotctl.protocols.mqtt.client import Session

    validate_filter(topic_filter)
    writer = run_writer(piped_default="text")
    with Session(cfg) as session:
        writer.write_all(_collect_retained(session, topic_filter, timeout))


@retained.command("clear")
@mqtt_options
@click.argument("topic_filter", metavar="FILTER")
@click.option("--dry-run", is_flag=True, default=False, help="Only print what would be cleared.")
@timeout_option(10.0, "Seconds to wait for the retained messages and the acknowledgements.")
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
    status(f"{'would clear' if dry_run else 'cleared'} {len(topics)} retained message(s)", tty_only=not dry_run)


# --------------------------------------------------------------------------- check


@group.command()
@mqtt_options
@check_options()
def check(cfg, checking):
    """What the broker is and allows (as 'iotctl check mqtt://...'): versions, MQTT 5
    limits, TLS, and probed QoS round trips, retain, wildcards, shared subscriptions,
    largest payload, longest topic and client id (--probe; on by default against
    127.0.0.1 only).

    \b
    iotctl mqtt check -h 127.0.0.1
    iotctl mqtt check --url mqtts://broker.example.com --cafile ca.pem --no-probe
    """
    from iotctl import checking as checks, registry

    checks.run(registry.get("mqtt"), cfg.endpoint.display, cfg.endpoint.host, {"cfg": cfg}, checking)

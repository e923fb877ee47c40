"""The `amqp1` group (AMQP 1.0, OASIS): send and receive.

Only option parsing lives here; proton is imported by client.py, when an endpoint is
built (endpoints.py).
"""

from __future__ import annotations

import click

from iotctl.errors import UsageError
from iotctl.groups import ProtocolGroup
from iotctl.options import (bundle, connection_options, kv_option, payload_options, receive_options,
                            send_options, timeout_option)
from iotctl.protocols.amqp1 import endpoints
from iotctl.protocols.amqp1.endpoints import SCHEMES
from iotctl.settings import current as settings, status

BODIES = ("data", "string", "binary", "value", "sequence")
SASL = ("auto", "plain", "anonymous", "external", "none")


@click.group(cls=ProtocolGroup, protocol="amqp1")
def group():
    """AMQP 1.0 (OASIS): send and receive on any AMQP 1.0 broker or router
    (RabbitMQ with its AMQP 1.0 plugin, ActiveMQ, Artemis, Qpid, Azure Service Bus).

    Connect with --url amqp[s]://user:pass@host:port or -h/-p/-u/-P; the address is
    the command's argument (a queue or topic: RabbitMQ 3 names them /queue/NAME,
    /exchange/NAME/KEY, /topic/KEY). As a URL endpoint (bridge): amqp1[s]://host/ADDRESS.

    \b
    iotctl amqp1 send /queue/jobs -m '{"id": 1}' --content-type application/json --durable
    seq 1 100000 | iotctl amqp1 send /queue/load -l --failed rest.jsonl
    iotctl amqp1 receive /queue/jobs -C 10 -o jsonl
    iotctl amqp1 receive /queue/jobs --url amqps://app:secret@broker:5671 --sasl plain
    """


# --------------------------------------------------------------------------- connection


def _amqp1_config(endpoint, sasl, vhost, container_id, heartbeat, connect_timeout):
    from iotctl.protocols.amqp1.config import Amqp1Config

    if endpoint.path not in (None, "", "/"):
        raise UsageError("--url", f"takes no address ({endpoint.path!r}): give it as the ADDRESS argument "
                                  "(a URL endpoint is amqp1://host/ADDRESS)")
    return Amqp1Config(endpoint, sasl, vhost, container_id, heartbeat, connect_timeout, settings().debug)


_AMQP1_OPTIONS = bundle("cfg", [
    click.option("--sasl", type=click.Choice(SASL), default="auto", show_default=True,
                 help="SASL mechanism: auto is PLAIN with -u, EXTERNAL with a client certificate (--cert), "
                      "else ANONYMOUS; none skips the SASL layer."),
    click.option("--vhost", metavar="NAME",
                 help="Virtual host: the open frame's hostname becomes vhost:NAME (RabbitMQ) "
                      "[default: the host name]."),
    click.option("-i", "--container-id", help="Container id [default: iotctl-PID-RANDOM]."),
    click.option("--heartbeat", type=click.FloatRange(min=0), default=60.0, show_default=True, metavar="SECONDS",
                 help="Idle timeout: a connection silent for this long is lost (0: none)."),
    click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
                 show_default=True, metavar="SECONDS", help="Seconds to wait for the connection and each link."),
], _amqp1_config, consumes=("endpoint",))


def amqp1_options(f):
    """Connection options shared by every amqp1 command; the command receives `cfg`
    (a client.Amqp1Config) instead of them."""
    return connection_options(SCHEMES, "amqp")(_AMQP1_OPTIONS(f))


def _props(content_type, content_encoding, message_id, correlation_id, subject, reply_to, to, durable, priority,
           ttl, header, annotation, body):
    from iotctl.protocols.amqp1.config import Props

    return Props(content_type, content_encoding, message_id, correlation_id, subject, reply_to, to, durable,
                 priority, ttl, header, annotation, body)


property_options = bundle("props", [
    click.option("--content-type", help="Content type [default: application/json or application/cbor "
                                        "with --encode json|cbor]."),
    click.option("--content-encoding", help="Content encoding, e.g. gzip."),
    click.option("--message-id", help="Message id."),
    click.option("--correlation-id", help="Correlation id."),
    click.option("--subject", help="Subject (RabbitMQ 3: the routing key of /exchange/NAME)."),
    click.option("--reply-to", metavar="ADDRESS", help="Where an answer should go."),
    click.option("--to", metavar="ADDRESS", help="The 'to' property (routers may route on it)."),
    click.option("--durable", is_flag=True, default=False,
                 help="Durable: a broker keeps the message across a restart (in a durable queue)."),
    click.option("--priority", type=click.IntRange(0, 255), help="Priority (default 4)."),
    click.option("--ttl", type=click.IntRange(min=1), metavar="MS", help="Time to live in milliseconds."),
    kv_option("--header", help="Application property (repeatable).", typed=True),
    kv_option("--annotation", help="Message annotation, e.g. x-opt-partition-key=k (repeatable).", typed=True),
    click.option("--body", type=click.Choice(BODIES), default=None,
                 help="How the payload is sent: data (a binary data section, the default), string or "
                      "binary (an AMQP value), value (the payload is JSON: sent as an AMQP map, list, "
                      "number...), sequence (a JSON array as an AMQP sequence)."),
], _props)


# --------------------------------------------------------------------------- send


@group.command()
@amqp1_options
@click.argument("address", required=False)
@property_options
@click.option("--at-most-once", is_flag=True, default=False,
              help="Send pre-settled: the broker acknowledges nothing (faster; a message lost on the "
                   "way is not noticed).")
@click.option("--window", type=click.IntRange(min=1), default=1000, show_default=True,
              help="How many messages may await the broker's outcome at once.")
@send_options()
@timeout_option(10.0, "Give up (exit 5) when no outcome (or no credit) arrives for this many seconds.")
@payload_options()
def send(cfg, address, props, at_most_once, window, sending, timeout, payload):
    """Send a message, a file, stdin, or every line of stdin to ADDRESS.

    Each message waits for the broker's outcome (at least once), up to --window at a
    time: accepted is done; rejected, released or modified is a refusal (exit 6
    naming the outcome and the broker's reason). No outcome within -W is exit 5.
    Stopped early, it says how many were sent and accepted; --failed FILE keeps every
    message not accepted, for --replay. With --replay and no ADDRESS each message goes
    to its captured address.

    \b
    iotctl amqp1 send /queue/jobs -m hello
    iotctl amqp1 send /queue/jobs -f order.json --content-type application/json --header tenant=a
    seq 1 50000 | iotctl amqp1 send /queue/load -l --failed rest.jsonl
    iotctl amqp1 send /exchange/amq.topic --subject sensors.t1 -m 21.5 --durable
    """
    from iotctl import send as sending_

    payload.validate()
    if address is None and payload.replay is None:
        raise UsageError("no address", "give ADDRESS, e.g. /queue/jobs")
    if sending.repeat > 1 and payload.streaming:
        raise UsageError("--repeat", "cannot be combined with -l or --replay")
    sender = endpoints.sink(cfg, address, props, at_most_once, window, timeout, payload)
    items = sending_.outgoing(payload, sending, addresses=(address,) if address is not None else None)
    with sender:
        result = sending_.run(sender, items, "send", timeout, progress=payload.streaming,
                              failed=sending.failed, verb="sending")
    status(f"sent {result.sent} message(s) to {address or 'their captured addresses'}", tty_only=True)


# --------------------------------------------------------------------------- receive


@group.command()
@amqp1_options
@click.argument("addresses", nargs=-1, required=True, metavar="ADDRESS...")
@click.option("--credit", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Link credit: how many messages the broker may send ahead, unacknowledged, per address.")
@click.option("--at-most-once", is_flag=True, default=False,
              help="Ask for pre-settled messages: nothing is acknowledged (what is in flight when it "
                   "ends is lost).")
@receive_options(idle="ok", reconnect=True)
def receive(cfg, addresses, credit, at_most_once, receive):
    """Print messages arriving from one or more addresses (queues, topics).

    A message is accepted only once it has been written: with -C N or Ctrl-C every
    other message stays on the queue (released at once). Ctrl-C ends it (exit 0);
    -W S gives up after S seconds (exit 5 when fewer than -C, or none, arrived);
    --idle-timeout S stops (exit 0) once nothing came for S seconds.

    \b
    iotctl amqp1 receive /queue/jobs
    iotctl amqp1 receive /queue/jobs -C 10 -W 5 -o jsonl --save capture.jsonl
    iotctl amqp1 receive /topic/sensors.# --at-most-once
    """
    from iotctl import receive as receiving

    receiver = endpoints.source(cfg, addresses, credit, at_most_once, receive)
    with receiver:
        status(f"receiving from {', '.join(addresses)} on {cfg.endpoint.display}")
        receiving.run(receiver, receive, "receive")

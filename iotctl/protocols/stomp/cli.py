"""The `stomp` group: send and subscribe.

Only option parsing lives here: both commands are thin wrappers over the endpoints
(endpoints.py) that a stomp:// URL opens too; stomp.py is imported by client.py.
"""

from __future__ import annotations

import click

from iotctl.errors import UsageError
from iotctl.groups import ProtocolGroup
from iotctl.options import bundle, connection_options, kv_option, payload_options, receive_options, \
    send_options, timeout_option
from iotctl.protocols.stomp import endpoints
from iotctl.protocols.stomp.endpoints import PREFETCH, SCHEMES, VERSIONS
from iotctl.settings import current as settings, status

DESTINATIONS = """\b
Destinations are passed to the broker as given:
  RabbitMQ  /queue/NAME        a queue (declared on first use)
            /topic/KEY         amq.topic with routing key KEY (wildcards * and #)
            /exchange/EX/KEY   exchange EX, routing key KEY (send), binding KEY (subscribe)
            /amq/queue/NAME    an existing queue, never declared
            /temp-queue/NAME   a private reply queue (reply-to)
  ActiveMQ  /queue/NAME, /topic/NAME (wildcards . * >), /temp-queue/NAME,
            /temp-topic/NAME; --selector filters with a JMS selector
"""


@click.group(cls=ProtocolGroup, protocol="stomp", aliases={"sub": "subscribe"})
def group():
    """STOMP 1.0, 1.1 and 1.2 (RabbitMQ, ActiveMQ): send and subscribe.

    Every SEND asks for a receipt and the command waits for all of them, so exit 0
    means the broker took every message; an ERROR frame is exit 6 with its text.

    \b
    iotctl stomp send /queue/jobs -m hello -u guest -P guest
    seq 1 10000 | iotctl stomp send /topic/load -l
    iotctl stomp subscribe /queue/jobs -C 10 -o jsonl
    iotctl stomp sub /topic/alerts --url stomp+ssl://user:pass@broker:61614
    """


# --------------------------------------------------------------------------- shared options


def _heartbeats(ctx, param, value):
    if value is None:
        return (0, 0)
    try:
        cx, cy = (int(v) for v in value.split(","))
        if cx < 0 or cy < 0:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{value!r} is not CX,CY (two numbers of milliseconds, e.g. 10000,10000)",
                                 ctx, param) from None
    return (cx, cy)


def _size(ctx, param, value):
    """BYTES, or with a binary unit: 512k, 64M, 1G (KiB, MiB, GiB)."""
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip().lower()
    for suffix in ("ib", "b"):
        if text.endswith(suffix) and text[:-len(suffix)][-1:] in "kmg":
            text = text[:-len(suffix)]
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1:], 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit() or int(digits) == 0:
        raise click.BadParameter(f"{value!r} is not a size (bytes, or e.g. 512k, 64M, 1G)", ctx, param)
    return int(digits) * scale


def _stomp_config(endpoint, vhost, stomp_version, heartbeats, connect_timeout, max_size):
    from iotctl.protocols.stomp.client import StompConfig

    if stomp_version == "1.0" and heartbeats != (0, 0):
        raise UsageError("--heartbeats", "needs STOMP 1.1 or 1.2 (-V/--stomp-version)")
    return StompConfig(endpoint=endpoint, vhost=vhost or None, version=stomp_version, heartbeats=heartbeats,
                       connect_timeout=connect_timeout, debug=settings().debug, max_size=max_size)


_STOMP_OPTIONS = bundle("cfg", [
    click.option("--vhost", default="/", show_default=True, metavar="VHOST",
                 help="The CONNECT host header: RabbitMQ's virtual host ('' sends the host name)."),
    click.option("-V", "--stomp-version", type=click.Choice(VERSIONS), default="1.2", show_default=True,
                 help="STOMP protocol version."),
    click.option("--heartbeats", metavar="CX,CY", callback=_heartbeats,
                 help="Heart-beats in ms: CX what we send, CY what we want (STOMP 1.1+) [default: 0,0]."),
    click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
                 show_default=True, help="Seconds to wait for the broker to accept the connection."),
    click.option("--max-size", metavar="SIZE", default="128M", show_default=True, callback=_size,
                 help="The largest message body to accept from the broker (bytes, or 512k, 64M, 1G): a "
                      "bigger one ends the command (exit 6). A frame's headers may take at most 1 MiB."),
], _stomp_config, consumes=("endpoint",))


def stomp_options(f):
    """Connection options shared by every STOMP command; the command receives `cfg`
    (a client.StompConfig)."""
    return connection_options(SCHEMES, "stomp", tls=True)(_STOMP_OPTIONS(f))


_HEADER = kv_option("--header", help="Extra header (repeatable); checked for what the STOMP version can carry.")


# --------------------------------------------------------------------------- send


@group.command()
@stomp_options
@click.argument("destination", required=False)
@_HEADER
@click.option("--content-type", help="content-type header [default: application/json or application/cbor "
                                     "with --encode json|cbor; none otherwise].")
@click.option("--persistent", is_flag=True, default=False,
              help="persistent:true (kept across a broker restart when the queue is durable).")
@click.option("--reply-to", metavar="DESTINATION", help="reply-to header.")
@click.option("--expires", type=click.IntRange(min=1), metavar="MS",
              help="Discard the message after MS milliseconds: RabbitMQ's expiration and "
                   "ActiveMQ's expires (absolute time) headers.")
@click.option("--priority", type=click.IntRange(0, 9), help="priority header (0-9).")
@click.option("--receipt/--no-receipt", default=True, show_default=True,
              help="Ask for a receipt per message; --no-receipt is faster: one receipt now and then "
                   "confirms every SEND before it (when the window fills, the input pauses, at the end).")
@click.option("--window", type=click.IntRange(min=1), default=256, show_default=True,
              help="How many receipts may be outstanding at once (--no-receipt: 4x as many messages).")
@click.option("--transaction", is_flag=True, default=False,
              help="Send every message in one transaction: BEGIN, SENDs, COMMIT (ABORT on failure).")
@send_options()
@timeout_option(10.0, "Give up (exit 5) when no receipt arrives for this many seconds.")
@payload_options()
def send(cfg, destination, header, content_type, persistent, reply_to, expires, priority, receipt, window,
         transaction, sending, timeout, payload):
    """Send a message, a file, stdin, or every line of stdin to DESTINATION.

    Each SEND asks for a receipt, with up to --window outstanding; the command exits
    when every receipt came back (exit 5 naming how many did not, exit 6 with the
    broker's text on an ERROR frame). --failed FILE keeps what was not confirmed,
    with its destination and headers: --replay FILE alone sends it again.

    \b
    iotctl stomp send /queue/jobs '{"job": 1}' --content-type application/json
    iotctl stomp send /exchange/amq.topic/sensors.t1 -m 21.5 --header unit=C
    seq 1 50000 | iotctl stomp send /queue/load -l --failed rest.jsonl
    iotctl stomp send /queue/orders -f batch.txt -l --transaction

    """
    from iotctl import send as sending_

    payload.validate()
    if destination is None and payload.replay is None:
        raise UsageError("no destination", "give DESTINATION, e.g. /queue/NAME")
    if sending.repeat > 1 and payload.streaming:
        raise UsageError("--repeat", "cannot be combined with -l or --replay")
    sender = endpoints.sink(cfg, destination, header, content_type, persistent, reply_to, expires, priority,
                           receipt, window, transaction, timeout, payload)
    items = sending_.outgoing(payload, sending, addresses=(destination,) if destination else (),
                              validate=lambda d: endpoints.check_destination(d, cfg.version))
    with sender:
        result = sending_.run(sender, items, "send", timeout, progress=payload.streaming,
                              failed=sending.failed, verb="sending")
    status(f"sent {result.sent} message(s) to {destination or 'their captured destinations'}"
           + (" in one transaction" if transaction else ""), tty_only=True)


# --------------------------------------------------------------------------- subscribe


@group.command()
@stomp_options
@click.argument("destinations", nargs=-1, required=True, metavar="DESTINATION...")
@click.option("--ack", "ack_mode", type=click.Choice(("auto", "client", "client-individual")), default=None,
              help="auto: the broker forgets a message once sent; client: one ACK covers every earlier "
                   "message; client-individual: one ACK each [default: client-individual, each message "
                   "acknowledged once written].")
@click.option("--nack", is_flag=True, default=False,
              help="Reject (NACK, not requeued) every message once written: drains what it reads.")
@click.option("--prefetch", type=click.IntRange(min=1), metavar="N",
              help=f"At most N unacknowledged messages delivered at once (RabbitMQ prefetch-count, "
                   f"ActiveMQ activemq.prefetchSize) [default: {PREFETCH}].")
@click.option("--durable", is_flag=True, default=False,
              help="A durable topic subscription named by --id (kept while disconnected).")
@click.option("--id", "sub_id", metavar="NAME", help="Subscription id (the durable subscription's name).")
@click.option("--selector", metavar="EXPR", help="JMS selector, e.g. \"priority > 4 AND colour = 'red'\" "
                                                 "(ActiveMQ; RabbitMQ ignores it).")
@_HEADER
@receive_options(idle="ok", reconnect=True)
def subscribe(cfg, destinations, ack_mode, nack, prefetch, durable, sub_id, selector, header, receive):
    """Print the messages arriving on one or more destinations, headers included.

    By default each message is acknowledged only once it has been written, so one
    that was never shown (-C reached, Ctrl-C) goes back to the queue. Ctrl-C ends
    it (exit 0); -C N stops after N messages; -W S gives up after S seconds (exit 5
    when fewer than N, or none, arrived); --idle-timeout S stops once the queue has
    been quiet for S seconds. A lost connection (a broker restart) is connected
    again with backoff and the subscriptions restored; --no-reconnect exits 3.

    \b
    iotctl stomp subscribe /queue/jobs -C 1
    iotctl stomp sub /topic/sensors.# -o jsonl --save capture.jsonl
    iotctl stomp sub /topic/orders --durable --id audit --ack client
    iotctl stomp sub /queue/orders --selector "region = 'eu'" -V 1.1
    """
    from iotctl import receive as receiving

    subscription = endpoints.source(cfg, destinations, ack_mode, nack, prefetch, durable, sub_id, selector,
                                    header, receive)
    with subscription:
        status(f"subscribed to {', '.join(destinations)} on {cfg.endpoint.display}")
        receiving.run(subscription, receive, "subscribe")


# the destination forms, in the help of the group and of both commands
def _with_destinations(text: str) -> str:
    import inspect

    return inspect.cleandoc(text) + "\n\n" + DESTINATIONS


for _command in (group, send, subscribe):
    _command.help = _with_destinations(_command.help)

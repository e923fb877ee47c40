"""The `stomp` group: send and subscribe.

Only option parsing lives here; stomp.py is imported by client.py, inside the commands.
"""

from __future__ import annotations

import click

from iotctl.endpoint import Scheme
from iotctl.errors import UsageError
from iotctl.groups import ProtocolGroup
from iotctl.options import bundle, connection_options, kv_option, payload_options, receive_options, \
    send_options, timeout_option
from iotctl.settings import current as settings, status

SCHEMES = {
    "stomp": Scheme(tls=False, ws=False, port=61613),
    "stomp+ssl": Scheme(tls=True, ws=False, port=61614),
}
VERSIONS = ("1.0", "1.1", "1.2")

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


def _stomp_config(endpoint, vhost, stomp_version, heartbeats, connect_timeout):
    from iotctl.protocols.stomp.client import StompConfig

    if stomp_version == "1.0" and heartbeats != (0, 0):
        raise UsageError("--heartbeats", "needs STOMP 1.1 or 1.2 (-V/--stomp-version)")
    return StompConfig(endpoint=endpoint, vhost=vhost or None, version=stomp_version, heartbeats=heartbeats,
                       connect_timeout=connect_timeout, debug=settings().debug)


_STOMP_OPTIONS = bundle("cfg", [
    click.option("--vhost", default="/", show_default=True, metavar="VHOST",
                 help="The CONNECT host header: RabbitMQ's virtual host ('' sends the host name)."),
    click.option("-V", "--stomp-version", type=click.Choice(VERSIONS), default="1.2", show_default=True,
                 help="STOMP protocol version."),
    click.option("--heartbeats", metavar="CX,CY", callback=_heartbeats,
                 help="Heart-beats in ms: CX what we send, CY what we want (STOMP 1.1+) [default: 0,0]."),
    click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
                 show_default=True, help="Seconds to wait for the broker to accept the connection."),
], _stomp_config, consumes=("endpoint",))


def stomp_options(f):
    """Connection options shared by every STOMP command; the command receives `cfg`
    (a client.StompConfig)."""
    return connection_options(SCHEMES, "stomp", tls=True)(_STOMP_OPTIONS(f))


_HEADER = kv_option("--header", help="Extra header (repeatable), sent as given.")


def _check_destination(destination: str) -> str:
    if not destination or "\n" in destination:
        raise UsageError(f"bad destination {destination!r}", "give e.g. /queue/NAME or /topic/NAME")
    return destination


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
@click.option("--no-receipt", is_flag=True, default=False,
              help="Do not ask for a receipt per message (faster; only the final DISCONNECT waits).")
@click.option("--window", type=click.IntRange(min=1), default=256, show_default=True,
              help="How many receipts may be outstanding at once.")
@click.option("--transaction", is_flag=True, default=False,
              help="Send every message in one transaction: BEGIN, SENDs, COMMIT (ABORT on failure).")
@send_options()
@timeout_option(10.0, "Give up (exit 5) when no receipt arrives for this many seconds.")
@payload_options()
def send(cfg, destination, header, content_type, persistent, reply_to, expires, priority, no_receipt, window,
         transaction, sending, timeout, payload):
    """Send a message, a file, stdin, or every line of stdin to DESTINATION.

    Each SEND asks for a receipt, with up to --window outstanding; the command exits
    when every receipt came back (exit 5 naming how many did not, exit 6 with the
    broker's text on an ERROR frame). --failed FILE keeps what was not confirmed.

    \b
    iotctl stomp send /queue/jobs '{"job": 1}' --content-type application/json
    iotctl stomp send /exchange/amq.topic/sensors.t1 -m 21.5 --header unit=C
    seq 1 50000 | iotctl stomp send /queue/load -l --failed rest.jsonl
    iotctl stomp send /queue/orders -f batch.txt -l --transaction

    """
    import time

    from iotctl import send as sending_
    from iotctl.protocols.stomp.client import Sender, Session

    payload.validate()
    if destination is None and payload.replay is None:
        raise UsageError("no destination", "give DESTINATION, e.g. /queue/NAME")
    if destination is not None:
        _check_destination(destination)
    if sending.repeat > 1 and payload.streaming:
        raise UsageError("--repeat", "cannot be combined with -l or --replay")
    if payload.encode in ("json", "cbor") and content_type is None:
        content_type = f"application/{payload.encode}"
    headers = {k: str(v) for k, v in header}
    if persistent:
        headers["persistent"] = "true"
    if reply_to:
        headers["reply-to"] = reply_to
    if priority is not None:
        headers["priority"] = str(priority)
    if expires is not None:
        headers["expiration"] = str(expires)
        headers["expires"] = str(int(time.time() * 1000) + expires)
    items = sending_.outgoing(payload, sending)
    with Session(cfg) as session:
        tx = None
        if transaction:
            tx = f"iotctl-tx-{session.next_id('')}-{int(time.time() * 1000)}"
            session.request("BEGIN", lambda rid: session.conn.send_frame("BEGIN", {"transaction": tx, "receipt": rid}),
                            timeout)
        # in a transaction the COMMIT's receipt confirms every message (brokers may hold
        # the SENDs' own receipts until then)
        sender = Sender(session, destination, headers, content_type, receipts=not no_receipt and not tx,
                        window=window, transaction=tx)
        try:
            result = sending_.run(sender, items, "send", timeout, progress=payload.streaming,
                                  failed=sending.failed, verb="sending")
            if tx:
                session.request("COMMIT", lambda rid: session.conn.send_frame(
                    "COMMIT", {"transaction": tx, "receipt": rid}), timeout)
        except BaseException:
            if tx:
                session.abort(tx)
            raise
        if no_receipt or tx:
            session.finish("send", timeout)
    status(f"sent {result.sent} message(s) to {destination or 'their captured destinations'}"
           + (" in one transaction" if tx else ""), tty_only=True)


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
              help="At most N unacknowledged messages delivered at once (RabbitMQ prefetch-count, "
                   "ActiveMQ activemq.prefetchSize).")
@click.option("--durable", is_flag=True, default=False,
              help="A durable topic subscription named by --id (kept while disconnected).")
@click.option("--id", "sub_id", metavar="NAME", help="Subscription id (the durable subscription's name).")
@click.option("--selector", metavar="EXPR", help="JMS selector, e.g. \"priority > 4 AND colour = 'red'\" "
                                                 "(ActiveMQ; RabbitMQ ignores it).")
@_HEADER
@receive_options(idle="ok")
def subscribe(cfg, destinations, ack_mode, nack, prefetch, durable, sub_id, selector, header, receive):
    """Print the messages arriving on one or more destinations, headers included.

    By default each message is acknowledged only once it has been written, so one
    that was never shown (-C reached, Ctrl-C) goes back to the queue. Ctrl-C ends
    it (exit 0); -C N stops after N messages; -W S gives up after S seconds (exit 5
    when fewer than N, or none, arrived); --idle-timeout S stops once the queue has
    been quiet for S seconds.

    \b
    iotctl stomp subscribe /queue/jobs -C 1
    iotctl stomp sub /topic/sensors.# -o jsonl --save capture.jsonl
    iotctl stomp sub /topic/orders --durable --id audit --ack client
    iotctl stomp sub /queue/orders --selector "region = 'eu'" -V 1.1
    """
    from iotctl import receive as receiving
    from iotctl.protocols.stomp.client import Receiver, Session

    for d in destinations:
        _check_destination(d)
    if durable and not sub_id:
        raise UsageError("--durable", "a durable subscription needs a name: add --id NAME")
    ack = ack_mode or "client-individual"
    if nack and cfg.version == "1.0":
        raise UsageError("--nack", "STOMP 1.0 has no NACK; use -V 1.1 or 1.2")
    if nack and ack == "auto":
        raise UsageError("--nack and --ack auto", "contradict each other")
    headers = {k: str(v) for k, v in header}
    if prefetch is not None:
        headers.setdefault("prefetch-count", str(prefetch))
        headers.setdefault("activemq.prefetchSize", str(prefetch))
    if selector:
        headers["selector"] = selector
    if durable:
        headers.update({"durable": "true", "auto-delete": "false", "persistent": "true"})
        cfg.client_id = cfg.client_id or sub_id
    with Session(cfg) as session:
        for i, dest in enumerate(destinations):
            sid = (sub_id if i == 0 else f"{sub_id}-{i + 1}") if sub_id else f"iotctl-{i + 1}"
            h = dict(headers)
            if durable:
                h["activemq.subscriptionName"] = sid
            session.subscribe(dest, sid, ack, h, cfg.connect_timeout)
        status(f"subscribed to {', '.join(destinations)} on {cfg.endpoint.display}")
        receiving.run(Receiver(session, ack, nack, f"subscription to {', '.join(destinations)}"), receive,
                      "subscribe")


# the destination forms, in the help of the group and of both commands
def _with_destinations(text: str) -> str:
    import inspect

    return inspect.cleandoc(text) + "\n\n" + DESTINATIONS


for _command in (group, send, subscribe):
    _command.help = _with_destinations(_command.help)

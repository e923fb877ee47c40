"""The `amqp` group (AMQP 0-9-1, RabbitMQ): publish, consume, get, tap, topology, request.

Only option parsing lives here; pika is imported by client.py, inside the commands.
"""

from __future__ import annotations

import click

from iotctl.errors import UsageError
from iotctl.groups import ProtocolGroup
from iotctl.options import (bundle, connection_options, kv_option, payload_options, receive_options,
                            send_options, timeout_option)
from iotctl.protocols.amqp import endpoints
from iotctl.protocols.amqp.endpoints import SCHEMES
from iotctl.settings import current as settings, status

EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")


@click.group(cls=ProtocolGroup, protocol="amqp", aliases={"pub": "publish"})
def group():
    """AMQP 0-9-1 (RabbitMQ): publish with confirms, consume without loss, tap live
    traffic, manage queues, exchanges and bindings.

    Connect with --url amqp[s]://user:pass@host:port/vhost (the vhost URL-encoded:
    /%2f is the default vhost /, and a URL ending in / asks for the empty vhost) or
    -h/-p/-u/-P/--vhost [default: guest/guest@localhost:5672, vhost /].

    \b
    iotctl amqp publish -e amq.topic -r sensors.t1 -m 21.5
    iotctl amqp consume orders -C 10 -o jsonl
    iotctl amqp tap amq.topic:'sensors.#'
    iotctl amqp declare queue jobs --durable --arg x-max-length:int=1000
    """


# --------------------------------------------------------------------------- connection


def _amqp_config(endpoint, vhost, heartbeat, connect_timeout, connection_name):
    from urllib.parse import unquote

    from click.core import ParameterSource

    from iotctl.protocols.amqp.client import AmqpConfig

    ctx = click.get_current_context()
    if ctx.get_parameter_source("vhost") is not ParameterSource.COMMANDLINE and endpoint.path is not None:
        # the URL's path names the vhost: /%2f is "/", a lone "/" is the empty vhost
        vhost = unquote(endpoint.path[1:])
    return AmqpConfig(endpoint, vhost, heartbeat, connect_timeout, settings().debug, connection_name)


_AMQP_OPTIONS = bundle("cfg", [
    click.option("--vhost", default="/", show_default=True,
                 help="Virtual host (a --url path sets it too, URL-encoded: /%2f is /)."),
    click.option("--heartbeat", type=click.IntRange(0, 65535), default=None, metavar="SECONDS",
                 help="Heartbeat interval (0: none) [default: what the broker proposes]."),
    click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
                 show_default=True, metavar="SECONDS", help="Seconds to wait for the connection."),
    click.option("--connection-name", metavar="NAME",
                 help="The name the broker shows for this connection (rabbitmqctl list_connections "
                      "client_properties, the management UI) [default: iotctl amqp COMMAND]."),
], _amqp_config, consumes=("endpoint",))


def amqp_options(f):
    """Connection options shared by every AMQP command; the command receives `cfg`
    (a client.AmqpConfig) instead of them."""
    return connection_options(SCHEMES, "amqp")(_AMQP_OPTIONS(f))


def _session(cfg, command: str):
    from iotctl.protocols.amqp.client import Session

    return Session(cfg, name=cfg.name(command))


_ARG = kv_option("--arg", "arguments", help="Argument (repeatable), e.g. x-max-length:int=10, "
                                            "x-queue-type=quorum, x-match=all.", typed=True)


def _table(pairs) -> dict:
    return dict(pairs) if pairs else {}


# --------------------------------------------------------------------------- publish


def _timestamp(ctx, param, value):
    if value is None:
        return None
    import time
    from datetime import datetime

    if value == "now":
        return int(time.time())
    if value.isdigit():
        return int(value)
    try:
        return int(datetime.fromisoformat(value).timestamp())
    except ValueError:
        raise click.BadParameter("give 'now', seconds since 1970, or an ISO date", ctx, param) from None


def _properties(content_type, content_encoding, persistent, priority, correlation_id, reply_to, expiration,
                message_id, type_, app_id, user_id, timestamp, header):
    from iotctl.options import Values

    fields = {"content_type": content_type, "content_encoding": content_encoding,
              "delivery_mode": 2 if persistent else None, "priority": priority,
              "correlation_id": correlation_id, "reply_to": reply_to,
              "expiration": str(expiration) if expiration is not None else None,
              "message_id": message_id, "type": type_, "app_id": app_id, "user_id": user_id,
              "timestamp": timestamp}
    return Values(fields=fields, headers=_table(header))


property_options = bundle("props", [
    click.option("--content-type", help="Content type, e.g. application/json [default: application/json "
                                        "or application/cbor with --encode json|cbor]."),
    click.option("--content-encoding", help="Content encoding, e.g. gzip."),
    click.option("--persistent", is_flag=True, default=False,
                 help="Delivery mode 2: a durable queue keeps the message across a broker restart."),
    click.option("--priority", type=click.IntRange(0, 255), help="Message priority."),
    click.option("--correlation-id", help="Correlation id."),
    click.option("--reply-to", help="Queue the answer should go to."),
    click.option("--expiration", type=click.IntRange(min=0), metavar="MS",
                 help="Per-message TTL in milliseconds."),
    click.option("--message-id", help="Message id."),
    click.option("--type", "type_", help="Message type name."),
    click.option("--app-id", help="Application id."),
    click.option("--user-id", help="User id (RabbitMQ checks it is the connection's user)."),
    click.option("--timestamp", callback=_timestamp, metavar="now|SECONDS|ISO",
                 help="Timestamp property."),
    kv_option("--header", help="Header (repeatable).", typed=True),
], _properties)


@group.command()
@amqp_options
@click.option("-e", "--exchange", default=None,
              help="Exchange to publish to [default: '' (the default exchange: the routing key is a "
                   "queue name); with --replay, the captured one].")
@click.option("-r", "--routing-key", "routing_keys", multiple=True, metavar="KEY",
              help="Routing key (repeatable: each message is published once per key). With --replay, "
                   "the captured address is used when absent.")
@click.option("--queue", metavar="QUEUE",
              help="Publish to this queue: the same as -e '' -r QUEUE (a URL's ?queue=QUEUE).")
@click.option("--mandatory", is_flag=True, default=False,
              help="Have the broker return unroutable messages: each is reported, exit 6.")
@click.option("--confirm/--no-confirm", default=True, show_default=True,
              help="Publisher confirms: exit 0 only once the broker has confirmed every message "
                   "(--no-confirm: fire and forget).")
@click.option("--window", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Messages that may await their confirm at once.")
@property_options
@send_options()
@timeout_option(10.0, "Give up (exit 5) when no confirm arrives for this many seconds.")
@payload_options()
def publish(cfg, exchange, routing_keys, queue, mandatory, confirm, window, props, sending, timeout, payload):
    """Publish a message, a file, stdin, or every line of stdin.

    With confirms (the default) it exits 0 only when the broker has confirmed every
    message; a nack is exit 6 naming how many, as is a message returned with
    --mandatory (each is reported). Stopped early, it says how many were sent and
    confirmed; --failed FILE keeps every message not confirmed, for --replay.

    \b
    iotctl amqp publish -r jobs -m '{"id": 1}' --content-type application/json --persistent
    iotctl amqp publish -e amq.topic -r sensors.t1 --header site=lab --header floor:int=2 -m 21.5
    seq 1 100000 | iotctl amqp publish -r load -l
    """
    from iotctl import send
    from iotctl.protocols.amqp.client import check_name

    payload.validate()
    if not routing_keys and queue is None and payload.replay is None:
        raise UsageError("no routing key", "give -r KEY (with the default exchange, a queue name) or --queue QUEUE")
    if sending.repeat > 1 and payload.streaming:
        raise UsageError("--repeat", "cannot be combined with -l or --replay")
    publisher = endpoints.sink(cfg, exchange, routing_keys, queue, mandatory, confirm, window, props, payload)
    items = send.outgoing(payload, sending, addresses=publisher.routing_keys,
                          validate=lambda key: check_name("routing key", key))
    with publisher:
        result = send.run(publisher, items, "publish", timeout, progress=payload.streaming,
                          failed=sending.failed, verb="publishing")
    status(f"published {result.sent} message(s)" + (", all confirmed" if confirm else ""), tty_only=True)


# --------------------------------------------------------------------------- consume

ACK_MODES = ("after-write", "auto", "none")


@group.command()
@amqp_options
@click.argument("queues", nargs=-1, metavar="QUEUE...")
@click.option("--queue", "queue_names", multiple=True, metavar="QUEUE",
              help="A queue to consume from, as QUEUE... (repeatable; a URL's ?queue=QUEUE).")
@click.option("--prefetch", type=click.IntRange(0, 65535), default=None,
              help="Unacknowledged deliveries the broker may send ahead [default: 1000; none "
                   "with --ack none or --requeue].")
@click.option("--ack", "ack", type=click.Choice(ACK_MODES), default="after-write", show_default=True,
              help="after-write: acknowledge a message once it is written (with -C N or Ctrl-C every "
                   "other message stays on the queue); auto: the broker forgets a message once sent "
                   "(deliveries in flight are lost at -C/Ctrl-C); none: never (all go back when it ends).")
@click.option("--requeue", is_flag=True, default=False,
              help="Only look: reject every message shown with requeue when done.")
@click.option("--exclusive", is_flag=True, default=False, help="Be the queue's only consumer.")
@click.option("--priority", "consumer_priority", type=int, default=None, help="Consumer priority (x-priority).")
@click.option("--declare", is_flag=True, default=False,
              help="Consume from a new exclusive, auto-delete queue bound to -e with each -r (a URL's "
                   "?exchange=X&routing_key=K without ?queue).")
@click.option("-e", "--exchange", default=None, help="With --declare: exchange to bind to [default: amq.topic].")
@click.option("-r", "--routing-key", "routing_keys", multiple=True, metavar="KEY",
              help="With --declare: binding key (repeatable) [default: #; a direct exchange needs the key].")
@receive_options(idle="ok", reconnect=True)
def consume(cfg, queues, queue_names, prefetch, ack, requeue, exclusive, consumer_priority, declare, exchange,
            routing_keys, receive):
    """Print messages from one or more queues, acknowledging each only once written.

    Ctrl-C ends it (exit 0). -C N stops after N messages and leaves every other one on
    the queue; --idle-timeout S stops once the queue has been empty for S seconds;
    -W S gives up (exit 5) when fewer than N, or none, arrived. After a lost
    connection (a broker restart) it connects again with backoff; what was not
    acknowledged comes again from the queue.

    \b
    iotctl amqp consume jobs -C 1
    iotctl amqp consume orders invoices -o jsonl --save capture.jsonl
    iotctl amqp consume --declare -e amq.topic -r 'sensors.#' --idle-timeout 2
    """
    from iotctl import receive as receiving

    consumer = endpoints.source(cfg, queues, queue_names, prefetch, ack, requeue, exclusive, consumer_priority,
                                declare, exchange, routing_keys, receive)
    with consumer:
        status(f"consuming from {', '.join(consumer.queues)} on {consumer.where}")
        receiving.run(consumer, receive, "consume")


# --------------------------------------------------------------------------- get


@group.command()
@amqp_options
@click.argument("queue")
@click.option("-C", "--count", type=click.IntRange(min=1), default=1, show_default=True,
              help="Take up to COUNT messages (exit 5 when the queue had fewer).")
@click.option("--requeue", is_flag=True, default=False, help="Only look: put the messages back.")
def get(cfg, queue, count, requeue):
    """Take messages from a queue one by one (Basic.Get), for scripts.

    Each message is acknowledged once written; --requeue puts them back (in order).
    An empty queue is exit 5.

    \b
    iotctl amqp get jobs
    iotctl amqp get jobs -C 10 --requeue -o jsonl
    """
    from iotctl import receive as receiving
    from iotctl.errors import TimeoutError_
    from iotctl.protocols.amqp.client import Getter

    with Getter(cfg, queue, requeue=requeue, name=cfg.name("get")) as getter:
        n = receiving.run(getter, receiving.ReceiveSpec(count), "get")
    if n == 0:
        raise TimeoutError_(f"get from queue {queue!r}", "the queue is empty")
    if n < count:
        raise TimeoutError_(f"get from queue {queue!r}", f"got {n} of {count} messages: the queue is empty")


# --------------------------------------------------------------------------- tap


@group.command()
@amqp_options
@click.argument("exchanges", nargs=-1, metavar="EXCHANGE[:KEY]...")
@click.option("--firehose", is_flag=True, default=False,
              help=f"Read RabbitMQ's firehose ({'amq.rabbitmq.trace'}): every publish and delivery in "
                   "the vhost (needs: rabbitmqctl trace_on -p VHOST).")
@receive_options(idle="ok", reconnect=True)
def tap(cfg, exchanges, firehose, receive):
    """Watch what flows through exchanges without taking anything from anyone.

    Each EXCHANGE is bound (exchange-to-exchange, key KEY [default: #, which matches
    everything on topic and fanout exchanges; a direct exchange needs the exact key])
    to a temporary exchange and an exclusive auto-delete queue; the broker removes
    them when tap ends, also on Ctrl-C or a lost connection (after which tap connects
    again, with backoff, and taps anew).

    \b
    iotctl amqp tap amq.topic
    iotctl amqp tap orders:'eu.#' invoices -o jsonl
    iotctl amqp tap --firehose
    """
    from iotctl import receive as receiving

    tapping = endpoints.tap(cfg, exchanges, firehose, receive)
    with tapping:
        shown = ", ".join([e if k is None else f"{e}:{k}" for e, k in tapping.taps]
                          + (["the firehose"] if firehose else []))
        status(f"tapping {shown} on {tapping.where}")
        receiving.run(tapping, receive, "tap")


# --------------------------------------------------------------------------- topology


@group.group()
def declare():
    """Declare a queue or an exchange (idempotent; a different definition is exit 6)."""


_DURABLE = click.option("--durable", is_flag=True, default=False, help="Survive a broker restart.")
_AUTO_DELETE = click.option("--auto-delete", is_flag=True, default=False,
                            help="Delete it when its last consumer (queue) or binding (exchange) goes.")
_PASSIVE = click.option("--passive", is_flag=True, default=False,
                        help="Only check that it exists (exit 6 when not).")


@declare.command("queue")
@amqp_options
@click.argument("name", default="")
@_DURABLE
@click.option("--exclusive", is_flag=True, default=False,
              help="Only this connection may use it (so it goes when this command ends).")
@_AUTO_DELETE
@_PASSIVE
@_ARG
def declare_queue(cfg, name, durable, exclusive, auto_delete, passive, arguments):
    """Declare queue NAME (a server-named one without NAME: its name is printed).

    \b
    iotctl amqp declare queue jobs --durable
    iotctl amqp declare queue buffer --arg x-max-length:int=1 --arg x-overflow=reject-publish
    iotctl amqp declare queue orders --durable --arg x-queue-type=quorum
    """
    with _session(cfg, "declare") as session:
        ok = session.declare_queue(name, durable=durable, exclusive=exclusive, auto_delete=auto_delete,
                                   arguments=_table(arguments), passive=passive)
    if not name:
        click.echo(ok.queue)
    status(f"queue {ok.queue!r}: {ok.message_count} message(s), {ok.consumer_count} consumer(s)")


@declare.command("exchange")
@amqp_options
@click.argument("name")
@click.option("-t", "--type", "kind", default="direct", show_default=True, metavar="TYPE",
              help=f"Exchange type: {', '.join(EXCHANGE_TYPES)} or a plugin's (x-...).")
@_DURABLE
@_AUTO_DELETE
@click.option("--internal", is_flag=True, default=False, help="Only other exchanges may publish to it.")
@_PASSIVE
@_ARG
def declare_exchange(cfg, name, kind, durable, auto_delete, internal, passive, arguments):
    """Declare exchange NAME.

    \b
    iotctl amqp declare exchange events -t topic --durable
    iotctl amqp declare exchange alt -t fanout
    """
    if not name:
        raise UsageError("no exchange name", "the default exchange '' cannot be declared")
    with _session(cfg, "declare") as session:
        session.declare_exchange(name, kind, durable=durable, auto_delete=auto_delete, internal=internal,
                                 arguments=_table(arguments), passive=passive)
    status(f"exchange {name!r} ({kind}) declared" if not passive else f"exchange {name!r} exists")


def _binding_command(unbind: bool):
    verb = "unbind" if unbind else "bind"

    help_text = (
        f"{'Remove' if unbind else 'Add'} a binding: queue or exchange NAME "
        f"{'from' if unbind else 'to'} the exchange -e.\n\n"
        "Header exchanges take their match in --arg (x-match=all|any and the headers).\n\n"
        f"\b\niotctl amqp {verb} queue jobs -e amq.topic -r 'jobs.#'\n"
        f"iotctl amqp {verb} exchange audit -e events -r '#'\n"
        f"iotctl amqp {verb} queue lab -e amq.headers --arg x-match=all --arg site=lab\n")

    @click.command(verb, help=help_text)
    @amqp_options
    @click.argument("kind", type=click.Choice(("queue", "exchange")))
    @click.argument("name")
    @click.option("-e", "--exchange", "source", required=True, help="The source exchange.")
    @click.option("-r", "--routing-key", "routing_keys", multiple=True, metavar="KEY",
                  help="Binding key (repeatable) [default: '' (fanout/headers)].")
    @_ARG
    def command(cfg, kind, name, source, routing_keys, arguments):
        with _session(cfg, verb) as session:
            for key in routing_keys or ("",):
                session.bind(kind, name, source, key, _table(arguments), unbind=unbind)
        keys = ", ".join(repr(k) for k in routing_keys or ("",))
        status(f"{'unbound' if unbind else 'bound'} {kind} {name!r} {'from' if unbind else 'to'} "
               f"exchange {source!r} (key {keys})")

    return command


group.add_command(_binding_command(False))
group.add_command(_binding_command(True))


@group.command()
@amqp_options
@click.argument("kind", type=click.Choice(("queue", "exchange")))
@click.argument("name")
@click.option("--if-unused", is_flag=True, default=False, help="Only when it has no consumers (queue) "
                                                              "or bindings (exchange); else exit 6.")
@click.option("--if-empty", is_flag=True, default=False, help="Queue: only when it is empty; else exit 6.")
@click.option("--if-exists", is_flag=True, default=False,
              help="A missing queue or exchange is fine (exit 0) [default: exit 6, no such queue].")
def delete(cfg, kind, name, if_unused, if_empty, if_exists):
    """Delete a queue or an exchange (one that does not exist is exit 6).

    \b
    iotctl amqp delete queue jobs --if-empty
    iotctl amqp delete exchange events --if-unused
    iotctl amqp delete queue scratch --if-exists
    """
    if if_empty and kind != "queue":
        raise UsageError("--if-empty", "only applies to a queue")
    with _session(cfg, "delete") as session:
        count = session.delete(kind, name, if_unused=if_unused, if_empty=if_empty, if_exists=if_exists)
    if count == "missing":
        status(f"no {kind} {name!r}: nothing to delete")
        return
    status(f"deleted {kind} {name!r}" + (f" ({count} message(s) with it)" if count is not None else ""))


@group.command()
@amqp_options
@click.argument("queue")
def purge(cfg, queue):
    """Remove every ready message from a queue; prints how many.

    \b
    iotctl amqp purge jobs
    """
    with _session(cfg, "purge") as session:
        count = session.purge(queue)
    click.echo(count)
    status(f"purged {count} message(s) from queue {queue!r}", tty_only=True)


# --------------------------------------------------------------------------- request


@group.command()
@amqp_options
@click.option("-e", "--exchange", default="", help="Exchange to send the request to [default: '' "
                                                    "(the routing key is a queue name)].")
@click.option("-r", "--routing-key", required=True, metavar="KEY", help="Routing key of the request.")
@click.option("--correlation-id", help="Correlation id [default: random].")
@click.option("--content-type", help="Content type of the request.")
@kv_option("--header", help="Header (repeatable).", typed=True)
@timeout_option(10.0)
@payload_options(replay=False)
def request(cfg, exchange, routing_key, correlation_id, content_type, header, timeout, payload):
    """Send a request and print the answer (RPC over RabbitMQ's direct reply-to).

    The request carries reply-to amq.rabbitmq.reply-to and a correlation id; the
    first answer with that id is printed. No answer within -W is exit 5; a request
    nothing is bound to is exit 6.

    \b
    iotctl amqp request -r rpc.time -m now
    iotctl amqp request -e services -r billing.total -m '{"order": 7}' --content-type application/json
    """
    import uuid

    from iotctl import receive
    from iotctl.protocols.amqp.client import DIRECT_REPLY_TO, Reply, build_properties, publish_one

    payload.validate()
    data = payload.read_one()
    corr = correlation_id if correlation_id is not None else uuid.uuid4().hex
    if payload.encode in ("json", "cbor") and content_type is None:
        content_type = f"application/{payload.encode}"
    props = build_properties({"content_type": content_type, "correlation_id": corr,
                              "reply_to": DIRECT_REPLY_TO}, _table(header))
    with _session(cfg, "request") as session:
        reply = Reply(session, corr)
        reply.start()
        publish_one(session, exchange, routing_key, data, props, mandatory=True)
        receive.run(reply, receive.ReceiveSpec(1, timeout), f"no answer to the request on {routing_key!r}")

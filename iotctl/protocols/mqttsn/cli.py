"""The `mqttsn` group: publish, subscribe, gateway, dump.

Only option parsing lives here; the client, the gateway and the codec are imported
inside the commands.
"""

from __future__ import annotations

import click

from iotctl.endpoint import Scheme
from iotctl.errors import UsageError
from iotctl.groups import ProtocolGroup
from iotctl.options import (bundle, connection_options, payload_options, receive_options, send_options,
                            timeout_option)
from iotctl.protocols.mqttsn import endpoints
from iotctl.protocols.mqttsn.endpoints import SCHEMES
from iotctl.settings import current as settings, status
from iotctl.topics import validate_topic
# where the gateway forwards to (its --broker URL)
BROKER_SCHEMES = {"mqtt": Scheme(tls=False, ws=False, port=1883), "mqtts": Scheme(tls=True, ws=False, port=8883)}


@click.group(cls=ProtocolGroup, protocol="mqttsn", aliases={"pub": "publish", "sub": "subscribe"})
def group():
    """MQTT-SN v1.2 over UDP: publish, subscribe, a gateway to any MQTT broker, a packet dump.

    Flags follow the mosquitto and mqtt-sn-tools clients: -h gateway host, -p UDP
    port (1883), -t topic, -T predefined topic id, -m message, -q QoS (-1..2), -r
    retain, -C count, -W timeout, -i client id, -k keepalive.

    \b
    iotctl mqttsn gateway --broker mqtt://127.0.0.1:1883 &
    iotctl mqttsn sub -t 'sensors/#' -v
    iotctl mqttsn pub -t sensors/t1 -m 21.5 -q 1
    """


# --------------------------------------------------------------------------- shared options

_RETRY = [
    click.option("--retry-interval", type=click.FloatRange(min=0.01), default=2.0, show_default=True,
                 metavar="SECONDS", help="Tretry: send an unanswered request again after this long."),
    click.option("--retries", type=click.IntRange(0, 100), default=5, show_default=True,
                 help="Nretry: how many times an unanswered request is sent again before giving up."),
]


def _sn_config(endpoint, client_id, keepalive, clean_session, will_topic, will_payload, will_qos, will_retain,
               retry_interval, retries):
    from iotctl.protocols.mqttsn.client import SnConfig, SnWill

    will = None
    if will_topic is not None:
        will = SnWill(validate_topic(will_topic), will_payload.encode(), will_qos, will_retain)
    elif will_retain or will_payload:
        raise UsageError("--will-payload/--will-retain", "need --will-topic")
    if not clean_session and not client_id:
        raise UsageError("--no-clean-session", "a persistent session needs a fixed client id: add -i ID")
    return SnConfig(host=endpoint.host, port=endpoint.port, client_id=client_id, keepalive=keepalive,
                    clean_session=clean_session, will=will, retry_interval=retry_interval,
                    retries=retries, debug=settings().debug)


_SN_OPTIONS = bundle("cfg", [
    click.option("-i", "--client-id", help="Client id [default: iotctl-PID-RANDOM]."),
    click.option("-k", "--keepalive", type=click.IntRange(0, 65535), default=60, show_default=True,
                 help="Keepalive in seconds (PINGREQ when idle; 0: none)."),
    click.option("--clean-session/--no-clean-session", " /-c", default=True, show_default=True,
                 help="Start a new session, or (-c) resume the session of this client id (-i): "
                      "subscriptions and queued messages."),
    click.option("--will-topic", help="Topic of the will message."),
    click.option("--will-payload", default="", help="Payload of the will message."),
    click.option("--will-qos", type=click.IntRange(0, 2), default=0, help="QoS of the will message."),
    click.option("--will-retain", is_flag=True, default=False, help="Retain the will message."),
    *_RETRY,
], _sn_config, consumes=("endpoint",))


def sn_options(f):
    """Gateway address and session options of the client commands; the command
    receives `cfg` (a client.SnConfig)."""
    return connection_options(SCHEMES, "mqttsn", tls=False, credentials=False,
                              default_host="127.0.0.1")(_SN_OPTIONS(f))


_SLEEP = click.option("--sleep", type=click.IntRange(1, 65535), default=None, metavar="SECONDS",
                      help="Sleeping client: DISCONNECT with this duration; the gateway buffers messages "
                           "until the client wakes up (every SECONDS, with PINGREQ).")


# --------------------------------------------------------------------------- publish


@group.command()
@sn_options
@click.option("-t", "--topic", metavar="TOPIC",
              help="Topic: a name (registered once, then published by id) or a two-character short topic.")
@click.option("-T", "--topic-id", "predefined", type=click.IntRange(1, 65534), metavar="ID",
              help="Predefined topic id (the gateway's --predefined table).")
@click.option("-q", "--qos", type=click.IntRange(-1, 2), default=0, show_default=True,
              help="Quality of service; -1 sends without connecting (only -T or a short topic).")
@click.option("-r", "--retain", is_flag=True, default=False, help="Ask the broker to retain the message.")
@click.option("--max-inflight", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="QoS 1/2 messages sent before their acknowledgement comes.")
@_SLEEP
@send_options()
@timeout_option(10.0, "Give up (exit 5) when no acknowledgement arrives for this many seconds.")
@payload_options()
def publish(cfg, topic, predefined, qos, retain, max_inflight, sleep, sending, timeout, payload):
    """Publish a message, a file, stdin, or every line of stdin through a gateway.

    QoS 1 and 2 messages are sent again (with DUP) every --retry-interval until the
    gateway acknowledges them, at most --retries times; the command exits only when
    every one is acknowledged. With -l, --max-inflight messages may be
    unacknowledged at a time. QoS 0 and -1 messages end with a round trip to the
    gateway, so one it refused (exit 6) or a gateway that is not there (exit 3) is
    reported.

    \b
    iotctl mqttsn pub -t sensors/t1 -m 21.5
    iotctl mqttsn pub -T 7 -q -1 -m on          # no connection: predefined id 7
    seq 1 1000 | iotctl mqttsn pub -t load/test -l -q 1
    """
    from iotctl import send

    payload.validate()
    if topic is None and predefined is None and payload.replay is None:
        raise UsageError("no topic", "give -t TOPIC or -T ID")
    if sending.repeat > 1 and payload.streaming:
        raise UsageError("--repeat", "cannot be combined with -l or --replay")
    publisher = endpoints.sink(cfg, topic, predefined, qos, retain, max_inflight, sleep, payload)
    items = send.outgoing(payload, sending, addresses=(topic,) if topic is not None else (),
                          validate=validate_topic if predefined is None else None)
    with publisher:
        result = send.run(publisher, items, "publish", timeout, progress=payload.streaming,
                          failed=sending.failed, verb="publishing")
    status(f"published {result.sent} message(s)", tty_only=True)


# --------------------------------------------------------------------------- subscribe


@group.command()
@sn_options
@click.option("-t", "--topic", "topics", multiple=True, metavar="FILTER",
              help="Topic filter (repeatable; + and # wildcards; two characters: a short topic).")
@click.option("-T", "--topic-id", "predefined", multiple=True, type=click.IntRange(1, 65534), metavar="ID",
              help="Predefined topic id (repeatable).")
@click.option("-q", "--qos", type=click.IntRange(0, 2), default=0, show_default=True,
              help="Maximum QoS to receive at.")
@click.option("-v", "topic_and_payload", is_flag=True, default=False,
              help="Print 'topic payload' lines, as mosquitto_sub -v (the same as -o text).")
@_SLEEP
@receive_options(idle="ok", reconnect=True)
def subscribe(cfg, topics, predefined, qos, topic_and_payload, sleep, receive):
    """Print messages arriving through a gateway on topic filters or predefined ids.

    Messages of topics a wildcard brings are shown by name: the gateway REGISTERs
    each new topic first. Ctrl-C ends it (exit 0); -C N stops after N messages; -W S
    gives up after S seconds (exit 5 when fewer than N, or none, arrived). A QoS 1/2
    message is acknowledged once written. A lost gateway is connected to again, with
    backoff and a status line (--no-reconnect: exit 3).

    \b
    iotctl mqttsn sub -t 'sensors/#' -v
    iotctl mqttsn sub -T 7 -q 1 -o jsonl
    iotctl mqttsn sub -t cmd/dev1 -q 1 -i dev1 -c --sleep 30
    """
    from iotctl import receive as receiving

    if topic_and_payload and settings().output == "auto" and settings().format is None:
        settings().output = "text"
    subscriber = endpoints.source(cfg, topics, predefined, qos, sleep, receive)
    with subscriber:
        status(f"subscribed to {', '.join(subscriber.shown)} through {subscriber.where}")
        receiving.run(subscriber, receive, "subscribe")


# --------------------------------------------------------------------------- gateway


def _broker(f):
    return connection_options(BROKER_SCHEMES, "mqtt", tls=True, url_option="--broker", host_port=False,
                              default_host="127.0.0.1")(f)


@group.command()
@_broker
@click.option("-b", "--bind", default="127.0.0.1", show_default=True, metavar="ADDRESS",
              help="Address to listen on for MQTT-SN clients (UDP).")
@click.option("-p", "--port", type=click.IntRange(0, 65535), default=1883, show_default=True,
              help="UDP port to listen on (0: one the system chooses; the status line names it).")
@click.option("--predefined", type=click.Path(dir_okay=False), metavar="FILE",
              help="Predefined topics: one 'ID TOPIC' per line.")
@click.option("--gw-id", type=click.IntRange(0, 255), default=1, show_default=True,
              help="Gateway id, sent in GWINFO.")
@click.option("-v", "--packets", "verbose", is_flag=True, default=False,
              help="Print every MQTT-SN packet, both directions, decoded (on stderr).")
@click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Seconds to wait for the broker to accept a connection.")
@click.option("--max-queued", type=click.IntRange(min=1), default=10000, show_default=True,
              help="Messages kept for one client that sleeps or reads slowly; what comes beyond is dropped, "
                   "and the log says so.")
@click.option("--background", is_flag=True, default=False,
              help="Return once the gateway listens, leaving it running (its pid is printed); "
                   "it logs to --log FILE, never to this terminal.")
@click.option("--log", "log_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Append the gateway's log to FILE instead of stderr [default with --background: "
                   "$XDG_STATE_HOME/iotctl/mqttsn-gateway-PORT.log; nothing with --quiet].")
@bundle(None, _RETRY)
def gateway(endpoint, bind, port, predefined, gw_id, verbose, connect_timeout, max_queued, retry_interval,
            retries, background, log_file):
    """A transparent MQTT-SN gateway: one MQTT connection to the broker per client.

    It serves register, predefined and short topics, QoS -1 to 2 with retries,
    wildcard subscriptions (REGISTER towards the client), wills, sleeping clients
    (messages kept until they wake, at most --max-queued), keepalive timeouts, and
    answers SEARCHGW. A broker message is acknowledged only once the client
    acknowledged it. After a broker restart it connects again with backoff, keeping
    the clients' sessions; meanwhile it refuses what it cannot forward. Ctrl-C
    stops it, disconnecting every broker connection.

    \b
    iotctl mqttsn gateway --broker mqtt://127.0.0.1:1883
    iotctl mqttsn gateway --broker mqtts://broker:8883 -u dev -P secret -p 10000
    iotctl mqttsn gateway --predefined topics.txt -v
    """
    if background:
        from iotctl import background as bg

        pid = bg.start("mqttsn gateway", log=log_file, name=f"mqttsn-gateway-{port}")
        click.echo(pid)
        status(f"the gateway runs in the background (pid {pid}); stop it with: kill {pid}")
        return
    from iotctl import background as bg
    from iotctl.protocols.mqttsn.gateway import Gateway, GatewayConfig, read_predefined

    if log_file is not None:  # the whole log (status lines, packets with -v, -d traces) goes there
        import os

        sink = bg.open_log(log_file)
        os.dup2(sink.fileno(), 2)
        sink.close()

    table = read_predefined(predefined) if predefined else {}
    for name in table.values():
        validate_topic(name)
    cfg = GatewayConfig(endpoint, bind, port, table, verbose, gw_id, retry_interval, retries, connect_timeout,
                        settings().debug, max_queued)
    gw = Gateway(cfg)
    gw.start()
    shown = f"[{bind}]" if ":" in bind else bind
    status(f"gateway listening on udp {shown}:{gw.port}, forwarding to {endpoint.display}")
    bg.ready()
    gw.serve()
    status("gateway stopped")


# --------------------------------------------------------------------------- dump


@group.command()
@click.option("-b", "--bind", default="127.0.0.1", show_default=True, metavar="ADDRESS",
              help="Address to listen on.")
@click.option("-p", "--port", type=click.IntRange(0, 65535), required=True,
              help="UDP port to listen on (0: one the system chooses; the status line names it).")
@receive_options(idle="ok")
def dump(bind, port, receive):
    """Print every MQTT-SN packet arriving on a UDP port, decoded, as mqtt-sn-dump.

    Each packet is one message: its address is the packet type, its payload the
    PUBLISH data (or will message), its meta every field and the sender.

    \b
    iotctl mqttsn dump -p 1884 -o jsonl
    """
    from iotctl import receive as receiving
    from iotctl.protocols.mqttsn.dump import Dump

    source = Dump(bind, port)
    shown = f"[{bind}]" if ":" in bind else bind
    status(f"listening on udp {shown}:{source.sock.getsockname()[1]}")
    try:
        receiving.run(source, receive, "dump", noun="packet")
    finally:
        source.close()

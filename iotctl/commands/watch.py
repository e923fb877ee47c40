"""`iotctl watch SOURCE_URL`: a live tree of the addresses any source delivers
(watching.py is the model and the snapshot, watchscreen.py the full-screen view;
this is the command line only)."""

from __future__ import annotations

import click

from iotctl.groups import Command
from iotctl.options import watch_options


@click.command(cls=Command)
@click.argument("source_url", metavar="SOURCE_URL")
@watch_options()
def command(source_url, view):
    """A live tree of the addresses SOURCE_URL delivers, split by the protocol's
    separator (MQTT and STOMP '/', AMQP routing keys '.'): per node its message count,
    rate, age, and per address its last payload, key metadata and retained flag.

    On a terminal it is a full-screen view: arrows or j/k move, right/left unfold and
    fold, / filters, p pauses, h shows an address's recent messages, c copies its
    payload to the terminal when the view closes, d clears a retained message (after
    y/n), q quits. Without a terminal, or with --snapshot, it receives for -W seconds
    (default 5) and prints the tree once, as text or -o json / jsonl (one line per
    address). Memory stays within --memory: whole topics are evicted beyond it, least
    recently updated first, and counted.

    \b
    iotctl watch 'mqtt://127.0.0.1/#'
    iotctl watch 'mqtt://127.0.0.1/sensors/#' --snapshot -W 10 -o json
    iotctl watch 'amqp://guest:guest@127.0.0.1/%2f?exchange=amq.topic&routing_key=#'
    iotctl watch 'mqtt://127.0.0.1/#?qos=1' --memory 16MiB --history 100
    """
    from iotctl import resolver, watchscreen
    from iotctl.watching import Watched

    target = resolver.resolve(source_url, "source")
    watchscreen.run(Watched(target.open(), target.protocol, target.arguments, target.url.shown), view)

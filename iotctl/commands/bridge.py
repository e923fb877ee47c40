"""`iotctl bridge SOURCE_URL TARGET_URL`: any protocol into any other (bridging.py does
the work; this is option parsing and reporting only)."""

from __future__ import annotations

import click

from iotctl.errors import UsageError
from iotctl.groups import Command
from iotctl.options import receive_options

REFUSED = ("stop", "requeue", "failed", "drop")


@click.command(cls=Command)
@click.argument("source_url", metavar="SOURCE_URL")
@click.argument("target_url", metavar="TARGET_URL")
@click.option("--address", "address_template", metavar="TEMPLATE",
              help="The target address of each message, from its fields: '{address}', "
                   "'{meta[routing_key]}', 'copy/{address}' [default: the target URL's address, else the "
                   "source address with '/' and '.' swapped where the two protocols separate them differently].")
@receive_options(idle="ok", reconnect=True)
@click.option("--max-inflight", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Messages that may wait for the target's confirmation at once.")
@click.option("--on-refused", type=click.Choice(REFUSED), default=None,
              help="A message the target refuses: stop (exit 6; the source keeps it), requeue (give it back "
                   "to the source), failed (write it to --failed), drop [default: failed with --failed, else stop].")
@click.option("--failed", type=click.Path(dir_okay=False, writable=True), metavar="FILE.jsonl",
              help="Append the messages the target refused to FILE (replay them with --replay).")
@click.option("--retries", type=click.IntRange(min=0), default=10, show_default=True,
              help="Times to reconnect a lost target (with backoff) before giving up (exit 3).")
@click.option("--ack-timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              metavar="SECONDS", help="Give up (exit 5) when the target confirms nothing for this long.")
@click.option("--stats/--no-stats", default=None,
              help="Report carried, in flight, refused, retried, rate and latency on stderr every second "
                   "[default: on a terminal].")
@click.option("--stats-format", type=click.Choice(("text", "jsonl")), default="text", show_default=True,
              help="--stats as text lines or JSON lines.")
def command(source_url, target_url, address_template, receive, max_inflight, on_refused, failed, retries,
            ack_timeout, stats, stats_format):
    """Carry every message from SOURCE_URL into TARGET_URL, any protocol into any other.

    A source message is acknowledged only once the target confirmed it, so what the
    source can deliver again (a persistent MQTT session at QoS 1/2, an AMQP queue,
    STOMP client acks) arrives at least once; the start-up line says which. Ctrl-C
    ends it (exit 0): what the target had not confirmed stays with the source.
    -o prints what was carried (default: nothing); --save keeps a copy.

    \b
    iotctl bridge 'mqtt://127.0.0.1/edge/#?qos=1&client_id=br1&clean_start=false' \\
                  'amqp://guest:guest@127.0.0.1/%2f?exchange=amq.topic'
    iotctl bridge 'amqp://guest:guest@127.0.0.1/%2f?queue=jobs' 'mqtt://127.0.0.1/jobs?qos=1'
    iotctl bridge 'coap://127.0.0.1/sensors/temperature' 'http://127.0.0.1:8080/readings#method=post'
    """
    import sys

    from iotctl import resolver
    from iotctl.bridging import Bridge, BridgeSpec
    from iotctl.settings import current, status

    settings = current()
    if on_refused is None:
        on_refused = "failed" if failed else "stop"
    if on_refused == "failed" and not failed:
        raise UsageError("--on-refused failed", "needs --failed FILE")
    # -W bounds the whole run, connecting to either end included (the source's own -W
    # bounds its connection; the target's -W is an acknowledgement timeout: --ack-timeout)
    source_target = resolver.resolve(source_url, "source",
                                     **({} if receive.timeout is None else {"timeout": receive.timeout}))
    sink_target = resolver.resolve(target_url, "sink")
    cfg = sink_target.arguments.get("cfg")
    if receive.timeout is not None and isinstance(getattr(cfg, "connect_timeout", None), (int, float)):
        cfg.connect_timeout = min(cfg.connect_timeout, receive.timeout)
    source = source_target.open()
    probe = sink_target.open()  # the sink's fixed address and window, before connecting
    address = _addresser(address_template, getattr(probe, "address", None), source_target.protocol,
                         sink_target.protocol)
    spec = BridgeSpec(count=receive.count, timeout=receive.timeout, idle_timeout=receive.idle_timeout,
                      address=address, max_inflight=max_inflight, on_refused=on_refused, retries=retries,
                      ack_timeout=ack_timeout, failed=failed, save=receive.save, reconnect=receive.reconnect)
    writer = None
    if settings.output != "auto" or settings.format is not None:
        from iotctl.output import run_writer

        writer = run_writer()
    if stats is None:
        stats = sys.stderr.isatty()
    report = _reporter(stats, stats_format, settings.quiet)
    sinks = [probe]

    def open_sink():
        sink = sinks.pop() if sinks else sink_target.open()
        return sink

    def started(sink) -> None:
        if source.delivery != "at-least-once":
            how = "at most once: the source cannot deliver a message again"
        elif not sink.window:
            how = "at most once: the target confirms nothing"
        else:
            how = "at least once"
        status(f"bridging {source_target.url.shown} -> {sink_target.url.shown} ({how})")

    with source:
        Bridge(source, open_sink, spec, writer=writer, report=report, on_start=started).run()


def _addresser(template: str | None, fixed: str | None, source, target):
    if template is not None:
        from iotctl.output.template import Template

        t = Template(template)

        def render(msg):
            env = msg.to_envelope()
            env["topic"] = msg.address
            env["size"] = len(msg.payload)
            env["hex"] = ""
            return t.render(env)

        return render
    if fixed:
        return lambda msg: fixed
    a, b = source.separator, target.separator
    if a == b:
        return None
    table = str.maketrans({a: b, b: a})
    return lambda msg: msg.address.translate(table)


def _reporter(enabled: bool, form: str, quiet: bool):
    import json
    import sys

    tty = sys.stderr.isatty()

    def report(stats, final: bool) -> None:
        if final:
            if tty and enabled and form == "text":
                sys.stderr.write("\r\x1b[K")
            if form == "jsonl" and enabled:
                sys.stderr.write(json.dumps({"final": True, **stats.json()}) + "\n")
            elif not quiet:
                sys.stderr.write(f"iotctl: bridge: {stats.line()}\n")
            sys.stderr.flush()
            return
        if not enabled:
            return
        if form == "jsonl":
            sys.stderr.write(json.dumps(stats.json()) + "\n")
        elif tty:
            sys.stderr.write(f"\r\x1b[Kiotctl: bridge: {stats.line()}")
        else:
            sys.stderr.write(f"iotctl: bridge: {stats.line()}\n")
        sys.stderr.flush()

    return report

"""`iotctl bench URL | --pub URL --sub URL`: load and latency for any broker
(benching.py does the work; this is options, workers and the report)."""

from __future__ import annotations

import json
import sys

import click

from iotctl.errors import UsageError
from iotctl.groups import Command


@click.command(cls=Command)
@click.argument("urls", nargs=-1, metavar="[URL | FILE.json...]")
@click.option("--pub", "pub_url", metavar="URL", help="Publish here (default: URL).")
@click.option("--sub", "sub_url", metavar="URL", help="Subscribe here (default: URL).")
@click.option("--publishers", type=click.IntRange(min=0), default=1, show_default=True, help="Publishing connections.")
@click.option("--subscribers", type=click.IntRange(min=0), default=1, show_default=True,
              help="Subscribing connections.")
@click.option("--rate", type=click.FloatRange(min=0), default=None,
              help="Messages per second per publisher [default: as fast as acknowledgements allow; "
                   "0: connect only].")
@click.option("--size", type=click.IntRange(min=1, max=64 << 20), default=64, show_default=True,
              help="Payload bytes (at least the header's ~40).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Publish for this long [default: 10 s unless --count].")
@click.option("-C", "--count", type=click.IntRange(min=1), default=None, help="Messages per publisher.")
@click.option("--warmup", type=click.FloatRange(min=0), default=0.0, show_default=True, metavar="SECONDS",
              help="Leave the first seconds out of the latency figures.")
@click.option("--connect-rate", type=click.FloatRange(min=0, min_open=True), default=None, metavar="PER_SECOND",
              help="Open connections at this rate (connection storms).")
@click.option("--shared", is_flag=True, default=False,
              help="The subscribers share one queue (each message once to one of them); without it every "
                   "subscriber must get every message (a topic).")
@click.option("--drain", type=click.FloatRange(min=0), default=2.0, show_default=True, metavar="SECONDS",
              help="After publishing, wait this long for stragglers once nothing arrives.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes to spread the connections over [default: the CPU count, at most one per connection].")
@click.option("--merge", "merge", is_flag=True, default=False,
              help="Merge the -o json summaries FILE.json... of runs on several hosts; runs nothing.")
@click.option("--run-id", metavar="ID", help="The run's id (the same on every host of one run) [default: random].")
@click.option("--worker", hidden=True, metavar="I/N")
@click.option("--first-publisher", type=click.IntRange(min=0), default=0, metavar="N",
              help="Number this run's publishers from N (runs on several hosts with one --run-id).")
@click.option("--first-subscriber", type=click.IntRange(min=0), default=0, metavar="N",
              help="Number this run's subscribers from N (likewise).")
def command(urls, pub_url, sub_url, publishers, subscribers, rate, size, duration, count, warmup, connect_rate,
            shared, drain, workers, merge, run_id, worker, first_publisher, first_subscriber):
    """Load a broker and measure: rates, end-to-end and confirm latency (p50 to max,
    from histograms), loss, duplicates and reordering per publisher.

    Publishers send to the URL (or --pub), subscribers read it (or --sub): any
    protocol of the registry, QoS, confirms and receipts from the URL. Every payload
    carries a header (run, publisher, sequence, send time). On a terminal a line a
    second shows the progress; then a summary. -o json gives the summary (merge runs
    of several hosts with --merge), -o jsonl a line a second and the summary.
    Exit 0; 6 when a message the broker confirmed was lost, or the peer refused one;
    when connections failed, the status of the commonest reason (3, 4, 7); 5 when
    --count was not sent.

    \b
    iotctl bench 'mqtt://127.0.0.1/bench?qos=1' --publishers 4 --subscribers 1 --count 10000
    iotctl bench --pub 'mqtt://127.0.0.1/b?qos=1' --sub 'amqp://guest:guest@127.0.0.1/%2f?queue=b'
    iotctl bench 'mqtt://127.0.0.1/b' --publishers 2000 --rate 0 --connect-rate 200
    iotctl bench --merge host1.json host2.json -o json
    """
    import os
    import uuid

    from iotctl.settings import current

    settings = current()
    mode = settings.output
    if merge:
        if not urls:
            raise UsageError("--merge", "give the FILE.json summaries to merge")
        _print(_merged(urls), mode)
        return
    if len(urls) > 1:
        raise UsageError("too many URLs", "give one URL, or --pub URL and --sub URL (--merge for summaries)")
    url = urls[0] if urls else None
    pub_url = pub_url or url
    sub_url = sub_url or url
    if not pub_url and not sub_url:
        raise UsageError("nothing to measure", "give URL, or --pub URL and/or --sub URL")
    if pub_url is None:
        publishers = 0
    if sub_url is None:
        subscribers = 0
    if duration is None and count is None:
        duration = 10.0
    alone = run_id is None  # a given run id: one of several hosts, whose publishers this one cannot see
    run_id = run_id or uuid.uuid4().hex[:8]
    if ":" in run_id:
        raise UsageError("--run-id", "must not contain ':'")
    args = dict(pub_url=pub_url, sub_url=sub_url, rate=rate, size=size, duration=duration, count=count,
                warmup=warmup, connect_rate=connect_rate, shared=shared, drain=drain, run_id=run_id, alone=alone)
    if worker is not None:
        _worker(args, publishers, subscribers, first_publisher, first_subscriber)
        return
    connections = publishers + subscribers
    workers = workers or max(1, min(os.cpu_count() or 1, connections))
    if workers == 1:
        result = _local(args, publishers, subscribers, first_publisher, first_subscriber, mode)
    else:
        result = _spawn(args, publishers, subscribers, workers, mode, first_publisher, first_subscriber)
    _print(result, mode)
    totals = result.totals()
    if totals["lost_confirmed"]:
        from iotctl.errors import PeerError

        raise PeerError("bench", f"{totals['lost_confirmed']} message(s) the broker confirmed were lost")
    if totals["refused"]:
        from iotctl.errors import PeerError

        reasons = sorted(k.split(": ", 1)[1] for k in result.errors if k.startswith("refused: "))
        raise PeerError("bench", f"the peer refused {totals['refused']} message(s): {'; '.join(reasons[:3])}")
    if result.unconnected:
        from iotctl.errors import ExitCode, IotctlError

        failed = sum(result.unconnected.values())
        reasons = sorted(k.split(": ", 1)[1] for k in result.errors if k.startswith("connect: "))
        error = IotctlError("bench", f"{failed} of {publishers + subscribers} connection(s) failed: "
                                     f"{'; '.join(reasons[:3])}")
        error.code = ExitCode(max(result.unconnected, key=result.unconnected.get))  # the commonest reason's
        raise error
    if count is not None and totals["sent"] < count * publishers:
        from iotctl.errors import TimeoutError_

        raise TimeoutError_("bench", f"sent {totals['sent']} of {count * publishers}"
                                     + (f" within {duration:g} s" if duration else ""))


# --------------------------------------------------------------------------- running


def _bench(args: dict, publishers: int, subscribers: int, first_publisher: int, first_subscriber: int, report,
           alone: bool = True):
    from iotctl import resolver
    from iotctl.benching import Bench, BenchSpec

    spec = BenchSpec(args["run_id"], publishers, subscribers, args["rate"], args["size"], args["duration"],
                     args["count"], args["warmup"], args["connect_rate"], args["drain"], first_publisher,
                     first_subscriber, shared=args["shared"], alone=alone)
    open_sink = open_source = None
    if publishers:
        target = resolver.resolve(args["pub_url"], "sink")
        open_sink = target.open
    if subscribers:
        source = resolver.resolve(args["sub_url"], "source")
        open_source = source.open
    return Bench(spec, open_sink, open_source, report)


def _local(args, publishers, subscribers, first_publisher, first_subscriber, mode):
    live = _live(mode)
    bench = _bench(args, publishers, subscribers, first_publisher, first_subscriber, live, alone=args["alone"])
    result = bench.run()
    if sys.stderr.isatty() and mode not in ("json", "jsonl"):
        sys.stderr.write("\r\x1b[K")
    return result


def _worker(args, publishers, subscribers, first_publisher, first_subscriber):
    """A worker process: connect, say "ready", wait for "go" on stdin, run, report
    ticks and the summary as JSON lines on stdout."""
    def report(tick):
        sys.stdout.write(json.dumps({"tick": tick}) + "\n")
        sys.stdout.flush()

    bench = _bench(args, publishers, subscribers, first_publisher, first_subscriber, report, alone=False)

    def wait_for(said: str):
        def gate():
            sys.stdout.write(json.dumps({said: True}) + "\n")
            sys.stdout.flush()
            sys.stdin.readline()
        return gate

    bench.subscribed = wait_for("subscribed")
    bench.gate = wait_for("ready")
    result = bench.run()
    sys.stdout.write(json.dumps({"result": result.to_json()}) + "\n")
    sys.stdout.flush()


def _spawn(args, publishers, subscribers, workers, mode, pub_first=0, sub_first=0):
    """Spread the connections over worker processes; merge their histograms and
    counts exactly."""
    import subprocess

    from iotctl.benching import Result

    cmd = [sys.executable, "-m", "iotctl", "bench"]
    procs = []
    for i in range(workers):
        pubs = publishers // workers + (1 if i < publishers % workers else 0)
        subs = subscribers // workers + (1 if i < subscribers % workers else 0)
        if not pubs and not subs:
            continue
        argv = cmd + ["--worker", f"{i}/{workers}", "--publishers", str(pubs), "--subscribers", str(subs),
                      "--first-publisher", str(pub_first), "--first-subscriber", str(sub_first),
                      "--run-id", args["run_id"], "--size", str(args["size"]), "--drain", str(args["drain"]),
                      "--warmup", str(args["warmup"])]
        for key, flag in (("pub_url", "--pub"), ("sub_url", "--sub"), ("rate", "--rate"), ("duration", "--duration"),
                          ("count", "--count"), ("connect_rate", "--connect-rate")):
            if args[key] is not None:
                argv += [flag, str(args[key])]
        if args["shared"]:
            argv.append("--shared")
        env = dict(__import__("os").environ, IOTCTL_QUIET="1")
        procs.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True))
        pub_first += pubs
        sub_first += subs
    live = _live(mode)
    result = Result(args["run_id"])
    try:
        # every worker's subscribers open, then the publishers connect; every worker
        # connected, then all start at once
        running = procs
        for step, said in (("connect", "subscribed"), ("go", "ready")):
            running = [p for p in running if _until(p, said, result)]
            for p in running:
                p.stdin.write(step + "\n")
                p.stdin.flush()
        _collect(procs, result, live)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    if sys.stderr.isatty() and mode not in ("json", "jsonl"):
        sys.stderr.write("\r\x1b[K")
    return result


def _until(proc, key: str, result) -> bool:
    """Read the worker's lines until it says `key` (True), or ends (False: its result,
    if it gave one, merged)."""
    for line in proc.stdout:
        data = json.loads(line)
        if key in data:
            return True
        if "result" in data:
            from iotctl.benching import Result

            result.merge(Result.from_json(data["result"]))
            return False
    result.error("worker: ended early")
    return False


def _collect(procs, result, live) -> None:
    """Every worker's ticks (summed into the live view once each worker gave one) and
    results, until they all end. A thread per worker reads its lines: a select on the
    pipes would miss lines already read ahead into a pipe's buffer."""
    import queue
    import threading

    from iotctl.benching import Result

    lines: queue.Queue = queue.Queue()

    def read(proc) -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    for p in procs:
        threading.Thread(target=read, args=(p,), daemon=True).start()
    ticks: list[dict] = []
    open_ = len(procs)
    while open_:
        line = lines.get()
        if line is None:
            open_ -= 1
            continue
        data = json.loads(line)
        if "tick" in data:
            ticks.append(data["tick"])
            if len(ticks) >= open_ and live is not None:
                live(_sum_ticks(ticks))
                ticks = []
        elif "result" in data:
            result.merge(Result.from_json(data["result"]))
    for p in procs:
        p.wait()


def _sum_ticks(ticks: list[dict]) -> dict:
    out = {"sent": 0, "confirmed": 0, "received": 0, "connections": 0}
    for t in ticks:
        for k in out:
            out[k] += t.get(k, 0)
    out["latency_ms"] = max((t["latency_ms"] for t in ticks), key=lambda l: l.get("p99") or 0, default={})
    return out


# --------------------------------------------------------------------------- reporting


def _live(mode: str):
    """A line a second: JSON lines on stdout with -o jsonl, else in place on a terminal."""
    if mode == "jsonl":
        def report(tick):
            sys.stdout.write(json.dumps(tick) + "\n")
            sys.stdout.flush()

        return report
    if not sys.stderr.isatty() or mode == "json":
        return None

    def show(tick):
        lat = tick.get("latency_ms") or {}
        text = (f"iotctl: bench: {tick['connections']} connections, sent {tick['sent']}/s, "
                f"confirmed {tick['confirmed']}/s, received {tick['received']}/s")
        if lat.get("p50") is not None:
            text += f", latency p50 {lat['p50']:g} p95 {lat['p95']:g} p99 {lat['p99']:g} max {lat['max']:g} ms"
        sys.stderr.write("\r\x1b[K" + text)
        sys.stderr.flush()

    return show


def _merged(files):
    from iotctl.benching import Result

    result = None
    for path in files:
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except OSError as exc:
            raise UsageError(f"cannot read {path}", exc.strerror or str(exc)) from None
        try:
            part = Result.from_json(data)
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"cannot merge {path}", f"not an 'iotctl bench -o json' summary ({exc})") from None
        if result is not None and part.run != result.run:
            from iotctl.settings import warn

            warn(f"{path} is of run {part.run}, not {result.run}: merged anyway")
        result = part if result is None else result.merge(part)
    return result


def _print(result, mode: str) -> None:
    summary = result.to_json()
    if mode in ("json", "jsonl"):
        if mode == "jsonl":
            summary = {"summary": True, **summary}
        sys.stdout.write(json.dumps(summary, indent=2 if mode == "json" else None) + "\n")
        sys.stdout.flush()
        return
    rows = _rows(summary)
    if sys.stdout.isatty():
        from rich.table import Table

        from iotctl.output import console

        table = Table(title=f"iotctl bench, run {summary['run']}", show_header=True)
        table.add_column("")
        table.add_column("value", justify="right")
        for name, value in rows:
            table.add_row(name, value)
        console.stdout().print(table)
    else:
        width = max(len(n) for n, _ in rows)
        sys.stdout.write("".join(f"{n:<{width}}  {v}\n" for n, v in rows))
        sys.stdout.flush()


def _rows(s: dict) -> list[tuple[str, str]]:
    def lat(d):
        if not d or d.get("p50") is None:
            return "-"
        return (f"p50 {d['p50']:g}  p90 {d['p90']:g}  p99 {d['p99']:g}  p99.9 {d['p99.9']:g}  max {d['max']:g} ms"
                f"  (n={d['count']})")

    rows = [("elapsed", f"{s['elapsed']:g} s"), ("connections", f"{s['publishers']} publishers, "
                                                                f"{s['subscribers']} subscribers"),
            ("sent", f"{s['sent']} ({s['rates']['sent']:g}/s)")]
    if s["confirmed"] is not None:
        rows.append(("confirmed", f"{s['confirmed']} ({s['rates']['confirmed']:g}/s)"))
    rows += [("received", f"{s['received']} ({s['rates']['received']:g}/s)"),
             ("latency end to end", lat(s["latency_ms"])),
             ("latency to confirm", lat(s["confirm_ms"])),
             ("connect", lat(s["connect_ms"])),
             ("lost", f"{s['lost']}" + (f" ({s['lost_confirmed']} confirmed by the broker)" if s["lost_confirmed"] else "")),
             ("duplicates", str(s["duplicates"])), ("out of order", str(s["out_of_order"])),
             ("refused", str(s["refused"]))]
    for kind, n in sorted(s["errors"].items()):
        rows.append((f"error: {kind}", str(n)))
    return rows


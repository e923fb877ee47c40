#!/usr/bin/env python3
"""Where a receiver's time goes: run the receive benchmarks once with every Python
process under cProfile (bench/profiling/sitecustomize.py: every thread, from start-up
to exit) and sum each receiver's time by origin — iotctl's modules, the protocol
library, the standard library, the system calls, waiting.

    bench/profile.py                      # sub, amqp, stomp, xmpp; prints the tables
    bench/profile.py --only sub,amqp      # some of them
    bench/profile.py --write              # also replace its section of bench/README.md

The receivers profiled, each against its library floor (the minimal script):
- sub: `iotctl mqtt sub -o raw|jsonl` (the fast path), the same with
  IOTCTL_MQTT_PAHO_RECEIVE=1, bench/minimal/sub.py (paho) — `bench/run --only sub`;
- amqp: `iotctl amqp consume` and bench/minimal/amqp_consume.py (pika) — bench/amqp.py;
- stomp: `iotctl stomp subscribe` and bench/minimal/stomp_sub.py (stomp.py) — bench/stomp.py;
- xmpp: `iotctl xmpp listen` and bench/minimal/xmpp_listen.py (slixmpp) — bench/xmpp.py.

cProfile adds a cost to every Python call (so code that makes many small calls looks
bigger than it is, and the rates of a profiled run are lower): read the shares, not
the seconds as real times. Only the standard library is used here.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import pstats
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH, PY, ROOT, write_section  # noqa: E402  (bench/common.py)

BENCHES = ("sub", "amqp", "stomp", "xmpp")
BEGIN = "<!-- profile:begin (bench/profile.py --write) -->"
END = "<!-- profile:end -->"
LIBRARIES = ("paho", "pika", "stomp", "slixmpp", "aiocoap", "click", "h11", "proton")
WAITS = ("select.select", "'poll' of 'select.", "'acquire' of '_thread.lock'", "time.sleep", "'control' of 'select.",
         "'select' of 'select.", "_thread.lock' objects>", "'wait' of", "run_forever")
IO_CALLS = ("'recv", "'send", "posix.write", "posix.read", "'write' of '_io.", "'flush' of '_io.", "'read' of '_io.",
            "'recv_into'", "'do_handshake'", "'sendall'", "'readinto'")


def origin(key: tuple[str, int, str]) -> str:
    """The group a profiled function's own time is counted in."""
    filename, _, func = key
    if filename == "~":  # a built-in: what it does, not where
        if any(w in func for w in WAITS):
            return "waiting (select, locks, sleep)"
        if any(w in func for w in IO_CALLS):
            return "system calls: socket and pipe I/O"
        if "marshal.loads" in func or "__build_class__" in func or "exec" in func:
            return "start-up: loading modules"
        return "built-ins (bytes, str, dict, json's C encoder ...)"
    path = filename.replace("\\", "/")
    if "/bench/minimal/" in path:
        return "the minimal script itself"
    m = re.search(r"/site-packages/([A-Za-z0-9_]+)", path)
    if m:
        name = m.group(1)
        return f"{name} (library)" if name in LIBRARIES else f"{name} (other package)"
    m = re.search(r"/iotctl/(.*)\.py$", path)
    if m:
        return f"iotctl: {m.group(1).replace('/', '.')}"
    if "<frozen" in path:
        return "start-up: loading modules"
    m = re.search(r"/lib/python3\.\d+/([A-Za-z0-9_]+)", path)
    if m:
        top = m.group(1)
        if top in ("importlib", "zipimport", "site", "encodings", "codecs", "abc", "enum", "re", "sre_compile",
                   "sre_parse", "dataclasses", "typing", "functools", "inspect", "dis", "pstats", "cProfile",
                   "profile", "collections", "gettext", "locale", "argparse", "warnings", "tokenize", "linecache"):
            return "start-up: loading modules"
        return f"stdlib: {top}"
    return "other"


def summarize(prof: Path) -> tuple[float, dict[str, float], list[tuple[float, int, str]]]:
    stats = pstats.Stats(str(prof))
    groups: dict[str, float] = {}
    funcs = []
    for key, (cc, nc, tt, ct, callers) in stats.stats.items():
        g = origin(key)
        groups[g] = groups.get(g, 0.0) + tt
        if not g.startswith("waiting") and not g.startswith("start-up"):
            filename, line, func = key
            short = func if filename == "~" else f"{Path(filename).name}:{line}({func})"
            funcs.append((tt, nc, short))
    funcs.sort(reverse=True)
    busy = sum(v for k, v in groups.items() if not k.startswith("waiting"))
    return busy, groups, funcs[:10]


def pick(profdir: Path, want: list[tuple[str, str]]) -> dict[str, Path]:
    """For each (label, regex on the command line), the matching process that did the
    most work (its largest profile)."""
    found: dict[str, Path] = {}
    size: dict[str, int] = {}
    for argv_file in profdir.glob("*.argv"):
        argv = argv_file.read_text().replace("\0", " ")
        prof = argv_file.with_suffix(".prof")
        if not prof.exists():
            continue
        for label, pattern in want:
            if re.search(pattern, argv):
                busy = summarize(prof)[0]
                if busy > size.get(label, -1):
                    found[label], size[label] = prof, busy
    return found


def run(cmd: list[str], profdir: Path) -> None:
    env = {**os.environ, "BENCH_PROFILE_DIR": str(profdir),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH / "profiling"), os.environ.get("PYTHONPATH")]))}
    print(f"profiling: {' '.join(cmd)}", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {done.returncode}): {done.stderr.strip()[-300:]}")


SPECS = {
    "sub": dict(
        title="`mqtt sub` to a pipe, 100,000 messages (`bench/run --only sub --rounds 1`)",
        cmd=[PY, str(BENCH / "run"), "--only", "sub", "--rounds", "1"],
        want=[("iotctl -o raw", r"mqtt sub .*/sub/0/raw/iotctl -C 100000 -o raw"),
              ("iotctl paho receive -o raw", r"mqtt sub .*/sub/0/raw/iotctl-paho-receive -C 100000"),
              ("minimal paho raw", r"minimal/sub\.py .*/sub/0/raw/minimal-paho 100000 raw"),
              ("iotctl -o jsonl", r"mqtt sub .*/sub/0/jsonl/iotctl -C 100000 -o jsonl"),
              ("iotctl paho receive -o jsonl", r"mqtt sub .*/sub/0/jsonl/iotctl-paho-receive -C 100000"),
              ("minimal paho jsonl", r"minimal/sub\.py .*/sub/0/jsonl/minimal-paho 100000 jsonl")]),
    "amqp": dict(
        title="`amqp consume`, 100,000 queued messages, ack after write (`bench/amqp.py --rounds 1`)",
        cmd=[PY, str(BENCH / "amqp.py"), "--rounds", "1"],
        want=[("iotctl amqp consume", r"amqp consume "), ("minimal pika", r"minimal/amqp_consume\.py")]),
    "stomp": dict(
        title="`stomp subscribe`, 50,000 queued messages on RabbitMQ, an ack per message "
              "(`bench/stomp.py --rounds 1 --broker rabbitmq`)",
        cmd=[PY, str(BENCH / "stomp.py"), "--rounds", "1", "--broker", "rabbitmq"],
        want=[("iotctl stomp subscribe", r"stomp subscribe .* -C "), ("minimal stomp.py", r"minimal/stomp_sub\.py")]),
    "xmpp": dict(
        title="`xmpp listen`, 2,000 messages from the minimal sender (`bench/xmpp.py --rounds 1`)",
        cmd=[PY, str(BENCH / "xmpp.py"), "--rounds", "1"],
        want=[("iotctl xmpp listen", r"xmpp listen .* -C \d+ "), ("minimal slixmpp", r"minimal/xmpp_listen\.py .* 2000$")]),
}


def table(found: dict[str, Path], top: int = 9) -> str:
    sums = {label: summarize(p) for label, p in found.items()}
    labels = list(sums)
    share: dict[str, float] = {}
    for label, (busy, groups, _) in sums.items():
        for g, v in groups.items():
            if not g.startswith("waiting") and busy:
                share[g] = max(share.get(g, 0.0), v / busy)
    shown = sorted(share, key=lambda g: -share[g])[:top]
    rows = ["| where (own time of the functions) | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for g in shown:
        cells = []
        for label in labels:
            busy, groups, _ = sums[label]
            v = groups.get(g, 0.0)
            cells.append(f"{v:.2f} s ({v / busy * 100:.0f} %)" if v else "")
        rows.append(f"| {g} | " + " | ".join(cells) + " |")
    rest = []
    for label in labels:
        busy, groups, _ = sums[label]
        v = sum(val for g, val in groups.items() if g not in shown and not g.startswith("waiting"))
        rest.append(f"{v:.2f} s ({v / busy * 100:.0f} %)" if v else "")
    rows.append("| everything else | " + " | ".join(rest) + " |")
    rows.append("| **busy in all** (not waiting) | " + " | ".join(f"**{sums[l][0]:.2f} s**" for l in labels) + " |")
    rows.append("| waiting (select, locks, sleep; threads idle) | " + " | ".join(
        f"{sums[l][1].get('waiting (select, locks, sleep)', 0.0):.2f} s" for l in labels) + " |")
    lines = ["\n".join(rows), ""]
    for label in labels:
        funcs = sums[label][2][:6]
        lines.append(f"- {label}, the functions with the most own time: " + "; ".join(
            f"`{name}` {tt:.2f} s ({nc:,} calls)" for tt, nc, name in funcs))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help=f"only these (repeatable or comma-separated): {', '.join(BENCHES)}")
    ap.add_argument("--write", action="store_true", help="replace the profile section of bench/README.md")
    ap.add_argument("--keep", metavar="DIR", help="keep the .prof files in DIR (pstats / snakeviz can read them)")
    ap.add_argument("--from", dest="source", metavar="DIR",
                    help="run nothing: summarize the profiles a run with --keep DIR left")
    args = ap.parse_args()
    only = [s for item in args.only for s in item.split(",") if s] or list(BENCHES)
    for s in only:
        if s not in BENCHES:
            ap.error(f"unknown {s!r}; choose from {', '.join(BENCHES)}")
    started = dt.datetime.now(dt.timezone.utc)
    load = os.getloadavg()
    parts = []
    with tempfile.TemporaryDirectory(prefix="iotctl-profile-") as tmp:
        base = Path(args.source or args.keep or tmp)
        for name in only:
            spec = SPECS[name]
            profdir = base / name
            if not args.source:
                profdir.mkdir(parents=True, exist_ok=True)
                run(spec["cmd"], profdir)
            found = pick(profdir, spec["want"])
            missing = [label for label, _ in spec["want"] if label not in found]
            found = {label: found[label] for label, _ in spec["want"] if label in found}
            part = f"### {spec['title']}\n\n" + table(found)
            if missing:
                part += "\n- not profiled (no profile written: " + ", ".join(missing) + ")"
            parts.append(part)
            print(part + "\n", flush=True)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    if args.write:
        block = (f"{BEGIN}\n## Where a receiver's time goes (`bench/profile.py`)\n\n"
                 f"- date: {started:%Y-%m-%d %H:%M} UTC; `bench/profile.py {' '.join(sys.argv[1:])}`; "
                 f"iotctl at {commit}; load average at the start {load[0]:.1f} (2 CPUs shared with other work)\n"
                 "- Each receiver ran once under cProfile (every thread, start-up to exit: "
                 "bench/profiling/sitecustomize.py), in the benchmark's own set-up. Own time of every function, "
                 "summed by origin; the shares are of the time the process was busy (not waiting in select, "
                 "a lock or sleep). A blocking `recv()` in a reader thread, or a write or flush to a full pipe, "
                 "counts under system calls: that part of the I/O row is waiting too. cProfile charges every "
                 "Python call, so per-message Python looks bigger than it is and the seconds are not real "
                 "times: compare the shares.\n\n"
                 + "\n\n".join(parts) + f"\n{END}\n")
        write_section(block, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())

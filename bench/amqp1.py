#!/usr/bin/env python3
"""Benchmark `iotctl amqp1` against minimal python-qpid-proton scripts (the floor), side
by side, on RabbitMQ's AMQP 1.0 plugin (127.0.0.1:5672).

    bench/amqp1.py                      # 3 rounds, 50,000 messages
    bench/amqp1.py --rounds 5 -n 20000
    bench/amqp1.py --write              # also replace the AMQP 1.0 section of bench/README.md

Cases, each run by both contenders in every round (their order alternating):
- one: connect, send `x` at least once, close (wall time; `iotctl amqp1 send Q -m x`
  vs bench/minimal/amqp1_send.py with one line).
- send: N lines on stdin, each a message unsettled until accepted, at most 1,000
  awaiting their outcome (`iotctl amqp1 send -l` vs bench/minimal/amqp1_send.py);
  messages/s over the sender's wall time.
- receive: the N messages just sent, printed one per line, each accepted once written
  (`iotctl amqp1 receive -C N -o raw` vs bench/minimal/amqp1_recv.py, prefetch 1000);
  messages/s over the receiver's wall time.
Every round checks that each receiver printed exactly the N lines sent, in order, and
that nothing was left on the queue. Target: iotctl >= 0.9x the floor (one: <= 1.3x).
Peer: `scripts/services up amqp1`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import IOTCTL, MINIMAL, PY, ROOT, child_env, write_section  # noqa: E402  (bench/common.py)

SECTION_START = "<!-- amqp1: written by bench/amqp1.py --write -->"
SECTION_END = "<!-- /amqp1 -->"
URL = "amqp://127.0.0.1:5672"
ENV = child_env(tempfile.mkdtemp(prefix="iotctl-bench-"))


def timed(cmd, stdin=None, capture=False) -> tuple[float, bytes]:
    start = time.perf_counter()
    done = subprocess.run(cmd, stdin=stdin, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                          stderr=subprocess.PIPE, env=ENV, timeout=600)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))}: exit {done.returncode}: {done.stderr.decode()[-500:]}")
    return took, done.stdout or b""


def depth(queue: str) -> int:
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name", "messages"], capture_output=True,
                         text=True, timeout=60).stdout
    for line in out.splitlines():
        name, _, n = line.partition("\t")
        if name == queue:
            return int(n)
    return 0


def delete(queue: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", "delete_queue", queue], capture_output=True, timeout=60)


def contenders(queue: str, n: int) -> dict:
    address = f"/queue/{queue}"
    return {
        "iotctl": {
            "send": [*IOTCTL, "amqp1", "send", address, "-l"],
            "one": [*IOTCTL, "amqp1", "send", address, "-m", "x"],
            "receive": [*IOTCTL, "amqp1", "receive", address, "-C", str(n), "-o", "raw"],
        },
        "minimal proton": {
            "send": [PY, str(MINIMAL / "amqp1_send.py"), URL, address],
            "one": None,  # one line on stdin
            "receive": [PY, str(MINIMAL / "amqp1_recv.py"), URL, address, str(n)],
        },
    }


LOAD: list = []


def run(rounds: int, n: int) -> dict:
    LOAD.append(os.getloadavg()[0])
    lines = b"".join(b"%07d\n" % i for i in range(n))
    data = tempfile.NamedTemporaryFile(delete=False)
    data.write(lines)
    data.close()
    one = tempfile.NamedTemporaryFile(delete=False)
    one.write(b"x\n")
    one.close()
    results = {name: {"one": [], "send": [], "receive": []} for name in ("iotctl", "minimal proton")}
    queue = f"iotctl-bench-amqp1-{uuid.uuid4().hex[:8]}"
    try:
        for r in range(rounds + 1):  # round 0 is untimed (.pyc files, the queue)
            order = list(results) if r % 2 else list(reversed(results))
            for name in order:
                cmds = contenders(queue, n)[name]
                for _ in range(5):
                    if cmds["one"] is None:
                        with open(one.name, "rb") as fh:
                            took, _ = timed(contenders(queue, n)[name]["send"], stdin=fh)
                    else:
                        took, _ = timed(cmds["one"])
                    if r:
                        results[name]["one"].append(took)
                subprocess.run([*IOTCTL, "amqp1", "receive", f"/queue/{queue}", "--idle-timeout", "1", "-W", "60"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, timeout=120)
                with open(data.name, "rb") as fh:
                    took, _ = timed(cmds["send"], stdin=fh)
                if r:
                    results[name]["send"].append(n / took)
                took, out = timed(cmds["receive"], capture=True)
                if out != lines:
                    raise SystemExit(f"{name} receive: {len(out.splitlines())} lines, not the {n} sent, in order")
                left = depth(queue)
                if left:
                    raise SystemExit(f"{name} receive left {left} message(s) on the queue")
                if r:
                    results[name]["receive"].append(n / took)
            print(f"round {r}: " + "; ".join(
                f"{name} one {statistics.median(v['one'] or [0]) * 1000:.1f} ms, send "
                f"{statistics.median(v['send'] or [0]):,.0f}/s, receive {statistics.median(v['receive'] or [0]):,.0f}/s"
                for name, v in results.items()), file=sys.stderr)
    finally:
        LOAD.append(os.getloadavg()[0])
        delete(queue)
        os.unlink(data.name)
        os.unlink(one.name)
    return results


def table(results: dict, rounds: int, n: int) -> str:
    def med(name, case):
        return statistics.median(results[name][case])

    rows = []
    for case, label, unit, target, lower in (
            ("one", "`amqp1 send Q -m x` (connect, send at least once, close)", "ms", 1.3, True),
            ("send", f"`amqp1 send -l`, {n:,} lines, at least once", "msg/s", 0.9, False),
            ("receive", f"`amqp1 receive -C {n:,} -o raw`, accepted after write", "msg/s", 0.9, False)):
        a, b = med("iotctl", case), med("minimal proton", case)
        ratio = a / b
        ok = ratio <= target if lower else ratio >= target
        fmt = (lambda v: f"{v * 1000:.1f} ms") if unit == "ms" else (lambda v: f"{v:,.0f}/s")
        rows.append(f"| {label} | {fmt(a)} | {fmt(b)} | {ratio:.2f}× | {'≤' if lower else '≥'} {target}× | "
                    f"{'met' if ok else '**not met**'} |")
    head = ("| case | iotctl | minimal proton | iotctl ÷ minimal | target | verdict |\n"
            "|---|---|---|---|---|---|")
    proton = subprocess.run([PY, "-c", "import proton; print('.'.join(map(str, proton.VERSION)))"],
                            capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return "\n".join([
        SECTION_START,
        "## AMQP 1.0 (`bench/amqp1.py`)",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; `bench/amqp1.py --rounds {rounds} -n {n}`; "
        f"iotctl at commit {commit}; python-qpid-proton {proton}; Python {platform.python_version()}; "
        f"nproc {os.cpu_count()}, load average {LOAD[0]:.1f} at the start and {LOAD[-1]:.1f} at the end (the "
        f"machine is shared: the absolute rates move with it, the ratios less); RabbitMQ 3.10.8 with rabbitmq_amqp1_0 on 127.0.0.1:5672 (SASL ANONYMOUS).",
        "- The floor: `bench/minimal/amqp1_send.py` and `amqp1_recv.py`, proton as its documentation "
        "shows (a Container and a MessagingHandler; 1,000 unsettled / prefetch 1,000, as iotctl's defaults). "
        "Medians over the rounds (one: 5 runs per round); every round checked that the receiver printed "
        "exactly the lines sent, in order, and left nothing on the queue.",
        "",
        head,
        *rows,
        SECTION_END,
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=50_000)
    ap.add_argument("--write", action="store_true", help="replace the AMQP 1.0 section of bench/README.md")
    args = ap.parse_args()
    text = table(run(args.rounds, args.n), args.rounds, args.n)
    print(text)
    if args.write:
        write_section(text, SECTION_START, SECTION_END)


if __name__ == "__main__":
    main()

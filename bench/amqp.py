#!/usr/bin/env python3
"""Benchmark `iotctl amqp` against amqp-tools and minimal pika scripts, side by side.

    bench/amqp.py                 # 3 rounds, 100,000 messages
    bench/amqp.py --rounds 5 --messages 200000
    bench/amqp.py --quick         # 1 round, 20,000 messages

Sections:
- publish: N stdin lines, one message each, to a queue through the default exchange,
  with publisher confirms (every message confirmed before exit):
  `iotctl amqp publish -l` vs bench/minimal/amqp_publish.py (pika, asynchronous
  confirms with a window: the floor) vs `amqp-publish -l` (amqp-tools: no confirms,
  shown for reference).
- consume: N messages from a queue, each acknowledged after it is written, bodies on
  stdout: `iotctl amqp consume -C N -o raw` vs bench/minimal/amqp_consume.py (pika,
  ack multiple per burst: the floor) vs `amqp-consume -c M cat` (amqp-tools: a fork
  per message, so it gets fewer messages, M = N/20; compared by rate).

Every round checks what arrived (the queue depth after publishing, the lines printed
when consuming); the contenders' order rotates each round; medians are reported.
RabbitMQ on 127.0.0.1:5672 (guest/guest), `scripts/services up rabbitmq`. Only the
standard library here; Python contenders use the repo's .venv interpreter.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH, IOTCTL, MINIMAL, PY, ROOT, child_env  # noqa: E402  (bench/common.py)
URL = "amqp://guest:guest@127.0.0.1:5672/%2f"


ENV: dict = {}


def run(cmd, stdin=None, timeout=600) -> tuple[float, int, bytes, bytes]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdin=stdin if stdin is not None else subprocess.DEVNULL, capture_output=True,
                       env=ENV, timeout=timeout)
    return time.perf_counter() - t0, p.returncode, p.stdout, p.stderr


def iotctl(*args: str) -> bytes:
    _, rc, out, err = run([*IOTCTL, "amqp", *args])
    if rc:
        raise SystemExit(f"iotctl amqp {' '.join(args)} failed: {err.decode(errors='replace')}")
    return out


def purge(queue: str) -> int:
    return int(iotctl("purge", queue).decode().strip() or 0)


def fill(queue: str, lines: Path) -> None:
    with open(lines, "rb") as fh:
        _, rc, _, err = run([PY, str(MINIMAL / "amqp_publish.py"), URL, queue], stdin=fh)
    if rc:
        raise SystemExit(f"filling {queue} failed: {err.decode(errors='replace')}")


def publish_round(queue: str, lines: Path, n: int, order: list[str]) -> dict:
    cmds = {
        "iotctl": [*IOTCTL, "amqp", "publish", "-r", queue, "-l"],
        "pika floor": [PY, str(MINIMAL / "amqp_publish.py"), URL, queue],
        "amqp-publish": ["amqp-publish", f"--url={URL}", "-r", queue, "-l"],
    }
    out = {}
    for name in order:
        purge(queue)
        with open(lines, "rb") as fh:
            wall, rc, _, err = run(cmds[name], stdin=fh)
        # amqp-publish does not wait for anything: let the broker settle before counting
        time.sleep(0.2 if name == "amqp-publish" else 0)
        got = purge(queue)
        out[name] = (wall, rc == 0 and got == n, got)
    return out


def consume_round(queue: str, lines: Path, n: int, order: list[str]) -> dict:
    m = max(1, n // 20)
    cmds = {
        "iotctl": ([*IOTCTL, "amqp", "consume", queue, "-C", str(n), "-o", "raw"], n),
        "pika floor": ([PY, str(MINIMAL / "amqp_consume.py"), URL, queue, str(n)], n),
        "amqp-consume": (["amqp-consume", f"--url={URL}", "-q", queue, "-c", str(m), "-p", "1000", "cat"], m),
    }
    out = {}
    for name in order:
        purge(queue)
        fill(queue, lines)
        cmd, want = cmds[name]
        wall, rc, stdout, err = run(cmd)
        got = stdout.count(b"\n") if name != "amqp-consume" else len(stdout) // 8
        left = purge(queue)
        out[name] = (wall, rc == 0 and got == want and left == n - want, got, want)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.messages = 1, 20_000
    for tool in ("amqp-publish", "amqp-consume"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: scripts/services up rabbitmq installs amqp-tools")
    n = args.messages
    with tempfile.TemporaryDirectory() as tmp:
        ENV.update(child_env(tmp))
        lines = Path(tmp) / "lines.txt"
        lines.write_bytes(b"".join(b"%08d\n" % i for i in range(n)))
        queue = f"iotctl-bench.{uuid.uuid4().hex[:8]}"
        iotctl("declare", "queue", queue)
        try:
            # warm-up: .pyc files, the queue's process
            publish_round(queue, lines, n, ["iotctl", "pika floor"])
            pub, con = [], []
            names_pub = ["iotctl", "pika floor", "amqp-publish"]
            names_con = ["iotctl", "pika floor", "amqp-consume"]
            for r in range(args.rounds):
                rot = r % 3
                pub.append(publish_round(queue, lines, n, names_pub[rot:] + names_pub[:rot]))
                con.append(consume_round(queue, lines, n, names_con[rot:] + names_con[:rot]))
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            iotctl("delete", "queue", queue)
    report(pub, con, n, args.rounds)
    return 0


def report(pub: list, con: list, n: int, rounds: int) -> None:
    print(f"## {n:,} messages, {rounds} round(s), medians\n")
    print("| publish -l with confirms | seconds | msg/s | all arrived |")
    print("|---|---|---|---|")
    rate = {}
    for name in ("iotctl", "pika floor", "amqp-publish"):
        walls = [r[name][0] for r in pub]
        ok = all(r[name][1] for r in pub)
        med = statistics.median(walls)
        rate[name] = n / med
        note = " (no confirms)" if name == "amqp-publish" else ""
        print(f"| {name}{note} | {med:.2f} | {n / med:,.0f} | {'yes' if ok else 'NO: ' + str([r[name][2] for r in pub])} |")
    print()
    print("| consume, ack after write | seconds | messages | msg/s | all arrived, rest left |")
    print("|---|---|---|---|---|")
    crate = {}
    for name in ("iotctl", "pika floor", "amqp-consume"):
        walls = [r[name][0] for r in con]
        ok = all(r[name][1] for r in con)
        want = con[0][name][3]
        med = statistics.median(walls)
        crate[name] = want / med
        print(f"| {name} | {med:.2f} | {want:,} | {want / med:,.0f} | "
              f"{'yes' if ok else 'NO: ' + str([r[name][2] for r in con])} |")
    print()
    print("| target | ratio | verdict |")
    print("|---|---|---|")
    for label, ratio, goal in (
        ("publish -l with confirms ≥ 0.9× pika floor", rate["iotctl"] / rate["pika floor"], 0.9),
        ("consume with acks ≥ 0.9× pika floor", crate["iotctl"] / crate["pika floor"], 0.9),
        ("consume with acks ≥ 10× amqp-consume", crate["iotctl"] / crate["amqp-consume"], 10),
    ):
        print(f"| {label} | {ratio:.2f}× | {'met' if ratio >= goal else 'NOT met'} |")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmark `iotctl stomp` against minimal stomp.py scripts (the floor), side by side.

    bench/stomp.py                      # 3 rounds, 50,000 messages, both brokers
    bench/stomp.py --rounds 5 -n 20000 --broker rabbitmq
    bench/stomp.py --write              # also replace the STOMP section of bench/README.md

Cases, each run by both contenders in every round (their order alternating):
- send: N lines on stdin, every SEND with a receipt, at most 256 outstanding
  (`iotctl stomp send -l` vs bench/minimal/stomp_send.py); messages/s over the
  sender's wall time.
- subscribe: the N messages just sent, printed one per line and acknowledged one
  by one once written (`iotctl stomp subscribe -C N -o raw`, default acks, vs
  bench/minimal/stomp_sub.py); messages/s over the subscriber's wall time.
Every round checks that each subscriber printed exactly the N lines sent, in order,
and that nothing was left on the queue. Target: iotctl >= 0.9x the floor.
Peers: `scripts/services up rabbitmq-stomp activemq`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import IOTCTL, MINIMAL, PY, ROOT, write_section  # noqa: E402  (bench/common.py)

SECTION_START = "<!-- stomp: written by bench/stomp.py --write -->"
SECTION_END = "<!-- /stomp -->"

BROKERS = {
    # name: (port, vhost, user, password)
    "rabbitmq": (61613, "iotctl-stomp", "iotctl-stomp", "iotctl-stomp-secret"),
    "activemq": (61614, "/", "iotctl", "iotctl-secret"),
}


def env() -> dict:
    e = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE") and not k.startswith("IOTCTL_")}
    e["IOTCTL_CONFIG_DIR"] = tempfile.mkdtemp(prefix="iotctl-bench-")
    return e


def timed(cmd, stdin=None, capture=False) -> tuple[float, bytes]:
    start = time.perf_counter()
    done = subprocess.run(cmd, stdin=stdin, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                          stderr=subprocess.PIPE, env=ENV, timeout=600)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.decode()[-500:]}")
    return took, done.stdout or b""


def iotctl_login(broker: str) -> list[str]:
    port, vhost, user, password = BROKERS[broker]
    return ["-h", "127.0.0.1", "-p", str(port), "--vhost", vhost, "-u", user, "-P", password]


def floor_login(broker: str) -> list[str]:
    port, vhost, user, password = BROKERS[broker]
    return ["127.0.0.1", str(port), vhost, user, password]


def send_cmd(who: str, broker: str, dest: str) -> list[str]:
    if who == "iotctl":
        return [*IOTCTL, "stomp", "send", *iotctl_login(broker), dest, "-l"]
    return [PY, str(MINIMAL / "stomp_send.py"), *floor_login(broker), dest]


def sub_cmd(who: str, broker: str, dest: str, n: int) -> list[str]:
    if who == "iotctl":
        return [*IOTCTL, "stomp", "subscribe", *iotctl_login(broker), dest, "-C", str(n), "-o", "raw"]
    return [PY, str(MINIMAL / "stomp_sub.py"), *floor_login(broker), dest, str(n)]


def leftovers(broker: str, dest: str) -> int:
    done = subprocess.run([*IOTCTL, "stomp", "subscribe", *iotctl_login(broker), dest, "--idle-timeout", "0.5",
                           "-o", "raw", "--ack", "auto"], capture_output=True, env=ENV, timeout=60)
    return len(done.stdout.splitlines())


def main() -> int:
    global ENV
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=50_000)
    ap.add_argument("--broker", action="append", choices=list(BROKERS))
    ap.add_argument("--write", action="store_true", help="replace the STOMP section of bench/README.md")
    args = ap.parse_args()
    started = time.time()
    load_before = os.getloadavg()
    ENV = env()
    n = args.n
    expected = b"".join(b"%08d\n" % i for i in range(n))
    lines = Path(ENV["IOTCTL_CONFIG_DIR"]) / "lines.txt"
    lines.write_bytes(expected)
    rows = []
    for broker in args.broker or list(BROKERS):
        rates: dict = {("send", "iotctl"): [], ("send", "floor"): [], ("sub", "iotctl"): [], ("sub", "floor"): []}
        for r in range(args.rounds):
            order = ["iotctl", "floor"] if r % 2 == 0 else ["floor", "iotctl"]
            dests = {who: f"/queue/iotctl-bench-{who}-{uuid.uuid4().hex[:8]}" for who in order}
            for who in order:
                with open(lines, "rb") as fh:
                    took, _ = timed(send_cmd(who, broker, dests[who]), stdin=fh)
                rates[("send", who)].append(n / took)
            for who in order:
                took, out = timed(sub_cmd(who, broker, dests[who], n), capture=True)
                if out != expected:
                    raise SystemExit(f"{broker} round {r + 1}: {who} printed {len(out.splitlines())} lines, "
                                     f"not the {n} sent in order")
                rates[("sub", who)].append(n / took)
            for who in order:
                left = leftovers(broker, dests[who])
                if left:
                    raise SystemExit(f"{broker} round {r + 1}: {left} message(s) left on {who}'s queue")
            print(f"{broker} round {r + 1}: " + ", ".join(
                f"{case} {who} {vals[-1]:,.0f}/s" for (case, who), vals in rates.items()), file=sys.stderr)
        for case, label in (("send", f"`stomp send -l`, {n:,} lines, receipts (window 256)"),
                            ("sub", f"`stomp subscribe -C {n:,} -o raw`, an ack per message")):
            mine = statistics.median(rates[(case, "iotctl")])
            floor = statistics.median(rates[(case, "floor")])
            ratio = mine / floor
            rows.append(f"| {broker} | {label} | {mine:,.0f}/s | {floor:,.0f}/s | {ratio:.2f}× | "
                        f"{'met' if ratio >= 0.9 else 'NOT met'} |")
    import datetime as dt
    import platform

    stomp_version = subprocess.run([PY, "-c", "import importlib.metadata as m; print(m.version('stomp.py'))"],
                                   capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    text = "\n".join([
        SECTION_START,
        "## STOMP (`bench/stomp.py`)",
        "",
        "`iotctl stomp send -l` and `iotctl stomp subscribe` against minimal stomp.py scripts doing the same "
        "work (`bench/minimal/stomp_send.py`: every SEND with a receipt, at most 256 outstanding, exit once "
        "all came back; `bench/minimal/stomp_sub.py`: print each body, ACK it (client-individual) once "
        "written, exit after N) — the floor for any stomp.py-based tool. Both contenders run in every "
        "round, their order alternating; medians over the rounds. Every round checks that each subscriber "
        "printed exactly the N lines sent, in order, and that nothing was left on the queue.",
        "",
        f"- date: {dt.datetime.fromtimestamp(started, dt.timezone.utc):%Y-%m-%d %H:%M} UTC; command: "
        f"`bench/stomp.py --rounds {args.rounds} -n {n}`; took {time.time() - started:.0f} s",
        f"- {platform.python_implementation()} {platform.python_version()}, stomp.py {stomp_version}, "
        f"iotctl at {commit}; RabbitMQ 3.10.8 (STOMP plugin, vhost iotctl-stomp), ActiveMQ 5.17.2 "
        "(non-persistent broker); everything on 127.0.0.1",
        f"- nproc: {os.cpu_count()}, load average at the start {load_before[0]:.1f}, at the end "
        f"{os.getloadavg()[0]:.1f} (the machine is shared: rates move by ±30 % between rounds)",
        "",
        "| broker | case | iotctl | minimal stomp.py | iotctl ÷ floor | target ≥ 0.9× |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "Both sides are bound by the broker and by stomp.py's reader thread (frame parsing and listener "
        "calls for every RECEIPT or MESSAGE). iotctl's send encodes the fixed part of the SEND frame once "
        "(with stomp.py's encoder) and writes each message in one call; its subscriber writes a batch's "
        "ACK frames in one call.",
        SECTION_END,
    ])
    print(text)
    if args.write:
        write_section(text, SECTION_START, SECTION_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())

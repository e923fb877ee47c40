#!/usr/bin/env python3
"""XMPP benchmark: iotctl against a minimal slixmpp script (the floor of any slixmpp
tool) and go-sendxmpp, side by side, against the Prosody of `scripts/services up prosody`.

    bench/xmpp.py                 # 5 rounds, prints the tables
    bench/xmpp.py --rounds 3 --messages 2000 --write   # also update bench/README.md

Cases (every round runs each contender once, the order rotating; medians reported):
- login: wall time of one process sending one message (connect, STARTTLS, SASL,
  bind, stream management, the message acknowledged, close);
- send -l: N lines of stdin, each a chat message from alice to bob (messages/s over
  the sender's whole wall time; bob is online and counts what arrived);
- listen: bob prints N messages that a minimal slixmpp sender sends as fast as it
  can (messages/s from the sender's start to the listener's Nth line).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH, MINIMAL, PY, ROOT, child_env, write_section  # noqa: E402  (bench/common.py)

HOST, PORT = "127.0.0.1", 5222
PEERS = Path(os.environ.get("IOTCTL_PEERS_DIR", "/var/tmp/iotctl-peers"))
CA = str(PEERS / "certs" / "ca.crt")
GO = shutil.which("go-sendxmpp")
ALICE, BOB = ("alice@localhost", "alice-pw"), ("bob@localhost", "bob-pw")


ENV: dict = {}


def iotctl(*args: str, who=ALICE) -> list[str]:
    cmd, rest = args[0], list(args[1:])
    return [PY, "-m", "iotctl", "xmpp", cmd, "--jid", who[0], "-P", who[1], "--server", f"{HOST}:{PORT}",
            "--cafile", CA, *rest]


def minimal_send(to: str) -> list[str]:
    return [PY, str(MINIMAL / "xmpp_send.py"), *ALICE, HOST, str(PORT), CA, to]


def minimal_listen(count: int) -> list[str]:
    return [PY, str(MINIMAL / "xmpp_listen.py"), *BOB, HOST, str(PORT), CA, str(count)]


def go_send(*extra: str) -> list[str]:
    return [GO, "-u", ALICE[0], "-p", ALICE[1], "-j", f"{HOST}:{PORT}", "-n", *extra]


class Lines(threading.Thread):
    """Counts stdout lines of a child (those containing `tag`, when set); remembers
    when the Nth arrived."""

    def __init__(self, proc: subprocess.Popen, target: int | None = None):
        super().__init__(daemon=True)
        self.proc, self.target = proc, target
        self.count = 0
        self.tag: bytes | None = None
        self.tagged = 0
        self.reached: float | None = None
        self.start()

    def run(self) -> None:
        for line in self.proc.stdout:
            self.count += 1
            if self.tag is not None and self.tag in line:
                self.tagged += 1
            if self.target is not None and self.count >= self.target and self.reached is None:
                self.reached = time.perf_counter()


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_ready(p: subprocess.Popen, err: Path, marker: str | None, timeout: float = 15) -> None:
    if marker is None:  # go-sendxmpp says nothing when online
        time.sleep(1.5)
        return
    end = time.monotonic() + timeout
    while marker not in err.read_text(errors="replace"):
        if p.poll() is not None or time.monotonic() > end:
            raise SystemExit(f"listener not ready: {err.read_text()}")
        time.sleep(0.02)


def drain(who) -> None:
    subprocess.run([*iotctl("listen", "--idle-timeout", "1.5", "-o", "raw", who=who)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, timeout=120)


# --------------------------------------------------------------------------- cases


def case_login(sink: Lines, tmp: Path) -> dict:
    cmds = {
        "iotctl": (iotctl("send", BOB[0], "x"), None),
        "minimal slixmpp": (minimal_send(BOB[0]), b"x\n"),
    }
    if GO:
        cmds["go-sendxmpp"] = (go_send(BOB[0]), b"x")
    out = {}
    for name, (cmd, stdin) in cmds.items():
        t0 = time.perf_counter()
        done = subprocess.run(cmd, input=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV,
                              timeout=60)
        out[name] = (time.perf_counter() - t0, done.returncode == 0)
    return out


def case_send(sink: Lines, tmp: Path, n: int) -> dict:
    cmds = {
        "iotctl": iotctl("send", BOB[0], "-l"),
        "minimal slixmpp": minimal_send(BOB[0]),
    }
    if GO:
        cmds["go-sendxmpp"] = go_send("-i", BOB[0])
    out = {}
    for name, cmd in cmds.items():
        tag = f"{name[:3]}{time.monotonic_ns() % 10 ** 9}".encode()
        lines = b"".join(b"%s-%08d\n" % (tag, i) for i in range(n))
        sink.tag, sink.tagged = tag, 0
        t0 = time.perf_counter()
        subprocess.run(cmd, input=lines, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, timeout=300)
        wall = time.perf_counter() - t0
        # what the server took is on its way to bob: wait until all of it, or quiet for 2 s
        last, quiet = sink.tagged, time.monotonic()
        while time.monotonic() - quiet < 2.0 and sink.tagged < n:
            time.sleep(0.05)
            if sink.tagged != last:
                last, quiet = sink.tagged, time.monotonic()
        out[name] = (n / wall, sink.tagged)
    return out


def case_listen(tmp: Path, n: int) -> dict:
    lines = "".join(f"{i:08d}\n" for i in range(n)).encode()
    cmds = {
        "iotctl": (iotctl("listen", "-C", str(n), "-o", "raw", who=BOB), "listening as"),
        "minimal slixmpp": (minimal_listen(n), "ready"),
    }
    if GO:
        cmds["go-sendxmpp"] = ([GO, "-u", BOB[0], "-p", BOB[1], "-j", f"{HOST}:{PORT}", "-n", "-l"], None)
    out = {}
    for name, (cmd, marker) in cmds.items():
        err = tmp / "listen.err"
        with open(err, "wb") as fh:
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=fh, env=ENV)
        reader = Lines(p, n)
        try:
            wait_ready(p, err, marker)
            t0 = time.perf_counter()
            subprocess.run(minimal_send(BOB[0]), input=lines, stdout=subprocess.DEVNULL, env=ENV, timeout=300)
            end = time.monotonic() + 60
            while reader.reached is None and time.monotonic() < end:
                time.sleep(0.01)
            got = reader.count
            rate = n / (reader.reached - t0) if reader.reached else 0.0
        finally:
            stop(p)
            reader.join(5)
        out[name] = (rate, got)
        if got < n:
            drain(BOB)
    return out


# --------------------------------------------------------------------------- report


def median(values):
    return statistics.median(values) if values else float("nan")


def run(args) -> str:
    tmp = Path(tempfile.mkdtemp(prefix="iotctl-bench-xmpp-"))
    ENV.update(child_env(str(tmp / "config")))
    started = dt.datetime.now(dt.timezone.utc)
    t_start = time.monotonic()
    for who in (ALICE, BOB):
        drain(who)
    login: dict = {}
    send: dict = {}
    listen: dict = {}
    # one untimed warm-up (bytecode, Prosody's caches)
    sink_p = subprocess.Popen(minimal_listen(10 ** 9), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=ENV)
    sink = Lines(sink_p)
    time.sleep(1.5)
    try:
        case_login(sink, tmp)
        for r in range(args.rounds):
            for name, v in case_login(sink, tmp).items():
                login.setdefault(name, []).append(v)
            for name, v in case_send(sink, tmp, args.messages).items():
                send.setdefault(name, []).append(v)
            print(f"round {r + 1}: login and send done", file=sys.stderr)
    finally:
        stop(sink_p)
    drain(BOB)
    for r in range(args.rounds):
        for name, v in case_listen(tmp, args.messages).items():
            listen.setdefault(name, []).append(v)
        print(f"round {r + 1}: listen done", file=sys.stderr)
    elapsed = time.monotonic() - t_start
    names = ["iotctl", "minimal slixmpp"] + (["go-sendxmpp"] if GO else [])

    def row(label, data, fmt, ratio_better_high):
        cells, med = [], {}
        for name in names:
            vals = [v[0] for v in data.get(name, [])]
            med[name] = median(vals)
            cells.append(fmt(med[name]))
        ratio = med["iotctl"] / med["minimal slixmpp"]
        return f"| {label} | " + " | ".join(cells) + f" | {ratio:.2f}× |"

    def delivered(data, n):
        cells = []
        for name in names:
            got = [v[1] for v in data.get(name, [])]
            lost = [g for g in got if g < n]
            cells.append(f"{min(got):,}" + (" ⚠" if lost else "") if got else "")
        return f"| delivered (fewest of {len(got)} rounds, of {n:,}) | " + " | ".join(cells) + " | |"

    n = args.messages
    head = "| case | " + " | ".join(names) + " | iotctl ÷ minimal slixmpp |\n|---|" + "---|" * (len(names) + 1)
    ms = lambda v: f"{v * 1000:.0f} ms"  # noqa: E731
    rate = lambda v: f"{v:,.0f}/s"  # noqa: E731
    versions = machine()
    return f"""<!-- xmpp-bench: generated by bench/xmpp.py --write -->
## XMPP (`bench/xmpp.py`)

- date: {started.strftime('%Y-%m-%d %H:%M UTC')}; command: `bench/xmpp.py {' '.join(sys.argv[1:])}`, {args.rounds} rounds, took {elapsed:.0f} s
- {versions}
- Prosody from `scripts/services up prosody` (127.0.0.1:5222, STARTTLS, SCRAM-SHA-1, stream
  management on), the clients and this script share the machine's CPUs (and here other
  people's test runs: rates vary by ±20 % from run to run).

### Login: one process sends one message to bob (wall time, lower is better)

{head}
{row("`xmpp send bob@localhost x` (go-sendxmpp: the message on stdin)", {k: [(v[0],) for v in vs] for k, vs in login.items()}, ms, False)}

### `send -l`: {n:,} lines of stdin, each a chat message alice → bob (messages/s over the whole run, higher is better)

{head}
{row(f"{n:,} messages, `xmpp send bob@localhost -l`", send, rate, True)}
{delivered(send, n)}

- bob is online during the run (the minimal listener, counting what arrives), so nothing goes to offline storage.
- iotctl and the minimal script exit once the server acknowledged every message (XEP-0198: an ack
  request every 256 stanzas and whenever the writer has caught up). go-sendxmpp has no line mode for a pipe: `-i`
  (interactive) sends each line, stops at end of input without waiting for anything, and says
  "failed to read from stdin"; it loses messages that way (⚠).

### `listen`: bob prints {n:,} messages sent as fast as the minimal sender can (messages/s, sender start → Nth line, higher is better)

{head}
{row(f"{n:,} messages, `xmpp listen -C {n} -o raw`", listen, rate, True)}
{delivered(listen, n)}

- The sender (`bench/minimal/xmpp_send.py`) is the same for every listener, so the rate is capped by
  it and by Prosody; a listener at the cap keeps up. go-sendxmpp `-l` prints a timestamped line per message.
<!-- /xmpp-bench -->
"""


def machine() -> str:
    def out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return "?"

    slix = out([PY, "-c", "import slixmpp; print(slixmpp.__version__)"])
    pros = out(["dpkg-query", "-W", "-f=${Version}", "prosody"])
    gos = out(["dpkg-query", "-W", "-f=${Version}", "go-sendxmpp"])
    commit = out(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    return (f"nproc {os.cpu_count()}, Python {sys.version.split()[0]}, slixmpp {slix}, Prosody {pros}, "
            f"go-sendxmpp {gos}, iotctl at commit {commit}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--write", action="store_true", help="put the tables into bench/README.md")
    args = ap.parse_args()
    text = run(args)
    print(text)
    if args.write:
        write_section(text, "<!-- xmpp-bench", "<!-- /xmpp-bench -->")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""`iotctl coap serve` memory under floods: does its RSS plateau?

Starts `iotctl coap serve --quiet` on a free UDP port of 127.0.0.1, then runs ROUNDS
rounds; each round is, from CLIENTS raw UDP sockets (each its own CoAP endpoint):

- a GET flood: GETS confirmable GETs of /sensors/temperature per client, WINDOW in
  flight at a time, every response counted;
- a POST flood: POSTS confirmable POSTs to /actuators/led per client (the server must
  remember each for duplicate detection: the state RFC 7252 asks for);
- an observe flood: OBSERVES registrations (GET with Observe, new token each) of /time
  and the sensors per client, after which the socket closes without deregistering
  (the server learns it from ICMP port unreachable or unanswered notifications);
- a Block1 flood: uploads of 63 KiB to /store/NAME left unfinished.

After each round the server's VmRSS (from /proc) is read once its CPU is idle. Prints a
table and one JSON line; --markdown prints the table for bench/README.md.

    bench/coap_flood.py [--rounds 8] [--clients 20] [--gets 1000] [--only get,post,...]
    bench/coap_flood.py --iotctl 'env PYTHONPATH=/tmp/old .venv/bin/python -m iotctl'   # another checkout

Only the standard library is used; the server runs on the repo's .venv interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_venv = ROOT / ".venv" / "bin" / "iotctl"
IOTCTL = [str(_venv)] if _venv.exists() else [shutil.which("iotctl") or "iotctl"]
CON, NON, ACK, RST = 0, 1, 2, 3


def encode(mtype, code, mid, token, options=(), payload=b""):
    out = bytearray([0x40 | mtype << 4 | len(token), code]) + mid.to_bytes(2, "big") + token
    prev = 0
    for number, value in sorted(options, key=lambda o: o[0]):
        d, n = number - prev, len(value)
        dn, de = (d, b"") if d < 13 else (13, bytes([d - 13]))
        ln, le = (n, b"") if n < 13 else ((13, bytes([n - 13])) if n < 269 else (14, (n - 269).to_bytes(2, "big")))
        out += bytes([dn << 4 | ln]) + de + le + value
        prev = number
    if payload:
        out += b"\xff" + payload
    return bytes(out)


def path(p: str):
    return [(11, s.encode()) for s in p.strip("/").split("/")]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def settle(pid: int, timeout: float = 30.0) -> None:
    """Wait until the server used no CPU for 0.5 s (it is done with the round)."""
    end = time.monotonic() + timeout
    last = cpu_ticks(pid)
    while time.monotonic() < end:
        time.sleep(0.5)
        now = cpu_ticks(pid)
        if now == last:
            return
        last = now


class Flooder:
    """One client endpoint: pipelined confirmable requests, WINDOW in flight."""

    def __init__(self, port: int):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.addr = ("127.0.0.1", port)
        self.mid = random.randrange(0x10000)

    def send(self, code, options, payload=b"", mtype=CON) -> None:
        self.mid = (self.mid + 1) & 0xFFFF
        token = os.urandom(4)
        self.sock.sendto(encode(mtype, code, self.mid, token, options, payload), self.addr)

    def close(self):
        self.sock.close()


def flood(flooders, make, per_client: int, window: int, idle: float = 1.0) -> int:
    """Send per_client requests from every flooder (window in flight each) until all
    are answered or nothing came for `idle` seconds (a lost request is not sent
    again); returns how many responses came back."""
    sel = selectors.DefaultSelector()
    state = {}
    for f in flooders:
        sel.register(f.sock, selectors.EVENT_READ, f)
        state[f] = [0, 0]  # sent, answered
        for _ in range(min(window, per_client)):
            make(f, state[f][0])
            state[f][0] += 1
    got = 0
    idle_end = time.monotonic() + idle
    while any(s[1] < per_client for s in state.values()) and time.monotonic() < idle_end:
        for key, _ in sel.select(0.2):
            f = key.data
            while True:
                try:
                    data = f.sock.recv(70000)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                mtype = (data[0] >> 4) & 3
                if mtype == CON:  # a notification: acknowledge it
                    f.sock.sendto(bytes([0x60, 0]) + data[2:4], f.addr)
                if data[1] == 0 or mtype == CON:
                    continue
                s = state[f]
                s[1] += 1
                got += 1
                idle_end = time.monotonic() + idle
                if s[0] < per_client:
                    make(f, s[0])
                    s[0] += 1
    sel.close()
    return got


def round_(port: int, args, rnd: int) -> dict:
    counts = {"get": 0, "post": 0, "observe": 0, "block1": 0}
    flooders = [Flooder(port) for _ in range(args.clients)]
    if "get" in args.only:
        counts["get"] = flood(flooders, lambda f, i: f.send(1, path("sensors/temperature")), args.gets, args.window)
    if "post" in args.only:
        counts["post"] = flood(flooders, lambda f, i: f.send(2, path("actuators/led")), args.posts, args.window)
    for f in flooders:
        f.close()
    # observers that register and vanish
    flooders = [Flooder(port) for _ in range(args.clients)]
    targets = ["time", "sensors/temperature", "sensors/humidity", "actuators/led"]
    if "observe" in args.only:
        counts["observe"] = flood(flooders, lambda f, i: f.send(1, path(targets[i % 4]) + [(6, b"")]),
                              args.observes, args.window)
    for f in flooders:
        f.close()
    # unfinished Block1 uploads of 63 KiB
    flooders = [Flooder(port) for _ in range(args.clients)]

    def upload(f, i):
        name = f"flood-{rnd}-{i % 8}"
        f.send(3, path(f"store/{name}") + [(27, bytes([(i // 8) % 63 << 4 | 8 | 6]) if (i // 8) % 63 < 16
                                                else ((i // 8) % 63 << 4 | 8 | 6).to_bytes(2, "big"))],
               b"u" * 1024)

    if "block1" in args.only:
        counts["block1"] = flood(flooders, upload, args.uploads, 1)
    for f in flooders:
        f.close()
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--gets", type=int, default=1000, help="GETs per client per round")
    ap.add_argument("--posts", type=int, default=250, help="POSTs per client per round")
    ap.add_argument("--observes", type=int, default=50, help="observe registrations per client per round")
    ap.add_argument("--uploads", type=int, default=504, help="Block1 blocks per client per round")
    ap.add_argument("--window", type=int, default=4, help="requests in flight per client")
    ap.add_argument("--only", default="get,post,observe,block1", help="which floods (comma-separated)")
    ap.add_argument("--iotctl", help="command that runs iotctl (e.g. to compare another checkout) "
                    "[default: the repo's .venv/bin/iotctl]")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    args.only = set(args.only.split(","))

    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE") and not k.startswith("IOTCTL_")}
    import shlex

    iotctl = shlex.split(args.iotctl) if args.iotctl else IOTCTL
    # cwd: `python -m iotctl` would import the package of the current directory first
    proc = subprocess.Popen([*iotctl, "coap", "serve", "--quiet", "-p", str(port)], env=env, cwd="/",
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.settimeout(0.2)
        for _ in range(100):
            try:
                probe.sendto(bytes([0x40, 0, 0, 1]), ("127.0.0.1", port))
                probe.recv(64)
                break
            except OSError:
                time.sleep(0.1)
        probe.close()
        settle(proc.pid)
        rows = [{"round": 0, "rss_kib": rss_kib(proc.pid)}]
        for rnd in range(1, args.rounds + 1):
            t0 = time.monotonic()
            counts = round_(port, args, rnd)
            seconds = time.monotonic() - t0
            settle(proc.pid)
            rows.append({"round": rnd, "rss_kib": rss_kib(proc.pid), "seconds": round(seconds, 2), **counts})
            if not args.markdown:
                print(json.dumps(rows[-1]), flush=True)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    per_round = (f"{args.clients} clients × ({args.gets} GET + {args.posts} POST + {args.observes} "
                 f"observe registrations + {args.uploads} Block1 blocks)")
    growth = rows[-1]["rss_kib"] - rows[len(rows) // 2]["rss_kib"]
    print(f"\n{per_round} per round\n")
    print("| round | serve RSS | requests answered (GET / POST / observe / Block1) | round time |")
    print("|---|---|---|---|")
    for r in rows:
        if r["round"] == 0:
            print(f"| start | {r['rss_kib'] / 1024:.1f} MiB | | |")
        else:
            print(f"| {r['round']} | {r['rss_kib'] / 1024:.1f} MiB | {r['get']} / {r['post']} / "
                  f"{r['observe']} / {r['block1']} | {r['seconds']:.1f} s |")
    print(f"\nRSS growth over the second half of the rounds: {growth / 1024:+.1f} MiB")
    print(json.dumps({"rows": rows, "growth_kib": growth}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

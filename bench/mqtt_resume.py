#!/usr/bin/env python3
"""A persistent QoS 1/2 `mqtt sub` stopped and resumed: how many messages come back
twice, how many are lost?

Against the private broker on 127.0.0.1:11883 (`scripts/services up mosquitto`): a
persistent session (`-i ID --no-clean-start`) is created, MESSAGES numbered lines are
published to it at the QoS given, then it is drained by `mqtt sub -C COUNT` runs (each
a new process resuming the session) and by runs stopped with Ctrl-C (SIGINT once the
first message is printed). Every printed line is checked: a line printed twice is a
duplicate, a number never printed (before the last one printed) is lost.

    bench/mqtt_resume.py [--messages 20000] [--count 500] [--interrupts 5] [--qos 1]
    bench/mqtt_resume.py --iotctl 'env PYTHONPATH=/tmp/old .venv/bin/python -m iotctl'

Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_venv = ROOT / ".venv" / "bin" / "iotctl"
IOTCTL = [str(_venv)] if _venv.exists() else [shutil.which("iotctl") or "iotctl"]
BROKER = ["-h", "127.0.0.1", "-p", "11883"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--count", type=int, default=500, help="-C of each counted run")
    ap.add_argument("--interrupts", type=int, default=5, help="runs ended by Ctrl-C")
    ap.add_argument("--qos", type=int, choices=(1, 2), default=1)
    ap.add_argument("--iotctl", help="command that runs iotctl [default: the repo's .venv/bin/iotctl]")
    args = ap.parse_args()
    iotctl = shlex.split(args.iotctl) if args.iotctl else IOTCTL
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE") and not k.startswith("IOTCTL_")}

    def run(*a, **kw):
        # cwd: `python -m iotctl` would import the package of the current directory first
        return subprocess.run([*iotctl, *a], env=env, cwd="/", capture_output=True, **kw)

    cid = f"bench-resume-{os.getpid()}"
    topic = f"bench/resume/{os.getpid()}"
    session = [*BROKER, "-i", cid, "--no-clean-start", "--session-expiry", "600", "-q", str(args.qos), "-t", topic]
    run("mqtt", "sub", *session, "-W", "0.2")
    lines = [f"{i:07d}" for i in range(args.messages)]
    r = run("mqtt", "pub", *BROKER, "-t", topic, "-q", str(args.qos), "-l", input=("\n".join(lines) + "\n").encode())
    if r.returncode:
        sys.exit(f"publish failed: {r.stderr.decode()}")
    printed: list[str] = []
    runs = []

    def interrupted() -> list[str]:
        """A run stopped by Ctrl-C once it printed something (or after 3 s)."""
        import select

        proc = subprocess.Popen([*iotctl, "mqtt", "sub", *session], env=env, cwd="/",
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        first = proc.stdout.readline() if select.select([proc.stdout], [], [], 3)[0] else b""
        proc.send_signal(signal.SIGINT)
        out = (first + proc.stdout.read()).decode().splitlines()
        proc.wait(30)
        return out

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if len(runs) % 2 and sum(kind == "Ctrl-C" for kind, _ in runs) < args.interrupts:
            out = interrupted()
            runs.append(("Ctrl-C", len(out)))
        else:
            r = run("mqtt", "sub", *session, "-C", str(args.count), "-W", "3")
            out = r.stdout.decode().splitlines()
            runs.append((f"-C {args.count}", len(out)))
        printed += out
        if not out and len(set(printed)) >= args.messages:
            break
    run("mqtt", "sub", *BROKER, "-i", cid, "-t", topic, "-W", "0.1")  # a clean start ends the session
    seen: set[str] = set()
    duplicates = 0
    for line in printed:
        duplicates += line in seen
        seen.add(line)
    lost = len(set(lines) - seen)
    result = {"qos": args.qos, "messages": args.messages, "runs": len(runs), "printed": len(printed),
              "duplicates": duplicates, "lost": lost}
    print(f"QoS {args.qos}: {args.messages} messages, {len(runs)} runs "
          f"(up to {args.interrupts} ended by Ctrl-C, the rest by -C {args.count}): printed {len(printed)}, "
          f"duplicates {duplicates}, lost {lost}")
    print("runs: " + ", ".join(f"{kind}: {n}" for kind, n in runs))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

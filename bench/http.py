#!/usr/bin/env python3
"""Benchmark `iotctl http` and the HTTP library candidates, side by side.

    bench/http.py                       # 5 rounds, every section
    bench/http.py --rounds 3 --only startup,client
    bench/http.py --httpie /path/to/venv/bin/http --write   # also replace the HTTP section of bench/README.md

Sections (every contender runs in every round, the order rotating; medians):
- imports: `python -c 'import asyncio, LIB'` for h11, httpx and aiohttp (each candidate
  runs on asyncio: iotctl's loop is asyncio), against `import asyncio` alone.
- startup: one GET of nginx's /hello, printed: `iotctl http get` (its express lane,
  and the normal path with IOTCTL_EXPRESS=0) against minimal h11, httpx and aiohttp
  scripts (bench/minimal/http_get_*.py), curl and httpie.
  Target: iotctl <= 1.3x the minimal script on its own library (h11).
- client: N sequential GETs on one kept-alive connection (requests/s over the whole
  process): `iotctl http get -l` (a request per stdin line) and the minimal scripts.
- server: wrk (1 thread, 10 connections, 3 s, POST of a short body) against
  `iotctl http listen -o raw` and minimal h11 and aiohttp.web servers that print
  every body (bench/minimal/http_server_*.py).
Peers: `scripts/services up nginx`; wrk (Debian package) for the server section;
httpie from PyPI in a venv of its own (`--httpie PATH`, else `http` on PATH).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import IOTCTL, MINIMAL, PY, ROOT, child_env, write_section  # noqa: E402  (bench/common.py)

SECTION_START = "<!-- http: written by bench/http.py --write -->"
SECTION_END = "<!-- /http -->"
URL = "http://127.0.0.1:18080/hello"


CPU: dict = {}  # command -> CPU seconds (user + system) of each run, the children's rusage


def run(cmd, stdin=None, env=None) -> float:
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or ENV,
                          timeout=300)
    took = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.setdefault(tuple(map(str, cmd)), []).append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))}: exit {done.returncode}: {done.stderr.decode()[-400:]}")
    return took


def rotate(contenders: dict, rounds: int, repeat: int, measure) -> dict:
    """measure(cmd) for every contender, `repeat` times a round, interleaved, the order
    rotating from round to round."""
    names = list(contenders)
    out: dict = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for _ in range(repeat):  # interleaved: a burst of load elsewhere hits every contender alike
            for name in order:
                out[name].append(measure(contenders[name]))
    return out


def ms(values) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def library_version(name: str) -> str:
    return subprocess.run([PY, "-c", f"import importlib.metadata as m; print(m.version({name!r}))"],
                          capture_output=True, text=True).stdout.strip() or "not installed"


def main() -> int:
    global ENV
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-n", type=int, default=2000, help="requests in the client section")
    ap.add_argument("--only", default="imports,startup,client,server")
    ap.add_argument("--httpie", default=shutil.which("http"), help="httpie's `http` command")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    only = set(args.only.split(","))
    started = time.time()
    ENV = child_env(tempfile.mkdtemp(prefix="iotctl-bench-"))
    have = {lib: library_version(lib) != "not installed" for lib in ("h11", "httpx", "aiohttp")}
    lines: list[str] = []
    targets: list[str] = []

    if "imports" in only:
        cases = {"asyncio alone": [PY, "-c", "import asyncio"]}
        for lib in ("h11", "httpx", "aiohttp"):
            if have[lib]:
                cases[f"asyncio + {lib}"] = [PY, "-c", f"import asyncio, {lib}"]
        for cmd in cases.values():
            run(cmd)
        got = rotate(cases, args.rounds, 10, run)
        base = statistics.median(got["asyncio alone"])
        lines += ["### Import time: `python -c 'import asyncio, LIB'` (wall time of the process, lower is better)", "",
                  "| case | time | over asyncio alone |", "|---|---|---|"]
        for name, values in got.items():
            lines.append(f"| {name} | {ms(values)} | +{(statistics.median(values) - base) * 1000:.1f} ms |")
        lines += ["", f"- 10 runs per case per round, {args.rounds} rounds; median.", ""]

    if "startup" in only:
        cases = {"iotctl http get": [*IOTCTL, "http", "get", URL],
                 "iotctl http get, normal path": ["env", "IOTCTL_EXPRESS=0", *IOTCTL, "http", "get", URL],
                 "minimal h11": [PY, str(MINIMAL / "http_get_h11.py"), URL]}
        if have["httpx"]:
            cases["minimal httpx"] = [PY, str(MINIMAL / "http_get_httpx.py"), URL]
        if have["aiohttp"]:
            cases["minimal aiohttp"] = [PY, str(MINIMAL / "http_get_aiohttp.py"), URL]
        if shutil.which("curl"):
            cases["curl"] = ["curl", "-s", URL]
        if args.httpie:
            cases["httpie"] = [args.httpie, "--ignore-stdin", "--body", URL]
        for cmd in cases.values():
            run(cmd)
        got = rotate(cases, args.rounds, 10, run)
        mine = statistics.median(got["iotctl http get"])
        floor = statistics.median(got["minimal h11"])
        ratio = mine / floor
        cpu = {name: statistics.median(CPU[tuple(map(str, cmd))]) for name, cmd in cases.items()}
        cpu_floor = cpu["minimal h11"]
        lines += ["### Start-up: one GET of nginx's /hello, printed (wall time of the process, and its CPU time, "
                  "lower is better)", "",
                  "| case | wall time | ÷ minimal h11 | CPU time (user + system) | ÷ minimal h11 |", "|---|---|---|---|---|"]
        for name, values in got.items():
            lines.append(f"| {name} | {ms(values)} | {statistics.median(values) / floor:.2f}× | "
                         f"{cpu[name] * 1000:.1f} ms | {cpu[name] / cpu_floor:.2f}× |")
        lines += ["", f"- 10 runs per contender per round, {args.rounds} rounds; median. httpie "
                      f"{subprocess.run([args.httpie, '--version'], capture_output=True, text=True).stdout.strip() if args.httpie else 'absent'}"
                      " in a venv of its own.", ""]
        normal = statistics.median(got["iotctl http get, normal path"]) / floor
        for label, wall, cpu_ratio in (
                ("`iotctl http get` (the express lane)", ratio, cpu["iotctl http get"] / cpu_floor),
                ("`iotctl http get`, normal path (`IOTCTL_EXPRESS=0`: click, asyncio, h11)", normal,
                 cpu["iotctl http get, normal path"] / cpu_floor)):
            targets.append(f"| startup: {label} ≤ 1.3× minimal h11, wall time | {wall:.2f}× | "
                           f"{'met' if wall <= 1.3 else '**not met**'} |")
            targets.append(f"| startup: {label} ≤ 1.3× minimal h11, CPU time (steadier under load) | "
                           f"{cpu_ratio:.2f}× | {'met' if cpu_ratio <= 1.3 else '**not met**'} |")

    if "client" in only:
        n = args.n
        blank = Path(ENV["IOTCTL_CONFIG_DIR"]) / "blank.txt"
        blank.write_bytes(b"\n" * n)

        def measure(cmd):
            with open(blank, "rb") as fh:
                return run(cmd, stdin=fh)

        cases = {"iotctl http get -l": [*IOTCTL, "http", "get", URL, "-l"],
                 "minimal h11": [PY, str(MINIMAL / "http_get_h11.py"), URL, str(n)]}
        if have["httpx"]:
            cases["minimal httpx"] = [PY, str(MINIMAL / "http_get_httpx.py"), URL, str(n)]
        if have["aiohttp"]:
            cases["minimal aiohttp"] = [PY, str(MINIMAL / "http_get_aiohttp.py"), URL, str(n)]
        got = rotate(cases, args.rounds, 1, measure)
        floor = n / statistics.median(got["minimal h11"])
        lines += [f"### Client: {n:,} sequential GETs of /hello on one kept-alive connection "
                  "(requests/s over the whole process, higher is better)", "",
                  "| case | requests/s | ÷ minimal h11 |", "|---|---|---|"]
        for name, values in got.items():
            rate = n / statistics.median(values)
            lines.append(f"| {name} | {rate:,.0f}/s | {rate / floor:.2f}× |")
        lines += [""]

    if "server" in only and shutil.which("wrk"):
        script = Path(ENV["IOTCTL_CONFIG_DIR"]) / "post.lua"
        script.write_text('wrk.method = "POST"\nwrk.body = "21.5"\n')
        servers = {"iotctl http listen -o raw": lambda p: [*IOTCTL, "http", "listen", "-p", str(p), "-o", "raw",
                                                            "--quiet"],
                   "minimal h11 server": lambda p: [PY, str(MINIMAL / "http_server_h11.py"), str(p)]}
        if have["aiohttp"]:
            servers["minimal aiohttp.web server"] = lambda p: [PY, str(MINIMAL / "http_server_aiohttp.py"), str(p)]
        rates: dict = {name: [] for name in servers}
        for r in range(args.rounds):
            names = list(servers)
            for name in names[r % len(names):] + names[:r % len(names)]:
                port = free_port()
                proc = subprocess.Popen(servers[name](port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        env=ENV)
                try:
                    wait_port(port)
                    done = subprocess.run(["wrk", "-t1", "-c10", "-d3s", "-s", str(script), f"http://127.0.0.1:{port}/"],
                                          capture_output=True, text=True, timeout=60)
                    rate = float(next(line.split()[1] for line in done.stdout.splitlines()
                                      if line.startswith("Requests/sec")))
                    rates[name].append(rate)
                finally:
                    proc.terminate()
                    proc.wait(10)
        floor = statistics.median(rates["minimal h11 server"])
        lines += ["### Server: wrk, 1 thread, 10 connections, 3 s of POSTs, every body printed "
                  "(requests/s, higher is better)", "", "| case | requests/s | ÷ minimal h11 server |", "|---|---|---|"]
        for name, values in rates.items():
            lines.append(f"| {name} | {statistics.median(values):,.0f}/s | {statistics.median(values) / floor:.2f}× |")
        lines += ["", "- iotctl answers each request only once its body is written and flushed (ack after "
                      "write: a round trip to the main thread per batch); the minimal servers print and answer in "
                      "the loop.", ""]

    import datetime as dt
    import platform

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    text = "\n".join([
        SECTION_START,
        "## HTTP (`bench/http.py`)",
        "",
        f"- date: {dt.datetime.fromtimestamp(started, dt.timezone.utc):%Y-%m-%d %H:%M} UTC; command: "
        f"`bench/http.py --rounds {args.rounds}`; took {time.time() - started:.0f} s; load average at the end "
        f"{os.getloadavg()[0]:.1f} (2 CPUs shared with other work: rates move by ±30 %)",
        f"- {platform.python_implementation()} {platform.python_version()}, h11 {library_version('h11')}, "
        f"httpx {library_version('httpx')}, aiohttp {library_version('aiohttp')}, iotctl at {commit}; "
        "nginx 1.22.1 (Debian) on 127.0.0.1:18080",
        "",
        "| target | iotctl ÷ baseline | verdict |",
        "|---|---|---|",
        *targets,
        "",
        *lines,
        SECTION_END,
    ])
    print(text)
    if args.write:
        write_section(text, SECTION_START, SECTION_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())

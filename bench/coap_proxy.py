#!/usr/bin/env python3
"""Requests per second through `iotctl coap proxy` (HTTP to CoAP) against a direct
aiocoap client, side by side.

The device is libcoap's `coap-server-notls` on a free UDP port of 127.0.0.1 (written
in C: it answers in microseconds and is not the code under test), its /time resource.
Each round runs every contender in turn (the order rotating), medians over the rounds:

- direct: `bench/minimal/coap_load.py coap://127.0.0.1:PORT/time N [C]`, aiocoap's
  client as its documentation shows (one context, UDP), C requests in flight;
- through the proxy: `iotctl coap proxy --http 127.0.0.1:0 --quiet` (and once logging
  every request to a file, as it does by default), the same resource as
  `GET /hc/coap://127.0.0.1:PORT/time`, from `bench/minimal/http_load.py` (the
  standard library's http.client on kept-alive connections) for one request in flight,
  and from wrk (C, so the machine's 2 CPUs go to the proxy) for C in flight.

Every response must be 200 / 2.05 with libcoap's time as its body.

    bench/coap_proxy.py [--rounds 5] [-n 3000] [--concurrency 10] [--write]

Peers: libcoap3-bin (`scripts/services up coap` installs it); wrk (Debian package).
--write replaces the section of bench/README.md between its markers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import IOTCTL, MINIMAL, PY, ROOT, child_env, write_section  # noqa: E402  (bench/common.py)

HOST = "127.0.0.1"
SECTION_START = "<!-- coap_proxy: written by bench/coap_proxy.py --write -->"
SECTION_END = "<!-- /coap_proxy -->"
LIBCOAP_TIME = re.compile(r"[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d")


class BenchError(Exception):
    pass


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def coap_answers(port: int) -> bool:
    packet = bytes([0x40, 0x01]) + os.urandom(2) + bytes([0xB4]) + b"time"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(packet, (HOST, port))
            return s.recv(4096)[1:2] == b"\x45"
        except OSError:
            return False


def start_device(env) -> tuple[subprocess.Popen, int]:
    if shutil.which("coap-server-notls") is None:
        raise BenchError("coap-server-notls is missing: scripts/services up coap installs libcoap3-bin")
    port = free_udp_port()
    proc = subprocess.Popen(["coap-server-notls", "-A", HOST, "-p", str(port)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    end = time.monotonic() + 15
    while not coap_answers(port):
        if proc.poll() is not None or time.monotonic() > end:
            stop(proc)
            raise BenchError("coap-server-notls did not answer")
        time.sleep(0.05)
    return proc, port


def start_proxy(env, log: str | None) -> tuple[subprocess.Popen, int, str]:
    """The proxy on an OS-assigned port (read from its log)."""
    log_path = log or tempfile.mktemp(prefix="coap-proxy-bench-", suffix=".log")
    args = [*IOTCTL, "coap", "proxy", "--http", f"{HOST}:0", "--log", log_path, "--max-requests", "1024"]
    if log is None:
        # --quiet logs nothing, not even the port: take the port from a logging start-up, then
        # run quiet on that port (the OS gave it; nothing else took it meanwhile in practice)
        probe, port, _ = start_proxy(env, log_path)
        stop(probe)
        args = [*IOTCTL, "--quiet", "coap", "proxy", "--http", f"{HOST}:{port}", "--max-requests", "1024"]
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        wait_tcp(port, proc)
        os.unlink(log_path)
        return proc, port, ""
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    end = time.monotonic() + 20
    while True:
        text = Path(log_path).read_text() if os.path.exists(log_path) else ""
        found = re.search(r"HTTP to CoAP on http://127\.0\.0\.1:(\d+)", text)
        if found and "Ctrl-C stops" in text:
            return proc, int(found.group(1)), log_path
        if proc.poll() is not None or time.monotonic() > end:
            stop(proc)
            raise BenchError(f"iotctl coap proxy did not start: {text}")
        time.sleep(0.05)


def wait_tcp(port: int, proc) -> None:
    end = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > end:
                stop(proc)
                raise BenchError(f"nothing listens on {HOST}:{port}") from None
            time.sleep(0.05)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(8)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def json_load(cmd, env) -> float:
    """Run a minimal load script; its requests/s, after checking every answer."""
    r = subprocess.run(cmd, capture_output=True, env=env, timeout=300)
    try:
        out = json.loads(r.stdout.decode().strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise BenchError(f"{' '.join(map(str, cmd))}: {r.stderr.decode()[-500:]}") from None
    if r.returncode != 0 or out["ok"] != out["n"] or not LIBCOAP_TIME.search(out.get("first") or ""):
        raise BenchError(f"{' '.join(map(str, cmd))}: {out} {r.stderr.decode()[-500:]}")
    return out["n"] / out["seconds"]


def wrk_load(url: str, concurrency: int, seconds: float, env) -> float:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is missing: apt-get install wrk")
    r = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", url],
                       capture_output=True, env=env, timeout=seconds + 60)
    text = r.stdout.decode()
    if r.returncode != 0 or "Non-2xx" in text or "Socket errors" in text:
        raise BenchError(f"wrk: {text} {r.stderr.decode()}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not found:
        raise BenchError(f"wrk: {text}")
    return float(found.group(1))


def library_version(name: str) -> str:
    r = subprocess.run([PY, "-c", f"import importlib.metadata as m; print(m.version({name!r}))"],
                       capture_output=True, text=True)
    return r.stdout.strip() or "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-n", type=int, default=3000, help="requests per sequential run")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of a wrk run")
    parser.add_argument("--write", action="store_true", help="replace the section of bench/README.md")
    args = parser.parse_args()
    started = time.time()
    config = tempfile.mkdtemp(prefix="iotctl-bench-")
    env = child_env(config)
    device, port = start_device(env)
    uri = f"coap://{HOST}:{port}/time"
    results: dict[str, list[float]] = {}
    log_dir = tempfile.mkdtemp(prefix="coap-proxy-bench-")
    try:
        quiet, quiet_port, _ = start_proxy(env, None)
        logged, logged_port, log_path = start_proxy(env, os.path.join(log_dir, "proxy.log"))
        quiet_url = f"http://{HOST}:{quiet_port}/hc/{uri}"
        logged_url = f"http://{HOST}:{logged_port}/hc/{uri}"
        n, c = args.n, args.concurrency
        contenders = [
            ("seq direct", lambda: json_load([PY, str(MINIMAL / "coap_load.py"), uri, str(n)], env)),
            ("seq proxy", lambda: json_load([PY, str(MINIMAL / "http_load.py"), quiet_url, str(n)], env)),
            ("seq proxy logged", lambda: json_load([PY, str(MINIMAL / "http_load.py"), logged_url, str(n)], env)),
            ("con direct", lambda: json_load([PY, str(MINIMAL / "coap_load.py"), uri, str(n), str(c)], env)),
            ("con proxy", lambda: wrk_load(quiet_url, c, args.seconds, env)),
        ]
        for name, run in contenders:  # once untimed: .pyc files, caches, the proxy's contexts
            run()
        for r in range(args.rounds):
            order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
            for name, run in order:
                results.setdefault(name, []).append(run())
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in results.items()), file=sys.stderr)
        log_lines = sum(1 for _ in open(log_path))
        stop(quiet)
        stop(logged)
    finally:
        stop(device)
    med = {k: statistics.median(v) for k, v in results.items()}

    def row(case, direct, proxy, note=""):
        d, p = med[direct], med[proxy]
        return (f"| {case} | {d:,.0f}/s | {p:,.0f}/s | {p / d:.2f}× | "
                f"{(1 / p - 1 / d) * 1000:+.2f} ms |{note}")

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    libcoap = subprocess.run(["sh", "-c", "dpkg-query -W -f='${Version}' libcoap3-bin"], capture_output=True,
                             text=True).stdout.strip()
    text = "\n".join([
        SECTION_START,
        "## CoAP proxy (`bench/coap_proxy.py`)",
        "",
        f"- date: {dt.datetime.fromtimestamp(started, dt.timezone.utc):%Y-%m-%d %H:%M} UTC; command: "
        f"`bench/coap_proxy.py --rounds {args.rounds} -n {args.n} --concurrency {args.concurrency}`; took "
        f"{time.time() - started:.0f} s; load average at the end {os.getloadavg()[0]:.1f} (2 CPUs shared with "
        "other work: rates move by ±30 %)",
        f"- {platform.python_implementation()} {platform.python_version()}, aiocoap {library_version('aiocoap')}, "
        f"h11 {library_version('h11')}, iotctl at {commit}; the device: libcoap {libcoap} `coap-server-notls` "
        "on a free UDP port, GET /time",
        "",
        "| case | direct aiocoap client | through `coap proxy` (HTTP) | proxy ÷ direct | added per request |",
        "|---|---|---|---|---|",
        row("1 request in flight (`http.client`, one kept-alive connection)", "seq direct", "seq proxy"),
        row("1 request in flight, the proxy logging every request to a file", "seq direct", "seq proxy logged"),
        row(f"{args.concurrency} requests in flight (wrk, {args.concurrency} connections)", "con direct",
            "con proxy"),
        "",
        f"- Medians over {args.rounds} rounds, the contenders' order rotating. Direct: "
        "`bench/minimal/coap_load.py` (one aiocoap client context, UDP; N requests one after the other, or "
        f"spread over {args.concurrency} tasks), requests/s over the N requests. Through the proxy: `iotctl "
        "--quiet coap proxy --http 127.0.0.1:PORT --max-requests 1024` (and once with its default log line per "
        f"request, to a file: {log_lines:,} lines over all its runs), `GET /hc/coap://127.0.0.1:PORT/time`: "
        "`bench/minimal/http_load.py` (the standard library's http.client) for one in flight, "
        f"`wrk -t1 -c{args.concurrency} -d{args.seconds:g}s` for {args.concurrency}. Every answer was 200 (2.05) "
        "with libcoap's time as the body.",
        "- What a request through the proxy costs on top: parsing the HTTP request (h11), mapping it, the same "
        "aiocoap client request as the direct case (the proxy's one client context), mapping the answer back, "
        "writing the HTTP response; the HTTP client's own cost is in the proxy column too. "
        "\"added per request\" is 1/rate(proxy) − 1/rate(direct).",
        SECTION_END,
    ])
    print(text)
    if args.write:
        write_section(text, SECTION_START, SECTION_END)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench/coap_proxy.py: {exc}", file=sys.stderr)
        sys.exit(1)

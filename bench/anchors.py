#!/usr/bin/env python3
"""`iotctl bench` against the load tools people already use, on one broker in one run.

    bench/anchors.py                      # 3 rounds: anchors at QoS 1, then the ceiling
    bench/anchors.py --rounds 1 --seconds 5 --only anchors
    bench/anchors.py --write              # also rewrite the results in bench/README.md

anchors: every tool drives the same load through the private Mosquitto (127.0.0.1:11883,
no queue limit): PUBLISHERS connections each offering RATE messages/s of SIZE bytes for
SECONDS, one subscriber on the topic. The tools: `iotctl bench`, MQTTX CLI (`mqttx bench
pub` / `mqttx bench sub`), emqtt-bench (`emqtt_bench pub` / `sub` with `--payload-hdrs
ts`). Equal offered load: a publish every 1000/RATE ms per connection (MQTTX `-im`,
emqtt-bench `-I`), iotctl `--rate RATE`; each stops after PUBLISHERS x RATE x SECONDS.
Reported: what arrived, the rate the subscriber sustained (the median of its per-second
counts, first and last second left out: each tool prints such counts), the latency each
tool reports (iotctl: end-to-end p50/p99/max; emqtt-bench: its average publish latency,
whole ms; MQTTX CLI: none), and the CPU seconds its processes used.

ceiling: iotctl's own messages/s per core (messages / CPU seconds of all its processes,
user + system), one publisher and one subscriber as fast as acknowledgements allow,
against the minimal library scripts doing the same work (bench/minimal/pub_lines.py +
sub.py for MQTT QoS 0 and 1, amqp_publish.py + amqp_consume.py for AMQP with publisher
confirms): MQTT on 127.0.0.1:11883, AMQP on RabbitMQ 127.0.0.1:5672 (guest/guest).

Tools are found on PATH or under bench/.cache/ (never committed): `--mqttx CMD` and
`--emqtt-bench CMD` name them; a missing tool is reported, not fatal. bench/README.md
("Anchors") says how they were installed here and why RabbitMQ PerfTest is not.
Only the standard library; contenders in Python use the repo's .venv interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH, IOTCTL, MINIMAL, PY, child_env, write_section  # noqa: E402  (bench/common.py)

HOST, PORT = "127.0.0.1", 11883
AMQP = "amqp://guest:guest@127.0.0.1:5672/%2f"
CACHE = BENCH / ".cache"
ENV: dict = {}


class Run:
    """One contender's processes, timed and with their CPU time (wait4's rusage)."""

    def __init__(self):
        self.cpu = 0.0
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd, out=subprocess.DEVNULL, stdin=subprocess.DEVNULL) -> subprocess.Popen:
        p = subprocess.Popen(cmd, stdin=stdin, stdout=out, stderr=subprocess.STDOUT if out is not subprocess.DEVNULL
                             else subprocess.DEVNULL, env=ENV, start_new_session=True)
        self.procs.append(p)
        return p

    def wait(self, p: subprocess.Popen, timeout: float) -> int:
        end = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                self.cpu += usage.ru_utime + usage.ru_stime
                p.returncode = os.waitstatus_to_exitcode(status)
                return p.returncode
            if time.monotonic() > end:
                self.stop(p, signal.SIGKILL)
                return self.wait(p, 10)
            time.sleep(0.02)

    def stop(self, p: subprocess.Popen, sig=signal.SIGINT) -> None:
        if p.returncode is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass


def wait_for(path: Path, pattern: str, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if re.search(pattern, path.read_text(errors="replace")):
            return True
        time.sleep(0.05)
    return False


def steady(per_second: list[float]) -> float | None:
    """The median of the per-second counts, the first and last second (partial) left out."""
    nonzero = [r for r in per_second if r > 0]
    inner = nonzero[1:-1]
    if len(inner) >= 1:
        return statistics.median(inner)
    return statistics.median(nonzero) if nonzero else None


# --------------------------------------------------------------------------- the tools


def find_tool(given: str | None, names: list[str], cached: list[Path]) -> list[str] | None:
    if given:
        return shlex.split(given)
    for name in names:
        if shutil.which(name):
            return [shutil.which(name)]
    for path in cached:
        if path.exists():
            return ["node", str(path)] if path.suffix == ".js" else [str(path)]
    return None


def anchors_round(opts, tools: dict, tmp: Path, order: list[str]) -> dict:
    out = {}
    for name in order:
        topic = f"bench/anchors/{uuid.uuid4().hex[:8]}"
        if tools.get(name) is None and name != "iotctl":
            continue
        out[name] = {"iotctl": run_iotctl, "MQTTX CLI": run_mqttx, "emqtt-bench": run_emqtt_bench}[name](
            opts, tools.get(name), tmp, topic)
        time.sleep(1)  # let the broker settle between contenders
    return out


def _total(opts) -> int:
    return opts.publishers * opts.rate * opts.seconds


def run_iotctl(opts, _tool, tmp: Path, topic: str) -> dict:
    log = tmp / "iotctl.jsonl"
    r = Run()
    with open(log, "wb") as fh:
        p = r.start(IOTCTL + ["bench", f"mqtt://{HOST}:{PORT}/{topic}?qos={opts.qos}", "--publishers",
                              str(opts.publishers), "--rate", str(opts.rate), "--count", str(opts.rate * opts.seconds),
                              "--size", str(opts.size), "-o", "jsonl"], out=fh)
        code = r.wait(p, opts.seconds * 3 + 60)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    ticks = [t for t in lines if "summary" not in t]
    s = next((t for t in lines if t.get("summary")), None)
    if s is None:
        return {"error": f"exit {code}: {log.read_text()[-300:]}"}
    lat = s["latency_ms"]
    return {"sent": s["sent"], "received": s["received"], "rate": steady([t["received"] for t in ticks]),
            "pub_rate": steady([t["sent"] for t in ticks]),
            "latency": f"end to end p50 {lat['p50']:g} / p99 {lat['p99']:g} / max {lat['max']:g} ms",
            "cpu": r.cpu, "exit": code}


def _pub_and_sub(opts, tool, tmp: Path, name: str, sub_args, subscribed: str, pub_args, received: str):
    """A tool's subscriber (waited for until its output matches `subscribed`), then its
    publisher; the subscriber stopped once everything arrived or nothing more comes.
    Returns (subscriber's output, publisher's output, the Run, the publisher's exit)."""
    sub_log, pub_log = tmp / f"{name}-sub.log", tmp / f"{name}-pub.log"
    r = Run()
    with open(sub_log, "wb") as so, open(pub_log, "wb") as po:
        sub = r.start(tool + sub_args, out=so)
        if not wait_for(sub_log, subscribed, 30):
            r.stop(sub, signal.SIGKILL)
            r.wait(sub, 10)
            raise RuntimeError(f"{name} did not subscribe: " + sub_log.read_text()[-300:])
        pub = r.start(tool + pub_args, out=po)
        r.wait(pub, opts.seconds * 3 + 60)
        _drain(sub_log, received, _total(opts))
        r.stop(sub)
        r.wait(sub, 10)
    return sub_log.read_text(errors="replace"), pub_log.read_text(errors="replace"), r, pub.returncode


def run_mqttx(opts, tool, tmp: Path, topic: str) -> dict:
    common = ["-h", HOST, "-p", str(PORT), "-t", topic, "-q", str(opts.qos), "-v"]
    try:
        text, pub_text, r, code = _pub_and_sub(
            opts, tool, tmp, "mqttx", ["bench", "sub", "-c", "1"] + common, r"All connections subscribed",
            ["bench", "pub", "-c", str(opts.publishers), "-i", "1", "-im", str(1000 // opts.rate),
             "-L", str(_total(opts)), "-m", "x" * opts.size] + common, r"Received total: (\d+)")
    except RuntimeError as exc:
        return {"error": str(exc)}
    return _counts(text, r"Received total: (\d+), rate: (\d+)/s", pub_text,
                   r"Published total: (\d+), message rate: (\d+)/s") | {
        "latency": "none reported", "cpu": r.cpu, "exit": code}


def run_emqtt_bench(opts, tool, tmp: Path, topic: str) -> dict:
    common = ["-h", HOST, "-p", str(PORT), "-t", topic, "-q", str(opts.qos), "--payload-hdrs", "ts"]
    try:
        # -F: up to 100 QoS 1 messages unacknowledged per connection (iotctl's MQTT window)
        text, pub_text, r, code = _pub_and_sub(
            opts, tool, tmp, "emqtt-bench", ["sub", "-c", "1"] + common, r"sub total=1\b",
            ["pub", "-c", str(opts.publishers), "-i", "1", "-I", str(1000 // opts.rate), "-L", str(_total(opts)),
             "-s", str(opts.size), "-F", "100"] + common, r"recv total=(\d+)")
    except RuntimeError as exc:
        return {"error": str(exc)}
    lat = [int(x) for x in re.findall(r"publish_latency avg=(\d+)ms", text)]
    return _counts(text, r"recv total=(\d+) rate=([\d.]+)/sec", pub_text, r"pub total=(\d+) rate=([\d.]+)/sec") | {
        "latency": (f"average {statistics.median(lat):g} ms (whole ms; the median of its per-second averages)"
                    if lat else "none printed"), "cpu": r.cpu, "exit": code}


def _counts(sub_text: str, sub_line: str, pub_text: str, pub_line: str) -> dict:
    """Totals and steady rates from the per-second lines a tool prints: `sub_line` and
    `pub_line` match (running total, rate of that second)."""
    subs = [(int(n), float(r)) for n, r in re.findall(sub_line, sub_text)]
    pubs = [(int(n), float(r)) for n, r in re.findall(pub_line, pub_text)]
    return {"sent": pubs[-1][0] if pubs else None, "received": subs[-1][0] if subs else 0,
            "rate": steady([r for _, r in subs]), "pub_rate": steady([r for _, r in pubs])}


def _drain(log: Path, pattern: str, want: int, quiet: float = 3.0) -> None:
    """Wait until the subscriber's printed total reaches `want`, or stops moving."""
    last, since = -1, time.monotonic()
    while time.monotonic() - since < quiet:
        found = re.findall(pattern, log.read_text(errors="replace"))
        n = int(found[-1]) if found else 0
        if n >= want:
            time.sleep(1.1)  # one more per-second line
            return
        if n != last:
            last, since = n, time.monotonic()
        time.sleep(0.1)


# --------------------------------------------------------------------------- the ceiling


def ceiling_round(opts, tmp: Path, order: list[str]) -> dict:
    out = {}
    for case in order:
        out[case] = CEILING[case](opts, tmp)
        time.sleep(1)
    return out


def _iotctl_ceiling(url: str, opts) -> dict:
    r = Run()
    log = Path(tempfile.mktemp(dir=ENV["TMPDIR"]))
    with open(log, "wb") as fh:
        p = r.start(IOTCTL + ["bench", url, "--count", str(opts.messages), "--size", str(opts.size), "--workers", "1",
                              "-o", "json"], out=fh)
        code = r.wait(p, 600)
    try:
        s = json.loads(log.read_text())
    except ValueError:
        return {"error": f"exit {code}: {log.read_text()[-300:]}"}
    ok = s["received"] == s["sent"] == opts.messages and code == 0
    return {"per_core": s["received"] / r.cpu, "wall": s["rates"]["received"], "ok": ok,
            "note": "" if ok else f"exit {code}, {s['received']} of {opts.messages}"}


def _minimal_ceiling(sub_cmd, pub_cmd, opts, tmp: Path) -> dict:
    lines = tmp / f"lines-{opts.messages}-{opts.size}"
    if not lines.exists():
        lines.write_bytes(b"".join(b"%08d" % i + b"x" * (opts.size - 8) + b"\n" for i in range(opts.messages)))
    r = Run()
    out = tmp / "minimal.out"
    with open(out, "wb") as fh:
        sub = r.start(sub_cmd, out=fh)
        time.sleep(1.5)  # connected and subscribed (it idles meanwhile: no CPU to speak of)
        t0 = time.monotonic()
        with open(lines, "rb") as src:
            pub = r.start(pub_cmd, stdin=src)
            r.wait(pub, 600)
        r.wait(sub, 120)
        wall = time.monotonic() - t0
    got = out.read_bytes().count(b"\n")
    ok = got == opts.messages and pub.returncode == 0 and sub.returncode == 0
    return {"per_core": got / r.cpu, "wall": got / wall, "ok": ok,
            "note": "" if ok else f"exit {pub.returncode}/{sub.returncode}, {got} of {opts.messages}"}


def _mqtt_minimal(qos: int):
    def run(opts, tmp):
        topic = f"bench/ceiling/{uuid.uuid4().hex[:8]}"
        return _minimal_ceiling([PY, str(MINIMAL / "sub.py"), HOST, str(PORT), topic, str(opts.messages), "raw",
                                 str(qos)],
                                [PY, str(MINIMAL / "pub_lines.py"), HOST, str(PORT), topic, str(qos)], opts, tmp)
    return run


def _mqtt_iotctl(qos: int):
    def run(opts, tmp):
        return _iotctl_ceiling(f"mqtt://{HOST}:{PORT}/bench/ceiling/{uuid.uuid4().hex[:8]}?qos={qos}", opts)
    return run


def _amqp(run_one):
    def run(opts, tmp):
        queue = f"bench-ceiling-{uuid.uuid4().hex[:8]}"
        subprocess.run(IOTCTL + ["amqp", "declare", "queue", queue], env=ENV, capture_output=True, check=True)
        try:
            return run_one(queue, opts, tmp)
        finally:
            subprocess.run(IOTCTL + ["amqp", "delete", "queue", queue], env=ENV, capture_output=True)
    return run


CEILING = {
    "MQTT QoS 0 iotctl": _mqtt_iotctl(0),
    "MQTT QoS 0 minimal paho": _mqtt_minimal(0),
    "MQTT QoS 1 iotctl": _mqtt_iotctl(1),
    "MQTT QoS 1 minimal paho": _mqtt_minimal(1),
    "AMQP confirms iotctl": _amqp(lambda q, opts, tmp: _iotctl_ceiling(f"{AMQP}?queue={q}", opts)),
    "AMQP confirms minimal pika": _amqp(lambda q, opts, tmp: _minimal_ceiling(
        [PY, str(MINIMAL / "amqp_consume.py"), AMQP, q, str(opts.messages)],
        [PY, str(MINIMAL / "amqp_publish.py"), AMQP, q], opts, tmp)),
}


# --------------------------------------------------------------------------- report


def _fmt(v, digits=0) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def report(opts, tools: dict, anchors: list[dict], ceilings: list[dict], started: str, load: tuple) -> str:
    out = [f"- date: {started} UTC; `bench/anchors.py {' '.join(sys.argv[1:])}`; {opts.rounds} round(s), "
           "contenders in rotating order, medians over the rounds",
           f"- load average (1/5/15 min) at the start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; at the end: "
           f"{load[3]:.2f} {load[4]:.2f} {load[5]:.2f} (nproc {os.cpu_count()}: the broker, the tools and other "
           "work on this machine share the CPUs)"]
    for name, tool in tools.items():
        out.append(f"- {name}: {tool['version']}")
    if anchors:
        total = _total(opts)
        out += ["", f"### Equal offered load: {opts.publishers} publishers x {opts.rate} msg/s, {opts.size} B, "
                    f"QoS {opts.qos}, {total:,} messages, one subscriber (Mosquitto {HOST}:{PORT})", "",
                "| tool | offered msg/s | published msg/s | arrived | sustained msg/s (subscriber) | "
                "latency as the tool reports it | CPU s |", "|---|---|---|---|---|---|---|"]
        for name in ("iotctl", "MQTTX CLI", "emqtt-bench"):
            rows = [a[name] for a in anchors if name in a]
            if not rows:
                why = tools.get(name, {}).get("why", "not run")
                out.append(f"| {name} | — | — | — | — | {why} | — |")
                continue
            good = [x for x in rows if "error" not in x]
            if not good:
                out.append(f"| {name} | — | — | — | — | failed: {rows[0]['error'][:120]} | — |")
                continue
            rate = statistics.median([x["rate"] for x in good if x["rate"] is not None] or [0])
            pub_rate = statistics.median([x["pub_rate"] for x in good if x["pub_rate"] is not None] or [0])
            got = min(x["received"] for x in good)
            lat = good[len(good) // 2]["latency"]
            cpu = statistics.median(x["cpu"] for x in good)
            out.append(f"| {name} | {opts.publishers * opts.rate:,} | {_fmt(pub_rate)} | {got:,} of {total:,} "
                       f"(fewest in a round) | "
                       f"{_fmt(rate)} | {lat} | {cpu:.1f} |")
    if ceilings:
        out += ["", f"### iotctl's ceiling: messages/s per core, 1 publisher + 1 subscriber, {opts.messages:,} "
                    f"messages of {opts.size} B, as fast as acknowledgements allow", "",
                "| case | iotctl msg/s per core | minimal library msg/s per core | iotctl ÷ minimal | "
                "iotctl msg/s (wall) | minimal msg/s (wall) |", "|---|---|---|---|---|---|"]
        for case, minimal in (("MQTT QoS 0", "minimal paho"), ("MQTT QoS 1", "minimal paho"),
                              ("AMQP confirms", "minimal pika")):
            a = [c[f"{case} iotctl"] for c in ceilings if f"{case} iotctl" in c]
            b = [c[f"{case} {minimal}"] for c in ceilings if f"{case} {minimal}" in c]
            if not a or not b:
                continue

            def med(rows, key):
                vals = [x[key] for x in rows if "error" not in x]
                return statistics.median(vals) if vals else None

            notes = "; ".join(sorted({x.get("note") or x.get("error", "") for x in a + b} - {""}))
            pa, pb = med(a, "per_core"), med(b, "per_core")
            ratio = f"{pa / pb:.2f}×" if pa and pb else "—"
            out.append(f"| {case} | {_fmt(pa)} | {_fmt(pb)} | {ratio} | {_fmt(med(a, 'wall'))} | "
                       f"{_fmt(med(b, 'wall'))} |" + (f" ⚠ {notes}" if notes else ""))
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10, help="publishing time of the anchors section")
    ap.add_argument("--publishers", type=int, default=4)
    ap.add_argument("--rate", type=int, default=500, help="messages/s per publisher (1000/RATE ms must be whole)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--qos", type=int, default=1, choices=(0, 1))
    ap.add_argument("--messages", type=int, default=50000, help="messages of each ceiling run")
    ap.add_argument("--only", default="anchors,ceiling")
    ap.add_argument("--mqttx", help="the MQTTX CLI command [default: mqttx on PATH, else bench/.cache]")
    ap.add_argument("--emqtt-bench", dest="emqtt_bench", help="the emqtt_bench command [default: PATH, else "
                                                              "bench/.cache/emqtt_bench]")
    ap.add_argument("--write", action="store_true", help="rewrite the results in bench/README.md")
    opts = ap.parse_args()
    if 1000 % opts.rate:
        ap.error("--rate: 1000/RATE must be a whole number of milliseconds (the anchors' interval)")
    tmp = Path(tempfile.mkdtemp(prefix="iotctl-anchors-"))
    ENV.update(child_env(str(tmp / "config")))
    ENV["TMPDIR"] = str(tmp)
    sections = set(opts.only.split(","))
    tools: dict = {}
    found = {
        "MQTTX CLI": find_tool(opts.mqttx, ["mqttx"], [CACHE / "mqttx" / "node_modules" / ".bin" / "mqttx",
                                                        CACHE / "mqttx-cli" / "bin" / "index.js"]),
        "emqtt-bench": find_tool(opts.emqtt_bench, ["emqtt_bench"], [CACHE / "emqtt_bench"]),
    }
    for name, cmd in found.items():
        if cmd is None:
            tools[name] = None
            print(f"anchors: {name} not found (see bench/README.md, Anchors)", file=sys.stderr)
            continue
        v = subprocess.run(cmd + (["--version"] if name == "MQTTX CLI" else ["--help"]), capture_output=True,
                           env=ENV, timeout=60)
        text = (v.stdout + v.stderr).decode(errors="replace").strip().splitlines()
        tools[name] = {"cmd": cmd, "version": f"`{' '.join(cmd)}`" + (f" ({text[0]})" if name == "MQTTX CLI" and text
                                                                      else "")}
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    la = os.getloadavg()
    anchors, ceilings = [], []
    names = ["iotctl", "MQTTX CLI", "emqtt-bench"]
    cases = list(CEILING)
    for rnd in range(opts.rounds):
        if "anchors" in sections:
            order = names[rnd % 3:] + names[:rnd % 3]
            res = anchors_round(opts, {k: (v or {}).get("cmd") for k, v in tools.items()}, tmp, order)
            anchors.append(res)
            print(f"round {rnd + 1} anchors: " + json.dumps(res), file=sys.stderr)
        if "ceiling" in sections:
            order = [c for i in range(0, len(cases), 2)
                     for c in (cases[i:i + 2] if rnd % 2 == 0 else cases[i:i + 2][::-1])]
            res = ceiling_round(opts, tmp, order)
            ceilings.append(res)
            print(f"round {rnd + 1} ceiling: " + json.dumps(res), file=sys.stderr)
    lb = os.getloadavg()
    tool_info = {k: (v if v is not None else {"version": "not found", "why": "not installed"}) for k, v in tools.items()}
    text = report(opts, tool_info, anchors, ceilings, started, la + lb)
    print(text)
    if opts.write:  # only the results: the text around them (how, why) stays as written
        write_section("<!-- anchors:begin -->\n" + text + "<!-- anchors:end -->", "<!-- anchors:begin -->",
                      "<!-- anchors:end -->")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the `coap proxy` tests share: a running proxy (started here on OS-assigned
ports, read from its log), a running `iotctl coap serve` as the device, curl as the
HTTP client, and a scripted CoAP device of the tests' own on a raw UDP socket for the
answers no real device gives on demand (odd response codes, silence, a flood of
notifications). Never a mock of aiocoap or h11: every byte crosses a real socket."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.coap_wire import ACK, CON, NON, RST, code, decode, encode, uint_option as uint  # noqa: F401
from tests.helpers import clean_env, coap_answers, free_udp_tcp_port, stop, wait_until  # noqa: F401 (re-exported)

LIBCOAP_CLIENT = "coap-client-notls"


_ping = coap_answers


class Logged:
    """A process whose log file the test reads."""

    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, timeout: float = 5.0, count: int = 1) -> str:
        end = time.monotonic() + timeout
        while True:
            text = self.log()
            if len(re.findall(pattern, text)) >= count:
                return text
            if time.monotonic() > end:
                raise AssertionError(f"{pattern!r} (x{count}) not in the log:\n{text[-3000:]}")
            time.sleep(0.05)


class Device(Logged):
    """A running `iotctl coap serve`."""

    def __init__(self, proc, port: int, log_path: Path):
        self.proc, self.port, self.log_path = proc, port, log_path
        self.uri = f"coap://127.0.0.1:{port}"


def start_device(tmp: Path, *extra: str, port: int | None = None) -> Device:
    port = port or free_udp_tcp_port()
    log = tmp / f"device-{port}-{time.monotonic_ns()}.log"
    proc = subprocess.Popen([sys.executable, "-m", "iotctl", "coap", "serve", "-p", str(port), "--interval", "0.2",
                             "--log", str(log), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env())
    end = time.monotonic() + 15
    while not _ping(port):
        if proc.poll() is not None or time.monotonic() > end:
            stop(proc)
            pytest.fail(f"iotctl coap serve did not start:\n{log.read_text() if log.exists() else ''}")
        time.sleep(0.05)
    return Device(proc, port, log)


class Proxy(Logged):
    """A running `iotctl coap proxy` on OS-assigned ports."""

    def __init__(self, proc, log_path: Path, err_path: Path, http_port: int | None, coap_port: int | None):
        self.proc, self.log_path, self.err_path = proc, log_path, err_path
        self.http_port, self.coap_port = http_port, coap_port
        self.http = f"http://127.0.0.1:{http_port}" if http_port else None
        self.coap = f"coap://127.0.0.1:{coap_port}" if coap_port else None

    def hc(self, uri: str) -> str:
        """The Hosting HTTP URI of a CoAP URI (RFC 8075's default mapping)."""
        return f"{self.http}/hc/{uri}"

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")


_proxies = 0


def start_proxy(tmp: Path, *extra: str, http: bool = True, coap: bool = True) -> Proxy:
    global _proxies
    _proxies += 1
    log = tmp / f"proxy-{_proxies}.log"
    err = tmp / f"proxy-{_proxies}.err"
    args = [sys.executable, "-m", "iotctl", "coap", "proxy", "--log", str(log), *extra]
    if http:
        args += ["--http", "127.0.0.1:0"]
    if coap:
        args += ["--coap", "127.0.0.1:0"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(err, "wb"), env=clean_env())
    end = time.monotonic() + 20
    while True:
        text = log.read_text() if log.exists() else ""
        if "Ctrl-C stops" in text:
            break
        if proc.poll() is not None or time.monotonic() > end:
            stop(proc)
            pytest.fail(f"iotctl coap proxy did not start:\n{text}\n{err.read_text()}")
        time.sleep(0.05)
    http_port = coap_port = None
    found = re.search(r"HTTP to CoAP on http://127\.0\.0\.1:(\d+)", text)
    if found:
        http_port = int(found.group(1))
    found = re.search(r"CoAP to HTTP on coap://127\.0\.0\.1:(\d+)", text)
    if found:
        coap_port = int(found.group(1))
    return Proxy(proc, log, err, http_port, coap_port)


# --------------------------------------------------------------------------- curl


@dataclass
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    exit_code: int

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def curl(*args: str, timeout: float = 30) -> Reply:
    """curl with the response head and body apart (-D, -o); the last head counts (a
    100 Continue comes first)."""
    with tempfile.NamedTemporaryFile(delete=False) as body_file:
        path = body_file.name
    try:
        r = subprocess.run(["curl", "-sS", "--max-time", str(timeout), "-D", "-", "-o", path, *args],
                           capture_output=True, timeout=timeout + 10)
        with open(path, "rb") as fh:
            body = fh.read()
    finally:
        os.unlink(path)
    heads = [h for h in r.stdout.decode("latin-1").split("\r\n\r\n") if h.startswith("HTTP/")]
    if not heads:
        return Reply(0, "", [], body, r.returncode)
    lines = heads[-1].split("\r\n")
    _, status, *reason = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return Reply(int(status), reason[0] if reason else "", headers, body, r.returncode)


def parse_events(data: bytes, errors: str = "replace") -> list[dict]:
    """Server-sent events as the HTML standard's parser reads them (comments skipped);
    errors="strict" fails on a stream that is not UTF-8."""
    events = []
    for block in data.decode("utf-8", errors).replace("\r\n", "\n").split("\n\n"):
        event: dict = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                event["data"] = event["data"] + "\n" + value if "data" in event else value
            else:
                event[name] = value
        if event:
            events.append(event)
    return events


def coap_client(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    import shutil

    if shutil.which(LIBCOAP_CLIENT) is None:
        pytest.fail(f"{LIBCOAP_CLIENT} is missing; install libcoap3-bin (scripts/services up coap does)",
                    pytrace=False)
    return subprocess.run([LIBCOAP_CLIENT, *args], capture_output=True, timeout=timeout)


# --------------------------------------------------------------------------- a scripted device

@dataclass
class Seen:
    mtype: int
    code: int
    options: list
    payload: bytes
    token: bytes

    def option(self, number: int) -> list[bytes]:
        return [v for n, v in self.options if n == number]


class ScriptedDevice:
    """A CoAP device of the tests' own, on a raw UDP socket: each confirmable request
    is answered with `answer` (code text, options, payload), or not at all when it is
    None (a device that never answers). With `observable`, a GET with Observe: 0
    registers an observation that `notify()` feeds. Every message it got is in
    `seen` (requests, RSTs)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.uri = f"coap://127.0.0.1:{self.port}"
        self.answer: tuple[str, list, bytes] | None = None
        self.observable = False
        self.observers: list[tuple] = []   # (address, token)
        self.seen: list[Seen] = []
        self.mid = 0x1000
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while self.running:
            try:
                data, addr = self.sock.recvfrom(70000)
            except (socket.timeout, OSError):
                continue
            if len(data) < 4:
                continue
            msg = decode(data)
            mtype, c, mid, token, payload = msg["type"], msg["code"], msg["mid"], msg["token"], msg["payload"]
            options = [(number, value) for number, values in msg["options"].items() for value in values]
            with self.lock:
                self.seen.append(Seen(mtype, c, options, payload, token))
            if c == 0 or not 1 <= c <= 31:
                continue
            answer = self.answer
            if answer is None:
                continue
            text, opts, body = answer
            opts = list(opts)
            observe = [v for n, v in options if n == 6]
            if self.observable and observe == [b""] and c == 1:
                with self.lock:
                    self.observers.append((addr, token))
                opts.append((6, uint(1)))
            if observe and observe[0] == b"\x01":
                with self.lock:
                    self.observers = [(a, t) for a, t in self.observers if t != token]
            reply = encode(ACK if mtype == CON else NON, code(text), mid if mtype == CON else self._next_mid(),
                           token, opts, body)
            try:
                self.sock.sendto(reply, addr)
            except OSError:
                pass

    def _next_mid(self) -> int:
        self.mid = (self.mid + 1) & 0xFFFF
        return self.mid

    def notify(self, payload: bytes, seq: int, content_format: int = 0) -> int:
        """One NON notification to every observer; how many were sent."""
        with self.lock:
            observers = list(self.observers)
        for addr, token in observers:
            message = encode(NON, code("2.05"), self._next_mid(), token,
                             [(6, uint(seq)), (12, uint(content_format))], payload)
            try:
                self.sock.sendto(message, addr)
            except OSError:
                pass
        return len(observers)

    def requests(self, method: int | None = None) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if 1 <= s.code <= 31 and (method is None or s.code == method)]

    def close(self) -> None:
        self.running = False
        self.thread.join(2)
        self.sock.close()


def wait_for(condition, timeout: float = 10.0, what: str = "condition"):
    return wait_until(condition, timeout, what)

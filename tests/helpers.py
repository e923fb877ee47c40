"""Helpers every test module shares: one scrubbed environment for subprocesses, and
readiness waits (poll until a condition holds; never a fixed sleep)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for an iotctl subprocess: no IOTCTL_* settings from outside (the
    test's config dir and peers dir stay), no colour, 80 columns, plus `extra`."""
    keep = ("IOTCTL_CONFIG_DIR", "IOTCTL_PEERS_DIR")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTCTL_") or k in keep}
    env.pop("FORCE_COLOR", None)
    env.update({"NO_COLOR": "1", "COLUMNS": "80"})
    env.update(extra)
    return env


def wait_until(condition: Callable[[], T], timeout: float = 10.0, what: str = "condition",
               interval: float = 0.02) -> T:
    """Call `condition` until it returns something true (returned), or fail after `timeout`."""
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        time.sleep(interval)


def tcp_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts TCP connections on host:port."""
    wait_until(lambda: tcp_answers(host, port), timeout, f"a listener on {host}:{port}")


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port nothing on 127.0.0.1 uses right now (UDP by default)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (for servers that listen on both,
    such as `coap serve --tcp` and `coap proxy`)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def coap_answers(port: int) -> bool:
    """Whether a CoAP server on 127.0.0.1:port answers a CoAP ping (an empty CON)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.sendto(bytes([0x40, 0x00, 0x12, 0x34]), ("127.0.0.1", port))
            return len(sock.recvfrom(64)[0]) >= 4
        except OSError:
            return False


def stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 8.0) -> int:
    """Send `sig` to a running process and return its exit status (-9 when it had to be
    killed after `timeout`)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -9
    return proc.returncode


def peak_rss_kib(pid: int | str = "self") -> int:
    """The peak RSS (KiB) of a process's own memory: VmHWM of /proc/PID/status.

    Not ru_maxrss: on Linux a child's ru_maxrss (RUSAGE_SELF in it, wait4's or
    RUSAGE_CHILDREN in the parent) starts from the forking parent's high-water mark,
    kept across exec; a child of a pytest process grown to 450 MiB reported 450 MiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmHWM for process {pid}")


# a program that runs iotctl and reports its own peak RSS on stderr, whatever the exit code
PEAK_RSS_PROGRAM = ("import sys\n"
                    "from iotctl.cli import run\n"
                    "code = run(sys.argv[1:])\n"
                    "hwm = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')]\n"
                    "sys.stderr.write('peak-rss-kib %s\\n' % hwm[0])\n"
                    "sys.exit(code)\n")


def background_device(log) -> tuple[str, int]:
    """`iotctl coap serve --background` on a free port, logging to LOG: (its URI, its pid)."""
    import subprocess
    import sys

    port = free_port()
    proc = subprocess.run([sys.executable, "-m", "iotctl", "coap", "serve", "--background", "-p", str(port),
                           "--log", str(log)], capture_output=True, text=True, env=clean_env(), timeout=30)
    assert proc.returncode == 0, proc.stderr
    return f"coap://127.0.0.1:{port}", int(proc.stdout)


def express_probe(*argv: str) -> tuple[int | None, bytes, set[str]]:
    """Run `iotctl ARGV` on the express lane alone (iotctl.express.attempt) in a fresh
    interpreter: its exit status (None: the lane left it to the normal path), its stdout,
    and the top-level modules it imported (the lane must not load click or the protocol's
    library)."""
    import json
    import subprocess
    import sys

    probe = ("import sys, json\nfrom iotctl.express import attempt\n"
             "code = attempt(sys.argv[1:])\n"
             "sys.stderr.write('\\n' + json.dumps({'code': code, 'mods': sorted({m.split('.')[0] for m in sys.modules})}))")
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, env=clean_env(), timeout=60)
    result = json.loads(done.stderr.decode().strip().splitlines()[-1])
    return result["code"], done.stdout, set(result["mods"])


def interrupted_when(argv: list[str], sock, env: dict) -> tuple[int, bytes, bytes]:
    """Run `python -m iotctl ARGV`, Ctrl-C it (SIGINT) as soon as its first datagram
    reaches the UDP socket `sock` (it is then waiting for an answer), and return
    (exit status, stdout, stderr)."""
    import signal
    import subprocess
    import sys

    sock.setblocking(False)
    while True:  # what an earlier run left
        try:
            sock.recvfrom(65536)
        except BlockingIOError:
            break
    proc = subprocess.Popen([sys.executable, "-m", "iotctl", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        sock.settimeout(30)
        sock.recvfrom(65536)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


@contextlib.contextmanager
def mqttsn_gateway(broker: str, *args: str) -> Iterator[int]:
    """`iotctl mqttsn gateway` on a free UDP port of 127.0.0.1 forwarding to `broker`
    (plus `args`); yields its port, stops it after."""
    import re
    import sys
    import threading

    proc = subprocess.Popen([sys.executable, "-m", "iotctl", "mqttsn", "gateway", "-p", "0", *args,
                             "--broker", broker],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=clean_env(), text=True)
    try:
        line = proc.stderr.readline()
        m = re.search(r"gateway listening on udp 127\.0\.0\.1:(\d+)", line)
        assert m, line + (proc.stderr.read() if proc.poll() is not None else "")
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # never let its log block it
        yield int(m.group(1))
    finally:
        stop(proc, timeout=10)


class Running:
    """A subprocess (stdout and stderr piped) for the length of a `with`: killed on the
    way out if it is still running."""

    def __init__(self, argv: list, env: dict | None = None):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or clean_env())

    def __enter__(self) -> subprocess.Popen:
        return self.proc

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def exits_when_its_reader_goes(proc: subprocess.Popen, first: bytes, timeout: float = 15) -> None:
    """A receiver that printed nothing yet gets one message from the caller, prints
    `first`; then its reader of stdout goes away (`| head -1`) and nothing more comes:
    it must see that while idle and exit 0 with nothing on stderr (issue 21 item 9)."""
    assert proc.stdout.readline() == first
    proc.stdout.close()
    code = proc.wait(timeout)
    err = proc.stderr.read().decode()
    assert code == 0, err
    assert err == "", err

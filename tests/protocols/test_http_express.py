"""The express lane of `http get` (iotctl/protocols/http/express.py) against the normal
path: a corpus of command lines runs both ways (IOTCTL_EXPRESS=0 forces the normal
path) against nginx and fake servers; stdout, stderr and the exit status must be the
same. And the lane really is taken (it imports neither click nor asyncio nor h11)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.faults import ScriptedPeer
from tests.helpers import clean_env, express_probe, free_port

B = "http://127.0.0.1:18080"


def both(*args: str):
    runs = []
    for env in ({}, {"IOTCTL_EXPRESS": "0"}):
        r = subprocess.run([sys.executable, "-m", "iotctl", "http", "get", *args], capture_output=True,
                           env=clean_env(**env), timeout=60)
        runs.append((r.returncode, r.stdout, r.stderr))
    return runs


@pytest.mark.parametrize("args", [
    (f"{B}/hello",),
    (f"{B}/json", "-o", "raw"),
    (":18080/hello",),
    (f"{B}/headers",),
    (f"{B}/headers", "-H", "X-Trace: abc"),
    (f"{B}/headers", "-H", "Accept: text/plain"),
    (f"{B}/headers", "-H", "User-Agent:"),
    (f"{B}/headers?a=1&b=%20x",),
    (f"{B}/status/204",),
    (f"{B}/status/404",),
    (f"{B}/status/500",),
    (f"{B}/status/418",),
    (f"{B}/status/401",),
    (f"{B}/basic",),
    (f"{B}/redirect/1",),
    (f"{B}/redirect/1", "--quiet"),
    (f"{B}/files/events.ndjson",),
    (f"{B}/sse",),
    (f"{B}/files/10m.bin",),
    (f"{B}/slow", "-W", "1"),
    (f"{B}/hello", "--timeout=5"),
])
def test_same_both_ways_against_nginx(peer, args):
    peer("nginx")
    express, normal = both(*args)
    assert express == normal


def test_same_both_ways_when_nothing_listens():
    port = free_port(socket.SOCK_STREAM)
    express, normal = both(f"http://127.0.0.1:{port}/")
    assert express == normal and express[0] == 3


class Fake(ScriptedPeer):
    """A TCP server answering every connection with `answer` bytes after the request head
    (None: nothing, and the connection stays open)."""

    def __init__(self, answer: bytes | None, close: bool = True):
        self.answer, self.close_after = answer, close
        self.requests = 0
        super().__init__()

    def handle(self, conn):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        self.requests += 1
        if self.answer is not None:
            conn.sendall(self.answer)
            if self.close_after:
                conn.close()

    def stop(self):
        self.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\nuntil the end",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 503\r\nContent-Length: 4\r\n\r\nbusy",
    b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"garbage, not http\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"",
])
def test_same_both_ways_against_odd_servers(answer):
    fake = Fake(answer)
    try:
        express, normal = both(f"http://127.0.0.1:{fake.port}/x")
    finally:
        fake.stop()
    assert express == normal


def test_silent_server_times_out_the_same(tmp_path):
    fake = Fake(None)
    try:
        express, normal = both(f"http://127.0.0.1:{fake.port}/x", "-W", "1")
    finally:
        fake.stop()
    assert express == normal and express[0] == 5


def test_the_lane_is_taken_and_light(peer):
    peer("nginx")
    code, out, modules = express_probe("http", "get", f"{B}/hello")
    assert code == 0 and out == b"hello\n\n"
    assert not {"click", "asyncio", "h11"} & modules


def test_options_it_does_not_know_take_the_normal_path(peer):
    peer("nginx")
    from iotctl.protocols.http.express import get

    for argv in (["get", f"{B}/hello", "-L"], ["get", "https://localhost:18443/"], ["get", f"{B}/x", "-o", "json"],
                 ["get", "http://u:p@127.0.0.1/"], ["get", "/rel"], ["get", f"{B}/x", "-H", "a: 1", "-H", "b: 2"],
                 ["get", f"{B}/x", "-H", "bad header"], ["post", f"{B}/x"], ["get"]):
        assert get(argv) is None, argv


@pytest.mark.parametrize("express", [True, False], ids=["lane", "normal"])
def test_a_full_disk_is_one_line_and_exit_1_both_ways(peer, express):
    """stdout on /dev/full (ENOSPC): one line, exit 1 (the lane printed a traceback; the
    normal path added a send report, `sent 1, acknowledged 0 (--failed FILE ...)`)."""
    peer("nginx")
    env = clean_env() if express else clean_env(IOTCTL_EXPRESS="0")
    with open("/dev/full", "wb") as full:
        r = subprocess.run([sys.executable, "-m", "iotctl", "http", "get", f"{B}/hello"], stdout=full,
                           stderr=subprocess.PIPE, env=env, timeout=60)
    assert (r.returncode, r.stderr) == (1, b"iotctl: error: cannot write output: no space left on device\n")


@pytest.mark.parametrize("args, line", [
    ((f"{B}/status/404",), f"iotctl: error: GET {B}/status/404: 404 Not Found: status 404: no such thing"),
    ((f"{B}/slow", "-W", "1"), f"iotctl: error: GET {B}/slow: no complete response within 1 s"),
])
def test_one_get_failing_is_its_error_alone_both_ways(peer, args, line):
    """`http get URL` is one request with nothing of the user's to keep: no send report
    (`sent 1, acknowledged 0 (--failed FILE ...)`), as `coap get` says it."""
    peer("nginx")
    for code, out, err in both(*args):
        assert err.decode().splitlines() == [line], err


def test_one_get_interrupted_is_one_line_both_ways():
    import signal

    from tests.helpers import wait_until

    fake = Fake(None)
    try:
        for env in ({}, {"IOTCTL_EXPRESS": "0"}):
            before = fake.requests
            url = f"http://127.0.0.1:{fake.port}/x"
            proc = subprocess.Popen([sys.executable, "-m", "iotctl", "http", "get", url],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(**env))
            wait_until(lambda: fake.requests > before, 20, "the request")
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 130, (env, err)
            assert err.decode().strip().splitlines() == [f"iotctl: error: GET {url} interrupted"]
    finally:
        fake.stop()

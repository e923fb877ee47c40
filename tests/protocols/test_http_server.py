"""The HTTP server core (server.HttpServer, what `http listen` and a later `coap proxy`
run inside the shared asyncio loop), driven by curl and raw sockets: streamed answers
(server-sent events) end when the client goes away, a client that never reads holds
the producer back and is dropped, and the limits answer 400/413/503."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time

import pytest

from iotctl import aioloop
from iotctl.protocols.http.client import HttpServer, ServerResponse, text_response
from tests.helpers import wait_until


@pytest.fixture
def serve():
    loop = aioloop.shared()
    servers = []

    def start(handler, **kw):
        server = HttpServer(handler, "127.0.0.1", 0, **kw)
        loop.run(server.start(), 5)
        servers.append(server)
        return server

    yield start
    for server in servers:
        loop.run(server.close(), 5)


def test_stream_ends_when_the_client_goes_away(serve):
    state = {"produced": 0, "closed": False}

    async def events():
        try:
            while True:
                state["produced"] += 1
                yield b"data: %d\n\n" % state["produced"]
                await asyncio.sleep(0.05)
        finally:
            state["closed"] = True

    async def handler(request):
        return ServerResponse(200, [("Content-Type", "text/event-stream")], stream=events())

    server = serve(handler)
    done = subprocess.run(["curl", "-sN", "--max-time", "1", f"http://127.0.0.1:{server.port}/obs"],
                          capture_output=True, timeout=20)
    assert done.stdout.startswith(b"data: 1\n\ndata: 2\n\n")
    wait_until(lambda: state["closed"], 5, "the stream closed after curl left")
    produced = state["produced"]
    time.sleep(0.3)
    assert state["produced"] == produced  # nothing is produced for nobody


def test_idle_stream_notices_the_client_leaving(serve):
    """No event for a long time: the client's close is still seen (the watcher)."""
    state = {"closed": False}

    async def quiet():
        try:
            yield b": hello\n\n"
            await asyncio.sleep(3600)
        finally:
            state["closed"] = True

    async def handler(request):
        return ServerResponse(200, [("Content-Type", "text/event-stream")], stream=quiet())

    server = serve(handler)
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b": hello" in s.recv(4096) or b": hello" in s.recv(4096)
    wait_until(lambda: state["closed"], 5, "the idle stream closed after the client left")


def test_client_that_never_reads_holds_the_producer_back_and_is_dropped(serve):
    state = {"bytes": 0, "closed": False}
    chunk = b"x" * 65536

    async def flood():
        try:
            while True:
                state["bytes"] += len(chunk)
                yield chunk
        finally:
            state["closed"] = True

    async def handler(request):
        return ServerResponse(200, stream=flood())

    server = serve(handler, write_timeout=1.0)
    s = socket.create_connection(("127.0.0.1", server.port))
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: state["closed"], 10, "the silent client dropped after write_timeout")
        assert state["bytes"] < 64 << 20  # bounded by socket buffers, not by the producer
    finally:
        s.close()


def test_limits(serve):
    async def handler(request):
        await asyncio.sleep(0.5)
        return text_response(200, request.body.decode())

    server = serve(handler, max_body=100, max_requests=2)
    url = f"http://127.0.0.1:{server.port}/"
    big = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--data", "x" * 200, url],
                         capture_output=True, timeout=20)
    assert big.stdout == b"413"
    procs = [subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--data", "ok", url],
                              stdout=subprocess.PIPE) for _ in range(5)]
    codes = sorted(p.communicate(timeout=20)[0] for p in procs)
    assert codes.count(b"200") >= 2 and set(codes) <= {b"200", b"503"} and b"503" in codes
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 400")


def test_slow_header_client_is_dropped(serve):
    async def handler(request):
        return text_response(200)

    server = serve(handler, head_timeout=0.5)
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\n")
        s.settimeout(5)
        started = time.monotonic()
        assert s.recv(4096) == b""
        assert time.monotonic() - started < 3

"""CoAP faults with real datagrams on the wire: oversized datagrams, hostile servers
(endless Block2, silence mid-transfer, options that are not UTF-8), hostile clients
(endless Block1 uploads, malformed options, observation floods) against
`iotctl coap serve`. The hostile peers are raw UDP sockets written here; nothing is
mocked. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid

import pytest

from tests.coap_wire import ACK, CON, NON, RST, decode, encode, uint_value as uint  # noqa: F401
from tests.helpers import wait_until
from tests.protocols.test_coap import _one_error_line, _start_serve, _stop

# the largest UDP payload over IPv4; a CoAP message of that size is one datagram
MAX_UDP = 65507

CONTENT, CONTINUE, CREATED, CHANGED = 0x45, 0x5F, 0x41, 0x44
BAD_OPTION, INCOMPLETE, TOO_LARGE = 0x82, 0x88, 0x8D


# --------------------------------------------------------------------------- a small codec


def block(num: int, more: bool, szx: int = 6) -> bytes:
    value = num << 4 | int(more) << 3 | szx
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def block_of(msg: dict, number: int = 23) -> tuple[int, bool, int] | None:
    raw = msg["options"].get(number)
    if raw is None:
        return None
    value = uint(raw[0])
    return value >> 4, bool(value & 8), 16 << (value & 7)


# --------------------------------------------------------------------------- hostile servers


class RawServer:
    """A UDP socket on 127.0.0.1 (`port`, or a free one) answering each request with
    `answer(request)` (a list of datagrams, possibly empty: silence). Records every
    request it got."""

    def __init__(self, answer, port: int = 0):
        self.answer = answer
        self.requests: list[dict] = []
        self.received: list[dict] = []   # everything, acknowledgements and resets too
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self.sock.bind(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.uri = f"coap://127.0.0.1:{self.port}"
        self.closed = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                data, addr = self.sock.recvfrom(70000)
            except OSError:
                return
            if self.closed:
                return
            msg = decode(data)
            self.received.append(msg)
            if msg["code"] == 0 or msg["type"] in (ACK, RST):
                continue
            self.requests.append(msg)
            for out in self.answer(msg):
                self.sock.sendto(out, addr)

    def close(self):
        """Gone at once: the port refuses the next datagram (ICMP port unreachable)
        rather than the reading thread taking one more."""
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in recvfrom
        except OSError:
            pass
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def raw_server():
    servers = []

    def start(answer):
        servers.append(RawServer(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def piggybacked(req: dict, code: int = CONTENT, options=(), payload: bytes = b"") -> bytes:
    return encode(ACK, code, req["mid"], req["token"], options, payload)


# --------------------------------------------------------------------------- 1. datagrams > 4 KiB, client


@pytest.mark.parametrize("size", [4096, 4097, 10000, 32768, 65536])
def test_client_reads_one_datagram_response_of_any_size(iotctl, raw_server, size):
    """aiocoap read 4,096 bytes per datagram and dropped the rest silently."""
    def answer(req):
        room = MAX_UDP - 4 - len(req["token"]) - 1
        body = (os.urandom(min(size, room) // 2 + 1).hex().encode())[:min(size, room)]
        answer.body = body
        return [piggybacked(req, payload=body)]

    server = raw_server(answer)
    r = iotctl("coap", "get", f"{server.uri}/big", "-W", "5")
    assert r.exit_code == 0, r
    assert r.stdout_bytes == answer.body + b"\n"
    assert len(answer.body) == min(size, MAX_UDP - 4 - len(server.requests[0]["token"]) - 1)


# --------------------------------------------------------------------------- serve


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    dev = _start_serve(tmp_path_factory.mktemp("coap-faults"))
    yield dev
    _stop(dev.proc)


class Client:
    """A raw UDP client of `coap serve` (its own port: one CoAP endpoint)."""

    def __init__(self, port: int):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(5)
        self.addr = ("127.0.0.1", port)
        self.mid = int.from_bytes(os.urandom(2), "big")

    def next_mid(self) -> int:
        self.mid = (self.mid + 1) & 0xFFFF
        return self.mid

    def ask(self, code: int, path: str | bytes, options=(), payload=b"", mtype=CON, token=None) -> dict:
        token = os.urandom(4) if token is None else token
        segments = path.strip("/").encode().split(b"/") if isinstance(path, str) else [path]
        opts = [(11, s) for s in segments] + list(options)
        self.sock.sendto(encode(mtype, code, self.next_mid(), token, opts, payload), self.addr)
        while True:
            msg = decode(self.sock.recvfrom(70000)[0])
            if msg["token"] == token:
                return msg

    def lines(self, log: str) -> list[str]:
        """The lines of a serve log about this client."""
        me = f" 127.0.0.1:{self.sock.getsockname()[1]} "
        return [line for line in log.splitlines() if me in line]

    def close(self):
        self.sock.close()


@pytest.fixture
def client(serve):
    c = Client(serve.port)
    yield c
    c.close()


@pytest.mark.parametrize("size", [4096, 4097, 10000, 32768, 60000])
def test_serve_takes_one_datagram_request_of_any_size(serve, client, iotctl, size):
    """A one-datagram PUT of more than 4,096 bytes was stored truncated and answered 2.04."""
    body = os.urandom(size // 2 + 1).hex().encode()[:size]
    name = f"dgram-{uuid.uuid4().hex[:6]}"
    resp = client.ask(0x03, f"store/{name}", payload=body)
    assert resp["code"] == CREATED, resp
    r = iotctl("coap", "get", f"{serve.uri}/store/{name}")
    assert r.exit_code == 0 and r.stdout_bytes == body + b"\n"
    client.ask(0x04, f"store/{name}")


def test_serve_takes_the_largest_datagram(serve, client, iotctl):
    name = f"max-{uuid.uuid4().hex[:6]}"
    head = encode(CON, 0x03, 0, b"1234", [(11, b"store"), (11, name.encode())])
    body = os.urandom(MAX_UDP).hex().encode()[:MAX_UDP - len(head) - 1]  # the datagram is 65,507 bytes
    assert client.ask(0x03, f"store/{name}", payload=body)["code"] == CREATED
    r = iotctl("coap", "get", f"{serve.uri}/store/{name}")
    assert r.exit_code == 0 and r.stdout_bytes == body + b"\n"
    client.ask(0x04, f"store/{name}")


# --------------------------------------------------------------------------- 5. Block1 beyond the limit


def test_serve_refuses_an_endless_block1_upload_at_the_limit(serve, client):
    """Each block is taken (2.31 Continue) until the body would pass 64 KiB: that block
    is answered 4.13 with Size1, and the upload is forgotten (a block within the limit
    is then 4.08 Request Entity Incomplete)."""
    path = f"store/endless-{uuid.uuid4().hex[:6]}"
    token = os.urandom(4)
    codes = []
    for n in range(70):
        resp = client.ask(0x03, path, [(27, block(n, True))], b"q" * 1024, token=token)
        codes.append(resp["code"])
        if resp["code"] != CONTINUE:
            break
    assert codes == [CONTINUE] * 64 + [TOO_LARGE]
    assert uint(resp["options"][60][0]) == 65536  # Size1: the largest body taken
    resp = client.ask(0x03, path, [(27, block(65, True))], b"q" * 1024, token=token)
    assert resp["code"] == TOO_LARGE
    resp = client.ask(0x03, path, [(27, block(1, True))], b"q" * 1024, token=token)
    assert resp["code"] == INCOMPLETE
    serve.wait_log(rf"PUT /{path} block1=64/1/1024 -> 4\.13 Request Entity Too Large")


def test_put_announcing_more_than_the_limit_is_refused_at_the_first_block(serve, iotctl, tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(100_000))
    name = f"huge-{uuid.uuid4().hex[:6]}"
    r = iotctl("coap", "put", f"{serve.uri}/store/{name}", "-f", str(src))
    assert r.exit_code == 6, r
    _one_error_line(r.stderr, "4.13 Request Entity Too Large", "at most 65536 bytes")
    serve.wait_log(rf"PUT /store/{name} block1=0/1/1024 -> 4\.13")
    assert f"PUT /store/{name} block1=1/" not in serve.log()


# --------------------------------------------------------------------------- 5. bounded observations


def test_serve_bounds_the_observations_of_one_client(serve, client):
    """16 observations per client endpoint; a 17th GET with Observe is answered once,
    without Observe; another client still gets its observations."""
    observed = []
    for _ in range(20):
        resp = client.ask(0x01, "time", [(6, b"")])
        assert resp["code"] == CONTENT, resp
        observed.append(6 in resp["options"])
    assert observed == [True] * 16 + [False] * 4
    other = Client(serve.port)
    try:
        assert 6 in other.ask(0x01, "time", [(6, b"")])["options"]
    finally:
        other.close()


# --------------------------------------------------------------------------- 5. bounded duplicate detection


def test_serve_duplicate_post_is_answered_once_duplicate_get_afresh(serve, client, iotctl):
    """serve remembers no state for a GET (a duplicate is answered again) but still
    detects a duplicate POST (RFC 7252 4.5): the LED toggles once for two copies."""
    before = iotctl("coap", "get", f"{serve.uri}/actuators/led").stdout.strip()
    token = os.urandom(4)
    mid = client.next_mid()
    packet = encode(CON, 0x02, mid, token, [(11, b"actuators"), (11, b"led")])
    answers = []
    for _ in range(2):
        client.sock.sendto(packet, client.addr)
        answers.append(decode(client.sock.recvfrom(70000)[0]))
    assert answers[0] == answers[1] and answers[0]["code"] == CHANGED
    after = iotctl("coap", "get", f"{serve.uri}/actuators/led").stdout.strip()
    assert {before, after} == {"on", "off"}  # toggled once, not twice
    assert answers[0]["payload"].decode() == after
    mid = client.next_mid()
    packet = encode(CON, 0x01, mid, token, [(11, b"time")])
    for _ in range(2):
        client.sock.sendto(packet, client.addr)
        resp = decode(client.sock.recvfrom(70000)[0])
        assert (resp["code"], resp["mid"], resp["type"]) == (CONTENT, mid, ACK)
    wait_until(lambda: len([line for line in client.lines(serve.log()) if "GET /time" in line]) == 2,
               what="both GETs rendered and logged")


# --------------------------------------------------------------------------- 7. options that are not UTF-8


@pytest.mark.parametrize("mtype", [CON, NON])
def test_serve_answers_4_02_to_an_option_that_is_not_utf8(serve, client, mtype):
    before = serve.log()
    token = os.urandom(4)
    resp = client.ask(0x01, b"\xff\xfe", mtype=mtype, token=token)
    assert resp["code"] == BAD_OPTION, resp
    assert resp["type"] == (ACK if mtype == CON else NON)
    if mtype == CON:
        assert resp["mid"] == client.mid
    assert resp["payload"] == b"option Uri-Path (11) is not valid UTF-8"
    mine = wait_until(lambda: client.lines(serve.log()[len(before):]), what="the log line")
    assert mine[0].endswith(" GET ? -> 4.02 Bad Option (option Uri-Path (11) is not valid UTF-8)"), mine
    new = serve.log()[len(before):]
    assert "Traceback" not in new and len(client.lines(new)) == 1, new
    assert client.ask(0x01, "time")["code"] == CONTENT  # still serving


def test_serve_one_log_line_per_bad_datagram_in_a_flood(serve, client):
    before = serve.log()
    for _ in range(50):
        assert client.ask(0x01, "x", [(15, b"\xc3\x28")])["code"] == BAD_OPTION
    wait_until(lambda: len(client.lines(serve.log()[len(before):])) >= 50, what="50 log lines")
    new = serve.log()[len(before):]
    assert all("4.02 Bad Option (option Uri-Query (15)" in line for line in client.lines(new))
    assert "Traceback" not in new and len(client.lines(new)) == 50


def test_client_exits_6_on_a_response_option_that_is_not_utf8(iotctl, raw_server):
    server = raw_server(lambda req: [piggybacked(req, CREATED, [(8, b"\xff")], b"hi")])
    r = iotctl("coap", "post", f"{server.uri}/x", "-m", "1", "-W", "5")
    assert r.exit_code == 6, r
    _one_error_line(r.stderr, "POST coap://127.0.0.1", "the response's option Location-Path (8) "
                    "is not valid UTF-8")


def test_client_resets_a_con_response_that_is_not_utf8(iotctl, raw_server):
    """A separate CON response it cannot decode: RST to the server, exit 6 at once."""
    def answer(req):
        if req["type"] != CON:
            return []
        return [encode(ACK, 0, req["mid"], b""),
                encode(CON, CONTENT, 0x4242, req["token"], [(8, b"\xfe")], b"late")]

    server = raw_server(answer)
    r = iotctl("coap", "get", f"{server.uri}/x", "-W", "5")
    assert r.exit_code == 6, r
    _one_error_line(r.stderr, "the response's option Location-Path (8) is not valid UTF-8")
    wait_until(lambda: any(m["type"] == RST and m["mid"] == 0x4242 for m in server.received),
               what="an RST for the undecodable CON response")


# --------------------------------------------------------------------------- 4. endless Block2


def endless(req):
    num = (block_of(req) or (0, False, 1024))[0]
    return [piggybacked(req, options=[(23, block(num, True))], payload=b"y" * 1024)]


def test_client_stops_an_endless_block2_at_max_size(iotctl, raw_server):
    server = raw_server(endless)
    r = iotctl("coap", "get", f"{server.uri}/forever", "--max-size", "64k", "-W", "30")
    assert r.exit_code == 6, r
    _one_error_line(r.stderr, "GET coap://127.0.0.1", "more than --max-size 65536 bytes")
    assert "raise --max-size" in r.stderr
    assert r.stdout == ""
    # blocks 0..63 fill 64 KiB; block 64 passes the limit and ends the transfer
    assert [block_of(m)[0] if block_of(m) else 0 for m in server.requests] == list(range(65))


def test_client_endless_block2_within_timeout_is_exit_5_one_line(iotctl, raw_server):
    server = raw_server(endless)
    r = iotctl("coap", "get", f"{server.uri}/forever", "-W", "1")
    assert r.exit_code == 5, r
    _one_error_line(r.stderr, "the block-wise response was not complete within 1 s")
    assert len(server.requests) > 1


def test_client_block2_silence_is_exit_5_one_line(iotctl, raw_server):
    """The server answers block 0 and then nothing: one line, no InvalidStateError."""
    def answer(req):
        num = (block_of(req) or (0, False, 1024))[0]
        return endless(req) if num == 0 else []

    server = raw_server(answer)
    r = iotctl("coap", "get", f"{server.uri}/stalls", "-W", "1.5")
    assert r.exit_code == 5, r
    _one_error_line(r.stderr, "the block-wise response was not complete within 1.5 s (1024 bytes received)")


@pytest.mark.parametrize("value", ["0", "abc", "12Q", "-5"])
def test_max_size_must_be_a_size(iotctl, value):
    r = iotctl("coap", "get", "coap://127.0.0.1:9/x", "--max-size", value)
    assert r.exit_code == 2, r
    assert "--max-size" in r.stderr and "Traceback" not in r.stderr


def test_max_size_units_are_taken(iotctl, raw_server):
    server = raw_server(endless)
    r = iotctl("coap", "get", f"{server.uri}/forever", "--max-size", "2KiB", "-W", "10")
    assert r.exit_code == 6 and "--max-size 2048 bytes" in r.stderr, r

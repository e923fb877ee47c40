"""A bounded datagram fuzzer against `iotctl coap serve` (issue 23 item 3): thousands of
malformed, mutated and hostile-but-valid CoAP datagrams from a few client endpoints,
seeded (a failure names its seed and replays), bounded in time. Afterwards the server
still serves, wrote no traceback and no warning, and its memory did not run away."""

from __future__ import annotations

import os
import random
import socket
import time

import pytest

from tests.protocols.test_coap import _start_serve, _stop
from tests.coap_wire import ACK, CON, NON, RST, decode, encode

PATHS = [b"time", b"sensors", b"temperature", b"humidity", b"actuators", b"led", b"store", b"large", b"files",
         b".well-known", b"core", b"", b"..", b"\xff\xfe", b"x" * 300]
# every option iotctl coap serve or aiocoap looks at, and some it must ignore or refuse
OPTIONS = [1, 3, 4, 5, 6, 7, 8, 11, 12, 14, 15, 17, 20, 23, 27, 28, 35, 39, 60, 252, 258, 292, 2048, 65000]


def _value(rng: random.Random, number: int) -> bytes:
    kind = rng.random()
    if kind < 0.3:
        return b""
    if kind < 0.6:
        return rng.randbytes(rng.randint(1, 4))
    if kind < 0.9:
        return rng.choice(PATHS)
    return rng.randbytes(rng.choice((1, 12, 13, 14, 268, 269, 270, 1000)))


def _valid(rng: random.Random) -> bytes:
    mtype = rng.choice((CON, CON, NON, ACK, RST))
    code = rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 8, 31, 0x45, 0x80, 0xFF, rng.randrange(256)))
    token = rng.randbytes(rng.randint(0, 8))
    options = [(11, rng.choice(PATHS)) for _ in range(rng.randint(0, 3))]
    options += [(n, _value(rng, n)) for n in rng.sample(OPTIONS, rng.randint(0, 5))]
    payload = rng.randbytes(rng.choice((0, 0, 1, 16, 1024, 5000)))
    return encode(mtype, code, rng.randrange(0x10000), token, options, payload)


def _mutated(rng: random.Random) -> bytes:
    data = bytearray(_valid(rng))
    for _ in range(rng.randint(1, 6)):
        how = rng.random()
        if not data:
            break
        at = rng.randrange(len(data))
        if how < 0.4:
            data[at] ^= 1 << rng.randrange(8)
        elif how < 0.6:
            del data[at:]
        elif how < 0.8:
            data[at:at] = rng.randbytes(rng.randint(1, 8))
        else:
            data[at] = rng.choice((0x00, 0xFF, 0xD0, 0xE0, 0xF0, 0x0F, 0xDD, 0xEE))
    return bytes(data)


def _header_tricks(rng: random.Random) -> bytes:
    """Version, token length and option nibbles the RFC forbids, an empty payload after
    the payload marker, lengths that point past the end."""
    first = rng.choice((0x00, 0x80, 0xC0, 0x49, 0x4F, 0x59, 0x6C, 0x7F))
    body = bytes([first, rng.randrange(256)]) + rng.randbytes(2) + rng.randbytes(first & 0x0F)
    tail = rng.choice((b"", b"\xff", b"\xf0", b"\x0f", b"\xd1", b"\xe2\x01", b"\xbd\x05" + b"a" * 3,
                       b"\xee\xff\xff", rng.randbytes(rng.randint(1, 40))))
    return body + tail


def _datagram(rng: random.Random) -> bytes:
    pick = rng.random()
    if pick < 0.1:
        return rng.randbytes(rng.randint(0, 64))
    if pick < 0.2:
        return _header_tricks(rng)
    if pick < 0.6:
        return _mutated(rng)
    return _valid(rng)


def _answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        token = os.urandom(4)
        sock.sendto(encode(CON, 1, 0x4242, token, [(11, b"time")]), ("127.0.0.1", port))
        try:
            while True:
                msg = decode(sock.recvfrom(70000)[0])
                if msg["token"] == token:
                    return msg["code"] == 0x45
        except OSError:
            return False


def _rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


SEED = int(os.environ.get("IOTCTL_FUZZ_SEED", "20261204"))
DATAGRAMS = int(os.environ.get("IOTCTL_FUZZ_DATAGRAMS", "6000"))


@pytest.mark.parametrize("seed", [SEED, SEED + 1])
def test_serve_survives_a_datagram_fuzzer(tmp_path, seed):
    dev = _start_serve(tmp_path)
    rng = random.Random(seed)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    try:
        for sock in socks:
            sock.setblocking(False)
        assert _answers(dev.port)
        rss_before = _rss_kib(dev.proc.pid)
        started = time.monotonic()
        sent = 0
        while sent < DATAGRAMS and time.monotonic() - started < 20:
            sock = socks[sent % len(socks)]
            try:
                sock.sendto(_datagram(rng), ("127.0.0.1", dev.port))
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:  # a datagram over the limit, ICMP from an earlier one
                pass
            sent += 1
            if sent % 50 == 0:
                for s in socks:  # read what comes back, so no buffer fills
                    try:
                        while s.recv(70000):
                            pass
                    except OSError:
                        pass
                time.sleep(0.005)  # a flood is not the point: the server must see every datagram
        time.sleep(1.0)
        assert dev.proc.poll() is None, f"seed {seed}: coap serve exited with {dev.proc.returncode}\n{dev.log()[-3000:]}"
        assert _answers(dev.port), f"seed {seed}: coap serve stopped answering"
        log = dev.log()
        assert "Traceback" not in log, f"seed {seed}:\n{log[-5000:]}"
        warnings = [line for line in log.splitlines() if line.startswith("iotctl: warning")]
        assert warnings == [], f"seed {seed}: {warnings[:5]}"
        assert _rss_kib(dev.proc.pid) - rss_before < 30 * 1024, f"seed {seed}: memory grew"
    finally:
        for sock in socks:
            sock.close()
        code = _stop(dev.proc)
    assert code == 0, dev.log()[-2000:]
    assert dev.log().rstrip().endswith("iotctl: server stopped")


def test_observe_on_a_post_registers_nothing(tmp_path):
    """What the fuzzer found: a POST with Observe: 0 was observed, and every
    notification re-ran the POST (a write, which notified again): the server spun and
    grew for good after one datagram. Observe belongs to GET and FETCH only."""
    dev = _start_serve(tmp_path)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            token = os.urandom(4)
            sock.sendto(encode(CON, 2, 0x1111, token, [(6, b""), (11, b"store"), (11, b"spin")], b"x"),
                        ("127.0.0.1", dev.port))
            answer = decode(sock.recvfrom(70000)[0])
            assert answer["code"] == 0x41 and 6 not in answer["options"], answer  # 2.01, no Observe
            time.sleep(0.5)
            sock.settimeout(0.3)
            with pytest.raises(socket.timeout):  # no notification follows
                sock.recvfrom(70000)
        assert _answers(dev.port)
        assert len([line for line in dev.log().splitlines() if "POST /store/spin" in line]) == 1
    finally:
        code = _stop(dev.proc)
    assert code == 0

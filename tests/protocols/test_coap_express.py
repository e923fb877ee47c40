"""The express lane of `coap get|put|post|delete` (iotctl/protocols/coap/express.py)
against the normal path (aiocoap): a corpus of command lines runs both ways
(IOTCTL_EXPRESS=0 forces the normal path) against libcoap's coap-server, `iotctl coap
serve` and fake UDP peers; stdout, stderr and the exit status must be the same (the
envelope's timestamp, message id and token aside: they differ from run to run on
either path). And the lane really is taken: it imports neither click nor aiocoap."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import uuid

import pytest

from tests.helpers import clean_env, express_probe, free_port, interrupted_when
from tests.protocols.test_coap import _start_serve, _stop
from tests.coap_wire import ACK, CON, NON, RST, encode
from tests.protocols.test_coap_faults import CONTENT, CREATED, block_of, endless, piggybacked, raw_server  # noqa: F401

LIBCOAP = "coap://127.0.0.1:5783"
VARYING = [(re.compile(rb'"ts": "[^"]*"'), b'"ts": TS'), (re.compile(rb'"mid": \d+'), b'"mid": MID'),
           (re.compile(rb'"token": "[0-9a-f]*"'), b'"token": TOKEN')]


def _normal(text: bytes) -> bytes:
    for pattern, fixed in VARYING:
        text = pattern.sub(fixed, text)
    return text


def run(*args: str, express: bool = True):
    env = clean_env() if express else clean_env(IOTCTL_EXPRESS="0")
    r = subprocess.run([sys.executable, "-m", "iotctl", "coap", *args], capture_output=True, env=env, timeout=60)
    return r.returncode, _normal(r.stdout), r.stderr


def both(*args: str):
    return run(*args), run(*args, express=False)


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    dev = _start_serve(tmp_path_factory.mktemp("coap-express"), "--large-size", "5000")
    yield dev
    _stop(dev.proc)


@pytest.fixture
def libcoap(peer) -> str:
    peer("coap-server")
    return LIBCOAP


@pytest.mark.parametrize("args", [
    ("get", "/"),
    ("get", "/", "-o", "raw"),
    ("get", "/", "-o", "json"),
    ("get", "/", "--output=jsonl"),
    ("get", "/", "-o", "hex"),
    ("get", "/", "-o", "text"),
    ("get", "/", "-F", "{address} {meta[code]} {size} {content_type}"),
    ("get", "/", "-o", "json", "-F", "{payload}"),
    ("get", "/.well-known/core?rt=ticks", "-A", "40"),  # the whole list changes as tests add resources
    ("get", "/.well-known/core?rt=ticks", "-A", "link-format", "-o", "jsonl"),
    ("get", "/nothere"),                       # 4.04
    ("get", "/nothere", "-o", "json"),         # 4.04, the envelope printed too
    ("get", "/nothere", "-o", "raw", "--quiet"),
    ("post", "/time", "-m", "x"),              # 4.05
    ("post", "/time", "-o", "jsonl"),
    ("delete", "/nothere"),
])
def test_same_both_ways_against_libcoap(libcoap, args):
    verb, path, *rest = args
    express, normal = both(verb, libcoap + path, *rest)
    assert express == normal, (express, normal)


def test_put_then_get_through_the_lane(libcoap):
    uri = f"{libcoap}/express-{uuid.uuid4().hex[:8]}"  # a dynamic resource: the server keeps ten at most
    try:
        assert run("put", uri, "-m", "kept ü")[0] == 0
        assert run("get", uri) == (0, "kept ü\n".encode(), b"")
        assert run("put", uri, "--null")[0] == 0
        express, normal = both("get", uri, "-o", "json")
        assert express == normal and express[0] == 0
    finally:
        assert run("delete", uri) == (0, b"", b"")
    assert run("get", uri)[0] == 6


@pytest.mark.parametrize("args", [
    ("get", "/large"),                                  # Block2: five blocks
    ("get", "/large", "-o", "json"),
    ("get", "/large", "--max-size", "5000"),
    ("get", "/large", "--max-size", "3000"),            # more than --max-size: 6
    ("get", "/large", "--max-size", "3k", "-o", "jsonl"),
    ("get", "/files/config.json", "-o", "jsonl"),
    ("get", "/sensors/temperature", "-A", "xml"),       # 4.06
    ("get", "/sensors/temperature", "-A", "application/xml", "-o", "json"),
    ("delete", "/store/never-there"),
    ("get", "/actuators/led", "-o", "text"),
    ("put", "/store/express-fixed", "-m", '{"a": 1}', "-t", "json", "-o", "json"),
    ("post", "/time"),                                  # 4.05
])
def test_same_both_ways_against_serve(device, args):
    verb, path, *rest = args
    if verb == "put":
        run(verb, device.uri + path, *rest, express=False)  # it exists: both ways change it (2.04)
    express, normal = both(verb, device.uri + path, *rest)
    assert express == normal, (express, normal)


def test_post_shows_the_location_as_the_normal_path_does(device):
    runs = both("post", f"{device.uri}/store", "-m", "hi", "-o", "json")
    (code, out, err), (code0, out0, err0) = runs
    number = re.compile(rb"store/\d+|\"\d+\"")
    assert (code, number.sub(b"N", out), number.sub(b"N", err)) == (code0, number.sub(b"N", out0),
                                                                     number.sub(b"N", err0))
    assert code == 0 and re.fullmatch(rb"iotctl: 2\.01 Created: /store/\d+\n", err)
    location = err.decode().split(": ")[-1].strip()
    assert run("get", device.uri + location) == (0, b"hi\n", b"")
    assert run("delete", device.uri + location) == (0, b"", b"")
    assert run("get", device.uri + location)[0] == 6


def test_block2_arrives_whole_and_each_block_is_asked_for_once(device):
    before = device.log().count("/large")
    code, out, err = run("get", f"{device.uri}/large")
    assert code == 0 and err == b""
    assert len(out) == 5001 and out.endswith(b"\n")
    lines = [line for line in device.log().splitlines() if "/large" in line][before:]
    assert len(lines) == 5, lines  # five blocks of 1024 bytes, each asked for once


class Silent:
    """A UDP socket that reads everything and never answers."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.uri = f"coap://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("args", [
    ("get", "/x", "-W", "1"),
    ("post", "/x", "-W", "1", "-o", "json"),
    ("put", "/x", "-m", "y", "--timeout=0.5"),
    ("delete", "/x", "-W", "0.5"),
])
def test_timeouts_are_the_same_both_ways(args):
    silent = Silent()
    try:
        verb, path, *rest = args
        express, normal = both(verb, silent.uri + path, *rest)
    finally:
        silent.close()
    assert express == normal and express[0] == 5, (express, normal)


@pytest.mark.parametrize("verb, extra", [("get", ()), ("put", ("-m", "x"))])
def test_ctrl_c_is_the_same_both_ways(verb, extra):
    silent = Silent()
    try:
        runs = [interrupted_when(["coap", verb, f"{silent.uri}/x", *extra], silent.sock, env)
                for env in (clean_env(), clean_env(IOTCTL_EXPRESS="0"))]
    finally:
        silent.close()
    assert runs[0] == runs[1] and runs[0][0] == 130, runs


@pytest.mark.parametrize("verb, extra", [("get", ()), ("put", ("-m", "x")), ("post", ()), ("delete", ())])
def test_a_refused_port_is_the_same_both_ways(verb, extra):
    uri = f"coap://127.0.0.1:{free_port()}/x"
    express, normal = both(verb, uri, *extra)
    assert express == normal and express[0] == 3, (express, normal)


def _rst(req):
    return [encode(RST, 0, req["mid"], b"")]


def _separate(req):
    return [encode(ACK, 0, req["mid"], b""), encode(NON, CONTENT, 0x1234, req["token"], (), b"separate")]


def _separate_con(req):
    return [encode(ACK, 0, req["mid"], b""), encode(CON, CONTENT, 0x1235, req["token"], [(12, b"\x32")], b'{"a": 1}')]


def _bad_location(req):
    return [piggybacked(req, CREATED, [(8, b"\xff")], b"hi")]


def _bad_location_con(req):
    return [encode(ACK, 0, req["mid"], b""), encode(CON, CONTENT, 0x4242, req["token"], [(8, b"\xfe")], b"late")]


def _stalls(req):
    return endless(req) if (block_of(req) or (0,))[0] == 0 else []


@pytest.mark.parametrize("answer", [_rst, _separate, _separate_con, _bad_location, _bad_location_con])
@pytest.mark.parametrize("args", [("get", "/a/b%20c/?x=1&y=%C3%BC", "-A", "json", "-o", "jsonl"),
                                  ("put", "/a", "-m", "x"), ("post", "/a/", "-o", "json")])
def test_fake_peers_are_the_same_both_ways(raw_server, answer, args):
    server = raw_server(answer)
    verb, path, *rest = args
    express, normal = both(verb, server.uri + path, *rest, "-W", "3")
    assert express == normal, (express, normal)


@pytest.mark.parametrize("answer, args, code", [
    (endless, ("--max-size", "64k", "-W", "30"), 6),   # an endless Block2 stopped at --max-size
    (endless, ("--max-size", "2KiB", "-o", "json"), 6),
    (endless, ("-W", "1", "--max-size", "1G"), 5),      # ... or at -W (the lane is fast: 16 MiB in 1 s)
    (_stalls, ("-W", "1.5"), 5),                        # block 0, then silence
])
def test_hostile_block2_is_the_same_both_ways(raw_server, answer, args, code):
    server = raw_server(answer)
    # how much of an endless response arrives within -W is the speed of each path
    counted = re.compile(rb"\(\d+ bytes received\)")
    express, normal = ((c, out, counted.sub(b"(N bytes received)", err))
                       for c, out, err in both("get", f"{server.uri}/forever", *args))
    assert express == normal and express[0] == code, (express, normal)


def test_an_endless_block2_asks_for_each_block_once(raw_server):
    server = raw_server(endless)
    assert run("get", f"{server.uri}/forever", "--max-size", "64k", "-W", "30")[0] == 6
    # blocks 0..63 fill 64 KiB; block 64 passes the limit and ends the transfer
    assert [block_of(m)[0] if block_of(m) else 0 for m in server.requests] == list(range(65))


@pytest.mark.parametrize("args", [
    ("get",),
    ("get", "127.0.0.1/x"),                               # no scheme
    ("get", "coap://127.0.0.1:5783/x#frag"),
    ("get", "coap://127.0.0.1:99999/x"),
    ("get", "coap://127.0.0.1:5783/", "-A", "no-such-format"),
    ("get", "coap://127.0.0.1:5783/", "-W", "0"),
    ("get", "coap://127.0.0.1:5783/", "-W", "soon"),
    ("get", "coap://127.0.0.1:5783/", "--max-size", "0"),
    ("get", "coap://127.0.0.1:5783/", "-o", "template"),
    ("get", "coap://127.0.0.1:5783/", "-F", "{nosuchfield}"),
    ("get", "coap://127.0.0.1:5783/", "-o", "nosuchmode"),
    ("get", "coap://127.0.0.1:5783/", "extra"),
    ("get", "coap://127.0.0.1:5783/", "-m", "x"),
    ("put", "coap://127.0.0.1:5783/x"),                    # no payload
    ("put", "coap://127.0.0.1:5783/x", "a", "-m", "b"),    # two payloads
    ("put", "coap://127.0.0.1:5783/x", "-m", "a", "-t", "no-such-format"),
    ("post", "coap://127.0.0.1:5783/x", "--method", "sideways"),
    ("delete", "coap://u:p@127.0.0.1/x"),
    ("get", "coaps://127.0.0.1:5783/x"),
])
def test_usage_errors_take_the_normal_path_and_are_the_same(args):
    from iotctl.protocols.coap.express import request

    assert request(list(args)) is None
    express, normal = both(*args)
    assert express == normal and express[0] == 2, (express, normal)


def test_what_the_lane_does_not_know_takes_the_normal_path():
    from iotctl.protocols.coap.express import request

    for argv in (["get", "coap://127.0.0.1:5783/", "--non"], ["get", "coap+tcp://127.0.0.1/"],
                 ["get", "coap://127.0.0.1/", "-O", "2048=1"], ["get", "coap://224.0.1.187/"],
                 ["get", "coap://127.0.0.1/", "--proxy", "coap://127.0.0.1:5700"],
                 ["get", "coap://127.0.0.1/", "-o", "pretty"], ["get", "coap://127.0.0.1/", "-d"],
                 ["get", "coap://127.0.0.1/", "--block-size", "64"], ["get", "coap://[fe80::1%lo]/"],
                 ["get", "coap://127.0.0.1/a;b"], ["get", "coap://127.0.0.1/%zz"], ["get", "coap://127.0.0.1/%ff"],
                 ["put", "coap://127.0.0.1/x", "-m", "x" * 1025], ["put", "coap://127.0.0.1/x", "-f", "file"],
                 ["post", "coap://127.0.0.1/x", "-l"], ["observe", "coap://127.0.0.1/time"],
                 ["fetch", "coap://127.0.0.1/x"], ["get", "coap://no-such-host.invalid/x"]):
        assert request(argv) is None, argv


def test_the_lane_imports_neither_click_nor_aiocoap(libcoap):
    code, out, modules = express_probe("coap", "get", f"{libcoap}/")
    assert code == 0 and out.startswith(b"This is a test server")
    assert not {"click", "aiocoap", "asyncio", "rich"} & modules


@pytest.mark.parametrize("express", [True, False], ids=["lane", "normal"])
@pytest.mark.parametrize("output", ["raw", "json"])
def test_a_full_disk_is_one_line_and_exit_1(device, express, output):
    """stdout on /dev/full (ENOSPC): `cannot write output: no space left on device`, exit
    1, both ways (the lane printed a traceback, the normal path `unexpected OSError`)."""
    env = clean_env() if express else clean_env(IOTCTL_EXPRESS="0")
    with open("/dev/full", "wb") as full:
        r = subprocess.run([sys.executable, "-m", "iotctl", "coap", "get", device.uri + "/time", "-o", output],
                           stdout=full, stderr=subprocess.PIPE, env=env, timeout=60)
    assert (r.returncode, r.stderr) == (1, b"iotctl: error: cannot write output: no space left on device\n")

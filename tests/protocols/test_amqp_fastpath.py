"""The consumer's receive fast path (protocols/amqp/fastpath.py) against pika's own
receive path (IOTCTL_AMQP_PIKA_RECEIVE=1), on the real RabbitMQ: the same messages,
with every property and every kind of header value, give the same envelopes both
ways (over TLS too); counts stay exact across -C and Ctrl-C; heartbeats keep an idle
consumer alive and notice a silent broker; a deleted queue and garbage from the
broker end the run exactly as they do on pika's path, in one line. The first test
splits a byte stream at every size (no peer)."""

from __future__ import annotations

import datetime
import decimal
import json
import random
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from tests.faults import TcpRelay
from tests.helpers import clean_env
from tests.protocols.test_amqp import (_STARTED, Proxy, _no_leftovers, iotctl_cmd, names, rmq,  # noqa: F401
                                       tls_certs, wait_status)
from tests.protocols.test_amqp_faults import depth_of, queue_of, run_ok

FAST = "iotctl reads the socket from now on (the fast path"
LEFT = "pika reads the socket again: "
PIKA = {"IOTCTL_AMQP_PIKA_RECEIVE": "1"}


def _env(pika: bool) -> dict:
    return clean_env(**(PIKA if pika else {}))


def _run(*args, pika: bool, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(iotctl_cmd(*args), capture_output=True, env=_env(pika), timeout=timeout)


def _start(*args, pika: bool) -> subprocess.Popen:
    """tests.protocols.test_amqp.start (killed after the test), with the path chosen."""
    proc = subprocess.Popen(iotctl_cmd(*args), env=_env(pika), bufsize=0, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    _STARTED.append(proc)
    return proc


def _envelopes(stdout: bytes) -> list[str]:
    """The jsonl lines without their timestamps (the rest must be byte for byte equal)."""
    lines = stdout.decode().splitlines()
    return [re.sub(r'^\{"ts": "[^"]*", ', "{", line) for line in lines]


# --------------------------------------------------------------------------- the parser alone


def test_a_stream_split_anywhere_gives_the_same_deliveries():
    """Deliveries of every body size (none, one frame, exactly frame_max, several frames)
    with heartbeats between them, written in pieces of every size: each message whole,
    in order, and nothing left over."""
    from pika import frame, spec

    from iotctl.protocols.amqp.client import _RAW_PROPS, decode_properties
    from iotctl.protocols.amqp.fastpath import FastReader

    tag, fmax = "ctag1.test", 4096
    rnd = random.Random(7)
    frames, expected = [], []
    for i in range(1, 120):
        size = rnd.choice([0, 1, 10, fmax - 9, fmax - 8, fmax - 7, 9000, 20000])
        body = rnd.randbytes(size)
        headers = {"n": i, "deep": {"a": [1, "b"]}} if i % 5 == 0 else None
        props = spec.BasicProperties(content_type=f"t/{i % 3}", headers=headers, priority=i % 10)
        frames.append(frame.Method(1, spec.Basic.Deliver(tag, i, i % 2 == 0, "ex", f"key.{i}")).marshal())
        frames.append(frame.Header(1, size, props).marshal())
        frames.extend(frame.Body(1, body[s:s + fmax - 8]).marshal() for s in range(0, size, fmax - 8))
        if i % 7 == 0:
            frames.append(frame.Heartbeat().marshal())
        expected.append((i, body, f"key.{i}", i % 2 == 0, f"t/{i % 3}", headers or {},
                         {"content_type": f"t/{i % 3}", "priority": i % 10}))
    stream = b"".join(frames)
    for piece in (1, 2, 7, 8, 11, 19, 100, fmax - 1, fmax, fmax + 1, 65536, len(stream)):
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        reader = FastReader(ours, 1, fmax, 0, 1 << 29, [tag], decode_properties, _RAW_PROPS)
        writer = threading.Thread(target=lambda: [theirs.sendall(stream[s:s + piece])
                                                  for s in range(0, len(stream), piece)])
        writer.start()
        got = []
        deadline = time.monotonic() + 120
        # until every message and the trailing heartbeat were read (a writer of small
        # pieces may still be sending that heartbeat when the last message is whole);
        # once the writer is done every byte is in the socket: read on while any comes
        # (under a loaded CI a one-byte writer took over 30 s)
        while (len(got) < len(expected) or reader.consumed < len(stream)) and time.monotonic() < deadline:
            if reader.wait(1.0):
                got.extend(reader.read())
            elif not writer.is_alive():
                break
            assert reader.stop is None, piece
        writer.join()
        assert [(m.token, m.payload, m.address, m.meta["redelivered"], m.content_type, m.meta["headers"],
                 m.meta["properties"]) for m in got] == expected, piece
        assert reader.consumed == len(stream) and not reader.chunks, piece
        ours.close()
        theirs.close()


# --------------------------------------------------------------------------- the same envelopes


def _corpus() -> list:
    """(properties, body): every BasicProperties field, headers of every AMQP type pika
    writes (nested tables and arrays, byte arrays, decimals, timestamps, void, a key
    that is not UTF-8), short strings that are not UTF-8 (the content type too), empty bodies, bodies of one
    full frame, of two and three frames, and of 3 MB; the last two repeat earlier
    properties and headers byte for byte."""
    import pika

    p = pika.BasicProperties
    headers = {"s": "text", "i": 42, "neg": -7, "big": 2 ** 40, "t": True, "f": False, "raw": b"\x00\xffraw",
               "dec": decimal.Decimal("3.14"), "decint": decimal.Decimal("10"),
               "ts": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc), "none": None,
               "arr": [1, "two", [3, {"four": 4}], b"\xfe", decimal.Decimal("-0.5")],
               "table": {"inner": {"deep": [True, None, "x"]}, "empty": {}, "list": []},
               b"\xffkey": "the value of a key that is not UTF-8"}
    every = dict(content_type="application/json", content_encoding="gzip", delivery_mode=2, priority=7,
                 correlation_id="corr-1", reply_to="answers", expiration="600000", message_id="m-1",
                 timestamp=1700000000, type="reading", user_id="guest", app_id="iotctl-tests", cluster_id="cl-1")
    pattern = bytes(range(256))
    frame_body = 131072 - 8
    return [
        (p(), b"plain"),
        (p(**every, headers=headers), b'{"t": 21.5}'),
        (p(**every), b"every property, no headers"),
        (p(headers={}), b"an empty headers table"),
        (p(), b""),
        (p(content_type="text/plain", headers={"k": "v"}), b""),
        (p(message_id=b"\xff\xfe", correlation_id=b"\x80abc", type=b"\xc3\x28", app_id=b"ok", reply_to=b"\xe2\x82",
           content_encoding=b"\xfa", content_type=b"\xfe\xff/x"), b"short strings that are not UTF-8"),
        (p(), (pattern * 600)[:frame_body]),
        (p(), (pattern * 600)[:frame_body + 1]),
        (p(headers={"n": 1}), pattern * 1200),
        (p(delivery_mode=1), b"0123456789" * 300_000),
        (p(), "text: température, 温度".encode()),
        (p(), b"\x00\x01\x02 binary"),
        (p(**every, headers=headers), b"the same properties and headers again (decoded once)"),
        (p(content_type="text/plain", headers={"k": "v"}), b"and these"),
    ]


def _publish_corpus(exchange: str, key: str, port: int = 5672) -> int:
    import pika

    corpus = _corpus()
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port,
                                                             credentials=pika.PlainCredentials("guest", "guest")))
    try:
        channel = conn.channel()
        channel.confirm_delivery()
        for props, body in corpus:
            channel.basic_publish(exchange, key, body, props)
    finally:
        conn.close()
    return len(corpus)


def _twin_queues(names) -> tuple[str, str, int]:
    """Two queues holding the same corpus (through a fanout exchange: the same routing
    key and exchange in both); the first message of each was delivered once and given
    back (redelivered)."""
    ex, fast_q, pika_q = names("exchange"), queue_of(names), queue_of(names)
    assert run_ok("amqp", "declare", "exchange", ex, "-t", "fanout")
    for q in (fast_q, pika_q):
        assert run_ok("amqp", "bind", "queue", q, "-e", ex)
    n = _publish_corpus(ex, "corpus.key")
    for q, pika in ((fast_q, False), (pika_q, True)):  # (--requeue gives it back when it closes)
        done = _run("amqp", "consume", q, "-C", "1", "--requeue", "--prefetch", "1", "-d", pika=pika)
        assert done.returncode == 0, done.stderr[-2000:]
        assert (FAST in done.stderr.decode()) != pika
    return fast_q, pika_q, n


def _compare(fast: subprocess.CompletedProcess, slow: subprocess.CompletedProcess, n: int) -> list[dict]:
    assert fast.returncode == 0, fast.stderr[-2000:]
    assert slow.returncode == 0, slow.stderr[-2000:]
    assert FAST in fast.stderr.decode() and FAST not in slow.stderr.decode()  # each ran the path it was to
    got, expected = _envelopes(fast.stdout), _envelopes(slow.stdout)
    assert len(got) == n
    assert got == expected
    return [json.loads(line) for line in got]


def test_the_same_envelopes_as_pika(names):
    fast_q, pika_q, n = _twin_queues(names)
    fast = _run("amqp", "consume", fast_q, "-C", n, "-o", "jsonl", "-W", "60", "-d", pika=False)
    slow = _run("amqp", "consume", pika_q, "-C", n, "-o", "jsonl", "-W", "60", "-d", pika=True)
    envelopes = _compare(fast, slow, n)
    first, every = envelopes[0], envelopes[1]
    assert first["meta"]["redelivered"] is True and every["meta"]["redelivered"] is False
    assert every["meta"]["properties"]["cluster_id"] == "cl-1"
    assert every["meta"]["headers"]["arr"] == [1, "two", [3, {"four": 4}], "0xfe", -0.5]
    assert every["meta"]["headers"]["ts"] == "2026-01-02T03:04:05+00:00"
    assert every["meta"]["headers"]["0xff6b6579"] == "the value of a key that is not UTF-8"  # was "b'\\xffkey'"
    assert envelopes[6]["meta"]["properties"]["message_id"] == "0xfffe"
    assert envelopes[6]["content_type"] == "0xfeff2f78"  # not UTF-8: shown as bytes are (it crashed -o jsonl)
    assert [len(e["payload"]) for e in envelopes[7:11]] == [174752, 174756, 409600, 3_000_000]
    assert envelopes[-2]["meta"]["headers"] == every["meta"]["headers"]
    assert depth_of(fast_q) == depth_of(pika_q) == 0


def test_the_same_envelopes_over_tls(names, tls_certs):  # noqa: F811
    import ssl

    fast_q, pika_q, n = _twin_queues(names)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls_certs["server_crt"], tls_certs["server_key"])
    proxy = Proxy(tls=ctx)
    try:
        fast = _run("amqp", "consume", fast_q, "--url", f"amqps://localhost:{proxy.port}", "--cafile",
                    tls_certs["ca_crt"], "-C", n, "-o", "jsonl", "-W", "60", "-d", pika=False)
    finally:
        proxy.close()
    slow = _run("amqp", "consume", pika_q, "-C", n, "-o", "jsonl", "-W", "60", "-d", pika=True)
    _compare(fast, slow, n)
    assert depth_of(fast_q) == 0


# --------------------------------------------------------------------------- exact counts


def test_C_and_ctrl_c_lose_and_duplicate_nothing(names):
    """Four -C runs and a Ctrl-C: every message written exactly once, in order, and
    exactly the rest still queued (what was written was acknowledged, nothing else)."""
    q = queue_of(names)
    total = 30_000
    assert run_ok("amqp", "publish", "-r", q, "-l", input=b"".join(b"%d\n" % i for i in range(total)))
    written: list[int] = []
    for count in (1, 999, 5000, 7000):
        done = _run("amqp", "consume", q, "-C", count, "-W", "30", pika=False)
        assert done.returncode == 0, done.stderr
        written += [int(x) for x in done.stdout.split()]
        assert depth_of(q) == total - len(written)
    proc = _start("amqp", "consume", q, "--prefetch", "500", pika=False)
    first = proc.stdout.readline()
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    written += [int(x) for x in (first + out).split()]
    assert written == list(range(len(written)))  # in order, no gap, no repeat
    assert len(written) + depth_of(q) == total, (len(written), err)


# --------------------------------------------------------------------------- as pika's path ends


def _normalised(stderr: bytes) -> list[str]:
    """stderr lines with the consumer tags (random) and ports written the same way."""
    text = re.sub(r"ctag1\.[0-9a-f]+", "ctag1.X", stderr.decode())
    return re.sub(r"localhost:\d+", "localhost:PORT", text).splitlines()


@pytest.mark.parametrize("reconnect", [[], ["--no-reconnect"]], ids=["reconnect", "no-reconnect"])
def test_a_deleted_queue_ends_the_consume_as_before(names, reconnect):
    """The broker cancels the consumer (Basic.Cancel) and the queue is gone: the fast path
    gives the frame to pika, which ends the run as it always did."""
    results = {}
    for pika in (False, True):
        q = queue_of(names)
        proc = _start("amqp", "consume", q, "-W", "30", *reconnect, pika=pika)
        wait_status(proc, "consuming from")
        assert run_ok("amqp", "publish", "-r", q, "-m", "before")
        assert proc.stdout.readline() == b"before\n"
        assert run_ok("amqp", "delete", "queue", q)
        out, err = proc.communicate(timeout=30)
        results[pika] = (proc.returncode, out, _normalised(err.replace(q.encode(), b"Q")))
    assert results[False] == results[True]
    code, _, lines = results[False]
    assert code not in (0, 5), lines  # an error, not a timeout
    assert len([line for line in lines if line.startswith("iotctl: error:")]) == 1, lines
    assert not any("Traceback" in line for line in lines), lines


def test_an_idle_consumer_keeps_its_connection_through_heartbeats(names):
    """--heartbeat 2 and 7 s without a message: RabbitMQ closes a connection that sends
    nothing for two heartbeats, so the fast path must send them (and pika's own checker,
    back at the close, must not end the connection either)."""
    q = queue_of(names)
    proc = _start("amqp", "consume", q, "--heartbeat", "2", "-C", "1", "-W", "60", "--no-reconnect", "-d",
                  pika=False)
    wait_status(proc, FAST)
    time.sleep(7)
    assert run_ok("amqp", "publish", "-r", q, "-m", "still there")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    assert out == b"still there\n"
    assert b"connection lost" not in err and b"heartbeat timeout" not in err
    assert (LEFT + "closing").encode() in err  # it was the fast path all along
    assert depth_of(q) == 0


def test_a_silent_broker_is_noticed_through_the_heartbeat_as_with_pika(names):
    """The broker freezes (a relay holds every byte): both paths end with the same line
    once heartbeats stop arriving (pika: within 2 x (heartbeat + 5 s))."""
    q = queue_of(names)
    with TcpRelay(5672) as relay:
        procs = {pika: _start("amqp", "consume", q, "-p", relay.port, "--heartbeat", "2", "--no-reconnect",
                              pika=pika) for pika in (False, True)}
        for proc in procs.values():
            wait_status(proc, "consuming from")
        relay.freeze()
        started = time.monotonic()
        results = {}
        for pika, proc in procs.items():
            out, err = proc.communicate(timeout=40)
            results[pika] = (proc.returncode, out, _normalised(err), time.monotonic() - started)
    assert results[False][:3] == results[True][:3]
    code, _, lines, took = results[False]
    assert code == 3 and lines[-1] == "iotctl: error: consume: the broker stopped answering (heartbeat timeout)", lines
    assert took < 16, took


def _first_delivery(change):
    """A Proxy rewrite: `change(frame)` replaces the first Basic.Deliver (and, with
    `frame_type` set on it, the first frame of that type) the broker sends."""
    done = []
    kind = getattr(change, "frame_type", 1)

    def rewrite(frame: bytes) -> bytes:
        if done or frame[0] != kind or (kind == 1 and frame[7:11] != b"\x00\x3c\x00\x3c"):
            return frame
        done.append(True)
        return change(frame)

    return rewrite


def _bad_end(frame):
    return frame[:-1] + b"\x00"


def _unknown_method(frame):
    return frame[:7] + b"\x00\x3c\x00\x63" + frame[11:]


def _huge_frame(frame):
    return bytes([1, 0, 1]) + (1 << 31).to_bytes(4, "big") + b"\x00" * 64


def _huge_body(frame):
    return frame[:11] + (1 << 40).to_bytes(8, "big") + frame[19:]


_huge_body.frame_type = 2


@pytest.mark.parametrize("change, why", [
    (_bad_end, "the peer sent something that is not AMQP 0-9-1 (a malformed frame)"),
    (_unknown_method, "the peer sent something that is not AMQP 0-9-1 (a method unknown to AMQP 0-9-1 "
                      "(0x003c0063))"),
    (_huge_frame, "the peer sent a frame larger than 131072 bytes (frame_max): 2147483656 bytes announced"),
    (_huge_body, "the peer announced a message of 1099511627776 bytes; iotctl takes at most 536870912"),
], ids=["frame-end", "unknown-method", "huge-frame", "huge-body"])
def test_garbage_after_the_consume_is_one_line_as_with_pika(names, change, why):
    """A delivery the broker sends is corrupted on its way (the consumer is set up and
    reading): the fast path gives the bytes to pika, whose checks end the run the way
    they do without it: one error line (and a hint), the same exit code, no traceback."""
    results = {}
    for pika, debug in ((False, False), (True, False), (False, True)):
        q = queue_of(names)
        proxy = Proxy(rewrite=_first_delivery(change))
        try:
            proc = _start("amqp", "consume", q, "-p", proxy.port, "--no-reconnect", "-W", "30",
                          *(["-d"] if debug else []), pika=pika)
            wait_status(proc, "consuming from")
            assert run_ok("amqp", "publish", "-r", q, "-m", "x" * 300)
            out, err = proc.communicate(timeout=30)
        finally:
            proxy.close()
        if debug:  # the fast path read it, and left it to pika
            assert LEFT.encode() + b"a " in err and b"frame it does not take" in err, err[-3000:]
            continue
        results[pika] = (proc.returncode, out, _normalised(err))
    assert results[False] == results[True]
    code, out, lines = results[False]
    assert out == b""
    errors = [line for line in lines if line.startswith("iotctl: error:")]
    assert errors == [f"iotctl: error: consume: {why}"], lines
    assert code == (6 if "larger" in why or "announced" in why else 3)
    assert not any("Traceback" in line for line in lines), lines

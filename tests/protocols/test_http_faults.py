"""Hostile HTTP servers (fake ones on 127.0.0.1, written here only to misbehave): one
that never answers, an endless body, garbage instead of HTTP, a connection cut in the
middle of a body, an endless event stream; and the URL endpoints (resolver) with the
adoption of foreign messages, checked at nginx."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest

BASE = "http://127.0.0.1:18080"


@contextmanager
def fake_server(behaviour):
    """A TCP server on a free port calling behaviour(conn) for every connection."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    stop = threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            threading.Thread(target=_guard, args=(behaviour, conn, stop), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        srv.close()


def _guard(behaviour, conn, stop):
    with conn:
        try:
            behaviour(conn, stop)
        except OSError:
            pass


def read_head(conn) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def silent(conn, stop):
    read_head(conn)
    stop.wait(30)


def endless(conn, stop):
    read_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (65536, b"z" * 65536)
    sent = 0
    while not stop.is_set() and sent < (1 << 30):
        conn.sendall(chunk)
        sent += 65536


def garbage(conn, stop):
    read_head(conn)
    conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n\x00\x01\x02 this is not http\r\n\r\n")


def cut(conn, stop):
    read_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly a part")


def endless_events(conn, stop):
    read_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
    n = 0
    while not stop.is_set() and n < 1_000_000:
        conn.sendall(b"".join(b"data: %d\n\n" % (n + i) for i in range(100)))
        n += 100


def no_line_end(conn, stop):
    read_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: ")
    for _ in range(200):
        if stop.is_set():
            return
        conn.sendall(b"y" * 65536)


def test_server_that_never_answers_exits_5(iotctl):
    with fake_server(silent) as port:
        started = time.monotonic()
        r = iotctl("http", "get", f"http://127.0.0.1:{port}/", "-W", "1")
        assert r.exit_code == 5
        assert "no complete response within 1 s" in r.stderr
        assert time.monotonic() - started < 5


def test_endless_body_is_bounded_by_max_size(iotctl):
    with fake_server(endless) as port:
        r = iotctl("http", "get", f"http://127.0.0.1:{port}/", "--max-size", "2M", "-W", "20")
        assert r.exit_code == 6
        assert "larger than --max-size 2 MiB" in r.stderr
        assert r.stdout == ""


def test_garbage_is_a_peer_error(iotctl):
    with fake_server(garbage) as port:
        r = iotctl("http", "get", f"http://127.0.0.1:{port}/")
        assert r.exit_code == 6
        assert "not an HTTP response" in r.stderr and "Traceback" not in r.stderr


def test_body_cut_short_is_an_error(iotctl):
    with fake_server(cut) as port:
        r = iotctl("http", "get", f"http://127.0.0.1:{port}/")
        assert r.exit_code in (3, 6)
        assert r.stdout == ""
        assert r.stderr.startswith("iotctl: error: GET http://127.0.0.1:")


def test_endless_event_stream_is_read_with_bounded_memory():
    from tests.helpers import clean_env, PEAK_RSS_PROGRAM

    with fake_server(endless_events) as port:
        done = subprocess.run([sys.executable, "-c", PEAK_RSS_PROGRAM, "http", "get", f"http://127.0.0.1:{port}/",
                               "--stream", "-C", "50000"], capture_output=True, env=clean_env(), timeout=120)
        err = done.stderr.decode()
        assert done.returncode == 0, err
        lines = done.stdout.splitlines()
        assert lines[:3] == [b"0", b"1", b"2"] and len(lines) == 50000
        assert lines[-1] == b"49999"
    peak = int(err.split("peak-rss-kib ")[1].split()[0])
    # the server writes as fast as it can: the reader holds at most 1,000 events for the output
    assert peak < 200 * 1024, peak


def test_event_without_line_end_is_bounded(iotctl):
    with fake_server(no_line_end) as port:
        r = iotctl("http", "get", f"http://127.0.0.1:{port}/", "--stream", "--max-size", "1M", "-W", "20")
        assert r.exit_code == 6
        assert "larger than 1 MiB" in r.stderr or "longer than 1 MiB" in r.stderr


# --------------------------------------------------------------------------- URL endpoints


def test_resolver_sink_and_source_from_urls(peer, tmp_path):
    peer("nginx")
    from iotctl import resolver, send
    from iotctl.message import Message

    target = resolver.resolve(f"{BASE}/echo?x=1#method=put&header=X-A:%201", "sink")
    assert target.name == "http" and target.arguments["method"] == "put"
    responses = []
    with resolver.sink(f"{BASE}/echo#method=post") as sender:
        sender.on_response = responses.append
        result = send.run(sender, iter([Message("", "", b"one"), Message("", "", b"two")]), "bridge")
    assert result.acknowledged == 2
    assert [r.body for r in responses] == [b"one", b"two"]
    assert dict(responses[0].headers)["X-Echo-Method"] == "POST"
    with resolver.sink(f"{BASE}/echo#method=put&json=true&header=X-A:%201") as sender:
        sender.on_response = responses.append
        send.run(sender, iter([Message("", "", b'{"a": 1}')]), "bridge")
    echoed = dict(responses[-1].headers)
    assert (echoed["X-Echo-Method"], echoed["X-Echo-Content-Type"]) == ("PUT", "application/json")
    from iotctl import receive

    with resolver.source(f"{BASE}/ndjson") as source:
        got = []
        while True:
            batch = source.poll(5)
            if batch is None:
                break
            got += batch
    assert [m.payload for m in got] == [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']
    del receive


def test_url_errors_are_one_line(iotctl):
    from iotctl import resolver
    from iotctl.errors import UsageError

    with pytest.raises(UsageError) as info:
        resolver.resolve("http://127.0.0.1/x#metod=put", "sink")
    assert "unknown option 'metod'" in str(info.value) and "method" in str(info.value)
    with pytest.raises(UsageError):
        resolver.resolve("http+listen://127.0.0.1:8080/", "sink")
    with pytest.raises(UsageError) as info:
        resolver.resolve("http://u:topsecret@127.0.0.1/x#header=X-A", "sink")
    assert "topsecret" not in str(info.value)


def test_listen_url_is_a_source():
    from tests.helpers import free_port
    from iotctl import resolver

    port = free_port(socket.SOCK_STREAM)
    target = resolver.resolve(f"http+listen://127.0.0.1:{port}/hooks#max_pending=5", "source")
    assert target.arguments["bind"] == "127.0.0.1" and target.arguments["port"] == port
    assert target.arguments["path"] == "/hooks" and target.arguments["max_pending"] == 5
    with target.open() as listener:
        import subprocess

        proc = subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--data", "hi",
                                 f"http://127.0.0.1:{port}/hooks/x"], stdout=subprocess.PIPE)
        batch = []
        deadline = time.monotonic() + 10
        while not batch and time.monotonic() < deadline:
            batch = listener.poll(1)
        assert [m.payload for m in batch] == [b"hi"]
        listener.ack(batch)
        assert proc.communicate(timeout=10)[0] == b"204"


def test_foreign_message_adopted_at_one_place(iotctl, peer, tmp_path):
    """An MQTT capture replayed into HTTP: content type, user properties as headers (only
    valid ones), correlation data and response topic cross; QoS, retain and topic do not."""
    peer("nginx")
    capture = tmp_path / "mqtt.jsonl"
    env = {"ts": "2026-01-02T03:04:05+00:00", "protocol": "mqtt", "address": "sensors/t1",
           "payload": '{"t": 21.5}', "encoding": "utf-8", "content_type": None,
           "meta": {"qos": 1, "retain": True, "properties": {
               "content_type": "application/json", "correlation_data": "req-7", "response_topic": "replies/1",
               "user_properties": [["trace-id", "abc"], ["bad name", "x"], ["x-evil", "a\r\nInjected: 1"],
                                   ["Host", "evil.example"], ["unit", "C"]]}}}
    capture.write_text(json.dumps(env) + "\n")
    r = iotctl("http", "request", "--replay", str(capture), f"{BASE}/headers")
    assert r.exit_code == 0, r.stderr
    head = r.stdout_bytes.decode()
    assert head.startswith("POST /headers HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n")
    for line in ("trace-id: abc", "unit: C", "Content-Type: application/json", "X-Correlation-ID: req-7",
                 "X-Reply-To: replies/1"):
        assert line + "\r\n" in head
    for junk in ("bad name", "Injected", "evil.example", "qos", "retain", "sensors/t1"):
        assert junk not in head


def test_http_capture_replays_with_its_method_and_headers(iotctl, peer, tmp_path):
    peer("nginx")
    capture = tmp_path / "hooks.jsonl"
    env = {"protocol": "http", "address": "/hook", "payload": "body", "content_type": "text/plain",
           "meta": {"method": "PUT", "path": "/hook", "query": "", "headers": [
               ["Host", "old:1"], ["X-GitHub-Event", "push"], ["Content-Length", "99"], ["Authorization", "Basic ****"]]}}
    capture.write_text(json.dumps(env) + "\n")
    r = iotctl("http", "request", "--replay", str(capture), f"{BASE}/headers")
    head = r.stdout_bytes.decode()
    assert head.startswith("PUT /headers HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n")
    assert "X-GitHub-Event: push\r\n" in head and "Content-Type: text/plain\r\n" in head
    assert "Content-Length: 4\r\n" in head and "Authorization" not in head and "old:1" not in head


def test_http_message_portable_reader():
    from iotctl.message import Message, foreign

    msg = Message("http", "/x", b"{}", None, {"headers": [["Content-Type", "application/json"], ["X-Correlation-ID", "c1"],
                                                        ["X-Reply-To", "r/1"], ["X-A", "1"], ["Date", "today"],
                                                        ["Connection", "close"]]})
    found = foreign(msg, "mqtt")
    assert found.content_type == "application/json"
    assert found.headers == [("X-A", "1")]
    assert (found.correlation_id, found.reply_to) == (b"c1", "r/1")


def test_stream_reconnects_with_last_event_id(iotctl):
    heads = []

    def flaky(conn, stop):
        head = read_head(conn)
        heads.append(head)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        if len(heads) == 1:
            body = b"id: 1\ndata: a\n\nid: 2\ndata: b\n\n"
            conn.sendall(b"%x\r\n%s\r\n" % (len(body), body))
            return  # closed without the last chunk: the connection broke
        body = b"id: 3\ndata: c\n\n"
        conn.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))

    with fake_server(flaky) as port:
        r = iotctl("http", "get", f"http://127.0.0.1:{port}/ev", "--stream", "-C", "3", "--reconnect", "-W", "20")
        assert (r.exit_code, r.stdout) == (0, "a\nb\nc\n"), r.stderr
        assert "reconnected" in r.stderr
        assert b"Last-Event-ID: 2\r\n" in heads[1] and b"Last-Event-ID" not in heads[0]
    heads.clear()
    with fake_server(flaky) as port:
        r = iotctl("http", "get", f"http://127.0.0.1:{port}/ev", "--stream", "-C", "3")
        assert r.exit_code == 3 and r.stdout == "a\nb\n"


def test_a_kept_alive_connection_closed_by_the_server_is_replaced(iotctl_proc):
    """The server answers one request per connection and closes it without saying so:
    the next request goes on a new connection, nothing is lost or sent twice."""
    seen = []

    def one_then_close(conn, stop):
        head = read_head(conn)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]) if b"content-length" in head.lower() else 0
        body = head.split(b"\r\n\r\n", 1)[1]
        while len(body) < length:
            body += conn.recv(4096)
        seen.append(body)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    with fake_server(one_then_close) as port:
        done = iotctl_proc("http", "post", f"http://127.0.0.1:{port}/", "-l", input=b"a\nb\nc\n")
        assert done.returncode == 0, done.stderr
        assert done.stdout == b"a\nb\nc\n"
        assert seen == [b"a", b"b", b"c"]


def test_server_closing_without_an_answer_exits_3(iotctl):
    def hang_up(conn, stop):
        read_head(conn)

    with fake_server(hang_up) as port:
        r = iotctl("http", "get", f"http://127.0.0.1:{port}/")
        assert r.exit_code == 3
        assert "the server closed the connection without answering" in r.stderr

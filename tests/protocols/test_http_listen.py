"""`iotctl http listen` driven by curl (a client not written here) and by raw sockets for
the hostile cases; `http get --stream` against nginx's event and NDJSON streams."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.helpers import clean_env, free_port, wait_port

BASE = "http://127.0.0.1:18080"


def start_listen(*args, port=None, stdout=subprocess.PIPE):
    port = port or free_port(socket.SOCK_STREAM)
    proc = subprocess.Popen([sys.executable, "-m", "iotctl", "http", "listen", "-p", str(port), *args],
                            stdout=stdout, stderr=subprocess.PIPE, env=clean_env())
    try:
        wait_port("127.0.0.1", port, 15)
    except AssertionError:
        proc.kill()
        raise AssertionError(proc.communicate()[1].decode())
    return proc, port


def curl(*args, timeout=20) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-s", "-S", *args], capture_output=True, timeout=timeout)


def finish(proc, timeout=20):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err.decode()


def test_curl_post_is_a_message_answered_204_after_write():
    proc, port = start_listen("-C", "2", "-o", "jsonl")
    try:
        r = curl("-i", "-X", "POST", "-H", "Content-Type: application/json", "-H", "X-Trace: t1",
                 "--data-binary", '{"a": 1}', f"http://127.0.0.1:{port}/hooks/github?x=1")
        assert r.stdout.startswith(b"HTTP/1.1 204 No Content\r\n")
        r = curl("-i", "-u", "me:secret-pw", f"http://127.0.0.1:{port}/two")
        assert r.stdout.startswith(b"HTTP/1.1 204")
        code, out, err = finish(proc)
    finally:
        proc.kill()
    assert code == 0, err
    first, second = [json.loads(line) for line in out.splitlines()]
    assert first["payload"] == '{"a": 1}' and first["content_type"] == "application/json"
    assert first["address"] == "/hooks/github"
    meta = first["meta"]
    assert (meta["method"], meta["path"], meta["query"], meta["http_version"]) == ("POST", "/hooks/github", "x=1", "1.1")
    assert ["X-Trace", "t1"] in meta["headers"]
    assert meta["remote"].startswith("127.0.0.1:")
    assert second["meta"]["method"] == "GET"
    assert ["Authorization", "Basic ****"] in second["meta"]["headers"]
    assert "secret-pw" not in out.decode() and "bWU6c2VjcmV0LXB3" not in out.decode()


def test_not_written_means_503_and_path_filter_404():
    proc, port = start_listen("-C", "1", "--path", "/hooks", "-o", "raw")
    try:
        assert curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/other").stdout == b"404"
        assert curl("-o", "/dev/null", "-w", "%{http_code}", "--data", "one",
                    f"http://127.0.0.1:{port}/hooks/a").stdout == b"204"
        code, out, err = finish(proc)
    finally:
        proc.kill()
    assert (code, out) == (0, b"one\n")


def test_output_gone_answers_503():
    """stdout's reader goes away: the request is not acknowledged (503), and listen ends."""
    port = free_port(socket.SOCK_STREAM)
    proc = subprocess.Popen(f"{sys.executable} -m iotctl http listen -p {port} -o raw | head -c 0",
                            shell=True, stderr=subprocess.PIPE, env=clean_env())
    try:
        wait_port("127.0.0.1", port, 15)
        codes = set()
        for i in range(5):
            r = curl("-o", "/dev/null", "-w", "%{http_code}", "--data", "x" * 70000, f"http://127.0.0.1:{port}/")
            codes.add(r.stdout)
            if b"503" in codes:
                break
        assert b"503" in codes
    finally:
        proc.kill()
        proc.wait()


def test_body_over_max_size_is_413(tmp_path):
    proc, port = start_listen("--max-size", "1k", "-W", "5", "-C", "1", "-o", "raw")
    try:
        r = curl("-o", "/dev/null", "-w", "%{http_code}", "--data-binary", "x" * 2000, f"http://127.0.0.1:{port}/")
        assert r.stdout == b"413"
        chunked = curl("-o", "/dev/null", "-w", "%{http_code}", "-H", "Transfer-Encoding: chunked",
                       "--data-binary", "y" * 3000, f"http://127.0.0.1:{port}/")
        assert chunked.stdout == b"413"
        assert curl("-o", "/dev/null", "-w", "%{http_code}", "--data", "ok", f"http://127.0.0.1:{port}/").stdout == b"204"
        code, out, err = finish(proc)
    finally:
        proc.kill()
    assert (code, out) == (0, b"ok\n")
    assert "413 POST / from 127.0.0.1" in err


def test_ten_mib_body_with_max_size(tmp_path):
    big = tmp_path / "big.bin"
    data = bytes(range(256)) * (10 * 4096)
    big.write_bytes(data)
    save = tmp_path / "got.jsonl"
    printed = tmp_path / "out.hex"
    with open(printed, "wb") as sink:  # a file, not a pipe: nobody reads a pipe before curl returns
        proc, port = start_listen("--max-size", "11M", "-C", "1", "-o", "hex", "--save", str(save), stdout=sink)
        try:
            r = curl("-o", "/dev/null", "-w", "%{http_code}", "--data-binary", f"@{big}",
                     f"http://127.0.0.1:{port}/up", timeout=60)
            assert r.stdout == b"204"
            code, _, err = finish(proc, 60)
        finally:
            proc.kill()
    assert code == 0, err
    assert bytes.fromhex(printed.read_text().strip()) == data
    import base64

    assert base64.b64decode(json.loads(save.read_text())["payload"]) == data


def test_thousand_concurrent_requests_are_bounded_and_none_lost():
    """1,000 connections at once: every request gets 204 (and was printed exactly once)
    or 503 (not printed); past --max-connections/--max-pending the rest are refused
    fast; the listener stays up and answers afterwards."""
    proc, port = start_listen("-o", "raw", "--max-pending", "50", "--max-connections", "300")
    results: list[bytes] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                body = b"msg-%04d" % i
                s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                          % (len(body), body))
                data = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            status = data[9:12]
        except OSError:
            status = b"err"
        with lock:
            results.append((i, status))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(1000)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    took = time.monotonic() - started
    try:
        assert curl("-o", "/dev/null", "-w", "%{http_code}", "--data", "after", f"http://127.0.0.1:{port}/").stdout == b"204"
        time.sleep(0.5)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    statuses = [s for _, s in results]
    assert len(results) == 1000 and set(statuses) <= {b"204", b"503"}, set(statuses)
    printed = out.split(b"\n")[:-1]
    ok = sorted(b"msg-%04d" % i for i, s in results if s == b"204")
    assert sorted(p for p in printed if p != b"after") == ok  # every 204 printed once, no 503 printed
    assert len(ok) >= 50 and took < 60


def test_stream_sse_from_nginx(iotctl, peer):
    peer("nginx")
    r = iotctl("http", "get", f"{BASE}/sse", "--stream", "-o", "jsonl")
    assert r.exit_code == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert [e["payload"] for e in events] == ['{"t": 21.5}', "line one\nline two", "third"]
    assert [e["meta"]["event"] for e in events] == ["reading", "message", "message"]
    assert events[0]["meta"]["id"] == "1" and events[0]["meta"]["retry"] == 1000
    assert events[2]["meta"]["id"] == "2"  # the last event id is kept


def test_stream_ndjson_and_static_files(iotctl, peer):
    peer("nginx")
    r = iotctl("http", "get", f"{BASE}/ndjson", "--stream")
    assert (r.exit_code, r.stdout) == (0, '{"n": 1}\n{"n": 2}\n{"n": 3}\n')
    r = iotctl("http", "get", f"{BASE}/files/events.sse", "--stream", "-o", "text")
    assert r.stdout.splitlines() == [f"{BASE}/files/events.sse one", f"{BASE}/files/events.sse two"]


def test_stream_count_timeout_and_idle(iotctl, peer):
    peer("nginx")
    started = time.monotonic()
    r = iotctl("http", "get", f"{BASE}/sse/slow", "--stream", "-C", "2")
    assert (r.exit_code, r.stdout) == (0, "first\nsecond\n")
    r = iotctl("http", "get", f"{BASE}/sse/slow", "--stream", "-C", "3", "-W", "1.5")
    assert r.exit_code == 5 and "received 2 of 3" in r.stderr
    r = iotctl("http", "get", f"{BASE}/sse/slow", "--stream", "--idle-timeout", "1")
    assert (r.exit_code, r.stdout) == (0, "first\nsecond\n")
    assert time.monotonic() - started < 15


def test_stream_error_status_exits_6(iotctl, peer):
    peer("nginx")
    r = iotctl("http", "get", f"{BASE}/status/404", "--stream")
    assert r.exit_code == 6 and "404" in r.stderr


def test_listen_timeout_without_requests_exits_5_and_port_in_use_exits_3():
    proc, port = start_listen("-W", "1")
    code, out, err = finish(proc)
    assert code == 5 and "no request within 1 s" in err
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    try:
        done = subprocess.run([sys.executable, "-m", "iotctl", "http", "listen", "-p", str(blocker.getsockname()[1])],
                              capture_output=True, env=clean_env(), timeout=30)
        assert done.returncode == 3
        assert b"already in use" in done.stderr
    finally:
        blocker.close()

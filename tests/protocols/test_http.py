"""`iotctl http get|head|post|put|patch|delete|request` against a real server: Debian's
nginx (scripts/services up nginx), its locations described in scripts/services.d/50-nginx.sh."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.conftest import CERTS, PEERS_DIR

BASE = "http://127.0.0.1:18080"
TLS = "https://localhost:18443"
STORE = PEERS_DIR / "nginx" / "store"


@pytest.fixture
def nginx(peer):
    peer("nginx")
    return BASE


def envelope(r):
    return json.loads(r.stdout)


def out(r) -> str:
    """stdout exactly as written (CRLF kept)."""
    return r.stdout_bytes.decode("utf-8")


# --------------------------------------------------------------------------- get and output


def test_get_prints_the_body_raw_when_piped(iotctl, nginx):
    r = iotctl("http", "get", f"{nginx}/hello")
    assert (r.exit_code, r.stdout, r.stderr) == (0, "hello\n\n", "")


def test_get_json_envelope_has_status_headers_version_timing(iotctl, nginx):
    r = iotctl("http", "get", f"{nginx}/json", "-o", "json")
    assert r.exit_code == 0, r.stderr
    env = envelope(r)
    assert env["protocol"] == "http"
    assert env["address"] == f"{nginx}/json"
    assert json.loads(env["payload"]) == {"ok": True, "n": 1}
    assert env["content_type"] == "application/json"
    meta = env["meta"]
    assert (meta["method"], meta["status"], meta["reason"], meta["http_version"]) == ("GET", 200, "OK", "1.1")
    assert ["Content-Type", "application/json"] in meta["headers"]
    assert set(meta["timing"]) == {"connect_ms", "response_ms", "total_ms"}


def test_httpie_localhost_shorthand(iotctl, nginx):
    r = iotctl("http", "get", ":18080/hello", "-o", "json")
    assert r.exit_code == 0, r.stderr
    assert envelope(r)["address"] == "http://localhost:18080/hello"


def test_request_headers_sent_and_defaults_removed(iotctl, nginx):
    r = iotctl("http", "get", f"{nginx}/headers", "-H", "X-Trace: abc 1", "-H", "Accept: text/plain",
               "-H", "User-Agent:", "-H", "X-Empty;")
    assert r.exit_code == 0, r.stderr
    head = out(r)
    assert head.startswith("GET /headers HTTP/1.1\r\n")
    assert "X-Trace: abc 1\r\n" in head
    assert "Accept: text/plain\r\n" in head and "Accept: */*" not in head
    assert "User-Agent" not in head
    assert "X-Empty: \r\n" in head or "X-Empty:\r\n" in head


@pytest.mark.parametrize("bad", ["X-A: one\r\nX-Injected: 1", "X-A: a\x00b", "Bad Name: x", "X-A\nB: 1", "nocolon"])
def test_header_with_control_characters_or_bad_name_is_usage_error(iotctl, bad):
    r = iotctl("http", "get", "http://127.0.0.1:9/x", "-H", bad)
    assert r.exit_code == 2
    assert r.stderr.startswith("iotctl: error: ") and "Traceback" not in r.stderr


def test_head_prints_nothing_raw_and_headers_with_include(iotctl, nginx):
    r = iotctl("http", "head", f"{nginx}/files/10m.bin")
    assert (r.exit_code, r.stdout) == (0, "")
    r = iotctl("http", "head", f"{nginx}/files/10m.bin", "-i")
    assert r.exit_code == 0
    assert out(r).startswith("HTTP/1.1 200 OK\r\n") and "Content-Length: 10485760\r\n" in out(r)


def test_query_belongs_to_the_server(iotctl, nginx):
    r = iotctl("http", "get", f"{nginx}/headers?a=1&b=two")
    assert r.stdout.startswith("GET /headers?a=1&b=two HTTP/1.1")


# --------------------------------------------------------------------------- status codes and exit codes


@pytest.mark.parametrize("code,exit_code", [(400, 6), (403, 6), (404, 6), (418, 6), (500, 6), (503, 6), (401, 4)])
def test_error_status_exits_6_or_4_with_one_line(iotctl, nginx, code, exit_code):
    r = iotctl("http", "get", f"{nginx}/status/{code}")
    assert r.exit_code == exit_code
    assert r.stdout == ""
    first = r.stderr.splitlines()[0]
    assert first.startswith(f"iotctl: error: GET {nginx}/status/{code}: {code} ")
    assert f"status {code}" in first  # the start of the body says why


def test_error_status_body_still_printed_with_json(iotctl, nginx):
    r = iotctl("http", "get", f"{nginx}/status/404", "-o", "jsonl")
    assert r.exit_code == 6
    env = json.loads(r.stdout)
    assert env["meta"]["status"] == 404 and env["payload"] == "status 404: no such thing\n"


def test_204_and_201(iotctl, nginx):
    assert iotctl("http", "get", f"{nginx}/status/204").exit_code == 0
    r = iotctl("http", "post", f"{nginx}/status/201", "-o", "json")
    assert r.exit_code == 0 and envelope(r)["meta"]["status"] == 201


def test_connection_refused_exits_3(iotctl):
    from tests.helpers import free_port
    import socket

    port = free_port(socket.SOCK_STREAM)
    r = iotctl("http", "get", f"http://127.0.0.1:{port}/")
    assert r.exit_code == 3
    assert r.stderr.startswith(f"iotctl: error: cannot connect to http://127.0.0.1:{port}: connection refused")


def test_slow_server_exits_5_within_timeout(iotctl, nginx):
    import time

    started = time.monotonic()
    r = iotctl("http", "get", f"{nginx}/slow", "-W", "1")
    assert r.exit_code == 5
    assert "no complete response within 1 s" in r.stderr
    assert time.monotonic() - started < 5


# --------------------------------------------------------------------------- bodies


def test_post_echo_body_and_content_type(iotctl, nginx):
    r = iotctl("http", "post", f"{nginx}/echo", "-m", "21.5 °C", "--content-type", "text/plain; charset=utf-8",
               "-o", "json")
    assert r.exit_code == 0, r.stderr
    env = envelope(r)
    assert env["payload"] == "21.5 °C"
    headers = dict(env["meta"]["headers"])
    assert headers["X-Echo-Content-Type"] == "text/plain; charset=utf-8"
    assert headers["X-Echo-Method"] == "POST"


def test_json_shorthand_checks_and_sets_headers(iotctl, nginx):
    r = iotctl("http", "post", f"{nginx}/echo", "--json", '{"a": [1, 2]}', "-o", "json")
    assert r.exit_code == 0, r.stderr
    env = envelope(r)
    assert env["payload"] == '{"a":[1,2]}'
    assert dict(env["meta"]["headers"])["X-Echo-Content-Type"] == "application/json"
    r = iotctl("http", "post", f"{nginx}/headers", "-j", '{"a": 1}')
    assert "Accept: application/json, */*;q=0.5\r\n" in out(r) and "Content-Length: 7\r\n" in out(r)
    r = iotctl("http", "post", f"{nginx}/echo", "--json", "{not json")
    assert r.exit_code == 2


def test_patch_with_encode_and_httpies_follow(iotctl, nginx):
    """Issue 16 item 1: `patch` is sent as PATCH; `--encode cbor` sends the JSON text as CBOR
    with its content type; httpie's `--follow` is `-L` (a 307 keeps method and body)."""
    r = iotctl("http", "patch", f"{nginx}/echo", "-m", '{"rate": 5}', "--encode", "cbor", "-o", "json")
    assert r.exit_code == 0, r.stderr
    env = envelope(r)
    assert env["payload"] == "oWRyYXRlBQ==" and env["encoding"] == "base64", env   # a1 64 'rate' 05
    headers = dict(env["meta"]["headers"])
    assert (headers["X-Echo-Method"], headers["X-Echo-Content-Type"]) == ("PATCH", "application/cbor")
    r = iotctl("http", "patch", f"{nginx}/redirect/307", "-m", "kept", "--follow", "-o", "json")
    assert r.exit_code == 0, r.stderr
    env = envelope(r)
    assert (env["address"], env["payload"], dict(env["meta"]["headers"])["X-Echo-Method"]) == (
        f"{nginx}/echo", "kept", "PATCH"), env


def test_put_arrives_on_disk_then_get_and_delete(iotctl, nginx):
    name = f"t-{uuid.uuid4().hex[:10]}.json"
    url = f"{nginx}/store/{name}"
    r = iotctl("http", "put", url, "-m", '{"rate": 5}')
    assert r.exit_code == 0, r.stderr
    assert (STORE / name).read_bytes() == b'{"rate": 5}'
    assert iotctl("http", "get", url).stdout == '{"rate": 5}\n'
    assert iotctl("http", "delete", url).exit_code == 0
    assert not (STORE / name).exists()
    assert iotctl("http", "get", url).exit_code == 6


def test_ten_mib_body_both_ways(iotctl, nginx, tmp_path):
    big = PEERS_DIR / "nginx" / "www" / "files" / "10m.bin"
    r = iotctl("http", "get", f"{nginx}/files/10m.bin", "-o", "json")
    assert r.exit_code == 0, r.stderr[:300]
    import base64

    env = envelope(r)
    assert env["encoding"] == "base64"
    assert base64.b64decode(env["payload"]) == big.read_bytes()
    name = f"t-{uuid.uuid4().hex[:10]}.bin"
    r = iotctl("http", "put", f"{nginx}/store/{name}", "-f", str(big))
    assert r.exit_code == 0, r.stderr
    try:
        assert (STORE / name).read_bytes() == big.read_bytes()
    finally:
        iotctl("http", "delete", f"{nginx}/store/{name}")


def test_max_size_bounds_the_response(iotctl, nginx):
    r = iotctl("http", "get", f"{nginx}/files/10m.bin", "--max-size", "1M")
    assert r.exit_code == 6
    assert "larger than --max-size 1 MiB" in r.stderr


def test_lines_are_a_request_each_on_one_connection(iotctl_proc, nginx):
    done = iotctl_proc("http", "post", f"{nginx}/echo", "-l", "-o", "jsonl", input=b"one\ntwo\nthree\n")
    assert done.returncode == 0, done.stderr
    envs = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["payload"] for e in envs] == ["one", "two", "three"]
    assert envs[0]["meta"]["timing"]["connect_ms"] > 0
    assert all(e["meta"]["timing"]["connect_ms"] == 0.0 for e in envs[1:])  # the connection was kept


def test_a_refusal_stops_and_reaches_failed(iotctl_proc, nginx, tmp_path):
    failed = tmp_path / "rest.jsonl"
    done = iotctl_proc("http", "put", f"{nginx}/status/404", "-l", "--failed", str(failed), input=b"a\nb\nc\n")
    assert done.returncode == 6
    err = done.stderr.decode()
    assert "404 Not Found" in err and "refused 1" in err
    rest = [json.loads(line) for line in failed.read_text().splitlines()]
    assert [m["payload"] for m in rest] == ["a", "b", "c"]
    assert {m["protocol"] for m in rest} == {"http"}


# --------------------------------------------------------------------------- redirects


def test_redirect_not_followed_without_L(iotctl, nginx):
    r = iotctl("http", "get", f"{nginx}/redirect/1", "-o", "json")
    assert r.exit_code == 0
    assert envelope(r)["meta"]["status"] == 302
    assert "302 Moved Temporarily: Location: http://127.0.0.1:18080/hello (-L follows it)" in r.stderr


def test_redirects_followed(iotctl, nginx):
    r = iotctl("http", "get", f"{nginx}/redirect/2", "-L", "-o", "json")
    assert r.exit_code == 0, r.stderr
    env = envelope(r)
    assert env["payload"] == "hello\n" and env["address"] == f"{nginx}/hello"
    assert [h["status"] for h in env["meta"]["redirects"]] == [301, 302]


def test_redirect_303_becomes_get_and_307_keeps_post(iotctl, nginx):
    assert iotctl("http", "post", f"{nginx}/redirect/303", "-m", "x", "-L").stdout == "GET\n\n"
    r = iotctl("http", "post", f"{nginx}/redirect/307", "-m", "kept", "-L")
    assert r.stdout == "kept\n"


def test_redirect_loop_is_bounded(iotctl, nginx):
    r = iotctl("http", "get", f"{nginx}/redirect/loop", "-L", "--max-redirects", "5")
    assert r.exit_code == 6 and "more than 5 redirects" in r.stderr


def test_credentials_not_sent_to_another_host(iotctl, nginx):
    r = iotctl("http", "get", f"{nginx}/redirect/other-host", "-L", "-u", "iotctl:iotctl-secret")
    assert r.exit_code == 0, r.stderr
    assert out(r).startswith("GET /headers HTTP/1.1\r\nHost: localhost:18080")
    assert "Authorization" not in r.stdout


# --------------------------------------------------------------------------- auth


def test_basic_auth_from_options_url_and_profile(iotctl, nginx):
    assert iotctl("http", "get", f"{nginx}/basic", "-u", "iotctl", "-P", "iotctl-secret").stdout == "user=iotctl\n\n"
    assert iotctl("http", "get", f"{nginx}/basic", "-u", "iotctl:iotctl-secret").exit_code == 0
    r = iotctl("http", "get", "http://iotctl:iotctl-secret@127.0.0.1:18080/basic")
    assert r.exit_code == 0, r.stderr
    assert iotctl("profile", "add", "web", "http.username=iotctl", "http.password_env=WEB_PW").exit_code == 0
    r = iotctl("--profile", "web", "http", "get", f"{nginx}/basic", env={"WEB_PW": "iotctl-secret"})
    assert (r.exit_code, r.stdout) == (0, "user=iotctl\n\n")


def test_wrong_password_exits_4_and_never_shows_it(iotctl, nginx):
    r = iotctl("http", "get", "http://iotctl:wrong-pw-123@127.0.0.1:18080/basic", "-d")
    assert r.exit_code == 4
    assert "wrong-pw-123" not in r.stderr and "wrong-pw-123" not in r.stdout
    assert "Authorization: Basic ****" in r.stderr  # the -d trace masks it


def test_bearer_token_option_and_profile(iotctl, nginx):
    assert iotctl("http", "get", f"{nginx}/bearer").exit_code == 4
    assert iotctl("http", "get", f"{nginx}/bearer", "--token", "iotctl-token").stdout == "bearer ok\n\n"
    iotctl("profile", "add", "tok", "http.token=iotctl-token")
    shown = iotctl("profile", "show", "tok")
    assert "iotctl-token" not in shown.stdout
    assert iotctl("--profile", "tok", "http", "get", f"{nginx}/bearer").exit_code == 0


# --------------------------------------------------------------------------- TLS


def test_tls_with_cafile_and_client_certificate(iotctl, nginx):
    ca = str(CERTS / "ca.crt")
    r = iotctl("http", "get", f"{TLS}/hello", "--cafile", ca)
    assert (r.exit_code, r.stdout) == (0, "hello\n\n")
    assert iotctl("http", "get", f"{TLS}/mtls", "--cafile", ca).exit_code == 6
    r = iotctl("http", "get", f"{TLS}/mtls", "--cafile", ca, "--cert", str(CERTS / "client.crt"),
               "--key", str(CERTS / "client.key"))
    assert r.exit_code == 0 and "iotctl-test-client" in r.stdout


def test_tls_unknown_ca_exits_7_and_insecure_warns(iotctl, nginx):
    r = iotctl("http", "get", f"{TLS}/hello")
    assert r.exit_code == 7 and "certificate verification failed" in r.stderr
    r = iotctl("http", "get", f"{TLS}/hello", "--insecure")
    assert r.exit_code == 0
    assert "iotctl: warning: --insecure" in r.stderr


# --------------------------------------------------------------------------- imports


def test_http_get_imports_h11_and_no_other_protocol_library(nginx):
    import subprocess
    import sys

    probe = ("import sys, json; from iotctl.cli import run; code = run(['http', 'get', %r]); "
             "sys.stderr.write(json.dumps({'code': code, 'mods': sorted({m.split('.')[0] for m in sys.modules})}))"
             % f"{BASE}/hello")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    result = json.loads(done.stderr.strip().splitlines()[-1])
    code, mods = result["code"], set(result["mods"])
    assert code == 0
    assert "h11" in mods
    assert not mods & {"paho", "aiocoap", "pika", "slixmpp", "stomp", "cbor2", "rich"}


def test_readme_section_exists():
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "\n## HTTP\n" in text and "What differs from httpie" in text


def test_stdin_body_and_password_never_in_the_envelope(iotctl, nginx):
    r = iotctl("http", "post", "http://iotctl:iotctl-secret@127.0.0.1:18080/echo", "-s", "-o", "json",
               input=b"from stdin\n")
    assert r.exit_code == 0, r.stderr
    env = envelope(r)
    assert env["payload"] == "from stdin\n"
    assert "iotctl-secret" not in r.stdout and env["address"] == f"{nginx}/echo"


def test_profile_headers_and_base_url(iotctl, nginx, tmp_path):
    profile = tmp_path / "api.toml"
    profile.write_text(f'[http]\nbase_url = "{nginx}"\nheader = ["X-Team: blue"]\n')
    profile.chmod(0o600)
    r = iotctl("--profile", str(profile), "http", "get", "/headers")
    assert r.exit_code == 0, r.stderr
    assert "X-Team: blue\r\n" in out(r)

"""The coap group against real peers.

- libcoap's coap-server-notls on 127.0.0.1:5783 (`scripts/services up coap`);
- `iotctl coap serve` (started here on a free port) driven by libcoap's coap-client-notls
  and by iotctl itself;
- aiocoap's own forward proxy for --proxy.
Only 127.0.0.1 is ever contacted; multicast is tested for its error handling only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import clean_env, coap_answers, free_udp_tcp_port, stop

LIBCOAP_CLIENT = "coap-client-notls"


_free_port = free_udp_tcp_port
_ping = coap_answers


def _env() -> dict:
    return clean_env()


class Device:
    """A running `iotctl coap serve`."""

    def __init__(self, proc: subprocess.Popen, port: int, log: Path, files: Path):
        self.proc, self.port, self.log_path, self.files = proc, port, log, files
        self.uri = f"coap://127.0.0.1:{port}"

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, pattern: str, timeout: float = 3.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            text = self.log()
            if re.search(pattern, text):
                return text
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not in the serve log:\n{self.log()[-2000:]}")


def _start_serve(tmp: Path, *extra: str) -> Device:
    port = _free_port()
    files = tmp / "files"
    (files / "sub").mkdir(parents=True, exist_ok=True)
    (files / "config.json").write_text('{"rate": 5}\n')
    (files / "sub" / "hello.txt").write_text("hello from a file\n")
    log = tmp / f"serve-{port}.log"
    proc = subprocess.Popen([sys.executable, "-m", "iotctl", "coap", "serve", "-p", str(port), "--tcp",
                             "--dir", str(files), "--interval", "0.2", *extra],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"), env=_env())
    end = time.monotonic() + 10
    while not _ping(port):
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            pytest.fail(f"iotctl coap serve did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return Device(proc, port, log, files)


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> int:
    return stop(proc, sig, timeout=5)


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    dev = _start_serve(tmp_path_factory.mktemp("coap-serve"))
    yield dev
    _stop(dev.proc)


@pytest.fixture
def libcoap(peer) -> str:
    host, port = peer("coap-server")
    return f"coap://{host}:{port}"


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line]


def _one_error_line(stderr: str, *needles: str) -> None:
    lines = [line for line in stderr.splitlines()
             if not line.startswith(("iotctl: hint:", "iotctl: observing "))]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("iotctl: error: "), stderr
    for needle in needles:
        assert needle in lines[0], stderr
    assert "Traceback" not in stderr


def _coap_client(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    if shutil.which(LIBCOAP_CLIENT) is None:
        pytest.fail(f"{LIBCOAP_CLIENT} is missing; install libcoap3-bin (scripts/services up coap does)",
                    pytrace=False)
    return subprocess.run([LIBCOAP_CLIENT, *args], capture_output=True, timeout=timeout)


LIBCOAP_TIME = re.compile(r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d$")
ISO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def _large(size: int = 4096) -> bytes:
    lines, n = [], 0
    while sum(map(len, lines)) < size:
        lines.append(f"{n:06d} The quick brown fox jumps over the lazy dog.\n")
        n += 1
    return "".join(lines).encode()[:size]


# =========================================================================== libcoap's coap-server


def test_get_time_from_libcoap(iotctl, libcoap):
    r = iotctl("coap", "get", f"{libcoap}/time")
    assert r.exit_code == 0, r
    assert LIBCOAP_TIME.match(r.stdout.rstrip("\n")), r
    assert r.stdout.endswith("\n") and r.stdout.count("\n") == 1
    assert r.stderr == ""


def test_get_json_envelope_has_code_and_options(iotctl, libcoap):
    r = iotctl("coap", "get", f"{libcoap}/time", "-o", "json")
    assert r.exit_code == 0, r
    env = json.loads(r.stdout)
    assert env["protocol"] == "coap"
    assert env["address"] == f"{libcoap}/time"
    assert env["meta"]["code"] == "2.05 Content"
    assert env["meta"]["options"]["Max-Age"] == 1
    assert env["meta"]["type"] in ("ACK", "CON", "NON")
    assert LIBCOAP_TIME.match(env["payload"])


def test_observe_libcoap_time_prints_every_notification(iotctl_proc, libcoap):
    started = time.monotonic()
    r = iotctl_proc("coap", "observe", f"{libcoap}/time", "-C", "4", "-W", "15", "-o", "jsonl")
    assert r.returncode == 0, r.stderr
    envs = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert len(envs) == 4
    seqs = [e["meta"]["observe"] for e in envs]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4, seqs
    assert len({e["payload"] for e in envs}) >= 3  # a new time each second
    assert all(LIBCOAP_TIME.match(e["payload"]) for e in envs)
    assert time.monotonic() - started < 10


def test_observe_raw_lines(iotctl, libcoap):
    r = iotctl("coap", "observe", f"{libcoap}/time", "-C", "3", "-W", "10")
    assert r.exit_code == 0, r
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and all(LIBCOAP_TIME.match(x) for x in lines), r
    assert r.stderr == f"iotctl: observing {libcoap}/time\n"


def test_discover_libcoap(iotctl, libcoap):
    r = iotctl("coap", "discover", libcoap, "-o", "json")
    assert r.exit_code == 0, r
    env = json.loads(r.stdout)
    assert env["address"] == f"{libcoap}/.well-known/core"
    assert env["content_type"] == "application/link-format"
    time_link = next(link for link in env["meta"]["links"] if link["href"] == "/time")
    assert time_link["rt"] == "ticks" and time_link["if"] == "clock" and time_link["obs"] is True

    r = iotctl("coap", "discover", libcoap, "--rt", "ticks", "-o", "raw")
    assert r.exit_code == 0, r
    assert _lines(r.stdout) == ['</time>;if="clock";rt="ticks";title="Internal Clock";ct=0;obs'], r


def test_discover_table_in_pretty_mode(iotctl, libcoap):
    r = iotctl("coap", "discover", libcoap, "-o", "pretty")
    assert r.exit_code == 0, r
    assert "2.05 Content" in r.stdout
    row = next(line for line in r.stdout.splitlines() if line.startswith("/time "))
    assert row.split()[:5] == ["/time", "ticks", "clock", "0", "yes"], r.stdout


def test_put_creates_then_updates_a_libcoap_resource(iotctl, libcoap):
    uri = f"{libcoap}/iotctl-test-put"
    try:
        r = iotctl("coap", "put", uri, "-m", "first")
        assert r.exit_code == 0, r
        assert r.stdout == ""  # raw mode: an empty 2.01 prints nothing
        r = iotctl("coap", "put", uri, "second", "-o", "json")
        assert r.exit_code == 0, r
        assert json.loads(r.stdout)["meta"]["code"] == "2.04 Changed"
        r = iotctl("coap", "get", uri)
        assert (r.exit_code, r.stdout) == (0, "second\n"), r
    finally:
        iotctl("coap", "delete", uri)
    r = iotctl("coap", "get", uri)
    assert r.exit_code == 6


def test_not_found_exits_6_with_the_code_and_diagnostic(iotctl, libcoap):
    r = iotctl("coap", "get", f"{libcoap}/no-such-resource")
    assert r.exit_code == 6, r
    assert r.stdout == ""
    _one_error_line(r.stderr, f"GET {libcoap}/no-such-resource", "4.04 Not Found")


def test_non_confirmable_request(iotctl, libcoap):
    r = iotctl("coap", "get", f"{libcoap}/time", "--non", "-o", "json")
    assert r.exit_code == 0, r
    assert json.loads(r.stdout)["meta"]["type"] == "NON"


# =========================================================================== coap-client -> iotctl coap serve


def test_coap_client_gets_from_serve(device):
    r = _coap_client("-B", "5", f"{device.uri}/time")
    assert r.returncode == 0
    assert ISO_TIME.match(r.stdout.decode().strip()), r
    device.wait_log(r"CON GET /time -> 2\.05 Content")


def test_coap_client_observes_serve(device):
    r = _coap_client("-B", "5", "-s", "2", "-w", f"{device.uri}/sensors/temperature")
    values = [float(x) for x in r.stdout.decode().split()]
    assert len(values) >= 4, r  # the first response and notifications every 0.2 s
    device.wait_log(r"GET /sensors/temperature observe=0")


def test_coap_client_blockwise_get_from_serve(device):
    r = _coap_client("-B", "5", "-b", "64", f"{device.uri}/large")
    assert r.stdout.rstrip(b"\n") == _large(), r.stdout[-200:]
    device.wait_log(r"GET /large block2=63/0/64 -> 2\.05")


def test_coap_client_blockwise_put_to_serve(device, iotctl, tmp_path):
    data = os.urandom(3000).hex().encode()  # 6000 bytes
    src = tmp_path / "blob.txt"
    src.write_bytes(data)
    name = f"blob-{uuid.uuid4().hex[:6]}"
    r = _coap_client("-B", "5", "-m", "put", "-b", "128", "-t", "0", "-f", str(src), f"{device.uri}/store/{name}")
    assert r.returncode == 0, r
    device.wait_log(rf"PUT /store/{name} block1=46/0/128 -> 2\.01 Created")
    r = iotctl("coap", "get", f"{device.uri}/store/{name}")
    assert r.exit_code == 0 and r.stdout_bytes == data + b"\n", r


def test_coap_client_put_to_serve(device, iotctl):
    r = _coap_client("-B", "5", "-m", "put", "-e", "on", f"{device.uri}/actuators/led")
    assert r.returncode == 0
    assert iotctl("coap", "get", f"{device.uri}/actuators/led").stdout == "on\n"
    r = _coap_client("-B", "5", "-m", "put", "-e", "off", f"{device.uri}/actuators/led")
    assert iotctl("coap", "get", f"{device.uri}/actuators/led").stdout == "off\n"


# =========================================================================== iotctl -> iotctl coap serve


def test_content_negotiation(device, iotctl):
    uri = f"{device.uri}/sensors/temperature"
    r = iotctl("coap", "get", uri)
    assert r.exit_code == 0 and re.fullmatch(r"-?\d+\.\d\d\n", r.stdout), r
    r = iotctl("coap", "get", uri, "-A", "json")
    value = json.loads(r.stdout)
    assert value["n"] == "temperature" and value["u"] == "Cel" and isinstance(value["v"], float)
    r = iotctl("coap", "get", uri, "-A", "application/senml+json", "-o", "json")
    env = json.loads(r.stdout)
    assert env["content_type"] == "application/senml+json"
    assert json.loads(env["payload"])[0]["n"] == "temperature"
    r = iotctl("coap", "get", uri, "-A", "cbor", "-o", "pretty", env={"COLUMNS": "120"})  # room for ct=
    assert r.exit_code == 0 and "ct=application/cbor" in r.stdout and '"u": "Cel"' in r.stdout, r
    r = iotctl("coap", "get", uri, "-A", "60", "-o", "json")
    assert json.loads(r.stdout)["encoding"] == "base64"
    r = iotctl("coap", "get", uri, env={"IOTCTL_COAP_ACCEPT": "application/json"})
    assert json.loads(r.stdout)["u"] == "Cel", r
    r = iotctl("coap", "get", uri, "-A", "image/png")
    assert r.exit_code == 6 and "4.06 Not Acceptable" in r.stderr, r


def test_observe_serve_counts_and_deregisters(device, iotctl):
    r = iotctl("coap", "observe", f"{device.uri}/sensors/humidity", "-C", "5", "-W", "10", "-o", "jsonl")
    assert r.exit_code == 0, r
    envs = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(envs) == 5
    assert [e["meta"]["observe"] for e in envs] == sorted(e["meta"]["observe"] for e in envs)
    # RFC 7641 deregistration: a GET with Observe: 1 from the same client
    device.wait_log(r"GET /sensors/humidity observe=1 -> 2\.05")


def test_observe_duration_and_idle_timeout(device, iotctl):
    started = time.monotonic()
    r = iotctl("coap", "observe", f"{device.uri}/sensors/temperature", "--duration", "0.7")
    assert r.exit_code == 0, r
    assert 2 <= len(r.stdout.splitlines()) <= 8, r
    assert time.monotonic() - started < 5
    # the LED never changes by itself: idle timeout exits 5
    r = iotctl("coap", "observe", f"{device.uri}/actuators/led", "--idle-timeout", "0.5")
    assert r.exit_code == 5, r
    assert r.stdout in ("on\n", "off\n")
    _one_error_line(r.stderr, "no notification for 0.5 s")


def test_observe_count_not_reached_exits_5(device, iotctl):
    started = time.monotonic()
    r = iotctl("coap", "observe", f"{device.uri}/time", "-C", "50", "-W", "1.5")
    assert r.exit_code == 5, r
    assert 1 <= len(r.stdout.splitlines()) <= 3
    _one_error_line(r.stderr, "of 50 messages within 1.5 s")
    assert time.monotonic() - started < 5


def test_observe_a_store_entry_until_deleted(device, iotctl, iotctl_proc):
    uri = f"{device.uri}/store/watched-{uuid.uuid4().hex[:6]}"
    assert iotctl("coap", "put", uri, "v1").exit_code == 0
    proc = subprocess.Popen([sys.executable, "-m", "iotctl", "coap", "observe", uri, "-W", "10"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        device.wait_log(r"GET /store/watched-\w+ observe=0")
        assert iotctl("coap", "put", uri, "v2").exit_code == 0
        time.sleep(0.2)
        assert iotctl("coap", "delete", uri).exit_code == 0
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 6, err
    assert out.decode().splitlines() == ["v1", "v2"]
    _one_error_line(err.decode(), "the server ended the observation with 4.04 Not Found")


def test_observe_not_observable(device, iotctl):
    r = iotctl("coap", "observe", f"{device.uri}/large", "-C", "3")
    assert r.exit_code == 1, r
    assert r.stdout_bytes == _large() + b"\n"  # the representation is still printed
    _one_error_line(r.stderr, "not observable")


def test_observe_ctrl_c_is_success_and_deregisters(device):
    proc = subprocess.Popen([sys.executable, "-m", "iotctl", "coap", "observe", f"{device.uri}/time"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        first = proc.stdout.readline()
        assert ISO_TIME.match(first.decode().strip()), first
        device.wait_log(r"GET /time observe=0")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert b"Traceback" not in err
    device.wait_log(r"GET /time observe=1 -> 2\.05")


def test_blockwise_get_and_block_size(device, iotctl):
    r = iotctl("coap", "get", f"{device.uri}/large")
    assert r.exit_code == 0 and r.stdout_bytes == _large() + b"\n"
    r = iotctl("coap", "get", f"{device.uri}/large", "--block-size", "64")
    assert r.exit_code == 0 and r.stdout_bytes == _large() + b"\n"
    device.wait_log(r"GET /large block2=0/0/64 ")
    device.wait_log(r"GET /large block2=63/0/64 ")


def test_blockwise_put_from_iotctl(device, iotctl, tmp_path):
    data = ("x" * 70 + "\n") * 100  # 7100 bytes
    src = tmp_path / "payload.txt"
    src.write_text(data)
    uri = f"{device.uri}/store/big-{uuid.uuid4().hex[:6]}"
    r = iotctl("coap", "put", uri, "-f", str(src), "-t", "text/plain", "--block-size", "256")
    assert r.exit_code == 0, r
    device.wait_log(r"PUT /store/big-\w+ block1=27/0/256 -> 2\.01 Created")
    r = _coap_client("-B", "5", f"{uri}")
    assert r.stdout.rstrip(b"\n") == data.encode().rstrip(b"\n")


def test_put_encode_cbor_and_store_lifecycle(device, iotctl):
    uri = f"{device.uri}/store/cfg-{uuid.uuid4().hex[:6]}"
    r = iotctl("coap", "put", uri, "--encode", "cbor", "-m", '{"rate": 5, "on": true}')
    assert r.exit_code == 0, r
    r = iotctl("coap", "get", uri, "-o", "json")
    env = json.loads(r.stdout)
    assert env["content_type"] == "application/cbor" and env["meta"]["options"]["Content-Format"] == 60
    r = iotctl("coap", "get", uri, "-o", "pretty")
    assert '"rate": 5' in r.stdout and '"on": true' in r.stdout, r
    r = iotctl("coap", "delete", uri, "-o", "json")
    assert json.loads(r.stdout)["meta"]["code"] == "2.02 Deleted"
    r = iotctl("coap", "get", uri)
    assert r.exit_code == 6
    _one_error_line(r.stderr, "4.04 Not Found", "PUT creates it")


def test_post_creates_with_location(device, iotctl):
    r = iotctl("coap", "post", f"{device.uri}/store", "-t", "json", "-m", '{"x": 1}', "-o", "json")
    assert r.exit_code == 0, r
    env = json.loads(r.stdout)
    assert env["meta"]["code"] == "2.01 Created"
    store, name = env["meta"]["options"]["Location-Path"]
    r = iotctl("coap", "get", f"{device.uri}/{store}/{name}", "-o", "json")
    assert json.loads(r.stdout)["content_type"] == "application/json"


def test_lines_send_one_request_each(device, iotctl):
    uri = f"{device.uri}/store/lines-{uuid.uuid4().hex[:6]}"
    r = iotctl("coap", "put", uri, "-l", input="one\ntwo\nthree\n")
    assert r.exit_code == 0, r
    log = device.wait_log(r"PUT /store/lines-\w+ -> 2\.04.*\n(.*\n)*.*PUT /store/lines-\w+ -> 2\.04")
    assert len(re.findall(rf"PUT {uri.split(device.uri)[1]} -> 2\.0[14]", log)) == 3
    assert iotctl("coap", "get", uri).stdout == "three\n"


def test_led_rejects_bad_payload_with_diagnostic(device, iotctl):
    r = iotctl("coap", "put", f"{device.uri}/actuators/led", "maybe")
    assert r.exit_code == 6
    assert r.stdout == ""
    _one_error_line(r.stderr, f"PUT {device.uri}/actuators/led", "4.00 Bad Request", "expected on or off")
    r = iotctl("coap", "put", f"{device.uri}/actuators/led", "--encode", "json", "-m", "true")
    assert r.exit_code == 0
    assert iotctl("coap", "get", f"{device.uri}/actuators/led", "-A", "json").stdout == '{"on": true}\n'


def test_discover_serve_with_filters(device, iotctl):
    r = iotctl("coap", "discover", device.uri, "-o", "json")
    links = {link["href"]: link for link in json.loads(r.stdout)["meta"]["links"]}
    for path in ("/time", "/sensors/temperature", "/sensors/humidity", "/actuators/led", "/store", "/large",
                 "/files/config.json", "/files/sub/hello.txt"):
        assert path in links, links
    assert links["/sensors/temperature"]["obs"] is True
    assert links["/sensors/temperature"]["ct"] == "0 50 60 110 112"
    assert links["/large"]["sz"] == "4096"

    r = iotctl("coap", "discover", device.uri, "--rt", "temp*", "-o", "raw")
    assert r.exit_code == 0 and _lines(r.stdout) == [
        '</sensors/temperature>;rt="temperature-c";if="core.s";ct="0 50 60 110 112";obs;title="Temperature"'], r
    r = iotctl("coap", "discover", device.uri, "--if", "core.a", "-o", "text")
    assert _lines(r.stdout) == [f'{device.uri}/.well-known/core?if=core.a </actuators/led>;rt="light";'
                                'if="core.a";ct="0 50 60";obs;title="LED"'], r


def _table_rows(text: str) -> list[str]:
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("────"))
    return [line for line in lines[rule + 1:] if line.strip()]


def _links(iotctl, uri: str) -> list[str]:
    return [link["href"] for link in json.loads(iotctl("coap", "discover", uri, "-o", "json").stdout)["meta"]["links"]]


@pytest.mark.parametrize("columns", [80, 120])
def test_discover_pretty_fits_the_terminal_width(device, iotctl, columns):
    """Issue 22 item 1: at 80 columns the table drew 88-column lines and wrapped rt and
    title cells onto second rows."""
    r = iotctl("coap", "discover", device.uri, "-o", "pretty", env={"COLUMNS": str(columns)})
    assert r.exit_code == 0, r
    assert all(len(line) <= columns for line in r.stdout.splitlines()), r.stdout
    rows = {row.split()[0]: row for row in _table_rows(r.stdout)}
    assert list(rows) == _links(iotctl, device.uri), r.stdout  # one row per link, paths whole
    assert rows["/sensors/temperature"].split()[1:3] == ["temperature-c", "core.s"], r.stdout
    assert rows["/sensors/temperature"].split()[-1] == "Temperature"
    assert rows["/"].split()[-2:] == ["iotctl", "device"]
    assert ("sz=4096" in rows["/large"]) == (columns == 120), r.stdout  # 'other' gives way first


def test_discover_in_an_80_column_terminal(device, iotctl, tmp_path):
    """The same in a real terminal (tmux, 80x40): pretty by default, nothing wrapped."""
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed; run: scripts/services up tools", pytrace=False)
    socket_name = f"iotctl-test-{uuid.uuid4().hex[:8]}"
    script = tmp_path / "run.sh"
    script.write_text(f"{sys.executable} -m iotctl coap discover {device.uri} --rt '*'; echo END-OF-RUN; sleep 30\n")
    tmux = ["tmux", "-L", socket_name]
    env = {**_env(), "TERM": "xterm-256color"}
    env.pop("COLUMNS", None)
    subprocess.run([*tmux, "new-session", "-d", "-x", "80", "-y", "40", "bash", str(script)], check=True, env=env)
    try:
        end = time.monotonic() + 20
        while True:
            screen = subprocess.run([*tmux, "capture-pane", "-p", "-J"], capture_output=True, text=True).stdout
            if "END-OF-RUN" in screen or time.monotonic() > end:
                break
            time.sleep(0.1)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    assert "END-OF-RUN" in screen, screen
    text = screen.split("END-OF-RUN")[0]
    assert all(len(line) <= 80 for line in text.splitlines()), text
    rows = {row.split()[0]: row for row in _table_rows(text)}
    assert list(rows) == ["/time", "/sensors/temperature", "/sensors/humidity", "/actuators/led", "/store",
                          "/large"], text  # every link with an rt, one row each
    assert rows["/sensors/temperature"].split()[1] == "temperature-c", text
    assert rows["/sensors/temperature"].split()[-1] == "Temperature", text


def test_option_flag_sends_any_option(device, iotctl):
    # Uri-Query by number: the server filters /.well-known/core by it
    r = iotctl("coap", "get", f"{device.uri}/.well-known/core", "-O", "15=rt=light")
    assert r.exit_code == 0 and r.stdout.startswith("</actuators/led>;") and r.stdout.count("<") == 1, r
    r = iotctl("coap", "get", f"{device.uri}/.well-known/core", "-O", "Uri-Query=rt=nothing")
    assert (r.exit_code, r.stdout) == (0, ""), r  # an empty 2.05: nothing printed in raw mode
    r = iotctl("coap", "get", f"{device.uri}/.well-known/core", "-O", "15=0x72743d6c69676874")  # 'rt=light'
    assert r.stdout.startswith("</actuators/led>;"), r


def test_serve_files(device, iotctl):
    r = iotctl("coap", "get", f"{device.uri}/files/config.json", "-o", "json")
    env = json.loads(r.stdout)
    assert env["payload"] == '{"rate": 5}\n' and env["content_type"] == "application/json"
    r = iotctl("coap", "get", f"{device.uri}/files/sub/hello.txt")
    assert r.stdout == "hello from a file\n\n"
    r = iotctl("coap", "get", f"{device.uri}/files/..%2F..%2Fetc%2Fpasswd")
    assert r.exit_code == 6
    r = iotctl("coap", "get", f"{device.uri}/files/missing.txt")
    assert r.exit_code == 6 and "4.04" in r.stderr


def test_coap_over_tcp(device, iotctl):
    r = iotctl("coap", "get", f"coap+tcp://127.0.0.1:{device.port}/large")
    assert r.exit_code == 0 and r.stdout_bytes == _large() + b"\n", r
    device.wait_log(r"TCP GET /large")


def test_non_and_one_log_line_per_request(device, iotctl):
    marker = uuid.uuid4().hex[:8]
    r = iotctl("coap", "get", f"{device.uri}/time?{marker}", "--non")
    assert r.exit_code == 0
    log = device.wait_log(rf"NON GET /time\?{marker} -> 2\.05 Content")
    assert len([line for line in log.splitlines() if marker in line]) == 1


def test_proxy(device, iotctl, tmp_path):
    port = _free_port()
    env = {**_env(), "AIOCOAP_SERVER_TRANSPORT": "udp6", "AIOCOAP_CLIENT_TRANSPORT": "udp6"}
    proxy = subprocess.Popen([sys.executable, "-m", "aiocoap.cli.proxy", "--forward", "--bind",
                              f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        end = time.monotonic() + 10
        while not _ping(port):
            assert proxy.poll() is None and time.monotonic() < end, "aiocoap's proxy did not start"
            time.sleep(0.05)
        r = iotctl("coap", "get", f"{device.uri}/large", "--proxy", f"coap://127.0.0.1:{port}")
        assert r.exit_code == 0 and r.stdout_bytes == _large() + b"\n", r
    finally:
        _stop(proxy)


def test_serve_port_in_use_and_clean_stop(tmp_path, iotctl_proc):
    dev = _start_serve(tmp_path)
    try:
        r = iotctl_proc("coap", "serve", "-p", str(dev.port), timeout=20)
        assert r.returncode == 1, r
        _one_error_line(r.stderr.decode(), f"cannot listen on 127.0.0.1 port {dev.port}", "address already in use")
    finally:
        code = _stop(dev.proc, signal.SIGINT)
    assert code == 0
    assert dev.log().rstrip().endswith("iotctl: server stopped")
    assert "Traceback" not in dev.log()


# =========================================================================== bad input


@pytest.mark.parametrize("uri, needle", [
    ("127.0.0.1/time", "no scheme"),
    ("http://127.0.0.1/time", "unknown scheme"),
    ("coap:///time", "no host"),
    ("coap://127.0.0.1:99999/time", "ort"),
    ("coap://[not-ipv6]/x", "bad URI"),
])
def test_malformed_uri_exits_2(iotctl, uri, needle):
    r = iotctl("coap", "get", uri)
    assert r.exit_code == 2, r
    assert r.stdout == ""
    _one_error_line(r.stderr, "bad URI", needle)


def test_unknown_content_format_exits_2(iotctl):
    r = iotctl("coap", "put", "coap://127.0.0.1:1/x", "-t", "application/bogus", "-m", "x")
    assert r.exit_code == 2, r
    _one_error_line(r.stderr, "--content-format 'application/bogus'", "unknown content-format name")
    r = iotctl("coap", "get", "coap://127.0.0.1:1/x", "-A", "nope")
    assert r.exit_code == 2
    _one_error_line(r.stderr, "--accept 'nope'")


def test_invalid_json_with_encode_cbor_exits_2(iotctl):
    r = iotctl("coap", "put", "coap://127.0.0.1:1/x", "--encode", "cbor", "-m", '{"a": }')
    assert r.exit_code == 2, r
    _one_error_line(r.stderr, "payload is not valid JSON")


def test_silent_port_times_out_with_exit_5(iotctl):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # swallows requests
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        started = time.monotonic()
        r = iotctl("coap", "get", f"coap://127.0.0.1:{port}/x", "-W", "1")
        elapsed = time.monotonic() - started
    assert r.exit_code == 5, r
    assert elapsed < 3
    _one_error_line(r.stderr, f"GET coap://127.0.0.1:{port}/x", "no response within 1 s")


def test_closed_port_is_refused_with_exit_3(iotctl):
    port = _free_port()
    started = time.monotonic()
    r = iotctl("coap", "get", f"coap://127.0.0.1:{port}/x")
    assert r.exit_code == 3, r
    assert time.monotonic() - started < 3
    _one_error_line(r.stderr, "connection refused")


def test_unavailable_transport_is_a_clear_error(iotctl):
    r = iotctl("coap", "get", "coap+ws://127.0.0.1:1/x")  # websockets is not a dependency
    assert r.exit_code == 1, r
    _one_error_line(r.stderr, "coap+ws://", "websockets")


def test_psk_needs_coaps_and_both_halves(iotctl):
    r = iotctl("coap", "get", "coap://127.0.0.1:1/x", "--psk-identity", "me", "--psk", "secret")
    assert r.exit_code == 2
    _one_error_line(r.stderr, "--psk", "coaps://")
    r = iotctl("coap", "get", "coap://127.0.0.1:1/x", "--psk", "secret")
    assert r.exit_code == 2
    r = iotctl("coap", "get", "coaps://127.0.0.1:1/x")
    assert r.exit_code == 2 and "--psk" in r.stderr


COAPS = "coaps://127.0.0.1:5786"


@pytest.fixture
def dtls_extra():
    """The DTLS tests need the `dtls` extra (DTLSSocket, built from source); say so plainly."""
    import importlib.util

    if importlib.util.find_spec("DTLSSocket") is None:
        pytest.fail("the 'dtls' extra is not installed (DTLSSocket is missing): "
                    "pip install -e '.[dtls]' (scripts/test installs it)", pytrace=False)


def test_dtls_psk_against_libcoap(iotctl, peer, dtls_extra):
    """DTLS with a pre-shared key, against libcoap's coap-server-openssl (scripts/services up coaps)."""
    peer("coaps-server")
    r = iotctl("coap", "get", f"{COAPS}/time", "--psk-identity", "iotctl", "--psk", "iotctl-psk", "-W", "5")
    assert r.exit_code == 0, r
    assert re.fullmatch(r"[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d\n", r.stdout), r.stdout
    # the key in hex, and from a profile naming it by environment variable
    hexkey = "0x" + b"iotctl-psk".hex()
    assert iotctl("coap", "get", f"{COAPS}/time", "--psk-identity", "iotctl", "--psk", hexkey).exit_code == 0
    assert iotctl("profile", "add", "dtls", "coap.psk_identity=iotctl", "coap.psk_env=LAB_PSK").exit_code == 0
    r = iotctl("--profile", "dtls", "coap", "get", f"{COAPS}/time", env={"LAB_PSK": "iotctl-psk"})
    assert r.exit_code == 0, r


def test_dtls_wrong_psk_fails_in_bounded_time(iotctl, peer, dtls_extra):
    peer("coaps-server")
    started = time.monotonic()
    r = iotctl("coap", "get", f"{COAPS}/time", "--psk-identity", "iotctl", "--psk", "wrong", "-W", "2")
    assert r.exit_code == 5, r
    assert time.monotonic() - started < 10
    assert "check --psk-identity and --psk" in r.stderr


def test_dtls_sink_and_observation(iotctl_proc, peer, dtls_extra):
    """The send driver and an observation over DTLS; a refused request is one line (a
    DTLS connection collected before the context shut down printed aiocoap's
    UserWarning after it)."""
    peer("coaps-server")
    psk = ("--psk-identity", "iotctl", "--psk", "iotctl-psk")
    r = iotctl_proc("coap", "observe", f"{COAPS}/time", *psk, "-C", "2", "-W", "10")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2, r
    for _ in range(3):
        r = iotctl_proc("-o", "json", "coap", "post", f"{COAPS}/", *psk, "-l", input=b"hi\n")
        assert r.returncode == 6, r
        assert json.loads(r.stdout)["meta"]["code"] == "4.05 Method Not Allowed"
        _one_error_line(r.stderr.decode(), f"POST {COAPS}/: 4.05 Method Not Allowed", "sent 1, acknowledged 0")


def test_multicast_discovery_errors_without_sending(iotctl):
    r = iotctl("coap", "discover", "coap+tcp://[ff02::fd]")
    assert r.exit_code == 2
    _one_error_line(r.stderr, "multicast discovery works over coap:// (UDP) only")
    r = iotctl("coap", "discover", "coap://224.0.1.187", "--proxy", "coap://127.0.0.1:1")
    assert r.exit_code == 2
    _one_error_line(r.stderr, "--proxy", "multicast")


def test_answer_collector_keeps_every_answer(device, libcoap):
    """The multicast path (a NON request, every answer until the timeout), aimed at unicast
    loopback servers since nothing may be sent to a multicast group here."""
    from iotctl.protocols.coap import client

    answers = []
    for uri in (f"{device.uri}/.well-known/core", f"{libcoap}/.well-known/core"):
        spec = client.RequestSpec(method="get", uri=uri, accept=40, non=True)
        answers += client.multicast_request(spec, 0.5)
    assert sorted(uri for uri, _ in answers) == sorted([f"{device.uri}/.well-known/core",
                                                        f"{libcoap}/.well-known/core"])
    messages = client.complete_blocks(answers, client.RequestSpec(method="get", uri=device.uri, accept=40))
    assert all(m.meta["code"] == "2.05 Content" for m in messages)
    assert any(b"</time>" in m.payload for m in messages)


def test_get_imports_only_aiocoap(libcoap):
    code = ("import sys; from iotctl.cli import run; rc = run(['coap', 'get', %r]); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'aiocoap', 'cbor2', 'paho', 'pika', "
            "'slixmpp', 'stomp', 'rich'}))" % f"{libcoap}/time")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, env=_env(), timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines()[-1] == "['aiocoap']"


def test_help_does_not_import_aiocoap():
    code = ("import sys; from iotctl.cli import run; run(['coap', '--help']); run(['--help']); "
            "print('aiocoap' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, env=_env(), timeout=30)
    assert r.stdout.decode().splitlines()[-1] == "False"

"""`--background` (iotctl/background.py) for `coap serve` and `mqttsn gateway`, as a user
runs them from a terminal or a script (issue 22 item 3): the server never writes to the
stderr it was started from (its log goes to --log FILE, by default under
$XDG_STATE_HOME/iotctl/, the path printed; nowhere with --quiet), and a start that fails
exits with the child's own error line and status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import clean_env, free_port, wait_until


def _start(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # capture_output: run() returns only once nothing holds the stderr pipe any more, so
    # a background server that inherited it would keep this waiting until the timeout
    return subprocess.run([sys.executable, "-m", "iotctl", *args], capture_output=True, text=True,
                          env=clean_env(**(env or {})), timeout=20)


@pytest.fixture
def pids():
    started: list[int] = []
    yield started
    for pid in started:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _get(port: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iotctl", "coap", "get", f"coap://127.0.0.1:{port}/time"],
                          capture_output=True, text=True, env=clean_env(), timeout=20)


def test_background_serve_logs_to_the_file_not_the_terminal(tmp_path, pids):
    port, log = free_port(), tmp_path / "device.log"
    started = time.monotonic()
    r = _start("coap", "serve", "--background", "-p", str(port), "--log", str(log))
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - started < 10
    pids.append(int(r.stdout))
    assert r.stderr.splitlines() == [
        f"iotctl: coap serve logs to {log}",
        f"iotctl: the simulated device runs in the background (pid {r.stdout.strip()}); "
        f"stop it with: kill {r.stdout.strip()}"]
    assert _get(port).returncode == 0
    wait_until(lambda: "CON GET /time -> 2.05 Content" in log.read_text(), what="the request in the log")
    assert log.read_text().startswith("iotctl: serving a simulated device on")
    assert oct(log.stat().st_mode & 0o777) == "0o600"
    os.kill(pids.pop(), signal.SIGTERM)
    wait_until(lambda: "iotctl: server stopped" in log.read_text(), what="the stop in the log")


def test_background_serve_default_log_is_under_the_state_dir(tmp_path, pids):
    port = free_port()
    r = _start("coap", "serve", "--background", "-p", str(port), env={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert r.returncode == 0, r.stderr
    pids.append(int(r.stdout))
    log = tmp_path / "state" / "iotctl" / f"coap-serve-{port}.log"
    assert r.stderr.splitlines()[0] == f"iotctl: coap serve logs to {log}"
    assert _get(port).returncode == 0
    wait_until(lambda: "GET /time" in log.read_text(), what="the request in the default log")
    assert oct((tmp_path / "state" / "iotctl").stat().st_mode & 0o777) == "0o700"


def test_background_serve_quiet_logs_nowhere(tmp_path, pids):
    port = free_port()
    state = tmp_path / "state"
    r = _start("coap", "serve", "--background", "-p", str(port), "--quiet", env={"XDG_STATE_HOME": str(state)})
    assert r.returncode == 0, r.stderr
    pids.append(int(r.stdout))
    assert r.stderr == ""
    assert _get(port).returncode == 0
    assert not state.exists()


def test_background_serve_on_a_busy_port_says_why_with_its_status(tmp_path, pids):
    port = free_port()
    r = _start("coap", "serve", "--background", "-p", str(port), "--log", str(tmp_path / "first.log"))
    assert r.returncode == 0, r.stderr
    pids.append(int(r.stdout))
    r = _start("coap", "serve", "--background", "-p", str(port), "--log", str(tmp_path / "second.log"))
    assert r.returncode == 1, r
    errors = [line for line in r.stderr.splitlines() if line.startswith("iotctl: error")]
    assert errors == [f"iotctl: error: coap serve in the background: cannot listen on 127.0.0.1 port {port}: "
                      "address already in use"], r.stderr
    assert "Traceback" not in r.stderr


def test_background_gateway_that_cannot_reach_its_broker_exits_3(tmp_path):
    """The child exits 3 (cannot connect): so does the command that started it."""
    closed = free_port(kind=__import__("socket").SOCK_STREAM)
    state = tmp_path / "state"
    r = _start("mqttsn", "gateway", "--background", "--port", str(free_port()), "--broker",
               f"mqtt://127.0.0.1:{closed}", env={"XDG_STATE_HOME": str(state)})
    assert r.returncode == 3, r
    assert "connection refused" in next((state / "iotctl").glob("mqttsn-gateway-*.log")).read_text()
    errors = [line for line in r.stderr.splitlines() if line.startswith("iotctl: error")]
    assert errors == [f"iotctl: error: mqttsn gateway in the background: cannot connect to "
                      f"mqtt://127.0.0.1:{closed}: connection refused"], r.stderr


def test_background_gateway_quiet_failure_still_says_why(tmp_path):
    closed = free_port(kind=__import__("socket").SOCK_STREAM)
    r = _start("mqttsn", "gateway", "--background", "--quiet", "--port", str(free_port()), "--broker",
               f"mqtt://127.0.0.1:{closed}", env={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert r.returncode == 3, r
    assert "connection refused" in r.stderr
    assert not Path(tmp_path / "state").exists()

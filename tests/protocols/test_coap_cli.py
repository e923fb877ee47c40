"""CoAP command-line habits a new user trips over, against `iotctl coap serve --background`."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.helpers import background_device


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    uri, pid = background_device(tmp_path_factory.mktemp("serve") / "serve.log")
    yield uri
    os.kill(pid, signal.SIGTERM)


def test_background_serve_is_ready_when_it_returns(device, iotctl):
    # no wait at all between the fixture's return and this request
    r = iotctl("coap", "get", f"{device}/sensors/temperature")
    assert r.exit_code == 0 and r.stdout.strip()


def test_background_serve_on_a_busy_port_fails(device, iotctl_proc, tmp_path):
    port = device.rsplit(":", 1)[1]
    r = iotctl_proc("coap", "serve", "--background", "-p", port, "--log", str(tmp_path / "busy.log"))
    assert r.returncode == 1
    assert b"address already in use" in r.stderr and b"Traceback" not in r.stderr


def test_post_shows_the_created_location_when_piped(device, iotctl):
    r = iotctl("coap", "post", f"{device}/store", "-m", "hello")
    assert r.exit_code == 0
    assert r.stdout == ""
    assert "iotctl: 2.01 Created: /store/" in r.stderr
    r = iotctl("coap", "post", f"{device}/store", "-m", "again", "-o", "json")
    env = json.loads(r.stdout)
    assert env["meta"]["location"].startswith("/store/")
    assert iotctl("coap", "get", f"{device}{env['meta']['location']}").stdout == "again\n"


def test_json_output_keeps_the_error_response(device, iotctl):
    r = iotctl("coap", "get", f"{device}/health", "-o", "json")
    assert r.exit_code == 6
    assert json.loads(r.stdout)["meta"]["code"] == "4.04 Not Found"
    assert r.stderr.startswith("iotctl: error: GET")
    r = iotctl("coap", "get", f"{device}/health")  # raw: stdout stays clean for scripts
    assert (r.exit_code, r.stdout) == (6, "")

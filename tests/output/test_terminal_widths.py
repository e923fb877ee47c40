"""What a new user looks at first, in a real terminal (tmux) 80 and 120 columns wide
(issue 22 item 1): nothing drawn wider than the terminal or wrapped onto a second row
(the pane is read with wrapped lines joined, so a wrap shows as a line too long), the
pretty header keeps the address whole and gives way with its metadata, MQTT and AMQP
properties and headers one per line, XMPP tables without a message header above them,
`xmpp ping` one line a reply. Against the real peers: a `coap serve` device, Mosquitto,
RabbitMQ and Prosody."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import CERTS
from tests.helpers import background_device, clean_env

XDIST_GROUP = "prosody"  # logs in as alice, as the XMPP modules do: never at the same time as them

WIDTHS = [80, 120]
END = "END-OF-RUN"
XMPP_LOGIN = ["--jid", "alice@localhost", "-P", "alice-pw", "--server", "127.0.0.1:5222",
              "--cafile", str(CERTS / "ca.crt")]


def in_terminal(tmp_path: Path, width: int, *argv: str) -> list[str]:
    """Run `iotctl ARGV` in a tmux terminal WIDTH x 50 (pretty output, as a person sees
    it) and return the screen's lines up to the end of the run, wrapped lines joined."""
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed; run: scripts/services up tools", pytrace=False)
    socket_name = f"iotctl-width-{uuid.uuid4().hex[:8]}"
    script = tmp_path / f"run-{uuid.uuid4().hex[:6]}.sh"
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "iotctl", *argv])
    script.write_text(f"{command}; echo {END} $?; sleep 30\n")
    tmux = ["tmux", "-L", socket_name]
    env = {**clean_env(), "TERM": "xterm-256color"}
    env.pop("COLUMNS", None)  # the terminal's own width
    subprocess.run([*tmux, "-f", "/dev/null", "new-session", "-d", "-x", str(width), "-y", "50", "bash", str(script)],
                   check=True, env=env)
    try:
        end = time.monotonic() + 30
        while True:
            screen = subprocess.run([*tmux, "capture-pane", "-p", "-J"], capture_output=True, text=True).stdout
            if END in screen or time.monotonic() > end:
                break
            time.sleep(0.1)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    assert END in screen, screen
    text, _, status = screen.partition(END)
    assert status.split()[0] == "0", screen
    lines = text.rstrip("\n").split("\n")
    assert all(len(line.rstrip()) <= width for line in lines), f"wider than {width} columns:\n{text}"
    return [line.rstrip() for line in lines]


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    uri, pid = background_device(tmp_path_factory.mktemp("device") / "serve.log")
    yield uri
    os.kill(pid, signal.SIGTERM)


@pytest.mark.parametrize("width", WIDTHS)
def test_coap_discover(device, tmp_path, width):
    lines = in_terminal(tmp_path, width, "coap", "discover", device)
    rule = next(i for i, line in enumerate(lines) if line.startswith("────"))
    rows = {row.split()[0]: row.split() for row in lines[rule + 1:] if row.strip()}
    assert list(rows) == ["/", "/time", "/sensors/temperature", "/sensors/humidity", "/actuators/led", "/store",
                          "/large"], lines  # one row per link, each path whole
    assert rows["/sensors/temperature"][1:3] == ["temperature-c", "core.s"] and rows["/sensors/temperature"][-1] \
        == "Temperature", lines


@pytest.mark.parametrize("width", WIDTHS)
def test_mqtt_header_keeps_the_address_and_properties_are_one_per_line(iotctl, peer, tmp_path, width):
    peer("mosquitto-private")
    address = f"iotctl-test/w{uuid.uuid4().hex[:8]}/plant/line1/press/temperature"  # 52 characters
    assert iotctl("mqtt", "pub", "-p", "11883", "-t", address, "-r", "-q", "1", "--content-type", "application/json",
                  "--user-property", "unit=C", "--response-topic", "replies/here", "--correlation-data", "c-1",
                  "-m", '{"celsius": 62.0}').exit_code == 0
    try:
        lines = in_terminal(tmp_path, width, "mqtt", "sub", "-p", "11883", "-t", address, "-C", "1", "--quiet")
    finally:
        iotctl("mqtt", "pub", "-p", "11883", "-t", address, "-r", "--null")
    header = lines[0]
    assert re.match(rf"\d\d:\d\d:\d\d\.\d{{3}} mqtt {re.escape(address)} qos=", header), lines  # the address whole
    assert ("(17 B)" in header) == (width == 120), lines  # at 80 the metadata gave way, not the address
    at = lines.index("  properties:")
    assert lines[at + 1:at + 5] == ["    content_type: application/json", "    response_topic: replies/here",
                                    "    correlation_data: c-1", '    user_properties: [["unit", "C"]]'], lines
    assert lines[at + 5:] == ["{", '  "celsius": 62.0', "}"], lines


@pytest.mark.parametrize("width", WIDTHS)
def test_amqp_properties_and_headers_are_one_per_line(iotctl, peer, tmp_path, width):
    peer("rabbitmq")
    queue = f"iotctl-test-width-{uuid.uuid4().hex[:8]}"
    assert iotctl("amqp", "declare", "queue", queue).exit_code == 0
    try:
        assert iotctl("amqp", "publish", "-r", queue, "--content-type", "application/json", "--correlation-id", "corr-1",
                      "--reply-to", "replies", "--header", "site=lab", "--header", "floor:int=2",
                      "-m", '{"t": 1}').exit_code == 0
        lines = in_terminal(tmp_path, width, "amqp", "get", queue, "--quiet")
    finally:
        iotctl("amqp", "delete", "queue", queue)
    assert re.match(rf"\d\d:\d\d:\d\d\.\d{{3}} amqp {queue} ", lines[0]), lines
    at = lines.index("  properties:")
    assert lines[at + 1:at + 4] == ["    content_type: application/json", "    correlation_id: corr-1",
                                    "    reply_to: replies"], lines
    at = lines.index("  headers:")
    assert lines[at + 1:at + 3] == ["    site: lab", "    floor: 2"], lines


@pytest.mark.parametrize("width", WIDTHS)
def test_xmpp_tables_have_no_message_header(iotctl, peer, tmp_path, width):
    peer("prosody")
    lines = in_terminal(tmp_path, width, "xmpp", "version", *XMPP_LOGIN, "--quiet")
    assert lines[0].split() == ["name", "version", "os"] and lines[1].split()[0] == "Prosody", lines
    assert len(lines) == 2 and not any("ct=" in line for line in lines), lines
    contact = f"w{uuid.uuid4().hex[:8]}@localhost"
    assert iotctl("xmpp", "roster", "add", contact, "--name", "Width test", *XMPP_LOGIN).exit_code == 0
    try:
        lines = in_terminal(tmp_path, width, "xmpp", "roster", "list", *XMPP_LOGIN, "--quiet")
    finally:
        iotctl("xmpp", "roster", "remove", contact, *XMPP_LOGIN)
    assert lines[0].split() == ["jid", "name", "subscription", "ask", "groups"], lines
    assert any(line.split()[:3] == [contact, "Width", "test"] for line in lines), lines
    assert not any("ct=" in line or "xmpp" in line for line in lines), lines


@pytest.mark.parametrize("width", WIDTHS)
def test_xmpp_ping_is_one_line_a_reply(peer, tmp_path, width):
    peer("prosody")
    lines = in_terminal(tmp_path, width, "xmpp", "ping", "-c", "2", "-i", "0.05", *XMPP_LOGIN)
    replies = [line for line in lines if line.startswith("reply from")]
    assert [re.sub(r"time=\d+\.\d{3} ms", "time=T", line) for line in replies] == [
        "reply from localhost: seq=1 time=T", "reply from localhost: seq=2 time=T"], lines
    at = lines.index("iotctl: --- localhost ping statistics ---")   # three lines, as ping(8)
    assert lines[at + 1] == "iotctl: 2 sent, 2 received, 0% loss" and lines[at + 2].startswith("iotctl: rtt min/avg"), lines

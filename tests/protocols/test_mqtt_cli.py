"""MQTT command-line habits a new user trips over (README "MQTT"), against the private broker."""

from __future__ import annotations

import subprocess
import sys
import time

import cbor2
import pytest

from tests.helpers import clean_env, wait_until

PRIVATE = ("-h", "127.0.0.1", "-p", "11883")


@pytest.fixture
def broker(peer):
    peer("mosquitto-private")


class Sub:
    def __init__(self, *args):
        self.proc = subprocess.Popen([sys.executable, "-m", "iotctl", "mqtt", "sub", *PRIVATE, *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
        line = self.proc.stderr.readline()
        assert b"subscribed to" in line, line

    def finish(self):
        out, err = self.proc.communicate(timeout=20)
        return self.proc.returncode, out, err


def test_v_prints_topic_and_payload_like_mosquitto_sub(iotctl, broker, topic):
    sub = Sub("-t", topic, "-v", "-C", "1")
    assert iotctl("mqtt", "pub", *PRIVATE, "-t", topic, "-m", "21.5").exit_code == 0
    code, out, err = sub.finish()
    assert (code, out) == (0, f"{topic} 21.5\n".encode()), err
    assert b"Sending" not in err  # -v is not the trace


def _mosquitto_sub(topic: str, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen(["stdbuf", "-oL", "mosquitto_sub", "-d", "-p", "11883", "-t", topic, "-C", "2", "-W", "20",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in proc.stdout:  # -d: its trace says when the subscription is in place
        if b"received SUBACK" in line:
            break
    return proc


@pytest.mark.parametrize("mode", ["raw", "text"])
def test_an_empty_payload_is_printed_as_mosquitto_sub_prints_it(iotctl, broker, topic, mode):
    """Issue 22 item 7: piped, an empty payload printed an empty line where mosquitto_sub
    prints nothing (raw), and '(null)' after the topic with -v (text)."""
    ours = Sub("-t", topic, "-C", "2", "-o", mode)
    theirs = _mosquitto_sub(topic, *(["-v"] if mode == "text" else []))
    assert iotctl("mqtt", "pub", *PRIVATE, "-t", topic, "--null").exit_code == 0
    assert iotctl("mqtt", "pub", *PRIVATE, "-t", topic, "-m", "after").exit_code == 0
    code, out, err = ours.finish()
    mosquitto = b"".join(line for line in theirs.communicate(timeout=30)[0].splitlines(keepends=True)
                         if not line.startswith((b"Client ", b"Subscribed (")))   # -d's trace
    expected = {"raw": b"after\n", "text": f"{topic} (null)\n{topic} after\n".encode()}[mode]
    assert (code, out) == (0, expected), err
    assert mosquitto == expected


def test_an_empty_payload_keeps_its_exact_envelope_in_json(iotctl, broker, topic):
    sub = Sub("-t", topic, "-C", "1", "-o", "jsonl")
    assert iotctl("mqtt", "pub", *PRIVATE, "-t", topic, "--null").exit_code == 0
    code, out, err = sub.finish()
    import json

    env = json.loads(out)
    assert (code, env["address"], env["payload"], env["encoding"]) == (0, topic, "", "utf-8"), (out, err)


def test_h_is_the_host_and_the_error_says_so(iotctl):
    """Issue 22 item 4: `mqtt pub -h` (mosquitto's habit for help) said only that -h
    needs an argument."""
    r = iotctl("mqtt", "pub", "-h")
    assert (r.exit_code, r.stderr) == (2, "iotctl: error: Option '-h' requires an argument. "
                                          "(-h is the host here; use --help)\n"), r


def test_d_is_the_protocol_trace(iotctl, broker, topic):
    r = iotctl("mqtt", "pub", *PRIVATE, "-t", topic, "-m", "x", "-d")
    assert r.exit_code == 0 and "Sending CONNECT" in r.stderr and "Sending PUBLISH" in r.stderr


def test_text_mode_prints_binary_payload_bytes_as_they_are(iotctl, broker, topic):
    sub = Sub("-t", topic, "-o", "text", "-C", "1")
    assert iotctl("mqtt", "pub", *PRIVATE, "-t", topic, "--encode", "hex", "-m", "00ff0a1b").exit_code == 0
    code, out, _ = sub.finish()
    assert out == topic.encode() + b" \x00\xff\n\x1b\n"


@pytest.mark.parametrize("encode,content_type", [("cbor", "application/cbor"), ("json", "application/json")])
def test_encode_sets_the_content_type(iotctl, broker, topic, encode, content_type):
    sub = Sub("-t", topic, "-o", "json", "-C", "1")
    assert iotctl("mqtt", "pub", *PRIVATE, "-t", topic, "--encode", encode, "-m", '{"rate": 5}').exit_code == 0
    code, out, _ = sub.finish()
    import json

    env = json.loads(out)
    assert env["content_type"] == content_type
    if encode == "cbor":
        import base64

        assert cbor2.loads(base64.b64decode(env["payload"])) == {"rate": 5}


def test_encode_keeps_an_explicit_content_type(iotctl, broker, topic):
    sub = Sub("-t", topic, "-o", "json", "-C", "1")
    assert iotctl("mqtt", "pub", *PRIVATE, "-t", topic, "--encode", "json", "-m", "[1]",
                  "--content-type", "application/vnd.x+json").exit_code == 0
    import json

    assert json.loads(sub.finish()[1])["content_type"] == "application/vnd.x+json"


def test_dry_run_says_so_on_stderr_when_piped(iotctl, broker, topic):
    assert iotctl("mqtt", "pub", *PRIVATE, "-t", f"{topic}/a", "-r", "-q", "1", "-m", "x").exit_code == 0
    r = iotctl("mqtt", "retained", "clear", f"{topic}/#", *PRIVATE, "--dry-run", "-W", "5")
    assert r.exit_code == 0
    assert r.stdout == f"{topic}/a\n"
    assert "would clear 1 retained message(s)" in r.stderr  # CliRunner's stderr is not a terminal
    still = iotctl("mqtt", "retained", "list", f"{topic}/#", *PRIVATE, "-W", "5")
    assert still.stdout == f"{topic}/a x\n"
    r = iotctl("mqtt", "retained", "clear", f"{topic}/#", *PRIVATE, "-W", "5")
    assert r.exit_code == 0 and "cleared" not in r.stderr  # a real clear stays quiet when piped

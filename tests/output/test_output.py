"""Output modes, seen from a user's side: what each -o prints for a message."""

import base64
import io
import json

import pytest
from hypothesis import given, strategies as st

from iotctl.errors import UsageError
from iotctl.message import Message
from iotctl.output import make_writer, resolve_mode
from iotctl.output.template import Template

MSG = Message("mqtt", "sensors/t1", b'{"t": 21.5}', "application/json",
              {"qos": 1, "retain": False, "properties": {"user_properties": [["unit", "C"]]}}, ts=0.0)
BIN = Message("mqtt", "raw/bytes", bytes(range(250, 256)) + b"\x00", None, {"qos": 0, "retain": True}, ts=0.0)


def render(mode, msg, template=None, monkeypatch=None):
    out = io.BytesIO()
    writer = make_writer(mode, template)
    writer.out = out
    writer.write(msg)
    return out.getvalue()


def test_raw_is_payload_and_newline():
    assert render("raw", MSG) == b'{"t": 21.5}\n'
    assert render("raw", BIN) == bytes(range(250, 256)) + b"\x00\n"


def test_hex():
    assert render("hex", BIN) == b"fafbfcfdfeff00\n"


def test_text_is_address_and_payload():
    assert render("text", MSG) == b'sensors/t1 {"t": 21.5}\n'


def test_jsonl_envelope_schema():
    env = json.loads(render("jsonl", MSG))
    assert env == {"ts": "1970-01-01T00:00:00+00:00", "protocol": "mqtt", "address": "sensors/t1",
                   "payload": '{"t": 21.5}', "encoding": "utf-8", "content_type": "application/json",
                   "meta": {"qos": 1, "retain": False, "properties": {"user_properties": [["unit", "C"]]}}}
    assert render("jsonl", MSG).count(b"\n") == 1


def test_json_binary_payload_is_base64():
    env = json.loads(render("json", BIN))
    assert env["encoding"] == "base64"
    assert base64.b64decode(env["payload"]) == BIN.payload


def test_json_meta_with_bytes_is_made_serialisable():
    msg = Message("coap", "coap://h/x", b"", None, {"etag": b"\x01\x02"}, ts=0.0)
    assert json.loads(render("json", msg))["meta"] == {"etag": "0x0102"}


def test_template_fields_and_meta():
    out = render("template", MSG, "{address} q={meta[qos]} r={meta[retain]} {size} {payload}")
    assert out == b'sensors/t1 q=1 r=false 11 {"t": 21.5}\n'


def test_template_nested_meta_and_missing_key():
    out = render("template", MSG, "{meta[properties][user_properties]}|{meta[nope]}|")
    assert out == b'[["unit","C"]]||\n'


def test_template_escapes():
    assert render("template", MSG, "{address}\\t{meta[qos]}") == b"sensors/t1\t1\n"


@pytest.mark.parametrize("template", ["{payload.__class__}", "{0}", "{}", "{nosuch}", "{ts!x}", "{address"])
def test_template_rejects_unsafe_or_bad(template):
    with pytest.raises(UsageError):
        Template(template).render(MSG.to_envelope())


def test_auto_is_raw_when_piped_and_template_when_format_given():
    assert resolve_mode("auto", None, stream=io.BytesIO()) == "raw"
    assert resolve_mode("auto", "{payload}") == "template"
    assert resolve_mode("auto", None, "text", stream=io.BytesIO()) == "text"


def test_template_mode_without_format_is_usage_error():
    with pytest.raises(UsageError):
        make_writer("template", None)


def pretty(msg, capsys) -> str:
    """What -o pretty prints for `msg`, colour off."""
    from iotctl.output import console

    console.set_color(False)
    try:
        writer = make_writer("pretty")
        writer.write(msg)
        writer.flush()
    finally:
        console.set_color(None)
    return capsys.readouterr().out


def test_pretty_shows_header_and_pretty_json(capsys):
    out = pretty(MSG, capsys)
    assert "sensors/t1" in out and "qos=1" in out and "ct=application/json" in out
    assert '"t": 21.5' in out
    assert "user_properties" in out


def test_pretty_binary_is_hexdump(capsys):
    out = pretty(BIN, capsys)
    assert "00000000  fa fb fc fd fe ff 00" in out
    assert "qos=0 retain (" in out  # QoS 0 is still shown; a true flag shows as its name


def test_pretty_cbor_as_json(capsys):
    import cbor2

    msg = Message("coap", "coap://x/y", cbor2.dumps({"temp": 21}), "application/cbor", {}, ts=0.0)
    assert '"temp": 21' in pretty(msg, capsys)


def test_pretty_link_format_as_table(capsys):
    msg = Message("coap", "coap://x/.well-known/core", b'</t>;rt="temp";obs,</l>;if="core.a"',
                  "application/link-format", {"code": "2.05 Content"}, ts=0.0)
    out = pretty(msg, capsys)
    assert "code=2.05 Content" in out
    assert "temp" in out and "core.a" in out and "</t>" not in out  # a table, not the raw text


@given(st.binary(max_size=300), st.text(min_size=1, max_size=40),
       st.sampled_from(["mqtt", "coap", "amqp"]), st.one_of(st.none(), st.text(max_size=20)))
def test_envelope_round_trip(payload, address, protocol, ct):
    msg = Message(protocol, address, payload, ct, {"qos": 0}, ts=1234.5)
    back = Message.from_envelope(json.loads(json.dumps(msg.to_envelope())))
    assert (back.payload, back.address, back.protocol, back.content_type, back.meta, back.ts) == \
        (payload, address, protocol, ct, {"qos": 0}, 1234.5)


def test_pretty_header_fits_80_columns_and_details_need_debug(capsys, monkeypatch):
    from iotctl import settings

    monkeypatch.setenv("COLUMNS", "80")
    msg = Message("coap", "coap://[2001:db8::1]:5683/sensors/a-rather-long/resource/path/temperature",
                  b"21.4", "text/plain; charset=utf-8",
                  {"code": "2.05 Content", "type": "ACK", "mid": 4711, "token": "a1b2",
                   "options": {"Content-Format": 0}}, ts=0.0)
    out = pretty(msg, capsys)
    lines = out.splitlines()
    assert len(lines[0]) <= 80 and lines[0].startswith("00:00:00.000 coap coap://["), lines
    assert "…" in lines[0] and "code=2.05 Content" in lines[0], lines
    assert lines[1:] == ["21.4"]  # mid, token, type and options only with -d
    monkeypatch.setattr(settings._fallback, "debug", True)
    out = pretty(msg, capsys)
    assert "mid: 4711" in out and "token: a1b2" in out


def test_pretty_header_keeps_the_address_whole_and_cuts_metadata_first(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    address = "coap://127.0.0.1/sensors/temperature"
    msg = Message("coap", address, b"21.4", "application/senml+json",
                  {"code": "2.05 Content", "observe": 12, "location": "/a/very/long/location/path"}, ts=0.0)
    line = pretty(msg, capsys).splitlines()[0]
    assert address in line and len(line) <= 80, line  # whole
    assert "code=" in line and "location" not in line, line  # the least important went first


def test_pretty_shows_control_characters_escaped_and_properties_one_per_line(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    msg = Message("mqtt", "a\x1bb", b"before\x1b[2J\x1b[H after A\x00B", None,
                  {"qos": 0, "retain": False, "properties": {"user_properties": [["k", "v\x07"]],
                                                             "content_type": "text/plain"}}, ts=0.0)
    out = pretty(msg, capsys)
    assert "\x1b" not in out and "\x00" not in out and "\x07" not in out
    assert "a\\x1bb" in out and "before\\x1b[2J\\x1b[H after A\\x00B" in out
    assert "  properties:" in out.splitlines() and '    user_properties: [["k", "v\\u0007"]]' in out.splitlines()


def test_pretty_keeps_an_address_and_a_metadata_value_on_their_one_line(capsys, monkeypatch):
    """A line feed in an address or a header value is an escape: printed as it is, it
    would start a line that looks like a header or a field of its own."""
    monkeypatch.setenv("COLUMNS", "120")
    msg = Message("stomp", "/queue/a\n01:00:00.000 stomp /queue/fake", b"body", None,
                  {"k": "v\nevil: injected", "t": "a\tb"}, ts=0.0)
    lines = pretty(msg, capsys).splitlines()
    assert lines[0].endswith("/queue/a\\x0a01:00:00.000 stomp /queue/fake (4 B)"), lines
    assert lines[1:] == ["  k: v\\x0aevil: injected", "  t: a  b", "body"], lines  # (rich: a tab as spaces)


def test_pretty_messages_are_separated_without_colour(capsys):
    from iotctl.output import console

    console.set_color(False)
    try:
        writer = make_writer("pretty")
        writer.write(Message("mqtt", "a", b"one", None, {"qos": 0, "retain": False}, ts=0.0))
        writer.write(Message("mqtt", "b", b"two", None, {"qos": 1, "retain": True}, ts=0.0))
        writer.flush()
    finally:
        console.set_color(None)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "one" and lines[2] == "" and lines[4] == "two"
    assert lines[0].endswith("a qos=0 (3 B)") and lines[3].endswith("b qos=1 retain (3 B)")


WRITES_A_BATCH_WHILE_CTRL_C_WAITS = """
import sys
from iotctl import interrupts
from iotctl.message import Message
from iotctl.output import make_writer

writer = make_writer("raw")
batch = [Message("mqtt", "t", b"%06d" % i, None, {}) for i in range(40000)]
with interrupts.guarded():
    try:
        with interrupts.deferred():  # as the receive driver writes a batch it then acknowledges
            sys.stderr.write("writing\\n")
            sys.stderr.flush()
            writer.write_batch(batch)
            writer.flush()
            sys.stderr.write("written\\n")
    except KeyboardInterrupt:
        sys.stderr.write("interrupted after the batch\\n")
"""


@pytest.mark.parametrize("attempt", range(3))
def test_a_ctrl_c_while_the_reader_lags_cuts_nothing_out_of_a_batch(attempt):
    """A Ctrl-C held while a batch is written to a full pipe: every byte of the batch
    arrives. CPython's BufferedWriter returned a short count when the signal came and
    dropped the rest (the batch was acknowledged: `sub` lost thousands of messages and
    printed its last line cut in half)."""
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import clean_env

    proc = subprocess.Popen([sys.executable, "-c", WRITES_A_BATCH_WHILE_CTRL_C_WAITS], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=clean_env())
    assert proc.stderr.readline() == b"writing\n"
    time.sleep(0.3)  # the pipe (64 KiB) is full long before 280,000 bytes: the write blocks
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert err == b"written\ninterrupted after the batch\n"
    assert out == b"".join(b"%06d\n" % i for i in range(40000))


PRETTY_WHILE_CTRL_C_WAITS = """
import sys
from iotctl import interrupts
from iotctl.message import Message
from iotctl.output import make_writer

writer = make_writer("pretty")
payload = b"".join(b"%06d\\n" % i for i in range(30000))
msg = Message("mqtt", "big/text", payload, "text/plain", {"qos": 0, "retain": False})
with interrupts.guarded():
    try:
        with interrupts.deferred():
            sys.stderr.write("writing\\n")
            sys.stderr.flush()
            writer.write_batch([msg])
            writer.flush()
            sys.stderr.write("written\\n")
    except KeyboardInterrupt:
        sys.stderr.write("interrupted after the batch\\n")
"""


def test_a_ctrl_c_while_the_terminal_lags_cuts_nothing_out_of_pretty_output():
    """The same on a terminal that takes nothing (paused with Ctrl-S): pretty output goes
    through rich and sys.stdout's text layer, which ignored a short write of its buffer."""
    import os
    import pty
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import clean_env

    master, slave = pty.openpty()
    env = clean_env(NO_COLOR="1", COLUMNS="80", LINES="24", TERM="dumb")
    proc = subprocess.Popen([sys.executable, "-c", PRETTY_WHILE_CTRL_C_WAITS], stdout=slave,
                            stderr=subprocess.PIPE, env=env)
    os.close(slave)
    try:
        assert proc.stderr.readline() == b"writing\n"
        time.sleep(0.3)  # the terminal's buffer (a few KiB) is full long before 210,000 bytes
        proc.send_signal(signal.SIGINT)
        seen = bytearray()
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the program has exited and closed its side
                break
            if not chunk:
                break
            seen += chunk
        err = proc.stderr.read()
        assert proc.wait(30) == 0, err
    finally:
        os.close(master)
    assert err == b"written\ninterrupted after the batch\n"
    text = bytes(seen).replace(b"\r\n", b"\n").decode()
    lines = [line for line in text.splitlines() if len(line) == 6 and line.isdigit()]
    assert lines == [f"{i:06d}" for i in range(30000)], (len(lines), text[-200:])

"""CoAP as URL endpoints and on the shared drivers (issue 15): `resolver.source` (an
observation) and `resolver.sink` (a request per message) against libcoap's
coap-server-notls and `iotctl coap serve`; the send driver under `coap put/post -l`
(refusals reaching --failed, the early-stop report, Ctrl-C, a pausing stdin); what
crosses from another protocol's message, seen on the wire by a raw UDP server."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

from iotctl import receive, resolver, send
from iotctl.errors import IotctlError, UsageError
from iotctl.message import Message
from tests.helpers import clean_env, wait_until
from tests.protocols.test_coap import _one_error_line, device, libcoap  # noqa: F401 (fixtures)
from tests.protocols.test_coap_faults import CHANGED, CREATED, piggybacked, raw_server  # noqa: F401 (fixture)

BAD_REQUEST = 0x80


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- the source


def test_url_source_observes_libcoap_with_options_in_the_fragment(libcoap):
    with resolver.source(f"{libcoap}/time#timeout=5&non=true") as observation:
        got = []
        while len(got) < 3:
            got += observation.poll(2) or []
    assert [m.protocol for m in got] == ["coap"] * 3
    assert all(m.address == f"{libcoap}/time" for m in got)
    seqs = [m.meta["observe"] for m in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3, seqs
    assert got[0].meta["type"] == "NON"  # the fragment's non=true reached the request


def test_url_source_sends_the_query_to_the_device(device):
    """`?rt=light` is the device's (Uri-Query): only the LED's link comes back."""
    target = resolver.resolve(f"{device.uri}/.well-known/core?rt=light#accept=link-format", "source")
    assert target.arguments["uri"] == f"{device.uri}/.well-known/core?rt=light"
    with target.open() as observation:
        first = observation.poll(2)
    assert [m.payload.decode().split(";")[0] for m in first] == ["</actuators/led>"]
    assert first[0].content_type == "application/link-format"


@pytest.mark.parametrize("url, needle", [
    ("coap://127.0.0.1/x#bogus=1", "unknown option 'bogus'"),
    ("coap://127.0.0.1/x#accept=nope", "--accept 'nope'"),
    ("coap://127.0.0.1/x#count=0", "count"),
    ("coap://127.0.0.1/x#host=h", "belongs in the URL itself"),
    ("coap://u:secret@127.0.0.1/x", "CoAP URIs carry no user name or password"),
])
def test_url_source_has_the_commands_checks(url, needle):
    with pytest.raises(UsageError) as exc:
        resolver.source(url)
    assert needle in str(exc.value)
    assert "secret" not in str(exc.value)


def test_a_key_in_the_fragment_is_never_shown():
    with pytest.raises(UsageError) as exc:
        resolver.sink("coap://127.0.0.1/x#bogus=1&psk_identity=me&psk=topsecret")
    assert "unknown option 'bogus'" in str(exc.value)
    assert "topsecret" not in str(exc.value) and "psk=****" in str(exc.value)


def test_url_sink_checks_the_method():
    with pytest.raises(UsageError) as exc:
        resolver.sink("coap://127.0.0.1/x#method=get")
    assert "method" in str(exc.value) and "'put'" in str(exc.value)


# --------------------------------------------------------------------------- the sink


def test_url_sink_puts_each_message_and_a_get_sees_the_last(libcoap, device, iotctl):
    uri = f"{libcoap}/{_name('sink')}"
    try:
        with resolver.sink(f"{uri}#method=put") as sender:
            result = send.run(sender, [Message("", "", b"one"), Message("", "", b"two")], "sink")
        assert (result.sent, result.acknowledged) == (2, 2)
        r = iotctl("coap", "get", uri)
        assert (r.exit_code, r.stdout) == (0, "two\n"), r
    finally:
        iotctl("coap", "delete", uri)
    uri = f"{device.uri}/store/{_name('sink')}"
    with resolver.sink(f"{uri}#method=put&content_format=json") as sender:
        assert send.run(sender, [Message("", "", b'{"a": 1}')], "sink").acknowledged == 1
    env = json.loads(iotctl("coap", "get", uri, "-o", "json").stdout)
    assert env["payload"] == '{"a": 1}' and env["meta"]["options"]["Content-Format"] == 50


def test_foreign_message_brings_only_its_content_type(raw_server):
    """An MQTT 5 message with a content type, user properties, correlation data and a
    response topic: only Content-Format 50 and the payload arrive, beside Uri-Path."""
    server = raw_server(lambda req: [piggybacked(req, CHANGED)])
    msg = Message("mqtt", "", b'{"t": 21.5}', "application/json",
                  {"qos": 1, "retain": True, "properties": {
                      "content_type": "application/json", "user_properties": [["unit", "C"]],
                      "correlation_data": "abc", "response_topic": "replies/x"}})
    with resolver.sink(f"{server.uri}/in#method=put") as sender:
        assert send.run(sender, [msg], "sink").acknowledged == 1
    [req] = server.requests
    assert req["code"] == 0x03  # PUT
    assert req["options"] == {11: [b"in"], 12: [bytes([50])]}
    assert req["payload"] == b'{"t": 21.5}'


def test_sink_sends_a_message_with_an_address_of_its_own_there(device, iotctl):
    """The Sender contract: a message without an address goes to the URL's URI; one with
    an address (a bridge's --address) goes there: a coap URI, or a path resolved against
    the URI."""
    names = [_name("a"), _name("b"), _name("c")]
    messages = [Message("", "", b"to the URI"), Message("", names[1], b"relative"),
                Message("", f"/store/{names[2]}", b"absolute path"),
                Message("", f"{device.uri}/store/{names[0]}-uri", b"a URI")]
    with resolver.sink(f"{device.uri}/store/{names[0]}#method=put") as sender:
        assert sender.address == f"{device.uri}/store/{names[0]}"
        assert send.run(sender, messages, "sink").acknowledged == 4
    for name, payload in ((names[0], "to the URI"), (names[1], "relative"), (names[2], "absolute path"),
                          (f"{names[0]}-uri", "a URI")):
        assert iotctl("coap", "get", f"{device.uri}/store/{name}").stdout == payload + "\n"
    with resolver.sink(f"{device.uri}/store/x#method=put") as sender:
        with pytest.raises(UsageError) as exc:
            send.run(sender, [Message("", "http://127.0.0.1/x", b"no")], "sink")
    assert "unknown scheme 'http://'" in str(exc.value)


def test_replay_on_the_command_line_goes_to_the_uri_given(device, iotctl, tmp_path):
    """`coap put URI --replay capture`: the URI wins over the captured addresses."""
    name = _name("replayed")
    capture = tmp_path / "capture.jsonl"
    capture.write_text("".join(json.dumps({"protocol": "coap", "address": f"{device.uri}/store/elsewhere-{i}",
                                           "payload": f"v{i}"}) + "\n" for i in range(3)))
    r = iotctl("coap", "put", f"{device.uri}/store/{name}", "--replay", str(capture))
    assert r.exit_code == 0, r
    assert iotctl("coap", "get", f"{device.uri}/store/{name}").stdout == "v2\n"
    assert iotctl("coap", "get", f"{device.uri}/store/elsewhere-0").exit_code == 6


def test_coap_capture_replays_with_its_content_format(raw_server, iotctl, tmp_path):
    server = raw_server(lambda req: [piggybacked(req, CHANGED)])
    capture = tmp_path / "capture.jsonl"
    capture.write_text(json.dumps({"protocol": "coap", "address": "coap://elsewhere/x", "payload": "AQI=",
                                   "encoding": "base64", "content_type": "application/cbor",
                                   "meta": {"code": "2.05 Content", "options": {"Content-Format": 60,
                                                                                "Max-Age": 5, "ETag": "0x01"}}})
                       + "\n")
    r = iotctl("coap", "post", f"{server.uri}/replayed", "--replay", str(capture))
    assert r.exit_code == 0, r
    [req] = server.requests
    assert req["options"] == {11: [b"replayed"], 12: [bytes([60])]}  # no Max-Age, no ETag
    assert req["payload"] == b"\x01\x02"


def test_unmapped_content_type_is_dropped_and_said_with_debug(raw_server, iotctl, tmp_path):
    server = raw_server(lambda req: [piggybacked(req, CHANGED)])
    capture = tmp_path / "amqp.jsonl"
    capture.write_text(json.dumps({"protocol": "amqp", "address": "readings", "payload": "x",
                                   "content_type": "application/x-vendor-thing",
                                   "meta": {"exchange": "amq.topic", "routing_key": "readings",
                                            "delivery_tag": 7, "properties": {"headers": {"h": "v"}}}}) + "\n")
    r = iotctl("coap", "post", f"{server.uri}/in", "--replay", str(capture), "-d")
    assert r.exit_code == 0, r
    assert "'application/x-vendor-thing' has no CoAP Content-Format: not sent" in r.stderr
    assert server.requests[0]["options"] == {11: [b"in"]}


def test_source_and_sink_run_together_on_one_loop(libcoap, device, iotctl):
    """An observation of libcoap's /time feeding PUTs to coap serve, in one process:
    both sides on the shared asyncio loop."""
    uri = f"{device.uri}/store/{_name('forward')}"
    with resolver.source(f"{libcoap}/time#timeout=5") as observation, \
            resolver.sink(f"{uri}#method=put") as sender:
        window = send.Window(sender, 5)
        forwarded = []
        while len(forwarded) < 3:
            for msg in observation.poll(2) or []:
                msg.address = sender.address  # what a bridge does for a target with a fixed address
                window.offer(msg)
                forwarded.append(msg)
        window.finish()
        assert window.acknowledged == 3
    r = iotctl("coap", "get", uri, "-o", "json")
    env = json.loads(r.stdout)
    assert env["payload"] == forwarded[-1].payload.decode()
    assert "Content-Format" not in env["meta"]["options"]  # libcoap's /time has none: none invented


# --------------------------------------------------------------------------- put/post -l on the send driver


def test_lines_refused_reach_failed_and_stop_the_run(device, iotctl, tmp_path):
    failed = tmp_path / "failed.jsonl"
    led = f"{device.uri}/actuators/led"
    r = iotctl("coap", "put", led, "-l", "--failed", str(failed), input="on\nmaybe\noff\n")
    assert r.exit_code == 6, r
    _one_error_line(r.stderr, f"PUT {led}", "4.00 Bad Request",
                    "sent 2, acknowledged 1, refused 1, 2 not acknowledged written to")
    kept = [json.loads(line) for line in failed.read_text().splitlines()]
    assert [(e["protocol"], e["payload"]) for e in kept] == [("coap", "maybe"), ("coap", "off")]
    assert iotctl("coap", "get", led).stdout == "on\n"  # 'off' was never sent
    r = iotctl("coap", "put", led, "--replay", str(failed))  # replays on its own: refused again
    assert r.exit_code == 6 and "4.00 Bad Request" in r.stderr


def test_lines_timeout_reports_and_keeps_the_rest(raw_server, iotctl, tmp_path):
    """The server answers the first request and then nothing: exit 5 after -W, the
    second line in --failed with the third."""
    server = raw_server(lambda req: [piggybacked(req, CHANGED)] if len(server.requests) == 1 else [])
    failed = tmp_path / "failed.jsonl"
    started = time.monotonic()
    r = iotctl("coap", "post", f"{server.uri}/x", "-l", "-W", "1", "--failed", str(failed), input="a\nb\nc\n")
    assert r.exit_code == 5, r
    assert time.monotonic() - started < 6
    _one_error_line(r.stderr, f"POST {server.uri}/x", "no response within 1 s",
                    "sent 2, acknowledged 1, 2 not acknowledged written to")
    assert [json.loads(line)["payload"] for line in failed.read_text().splitlines()] == ["b", "c"]


@pytest.mark.parametrize("given, kept", [("application/json", {"content_type": "application/json"}),
                                         ("65000", {"meta": {"options": {"Content-Format": 65000}}})])
def test_a_failed_file_keeps_the_content_format_and_replays_on_its_own(raw_server, iotctl, tmp_path, given, kept):
    """Issue 23 item 8: what --failed keeps of a line is what a capture would have, -t
    included, so `--replay FILE` alone sends the same Content-Format."""
    server = raw_server(lambda req: [])  # never answers
    failed = tmp_path / "failed.jsonl"
    r = iotctl("coap", "post", f"{server.uri}/x", "-l", "-t", given, "-W", "1", "--failed", str(failed),
               input="a\n")
    assert r.exit_code == 5, r
    (env,) = [json.loads(line) for line in failed.read_text().splitlines()]
    assert env["protocol"] == "coap" and env["payload"] == "a"
    assert {k: env[k] for k in kept} == kept, env
    answering = raw_server(lambda req: [piggybacked(req, CHANGED)])
    r = iotctl("coap", "post", f"{answering.uri}/x", "--replay", str(failed))
    assert r.exit_code == 0, r
    (request,) = answering.requests
    assert request["payload"] == b"a"
    assert request["options"][12] == [int(kept.get("meta", {}).get("options", {}).get("Content-Format", 50))
                                      .to_bytes(1 if given != "65000" else 2, "big")]


def test_lines_ctrl_c_reports_what_was_acknowledged(device, tmp_path):
    name = _name("ctrl-c")
    failed = tmp_path / "failed.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "iotctl", "coap", "put", f"{device.uri}/store/{name}", "-l",
                             "--failed", str(failed)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=clean_env())
    try:
        proc.stdin.write(b"1\n2\n3\n")
        proc.stdin.flush()
        wait_until(lambda: len([line for line in device.log().splitlines() if f"PUT /store/{name} " in line]) == 3,
                   what="three PUTs logged")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert b"Traceback" not in err
    assert b"interrupted: sent 3, acknowledged 3, 0 not acknowledged written to" in err, err
    assert failed.read_text() == ""


def test_lines_survive_a_pause_in_stdin(device, iotctl_proc):
    """Issue 21 item 6: a pause in the input is not a missing acknowledgement."""
    name = _name("pause")
    r = subprocess.run(["bash", "-c", f"(echo a; sleep 2.5; echo b) | {sys.executable} -m iotctl coap put "
                                      f"{device.uri}/store/{name} -l -W 1"],
                       capture_output=True, env=clean_env(), timeout=30)
    assert r.returncode == 0, r.stderr
    assert iotctl_proc("coap", "get", f"{device.uri}/store/{name}").stdout == b"b\n"


def test_post_method_put_from_the_command_line(device, iotctl):
    name = _name("method")
    r = iotctl("coap", "post", f"{device.uri}/store/{name}", "--method", "put", "-m", "via put", "-o", "json")
    assert r.exit_code == 0, r
    assert json.loads(r.stdout)["meta"]["code"] == "2.01 Created"
    device.wait_log(rf"CON PUT /store/{name} -> 2\.01 Created")


def test_refused_single_request_with_json_prints_the_response(device, iotctl):
    r = iotctl("coap", "put", f"{device.uri}/actuators/led", "maybe", "-o", "jsonl")
    assert r.exit_code == 6
    assert json.loads(r.stdout)["meta"]["code"] == "4.00 Bad Request"


def test_receive_driver_runs_a_url_source(libcoap):
    from iotctl.output import JsonWriter
    import io

    out = io.BytesIO()
    with resolver.source(f"{libcoap}/time#timeout=5") as observation:
        n = receive.run(observation, receive.ReceiveSpec(count=2, timeout=10), "observe", JsonWriter(out, lines=True))
    assert n == 2
    assert [json.loads(line)["protocol"] for line in out.getvalue().splitlines()] == ["coap", "coap"]


def test_sink_to_a_closed_port_is_exit_3(iotctl):
    from tests.helpers import free_port

    r = iotctl("coap", "post", f"coap://127.0.0.1:{free_port()}/x", "-l", input="a\n")
    assert r.exit_code == 3, r
    _one_error_line(r.stderr, "connection refused", "sent 1, acknowledged 0")


def test_errors_are_iotctl_errors(libcoap):
    with pytest.raises(IotctlError) as exc:
        with resolver.source(f"{libcoap}/no-such-resource#timeout=5"):
            pass
    assert exc.value.code == 6 and "4.04 Not Found" in str(exc.value)


# --------------------------------------------------------------------------- iotctl bridge


def test_bridge_mqtt_into_coap_puts(device, iotctl, peer, topic):
    """`iotctl bridge mqtt://... coap://...#method=put`: each MQTT message a PUT, its MQTT 5
    content type crossing as Content-Format."""
    peer("mosquitto")
    name = _name("bridged")
    proc = subprocess.Popen([sys.executable, "-m", "iotctl", "bridge", f"mqtt://127.0.0.1:1883/{topic}?qos=1",
                             f"{device.uri}/store/{name}#method=put", "-C", "2", "-W", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    try:
        wait_until(lambda: proc.poll() is not None or b"bridging" in proc.stderr.peek(4096), 15,
                   what="the bridge's start-up line")
        for payload in ('{"n": 1}', '{"n": 2}'):
            r = subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "pub", "-t", topic, "-q", "1", "-m", payload,
                                "--content-type", "application/json"], capture_output=True, env=clean_env(), timeout=20)
            assert r.returncode == 0, r.stderr
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    env = json.loads(iotctl("coap", "get", f"{device.uri}/store/{name}", "-o", "json").stdout)
    assert env["payload"] == '{"n": 2}' and env["meta"]["options"]["Content-Format"] == 50
    assert len(re.findall(rf"CON PUT /store/{name} -> 2\.0[14]", device.log())) == 2


def test_bridge_coap_observation_into_mqtt(libcoap, peer, topic):
    """`iotctl bridge coap://.../time mqtt://...`: every notification published."""
    peer("mosquitto")
    sub = subprocess.Popen([sys.executable, "-m", "iotctl", "mqtt", "sub", "-t", topic, "-C", "3", "-W", "30"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    try:
        wait_until(lambda: sub.poll() is not None or b"subscribed" in sub.stderr.peek(4096), 15, what="subscribed")
        r = subprocess.run([sys.executable, "-m", "iotctl", "bridge", f"{libcoap}/time", f"mqtt://127.0.0.1:1883/{topic}",
                            "-C", "3", "-W", "20"], capture_output=True, env=clean_env(), timeout=40)
        assert r.returncode == 0, r.stderr
        out, err = sub.communicate(timeout=30)
    finally:
        sub.kill()
    assert sub.returncode == 0, err
    lines = out.decode().splitlines()
    assert len(lines) == 3 and all(re.fullmatch(r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d", x) for x in lines), lines

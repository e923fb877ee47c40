"""Payload input shared by every sending command (unit level; wire tests are per protocol)."""

import io
import json

import pytest

from iotctl.errors import UsageError
from iotctl.payload import PayloadSpec


def test_exactly_one_source():
    with pytest.raises(UsageError, match="no payload"):
        PayloadSpec().validate()
    with pytest.raises(UsageError, match="conflicting"):
        PayloadSpec(message="a", lines=True).validate()
    PayloadSpec(null=True).validate()


def test_lines_strip_the_newline_only_and_keep_empty_lines():
    spec = PayloadSpec(lines=True)
    got = list(spec.payloads(io.BytesIO(b"a\r\n\nb\n\n\nlast")))
    assert got == [b"a\r", b"", b"b", b"", b"", b"last"]  # like mosquitto_pub -l: CR is data


def test_lines_with_encode_cbor_per_line():
    import cbor2

    spec = PayloadSpec(lines=True, encode="cbor")
    got = [cbor2.loads(o.payload) for o in spec.iter(io.BytesIO(b'{"a":1}\n[2]\n'))]
    assert got == [{"a": 1}, [2]]


def test_stdin_whole(monkeypatch):
    assert PayloadSpec(stdin=True).read_one(io.BytesIO(b"x\ny\n")) == b"x\ny\n"


def test_file_unreadable(tmp_path):
    with pytest.raises(UsageError, match="cannot read file"):
        PayloadSpec(file=str(tmp_path / "missing")).read_one()


def test_replay_reads_envelopes_and_rejects_garbage(tmp_path):
    good = tmp_path / "cap.jsonl"
    good.write_text(json.dumps({"ts": "2026-01-01T00:00:00+00:00", "protocol": "mqtt", "address": "a/b",
                                "payload": "AP8=", "encoding": "base64", "meta": {}}) + "\n\n")
    items = list(PayloadSpec(replay=str(good)).iter())
    assert [(i.address, i.payload) for i in items] == [("a/b", b"\x00\xff")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json}\n")
    with pytest.raises(UsageError, match="line 1"):
        list(PayloadSpec(replay=str(bad)).iter())

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


# --------------------------------------------------------------------------- -l, however the input arrives


from hypothesis import given, strategies as st  # noqa: E402


@given(st.binary(max_size=300).map(lambda b: b.replace(b"\x00", b"\n")), st.lists(st.integers(1, 40), max_size=30))
def test_lines_are_the_same_however_the_input_is_cut(data, cuts):
    """-l's lines from the input in chunks of any sizes (a pipe gives what it has) are the
    lines of the whole input: each LF ends one, a last line without LF counts."""
    from iotctl.payload import _split

    chunks, pos = [], 0
    for size in cuts:
        if pos < len(data):
            chunks.append(data[pos:pos + size])
            pos += size
    if pos < len(data):
        chunks.append(data[pos:])
    got = [line for batch in _split(iter(chunks)) for line in batch]
    expected = data.split(b"\n")
    if expected[-1] == b"":
        expected.pop()  # the input ended with LF: no line after it
    assert got == expected


# --------------------------------------------------------------------------- endless input: refused, bounded


def _pub(*args: str, stdin=None, port: int = 1) -> tuple[int, str, int]:
    """`mqtt pub` (port 1: no broker, for what is read before connecting): exit status,
    stderr, peak RSS in KiB (the child's own: ru_maxrss of a fresh process)."""
    import resource
    import subprocess
    import sys

    from tests.helpers import clean_env

    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    r = subprocess.run([sys.executable, "-m", "iotctl", "mqtt", "pub", "-p", str(port), "-t", "x", *args], stdin=stdin,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=clean_env(), timeout=120)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return r.returncode, r.stderr.decode(), max(peak, before)


TOO_BIG = "more than 256 MiB, the most one message may carry"


def test_an_endless_file_is_refused_at_256_mib():
    """-f /dev/zero read for ever (12 GB of memory in 30 s): refused once 256 MiB came."""
    code, err, peak = _pub("-f", "/dev/zero")
    assert (code, err) == (2, f"iotctl: error: cannot read file /dev/zero: {TOO_BIG}\n")
    assert peak < 700 * 1024, peak


def test_a_file_larger_than_256_mib_is_refused_before_it_is_read(tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as fh:
        fh.truncate((256 << 20) + 1)  # sparse: nothing written to the disk
    code, err, _ = _pub("-f", str(big))
    assert (code, err) == (2, f"iotctl: error: cannot read file {big}: {TOO_BIG}\n")


@pytest.mark.parametrize("option, said", [
    ("-s", f"cannot read stdin: {TOO_BIG}"),
    ("-l", f"stdin: a line of {TOO_BIG} (no line feed)"),
])
def test_an_endless_stdin_is_refused_at_256_mib(peer, option, said):
    """-s reads before connecting; -l streams once connected (the private Mosquitto)."""
    peer("mosquitto-private")
    with open("/dev/zero", "rb") as zero:
        code, err, peak = _pub(option, stdin=zero, port=11883)
    assert (code, err) == (2, f"iotctl: error: {said}\n")
    assert peak < 700 * 1024, peak


def test_an_endless_replay_file_is_refused(peer):
    """--replay /dev/zero: one line that never ends is not an envelope, refused once it is
    longer than a 256 MiB payload's could be (base64 and the envelope: 342 MiB)."""
    peer("mosquitto-private")
    code, err, peak = _pub("--replay", "/dev/zero", port=11883)
    assert (code, err) == (2, "iotctl: error: /dev/zero, line 1: longer than 342 MiB: not a message envelope\n")
    assert peak < 1536 * 1024, peak

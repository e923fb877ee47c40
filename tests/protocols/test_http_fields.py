"""Unit tests of iotctl/protocols/http/fields.py: header checks, URLs, sizes, and the
event-stream and NDJSON splitters (any way of cutting the bytes gives the same events)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from iotctl.errors import UsageError
from iotctl.protocols.http import fields


def test_header_option_forms():
    assert fields.parse_header_option("X-A: 1") == ("X-A", "1")
    assert fields.parse_header_option("X-A:1") == ("X-A", "1")
    assert fields.parse_header_option("Accept:") == ("Accept", None)
    assert fields.parse_header_option("X-Empty;") == ("X-Empty", "")
    for bad in ("X A: 1", "X-A: 1\r\nY: 2", "X-A: \x00", ": x", "nocolon"):
        with pytest.raises(UsageError):
            fields.parse_header_option(bad)


def test_portable_headers_keep_only_user_headers():
    pairs = [("X-A", "1"), ("Connection", "close"), ("content-length", "3"), ("Authorization", "Basic x"),
             ("bad name", "1"), ("X-B", "a\nb"), ("Transfer-Encoding", "chunked"), ("trace-id", "t")]
    assert fields.portable_headers(pairs) == [("X-A", "1"), ("trace-id", "t")]


def test_urls():
    u = fields.parse_url("https://me:pw@example.org/a/b?x=1#frag")
    assert (u.scheme, u.host, u.port, u.target, u.username, u.password) == ("https", "example.org", 443, "/a/b?x=1",
                                                                            "me", "pw")
    assert u.authority == "example.org" and "pw" not in u.shown
    assert fields.parse_url("127.0.0.1:8080").text() == "http://127.0.0.1:8080/"
    assert fields.parse_url("http://[::1]:81/x").authority == "[::1]:81"
    for bad in ("ftp://x/", "http://", "http://a b/", "http://h:99999/"):
        with pytest.raises(UsageError) as info:
            fields.parse_url(bad)
        assert info.value.code == 2


def test_sizes():
    assert fields.parse_size("16MiB") == 16 << 20
    assert fields.parse_size("64k") == 65536 and fields.parse_size("100") == 100
    with pytest.raises(UsageError):
        fields.parse_size("lots")


def test_event_stream_rules():
    p = fields.EventStream()
    events = p.feed(b"\xef\xbb\xbf: hi\nretry: 500\nid: 7\nevent: up\ndata: a\ndata:b\r\n\r\ndata\n\nid\n\ndata: x\r")
    assert events == [{"data": "a\nb", "event": "up", "id": "7", "retry": 500},
                      {"data": "", "event": "message", "id": "7", "retry": 500}]
    assert p.feed(b"\n") == []  # the CR ended the line; this LF is an empty line... of nothing pending
    assert p.feed(b"\n") == [{"data": "x", "event": "message", "id": "", "retry": 500}]


def test_event_stream_bounds_a_line_and_an_event():
    with pytest.raises(ValueError):
        fields.EventStream(limit=100).feed(b"data: " + b"x" * 200)
    p = fields.EventStream(limit=100)
    with pytest.raises(ValueError):
        for _ in range(20):
            p.feed(b"data: " + b"y" * 10 + b"\n")


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


_TEXT = st.text(alphabet=st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)), max_size=20)


@given(st.lists(st.tuples(_TEXT, st.lists(_TEXT, min_size=1, max_size=3)), max_size=6),
       st.lists(st.integers(min_value=0, max_value=10_000), max_size=8), st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_event_stream_any_chunking_same_events(events, cuts, eol):
    body = b""
    for name, lines in events:
        if name:
            body += b"event: " + name.encode() + eol
        for line in lines:
            body += b"data: " + line.encode() + eol
        body += eol
    whole = fields.EventStream().feed(body)
    p = fields.EventStream()
    pieces = []
    for chunk in _cut(body, cuts):
        pieces += p.feed(chunk)
    if eol == b"\r":
        pieces += p.feed(b"\n")  # a CR at the very end waits for what follows
        whole += fields.EventStream().feed(body + b"\n")[len(whole):]
    assert pieces == whole
    assert [e["data"] for e in whole] == ["\n".join(lines) for _, lines in events]


@given(st.lists(st.binary(max_size=30).filter(lambda b: b"\n" not in b and b.strip()), max_size=10),
       st.lists(st.integers(min_value=0, max_value=10_000), max_size=8))
def test_lines_any_chunking(lines, cuts):
    body = b"".join(line + b"\n" for line in lines)
    p = fields.Lines()
    out = []
    for chunk in _cut(body, cuts):
        out += p.feed(chunk)
    out += p.end()
    assert out == [line[:-1] if line.endswith(b"\r") else line for line in lines]

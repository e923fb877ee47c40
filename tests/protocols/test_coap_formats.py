"""Unit tests for iotctl.protocols.coap.formats: content formats, options, URIs (no peer)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from iotctl.errors import ExitCode, UsageError
from iotctl.protocols.coap import formats


@pytest.mark.parametrize("text, number", [
    ("text/plain", 0), ("text/plain; charset=utf-8", 0), ("TEXT/PLAIN;CHARSET=UTF-8", 0), ("text", 0),
    ("application/json", 50), ("json", 50), (" application/json ", 50),
    ("application/cbor", 60), ("cbor", 60),
    ("application/link-format", 40), ("link-format", 40),
    ("application/senml+json", 110), ("senml+json", 110), ("senml", 110),
    ("application/senml+cbor", 112), ("application/octet-stream", 42),
    ("application/merge-patch+json", 52), ("0", 0), ("50", 50), ("65535", 65535), ("11542", 11542),
])
def test_content_format_by_name_or_number(text, number):
    assert formats.parse_content_format(text) == number


@pytest.mark.parametrize("text", ["application/bogus", "jsn", "", "65536", "-1", "text/html"])
def test_unknown_content_format_is_a_usage_error(text):
    with pytest.raises(UsageError) as info:
        formats.parse_content_format(text, "-A")
    assert info.value.code == ExitCode.USAGE
    assert info.value.what.startswith("-A")


@given(st.sampled_from(sorted(formats.CONTENT_FORMATS)))
def test_every_known_name_maps_back_to_its_number(number):
    name = formats.content_format_name(number)
    assert formats.parse_content_format(name) == number
    assert formats.parse_content_format(str(number)) == number


@given(st.integers(min_value=0, max_value=65535))
def test_any_number_is_accepted(number):
    assert formats.parse_content_format(str(number)) == number


def test_content_format_name():
    assert formats.content_format_name(0) == "text/plain; charset=utf-8"
    assert formats.content_format_name(60) == "application/cbor"
    assert formats.content_format_name(None) is None
    assert formats.content_format_name(1234) is None


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("text, expected", [
    ("2048=0x0102", (2048, b"\x01\x02")),
    ("2048,0x0102", (2048, b"\x01\x02")),
    ("15=rt=light", (15, b"rt=light")),
    ("Uri-Query=a=1", (15, b"a=1")),
    ("uri-query=a=1", (15, b"a=1")),
    ("14=60", (14, b"\x3c")),            # Max-Age is a uint
    ("Max-Age=0", (14, b"")),             # uint 0 is empty
    ("17=50", (17, b"\x32")),
    ("14=0x0100", (14, b"\x01\x00")),
    ("1=0xDEADbeef", (1, b"\xde\xad\xbe\xef")),
    ("2049=text", (2049, b"text")),
    ("If-None-Match", (5, b"")),
    ("5=", (5, b"")),
    ("4=0x", (4, b"")),
    ("11=a path", (11, b"a path")),
])
def test_parse_option(text, expected):
    assert formats.parse_option(text) == expected


@pytest.mark.parametrize("text", ["=1", "x", "Nope=1", "0=1", "65536=1", "14=0xzz", "14=0x0102030405",
                                  "1=0x" + "00" * 1035])
def test_bad_option_is_a_usage_error(text):
    with pytest.raises(UsageError):
        formats.parse_option(text)


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_uint_options_round_trip(value):
    number, raw = formats.parse_option(f"14={value}")
    assert number == 14
    assert len(raw) == (value.bit_length() + 7) // 8
    assert formats.option_display(14, raw) == value


@given(st.binary(max_size=64))
def test_hex_values_round_trip(data):
    assert formats.parse_option(f"2050=0x{data.hex()}") == (2050, data)
    shown = formats.option_display(2050, data)
    assert shown == "0x" + data.hex()


def test_option_display():
    assert formats.option_display(23, bytes([0x2E])) == "2/1/1024"  # Block2 num 2, more, szx 6
    assert formats.option_display(27, b"") == "0/0/16"
    assert formats.option_display(12, b"\x32") == 50
    assert formats.option_display(8, b"store") == "store"
    assert formats.option_display(4, b"\x01\xff") == "0x01ff"
    assert formats.option_display(8, b"\xff") == "0xff"
    assert formats.options_meta([(8, b"store"), (8, b"1"), (14, b"\x3c"), (6, b"\x05")], skip=(6,)) == {
        "Location-Path": ["store", "1"], "Max-Age": 60}


def test_block_sizes():
    assert [formats.block_szx(s) for s in formats.BLOCK_SIZES] == list(range(7))
    with pytest.raises(UsageError):
        formats.block_szx(100)


# --------------------------------------------------------------------------- URIs


@pytest.mark.parametrize("uri", [
    "coap://127.0.0.1/time", "coap://localhost:5683", "coaps://[::1]:5684/a?b=c", "coap+tcp://h/x",
    "coaps+tcp://h:1/", "coap+ws://h/.well-known/coap", "COAP://H/x", "coap://[fe80::1%25eth0]/",
])
def test_good_uris(uri):
    assert formats.check_uri(uri) == uri


@pytest.mark.parametrize("uri, why", [
    ("localhost/time", "no scheme"), ("", "no scheme"), ("http://h/x", "unknown scheme"),
    ("coap:///x", "no host"), ("coap://h:99999/", "Port"), ("coap://h:port/", "Port"),
    ("coap://u:p@h/", "user name"), ("coap://h/x#frag", "fragment"), ("coap://h/a b", "white space"),
    ("coap://[xyz]/", "IPv6"),
])
def test_bad_uris(uri, why):
    with pytest.raises(UsageError) as info:
        formats.check_uri(uri)
    assert why.lower() in (info.value.why or "").lower()
    assert info.value.code == ExitCode.USAGE


def test_missing_scheme_hint():
    with pytest.raises(UsageError) as info:
        formats.check_uri("127.0.0.1/time")
    assert info.value.hint == "did you mean coap://127.0.0.1/time?"


def test_with_path_and_multicast():
    assert formats.with_path("coap://h", "/.well-known/core") == "coap://h/.well-known/core"
    assert formats.with_path("coap://h/", "/.well-known/core") == "coap://h/.well-known/core"
    assert formats.with_path("coap://h:1/?rt=x", "/.well-known/core") == "coap://h:1/.well-known/core?rt=x"
    assert formats.with_path("coap://h/other", "/.well-known/core") == "coap://h/other"
    assert formats.is_multicast_host("224.0.1.187") and formats.is_multicast_host("ff02::fd")
    assert formats.is_multicast_host("ff05::fd%eth0")
    assert not formats.is_multicast_host("127.0.0.1") and not formats.is_multicast_host("localhost")
    assert formats.uri_scheme("COAP+TCP://h/") == "coap+tcp"
    assert formats.uri_host("coap://[::1]:5/x") == "::1"

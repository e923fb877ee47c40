"""The mapping tables of `coap proxy` (iotctl/protocols/coap/proxy/mapping.py) and its
page, without any peer: RFC 8075's target URIs, media types, Table 2 of response
codes, preconditions; RFC 7252 10.1 the other way; server-sent events."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given, settings, strategies as st

from iotctl.protocols.coap.proxy import mapping, page
from iotctl.protocols.coap.proxy.mapping import MappingError
from tests.protocols.coap_proxy_helpers import parse_events


# --------------------------------------------------------------------------- target URIs


@pytest.mark.parametrize("target, prefix, uri", [
    ("/hc/coap://dev.example:5683/light", "/hc/", "coap://dev.example:5683/light"),
    ("/coap://dev.example/light?on", "/", "coap://dev.example/light?on"),
    ("coap://dev.example/light", "", "coap://dev.example/light"),                       # absolute form
    ("/hc/coap://%5B2001:db8::1%5D/light?on", "/hc/", "coap://[2001:db8::1]/light?on"),  # RFC 8075 5.3.2
    ("/hc/coap://%5b::1%5d:5683/x", "/hc/", "coap://[::1]:5683/x"),
    ("/hc/coap%3A%2F%2F127.0.0.1%3A5683%2Ftime", "/hc/", "coap://127.0.0.1:5683/time"),  # encodeURIComponent
    ("/hc/COAP+TCP://h/x", "/hc/", "coap+tcp://h/x"),
    ("/hc/coap://h/a%2Fb/c", "/hc/", "coap://h/a%2Fb/c"),                                # path kept as it is
])
def test_targets(target, prefix, uri):
    found = mapping.parse_target(target)
    assert (found.prefix, found.uri) == (prefix, uri)


@pytest.mark.parametrize("target, status, words", [
    ("/hc/", 400, "no target CoAP URI"),
    ("/", 400, "no target"),
    ("/hc/dev.example/light", 400, "no scheme"),              # RFC 8075 5.3.1: a 4xx
    ("/hc/coap://", 400, "no host"),
    ("/hc/coap://h:99999/x", 400, "target CoAP URI"),
    ("/hc/http://h/x", 400, "unknown scheme"),
    ("/hc/coap://h/x#frag", 400, "fragment"),
    ("/hc/coap://[zz]/x", 400, "IPv6"),
    ("/hc/coaps://h/x", 501, "DTLS"),
    ("/hc/coap://224.0.1.187/.well-known/core", 403, "multicast"),  # RFC 8075 8.4
    ("/hc/coap://[ff02::fd]/x", 403, "multicast"),
    ("*", 400, "bad request target"),
])
def test_bad_targets(target, status, words):
    with pytest.raises(MappingError) as caught:
        mapping.parse_target(target)
    assert caught.value.status == status
    assert words in caught.value.text


def test_hosting_round_trip_of_an_ipv6_uri():
    uri = "coap://[2001:db8::1]:5683/a?b=[c]"
    hosted = mapping.hosting(uri)
    assert hosted == "coap://%5B2001:db8::1%5D:5683/a?b=[c]"   # only the authority's brackets
    assert mapping.parse_target("/hc/" + hosted).uri == uri


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=60))
def test_any_target_is_a_uri_or_a_client_error(text):
    """Whatever an HTTP client sends, the proxy either finds a checked CoAP URI or
    answers it a 4xx/501 itself: never an exception."""
    try:
        found = mapping.parse_target("/hc/" + text)
    except MappingError as exc:
        assert exc.status in (400, 403, 501)
    else:
        assert found.uri.split("://")[0] in mapping.TARGET_SCHEMES


# --------------------------------------------------------------------------- methods


def test_methods():
    assert [mapping.coap_method(m) for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "FETCH", "iPATCH")] \
        == ["get", "get", "post", "put", "delete", "patch", "fetch", "ipatch"]
    for method in ("OPTIONS", "TRACE", "CONNECT", "PROPFIND"):
        with pytest.raises(MappingError) as caught:
            mapping.coap_method(method)
        assert caught.value.status == 501
    assert [mapping.http_method(m) for m in ("GET", "POST", "PUT", "DELETE", "PATCH", "iPATCH")] == \
        ["GET", "POST", "PUT", "DELETE", "PATCH", "PATCH"]
    with pytest.raises(MappingError) as caught:
        mapping.http_method("FETCH")
    assert caught.value.status == "5.01"


# --------------------------------------------------------------------------- media types


@pytest.mark.parametrize("media_type, number", [
    ("text/plain", 0), ("text/plain; charset=utf-8", 0), ("text/plain;charset=UTF-8", 0),
    ("text/plain; charset=us-ascii", 0), ("application/json", 50), ("application/json; charset=utf-8", 50),
    ("application/cbor", 60), ("application/link-format", 40), ("application/senml+json", 110),
    ("application/octet-stream", 42), ("application/xml", 41),
    ("application/coap-payload; cf=11543", 11543), ("application/coap-payload;cf=\"60\"", 60),   # RFC 8075 6.2
    ("text/html", None), ("application/x-www-form-urlencoded", None), ("text/plain; charset=latin-1", None),
    ("application/coap-payload", None), ("application/coap-payload; cf=70000", None), ("", None),
])
def test_content_formats(media_type, number):
    assert mapping.content_format(media_type) == number


def test_an_unmapped_content_type_is_415_and_none_is_no_option():
    assert mapping.request_content_format(None) is None
    assert mapping.request_content_format("application/json") == 50
    for bad in ("text/html", "application/x-www-form-urlencoded"):
        with pytest.raises(MappingError) as caught:
            mapping.request_content_format(bad)
        assert caught.value.status == 415 and "coap-payload" in caught.value.text
    with pytest.raises(MappingError) as caught:
        mapping.request_content_format("application/json", "gzip")
    assert caught.value.status == 415
    assert mapping.request_content_format("application/json", "identity") == 50


def test_content_format_back_to_media_type():
    assert mapping.media_type(0) == "text/plain; charset=utf-8"
    assert mapping.media_type(50) == "application/json"
    assert mapping.media_type(65000) == "application/coap-payload; cf=65000"   # RFC 8075 6.2
    assert mapping.media_type(None) is None
    for number in (0, 40, 42, 50, 60, 110, 112, 65000):
        assert mapping.content_format(mapping.media_type(number)) == number


@pytest.mark.parametrize("header, number, events", [
    (None, None, False),
    ("*/*", None, False),                                       # RFC 8075 6.1: */* is no Accept
    ("application/json", 50, False),
    ("text/html, application/json;q=0.9, */*;q=0.8", 50, False),  # an unmapped type is skipped
    ("text/html", None, False),                                 # nothing mapped: ignored
    ("*/*, application/cbor", None, False),                    # equal q: header order; */* first is none
    ("application/cbor;q=0.5, text/plain", 0, False),
    ("application/json;q=0, text/plain;q=0.1", 0, False),      # q=0 is "not acceptable"
    ("text/event-stream", None, True),
    ("text/event-stream, application/json;q=0.5", 50, True),
    ("application/coap-payload; cf=112", 112, False),
    ("text/*", None, False),
])
def test_accept(header, number, events):
    assert mapping.parse_accept(header) == mapping.Accept(number, events)


# --------------------------------------------------------------------------- response codes


@pytest.mark.parametrize("code, payload, status", [
    ((2, 1), False, 201), ((2, 1), True, 201),
    ((2, 2), True, 200), ((2, 2), False, 204),      # note 2
    ((2, 4), True, 200), ((2, 4), False, 204),
    ((2, 5), True, 200), ((2, 5), False, 200),
    ((4, 0), True, 400), ((4, 1), True, 403),       # note 5: no WWW-Authenticate in CoAP
    ((4, 3), False, 403), ((4, 4), True, 404), ((4, 5), True, 400),   # note 7
    ((4, 6), True, 406), ((4, 12), False, 412), ((4, 13), True, 413), ((4, 15), True, 415),
    ((5, 0), True, 500), ((5, 1), True, 501), ((5, 2), True, 502), ((5, 3), True, 503),
    ((5, 4), True, 504), ((5, 5), True, 502),       # note 9
    ((4, 9), True, 409), ((4, 22), True, 422), ((4, 29), True, 429),
    ((2, 31), False, 502), ((4, 8), False, 502),    # note 10: block-wise only
    ((4, 20), True, 400), ((5, 9), True, 500), ((2, 9), True, 200),   # unlisted: by class
])
def test_table_2(code, payload, status):
    assert mapping.http_status(*code, has_payload=payload)[0] == status


def test_table_2_notes():
    assert mapping.http_status(2, 3, False, conditional=True) == (304, "Not Modified")     # note 3
    assert mapping.http_status(2, 3, True, conditional=False)[0] == 200                    # note 4
    assert mapping.http_status(4, 2, True, proxy_options=False)[0] == 400                  # note 6
    assert mapping.http_status(4, 2, True, proxy_options=True)[0] == 500
    status, reason = mapping.http_status(4, 5, True)
    assert status == 400 and reason.startswith("CoAP server returned 4.05")              # note 7


def test_max_age_headers():
    assert mapping.cache_control(None, 2, 5) == [("Cache-Control", "max-age=60")]
    assert mapping.cache_control(5, 2, 5) == [("Cache-Control", "max-age=5")]
    assert mapping.cache_control(30, 5, 3) == [("Retry-After", "30")]                    # note 8
    assert mapping.cache_control(None, 5, 3) == []
    assert mapping.cache_control(7, 4, 29) == [("Retry-After", "7")]
    assert mapping.cache_control(7, 2, 4) == []


def test_location_is_mapped_like_the_request():
    target = mapping.parse_target("/hc/coap://[::1]:5683/store")
    assert mapping.location(target, ("store", "3"), ()) == "/hc/coap://%5B::1%5D:5683/store/3"
    target = mapping.parse_target("/coap://dev/store")
    assert mapping.location(target, ("a b",), ("x=1",)) == "/coap://dev/a%20b?x=1"
    assert mapping.location(target, (), ()) is None


# --------------------------------------------------------------------------- preconditions


def test_preconditions():
    tag = bytes.fromhex("0a0b0c")
    assert mapping.etag_header(tag) == '"0a0b0c"'
    assert mapping.conditional_options(None, None) == ([], False)
    assert mapping.conditional_options('"0a0b0c"', None) == ([(1, tag)], False)
    assert mapping.conditional_options("*", None) == ([(1, b"")], False)
    assert mapping.conditional_options(None, "*") == ([(5, b"")], False)
    assert mapping.conditional_options(None, 'W/"0a0b0c", "01"') == ([(4, tag), (4, b"\x01")], True)
    # a tag this proxy never gave cannot match: If-Match fails at once, If-None-Match is dropped
    with pytest.raises(MappingError) as caught:
        mapping.conditional_options('"not-hex"', None)
    assert caught.value.status == 412
    assert mapping.conditional_options(None, '"zz", "00112233445566778899"') == ([], False)


# --------------------------------------------------------------------------- CoAP -> HTTP


@pytest.mark.parametrize("method, status, code", [
    ("GET", 200, "2.05"), ("GET", 204, "2.05"), ("GET", 203, "2.05"),
    ("POST", 200, "2.04"), ("POST", 201, "2.01"), ("POST", 204, "2.04"), ("POST", 202, "2.04"),
    ("PUT", 201, "2.01"), ("PUT", 200, "2.04"), ("PUT", 204, "2.04"),
    ("DELETE", 200, "2.02"), ("DELETE", 204, "2.02"), ("iPATCH", 200, "2.04"), ("PATCH", 204, "2.04"),
    ("GET", 400, "4.00"), ("GET", 401, "4.01"), ("GET", 403, "4.03"), ("GET", 404, "4.04"),
    ("PUT", 405, "4.05"), ("GET", 406, "4.06"), ("PUT", 409, "4.09"), ("GET", 410, "4.04"),
    ("PUT", 412, "4.12"), ("POST", 413, "4.13"), ("POST", 415, "4.15"), ("POST", 422, "4.22"),
    ("GET", 429, "4.29"), ("GET", 418, "4.00"), ("GET", 451, "4.00"),
    ("GET", 500, "5.00"), ("GET", 501, "5.01"), ("GET", 502, "5.02"), ("GET", 503, "5.03"),
    ("GET", 504, "5.04"), ("GET", 599, "5.00"), ("GET", 302, "5.02"), ("GET", 304, "5.02"),
])
def test_http_status_to_coap_code(method, status, code):
    assert mapping.coap_code(method, status) == code


def test_validation_is_2_03():
    assert mapping.coap_code("GET", 304, validating=True) == "2.03"


def test_max_age_from_http():
    assert mapping.max_age([("Cache-Control", "public, max-age=30")], 200) == 30
    assert mapping.max_age([("cache-control", "no-store")], 200) == 0
    assert mapping.max_age([], 200) is None
    assert mapping.max_age([("Retry-After", "12")], 503) == 12
    assert mapping.max_age([("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT")], 503) is None


@pytest.mark.parametrize("args, url", [
    (("http://127.0.0.1:8080/a?b=1", None, None, None, (), ()), "http://127.0.0.1:8080/a?b=1"),
    ((None, "http", "example.com", None, ("a", "b c"), ("x=1", "y")), "http://example.com/a/b%20c?x=1&y"),
    ((None, "https", "::1", 8443, ("api",), ()), "https://[::1]:8443/api"),
])
def test_proxy_urls(args, url):
    assert mapping.proxy_url(*args) == url


@pytest.mark.parametrize("args, code", [
    (("coap://other/x", None, None, None, (), ()), "5.05"),     # CoAP-CoAP proxying: not this proxy
    (("ftp://h/x", None, None, None, (), ()), "5.05"),
    ((None, "coap", "h", None, (), ()), "5.05"),
    ((None, "http", None, None, ("x",), ()), "4.00"),
    (("http:///x", None, None, None, (), ()), "4.00"),
    (("http://h:port/x", None, None, None, (), ()), "4.00"),
    (("http://h/x y", None, None, None, (), ()), "4.00"),
    (("http://h/x#f", None, None, None, (), ()), "4.00"),
])
def test_bad_proxy_urls(args, code):
    with pytest.raises(MappingError) as caught:
        mapping.proxy_url(*args)
    assert caught.value.status == code


# --------------------------------------------------------------------------- server-sent events


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=2 ** 32))
def test_an_event_carries_any_payload(payload, seq):
    """Text comes back as it was (line breaks normalised to LF), bytes as base64."""
    (event,) = parse_events(mapping.sse_event(payload, event_id=seq), errors="strict")
    assert event["id"] == str(seq)
    try:
        text = payload.decode("utf-8")
        assert "\0" not in text
    except (UnicodeDecodeError, AssertionError):
        assert event["event"] == "base64"
        assert base64.b64decode(event["data"]) == payload
    else:
        assert "event" not in event
        assert event["data"] == re.sub(r"\r\n|\r", "\n", text)


def test_comments():
    assert mapping.sse_comment("a\nb") == b": a\n: b\n\n"
    assert parse_events(mapping.sse_comment("x"), errors="strict") == []


# --------------------------------------------------------------------------- the page


def test_the_page_escapes_what_a_device_says():
    hostile = '<script>alert(1)</script>"'
    links = [{"href": "/x" + hostile, "obs": True, "title": hostile, "rt": hostile, "ct": "0"},
             {"href": "/plain", "title": "ok"}]
    html = page.render("coap://127.0.0.1:5683", links, None, "coap://127.0.0.1:5683")
    assert "<script>alert" not in html
    assert html.count("<script") == 1   # the page's own script, from /.iotctl/page.js
    assert 'data-observe="1"' in html and 'class="get"' in html
    error = page.render("coap://x", None, hostile, None)
    assert "<script>alert" not in error and "&lt;script&gt;" in error


def test_the_page_has_one_stream_for_every_observable_resource():
    links = [{"href": f"/s{i}", "obs": True} for i in range(10)] + [{"href": "/plain"}]
    html = page.render("coap://[::1]:5683", links, None, "coap://[::1]:5683")
    (stream,) = re.findall(r'data-observe="(/\.iotctl/observe[^"]*)"', html)
    assert stream.count("path=") == 10
    assert 'data-uri="/hc/coap://%5B::1%5D:5683/plain"' in html


# --------------------------------------------------------------------------- listening addresses


def test_listen_addresses():
    from iotctl.errors import UsageError
    from iotctl.protocols.coap.formats import parse_listen

    assert parse_listen("8080", "--http") == ("127.0.0.1", 8080)
    assert parse_listen(":8080", "--http") == ("127.0.0.1", 8080)
    assert parse_listen("0.0.0.0:0", "--http") == ("0.0.0.0", 0)
    assert parse_listen("[::1]:5683", "--coap") == ("::1", 5683)
    assert parse_listen("localhost:5683", "--coap") == ("localhost", 5683)
    for bad in ("x", "::1:80", "[::1]", "host:70000", "host:"):
        with pytest.raises(UsageError):
            parse_listen(bad, "--http")

"""Unit tests for iotctl.linkformat (RFC 6690 link-format): parse, filter, write, table."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from iotctl.protocols.coap.linkformat import filter_links, format_link, format_links, links_table, matches, parse_links

LIBCOAP = ('</>;title="General Info";ct=0,</time>;if="clock";rt="ticks";title="Internal Clock";ct=0;obs,'
           '</async>;ct=0')


def test_parse_libcoap_discovery():
    links = parse_links(LIBCOAP)
    assert links == [
        {"href": "/", "title": "General Info", "ct": "0"},
        {"href": "/time", "if": "clock", "rt": "ticks", "title": "Internal Clock", "ct": "0", "obs": True},
        {"href": "/async", "ct": "0"},
    ]


def test_parse_empty():
    assert parse_links("") == []
    assert parse_links("  \n") == []


def test_quoted_values_keep_commas_semicolons_and_escapes():
    text = r'</a>;title="x, y; z";rt="q\"uote";if="back\\slash",</b>'
    assert parse_links(text) == [
        {"href": "/a", "title": "x, y; z", "rt": 'q"uote', "if": "back\\slash"},
        {"href": "/b"},
    ]


def test_whitespace_newlines_case_and_repeats():
    text = '</a> ; RT = "one two" ;\n rt=three ; obs ,\n  <coap://[::1]/b>;anchor="/x";sz=1024,'
    links = parse_links(text)
    assert links == [
        {"href": "/a", "rt": ["one two", "three"], "obs": True},
        {"href": "coap://[::1]/b", "anchor": "/x", "sz": "1024"},
    ]


@pytest.mark.parametrize("text, where", [
    ("/time", "expected '<' at position 0"),
    ("<a", "never closed"),
    ('</a>;title="open', "never closed"),
    ("</a> </b>", "expected ',' or ';' at position 5"),
    ("</a>;=x", "parameter name"),
])
def test_malformed(text, where):
    with pytest.raises(ValueError, match=where):
        parse_links(text)


def test_filters_follow_rfc6690_queries():
    links = parse_links('</t>;rt="temperature-c sensor";if="core.s",</h>;rt="humidity";if="core.s",'
                        '</l>;rt="light";if="core.a";ct=0')
    assert [x["href"] for x in filter_links(links, rt="temperature-c")] == ["/t"]
    assert [x["href"] for x in filter_links(links, rt="sensor")] == ["/t"]
    assert [x["href"] for x in filter_links(links, rt="temp*")] == ["/t"]
    assert [x["href"] for x in filter_links(links, rt="temp")] == []
    assert [x["href"] for x in filter_links(links, if_="core.s")] == ["/t", "/h"]
    assert [x["href"] for x in filter_links(links, if_="core*", rt="l*")] == ["/l"]
    assert [x["href"] for x in filter_links(links, rt=None, if_=None)] == ["/t", "/h", "/l"]
    assert [x["href"] for x in filter_links(links, rt="*")] == ["/t", "/h", "/l"]
    assert matches(links[2], "href", "/l") and matches(links[2], "ct", "0")
    assert not matches(links[0], "ct", "0")


def test_format_link():
    assert format_link({"href": "/t", "rt": "ticks", "ct": "0", "obs": True}) == '</t>;rt="ticks";ct=0;obs'
    assert format_link({"href": "/q", "title": 'a "b"', "rt": ["x", "y"]}) == r'</q>;title="a \"b\"";rt="x";rt="y"'
    assert format_links([{"href": "/a"}, {"href": "/b", "sz": "5"}]) == "</a>,</b>;sz=5"


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.*", min_size=1, max_size=8).filter(
    lambda n: n != "href")
values = st.one_of(st.just(True), st.text(max_size=12).filter(lambda v: "\x00" not in v))
links_strategy = st.lists(
    st.builds(lambda href, params: {"href": href, **params},
              st.text(alphabet=st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)), max_size=20),
              st.dictionaries(names, st.one_of(values, st.lists(values, min_size=2, max_size=3)), max_size=5)),
    max_size=6)


@settings(suppress_health_check=[HealthCheck.too_slow])  # a loaded machine is not a failing parser
@given(links_strategy)
def test_round_trip(links):
    assert parse_links(format_links(links)) == links


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_parser_never_crashes_differently(text):
    try:
        result = parse_links(text)
    except ValueError:
        return
    assert isinstance(result, list)
    assert all(isinstance(link, dict) and "href" in link for link in result)


def _table_text(links, width: int) -> list[str]:
    from rich.console import Console

    console = Console(width=width, record=True, no_color=True, soft_wrap=True, file=open("/dev/null", "w"))
    console.print(links_table(links))
    return console.export_text().splitlines()


def test_table():
    text = _table_text(parse_links(LIBCOAP + ';sz=12'), 100)
    assert text[0].split() == ["path", "rt", "if", "ct", "obs", "title", "other"]
    row = next(line for line in text if line.startswith("/time"))
    assert row.split() == ["/time", "ticks", "clock", "0", "yes", "Internal", "Clock"]
    assert next(line for line in text if line.startswith("/async")).split() == ["/async", "0", "sz=12"]


SERVE_LIKE = ('</>;title="iotctl device";ct=0,</time>;rt="time";if="core.s";ct=0;obs;title="UTC time",'
              '</sensors/temperature>;rt="temperature-c";if="core.s";ct="0 50 60 110 112";obs;title="Temperature",'
              '</large>;rt="block";ct=0;sz=4096;title="Large"')


@pytest.mark.parametrize("width", [120, 100, 80, 60, 40, 24])
def test_table_fits_the_width_one_row_per_link(width):
    links = parse_links(SERVE_LIKE)
    text = _table_text(links, width)
    assert all(len(line) <= width for line in text), text
    rows = text[2:]
    assert len(rows) == len(links) and all(line.startswith("/") for line in rows), text  # no second rows
    assert [row.split()[0] for row in rows] == [link["href"] for link in links]  # the path stays whole


def test_table_gives_way_in_order():
    links = parse_links(SERVE_LIKE)
    assert layout_of(links, 120) == ["path", "rt", "if", "ct", "obs", "title", "other"]
    assert layout_of(links, 80) == ["path", "rt", "if", "ct", "obs", "title"]  # 'other' first
    row = next(line for line in _table_text(links, 80) if line.startswith("/sensors"))
    assert row.split() == ["/sensors/temperature", "temperature-c", "core.s", "0", "50", "60", "110", "112", "yes",
                           "Temperature"]
    assert "…" in "".join(_table_text(links, 60))  # then values are cut with an ellipsis
    assert layout_of(links, 24) == ["path"]


def layout_of(links, width: int) -> list[str]:
    from iotctl.protocols.coap.linkformat import layout

    return list(layout(links_table(links).widths, width))

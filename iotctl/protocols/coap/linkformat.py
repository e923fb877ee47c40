"""CoRE link-format (RFC 6690): parse, filter, write back, and show as a table.

    parse_links('</time>;rt="ticks";obs,</x>;ct=0')
    -> [{"href": "/time", "rt": "ticks", "obs": True}, {"href": "/x", "ct": "0"}]

Each link is a dict: "href" (the URI reference between < and >) and one entry per
parameter, names lower-cased; a parameter without a value is True, a repeated one
becomes a list. Pure Python; rich is imported only by links_table().
"""

from __future__ import annotations

from typing import Iterable

COLUMNS = ("rt", "if", "ct", "obs", "title")

_WS = " \t\r\n"
_TOKEN_END = set(_WS + "=;,\"<>")


def parse_links(text: str) -> list[dict]:
    """Parse a link-format document; raises ValueError (with the position) when malformed.

    White space between links and around ';', ',' and '=' is tolerated (some servers
    put each link on its own line)."""
    links: list[dict] = []
    i, n = 0, len(text)

    def skip_ws(i: int) -> int:
        while i < n and text[i] in _WS:
            i += 1
        return i

    i = skip_ws(i)
    if i == n:
        return links
    while True:
        i = skip_ws(i)
        if i >= n or text[i] != "<":
            raise ValueError(f"link-format: expected '<' at position {i}")
        end = text.find(">", i + 1)
        if end < 0:
            raise ValueError(f"link-format: '<' at position {i} is never closed")
        link: dict = {"href": text[i + 1:end]}
        i = end + 1
        while True:
            i = skip_ws(i)
            if i >= n or text[i] != ";":
                break
            i = skip_ws(i + 1)
            start = i
            while i < n and text[i] not in _TOKEN_END:
                i += 1
            name = text[start:i].lower()
            if not name:
                raise ValueError(f"link-format: expected a parameter name at position {start}")
            i = skip_ws(i)
            value: str | bool = True
            if i < n and text[i] == "=":
                i = skip_ws(i + 1)
                if i < n and text[i] == '"':
                    value, i = _quoted(text, i)
                else:
                    start = i
                    while i < n and text[i] not in ";," and text[i] not in _WS:
                        i += 1
                    value = text[start:i]
            _add(link, name, value)
        links.append(link)
        i = skip_ws(i)
        if i >= n:
            return links
        if text[i] != ",":
            raise ValueError(f"link-format: expected ',' or ';' at position {i}")
        i = skip_ws(i + 1)
        if i >= n:  # a trailing comma
            return links


def _quoted(text: str, i: int) -> tuple[str, int]:
    out = []
    i += 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise ValueError("link-format: a quoted string is never closed")


def _add(link: dict, name: str, value) -> None:
    if name not in link:
        link[name] = value
    elif isinstance(link[name], list):
        link[name].append(value)
    else:
        link[name] = [link[name], value]


# --------------------------------------------------------------------------- writing


def format_value(value) -> str:
    """A parameter value as written in link-format: quoted unless a plain number."""
    text = str(value)
    if text.isdigit():
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_link(link: dict) -> str:
    parts = [f"<{link['href']}>"]
    for name, value in link.items():
        if name == "href":
            continue
        for v in value if isinstance(value, list) else [value]:
            parts.append(name if v is True else f"{name}={format_value(v)}")
    return ";".join(parts)


def format_links(links: Iterable[dict]) -> str:
    return ",".join(format_link(link) for link in links)


# --------------------------------------------------------------------------- filtering


def _values(link: dict, name: str) -> list[str]:
    """The space-separated values of a parameter (rt="a b" and rt=a;rt=b alike)."""
    raw = link.get(name)
    if raw is None:
        return []
    out: list[str] = []
    for v in raw if isinstance(raw, list) else [raw]:
        if v is True:
            out.append("")
        else:
            out.extend(str(v).split() or [""])
    return out


def matches(link: dict, name: str, pattern: str) -> bool:
    """RFC 6690 section 4.1 query filtering: equal, or a prefix when PATTERN ends in '*'."""
    values = [link["href"]] if name == "href" else _values(link, name)
    if pattern.endswith("*"):
        return any(v.startswith(pattern[:-1]) for v in values)
    return pattern in values


def filter_links(links: Iterable[dict], **filters: str | None) -> list[dict]:
    """Links matching every filter given (name=pattern; `if_` for 'if')."""
    wanted = {name.rstrip("_"): pattern for name, pattern in filters.items() if pattern is not None}
    return [link for link in links if all(matches(link, name, p) for name, p in wanted.items())]


# --------------------------------------------------------------------------- table


def _cell(value) -> str:
    if value is None:
        return ""
    if value is True:
        return "yes"
    if isinstance(value, list):
        return " ".join(_cell(v) for v in value)
    return str(value)


GAP = 2                     # spaces between columns (the box's divider and one of padding)
SHRINK = {"other": 8, "title": 8, "rt": 8, "ct": 6, "if": 4}   # the narrowest a column is cut to
DROP = ("other", "if", "title", "ct", "obs", "rt")               # the order columns give way in


def layout(widths: dict[str, int], room: int) -> dict[str, int]:
    """Column widths (name -> width, in display order) that fit `room` characters: the
    path stays whole; first the 'other' column is cut or left out, then values are
    cut with an ellipsis (title, rt, ct, if, down to SHRINK), then columns are left
    out (DROP order). Never a second row for a cell."""
    out = dict(widths)

    def total() -> int:
        return sum(out.values()) + GAP * (len(out) - 1)

    def cut(name: str) -> None:
        over = total() - room
        if over > 0 and name in out:
            out[name] = max(min(out[name], SHRINK.get(name, out[name])), out[name] - over)

    cut("other")
    if total() > room:
        out.pop("other", None)
    for name in ("title", "rt", "ct", "if"):
        cut(name)
    for name in DROP:
        if total() <= room:
            break
        out.pop(name, None)
    return out


class LinksTable:
    """The links as a table that fits the console's width (a rich renderable): path,
    rt, if, ct, obs, title, and any other parameters; see `layout` for what gives way
    on a narrow terminal."""

    def __init__(self, links: list[dict]):
        self.rows = []
        for link in links:
            row = {"path": link["href"]}
            for name in COLUMNS:
                row[name] = _cell(link.get(name))
            row["other"] = " ".join(k if v is True else f"{k}={_cell(v)}" for k, v in link.items()
                                    if k != "href" and k not in COLUMNS)
            self.rows.append(row)
        names = ["path", *COLUMNS] + (["other"] if any(r["other"] for r in self.rows) else [])
        self.widths = {name: max([len(name)] + [len(r[name]) for r in self.rows]) for name in names}

    def __rich_console__(self, console, options):
        from rich import box
        from rich.table import Table

        widths = layout(self.widths, options.max_width)
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold", pad_edge=False,
                      padding=(0, GAP - 1, 0, 0))
        for name, width in widths.items():
            table.add_column(name, style="cyan" if name == "path" else ("dim" if name == "other" else None),
                             width=width, no_wrap=True, overflow="ellipsis" if name != "path" else "fold")
        for row in self.rows:
            table.add_row(*(row[name] for name in widths))
        yield table

    def __rich_measure__(self, console, options):
        from rich.measure import Measurement

        natural = sum(self.widths.values()) + GAP * (len(self.widths) - 1)
        return Measurement(min(natural, options.max_width), natural)


def links_table(links: list[dict]) -> LinksTable:
    """A table of the links that fits the terminal (see LinksTable)."""
    return LinksTable(links)


def render(payload: bytes):
    """The pretty renderer for application/link-format (registered in iotctl/registry.py):
    a table of the links. Raises ValueError when the payload is not link-format."""
    return links_table(parse_links(payload.decode("utf-8")))

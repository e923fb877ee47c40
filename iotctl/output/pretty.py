"""Pretty output with rich: a header line with address and key metadata (the keys
each protocol's registry entry names), then the payload rendered by its content type
(output/renderers.py), else by what it looks like (JSON, text, binary)."""

from __future__ import annotations

from iotctl.message import Message
from iotctl.output.writers import Writer
from iotctl.output import console
from iotctl.registry import detail_keys, header_keys

# content types iotctl uses inside a run (XMPP's tables): a renderer, not a header field
INTERNAL_TYPES = ("application/vnd.iotctl.",)


class PrettyWriter(Writer):
    """A header line cut to the terminal's width (never wrapped), the protocol's other
    metadata one line each (its low-value details only with -d), then the payload; a
    blank line between messages, so they stay apart without colour."""

    def __init__(self, out):
        super().__init__(out)
        from iotctl.settings import current

        self.console = console.stdout()
        self.debug = current().debug
        self.first = True

    def write(self, msg: Message) -> None:
        from rich.text import Text

        keys = header_keys(msg.protocol)
        hidden = () if self.debug else detail_keys(msg.protocol)
        fields: list[tuple[str, str | None]] = []  # (key, value) in order of importance; value None: a flag
        for key in keys:
            value = msg.meta.get(key)
            if value is True:
                fields.append((key, None))
            elif value is not None and value is not False and value != "":  # qos=0 is shown
                fields.append((key, safe(str(value))))
        if msg.content_type and not msg.content_type.startswith(INTERNAL_TYPES):
            fields.append(("ct", safe(msg.content_type)))
        size = f" ({len(msg.payload)} B)"
        width = max(20, self.console.width)
        clock = _clock(msg.ts)
        address = safe(msg.address)
        head = len(clock) + len(msg.protocol) + 2
        # the address is what people most need: metadata gives way first (the least
        # important fields, then long values cut), the address only when alone too long
        fields, size = _fit(fields, size, width - head - len(address))
        header = Text(no_wrap=True, overflow="ellipsis")
        header.append(clock, style="dim")
        header.append(" ")
        header.append(msg.protocol, style="magenta")
        header.append(" ")
        header.append(_shorten(address, max(16, width - head - _length(fields, size))), style="bold cyan")
        for key, value in fields:
            if value is None:
                header.append(f" {key}", style="yellow")
            else:
                header.append(f" {key}=", style="dim")
                header.append(value, style="yellow")
        header.append(size, style="dim")
        header.truncate(width, overflow="ellipsis")
        if not self.first:
            self.console.print()
        self.first = False
        self.console.print(header, no_wrap=True, overflow="ellipsis", crop=True)
        for key, value in msg.meta.items():
            if key in keys or key in hidden or value in (None, {}, [], ""):
                continue
            if isinstance(value, dict):  # one per line (MQTT 5 properties, AMQP headers, ...)
                self.console.print(Text("  " + safe(key) + ":", style="dim"))
                for sub, item in value.items():
                    self.console.print(Text.assemble(("    " + safe(str(sub)) + ": ", "dim"), _short(item)))
                continue
            self.console.print(Text.assemble(("  " + safe(key) + ": ", "dim"), _short(value)))
        self.console.print(render_payload(msg.payload, msg.content_type))

    def flush(self) -> None:
        self.console.file.flush()


def _clock(ts: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc).strftime("%H:%M:%S.%f")[:12]


def _length(fields, size: str) -> int:
    return sum(1 + len(k) + (0 if v is None else 1 + len(v)) for k, v in fields) + len(size)


def _fit(fields, size: str, room: int):
    """The header's metadata within `room` columns: long values cut to 12 characters
    first, then the size left out, then fields dropped from the least important end. When the
    address alone is too long (it is then cut), the most important field stays."""
    if _length(fields, size) <= room:
        return fields, size
    fields = [(k, v if v is None or len(v) <= 12 else v[:11] + "…") for k, v in fields]
    if _length(fields, size) > room:
        size = ""
    keep = 1 if room <= 0 else 0
    while len(fields) > keep and _length(fields, size) > room:
        fields = fields[:-1]
    return fields, size


def safe(text: str) -> str:
    """Text for one line of a terminal (the header, a metadata line): control characters
    (escape sequences, NUL, DEL, C1, and line feeds: a header value or an address with
    one would print a line of its own, looking like iotctl's) shown as escapes, never
    sent as they are (they could clear the screen)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == "\t" else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _shorten(text: str, room: int) -> str:
    """`text` cut in the middle to `room` characters when it is longer."""
    if len(text) <= room:
        return text
    keep = room - 1
    return text[: keep - keep // 2] + "…" + text[len(text) - keep // 2:]


def _short(value) -> str:
    from iotctl.message import jsonable
    import json

    if isinstance(value, (dict, list)):
        return safe(json.dumps(jsonable(value), ensure_ascii=False))
    return safe(str(jsonable(value)))


def render_payload(payload: bytes, content_type: str | None):
    """A rich renderable for a payload, chosen by content type, then by sniffing."""
    import json

    from rich.json import JSON
    from rich.text import Text

    from iotctl import codecs

    from iotctl.output.renderers import lookup

    if not payload:
        return Text("(empty)", style="dim italic")
    render = lookup(content_type)
    if render is not None:
        try:
            return render(payload)
        except (ValueError, UnicodeDecodeError):
            pass
    value = codecs.looks_like_json(payload)
    if value is not None:
        return JSON(json.dumps(value))
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return hexdump(payload)
    if not text.isprintable() and not _plain(text):
        return _escaped(text)
    return Text(text)


def _plain(text: str) -> bool:
    """Printable apart from line ends and tabs."""
    return text.replace("\n", "").replace("\t", "").replace("\r\n", "").isprintable()


def _escaped(text: str):
    """A text payload with control characters: each shown as a dim escape."""
    from rich.text import Text

    out = Text()
    for ch in text:
        if ch.isprintable() or ch in "\n\t":
            out.append(ch)
        else:
            out.append(_escape(ch), style="dim reverse")
    return out


def hexdump(data: bytes, limit: int = 4096):
    from rich.text import Text

    text = Text()
    for offset in range(0, min(len(data), limit), 16):
        chunk = data[offset:offset + 16]
        hexpart = " ".join(f"{b:02x}" for b in chunk)
        asc = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        text.append(f"{offset:08x}  ", style="dim")
        text.append(f"{hexpart:<47}  ")
        text.append(asc + "\n", style="green")
    if len(data) > limit:
        text.append(f"... {len(data) - limit} more bytes\n", style="dim")
    text.rstrip()
    return text

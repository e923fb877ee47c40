"""Pretty output with rich: a header line with address and key metadata (the keys
each protocol's registry entry names), then the payload rendered by its content type
(output/renderers.py), else by what it looks like (JSON, text, binary)."""

from __future__ import annotations

from iotctl.message import Message
from iotctl.output.writers import Writer
from iotctl.output import console
from iotctl.registry import detail_keys, header_keys



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
        tail = Text()
        for key in keys:
            value = msg.meta.get(key)
            if value is True:
                tail.append(f" {key}", style="yellow")
            elif value is not None and value is not False and value != "":  # qos=0 is shown
                tail.append(f" {key}=", style="dim")
                tail.append(str(value), style="yellow")
        if msg.content_type:
            tail.append(" ct=", style="dim")
            tail.append(msg.content_type, style="yellow")
        tail.append(f" ({len(msg.payload)} B)", style="dim")
        width = max(20, self.console.width)
        clock = _clock(msg.ts)
        head = f"{clock} {msg.protocol} "
        # the address gives way first (its middle), then the end of the line
        address = _shorten(msg.address, max(16, width - len(head) - len(tail)))
        header = Text(no_wrap=True, overflow="ellipsis")
        header.append(clock, style="dim")
        header.append(" ")
        header.append(msg.protocol, style="magenta")
        header.append(" ")
        header.append(address, style="bold cyan")
        header.append_text(tail)
        header.truncate(width, overflow="ellipsis")
        if not self.first:
            self.console.print()
        self.first = False
        self.console.print(header, no_wrap=True, overflow="ellipsis", crop=True)
        for key, value in msg.meta.items():
            if key in keys or key in hidden or value in (None, {}, [], ""):
                continue
            line = Text.assemble(("  " + key + ": ", "dim"), _short(value))
            self.console.print(line)
        self.console.print(render_payload(msg.payload, msg.content_type))

    def flush(self) -> None:
        self.console.file.flush()


def _clock(ts: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc).strftime("%H:%M:%S.%f")[:12]


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
        return json.dumps(jsonable(value), ensure_ascii=False)
    return str(jsonable(value))


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
        return Text(payload.decode("utf-8"))
    except UnicodeDecodeError:
        return hexdump(payload)


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

"""Pretty output with rich: a header line with address and key metadata (the keys
each protocol's registry entry names), then the payload rendered by its content type
(output/renderers.py), else by what it looks like (JSON, text, binary)."""

from __future__ import annotations

from iotctl.message import Message
from iotctl.output.writers import Writer
from iotctl.output import console
from iotctl.registry import header_keys



class PrettyWriter(Writer):
    def __init__(self, out):
        super().__init__(out)
        self.console = console.stdout()

    def write(self, msg: Message) -> None:
        from rich.text import Text

        header = Text()
        header.append(msg.iso_ts[11:23], style="dim")
        header.append(" ")
        header.append(msg.protocol, style="magenta")
        header.append(" ")
        header.append(msg.address, style="bold cyan")
        keys = header_keys(msg.protocol)
        for key in keys:
            value = msg.meta.get(key)
            if value is not None and value is not False and value != "":  # qos=0 is shown
                header.append(f" {key}=", style="dim")
                header.append(str(value), style="yellow")
        if msg.content_type:
            header.append(" ct=", style="dim")
            header.append(msg.content_type, style="yellow")
        header.append(f" ({len(msg.payload)} B)", style="dim")
        self.console.print(header)
        extra = {k: v for k, v in msg.meta.items() if k not in keys and v not in (None, {}, [], "")}
        for key, value in extra.items():
            self.console.print(Text.assemble(("  " + key + ": ", "dim"), _short(value)))
        self.console.print(render_payload(msg.payload, msg.content_type))

    def flush(self) -> None:
        self.console.file.flush()


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

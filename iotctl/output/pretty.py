"""Pretty output with rich: a header line with address and key metadata, then the
payload rendered by what it is (JSON, CBOR, link-format, text, binary)."""

from __future__ import annotations

from iotctl.message import Message
from iotctl.output import Writer
from iotctl.output import console

# meta keys shown on the header line, in this order, when present
_HEADER_KEYS = ("code", "qos", "retain", "exchange", "routing_key", "type", "from", "seq")


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
        for key in _HEADER_KEYS:
            value = msg.meta.get(key)
            if value is not None and value is not False and value != "":  # qos=0 is shown
                header.append(f" {key}=", style="dim")
                header.append(str(value), style="yellow")
        if msg.content_type:
            header.append(" ct=", style="dim")
            header.append(msg.content_type, style="yellow")
        header.append(f" ({len(msg.payload)} B)", style="dim")
        self.console.print(header)
        extra = {k: v for k, v in msg.meta.items() if k not in _HEADER_KEYS and v not in (None, {}, [], "")}
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
    from rich.json import JSON
    from rich.text import Text
    import json

    from iotctl import codecs

    ct = (content_type or "").split(";")[0].strip().lower()
    if not payload:
        return Text("(empty)", style="dim italic")
    if ct.endswith("cbor"):
        try:
            value = codecs.cbor_decode(payload)
            return JSON.from_data(codecs.to_display_json(value))
        except ValueError:
            pass
    if ct == "application/link-format":
        try:
            from iotctl.linkformat import parse_links, links_table

            return links_table(parse_links(payload.decode("utf-8")))
        except (ValueError, UnicodeDecodeError, ImportError):
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

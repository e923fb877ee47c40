"""Lists (roster, blocklist, disco, presence, subscriptions) in every output mode.

pretty: one message whose payload is the list as JSON ({"columns": [...], "rows":
[[...]]}), content type TABLE, which `render` (registered in iotctl/registry.py)
shows as a table; raw: one line per row, the columns separated by tabs; text:
ADDRESS and that line; json/jsonl/template: one message per row, the row in meta.
"""

from __future__ import annotations

from iotctl.message import Message

TABLE = "application/vnd.iotctl.table+json"


def write_rows(address: str, columns: list[str], rows: list[dict], meta: dict | None = None,
               piped_default: str = "raw") -> None:
    import json

    from iotctl.output import resolve_mode, run_writer
    from iotctl.settings import current

    s = current()
    mode = resolve_mode(s.output, s.format, piped_default)
    writer = run_writer(piped_default=piped_default)
    if mode == "pretty":
        body = {"columns": columns, "rows": [[_cell(r.get(c)) for c in columns] for r in rows]}
        writer.write(Message("xmpp", address, json.dumps(body, ensure_ascii=False).encode("utf-8"), TABLE,
                             dict(meta or {})))
    else:
        for row in rows:
            line = "\t".join(_cell(row.get(c)) for c in columns)
            writer.write(Message("xmpp", address, line.encode("utf-8"), None, {**(meta or {}), **row}))
    writer.flush()


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def render(payload: bytes):
    """The pretty renderer for TABLE payloads."""
    import json

    from rich.table import Table

    try:
        body = json.loads(payload)
        columns, rows = body["columns"], body["rows"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a table: {exc}") from None
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for c in columns:
        table.add_column(c)
    for row in rows:
        table.add_row(*map(str, row))
    if not rows:
        from rich.text import Text

        return Text("(none)", style="dim italic")
    return table


class LiveTable:
    """A Writer for `presence watch` on a terminal: one live table row per full JID."""

    def __init__(self) -> None:
        from rich.live import Live

        from iotctl.output import console

        self.rows: dict[str, list[str]] = {}
        self.live = Live(self._table(), console=console.stdout(), auto_refresh=False)
        self.live.__enter__()

    def _table(self):
        from rich.table import Table

        table = Table(show_edge=False, box=None, header_style="bold")
        for c in ("jid", "presence", "show", "status", "since"):
            table.add_column(c)
        for jid in sorted(self.rows):
            table.add_row(jid, *self.rows[jid])
        return table

    def write(self, msg: Message) -> None:
        self.rows[msg.address] = [msg.meta.get("presence", ""), msg.meta.get("show", ""),
                                  msg.payload.decode("utf-8", "replace"), msg.iso_ts[11:19]]

    def flush(self) -> None:
        self.live.update(self._table(), refresh=True)

    def close(self) -> None:
        self.live.__exit__(None, None, None)

"""Lists (roster, blocklist, disco, presence, subscriptions, version) in every output mode.

pretty: a table (column names, then a row per item; "(none)" when empty), nothing
else: a list is not a message and gets no message header. Piped (auto) and raw: one
line per row, the columns separated by tabs, no header line; text: the list's owner
(ADDRESS), a space, then that line; json/jsonl/template: one message per row, the row
in meta.
"""

from __future__ import annotations

from iotctl.message import Message
from iotctl.output.writers import Writer


def write_rows(address: str, columns: list[str], rows: list[dict], meta: dict | None = None,
               piped_default: str = "raw") -> None:
    from iotctl.output import resolve_mode, run_writer
    from iotctl.settings import current

    s = current()
    mode = resolve_mode(s.output, s.format, piped_default)
    if mode == "pretty":
        from iotctl.output import console

        console.stdout().print(table([[_cell(r.get(c)) for c in columns] for r in rows], columns))
        return
    writer = run_writer(piped_default=piped_default)
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


def table(rows: list[list[str]], columns: list[str]):
    """A rich table of `rows` (or "(none)")."""
    from rich.table import Table
    from rich.text import Text

    if not rows:
        return Text("(none)", style="dim italic")
    t = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for c in columns:
        t.add_column(c)
    for row in rows:
        t.add_row(*(Text(str(cell)) for cell in row))  # a contact's name is not rich markup
    return t


class LiveTable(Writer):
    """A Writer for `presence watch` on a terminal: one live table row per full JID."""

    def __init__(self) -> None:
        super().__init__(None)
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

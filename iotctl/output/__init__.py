"""Output: the renderer is chosen once per run; protocol code only yields Messages.

Writers (output/writers.py) write bytes to stdout's binary buffer, buffered by us,
and flush when the caller says a batch of messages is complete.
"""

from __future__ import annotations

import sys

from iotctl.output.writers import (HexWriter, JsonWriter, RawWriter, TemplateWriter, TextWriter,  # noqa: F401
                                   Writer, _quiet_broken_pipe)

MODES = ("auto", "pretty", "text", "json", "jsonl", "raw", "hex", "template")


def resolve_mode(mode: str, template: str | None, piped_default: str = "raw", stream=None) -> str:
    if template is not None and mode in ("auto", "template"):
        return "template"
    if mode == "auto":
        stream = stream or sys.stdout
        return "pretty" if getattr(stream, "isatty", lambda: False)() else piped_default
    return mode


def make_writer(mode: str = "auto", template: str | None = None, piped_default: str = "raw") -> Writer:
    """Pick the writer for this run. `mode` is one of MODES; `piped_default` is what
    auto means when stdout is not a terminal (raw for message streams)."""
    from iotctl.errors import UsageError

    mode = resolve_mode(mode, template, piped_default)
    out = sys.stdout.buffer
    if mode == "raw":
        return RawWriter(out)
    if mode == "hex":
        return HexWriter(out)
    if mode == "text":
        return TextWriter(out)
    if mode in ("json", "jsonl"):
        return JsonWriter(out, lines=mode == "jsonl")
    if mode == "template":
        if not template:
            raise UsageError("-o template", "needs --format TEMPLATE, e.g. -F '{ts} {address} {payload}'")
        return TemplateWriter(out, template)
    if mode == "pretty":
        from iotctl.output.pretty import PrettyWriter

        return PrettyWriter(out)
    raise UsageError("--output", f"unknown mode {mode!r}")


def run_writer(piped_default: str = "raw") -> Writer:
    """The writer of this run's global options (-o, -F); `piped_default` is what auto
    means when stdout is not a terminal."""
    from iotctl.settings import current

    s = current()
    return make_writer(s.output, s.format, piped_default)

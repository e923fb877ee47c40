"""Output: the renderer is chosen once per run; protocol code only yields Messages.

Writers write bytes to stdout's binary buffer, buffered by us, and flush when the
caller says a batch of messages is complete.
"""

from __future__ import annotations


import sys
from typing import IO

from iotctl.message import Message

MODES = ("auto", "pretty", "text", "json", "jsonl", "raw", "hex", "template")


class Writer:
    def __init__(self, out: IO[bytes]):
        self.out = out

    def write(self, msg: Message) -> None:
        raise NotImplementedError

    def write_all(self, msgs) -> None:
        for msg in msgs:
            self.write(msg)
        self.flush()

    def flush(self) -> None:
        try:
            self.out.flush()
        except BrokenPipeError:
            _quiet_broken_pipe()
            raise

    def close(self) -> None:
        self.flush()


class RawWriter(Writer):
    """The payload bytes and a newline: exactly what mosquitto_sub prints."""

    def write(self, msg: Message) -> None:
        self.out.write(msg.payload + b"\n")


class HexWriter(Writer):
    def write(self, msg: Message) -> None:
        self.out.write(msg.payload.hex().encode("ascii") + b"\n")


class TextWriter(Writer):
    """`ADDRESS PAYLOAD` a line, like mosquitto_sub -v."""

    def write(self, msg: Message) -> None:
        text = msg.payload.decode("utf-8", "backslashreplace")
        self.out.write(f"{msg.address} {text}\n".encode("utf-8", "surrogateescape"))


class JsonWriter(Writer):
    def __init__(self, out: IO[bytes], lines: bool):
        super().__init__(out)
        self.indent = None if lines else 2

    def write(self, msg: Message) -> None:
        import json

        from iotctl.message import jsonable

        env = msg.to_envelope()
        try:
            text = json.dumps(env, ensure_ascii=False, indent=self.indent)
        except TypeError:
            env["meta"] = jsonable(env["meta"])
            text = json.dumps(env, ensure_ascii=False, indent=self.indent)
        self.out.write(text.encode("utf-8", "surrogateescape") + b"\n")


class TemplateWriter(Writer):
    def __init__(self, out: IO[bytes], template: str):
        super().__init__(out)
        from iotctl.output.template import Template

        self.template = Template(template)

    def write(self, msg: Message) -> None:
        env = msg.to_envelope()
        env["size"] = len(msg.payload)
        env["hex"] = msg.payload.hex()
        env["topic"] = msg.address
        self.out.write(self.template.render(env).encode("utf-8", "surrogateescape") + b"\n")


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


def _quiet_broken_pipe() -> None:
    """After EPIPE, point stdout at devnull so the interpreter's final flush stays silent."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass

"""The writers: each turns Messages into bytes on a binary stream, buffered, flushed
when the caller says a batch of messages is complete."""

from __future__ import annotations

from typing import IO

from iotctl.errors import OutputClosed
from iotctl.express import os_reason, quiet_stdout as _quiet_broken_pipe, write_whole  # noqa: F401  (re-exported)
from iotctl.message import Message


class Whole:
    """A binary stream whose write() writes all it is given (or raises).

    CPython's BufferedWriter (seen with 3.11.7) returns a short count, and drops the
    rest, when a signal handler that does not raise runs during a write larger than its
    buffer to a pipe that is full. That is a Ctrl-C held by interrupts.deferred() while
    `sub` waits for its reader: the batch's messages were acknowledged, and the output
    ended mid-line with thousands of them missing.

    A write that fails is the one error line of the run: OutputClosed when the reader
    has gone, else "cannot write output" (the owner's `what`), exit 1."""

    __slots__ = ("stream", "owner", "flush", "close", "fileno")

    def __init__(self, stream: IO[bytes], owner=None):
        self.stream, self.owner = stream, owner
        self.flush, self.close, self.fileno = stream.flush, stream.close, stream.fileno

    def write(self, data) -> int:
        try:
            write_whole(self.stream, data)
        except BrokenPipeError:
            _quiet_broken_pipe()
            raise OutputClosed() from None
        except OSError as exc:
            raise output_error(exc, getattr(self.owner, "what", "output")) from None
        return len(data)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


class Writer:
    what = "output"  # in the error when it cannot be written: "cannot write output"

    def __init__(self, out: IO[bytes]):
        self.out = out if out is None or type(out) is Whole else Whole(out, self)

    def write(self, msg: Message) -> None:
        raise NotImplementedError

    def write_batch(self, msgs) -> None:
        """A batch of messages, unflushed; a writer whose lines are plain bytes makes
        them one write (one system call per batch when it is larger than the buffer)."""
        for msg in msgs:
            self.write(msg)

    def write_all(self, msgs) -> None:
        self.write_batch(msgs)
        self.flush()

    def flush(self) -> None:
        try:
            self.out.flush()
        except BrokenPipeError:
            _quiet_broken_pipe()
            raise OutputClosed() from None
        except OSError as exc:
            raise output_error(exc, self.what) from None

    def close(self) -> None:
        self.flush()

    def release(self) -> None:
        """Close the stream at the end of a run, quietly: every batch was flushed, so a
        close that fails is one whose last flush failed, and that was reported."""
        try:
            self.out.close()
        except OSError:
            pass


class RawWriter(Writer):
    """The payload bytes and a newline: exactly what mosquitto_sub prints (and, as it
    does, nothing at all for an empty payload)."""

    def write(self, msg: Message) -> None:
        if msg.payload:
            self.out.write(msg.payload + b"\n")

    def write_batch(self, msgs) -> None:
        self.out.write(b"".join([m.payload + b"\n" for m in msgs if m.payload]))


class HexWriter(Writer):
    def write(self, msg: Message) -> None:
        self.out.write(msg.payload.hex().encode("ascii") + b"\n")


class TextWriter(Writer):
    """`ADDRESS PAYLOAD` a line, like mosquitto_sub -v: the payload's bytes as they are
    (binary included, as mosquitto_sub prints them; use -o hex or json for binary)."""

    def write(self, msg: Message) -> None:
        # an empty payload is `topic (null)`, as mosquitto_sub -v prints it
        self.out.write(msg.address.encode("utf-8", "surrogateescape") + b" " + (msg.payload or b"(null)") + b"\n")


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


def output_error(exc: OSError, what: str = "output"):
    """The one line for output that cannot be written (a full disk, a quota, an I/O
    error): nothing unwritten is acknowledged, since the error comes before the ack."""
    from iotctl.errors import OutputFailed

    return OutputFailed(f"cannot write {what}", os_reason(exc))

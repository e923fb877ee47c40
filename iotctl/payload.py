"""Shared payload input for every sending command (README, "Payload input").

Every message to send is a `Message` (the one envelope): composed here its protocol is
"" (the sender's own), replayed it keeps where it came from. `-l/--lines` and
`--replay` stream: nothing reads far ahead of what has been sent. A stream that has
nothing to give for a moment (a pipe from `tail -f`) yields `IDLE` batches, so the
send driver services its connection while it waits.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Iterator

from iotctl import codecs, interrupts
from iotctl.errors import UsageError
from iotctl.message import Message

IDLE_AFTER = 0.25  # seconds without input before a stream says it is idle
MAX_PAYLOAD = 256 << 20  # one message's payload at most: MQTT's largest packet, more than any broker here takes
TOO_BIG = "more than 256 MiB, the most one message may carry"


class PayloadSpec:
    """What the user asked for; built by options.payload_options."""

    def __init__(self, message: str | None = None, file: str | None = None, stdin: bool = False,
                 lines: bool = False, null: bool = False, encode: str | None = None,
                 replay: str | None = None, speed: float | None = None):
        self.message, self.file, self.stdin, self.lines, self.null = message, file, stdin, lines, null
        self.encode, self.replay, self.speed = encode, replay, speed

    def sources(self) -> list[str]:
        given = []
        if self.message is not None:
            given.append("MESSAGE/-m")
        if self.file is not None:
            given.append("-f")
        if self.stdin:
            given.append("-s")
        if self.lines:
            given.append("-l")
        if self.null:
            given.append("--null")
        if self.replay is not None:
            given.append("--replay")
        return given

    @property
    def streaming(self) -> bool:
        """True when the payloads come one by one from a stream (-l, --replay)."""
        return self.lines or self.replay is not None

    def validate(self, required: bool = True) -> None:
        given = self.sources()
        if len(given) > 1:
            raise UsageError("conflicting payload options", f"{' and '.join(given)} given; choose one")
        if required and not given:
            raise UsageError("no payload", "give MESSAGE, -m, -f FILE, -s, -l, --null or --replay FILE")
        if self.speed is not None and self.replay is None:
            raise UsageError("--speed", "only makes sense with --replay")
        if self.speed is not None and self.speed < 0:
            raise UsageError("--speed", "must be 0 (as fast as possible) or more")

    def read_one(self, stdin: IO[bytes] | None = None) -> bytes:
        """The single payload of a non-streaming spec (MESSAGE, -m, -f, -s, --null)."""
        if self.null:
            return b""
        if self.message is not None:
            data = self.message.encode("utf-8", "surrogateescape")
        elif self.file is not None:
            data = read_file(self.file)
        elif self.stdin:
            data = _read_bounded(stdin or sys.stdin.buffer, "cannot read stdin")
        else:
            return b""
        return codecs.encode(data, self.encode)

    def payloads(self, stdin: IO[bytes] | None = None) -> Iterator[bytes]:
        """Every payload to send, lazily, as bytes (not for --replay, which has addresses)."""
        if self.lines:
            return (p for batch in self.batches(stdin) for p in batch)
        return iter([self.read_one(stdin)])

    def batches(self, stdin: IO[bytes] | None = None) -> Iterator[list[bytes]]:
        """-l: the payloads of stdin's lines, a list per read (an empty list when the
        input had nothing for a moment)."""
        return _line_batches(stdin or sys.stdin.buffer, self.encode)

    def iter(self, stdin: IO[bytes] | None = None) -> Iterator[Message]:
        """Every message to send, lazily, with the captured address and meta for --replay."""
        if self.replay is not None:
            return replay(self.replay, self.speed)
        return (Message("", "", p) for p in self.payloads(stdin))


def read_file(path: str) -> bytes:
    """A file's bytes (`-` is stdin); refused past MAX_PAYLOAD: a regular file by its
    size, before it is read; a device or a pipe (/dev/zero) once that much came."""
    what = f"cannot read file {path}"
    if path == "-":
        return _read_bounded(sys.stdin.buffer, what)
    try:
        with open(path, "rb") as fh:
            import os

            if os.fstat(fh.fileno()).st_size > MAX_PAYLOAD:
                raise UsageError(what, TOO_BIG)
            return _read_bounded(fh, what)
    except OSError as exc:
        raise UsageError(what, exc.strerror or str(exc)) from None


def _read_bounded(stream: IO[bytes], what: str) -> bytes:
    """All of a stream, refused (UsageError) once it gave more than MAX_PAYLOAD: an
    endless input stops there instead of filling the memory."""
    data = bytearray()
    read = getattr(stream, "read1", stream.read)
    while True:
        try:
            chunk = read(1 << 20)
        except OSError as exc:
            raise UsageError(what, exc.strerror or str(exc)) from None
        if not chunk:
            return bytes(data)
        data += chunk
        if len(data) > MAX_PAYLOAD:
            raise UsageError(what, TOO_BIG)


def _line_batches(stream: IO[bytes], encode: str | None) -> Iterator[list[bytes]]:
    """Each line without its LF, as mosquitto_pub -l does (a CR before it is data and
    stays; an empty line is an empty message; a last line without LF counts)."""
    chunks = _chunks(stream)
    if encode:
        return _encoded(chunks, encode)
    return _split(chunks)


def _split(chunks: Iterator[bytes | None]) -> Iterator[list[bytes]]:
    parts: list[bytes] = []  # the line so far, when it spans chunks (joined once, when it ends)
    size = 0
    for chunk in chunks:
        if chunk is None:
            yield []
            continue
        lines = chunk.split(b"\n")
        if len(lines) == 1:  # no line feed: the line goes on
            parts.append(chunk)
            size += len(chunk)
            if size > MAX_PAYLOAD:  # an endless line (/dev/zero) stops here, not in the memory
                raise UsageError("stdin", f"a line of {TOO_BIG} (no line feed)")
            continue
        if parts:
            parts.append(lines[0])
            lines[0] = b"".join(parts)
        rest = lines.pop()
        parts, size = ([rest], len(rest)) if rest else ([], 0)
        yield lines
    if parts:
        yield [b"".join(parts)]


def _encoded(chunks: Iterator[bytes | None], encode: str) -> Iterator[list[bytes]]:
    number = 0
    for batch in _split(chunks):
        out = []
        for line in batch:
            number += 1
            try:
                out.append(codecs.encode(line, encode))
            except UsageError as exc:
                if out:
                    yield out
                raise UsageError(f"stdin line {number}: {exc.what}", exc.why) from None
        yield out


def _chunks(stream: IO[bytes], size: int = 1 << 16) -> Iterator[bytes | None]:
    """The stream's bytes as they come; None when a pipe or terminal gave nothing for
    IDLE_AFTER seconds. A regular file (or an in-memory stream) is read directly; a
    pipe is read by a thread a few chunks ahead, so waiting for input never blocks the
    connection's upkeep."""
    import os
    import stat

    try:
        fd = stream.fileno()
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except (AttributeError, OSError, ValueError):
        fd, regular = None, True
    if regular:
        read = getattr(stream, "read1", stream.read)
        while True:
            chunk = read(size)
            if not chunk:
                return
            yield chunk
    else:
        yield from _piped(fd, size)


def _piped(fd: int, size: int) -> Iterator[bytes | None]:
    import os
    import queue
    import threading

    ahead: queue.Queue = queue.Queue(maxsize=16)

    def reader():
        try:
            while True:
                chunk = os.read(fd, size)
                ahead.put(chunk)
                if not chunk:
                    return
        except OSError as exc:
            ahead.put(exc)

    threading.Thread(target=reader, name="iotctl-stdin", daemon=True).start()
    get = ahead.get
    while True:
        try:
            chunk = get(timeout=IDLE_AFTER)
        except queue.Empty:
            yield None
            continue
        if isinstance(chunk, OSError):
            raise UsageError("cannot read stdin", chunk.strerror or str(chunk))
        if not chunk:
            return
        yield chunk


# the -l input chain: a Ctrl-C never finishes these generators early (send.run checks
# for it between messages), so what they had read still reaches --failed
interrupts.shelter(_split, _encoded, _chunks, _piped)


def replay(path: str, speed: float | None = None) -> Iterator[Message]:
    """Messages from a JSONL envelope capture (`-o jsonl` output of any protocol).

    With `speed` (1 = real time, 2 = twice as fast, 0 = no delay) the gaps between the
    captured timestamps are kept.
    """
    import json

    try:
        fh = sys.stdin.buffer if path == "-" else open(path, "rb")
    except OSError as exc:
        raise UsageError(f"cannot read file {path}", exc.strerror or str(exc)) from None
    previous: float | None = None
    started = time.monotonic()
    offset = 0.0
    longest = MAX_PAYLOAD * 4 // 3 + (1 << 20)  # a 256 MiB payload as base64, and its envelope
    with fh:
        for number, raw in enumerate(iter(lambda: fh.readline(longest + 1), b""), 1):
            if len(raw) > longest:  # an endless line stops here, not in the memory
                raise UsageError(f"{path}, line {number}", f"longer than {longest >> 20} MiB: not a message envelope")
            if not raw.strip():
                continue
            try:
                msg = Message.from_envelope(json.loads(raw))
            except ValueError as exc:
                raise UsageError(f"{path}, line {number}", f"not a message envelope ({exc})") from None
            if speed and previous is not None:
                offset += max(0.0, msg.ts - previous) / speed
                delay = started + offset - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            previous = msg.ts
            yield msg

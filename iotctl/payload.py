"""Shared payload input for every sending command (README, "Payload input").

A `PayloadSource` is an iterator of `Outgoing` items. `-l/--lines` and `--replay`
stream: nothing reads the whole input ahead of what has been sent.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Iterator

from iotctl import codecs
from iotctl.errors import UsageError


class Outgoing:
    """One payload to send; `address`, `meta` and `content_type` come from --replay."""

    __slots__ = ("payload", "address", "meta", "content_type")

    def __init__(self, payload: bytes, address: str | None = None, meta: dict | None = None,
                 content_type: str | None = None):
        self.payload, self.address, self.content_type = payload, address, content_type
        self.meta = meta if meta is not None else {}


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
            data = (stdin or sys.stdin.buffer).read()
        else:
            return b""
        return codecs.encode(data, self.encode)

    def payloads(self, stdin: IO[bytes] | None = None) -> Iterator[bytes]:
        """Every payload to send, lazily, as bytes (not for --replay, which has addresses)."""
        if self.lines:
            return _lines(stdin or sys.stdin.buffer, self.encode)
        return iter([self.read_one(stdin)])

    def iter(self, stdin: IO[bytes] | None = None) -> Iterator[Outgoing]:
        """Every message to send, lazily, with the captured address and meta for --replay."""
        if self.replay is not None:
            return replay(self.replay, self.speed)
        return (Outgoing(p) for p in self.payloads(stdin))


def read_file(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise UsageError(f"cannot read file {path}", exc.strerror or str(exc)) from None


def _lines(stream: IO[bytes], encode: str | None) -> Iterator[bytes]:
    """Each line without its LF, as mosquitto_pub -l does (a CR before it is data and
    stays). Iteration splits after each LF, so rstrip removes exactly that one."""
    from itertools import repeat

    lines = map(bytes.rstrip, stream, repeat(b"\n"))
    if encode:
        return _encoded_lines(lines, encode)
    return lines


def _encoded_lines(lines: Iterator[bytes], encode: str) -> Iterator[bytes]:
    for number, line in enumerate(lines, 1):
        try:
            yield codecs.encode(line, encode)
        except UsageError as exc:
            raise UsageError(f"stdin line {number}: {exc.what}", exc.why) from None


def replay(path: str, speed: float | None = None) -> Iterator[Outgoing]:
    """Messages from a JSONL envelope capture (`-o jsonl` output of any protocol).

    With `speed` (1 = real time, 2 = twice as fast, 0 = no delay) the gaps between the
    captured timestamps are kept.
    """
    import json

    from iotctl.message import Message

    try:
        fh = sys.stdin.buffer if path == "-" else open(path, "rb")
    except OSError as exc:
        raise UsageError(f"cannot read file {path}", exc.strerror or str(exc)) from None
    previous: float | None = None
    started = time.monotonic()
    offset = 0.0
    with fh:
        for number, raw in enumerate(fh, 1):
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
            yield Outgoing(msg.payload, msg.address, msg.meta, msg.content_type)

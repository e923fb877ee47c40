"""The receive loop shared by every streaming command (subscribe, observe, consume, listen).

Protocol clients produce batches of Messages (one batch per read from the network);
this loop renders them, flushes once a batch, counts, saves, and turns "count not
reached before the timeout" into exit 5. Ctrl-C ends it successfully.
"""

from __future__ import annotations

from typing import Callable, Iterable

from iotctl.errors import TimeoutError_
from iotctl.message import Message


class ReceiveSpec:
    """-C/--count, -W/--timeout and --save of a receiving command."""

    __slots__ = ("count", "timeout", "save")

    def __init__(self, count: int | None, timeout: float | None, save: str | None):
        self.count, self.timeout, self.save = count, timeout, save


def consume(batches: Iterable[list[Message]], receive: ReceiveSpec, what: str, writer=None,
            done: Callable[[Message], None] | None = None) -> int:
    """Render every message; `done(msg)` is called once a message has been written
    (protocols acknowledge there, so nothing unshown is acknowledged)."""
    from iotctl.context import settings

    writer = writer or settings().writer()
    saver = _saver(receive.save)
    count = receive.count
    n = 0
    written: list[Message] = []

    def flush() -> None:
        writer.flush()
        if saver is not None:
            saver.flush()
        if done is not None:
            for msg in written:
                done(msg)
        written.clear()

    try:
        write = writer.write
        for batch in batches:
            if count is not None and len(batch) >= count - n:
                batch = batch[: count - n]
            for msg in batch:
                write(msg)
            n += len(batch)
            if saver is not None:
                for msg in batch:
                    saver.write(msg)
            if done is not None:
                written.extend(batch)
            if count is not None and n >= count:
                return n
            flush()
    except KeyboardInterrupt:
        return n
    finally:
        try:
            flush()
        finally:
            if saver is not None:
                saver.out.close()
    if receive.timeout is not None:
        if count is not None and n < count:
            raise TimeoutError_(what, f"received {n} of {count} messages within {receive.timeout:g} s")
        if count is None and n == 0:
            raise TimeoutError_(what, f"no message within {receive.timeout:g} s")
    return n


def _saver(path: str | None):
    if path is None:
        return None
    from iotctl.errors import UsageError
    from iotctl.output import JsonWriter

    try:
        fh = open(path, "ab")
    except OSError as exc:
        raise UsageError(f"cannot write --save file {path}", exc.strerror or str(exc)) from None
    return JsonWriter(fh, lines=True)

"""The receive driver: every receiving command (mqtt subscribe, coap observe, amqp
consume/tap, stomp subscribe, xmpp listen, mqttsn subscribe) runs on `run()`.

A protocol supplies a `Receiver`; the driver owns everything else: -C/--count,
-W/--timeout, --idle-timeout, a duration, --save, acknowledging only what has been
written (and flushed), and Ctrl-C (which ends a receive successfully).
"""

from __future__ import annotations

import time

from iotctl.errors import OutputClosed, TimeoutError_, UsageError
from iotctl.message import Message


class ReceiveSpec:
    """-C/--count, -W/--timeout, --save and --idle-timeout of a receiving command;
    `idle_ok`: an idle timeout ends the run successfully (a drained queue) instead of
    exit 5; `duration`: stop successfully after that many seconds (coap observe
    --duration, xmpp presence set --for)."""

    __slots__ = ("count", "timeout", "save", "idle_timeout", "idle_ok", "duration")

    def __init__(self, count: int | None = None, timeout: float | None = None, save: str | None = None,
                 idle_timeout: float | None = None, idle_ok: bool = False, duration: float | None = None):
        self.count, self.timeout, self.save = count, timeout, save
        self.idle_timeout, self.idle_ok, self.duration = idle_timeout, idle_ok, duration


class Receiver:
    """What a protocol implements for `run()`.

    poll(wait): wait at most `wait` seconds (None: as long as it takes) and return the
        messages that arrived, as one batch (possibly empty); None when the source
        has ended (the driver then stops successfully). Raise an IotctlError when the
        connection fails. KeyboardInterrupt may escape it: the driver handles it.
    ack(batch): called with messages once they are written and flushed; a protocol
        acknowledges them to its peer here (nothing unshown is ever acknowledged).
    """

    def poll(self, wait: float | None) -> list[Message] | None:
        raise NotImplementedError

    def ack(self, batch: list[Message]) -> None:
        pass


def run(receiver: Receiver, spec: ReceiveSpec, what: str, writer=None, noun: str = "message") -> int:
    """Receive until the count, a timeout, the end of the source or Ctrl-C; returns
    how many messages were written. Raises TimeoutError_ (exit 5) when -W passes
    before --count (or, without --count, before anything) arrived."""
    if writer is None:
        from iotctl.output import run_writer

        writer = run_writer()
    saver = _saver(spec.save)
    count = spec.count
    n = 0
    pending: list[Message] = []  # written, not yet flushed and acknowledged

    def flush() -> None:
        writer.flush()
        if saver is not None:
            saver.flush()
        if pending:
            batch = pending[:]
            pending.clear()
            receiver.ack(batch)

    started = time.monotonic()
    deadline = started + spec.timeout if spec.timeout else None
    until = started + spec.duration if spec.duration else None
    idle = spec.idle_timeout
    last = started
    timed_out = False
    write = writer.write
    try:
        while True:
            now = time.monotonic()
            ends = [t for t in (deadline, until, last + idle if idle else None) if t is not None]
            wait = None
            if ends:
                wait = min(ends) - now
                if wait <= 0:
                    if deadline is not None and now >= deadline:
                        timed_out = True
                    elif idle and now >= last + idle and not (until is not None and now >= until):
                        if not spec.idle_ok:
                            raise TimeoutError_(what, f"no {noun} for {idle:g} s")
                    break
            batch = receiver.poll(wait)
            if batch is None:
                break
            if not batch:
                continue
            last = time.monotonic()
            if count is not None and len(batch) >= count - n:
                batch = batch[: count - n]
            # a Ctrl-C waits until the batch is written and acknowledged: a message
            # printed but not acknowledged would come back to a persistent session
            with _ctrl_c_deferred():
                for msg in batch:
                    write(msg)
                n += len(batch)
                if saver is not None:
                    for msg in batch:
                        saver.write(msg)
                pending.extend(batch)
                flush()
            if count is not None and n >= count:
                return n
    except KeyboardInterrupt:
        return n
    except BrokenPipeError:  # a write filled the buffer after stdout's reader went away
        from iotctl.output.writers import _quiet_broken_pipe

        _quiet_broken_pipe()
        pending.clear()  # not acknowledged: nobody read them
        raise OutputClosed() from None
    except OutputClosed:  # the flush found the reader gone
        pending.clear()
        raise
    finally:
        try:
            flush()
        finally:
            if saver is not None:
                saver.out.close()
    if timed_out:
        if count is not None and n < count:
            raise TimeoutError_(what, f"received {n} of {count} messages within {spec.timeout:g} s")
        if count is None and n == 0:
            raise TimeoutError_(what, f"no {noun} within {spec.timeout:g} s")
    return n


class _ctrl_c_deferred:
    """Hold SIGINT for the block and raise KeyboardInterrupt after it (main thread only)."""

    __slots__ = ("previous", "caught")

    def __enter__(self):
        import signal
        import threading

        self.previous, self.caught = None, False
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous is signal.default_int_handler:
                self.previous = previous
                signal.signal(signal.SIGINT, self._catch)
        return self

    def _catch(self, signum, frame):
        self.caught = True

    def __exit__(self, *exc):
        if self.previous is not None:
            import signal

            signal.signal(signal.SIGINT, self.previous)
            if self.caught and exc[0] is None:
                raise KeyboardInterrupt
        return False


def _saver(path: str | None):
    if path is None:
        return None
    from iotctl.output import JsonWriter

    try:
        fh = open(path, "ab")
    except OSError as exc:
        raise UsageError(f"cannot write --save file {path}", exc.strerror or str(exc)) from None
    return JsonWriter(fh, lines=True)

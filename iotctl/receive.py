"""The receive driver: every receiving command (mqtt subscribe, coap observe, amqp
consume/tap, stomp subscribe, xmpp listen, mqttsn subscribe) runs on `run()`, and the
cross-protocol commands (bridge, watch, bench) use the same `Receiver`s.

A protocol supplies a `Receiver`; the driver owns everything else: -C/--count,
-W/--timeout, --idle-timeout, a duration, --save, acknowledging exactly what has been
written (and flushed), reconnecting after a lost connection, a reader of stdout that
went away, and Ctrl-C (which ends a receive successfully).
"""

from __future__ import annotations

import time
from collections import deque
from itertools import islice, repeat

from iotctl import interrupts
from iotctl.errors import ConnectError, ConnectionLost, OutputClosed, TimeoutError_, UsageError
from iotctl.connection import Connection
from iotctl.message import Message

WAIT_SLICE = 1.0  # the longest a poll waits: a closed stdout is noticed within this


class ReceiveSpec:
    """-C/--count, -W/--timeout, --save and --idle-timeout of a receiving command;
    `idle_ok`: an idle timeout ends the run successfully (a drained queue) instead of
    exit 5; `duration`: stop successfully after that many seconds (coap observe
    --duration, xmpp presence set --for); `reconnect`: after a lost connection, connect
    again with backoff (when the Receiver can) instead of exit 3."""

    __slots__ = ("count", "timeout", "save", "idle_timeout", "idle_ok", "duration", "reconnect")

    def __init__(self, count: int | None = None, timeout: float | None = None, save: str | None = None,
                 idle_timeout: float | None = None, idle_ok: bool = False, duration: float | None = None,
                 reconnect: bool = False):
        self.count, self.timeout, self.save = count, timeout, save
        self.idle_timeout, self.idle_ok, self.duration = idle_timeout, idle_ok, duration
        self.reconnect = reconnect


class Receiver(Connection):
    """What a protocol implements: a source of messages.

    A context manager: entering connects (and subscribes, declares, observes...),
    leaving closes; `open()`/`close()` do the work.

    poll(wait): wait at most `wait` seconds (None: as long as it takes) and return the
        messages that arrived, as one batch (possibly empty); None when the source
        has ended (the driver then stops successfully). Raise an IotctlError when the
        connection fails (ConnectionLost when it was up and is gone). KeyboardInterrupt
        may escape it: the driver handles it.
    ack(messages): acknowledge exactly these messages (each carries its `token`) to the
        peer; nothing unshown or unconfirmed is ever acknowledged. A protocol whose
        acknowledgement is cumulative acknowledges only the longest delivered prefix
        whose every message was acknowledged (`Cumulative`). Tokens of a connection
        that has since been replaced are ignored.
    nack(messages): give these back for redelivery where the protocol can (AMQP reject
        with requeue, STOMP NACK); the default leaves them unacknowledged, which a
        persistent session or a queue delivers again.
    reconnect(): after ConnectionLost, connect again and restore the subscription
        (raise an IotctlError when it cannot yet). `can_reconnect` says whether it is
        implemented.
    flush(): send what ack()/nack() left in a buffer, without waiting (a protocol whose
        library writes only when polled); a bridge calls it while the target is the
        slow side and the source is not polled, so the peer sees the acknowledgements
        (and delivers more: a queue's prefetch) without a pause. Default: nothing.
    delivery: "at-least-once" when a message not acknowledged comes again (a
        persistent session, a queue), else "at-most-once".
    """

    delivery = "at-most-once"
    can_reconnect = False
    where = ""  # what a status line calls the source

    def poll(self, wait: float | None) -> list[Message] | None:
        raise NotImplementedError

    def ack(self, messages: list[Message]) -> None:
        pass

    def nack(self, messages: list[Message]) -> None:
        pass

    def reconnect(self) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        pass


class Cumulative:
    """Acknowledgements for a protocol whose ack covers every earlier delivery (AMQP
    `multiple`, STOMP `client` mode): `delivered(token)` in delivery order, then
    `confirm(tokens)` returns the last token of the longest prefix now wholly
    acknowledged (to send one cumulative ack for), or None. `given_back` are tokens
    settled otherwise (nacked, rejected): they complete a prefix, but the returned
    token is never one of them (a broker refuses a cumulative ack naming a delivery
    it already took back)."""

    __slots__ = ("order", "done", "back")

    def __init__(self) -> None:
        self.order: deque = deque()
        self.done: set = set()
        self.back: set = set()

    def delivered(self, token) -> None:
        self.order.append(token)

    def confirm(self, tokens, given_back=()) -> object | None:
        order, done, back = self.order, self.done, self.back
        n = len(tokens) if isinstance(tokens, list) else 0
        if n and not done and not given_back and len(order) >= n and order[0] == tokens[0] \
                and list(islice(order, n)) == tokens:
            # the common case (a consumer's batch, acknowledged once written): exactly
            # the oldest deliveries, in order
            popleft = order.popleft
            for _ in repeat(None, n):
                popleft()
            return tokens[-1]
        done.update(tokens)
        if given_back:
            done.update(given_back)
            back.update(given_back)
        last = None
        while order and order[0] in done:
            token = order.popleft()
            done.discard(token)
            if back and token in back:
                back.discard(token)
            else:
                last = token
        return last

    def forget(self) -> None:
        """After a reconnect: the old deliveries' tokens mean nothing any more."""
        self.order.clear()
        self.done.clear()
        self.back.clear()


def run(receiver: Receiver, spec: ReceiveSpec, what: str, writer=None, noun: str = "message") -> int:
    """Receive until the count, a timeout, the end of the source or Ctrl-C; returns
    how many messages were written. Raises TimeoutError_ (exit 5) when -W passes
    before --count (or, without --count, before anything) arrived."""
    if writer is None:
        from iotctl.output import run_writer

        writer = run_writer()
    saver = _saver(spec.save)
    watch_stdout = _watches_stdout(writer)
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
    write = writer.write_batch
    check = interrupts.check
    guard = interrupts.guarded()
    guard.__enter__()
    try:
        while True:
            now = time.monotonic()
            ends = [t for t in (deadline, until, last + idle if idle else None) if t is not None]
            wait = WAIT_SLICE
            if ends:
                wait = min(ends) - now
                if wait <= 0:
                    if deadline is not None and now >= deadline:
                        timed_out = True
                    elif idle and now >= last + idle and not (until is not None and now >= until):
                        if not spec.idle_ok:
                            raise TimeoutError_(what, f"no {noun} for {idle:g} s")
                    break
                wait = min(wait, WAIT_SLICE)
            try:
                batch = receiver.poll(wait)
            except ConnectionLost as lost:
                if not (spec.reconnect and receiver.can_reconnect):
                    raise
                _reconnect(receiver, lost, deadline)
                last = time.monotonic()  # --idle-timeout counts from the connection's return
                continue
            if not batch:
                check()  # a Ctrl-C held while the receiver's library was busy
                if batch is None:
                    break
                if watch_stdout and _stdout_gone():
                    raise OutputClosed()
                continue
            last = time.monotonic()
            if count is not None and len(batch) >= count - n:
                batch = batch[: count - n]
            # a Ctrl-C waits until the batch is written and acknowledged: a message
            # printed but not acknowledged would come back to a persistent session
            # (output that cannot be written raises before the acknowledgement: Writer)
            with interrupts.deferred():
                write(batch)
                n += len(batch)
                if saver is not None:
                    saver.write_batch(batch)
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
            guard.__exit__(None, None, None)
            if saver is not None:
                saver.release()
    if timed_out:
        if count is not None and n < count:
            raise TimeoutError_(what, f"received {n} of {count} messages within {spec.timeout:g} s")
        if count is None and n == 0:
            raise TimeoutError_(what, f"no {noun} within {spec.timeout:g} s")
    return n


BACKOFF = (0.5, 1, 2, 4, 8, 15, 30)


def _reconnect(receiver: Receiver, lost: ConnectionLost, deadline: float | None) -> None:
    """Connect again with backoff, a status line for the loss and for the recovery;
    within -W when one was given (then the loss is the error)."""
    from iotctl.errors import IotctlError, SubscriptionEnded
    from iotctl.settings import status

    why = lost.why or lost.what
    where = receiver.where or lost.what
    attempt = 0
    while True:
        delay = BACKOFF[min(attempt, len(BACKOFF) - 1)]
        if deadline is not None and time.monotonic() + delay >= deadline:
            raise lost
        if why.startswith("connection lost") or isinstance(lost, SubscriptionEnded):
            lost_line = why  # said once
        else:
            lost_line = f"connection lost ({why})"
        status(f"{lost_line}; reconnecting in {delay:g} s" + (f" (attempt {attempt + 1})" if attempt else ""))
        time.sleep(delay)
        attempt += 1
        try:
            receiver.reconnect()
        except IotctlError as exc:
            if exc.code not in (ConnectError.code, TimeoutError_.code):
                raise  # refused login, TLS: trying again changes nothing
            why = exc.why or exc.what
            continue
        status(f"reconnected to {where}")
        return


def _watches_stdout(writer) -> bool:
    import sys

    out = getattr(writer, "out", None)
    try:
        return out is not None and out.fileno() == sys.stdout.fileno() == 1
    except (AttributeError, OSError, ValueError):
        return False


def _stdout_gone() -> bool:
    """True when stdout is a pipe whose reader has gone (`sub | head -1` after a burst
    and then silence): noticed while waiting, not at the next message."""
    import select

    try:
        p = select.poll()
        p.register(1, select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in p.poll(0))
    except (OSError, ValueError):
        return False


def _saver(path: str | None):
    if path is None:
        return None
    from iotctl.output import JsonWriter

    try:
        fh = open(path, "ab")
    except OSError as exc:
        raise UsageError(f"cannot write --save file {path}", exc.strerror or str(exc)) from None
    writer = JsonWriter(fh, lines=True)
    writer.what = f"--save file {path}"
    return writer

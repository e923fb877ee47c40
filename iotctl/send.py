"""The send driver: every sending command (mqtt publish, coap put/post, amqp publish,
stomp send, xmpp send, mqttsn publish) runs on `run()`; the bridge drives a `Window`
itself.

The driver owns the payload sources (MESSAGE, -f, -s, -l, --replay with its timing,
--repeat/--interval), a window of unacknowledged messages, progress on a terminal,
the final status line, and what an early stop says: how many were sent,
acknowledged and not sent, with `--failed FILE` receiving every message that was
not acknowledged (as envelope lines that --replay sends again).

A protocol supplies a `Sender`.
"""

from __future__ import annotations

import time
from typing import Callable, Hashable, Iterable, Iterator

from iotctl import interrupts
from iotctl.errors import ConnectionLost, IotctlError, OutputFailed, PeerError, TimeoutError_, UsageError
from iotctl.connection import Connection
from iotctl.message import Message
from iotctl.payload import PayloadSpec

IDLE = Message("", "", b"")  # in a message stream: the input has nothing for a moment


class SendSpec:
    """--repeat and --interval (options.send_options), and --failed FILE."""

    __slots__ = ("repeat", "interval", "failed")

    def __init__(self, repeat: int = 1, interval: float = 0.0, failed: str | None = None):
        self.repeat, self.interval, self.failed = repeat, interval, failed


class Sender(Connection):
    """What a protocol implements: a sink of messages.

    A context manager: entering connects, leaving closes (`open()`/`close()`).

    protocol: the protocol's name (a message composed on the command line that ends
        in --failed is written as this protocol's).
    address: the address the URL or the options name (a topic, a routing key, a
        destination, a recipient), else None. A message with an address of its own goes
        there; one without (address "") goes to this one.
    window: how many messages may wait for their acknowledgement at once; None when
        the protocol acknowledges nothing (QoS 0, --no-confirm: sent is done).
    send(msg): transmit one message (may buffer); return a hashable key when an
        acknowledgement will come for it, else None. A message from another protocol
        is adopted in one place (`message.foreign`): its content type, headers,
        correlation id and reply-to where this protocol has them; nothing else of its
        meta is sent.
    busy(): True when the connection has buffered output to write out first.
    pump(wait): do network I/O for at most `wait` seconds; put the keys of
        acknowledged messages into `self.acked` (a set) and of refused ones into
        `self.refused` (key -> reason). Raise an IotctlError when the connection fails
        (errors.ConnectionLost when it was up: the bridge then connects again and
        sends what was in flight again).
    finish(): everything was sent and settled; do what the protocol needs to learn the
        last outcomes (a round trip that brings late refusals, which go into
        `self.refused` like any other).
    refusal(reasons): the error for messages the peer refused (default: exit 6).
    composed(msg): a message composed on the command line (no protocol of its own) as
        --failed writes it, so that it replays on its own: by default it takes the
        protocol's name; a protocol adds what the command line gave it (an AMQP
        exchange and properties, STOMP headers).
    settles_at_finish: True when nothing is acknowledged before finish() (a STOMP
        transaction, whose COMMIT confirms every message at once): until then the
        window waits for no acknowledgement and its clock does not run.
    """

    protocol = ""
    window: int | None = None
    address: str | None = None
    settles_at_finish = False

    def __init__(self) -> None:
        self.acked: set = set()
        self.refused: dict = {}

    def send(self, msg: Message) -> Hashable | None:
        raise NotImplementedError

    def busy(self) -> bool:
        return False

    def pump(self, wait: float) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        pass

    def refusal(self, refused: dict) -> IotctlError:
        reasons = sorted(set(map(str, refused.values())))
        return PeerError("send", f"the peer refused {len(refused)} message(s): {'; '.join(reasons[:3])}")

    def composed(self, msg: Message) -> Message:
        return msg.copy(protocol=self.protocol) if self.protocol else msg


# --------------------------------------------------------------------------- the messages to send


def outgoing(payload: PayloadSpec, sending: SendSpec | None = None, stdin=None,
             addresses: tuple[str, ...] | list[str] | None = None, validate=None) -> Iterator[Message]:
    """Every message the payload options describe, lazily; -l and --replay stream (with
    IDLE where the input paused). With `addresses` each message goes to every one of
    them (see `addressed`)."""
    if payload.lines and payload.replay is None:
        batches = payload.batches(stdin)
        if addresses is not None and len(addresses) == 1:
            return _lines_to(batches, addresses[0])  # the hot path of `pub -l -t T`
        items = _lines_to(batches, "")
    elif payload.replay is not None:
        items = payload.iter(stdin)
    else:
        data = payload.read_one(stdin)
        repeat = sending.repeat if sending is not None else 1
        interval = sending.interval if sending is not None else 0.0
        items = _repeated(data, repeat, interval)
    return items if addresses is None else addressed(items, addresses, validate)


def _lines_to(batches: Iterator[list[bytes]], address: str) -> Iterator[Message]:
    from itertools import repeat

    blank, to = repeat(""), repeat(address)
    for batch in batches:
        if batch:
            yield from map(Message, blank, to, batch)
        else:
            yield IDLE


def addressed(items: Iterable[Message], addresses, validate=None) -> Iterator[Message]:
    """Each message once for every address (-t topics, -r routing keys); with none
    (--replay), at its captured address, checked by `validate(address)` when given."""
    if len(addresses) == 1:
        address = addresses[0]
        for msg in items:
            if msg is not IDLE:
                msg.address = address
            yield msg
    elif addresses:
        for msg in items:
            if msg is IDLE:
                yield msg
                continue
            for address in addresses:
                yield msg.copy(address=address)
    elif validate is not None:
        for msg in items:
            if msg is not IDLE:
                validate(msg.address or "")
            yield msg
    else:
        yield from items


interrupts.shelter(_lines_to, addressed)


def _repeated(data: bytes, repeat: int, interval: float) -> Iterator[Message]:
    for i in range(repeat):
        if i and interval:
            time.sleep(interval)
        yield Message("", "", data)


# --------------------------------------------------------------------------- the window


class Window:
    """The messages in flight on a Sender, and what became of them.

    `offer(msg)` sends one, first making room (at most `sender.window` unacknowledged);
    `pump(wait)` services the connection; `drain()` waits until nothing is in flight;
    `finish()` drains and lets the sender learn its last outcomes. What settles is
    reported as messages: `on_ack(messages)` and `on_refuse([(message, reason)])` when
    set (the bridge acknowledges or gives back its source messages there), and always
    in the counters and `refused`.

    `timeout`: exit 5 when something waits for its acknowledgement and none has come
    for that long; the clock runs only while something waits (a pause in the input is
    not a missing acknowledgement)."""

    def __init__(self, sender: Sender, timeout: float = 10.0, what: str = "send", on_ack=None,
                 on_refuse=None):
        self.sender, self.timeout, self.what = sender, timeout, what
        self.limit = sender.window if sender.window else 1 << 62
        self.inflight: dict = {}
        self.sent = 0
        self.acknowledged = 0
        self.refused: list[tuple[Message, str]] = []
        self.on_ack, self.on_refuse = on_ack, on_refuse
        # with on_ack, settled messages are reported in the order they were offered
        # (inflight's insertion order)
        self._ordered = on_ack is not None
        self.since = time.monotonic()  # last progress, or when the oldest in flight began to wait
        self.finishing = False

    def offer(self, msg: Message) -> Hashable | None:
        """Send `msg` (making room first); its key, or None when no acknowledgement
        will come for it (sent is done)."""
        if len(self.inflight) >= self.limit or self.sender.busy():
            self.drain(self.limit - 1)
        return self.put(msg)

    def put(self, msg: Message) -> Hashable | None:
        """offer() when the caller made room already (the bridge's loop)."""
        inflight = self.inflight
        key = self.sender.send(msg)
        self.sent += 1
        if key is not None:
            if not inflight:
                self.since = time.monotonic()
            inflight[key] = msg
        return key

    def settle(self) -> bool:
        """Move what the sender reported into the counters; True when anything settled."""
        sender = self.sender
        acked, refused_keys = sender.acked, sender.refused
        if not acked and not refused_keys:
            return False
        inflight = self.inflight
        ordered = self._ordered
        if acked:
            done = []
            pop = inflight.pop
            if ordered:
                # in the order they were offered: inflight's own (insertion) order, walked
                # from the oldest until every acknowledged one was found (acknowledgements
                # mostly come oldest first: a few steps)
                wanted = len(acked) if len(acked) <= len(inflight) else len(acked & inflight.keys())
                keys = []
                if wanted:
                    for key in inflight:
                        if key in acked:
                            keys.append(key)
                            if len(keys) == wanted:
                                break
                done = [pop(key) for key in keys]
                acked.clear()
            else:
                for key in acked:
                    msg = pop(key, None)
                    if msg is not None:
                        done.append(msg)
                acked.clear()
            self.acknowledged += len(done)
            if done and self.on_ack is not None:
                self.on_ack(done)
        if refused_keys:
            bad = []
            for key, reason in refused_keys.items():
                msg = inflight.pop(key, None)
                if msg is not None:
                    bad.append((msg, reason))
            refused_keys.clear()
            self.refused.extend(bad)
            if bad and self.on_refuse is not None:
                self.on_refuse(bad)
        self.since = time.monotonic()
        return True

    def pump(self, wait: float) -> None:
        """Service the connection for at most `wait` seconds (also while the input is
        idle) and settle what came; exit 5 when an acknowledgement is overdue."""
        self.sender.pump(wait)
        interrupts.check()
        if not self.settle() and self.waiting():
            self._check_overdue(self.timeout)

    def waiting(self) -> int:
        """How many messages wait for an acknowledgement that may come now (none of a
        sender that settles at finish() before its finish)."""
        if self.sender.settles_at_finish and not self.finishing:
            return 0
        return len(self.inflight)

    def _check_overdue(self, limit: float) -> None:
        if time.monotonic() - self.since > limit:
            raise TimeoutError_(self.what, f"{len(self.inflight)} message(s) not acknowledged within {limit:g} s")

    def drain(self, target: int = 0, limit: float | None = None, stop_on_refusal: bool = False) -> None:
        """Pump until at most `target` messages are in flight and nothing is buffered."""
        limit = self.timeout if limit is None else limit
        sender = self.sender
        while True:
            self.settle()
            waiting = self.waiting()
            if waiting <= target and not sender.busy():
                return
            if stop_on_refusal and self.refused and target:
                return
            if waiting:
                if time.monotonic() - self.since > limit:
                    # acknowledgements may have come while nobody pumped (a steady trickle
                    # of input fills the window without a pause): look before giving up
                    sender.pump(0.0)
                    if self.settle():
                        continue
                    self._check_overdue(limit)
                wait = min(1.0, max(0.0, limit - (time.monotonic() - self.since)))
            else:
                wait = min(1.0, limit)
            sender.pump(wait)
            interrupts.check()

    def finish(self) -> None:
        self.drain(0)
        self.finishing = True
        self.since = time.monotonic()
        self.sender.finish()
        self.drain(0)

    def unsettled(self) -> list[Message]:
        return list(self.inflight.values())


# --------------------------------------------------------------------------- the command's loop


class Result:
    __slots__ = ("sent", "acknowledged", "refused")

    def __init__(self, sent: int, acknowledged: int, refused: int):
        self.sent, self.acknowledged, self.refused = sent, acknowledged, refused


def run(sender: Sender, items: Iterable[Message], what: str = "send", timeout: float = 10.0,
        progress: bool = False, failed: str | None = None, verb: str = "sent", report: bool = True) -> Result:
    """Send every item; return once all are acknowledged (or refused: then raise the
    sender's refusal error). `timeout`: give up (exit 5) when no acknowledgement
    arrives for that long while one is awaited. On an early stop (an error, the
    timeout, Ctrl-C) the error says how many were sent, acknowledged and not sent, and
    `failed` receives every message not acknowledged. `report=False`: one request with
    nothing of the user's in it (`http get URL`): its error alone, as `coap get` says it."""
    from iotctl.output.console import progress as make_progress

    window = Window(sender, timeout, what)
    limit = window.limit
    counted = bool(sender.window) or sender.settles_at_finish  # else sent is acknowledged
    inflight = window.inflight
    send, busy = sender.send, sender.busy
    monotonic = time.monotonic
    check = interrupts.check
    sent = 0
    out = None
    items = iter(items)
    bar = make_progress(None, verb) if progress else None
    with interrupts.guarded():
        try:
            if bar is not None:
                bar.__enter__()
            for out in items:
                check()  # a Ctrl-C held while the input was read
                if out is IDLE:  # the input paused: keep the connection alive meanwhile
                    window.sent = sent
                    window.pump(0.05 if inflight else 0.0)
                    out = None
                    if window.refused:
                        break
                    continue
                if len(inflight) >= limit or busy():
                    window.sent = sent
                    window.drain(limit - 1, stop_on_refusal=True)
                    if window.refused:
                        break
                key = send(out)
                sent += 1
                if key is not None:
                    if not inflight:
                        window.since = monotonic()
                    inflight[key] = out
                out = None
                if bar is not None and not sent % 1000:
                    bar.advance(1000)
            window.sent = sent
            check()  # a Ctrl-C held while the input ended
            if not window.refused:
                window.finish()
            check()
        except (IotctlError, KeyboardInterrupt) as exc:
            window.sent = sent
            if isinstance(exc, (UsageError, KeyboardInterrupt)) and inflight:
                # the input failed or the user stopped, the connection is fine: collect the
                # acknowledgements of what was sent (briefly) so the report is exact
                try:
                    window.since = monotonic()
                    window.drain(0, min(timeout, 2.0))
                except (IotctlError, KeyboardInterrupt):
                    pass
            window.settle()
            if isinstance(exc, UsageError) and sent == 0 and not window.refused:
                raise  # nothing was sent: no send report
            if isinstance(exc, OutputFailed) and sent == 1 and failed is None and not window.refused:
                raise  # one request whose answer could not be printed: nothing else to account for
            if isinstance(exc, ConnectionLost) and window.refused:
                # the peer refused, then closed the connection (STOMP's ERROR): the refusal is the outcome
                exc = sender.refusal({i: reason for i, (_, reason) in enumerate(window.refused)})
            if not report and failed is None:  # one request of nothing the user gave: its error alone
                if isinstance(exc, KeyboardInterrupt):
                    from iotctl.errors import Interrupted

                    raise Interrupted(f"{what} interrupted") from None
                raise exc
            acknowledged = window.acknowledged if counted else sent - len(inflight)
            unsent = [out] if out is not None and out is not IDLE else []
            note = _stopped(sender, sent, acknowledged, window, unsent, items, failed)
            if isinstance(exc, KeyboardInterrupt):
                from iotctl.errors import Interrupted

                raise Interrupted(f"{what} interrupted", note) from None
            exc.why = f"{exc.why}; {note}" if exc.why else note
            raise exc
        finally:
            if bar is not None:
                bar.advance(sent % 1000)
                bar.__exit__(None, None, None)
    acknowledged = window.acknowledged if counted else sent
    if window.refused:
        reasons = {i: reason for i, (_, reason) in enumerate(window.refused)}
        error = sender.refusal(reasons)
        if not report and failed is None:
            raise error
        unsent = [out] if out is not None and out is not IDLE else []  # taken from the input, not sent
        note = _stopped(sender, sent, acknowledged, window, unsent, items, failed)
        error.why = f"{error.why}; {note}" if error.why else note
        raise error
    return Result(sent, acknowledged, 0)


def _stopped(sender: Sender, sent: int, acknowledged: int, window: Window, unsent: list,
             rest: Iterator[Message], failed: str | None) -> str:
    """What an early stop says; writes --failed FILE with every message not acknowledged."""
    parts = [f"sent {sent}", f"acknowledged {acknowledged}"]
    if window.refused:
        parts.append(f"refused {len(window.refused)}")
    if failed is None:
        return ", ".join(parts) + " (--failed FILE keeps what was not acknowledged)"
    first = [m for m, _ in window.refused] + window.unsettled() + unsent
    try:
        n = write_failed(failed, first, rest, sender.protocol, sender.composed)
    except IotctlError as exc:  # a full disk: said after the error that stopped the run
        parts.append(f"{exc.what}: {exc.why}")
        return ", ".join(parts)
    parts.append(f"{n} not acknowledged written to {failed}")
    return ", ".join(parts)


def write_failed(path: str, first: list[Message], rest: Iterable[Message], protocol: str = "",
                 composed: Callable[[Message], Message] | None = None) -> int:
    """Write messages as envelope lines that --replay sends again; a message composed
    on the command line is written as `protocol`'s (`composed`: as the sender says), so
    it replays on its own. `rest` (the input not read yet) is read until it ends or
    pauses."""
    from iotctl.output import JsonWriter

    try:
        fh = open(path, "wb")
    except OSError as exc:
        raise UsageError(f"cannot write --failed file {path}", exc.strerror or str(exc)) from None
    n = 0

    def write(msg: Message) -> None:
        nonlocal n
        if not msg.protocol:
            if composed is not None:
                msg = composed(msg)
            elif protocol:
                msg = msg.copy(protocol=protocol)
        writer.write(msg)
        n += 1

    writer = JsonWriter(fh, lines=True)
    writer.what = f"--failed file {path}"  # a full disk: IotctlError, which the report adds
    try:
        try:
            with interrupts.deferred():  # what was taken from the input is all written
                for msg in first:
                    write(msg)
        except KeyboardInterrupt:
            pass
        try:
            for msg in rest:
                if msg is IDLE:
                    break  # the input has nothing more for now (tail -f): that is the rest
                write(msg)
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: the rest of the input stays unread, the report still comes
        writer.flush()
    finally:
        writer.release()
    return n

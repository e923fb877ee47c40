"""The send driver: every sending command (mqtt publish, coap put/post with -l, amqp
publish, stomp send, xmpp send, mqttsn publish) runs on `run()`.

The driver owns the payload sources (MESSAGE, -f, -s, -l, --replay with its timing,
--repeat/--interval), a window of unacknowledged messages, progress on a terminal,
the final status line, and what an early stop says: how many were sent,
acknowledged and not sent, with `--failed FILE` receiving every message that was
not acknowledged (as envelope lines that --replay sends again).

A protocol supplies a `Sender`.
"""

from __future__ import annotations

import time
from typing import Hashable, Iterable, Iterator

from iotctl.errors import IotctlError, PeerError, TimeoutError_, UsageError
from iotctl.payload import Outgoing, PayloadSpec


class SendSpec:
    """--repeat and --interval (options.send_options), and --failed FILE."""

    __slots__ = ("repeat", "interval", "failed")

    def __init__(self, repeat: int = 1, interval: float = 0.0, failed: str | None = None):
        self.repeat, self.interval, self.failed = repeat, interval, failed


class Sender:
    """What a protocol implements for `run()`.

    window: how many messages may wait for their acknowledgement at once; None when
        the protocol acknowledges nothing (QoS 0, --no-confirm: sent is done).
    send(out): transmit one message (may buffer); return a hashable key when an
        acknowledgement will come for it, else None.
    busy(): True when the connection has buffered output to write out first.
    pump(wait): do network I/O for at most `wait` seconds; put the keys of
        acknowledged messages into `self.acked` (a set) and of refused ones into
        `self.refused` (key -> reason). Raise an IotctlError when the connection fails.
    refusal(refused): the error for messages the peer refused (default: exit 6).
    """

    window: int | None = None

    def __init__(self) -> None:
        self.acked: set = set()
        self.refused: dict = {}

    def send(self, out: Outgoing) -> Hashable | None:
        raise NotImplementedError

    def busy(self) -> bool:
        return False

    def pump(self, wait: float) -> None:
        raise NotImplementedError

    def refusal(self, refused: dict) -> IotctlError:
        reasons = sorted(set(map(str, refused.values())))
        return PeerError("send", f"the peer refused {len(refused)} message(s): {'; '.join(reasons[:3])}")


def outgoing(payload: PayloadSpec, sending: SendSpec | None = None, stdin=None,
             addresses: tuple[str, ...] | list[str] | None = None, validate=None) -> Iterator[Outgoing]:
    """Every message the payload options describe, lazily; -l and --replay stream.
    With `addresses` each message goes to every one of them (see `addressed`)."""
    if payload.lines and payload.replay is None and addresses is not None and len(addresses) == 1:
        # the hot path of `pub -l -t T`: the messages are made at C level, no generator between
        from itertools import repeat

        return map(Outgoing, payload.payloads(stdin), repeat(addresses[0]))
    if payload.streaming:
        items = payload.iter(stdin)
    else:
        data = payload.read_one(stdin)
        repeat = sending.repeat if sending is not None else 1
        interval = sending.interval if sending is not None else 0.0
        items = _repeated(data, repeat, interval)
    return items if addresses is None else addressed(items, addresses, validate)


def addressed(items: Iterable[Outgoing], addresses, validate=None) -> Iterator[Outgoing]:
    """Each message once for every address (-t topics, -r routing keys); with none
    (--replay), at its captured address, checked by `validate(address)` when given."""
    if len(addresses) == 1:
        address = addresses[0]
        for out in items:
            out.address = address
            yield out
    elif addresses:
        for out in items:
            for address in addresses:
                yield Outgoing(out.payload, address, out.meta, out.content_type)
    elif validate is not None:
        for out in items:
            validate(out.address or "")
            yield out
    else:
        yield from items


def _repeated(data: bytes, repeat: int, interval: float) -> Iterator[Outgoing]:
    for i in range(repeat):
        if i and interval:
            time.sleep(interval)
        yield Outgoing(data)


class Result:
    __slots__ = ("sent", "acknowledged", "refused")

    def __init__(self, sent: int, acknowledged: int, refused: int):
        self.sent, self.acknowledged, self.refused = sent, acknowledged, refused


def run(sender: Sender, items: Iterable[Outgoing], what: str = "send", timeout: float = 10.0,
        progress: bool = False, failed: str | None = None, verb: str = "sent") -> Result:
    """Send every item; return once all are acknowledged (or refused: then raise the
    sender's refusal error). `timeout`: give up (exit 5) when no acknowledgement
    arrives for that long. On an early stop (an error, the timeout, Ctrl-C) the error
    says how many were sent, acknowledged and not sent, and `failed` receives every
    message not acknowledged."""
    from iotctl.output.console import progress as make_progress

    window = sender.window
    limit = window if window else 1 << 62
    inflight: dict = {}
    acked = sender.acked
    refused_keys = sender.refused
    refused: list[Outgoing] = []
    reasons: dict = {}
    send, busy = sender.send, sender.busy
    counts = [0, 0]  # sent, acknowledged (the hot loop updates locals; these on drain)
    last_progress = [time.monotonic()]
    items = iter(items)

    def settle() -> None:
        if acked:
            for key in acked:
                if inflight.pop(key, None) is not None:
                    counts[1] += 1
            acked.clear()
            last_progress[0] = time.monotonic()
        if refused_keys:
            for key, reason in refused_keys.items():
                out = inflight.pop(key, None)
                if out is not None:
                    refused.append(out)
                    reasons[key] = reason
            refused_keys.clear()
            last_progress[0] = time.monotonic()

    def drain(target: int, limit: float = timeout) -> None:
        while True:
            if acked or refused_keys:
                settle()
            if len(inflight) <= target and not busy():
                return
            if refused and target:
                return
            idle = time.monotonic() - last_progress[0]
            if idle > limit:
                raise TimeoutError_(what, f"{len(inflight)} message(s) not acknowledged within {limit:g} s")
            sender.pump(min(1.0, limit - idle))

    sent = 0
    out = None
    bar = make_progress(None, verb) if progress else None
    try:
        if bar is not None:
            bar.__enter__()
        for out in items:
            if len(inflight) >= limit or busy():
                drain(limit - 1)
                if refused:
                    break
            key = send(out)
            sent += 1
            if key is not None:
                inflight[key] = out
            out = None
            if bar is not None and not sent % 1000:
                bar.advance(1000)
        counts[0] = sent
        drain(0)
    except (IotctlError, KeyboardInterrupt) as exc:
        counts[0] = sent
        if isinstance(exc, (UsageError, KeyboardInterrupt)) and inflight:
            # the input failed or the user stopped, the connection is fine: collect the
            # acknowledgements of what was sent (briefly) so the report is exact
            try:
                last_progress[0] = time.monotonic()
                drain(0, min(timeout, 2.0))
            except (IotctlError, KeyboardInterrupt):
                pass
        settle()
        acknowledged = counts[1] if window else sent - len(inflight)
        unsent = [out] if out is not None else []
        note = _stopped(sent, acknowledged, inflight, refused, unsent, items, failed)
        if isinstance(exc, KeyboardInterrupt):
            from iotctl.errors import Interrupted

            raise Interrupted(f"{what} interrupted", note) from None
        exc.why = f"{exc.why}; {note}" if exc.why else note
        raise
    finally:
        if bar is not None:
            bar.advance(sent % 1000)
            bar.__exit__(None, None, None)
    acknowledged = counts[1] if window else sent
    if refused:
        not_sent = list(items)
        error = sender.refusal(reasons)
        note = _stopped(sent, acknowledged, inflight, refused, not_sent, iter(()), failed)
        error.why = f"{error.why}; {note}" if error.why else note
        raise error
    return Result(sent, acknowledged, 0)


def _stopped(sent: int, acknowledged: int, inflight: dict, refused: list, unsent: list,
             rest: Iterator[Outgoing], failed: str | None) -> str:
    """What an early stop says; writes --failed FILE with every message not acknowledged."""
    parts = [f"sent {sent}", f"acknowledged {acknowledged}"]
    if refused:
        parts.append(f"refused {len(refused)}")
    if failed is None:
        return ", ".join(parts) + " (--failed FILE keeps what was not acknowledged)"
    n = _write_failed(failed, [*refused, *inflight.values(), *unsent], rest)
    parts.append(f"{n} not acknowledged written to {failed}")
    return ", ".join(parts)


def _write_failed(path: str, first: list[Outgoing], rest: Iterator[Outgoing]) -> int:
    import itertools

    from iotctl.errors import UsageError
    from iotctl.message import Message
    from iotctl.output import JsonWriter

    try:
        fh = open(path, "wb")
    except OSError as exc:
        raise UsageError(f"cannot write --failed file {path}", exc.strerror or str(exc)) from None
    n = 0
    with fh:
        writer = JsonWriter(fh, lines=True)
        for out in itertools.chain(first, rest):
            writer.write(Message("", out.address or "", out.payload, out.content_type, out.meta))
            n += 1
        writer.flush()
    return n

"""The bridge: a receiver feeding a send window, any protocol into any other
(`iotctl bridge SOURCE_URL TARGET_URL`). It never names a protocol: both ends come
from the registry's URL endpoints.

A source message is acknowledged only once the target confirmed it (the window's
on_ack), so whatever the source can deliver again (a persistent MQTT session, a queue,
STOMP client acks) is carried at least once end to end. A refused message is given
back to the source, written to --failed or dropped (--on-refused). A lost target
connection is opened again with backoff and what was in flight is sent again; after
--retries the run ends (exit 3) with every message accounted for.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from operator import attrgetter
from typing import Callable

from iotctl import interrupts
from iotctl.errors import ConnectError, ConnectionLost, IotctlError, TimeoutError_, UsageError
from iotctl.histogram import Histogram
from iotctl.message import Message
from iotctl.receive import BACKOFF, Receiver, _reconnect
from iotctl.send import Sender, Window


ACK_BATCH = 256  # confirmed messages acknowledged to the source at once, at most
ACK_DELAY = 0.005  # seconds a confirmed message waits for others before it is acknowledged
_ts = attrgetter("ts")


class BridgeSpec:
    __slots__ = ("count", "timeout", "idle_timeout", "address", "max_inflight", "on_refused", "retries",
                 "ack_timeout", "failed", "save", "reconnect")

    def __init__(self, count: int | None = None, timeout: float | None = None, idle_timeout: float | None = None,
                 address: Callable[[Message], str] | None = None, max_inflight: int = 1000,
                 on_refused: str = "failed", retries: int = 10, ack_timeout: float = 30.0,
                 failed: str | None = None, save: str | None = None, reconnect: bool = True):
        self.count, self.timeout, self.idle_timeout = count, timeout, idle_timeout
        self.address, self.max_inflight, self.on_refused = address, max_inflight, on_refused
        self.retries, self.ack_timeout, self.failed, self.save = retries, ack_timeout, failed, save
        self.reconnect = reconnect


class Stats:
    """What the bridge did so far; `line()` and `json()` for --stats."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.received = 0
        self.carried = 0
        self.refused = 0
        self.requeued = 0
        self.dropped = 0
        self.failed = 0
        self.retried = 0
        self.inflight = 0
        self.latency = Histogram()  # microseconds, source arrival to target confirmation
        self._last = (self.started, 0)
        self.rate = 0.0

    def tick(self) -> None:
        now = time.monotonic()
        then, carried = self._last
        if now > then:
            self.rate = (self.carried - carried) / (now - then)
        self._last = (now, self.carried)

    def json(self) -> dict:
        p50, p99 = self.latency.percentile(50), self.latency.percentile(99)
        return {"elapsed": round(time.monotonic() - self.started, 3), "received": self.received,
                "carried": self.carried, "in_flight": self.inflight, "refused": self.refused,
                "requeued": self.requeued, "failed": self.failed, "dropped": self.dropped,
                "retried": self.retried, "rate": round(self.rate, 1),
                "latency_ms": {"p50": _ms(p50), "p99": _ms(p99), "max": _ms(self.latency.max)}}

    def line(self) -> str:
        j = self.json()
        lat = j["latency_ms"]
        parts = [f"carried {self.carried}", f"in flight {self.inflight}", f"{self.rate:.0f}/s"]
        if self.refused:
            parts.append(f"refused {self.refused}")
        if self.retried:
            parts.append(f"retried {self.retried}")
        if lat["p50"] is not None:
            parts.append(f"latency p50 {lat['p50']:g} ms p99 {lat['p99']:g} ms")
        return ", ".join(parts)


def _ms(us: int | None) -> float | None:
    return None if us is None else round(us / 1000, 3)


class Bridge:
    """One run of a bridge: `run()` until -C, -W, --idle-timeout, the source's end or
    Ctrl-C; raises with every message accounted for when it cannot go on."""

    def __init__(self, source: Receiver, open_sink: Callable[[], Sender], spec: BridgeSpec,
                 writer=None, report: Callable[[Stats, bool], None] | None = None,
                 on_start: Callable[[Sender], None] | None = None):
        self.source, self.open_sink, self.spec = source, open_sink, spec
        self.on_start = on_start
        self.writer = writer  # -o: what was carried, once confirmed
        self.report = report  # --stats: called about once a second, and at the end (final=True)
        self.stats = Stats()
        self.sink: Sender | None = None
        self.window: Window | None = None
        self._failed_fh = None
        self._saver = None
        self._flushed = 0.0
        self._waiting: deque[Message] = deque()  # taken from the source, not yet sent (the window was full)
        self._confirmed_unacked: list[Message] = []  # confirmed at the target, acknowledged to the source soon
        self._ack_by = 0.0

    # ------------------------------------------------------------------ settled messages

    def _confirmed(self, messages: list[Message]) -> None:
        now = time.time() * 1e6
        stats = self.stats
        # latency in microseconds; the messages of one source read share their arrival time
        stats.latency.record_counts({now - ts * 1e6: n for ts, n in Counter(map(_ts, messages)).items()})
        with interrupts.deferred():
            # -o and --save first: a copy that cannot be written (a full disk) ends the run
            # with these left unacknowledged at the source (they come again)
            if self.writer is not None:
                self.writer.write_all(messages)
            if self._saver is not None:
                self._saver.write_all(messages)
        stats.carried += len(messages)
        # acknowledged to the source a batch at a time (ACK_BATCH, or ACK_DELAY after the
        # first): a target confirms a few messages at a time (an MQTT broker's receive
        # maximum), and a write per confirmation cost the source's peer a wake-up each
        pending = self._confirmed_unacked
        if not pending:
            self._ack_by = time.monotonic() + ACK_DELAY
        pending.extend(messages)
        if len(pending) >= ACK_BATCH:
            self._ack_source()

    def _ack_source(self) -> None:
        """Acknowledge to the source what the target confirmed so far."""
        pending = self._confirmed_unacked
        if pending:
            self._confirmed_unacked = []
            with interrupts.deferred():
                self.source.ack(pending)

    def _refused(self, refused: list[tuple[Message, str]]) -> None:
        from iotctl.settings import warn

        stats = self.stats
        stats.refused += len(refused)
        messages = [m for m, _ in refused]
        mode = self.spec.on_refused
        reasons = sorted({str(r) for _, r in refused})
        if mode == "stop":
            from iotctl.errors import PeerError

            # not acknowledged: the source keeps them (and delivers them again where it can)
            raise PeerError("bridge", f"the target refused {len(messages)} message(s): {'; '.join(reasons[:3])}",
                            hint="--on-refused requeue|failed|drop keeps the bridge going")
        if mode == "requeue" and self.source.delivery == "at-least-once":
            stats.requeued += len(messages)
            self._ack_source()
            self.source.nack(messages)
            warn(f"the target refused {len(messages)} message(s) ({'; '.join(reasons[:3])}): given back to the source")
            return
        if mode in ("failed", "requeue") and self.spec.failed is not None:
            self._write_failed(messages)
            stats.failed += len(messages)
            warn(f"the target refused {len(messages)} message(s) ({'; '.join(reasons[:3])}): "
                 f"written to {self.spec.failed}")
        else:
            stats.dropped += len(messages)
            warn(f"the target refused {len(messages)} message(s) ({'; '.join(reasons[:3])}): dropped")
        self._ack_source()
        self.source.ack(messages)  # kept in the file, or dropped as asked: not again from the source

    def _write_failed(self, messages: list[Message]) -> None:
        if self._failed_fh is None:
            from iotctl.output import JsonWriter

            try:
                fh = open(self.spec.failed, "ab")
            except OSError as exc:
                raise UsageError(f"cannot write --failed file {self.spec.failed}", exc.strerror or str(exc)) from None
            self._failed_fh = JsonWriter(fh, lines=True)
            self._failed_fh.what = f"--failed file {self.spec.failed}"
        self._failed_fh.write_all(messages)

    # ------------------------------------------------------------------ the target's connection

    def _connect_sink(self) -> None:
        sink = self.open_sink()
        sink.__enter__()
        self.sink = sink
        limit = self.spec.max_inflight
        window = Window(sink, self.spec.ack_timeout, "bridge", on_ack=self._confirmed, on_refuse=self._refused)
        window.limit = min(window.limit, limit) if limit else window.limit
        if self.window is not None:
            window.acknowledged = self.window.acknowledged
        self.window = window

    def _close_sink(self, abort: bool = False) -> None:
        sink, self.sink = self.sink, None
        if sink is not None:
            try:
                sink.__exit__(None, None, None)
            except Exception:
                pass

    def _target_lost(self, error: IotctlError) -> None:
        """Open the target again (backoff, --retries) and send what was in flight again."""
        from iotctl.settings import status

        if self.window is not None:
            self.window.settle()  # outcomes the target reported before the loss (a refusal, then closed)
        pending = self.window.unsettled() if self.window is not None else []
        self._close_sink(abort=True)
        why = error.why or error.what
        resent = len(pending)
        for attempt in range(self.spec.retries):
            delay = BACKOFF[min(attempt, len(BACKOFF) - 1)]
            status(f"target connection lost ({why}); retrying in {delay:g} s (attempt {attempt + 1} of "
                   f"{self.spec.retries})")
            time.sleep(delay)
            self.stats.retried += 1
            try:
                self._connect_sink()
                while pending:
                    self._send(pending[0])
                    pending.pop(0)
                status("target connection restored" + (f"; {resent} message(s) sent again" if resent else ""))
                return
            except IotctlError as exc:
                if exc.code not in (ConnectError.code, TimeoutError_.code):
                    raise
                if self.window is not None and self.sink is not None:
                    pending = self.window.unsettled() + pending  # in flight on this attempt, then the rest
                self._close_sink(abort=True)
                why = exc.why or exc.what
        raise ConnectError("bridge", f"the target stayed unreachable after {self.spec.retries} retries ({why})")

    # ------------------------------------------------------------------ the loop

    def run(self) -> Stats:
        spec, stats, source = self.spec, self.stats, self.source
        if spec.save is not None:
            from iotctl.receive import _saver

            self._saver = _saver(spec.save)
        self._connect_sink()
        if self.on_start is not None:
            self.on_start(self.sink)
        count = spec.count
        started = time.monotonic()
        deadline = started + spec.timeout if spec.timeout else None
        last_arrival = started
        next_report = started + 1.0
        next_upkeep = started
        interrupted = False
        guard = interrupts.guarded()  # a Ctrl-C inside a library's sheltered frame handling waits for check()
        guard.__enter__()
        try:
            while True:
                interrupts.check()
                now = time.monotonic()
                if count is not None and stats.carried >= count:
                    break
                if deadline is not None and now >= deadline:
                    raise TimeoutError_("bridge", f"carried {stats.carried}"
                                        + (f" of {count}" if count else "") + f" within {spec.timeout:g} s")
                if (spec.idle_timeout and now - last_arrival >= spec.idle_timeout and not self.window.inflight
                        and not self._waiting):
                    break
                if self.report is not None and now >= next_report:
                    stats.inflight = len(self.window.inflight)
                    stats.tick()
                    self.report(stats, False)
                    next_report = now + 1.0
                if self._confirmed_unacked and now >= self._ack_by:
                    self._ack_source()
                waiting = self._waiting
                if waiting:
                    self._carry_waiting()  # taken from the source, sent as the window has room
                window = self.window
                busy = bool(window.inflight)
                room = window.limit - len(window.inflight)
                wanted = None if count is None else count - stats.received
                if not waiting and room > 0 and (wanted is None or wanted > 0):
                    wait = 0.002 if busy else 0.2
                    if self._confirmed_unacked:  # the source may send no more until they are acknowledged
                        wait = min(wait, max(0.0, self._ack_by - now))
                    try:
                        batch = source.poll(wait)
                    except ConnectionLost as lost:
                        if not (spec.reconnect and source.can_reconnect):
                            raise
                        _reconnect(source, lost, deadline)
                        continue
                    if batch is None:
                        break
                    if not batch and self._confirmed_unacked:
                        self._ack_source()  # the source has nothing: it may be waiting for these
                    if batch:
                        last_arrival = time.monotonic()
                        if wanted is not None and len(batch) > wanted:
                            source.nack(batch[wanted:])
                            batch = batch[:wanted]
                        stats.received += len(batch)
                        address = spec.address
                        if address is not None:
                            for msg in batch:
                                msg.address = address(msg)
                        waiting.extend(batch)
                        continue  # sent at the top, as far as the window has room
                if room <= 0 and now - self._flushed >= 0.02:
                    # the window is full: while the target confirms, the source's peer gets the acks
                    # (and sends more: a queue's prefetch) without a pause in the target's pipeline
                    self._flushed = now
                    self._ack_source()
                    source.flush()
                try:
                    if self.window.inflight or self.sink.busy():
                        self.window.pump(0.002 if room > 0 else 0.05)
                    elif now >= next_upkeep:  # an idle target is kept alive (keep-alive pings, a lost connection seen)
                        self.window.pump(0)
                        next_upkeep = now + 0.5
                except ConnectionLost as lost:
                    self._target_lost(lost)
            self._finish()
        except KeyboardInterrupt:
            interrupted = True
            self._settle_briefly()
        except IotctlError as exc:
            exc.why = (f"{exc.why}; " if exc.why else "") + self._accounting()
            raise
        finally:
            try:
                self._ack_source()  # what the target confirmed, however the run ends
            except Exception:  # the source's connection is gone: it delivers them again
                pass
            guard.__exit__(None, None, None)
            stats.inflight = len(self.window.inflight) if self.window is not None else 0
            stats.tick()
            self._close_sink()
            if self._failed_fh is not None:
                self._failed_fh.release()
            if self._saver is not None:
                self._saver.release()
            if self.report is not None:
                self.report(stats, True)
        stats.interrupted = interrupted  # type: ignore[attr-defined]
        return stats

    def _carry_waiting(self) -> None:
        """Send what waits, as far as the window has room (the hot loop: the sender's
        buffer is looked at every 32 messages; it holds a quarter MiB before busy())."""
        waiting = self._waiting
        window = self.window
        put, busy, inflight, limit = window.put, self.sink.busy, window.inflight, window.limit
        if busy():
            return
        n = 0
        while waiting and len(inflight) < limit:
            msg = waiting.popleft()
            try:
                if put(msg) is None:
                    self._confirmed([msg])  # the target acknowledges nothing: sent is done
            except ConnectionLost as lost:
                self._carry_lost(msg, lost)
                return
            n += 1
            if not n & 31 and busy():
                return

    def _carry_lost(self, msg: Message, lost: ConnectionLost) -> None:
        """`msg` met a lost target: connect again (what was in flight is sent again) and
        send it unless it was in flight, as long as the target keeps being lost."""
        while True:
            was_in_flight = any(m is msg for m in self.window.inflight.values())
            self._target_lost(lost)
            if was_in_flight:
                return
            try:
                self._send(msg)
                return
            except ConnectionLost as again:
                lost = again

    def _send(self, msg: Message) -> None:
        """Send one message, making room first (after a reconnect the window may be full)."""
        if self.window.offer(msg) is None:
            # the target acknowledges nothing (QoS 0, no confirms): sent is done
            self._confirmed([msg])

    def _finish(self) -> None:
        try:
            self.window.finish()
        except ConnectionLost as lost:
            self._target_lost(lost)
            self.window.finish()

    def _settle_briefly(self) -> None:
        """Ctrl-C: collect the confirmations of what is in flight (briefly); what stays
        unconfirmed is not acknowledged, so the source keeps it."""
        if self.window is None or not self.window.inflight:
            return
        try:
            self.window.drain(0, 2.0)
        except (IotctlError, KeyboardInterrupt):
            self.window.settle()

    def _accounting(self) -> str:
        """Where every message taken from the source is: confirmed at the target, left
        unacknowledged at the source (in flight, or taken and not sent yet), refused and
        kept by the source, in --failed, dropped or given back."""
        s = self.stats
        kept = s.refused - s.failed - s.dropped - s.requeued if self.spec.on_refused == "stop" else 0
        unacknowledged = s.received - s.carried - s.failed - s.dropped - s.requeued - kept
        parts = [f"carried {s.carried}", f"{unacknowledged} left unacknowledged at the source"]
        if kept:
            parts.append(f"{kept} refused (kept by the source)")
        if s.failed:
            parts.append(f"{s.failed} in {self.spec.failed}")
        if s.dropped:
            parts.append(f"{s.dropped} dropped")
        if s.requeued:
            parts.append(f"{s.requeued} given back")
        return ", ".join(parts)

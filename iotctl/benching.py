"""Load and latency for any broker (`iotctl bench`), written once over the registry's
URL endpoints: publishers are send windows over sinks, subscribers are sources.

Every payload starts with an ASCII header — `IOTB run:publisher:sequence:send-time:`
(send time in monotonic nanoseconds, comparable between processes of one machine) —
padded to --size, so it is valid text for every protocol. Subscribers compute
end-to-end latency, and per publisher: what arrived, duplicates, out of order, and at
the end what was lost of what the publisher sent (and of what the broker confirmed).
Publishers time their acknowledgements (confirm latency). Latencies go into
histograms (histogram.py) that merge exactly across connections, workers and hosts.
"""

from __future__ import annotations

import base64
import time
import zlib
from typing import Callable

from iotctl.errors import IotctlError
from iotctl.histogram import Histogram
from iotctl.message import Message

MAGIC = b"IOTB "


def header(run: str, publisher: int, seq: int, size: int) -> bytes:
    head = b"%s%s:%d:%d:%d:" % (MAGIC, run.encode(), publisher, seq, time.monotonic_ns())
    return head + b"x" * (size - len(head)) if size > len(head) else head


def parse(payload: bytes, run: str) -> tuple[int, int, int] | None:
    """(publisher, sequence, send time ns) of one of this run's payloads, else None."""
    if not payload.startswith(MAGIC):
        return None
    parts = payload[len(MAGIC):].split(b":", 4)
    if len(parts) < 5 or parts[0].decode("ascii", "replace") != run:
        return None
    try:
        return int(parts[1]), int(parts[2]), int(parts[3])
    except ValueError:
        return None


class Seen:
    """Which sequence numbers of one publisher arrived: a bitmap (1 bit a message)."""

    __slots__ = ("bits", "received", "duplicates", "reordered", "highest")

    def __init__(self) -> None:
        self.bits = bytearray()
        self.received = self.duplicates = self.reordered = 0
        self.highest = -1

    def add(self, seq: int) -> None:
        byte, bit = seq >> 3, 1 << (seq & 7)
        bits = self.bits
        if byte >= len(bits):
            bits.extend(bytes(byte - len(bits) + 1 + (len(bits) >> 1)))
        if bits[byte] & bit:
            self.duplicates += 1
            return
        bits[byte] |= bit
        self.received += 1
        if seq < self.highest:
            self.reordered += 1
        else:
            self.highest = seq

    def count_below(self, n: int) -> int:
        """How many of 0..n-1 arrived."""
        full, rest = n >> 3, n & 7
        total = sum(bin(b).count("1") for b in self.bits[:full])
        if rest and full < len(self.bits):
            total += bin(self.bits[full] & ((1 << rest) - 1)).count("1")
        return total

    def to_json(self) -> dict:
        return {"bits": base64.b64encode(zlib.compress(bytes(self.bits))).decode(), "received": self.received,
                "duplicates": self.duplicates, "reordered": self.reordered, "highest": self.highest}

    @classmethod
    def from_json(cls, data: dict) -> "Seen":
        s = cls()
        s.bits = bytearray(zlib.decompress(base64.b64decode(data["bits"])))
        s.received, s.duplicates = data["received"], data["duplicates"]
        s.reordered, s.highest = data["reordered"], data["highest"]
        return s

    def merge(self, other: "Seen") -> None:
        """Another subscriber's view of the same publisher: a message counts once."""
        if len(other.bits) > len(self.bits):
            self.bits.extend(bytes(len(other.bits) - len(self.bits)))
        overlap = 0
        for i, b in enumerate(other.bits):
            overlap += bin(self.bits[i] & b).count("1")
            self.bits[i] |= b
        self.duplicates += other.duplicates + overlap
        self.reordered += other.reordered
        self.received += other.received - overlap
        self.highest = max(self.highest, other.highest)


class BenchSpec:
    def __init__(self, run: str, publishers: int = 1, subscribers: int = 1, rate: float | None = None,
                 size: int = 64, duration: float | None = None, count: int | None = None, warmup: float = 0.0,
                 connect_rate: float | None = None, drain: float = 2.0, first_publisher: int = 0,
                 first_subscriber: int = 0, start_at: float | None = None, shared: bool = False,
                 alone: bool = True):
        self.run, self.publishers, self.subscribers = run, publishers, subscribers
        self.rate, self.size, self.duration, self.count = rate, size, duration, count
        self.warmup, self.connect_rate, self.drain = warmup, connect_rate, drain
        self.first_publisher, self.first_subscriber, self.start_at = first_publisher, first_subscriber, start_at
        # shared: the subscribers compete for the messages (one queue) and together must
        # get each once; else each subscriber must get every message (a topic's fan-out)
        self.shared = shared
        # alone: this process has every publisher of the run, so it knows when all has
        # arrived; a worker (or one host of several) waits for --drain of quiet instead
        self.alone = alone


class Result:
    """What one run (or several merged) measured; `to_json()` is the -o json summary and
    what `--merge` reads back."""

    def __init__(self, run: str):
        self.run = run
        self.elapsed = 0.0
        self.publishers = self.subscribers = 0
        self.connect = Histogram()  # microseconds per connection
        self.latency = Histogram()  # end to end, microseconds
        self.confirm = Histogram()  # send to acknowledgement, microseconds
        self.sent: dict[int, int] = {}  # publisher -> messages sent
        self.confirmed: dict[int, int] = {}
        self.refused = 0
        # "SUB/PUB" (fan-out) or "*/PUB" (shared) -> what arrived of that publisher
        self.seen: dict[str, Seen] = {}
        self.readers: set[str] = set()  # subscriber ids ("*" when shared)
        self.errors: dict[str, int] = {}
        self.unconnected: dict[int, int] = {}  # connections that failed to open, by exit status
        self.confirming = False  # the publishers' protocol acknowledges (delivery promised once confirmed)
        self.warmup_excluded = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def merge(self, other: "Result") -> "Result":
        self.elapsed = max(self.elapsed, other.elapsed)
        self.publishers += other.publishers
        self.subscribers += other.subscribers
        for mine, theirs in ((self.connect, other.connect), (self.latency, other.latency),
                             (self.confirm, other.confirm)):
            mine.merge(theirs)
        for table, more in ((self.sent, other.sent), (self.confirmed, other.confirmed)):
            for k, v in more.items():
                table[k] = table.get(k, 0) + v
        for k, seen in other.seen.items():
            if k in self.seen:
                self.seen[k].merge(seen)
            else:
                self.seen[k] = seen
        self.readers |= other.readers
        self.refused += other.refused
        for table, more in ((self.errors, other.errors), (self.unconnected, other.unconnected)):
            for k, v in more.items():
                table[k] = table.get(k, 0) + v
        self.confirming = self.confirming or other.confirming
        self.warmup_excluded += other.warmup_excluded
        return self

    # ------------------------------------------------------------------ the numbers

    def totals(self) -> dict:
        sent = sum(self.sent.values())
        confirmed = sum(self.confirmed.values())
        received = sum(s.received for s in self.seen.values())
        duplicates = sum(s.duplicates for s in self.seen.values())
        reordered = sum(s.reordered for s in self.seen.values())
        lost = lost_confirmed = 0
        for reader in self.readers:  # every subscriber (fan-out), or all of them together (shared)
            for pub, n in self.sent.items():
                seen = self.seen.get(f"{reader}/{pub}")
                missing = n - (seen.count_below(n) if seen is not None else 0)
                lost += missing
                unconfirmed = n - self.confirmed.get(pub, 0)
                lost_confirmed += max(0, missing - unconfirmed) if self.confirming else 0
        return {"sent": sent, "confirmed": confirmed if self.confirming else None, "refused": self.refused,
                "received": received, "duplicates": duplicates, "out_of_order": reordered, "lost": lost,
                "lost_confirmed": lost_confirmed}

    def to_json(self) -> dict:
        t = self.totals()
        secs = self.elapsed or 1e-9

        def pct(h: Histogram) -> dict:
            return {k: (None if v is None else round(v / 1000, 3)) for k, v in
                    (("p50", h.percentile(50)), ("p90", h.percentile(90)), ("p99", h.percentile(99)),
                     ("p99.9", h.percentile(99.9)), ("max", h.max), ("min", h.min))} | {"count": h.total}

        return {"run": self.run, "elapsed": round(self.elapsed, 3), "publishers": self.publishers,
                "subscribers": self.subscribers, **t,
                "rates": {"sent": round(t["sent"] / secs, 1), "received": round(t["received"] / secs, 1),
                          "confirmed": round(t["confirmed"] / secs, 1) if t["confirmed"] is not None else None},
                "latency_ms": pct(self.latency), "confirm_ms": pct(self.confirm), "connect_ms": pct(self.connect),
                "errors": self.errors,
                "raw": {"latency": self.latency.to_json(), "confirm": self.confirm.to_json(),
                        "connect": self.connect.to_json(), "sent": {str(k): v for k, v in self.sent.items()},
                        "confirmed": {str(k): v for k, v in self.confirmed.items()},
                        "seen": {k: s.to_json() for k, s in self.seen.items()}, "readers": sorted(self.readers),
                        "confirming": self.confirming, "refused": self.refused,
                        "unconnected": {str(k): v for k, v in self.unconnected.items()}}}

    @classmethod
    def from_json(cls, data: dict) -> "Result":
        r = cls(data["run"])
        raw = data["raw"]
        r.elapsed = data["elapsed"]
        r.publishers, r.subscribers = data["publishers"], data["subscribers"]
        r.latency = Histogram.from_json(raw["latency"])
        r.confirm = Histogram.from_json(raw["confirm"])
        r.connect = Histogram.from_json(raw["connect"])
        r.sent = {int(k): v for k, v in raw["sent"].items()}
        r.confirmed = {int(k): v for k, v in raw["confirmed"].items()}
        r.seen = {k: Seen.from_json(v) for k, v in raw["seen"].items()}
        r.readers = set(raw.get("readers", []))
        r.confirming, r.refused = raw["confirming"], raw["refused"]
        r.errors = dict(data.get("errors", {}))
        r.unconnected = {int(k): v for k, v in raw.get("unconnected", {}).items()}
        return r


class _Publisher:
    __slots__ = ("ident", "sink", "window", "seq", "next_at", "done")

    def __init__(self, ident: int, sink):
        self.ident, self.sink, self.window = ident, sink, None
        self.seq = 0
        self.next_at = 0.0
        self.done = False


class Bench:
    """One worker's run: open the subscribers, then the publishers (at --connect-rate),
    publish at --rate for --duration or --count, drain, and measure."""

    def __init__(self, spec: BenchSpec, open_sink: Callable[[], object] | None,
                 open_source: Callable[[], object] | None, report: Callable[[dict], None] | None = None):
        self.spec = spec
        self.open_sink, self.open_source = open_sink, open_source
        self.report = report
        # worker processes wait for each other at two points: `subscribed` once this one's
        # subscribers are open (no publisher anywhere connects before every subscriber is
        # there: an http+listen:// subscriber is what the publishers connect to), `gate`
        # once every connection is open, just before publishing (the run's clock starts after)
        self.subscribed: Callable[[], None] | None = None
        self.gate: Callable[[], None] | None = None
        self.result = Result(spec.run)
        self.pubs: list[_Publisher] = []
        self.subs: list = []
        self._second = {"sent": 0, "confirmed": 0, "received": 0, "latency": Histogram()}
        self._measuring_from = None
        self._last_activity = 0.0  # the last arrival or acknowledgement (the run ends there, not after --drain)

    # ------------------------------------------------------------------ connections

    def _paced(self, n: int, open_one: Callable[[int], None]) -> None:
        gap = 1.0 / self.spec.connect_rate if self.spec.connect_rate else 0.0
        start = time.monotonic()
        for i in range(n):
            if gap:
                delay = start + i * gap - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            t0 = time.perf_counter()
            try:
                open_one(i)
            except IotctlError as exc:
                self.result.error(f"connect: {exc.why or exc.what}")
                self.result.unconnected[int(exc.code)] = self.result.unconnected.get(int(exc.code), 0) + 1
                continue
            self.result.connect.record((time.perf_counter() - t0) * 1e6)

    def _open_sub(self, i: int) -> None:
        source = self.open_source()
        source.__enter__()
        reader = "*" if self.spec.shared else str(self.spec.first_subscriber + i)
        self.subs.append((reader, source))
        self.result.readers.add(reader)
        self.result.subscribers += 1

    def _open_pub(self, i: int) -> None:
        from iotctl.send import Window

        sink = self.open_sink()
        sink.__enter__()
        pub = _Publisher(self.spec.first_publisher + i, sink)
        pub.window = Window(sink, 30.0, "bench", on_ack=lambda msgs, p=pub: self._acked(p, msgs),
                            on_refuse=lambda bad, p=pub: self._refused(p, bad))
        self.pubs.append(pub)
        self.result.publishers += 1
        if sink.window:
            self.result.confirming = True

    def close(self) -> None:
        for conn in [p.sink for p in self.pubs] + [s for _, s in self.subs]:
            try:
                conn.__exit__(None, None, None)
            except Exception:
                pass

    # ------------------------------------------------------------------ outcomes

    def _acked(self, pub: _Publisher, msgs: list[Message]) -> None:
        now = time.time()
        r = self.result
        r.confirmed[pub.ident] = r.confirmed.get(pub.ident, 0) + len(msgs)
        self._last_activity = time.monotonic()
        self._second["confirmed"] += len(msgs)
        if self._measuring():
            for m in msgs:
                r.confirm.record((now - m.ts) * 1e6)

    def _refused(self, pub: _Publisher, bad) -> None:
        self.result.refused += len(bad)
        for _, reason in bad:
            self.result.error(f"refused: {reason}")

    def _measuring(self) -> bool:
        return self._measuring_from is not None and time.monotonic() >= self._measuring_from

    def _received(self, reader: str, batch: list[Message]) -> None:
        run = self.spec.run
        now = time.monotonic_ns()
        r = self.result
        seen = r.seen
        measuring = self._measuring()
        second = self._second["latency"]
        for msg in batch:
            head = parse(msg.payload, run)
            if head is None:
                continue
            pub, seq, sent_ns = head
            key = f"{reader}/{pub}"
            s = seen.get(key)
            if s is None:
                s = seen[key] = Seen()
            s.add(seq)
            latency = (now - sent_ns) / 1000
            second.record(latency)
            if measuring:
                r.latency.record(latency)
            else:
                r.warmup_excluded += 1
        self._second["received"] += len(batch)
        self._last_activity = time.monotonic()

    # ------------------------------------------------------------------ the run

    def run(self) -> Result:
        spec = self.spec
        try:
            if self.open_source is not None:
                self._paced(spec.subscribers, self._open_sub)
            if self.subscribed is not None:
                self.subscribed()
            if self.open_sink is not None:
                self._paced(spec.publishers, self._open_pub)
            if spec.start_at is not None:
                delay = spec.start_at - time.time()
                if delay > 0:
                    self._service(delay)
            if self.gate is not None:
                self.gate()
            started = time.monotonic()
            self._measuring_from = started + spec.warmup
            self._publish(started)
            published = time.monotonic()
            self._finish()
            # to the last arrival or acknowledgement: the quiet --drain wait is not part of the rates
            self.result.elapsed = max(published, self._last_activity) - started
        except KeyboardInterrupt:
            self.result.error("interrupted")
            self.result.elapsed = time.monotonic() - (self._measuring_from or time.monotonic())
        finally:
            self.close()
        return self.result

    def _publish(self, started: float) -> None:
        spec = self.spec
        rate = spec.rate
        end = started + spec.duration if spec.duration else None
        gap = 1.0 / rate if rate else 0.0
        for p in self.pubs:
            p.next_at = started
        next_report = started + 1.0
        active = [p for p in self.pubs if rate != 0]
        if not active and not self.subs:
            return  # --rate 0 without subscribers: the connections were the measurement
        if not active and end is not None:  # subscribers only (--sub), or connections only (--rate 0)
            while time.monotonic() < end:
                self._service(min(0.05, max(0.0, end - time.monotonic())))
                if time.monotonic() >= next_report:
                    self._tick()
                    next_report += 1.0
            return
        while active:
            now = time.monotonic()
            if end is not None and now >= end:
                break
            offered = 0
            for p in active:
                if spec.count is not None and p.seq >= spec.count:
                    p.done = True
                    continue
                # unlimited: as fast as the window allows; else on schedule (catching up a little)
                burst = 0
                while (not gap or now >= p.next_at) and burst < 64:
                    if spec.count is not None and p.seq >= spec.count:
                        break
                    w = p.window
                    if len(w.inflight) >= w.limit:
                        break
                    msg = Message("", "", header(spec.run, p.ident, p.seq, spec.size))
                    try:
                        key = w.offer(msg)
                    except IotctlError as exc:
                        self.result.error(f"publish: {exc.why or exc.what}")
                        p.done = True
                        break
                    p.seq += 1
                    offered += 1
                    self.result.sent[p.ident] = p.seq
                    self._second["sent"] += 1
                    if key is None:
                        self._acked_unconfirmed(p, msg)
                    if gap:
                        p.next_at += gap
                        if p.next_at < now - 1.0:
                            p.next_at = now  # fell more than a second behind: do not burst to catch up
                    burst += 1
            active = [p for p in active if not p.done]
            if gap:
                wait = max(0.0, min(0.002, min(p.next_at for p in active) - now)) if active else 0.0
            else:
                # every window full: wait for an acknowledgement instead of spinning (a spin
                # starves the protocol's own thread: a CoAP window of 1 ran 6 times slower)
                wait = 0.0 if offered else 0.001
            self._service(wait)
            if time.monotonic() >= next_report:
                self._tick()
                next_report += 1.0

    def _acked_unconfirmed(self, pub: _Publisher, msg: Message) -> None:
        pass  # QoS 0, no confirms: nothing to time

    def _service(self, wait: float) -> None:
        """Pump every publisher and poll every subscriber (spending about `wait`). While
        waiting, the first connection that expects something blocks in its own pump or
        poll for at most a millisecond, so an acknowledgement or a message wakes the loop
        at once and the protocol's threads get the CPU."""
        deadline = time.monotonic() + wait
        block = 0.0
        while True:
            for p in self.pubs:
                if p.window is not None and (p.window.inflight or p.sink.busy()):
                    try:
                        p.window.pump(block)
                    except IotctlError as exc:
                        self.result.error(f"publish: {exc.why or exc.what}")
                        p.window.inflight.clear()
                    block = 0.0
            for entry in self.subs:
                reader, s = entry
                try:
                    batch = s.poll(block)
                except IotctlError as exc:
                    self.result.error(f"subscribe: {exc.why or exc.what}")
                    self.subs.remove(entry)
                    break
                block = 0.0
                if batch:
                    self._received(reader, batch)
                    s.ack(batch)
            if block:
                time.sleep(block)  # nothing to block on
            left = deadline - time.monotonic()
            if left <= 0:
                return
            block = min(left, 0.001)

    def _finish(self) -> None:
        """Wait for the last acknowledgements and arrivals (--drain after the last)."""
        spec = self.spec
        quiet_since = time.monotonic()
        last_total = -1
        while True:
            self._service(0.01)
            inflight = sum(len(p.window.inflight) for p in self.pubs if p.window is not None)
            total = sum(s.received + s.duplicates for s in self.result.seen.values())
            if total != last_total:
                last_total, quiet_since = total, time.monotonic()
            copies = 1 if self.spec.shared else len(self.subs)
            expected = sum(self.result.sent.values()) * copies
            if not inflight and (not self.subs or (self.spec.alone and total >= expected)):
                return
            if time.monotonic() - quiet_since > spec.drain:
                return
            if time.monotonic() > (self._measuring_from or 0) + 3600:
                return

    def _tick(self) -> None:
        s = self._second
        if self.report is not None:
            h = s["latency"]
            self.report({"sent": s["sent"], "confirmed": s["confirmed"], "received": s["received"],
                         "connections": len(self.pubs) + len(self.subs),
                         "latency_ms": {k: (None if v is None else round(v / 1000, 3)) for k, v in
                                        (("p50", h.percentile(50)), ("p95", h.percentile(95)),
                                         ("p99", h.percentile(99)), ("max", h.max))}})
        self._second = {"sent": 0, "confirmed": 0, "received": 0, "latency": Histogram()}

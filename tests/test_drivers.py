"""The send and receive drivers with fake senders and receivers (no peer): the window,
refusals, early stops and --failed, acknowledging exactly what was written, prefix
acking for cumulative protocols, nack, reconnect, and the histogram behind latency
percentiles."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings, strategies as st

from iotctl import receive, send
from iotctl.output.writers import Writer
from iotctl.errors import ConnectionLost, PeerError, TimeoutError_, UsageError
from iotctl.histogram import Histogram
from iotctl.message import Message
from iotctl.receive import Cumulative, ReceiveSpec
from iotctl.send import IDLE, Window


class FakeSender(send.Sender):
    """Acknowledges every message `delay` pumps after it was sent; refuses payloads in
    `refuse`; loses the connection at message number `lose_at`."""

    protocol = "fake"

    def __init__(self, window=3, refuse=(), delay=1, lose_at=None, silent=False):
        super().__init__()
        self.window = window
        self.refuse, self.delay, self.lose_at, self.silent = set(refuse), delay, lose_at, silent
        self.n = 0
        self.waiting: list[tuple[int, int, Message]] = []
        self.max_inflight_seen = 0
        self.finished = False

    def send(self, msg):
        self.n += 1
        if self.lose_at is not None and self.n >= self.lose_at:
            raise ConnectionLost("send", "connection lost")
        self.waiting.append((self.n, self.delay, msg))
        self.max_inflight_seen = max(self.max_inflight_seen, len(self.waiting))
        return self.n if self.window else None

    def pump(self, wait):
        if self.silent:
            time.sleep(min(wait, 0.01))
            return
        still = []
        for key, left, msg in self.waiting:
            if left <= 1:
                if msg.payload in self.refuse:
                    self.refused[key] = f"no {msg.payload.decode()}"
                else:
                    self.acked.add(key)
            else:
                still.append((key, left - 1, msg))
        self.waiting = still

    def finish(self):
        self.finished = True


def _msgs(*payloads):
    return [Message("", "a/b", p) for p in payloads]


def test_the_window_bounds_what_is_in_flight_and_everything_is_acknowledged():
    sender = FakeSender(window=3, delay=2)
    r = send.run(sender, _msgs(*[str(i).encode() for i in range(50)]), "send", timeout=5)
    assert (r.sent, r.acknowledged) == (50, 50)
    assert sender.max_inflight_seen <= 3 and sender.finished


def test_a_refusal_stops_the_run_and_failed_keeps_the_refused_and_the_rest(tmp_path):
    failed = tmp_path / "failed.jsonl"
    sender = FakeSender(window=2, refuse={b"3"})
    with pytest.raises(PeerError) as exc:
        send.run(sender, _msgs(*[str(i).encode() for i in range(10)]), "send", timeout=5, failed=str(failed))
    kept = [json.loads(line) for line in failed.read_text().splitlines()]
    assert kept[0]["payload"] == "3" and kept[0]["protocol"] == "fake"  # composed here: written as the sender's
    acked = exc.value.why.split("acknowledged ")[1].split(",")[0]
    assert int(acked) + len(kept) == 10, exc.value.why  # every message either acknowledged or in the file
    assert "refused 1" in exc.value.why


def test_a_lost_connection_reports_the_counts_and_failed_holds_exactly_the_unacknowledged(tmp_path):
    failed = tmp_path / "failed.jsonl"
    sender = FakeSender(window=4, delay=3, lose_at=8)
    with pytest.raises(ConnectionLost) as exc:
        send.run(sender, _msgs(*[str(i).encode() for i in range(20)]), "send", timeout=5, failed=str(failed))
    why = exc.value.why
    assert "sent 7" in why
    kept = [json.loads(line)["payload"] for line in failed.read_text().splitlines()]
    acknowledged = int(why.split("acknowledged ")[1].split(",")[0])
    assert acknowledged + len(kept) == 20
    assert kept[-1] == "19" and kept == [str(i) for i in range(acknowledged, 20)]


def test_no_acknowledgement_within_the_timeout_is_exit_5_naming_the_count():
    sender = FakeSender(window=5, silent=True)
    with pytest.raises(TimeoutError_) as exc:
        send.run(sender, _msgs(b"x", b"y"), "send", timeout=0.3)
    assert "2 message(s) not acknowledged within 0.3 s" in str(exc.value)


def test_a_pause_in_the_input_is_not_a_missing_acknowledgement():
    """The ack clock runs only while something waits: a long idle input with nothing in
    flight does not time out, and the connection is pumped meanwhile."""
    sender = FakeSender(window=5)
    pumped = []
    original = sender.pump
    sender.pump = lambda wait: (pumped.append(wait), original(wait))[1]

    def items():
        yield from _msgs(b"a")
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            yield IDLE
            time.sleep(0.05)
        yield from _msgs(b"b")

    r = send.run(sender, items(), "send", timeout=0.3)
    assert (r.sent, r.acknowledged) == (2, 2)
    assert len(pumped) >= 5


def test_a_usage_error_before_anything_was_sent_has_no_send_report():
    def items():
        raise UsageError("cannot read file x", "No such file or directory")
        yield  # pragma: no cover

    with pytest.raises(UsageError) as exc:
        send.run(FakeSender(), items(), "send")
    assert "sent 0" not in str(exc.value)


def test_window_reports_settled_messages_in_the_order_they_were_offered():
    sender = FakeSender(window=10, delay=1)
    acked, refused = [], []
    w = Window(sender, 5, "t", on_ack=acked.extend, on_refuse=refused.extend)
    sender.refuse = {b"2"}
    for m in _msgs(b"0", b"1", b"2", b"3"):
        w.offer(m)
    w.finish()
    assert [m.payload for m in acked] == [b"0", b"1", b"3"]
    assert [(m.payload, why) for m, why in refused] == [(b"2", "no 2")]


# --------------------------------------------------------------------------- receiving


class FakeReceiver(receive.Receiver):
    def __init__(self, batches, lose_after=None):
        self.batches = list(batches)
        self.acked: list[bytes] = []
        self.lose_after = lose_after
        self.reconnects = 0
        self.can_reconnect = lose_after is not None

    def poll(self, wait):
        if self.lose_after is not None and self.lose_after == 0:
            self.lose_after = None
            raise ConnectionLost("subscription", "connection lost")
        if not self.batches:
            return None
        if self.lose_after is not None:
            self.lose_after -= 1
        return self.batches.pop(0)

    def ack(self, messages):
        self.acked += [m.payload for m in messages]

    def reconnect(self):
        self.reconnects += 1


class ListWriter(Writer):
    def __init__(self, fail_after=None):
        super().__init__(None)
        self.written: list[bytes] = []
        self.fail_after = fail_after

    def write(self, msg):
        if self.fail_after is not None and len(self.written) >= self.fail_after:
            raise BrokenPipeError
        self.written.append(msg.payload)

    def flush(self):
        pass


def test_acknowledges_exactly_what_was_written_and_stops_at_the_count():
    r = FakeReceiver([_msgs(b"1", b"2"), _msgs(b"3", b"4", b"5")])
    w = ListWriter()
    n = receive.run(r, ReceiveSpec(count=4), "t", writer=w)
    assert n == 4 and w.written == [b"1", b"2", b"3", b"4"] and r.acked == w.written


def test_nothing_unwritten_is_acknowledged_when_stdout_goes_away():
    from iotctl.errors import OutputClosed

    r = FakeReceiver([_msgs(b"1", b"2"), _msgs(b"3", b"4")])
    with pytest.raises(OutputClosed):
        receive.run(r, ReceiveSpec(), "t", writer=ListWriter(fail_after=3))
    assert r.acked == [b"1", b"2"]


def test_a_lost_connection_is_reconnected_when_asked_and_exit_3_when_not(monkeypatch):
    monkeypatch.setattr(receive, "BACKOFF", (0.01,))
    r = FakeReceiver([_msgs(b"1"), _msgs(b"2")], lose_after=1)
    assert receive.run(r, ReceiveSpec(reconnect=True), "t", writer=ListWriter()) == 2 and r.reconnects == 1
    r = FakeReceiver([_msgs(b"1"), _msgs(b"2")], lose_after=1)
    with pytest.raises(ConnectionLost):
        receive.run(r, ReceiveSpec(reconnect=False), "t", writer=ListWriter())


def test_cumulative_acks_only_the_longest_wholly_acknowledged_prefix():
    c = Cumulative()
    for tag in range(1, 7):
        c.delivered(tag)
    assert c.confirm([2, 3]) is None  # 1 is still open
    assert c.confirm([1]) == 3
    assert c.confirm([5]) is None
    assert c.confirm([4, 6]) == 6
    assert c.confirm([]) is None


@given(st.permutations(list(range(1, 40))))
def test_cumulative_never_acknowledges_an_open_delivery(order):
    c = Cumulative()
    for tag in range(1, 40):
        c.delivered(tag)
    done: set[int] = set()
    highest = 0
    for tag in order:
        done.add(tag)
        last = c.confirm([tag])
        if last is not None:
            assert last > highest and all(t in done for t in range(1, last + 1))
            highest = last
    assert highest == 39


# --------------------------------------------------------------------------- the histogram


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=300),
       st.floats(min_value=0, max_value=100))
def test_histogram_percentiles_are_within_the_precision(values, p):
    h = Histogram()
    for v in values:
        h.record(v)
    ordered = sorted(values)
    rank = max(1, -(-int(p * len(values)) // 100) if p * len(values) % 100 == 0 else int(p * len(values) / 100) + 1)
    exact = ordered[min(rank, len(values)) - 1]
    got = h.percentile(p)
    assert h.min == ordered[0] and h.max == ordered[-1] and h.total == len(values)
    assert exact <= got <= max(exact, int(exact * (1 + 1 / 32)) + 1), (exact, got)


@given(st.lists(st.lists(st.integers(min_value=0, max_value=10**7), max_size=50), min_size=1, max_size=6))
def test_histograms_merge_exactly(parts):
    merged, whole = Histogram(), Histogram()
    for part in parts:
        h = Histogram()
        for v in part:
            h.record(v)
            whole.record(v)
        merged.merge(Histogram.from_json(json.loads(json.dumps(h.to_json()))))
    assert merged.counts == whole.counts and merged.total == whole.total
    assert (merged.min, merged.max, merged.sum) == (whole.min, whole.max, whole.sum)
    for p in (50, 90, 99, 99.9, 100):
        assert merged.percentile(p) == whole.percentile(p)


@given(st.lists(st.lists(st.floats(min_value=-5, max_value=1e9, allow_nan=False), max_size=40), max_size=5))
def test_histogram_record_many_is_record_one_by_one(batches):
    """The bridge records a confirmation's latencies at once: the same as one by one."""
    one, many = Histogram(), Histogram()
    for batch in batches:
        for v in batch:
            one.record(v)
        many.record_many(batch)
    assert (many.counts, many.total, many.sum, many.min, many.max) == (one.counts, one.total, one.sum, one.min, one.max)

"""The send driver with a fake sender (no peer): a sender whose messages are settled
only by finish(), as a STOMP transaction's COMMIT settles every message at once."""

from __future__ import annotations

import json
import time

import pytest

from iotctl import send
from iotctl.errors import PeerError
from iotctl.message import Message


class AtFinish(send.Sender):
    """Acknowledges nothing until finish(); then everything, or refuses everything."""

    protocol = "fake"
    window = None
    settles_at_finish = True

    def __init__(self, refuse: str | None = None):
        super().__init__()
        self.keys: list[int] = []
        self.refuse = refuse
        self.finished = False

    def send(self, msg):
        self.keys.append(len(self.keys))
        return self.keys[-1]

    def pump(self, wait):
        time.sleep(min(wait, 0.01))

    def finish(self):
        self.finished = True
        if self.refuse:
            self.refused.update({k: self.refuse for k in self.keys})
        else:
            self.acked.update(self.keys)


def _items(pause: float):
    yield Message("", "a", b"1")
    end = time.monotonic() + pause
    while time.monotonic() < end:  # the input pauses longer than the ack timeout
        yield send.IDLE
        time.sleep(0.02)
    yield Message("", "a", b"2")


def test_a_sender_settling_at_finish_is_not_overdue_while_the_input_pauses():
    sender = AtFinish()
    result = send.run(sender, _items(0.5), timeout=0.2)
    assert sender.finished and (result.sent, result.acknowledged) == (2, 2)


def test_a_refusal_at_finish_reaches_failed(tmp_path):
    failed = tmp_path / "failed.jsonl"
    with pytest.raises(PeerError) as info:
        send.run(AtFinish(refuse="rolled back"), _items(0), timeout=0.2, failed=str(failed))
    assert "rolled back" in str(info.value) and "sent 2, acknowledged 0, refused 2" in info.value.why
    assert [json.loads(line)["payload"] for line in failed.read_text().splitlines()] == ["1", "2"]


class Later(send.Sender):
    """Acknowledges each message a moment after it was sent, but only says so when
    pumped (as a socket buffers what arrives until it is read)."""

    protocol = "fake"
    window = 5

    def __init__(self):
        super().__init__()
        self.sent: list[tuple[float, int]] = []

    def send(self, msg):
        self.sent.append((time.monotonic(), len(self.sent)))
        return self.sent[-1][1]

    def pump(self, wait):
        now = time.monotonic()
        self.acked.update(key for at, key in self.sent if now - at > 0.01)
        time.sleep(min(wait, 0.005))


def _trickle(n: int, gap: float):
    for i in range(n):
        time.sleep(gap)  # shorter than a pause (no IDLE): the driver does not pump between
        yield Message("", "a", b"%d" % i)


def test_a_steady_trickle_that_fills_the_window_is_not_a_timeout():
    """A window filled over longer than the ack timeout, with every acknowledgement
    already there: the driver looks before it says 'not acknowledged' (it said so
    for `stomp send -l --window 50 -W 2` fed a line every 50 ms)."""
    result = send.run(Later(), _trickle(12, 0.03), timeout=0.1)
    assert (result.sent, result.acknowledged) == (12, 12)

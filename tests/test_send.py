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

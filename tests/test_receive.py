"""The receive driver with a fake receiver (no peer)."""

from __future__ import annotations

import time

from iotctl import receive
from iotctl.errors import ConnectionLost
from iotctl.message import Message
from iotctl.output.writers import Writer


class Flaky(receive.Receiver):
    """Loses its connection once; connecting again takes `outage` seconds, then one
    message arrives shortly after."""

    can_reconnect = True

    def __init__(self, outage: float):
        self.outage, self.lost, self.back = outage, False, None

    def poll(self, wait):
        if not self.lost:
            self.lost = True
            raise ConnectionLost("subscription", "the broker closed the connection")
        if self.back is not None and time.monotonic() - self.back > 0.2:
            self.back = None
            return [Message("fake", "a", b"after")]
        time.sleep(min(wait or 0.05, 0.05))
        return []

    def reconnect(self):
        time.sleep(self.outage)
        self.back = time.monotonic()


class Collect(Writer):
    def __init__(self):
        super().__init__(None)
        self.got = []

    def write(self, msg):
        self.got.append(msg.payload)

    def flush(self):
        pass


def test_idle_timeout_counts_from_the_reconnect():
    """An outage longer than --idle-timeout does not end the run the moment the
    connection is back: what arrives next is still received."""
    out = Collect()
    receive.run(Flaky(outage=0.7), receive.ReceiveSpec(idle_timeout=0.5, idle_ok=True, reconnect=True),
                "subscribe", writer=out)
    assert out.got == [b"after"]

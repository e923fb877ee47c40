"""The one helper for waiting with a deadline: a handshake, a subscription's answer,
a drain. Protocol code supplies what "done" means and how to make progress; the
deadline, the slicing of the wait and the error are here.

    wait_until(lambda: session.connack is not None, session.step, cfg.connect_timeout,
               lambda: TimeoutError_(what, f"no CONNACK within {cfg.connect_timeout:g} s"))
"""

from __future__ import annotations

import time
from typing import Any, Callable

from iotctl.errors import IotctlError


def wait_until(done: Callable[[], Any], step: Callable[[float], Any], timeout: float | None,
               error: Callable[[], IotctlError], slice_: float = 1.0) -> Any:
    """Call `step(wait)` until `done()` is true (returned); `error()` is raised once
    `timeout` seconds have passed (None: no limit). `step` gets at most `slice_`
    seconds at a time, so a Ctrl-C or a lost connection is seen promptly; it may raise
    (a lost connection) or return False to say the connection is gone (then `error()`
    is raised at once)."""
    result = done()
    if result:
        return result
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if deadline is None:
            wait = slice_
        else:
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise error()
            wait = min(wait, slice_)
        if step(wait) is False:
            result = done()
            if result:
                return result
            raise error()
        result = done()
        if result:
            return result


class Deadline:
    """A point in time (monotonic) that a loop can ask about."""

    __slots__ = ("at",)

    def __init__(self, seconds: float | None):
        self.at = None if seconds is None else time.monotonic() + seconds

    def left(self, cap: float | None = None) -> float | None:
        """Seconds left (never negative), at most `cap`; None when unbounded and no cap."""
        if self.at is None:
            return cap
        left = max(0.0, self.at - time.monotonic())
        return left if cap is None else min(left, cap)

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

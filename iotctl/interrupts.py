"""The one Ctrl-C mechanism.

Python raises KeyboardInterrupt wherever the main thread happens to be; in the middle
of a protocol library's frame handling that loses state (pika drops buffered acks; a
message written but not acknowledged comes back to a persistent session). Code that
must not be cut in half runs inside `deferred()`: a Ctrl-C (or SIGTERM, which a
background server or a supervisor sends) is held and raised as KeyboardInterrupt once
the block is left. Everywhere else Ctrl-C interrupts at once, and the drivers turn it
into their final report.

    with interrupts.deferred():
        write(batch); ack(batch)      # both, or neither
"""

from __future__ import annotations

import signal
import threading

_depth = 0
_caught = 0
_previous: dict = {}


def _note(signum, frame) -> None:
    global _caught
    _caught += 1


class deferred:
    """Hold SIGINT (and SIGTERM with `term=True`) for the block; raise KeyboardInterrupt
    after it when one came. Re-entrant; a no-op outside the main thread or when the
    signal was not Python's default (a caller installed its own handler)."""

    __slots__ = ("term", "active")

    def __init__(self, term: bool = False):
        self.term = term
        self.active = False

    def __enter__(self):
        global _depth, _caught
        if threading.current_thread() is not threading.main_thread():
            return self
        self.active = True
        if _depth == 0:
            _caught = 0
            for sig in (signal.SIGINT, signal.SIGTERM) if self.term else (signal.SIGINT,):
                previous = signal.getsignal(sig)
                if previous is signal.default_int_handler or (sig == signal.SIGTERM
                                                              and previous is signal.SIG_DFL):
                    _previous[sig] = previous
                    signal.signal(sig, _note)
        _depth += 1
        return self

    def __exit__(self, *exc):
        global _depth
        if not self.active:
            return False
        _depth -= 1
        if _depth == 0:
            for sig, previous in list(_previous.items()):
                signal.signal(sig, previous)
            _previous.clear()
            if _caught and exc[0] is None:
                raise KeyboardInterrupt
        return False


def pending() -> bool:
    """True when a Ctrl-C was held by the current deferred block (a long block may
    check it to end early at a safe point)."""
    return _caught > 0


def terminate_as_interrupt():
    """Make SIGTERM end the run as Ctrl-C does (servers: `kill PID` stops them cleanly).
    Returns a function that restores the previous handler."""
    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    return lambda: signal.signal(signal.SIGTERM, previous)

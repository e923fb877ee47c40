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

Code that may run long or is a generator (the -l input chain, a protocol library's
frame handling) cannot sit in a `deferred` block; it is registered with `shelter()`
instead. While a driver runs inside `guarded()`, a Ctrl-C that arrives with such code
on the stack is held, and raised by the driver's next `check()` (or at the end of a
`deferred` block): a generator cut by KeyboardInterrupt is finished for good (the
lines it had read would never reach --failed), a library cut between two frames
loses its state.
"""

from __future__ import annotations

import signal
import threading

_depth = 0
_caught = 0
_previous: dict = {}
_sheltered: set = set()  # code objects a Ctrl-C never cuts while guarded
_guards = 0


def _note(signum, frame) -> None:
    """The handler while deferred or guarded: Ctrl-C raises at once unless a deferred
    block is open or sheltered code is running; then it is held."""
    global _caught
    if _depth == 0 and signum == signal.SIGINT and not _in_shelter(frame):
        raise KeyboardInterrupt
    _caught += 1


def _in_shelter(frame) -> bool:
    sheltered = _sheltered
    while frame is not None:
        if frame.f_code in sheltered:
            return True
        frame = frame.f_back
    return False


def shelter(*functions) -> None:
    """Never cut these functions (or generators) in half while a driver is guarded: a
    Ctrl-C arriving while one is running is held until the driver's next `check()`."""
    for fn in functions:
        _sheltered.add(getattr(fn, "__code__", fn))


class guarded:
    """A driver's run: Ctrl-C interrupts at once, except inside sheltered code (then
    it is held for `check()`). A no-op outside the main thread or when SIGINT has a
    handler of someone else's."""

    __slots__ = ("installed", "counted")

    def __enter__(self):
        global _guards, _caught
        self.installed = self.counted = False
        if threading.current_thread() is not threading.main_thread():
            return self
        current = signal.getsignal(signal.SIGINT)
        if current is signal.default_int_handler:
            signal.signal(signal.SIGINT, _note)
            self.installed = True
            _caught = 0
        elif current is not _note:
            return self
        _guards += 1
        self.counted = True
        return self

    def __exit__(self, *exc):
        global _guards, _caught
        if self.counted:
            _guards -= 1
        if self.installed:  # every deferred block inside has ended (blocks nest)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            _caught = 0
        return False


def check() -> None:
    """Raise the Ctrl-C held while sheltered code ran (a driver's safe point)."""
    global _caught
    if _caught and _depth == 0:
        _caught = 0
        raise KeyboardInterrupt


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
            if not _guards:
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
        global _depth, _caught
        if not self.active:
            return False
        _depth -= 1
        if _depth == 0:
            for sig, previous in list(_previous.items()):
                signal.signal(sig, previous)
            _previous.clear()
            if _caught:
                _caught = 0
                if exc[0] is None:
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

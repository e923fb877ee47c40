"""The process's one asyncio event loop, for every asyncio protocol library (aiocoap,
slixmpp, the HTTP stack), running on a thread of its own.

Protocols that are driven synchronously (paho, pika, stomp.py) stay on the main
thread; asyncio ones hand their work to this loop. Because the loop always runs, an
aiocoap observation and a slixmpp session in one process both make progress (a
bridge from one to the other), keep-alives are answered while the main thread waits
on stdin or on another protocol, and nothing depends on who calls whom.

    loop = aioloop.shared()
    ctx = loop.run(library.connect(), timeout=10)   # a coroutine, to completion
    loop.call(obj.method, arg)                      # a plain call, on the loop's thread
    inbox = loop.handoff()                          # library callbacks put(), poll() takes
    batch = inbox.take(wait)
    loop.cleanup(ctx.shutdown)                      # cleanup coroutines, bounded in time

Library objects must only be touched on the loop's thread: inside a coroutine given
to `run`, in a library callback, or through `call`. Ctrl-C reaches the main thread as
KeyboardInterrupt wherever it waits; `run` then cancels the coroutine first.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any, Awaitable, Callable

_shared: "AsyncLoop | None" = None
_lock = threading.Lock()


def shared() -> "AsyncLoop":
    """The process's loop, started on first use."""
    global _shared
    if _shared is None:
        with _lock:
            if _shared is None:
                _shared = AsyncLoop()
    return _shared


def running() -> bool:
    """True when some protocol started the shared loop in this process."""
    return _shared is not None


class AsyncLoop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._main, name="iotctl-asyncio", daemon=True)
        self.thread.start()
        self._started.wait()
        import atexit

        atexit.register(self.shutdown)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        try:
            self.loop.run_forever()
        finally:
            self._started.set()

    # ------------------------------------------------------------------ from the main thread

    def in_loop(self) -> bool:
        return threading.current_thread() is self.thread

    def run(self, coro: Awaitable[Any], timeout: float | None = None) -> Any:
        """Run `coro` on the loop and wait for its result (at most `timeout` seconds:
        then TimeoutError). Ctrl-C cancels it and is raised here."""
        if timeout is not None:
            coro = asyncio.wait_for(coro, timeout)
        future = asyncio.run_coroutine_threadsafe(_as_coroutine(coro), self.loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            try:  # let the cancellation reach the library before going on
                future.exception(timeout=1.0)
            except BaseException:
                pass
            raise

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call a plain function on the loop's thread and return its result."""
        if self.in_loop():
            return fn(*args, **kwargs)

        async def call():
            return fn(*args, **kwargs)

        return self.run(call())

    def soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Schedule a plain call on the loop's thread without waiting for it."""
        if self.in_loop():
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def handoff(self, limit: int | None = None) -> "Handoff":
        """A queue that the loop's side fills and the main thread empties."""
        return Handoff(limit)

    def cleanup(self, *cleanups: Callable[[], Awaitable[Any]], timeout: float = 2.0) -> None:
        """Run each cleanup coroutine function, each bounded by `timeout`, errors ignored
        (closing is best effort; a Ctrl-C here cuts the cleanup short)."""
        for cleanup in cleanups:
            try:
                self.run(cleanup(), timeout)
            except KeyboardInterrupt:
                return
            except Exception:
                pass

    def shutdown(self, timeout: float = 1.0) -> None:
        """Cancel what is left and stop the loop (at exit)."""
        if not self.thread.is_alive() or self.loop.is_closed():
            return

        async def cancel_all():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=timeout)

        try:
            asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(timeout + 0.5)
        except BaseException:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)


async def _as_coroutine(awaitable):
    # a Future (slixmpp's iq.send()) or a coroutine: both run as a coroutine here
    return await awaitable


class Handoff:
    """Items from the loop's thread (`put`, never blocking) to the main thread
    (`take`, waiting at most `wait` seconds). With `limit`, `full()` tells a producer
    that can hold back (flow control) to do so."""

    __slots__ = ("_items", "_ready", "limit")

    def __init__(self, limit: int | None = None) -> None:
        self._items: deque = deque()
        self._ready = threading.Event()
        self.limit = limit

    def put(self, item: Any) -> None:
        self._items.append(item)
        self._ready.set()

    def full(self) -> bool:
        return self.limit is not None and len(self._items) >= self.limit

    def __len__(self) -> int:
        return len(self._items)

    def take(self, wait: float | None, limit: int = 10000) -> list:
        """Everything there is (up to `limit` items), waiting at most `wait` seconds
        (None: until something comes) when there is nothing yet."""
        items = self._items
        if not items:
            if wait is not None and wait <= 0:
                return []
            self._ready.clear()
            if not items:
                self._ready.wait(wait)
        out = []
        pop = items.popleft
        while items and len(out) < limit:
            out.append(pop())
        return out

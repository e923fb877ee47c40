"""Run a coroutine-based protocol library (aiocoap, slixmpp) from the synchronous CLI.

One event loop lives for the whole command; the library's work happens while a call
here runs it. Ctrl-C cancels the running coroutine (asyncio.Runner's own handling)
and reaches the caller as KeyboardInterrupt, so the drivers treat it as everywhere.

    bridge = Bridge()
    ctx = bridge.run(library.connect())          # one coroutine, to completion
    batch = bridge.take(queue, wait)             # for a Receiver.poll
    bridge.close(ctx.shutdown)                   # cleanup coroutines, bounded in time
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable


class Bridged:
    """Mixin for a context manager whose opening is a coroutine on `self.bridge`:
    `__enter__` runs `self._open()`, and closes what was started when it fails."""

    bridge: "Bridge"

    async def _open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        try:
            self.bridge.run(self._open())
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Bridge:
    def __init__(self) -> None:
        self.runner = asyncio.Runner()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.runner.get_loop()

    def run(self, coro: Awaitable[Any], timeout: float | None = None) -> Any:
        """Run `coro` to completion (at most `timeout` seconds: then TimeoutError)."""
        if timeout is not None:
            coro = asyncio.wait_for(coro, timeout)
        return self.runner.run(coro)

    def queue(self) -> asyncio.Queue:
        """A queue that library callbacks fill (put_nowait) and `take` empties."""
        self.loop  # noqa: B018  (the loop must exist before the queue is used)
        return asyncio.Queue()

    def take(self, queue: asyncio.Queue, wait: float | None, limit: int = 10000) -> list:
        """Run the loop until something is in `queue` or `wait` seconds have passed; return
        everything there is (up to `limit` items), possibly nothing."""
        items = []
        if queue.empty():
            if wait is not None and wait <= 0:
                return items
            item = self.runner.run(_get(queue, wait))
            if item is _NOTHING:
                return items
            items.append(item)
        while not queue.empty() and len(items) < limit:
            items.append(queue.get_nowait())
        return items

    def sleep(self, seconds: float) -> None:
        """Let the library work for `seconds` (answer pings, flush writes)."""
        self.runner.run(asyncio.sleep(seconds))

    def close(self, *cleanups: Callable[[], Awaitable[Any]], timeout: float = 2.0) -> None:
        """Run each cleanup coroutine function (errors ignored, each bounded by
        `timeout`), then close the loop."""
        try:
            for cleanup in cleanups:
                try:
                    self.runner.run(asyncio.wait_for(cleanup(), timeout))
                except (Exception, KeyboardInterrupt):
                    pass
        finally:
            self.runner.close()


_NOTHING = object()


async def _get(queue: asyncio.Queue, wait: float | None):
    try:
        async with asyncio.timeout(wait):
            return await queue.get()
    except TimeoutError:
        return _NOTHING

"""Minimal aiocoap server with one observable resource that changes every millisecond.

GET /seq answers a sequence number as text (0 until the first observer registers).
When the first observation is registered, the number goes 1, 2, ... N, one step every
INTERVAL ms on a fixed schedule (a late step is caught up at once, so the N steps take
SECONDS seconds), and every step is sent to every observer as one notification.

The observation is served through aiocoap's stable Pipe interface (render_to_pipe,
add_response per step) rather than ObservableResource.updated_state(): that trigger is
lossy by design (a step coming before aiocoap's observation task woke up for the previous
one replaces it; seen: ~10 % of the steps at 1 kHz), and this server is meant to send
every step, so that any loss or delay measured is the observer's (or the network's).
Notifications go out CON or NON as the registration was (aiocoap's default): CON ones
are paced by the observer's ACKs (NSTART 1; the rest wait in aiocoap's backlog), NON
ones are sent at once.

After step N it prints one JSON line on stdout and keeps serving until SIGINT/SIGTERM:
{"steps": N, "sent": notifications handed to aiocoap, "last_sent": time.monotonic() when
the notification carrying N was handed to aiocoap, "late_ms": how far behind its schedule
the last step ran}.

    python coap_notifier.py HOST PORT SECONDS [INTERVAL_MS]
"""

import asyncio
import json
import signal
import sys
import time

import aiocoap
from aiocoap import resource


class Seq(resource.Resource):
    def __init__(self):
        super().__init__()
        self.value = 0
        self.sent = 0
        self.observers = set()
        self.first_observer = asyncio.Event()

    def message(self, **opts) -> aiocoap.Message:
        return aiocoap.Message(code=aiocoap.CONTENT, payload=str(self.value).encode(), content_format=0, **opts)

    async def render_get(self, request):
        return self.message()

    async def render_to_pipe(self, pipe):
        if pipe.request.opt.observe != 0 or pipe.request.code != aiocoap.GET:
            return await super().render_to_pipe(pipe)
        self.observers.add(pipe)
        pipe.on_interest_end(lambda: self.observers.discard(pipe))
        pipe.add_response(self.message(observe=self.value), is_last=False)
        self.first_observer.set()
        await asyncio.get_running_loop().create_future()  # cancelled when the observer leaves

    def notify(self) -> None:
        for pipe in list(self.observers):
            pipe.add_response(self.message(observe=self.value & 0xFFFFFF), is_last=False)
            self.sent += 1


async def main(host: str, port: int, seconds: float, interval: float) -> None:
    seq = Seq()
    site = resource.Site()
    site.add_resource(["seq"], seq)
    ctx = await aiocoap.Context.create_server_context(site, bind=(host, port), transports=["udp6"])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def tick():
        await seq.first_observer.wait()
        await asyncio.sleep(0.05)  # let the registration response go out first
        steps = round(seconds / interval)
        t0 = time.monotonic()
        last_sent = None
        for i in range(1, steps + 1):
            delay = t0 + i * interval - time.monotonic()
            await asyncio.sleep(max(delay, 0))  # behind schedule: still let incoming ACKs in
            seq.value = i
            seq.notify()
        last_sent = time.monotonic()
        late = last_sent - (t0 + steps * interval)
        print(json.dumps({"steps": steps, "sent": seq.sent, "last_sent": last_sent,
                          "late_ms": round(late * 1000, 1)}), flush=True)

    ticker = asyncio.create_task(tick())
    await stop.wait()
    ticker.cancel()
    await ctx.shutdown()


if __name__ == "__main__":
    interval_ms = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), interval_ms / 1000))

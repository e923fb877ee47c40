"""Minimal aiocoap observer: print the first response and every notification, COUNT in all.

The documented way: one GET with Observe: 0, then `async for` over the request's
observation. Each payload is written with a newline and flushed (a live stream to a
pipe, as `iotctl coap observe` does). COUNT messages or Ctrl-C end it (exit 0); a
4.xx/5.xx response or the end of the observation exits 1. With `non` the registration
(and so every notification) is non-confirmable.

    python coap_observe.py coap://HOST:PORT/PATH COUNT [non]
"""

import asyncio
import sys

from aiocoap import GET, Context, Message, Unreliable


async def main(uri: str, count: int, non: bool) -> int:
    out = sys.stdout.buffer
    ctx = await Context.create_client_context(transports=["udp6"])
    request = ctx.request(Message(code=GET, uri=uri, observe=0, transport_tuning=Unreliable if non else None))
    try:
        resp = await request.response
        if not resp.code.is_successful():
            return 1
        out.write(resp.payload + b"\n")
        out.flush()
        n = 1
        if n >= count:
            return 0
        async for resp in request.observation:
            if not resp.code.is_successful():
                return 1
            out.write(resp.payload + b"\n")
            out.flush()
            n += 1
            if n >= count:
                return 0
        return 1
    finally:
        if not request.observation.cancelled:
            request.observation.cancel()
        await ctx.shutdown()


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3:] == ["non"])))
    except KeyboardInterrupt:
        sys.exit(0)

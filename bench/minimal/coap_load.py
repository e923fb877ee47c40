"""Load client: N GETs from one aiocoap client context, as fast as it can.

By default each request waits for its response before the next is sent (one request
in flight, as CoAP's NSTART=1 asks of a client); with CONCURRENCY, that many requests
are in flight at once (each of CONCURRENCY tasks sends its share one after the other).
Every response must be 2.05 Content with a non-empty payload; the first payload is
kept to be checked by the caller. Prints one JSON line: {"n": N, "ok": responses that
passed, "seconds": time for the N requests (the client's start-up excluded), "first":
first payload}.

    python coap_load.py coap://HOST:PORT/PATH N [CONCURRENCY]
"""

import asyncio
import json
import sys
import time

from aiocoap import CONTENT, GET, Context, Message


async def main(uri: str, n: int, concurrency: int = 1) -> int:
    ctx = await Context.create_client_context(transports=["udp6"])
    request = ctx.request
    ok = 0
    first = None

    async def worker(count: int) -> None:
        nonlocal ok, first
        for _ in range(count):
            resp = await request(Message(code=GET, uri=uri)).response
            if resp.code == CONTENT and resp.payload:
                ok += 1
                if first is None:
                    first = resp.payload.decode("utf-8", "replace")

    shares = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(share) for share in shares))
    seconds = time.perf_counter() - t0
    await ctx.shutdown()
    print(json.dumps({"n": n, "ok": ok, "seconds": seconds, "first": first}))
    return 0 if ok == n else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1)))

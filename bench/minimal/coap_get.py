"""Minimal aiocoap one-request client: create a client context, one GET, print the payload.

The floor for any aiocoap-based `coap get`: the plain request API, the UDP transport
only (the URI is coap://; aiocoap's default client transports also load TCP and TLS),
the context shut down before exiting, as the aiocoap documentation's client example.
Exits 1 on a 4.xx/5.xx response, as iotctl and aiocoap-client do.

    python coap_get.py coap://HOST:PORT/PATH
"""

import asyncio
import sys

from aiocoap import GET, Context, Message


async def main() -> int:
    ctx = await Context.create_client_context(transports=["udp6"])
    try:
        resp = await ctx.request(Message(code=GET, uri=sys.argv[1])).response
    finally:
        await ctx.shutdown()
    sys.stdout.buffer.write(resp.payload + b"\n")
    return 0 if resp.code.is_successful() else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

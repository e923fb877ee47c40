"""Minimal aiocoap server with one resource: GET /time answers the UTC time as text.

The same representation as `iotctl coap serve`'s /time (text/plain, Max-Age 1), as a
plain aiocoap Resource on a Site, UDP only, bound to the address given. Runs until
SIGINT/SIGTERM.

    python coap_server.py HOST PORT
"""

import asyncio
import signal
import sys
import time

import aiocoap
from aiocoap import resource


class Time(resource.Resource):
    async def render_get(self, request):
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return aiocoap.Message(payload=now.encode(), content_format=0, max_age=1)


async def main(host: str, port: int) -> None:
    site = resource.Site()
    site.add_resource(["time"], Time())
    ctx = await aiocoap.Context.create_server_context(site, bind=(host, port), transports=["udp6"])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await ctx.shutdown()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))

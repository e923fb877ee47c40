"""Minimal aiohttp client: GET URL N times on one session, print each body.
Usage: http_get_aiohttp.py URL [N]"""
import asyncio
import sys

import aiohttp


async def main(url: str, n: int) -> None:
    out = sys.stdout.buffer
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            async with session.get(url) as resp:
                out.write(await resp.read() + b"\n")
    out.flush()


asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1))

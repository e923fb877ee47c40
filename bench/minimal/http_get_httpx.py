"""Minimal httpx client (its async client, as it would run on iotctl's loop): GET URL N
times on one client, print each body. Usage: http_get_httpx.py URL [N]"""
import asyncio
import sys

import httpx


async def main(url: str, n: int) -> None:
    out = sys.stdout.buffer
    async with httpx.AsyncClient() as client:
        for _ in range(n):
            resp = await client.get(url)
            out.write(resp.content + b"\n")
    out.flush()


asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1))

"""Minimal h11 client on asyncio (the floor for iotctl's HTTP stack): GET URL N times
on one kept-alive connection, print each body. Usage: http_get_h11.py URL [N]"""
import asyncio
import sys
from urllib.parse import urlsplit

import h11


async def main(url: str, n: int) -> None:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
    conn = h11.Connection(h11.CLIENT)
    out = sys.stdout.buffer
    for _ in range(n):
        writer.write(conn.send(h11.Request(method="GET", target=parts.path or "/",
                                           headers=[("Host", parts.netloc)])))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        body = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Data):
                body.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
        out.write(b"".join(body) + b"\n")
        conn.start_next_cycle()
    out.flush()
    writer.close()


asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1))

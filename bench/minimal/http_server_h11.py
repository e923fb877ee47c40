"""Minimal h11 server on asyncio: answers every request 204 after printing its body.
Usage: http_server_h11.py PORT"""
import asyncio
import sys

import h11


async def serve(reader, writer):
    conn = h11.Connection(h11.SERVER)
    out = sys.stdout.buffer
    try:
        while True:
            body = []
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Data):
                    body.append(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    return
            out.write(b"".join(body) + b"\n")
            out.flush()
            writer.write(conn.send(h11.Response(status_code=204, headers=[])))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            conn.start_next_cycle()
    except (ConnectionError, h11.RemoteProtocolError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


asyncio.run(main(int(sys.argv[1])))

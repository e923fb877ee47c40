"""Minimal aiohttp.web server: answers every request 204 after printing its body.
Usage: http_server_aiohttp.py PORT"""
import sys

from aiohttp import web


async def handle(request):
    body = await request.read()
    sys.stdout.buffer.write(body + b"\n")
    sys.stdout.buffer.flush()
    return web.Response(status=204)


app = web.Application()
app.router.add_route("*", "/{tail:.*}", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)

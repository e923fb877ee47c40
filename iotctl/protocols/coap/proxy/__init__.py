"""`iotctl coap proxy`: an HTTP-to-CoAP (RFC 8075) and CoAP-to-HTTP (RFC 7252 section 10)
cross-protocol proxy on the process's one asyncio loop.

- mapping.py  the tables and pure functions (target URIs, methods, media types and
              content formats, status and response codes, headers and options,
              server-sent events); no library, unit-tested on their own
- page.py     the small page `GET /` serves (HTML, its script and style), no library
- server.py   the proxy itself: the HTTP listener (iotctl.protocols.http.client's
              HttpServer), the CoAP listener (aiocoap), shared observations
"""

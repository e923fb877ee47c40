"""Minimal slixmpp receiver: log in, send presence, print the body of COUNT chat
messages (a line each, stdout flushed per batch of what arrived), disconnect.

    python xmpp_listen.py JID PASSWORD HOST PORT CAFILE COUNT
"""

import asyncio
import ssl
import sys

import slixmpp


async def main() -> int:
    jid, password, host, port, cafile, count = sys.argv[1:7]
    count = int(count)
    out = sys.stdout.buffer
    xmpp = slixmpp.ClientXMPP(jid, password)
    xmpp.ssl_context = ssl.create_default_context(cafile=cafile)
    xmpp.enable_direct_tls = False
    xmpp.enable_plaintext = False
    started = asyncio.Event()
    done = asyncio.Event()
    n = [0]

    def on_message(msg):
        if msg["body"] and n[0] < count:
            out.write(msg["body"].encode() + b"\n")
            n[0] += 1
            if n[0] == count:
                done.set()

    xmpp.add_event_handler("session_start", lambda _: started.set())
    xmpp.add_event_handler("message", on_message)
    xmpp.connect(host, int(port))
    await started.wait()
    xmpp.send_presence()
    sys.stderr.write("ready\n")
    sys.stderr.flush()
    while not done.is_set():
        try:
            await asyncio.wait_for(done.wait(), 0.05)
        except asyncio.TimeoutError:
            pass
        out.flush()
    out.flush()
    await xmpp.disconnect()
    return 0


sys.exit(asyncio.run(main()))

"""Minimal slixmpp sender (the floor for any slixmpp-based tool): log in, send each
line of stdin as a chat message to TO, wait until the server acknowledged them all
(stream management, XEP-0198: one ack request per 256 stanzas and one at the end),
disconnect. With no stdin lines it only logs in and out (login time).

    python xmpp_send.py JID PASSWORD HOST PORT CAFILE TO < lines
"""

import asyncio
import ssl
import sys

import slixmpp


async def main() -> int:
    jid, password, host, port, cafile, to = sys.argv[1:7]
    lines = sys.stdin.buffer.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    xmpp = slixmpp.ClientXMPP(jid, password)
    xmpp.register_plugin("xep_0198")
    sm = xmpp.plugin["xep_0198"]
    sm.allow_resume = False
    sm.window = sm.window_counter = 256
    xmpp.ssl_context = ssl.create_default_context(cafile=cafile)
    xmpp.enable_direct_tls = False
    xmpp.enable_plaintext = False
    started = asyncio.Event()
    acked = asyncio.Event()
    left = [len(lines)]
    xmpp.add_event_handler("session_start", lambda _: started.set())

    def on_acked(stanza):
        if stanza.name == "message":
            left[0] -= 1
            if left[0] == 0:
                acked.set()

    xmpp.add_event_handler("stanza_acked", on_acked)
    xmpp.connect(host, int(port))
    await started.wait()
    for line in lines:
        xmpp.send_message(mto=to, mbody=line.decode(), mtype="chat")
    if lines:
        while not xmpp.waiting_queue.empty():
            await asyncio.sleep(0)
        sm.request_ack()
        await acked.wait()
    await xmpp.disconnect()
    return 0


sys.exit(asyncio.run(main()))

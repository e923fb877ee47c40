"""The floor for `iotctl stomp send -l`: a minimal stomp.py script sending every stdin
line to a destination, each SEND with a receipt, at most WINDOW receipts outstanding
(as iotctl does), exiting once every receipt came back.

    stomp_send.py HOST PORT VHOST USER PASSWORD DESTINATION [WINDOW] < lines
"""

import sys
import threading

import stomp

host, port, vhost, user, password, dest = sys.argv[1:7]
window = int(sys.argv[7]) if len(sys.argv) > 7 else 256


class Receipts(stomp.ConnectionListener):
    def __init__(self):
        self.cv = threading.Condition()
        self.n = 0

    def on_receipt(self, frame):
        with self.cv:
            self.n += 1
            self.cv.notify()

    def on_error(self, frame):
        sys.exit(f"ERROR: {frame.headers.get('message')}")


conn = stomp.Connection12([(host, int(port))], vhost=vhost, auto_decode=False)
receipts = Receipts()
conn.set_listener("r", receipts)
conn.connect(user, password, wait=True)
sent = 0
for line in sys.stdin.buffer:
    if sent - receipts.n >= window:
        with receipts.cv:
            while sent - receipts.n >= window:
                receipts.cv.wait()
    conn.send(dest, line.rstrip(b"\n"), receipt=str(sent))
    sent += 1
with receipts.cv:
    while receipts.n < sent:
        receipts.cv.wait()
conn.disconnect()

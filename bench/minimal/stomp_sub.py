"""The floor for `iotctl stomp subscribe -o raw -C N`: a minimal stomp.py script
printing each message body on a line and acknowledging it (client-individual) once
written, exiting after COUNT messages.

    stomp_sub.py HOST PORT VHOST USER PASSWORD DESTINATION COUNT
"""

import sys
import threading

import stomp

host, port, vhost, user, password, dest, count = sys.argv[1:8]
count = int(count)
out = sys.stdout.buffer
done = threading.Event()
received = 0


class Printer(stomp.ConnectionListener):
    def on_message(self, frame):
        global received
        if received >= count:
            return
        out.write(frame.body + b"\n")
        out.flush()
        conn.ack(frame.headers["ack"])
        received += 1
        if received >= count:
            done.set()


conn = stomp.Connection12([(host, int(port))], vhost=vhost, auto_decode=False)
conn.set_listener("p", Printer())
conn.connect(user, password, wait=True)
conn.subscribe(dest, "s1", ack="client-individual")
done.wait()
conn.disconnect()

"""The floor for `iotctl amqp1 receive -C N -o raw`: python-qpid-proton as its
documentation shows (a Container and a MessagingHandler, prefetch 1000, each message
accepted once its payload is written). Usage: amqp1_recv.py URL ADDRESS N"""

import sys

from proton.handlers import MessagingHandler
from proton.reactor import Container

url, address, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = sys.stdout.buffer


class Recv(MessagingHandler):
    def __init__(self):
        super().__init__(prefetch=1000)
        self.received = 0

    def on_start(self, event):
        conn = event.container.connect(url, allowed_mechs="ANONYMOUS")
        event.container.create_receiver(conn, address)

    def on_message(self, event):
        out.write(bytes(event.message.body) + b"\n")
        self.received += 1
        if self.received == count:
            out.flush()
            event.receiver.close()
            event.connection.close()


Container(Recv()).run()
out.flush()

"""The floor for `iotctl amqp1 send -l`: python-qpid-proton as its documentation shows
(a Container and a MessagingHandler), every stdin line one message, unsettled until the
broker accepts it. Usage: amqp1_send.py URL ADDRESS < lines"""

import sys

from proton import Message
from proton.handlers import MessagingHandler
from proton.reactor import Container

url, address = sys.argv[1], sys.argv[2]
lines = sys.stdin.buffer.read().splitlines()


class Send(MessagingHandler):
    def __init__(self):
        super().__init__()
        self.sent = self.confirmed = 0

    def on_start(self, event):
        conn = event.container.connect(url, allowed_mechs="ANONYMOUS")
        event.container.create_sender(conn, address)

    def on_sendable(self, event):
        sender = event.sender
        while sender.credit and self.sent < len(lines) and self.sent - self.confirmed < 1000:
            msg = Message(body=lines[self.sent])
            msg.inferred = True  # a data section, as iotctl sends
            sender.send(msg)
            self.sent += 1

    def on_accepted(self, event):
        self.confirmed += 1
        if self.confirmed == len(lines):
            event.connection.close()
        elif self.sent < len(lines):
            self.on_sendable(event)

    def on_rejected(self, event):
        sys.exit("rejected")


Container(Send()).run()

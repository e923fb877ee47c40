"""Minimal pika bulk publisher with publisher confirms: every stdin line is a message.

Written as a competent pika user would for speed: pika's asynchronous SelectConnection
(its blocking channel's confirm_delivery waits for each confirm, a round trip per
message), Confirm.Select, at most WINDOW messages awaiting their confirm, the broker's
multiple=True acks honoured. Exits when every message is confirmed (exit 6 on a nack).

    python amqp_publish.py URL ROUTING_KEY [WINDOW] < lines
"""

import sys

import pika
from pika import spec


def main() -> int:
    url, key = sys.argv[1], sys.argv[2]
    window = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    lines = iter(sys.stdin.buffer)
    state = {"tag": 0, "confirmed": 0, "done": False, "nacks": 0, "rc": 0}
    conn = None

    def publish_more(channel):
        while not state["done"] and state["tag"] - state["confirmed"] < window:
            line = next(lines, None)
            if line is None:
                state["done"] = True
                break
            channel.basic_publish("", key, line.rstrip(b"\n"))
            state["tag"] += 1
        if state["done"] and state["confirmed"] == state["tag"]:
            conn.close()

    def on_confirm(frame):
        m = frame.method
        if isinstance(m, spec.Basic.Nack):
            state["nacks"] += 1
        state["confirmed"] = m.delivery_tag if m.multiple else state["confirmed"] + 1
        publish_more(frame_channel[0])

    frame_channel = []

    def on_channel(channel):
        frame_channel.append(channel)
        channel.confirm_delivery(on_confirm, callback=lambda _: publish_more(channel))

    def on_open(connection):
        connection.channel(on_open_callback=on_channel)

    def on_fail(connection, exc):
        state["rc"] = 3
        connection.ioloop.stop()

    def on_closed(connection, reason):
        connection.ioloop.stop()

    conn = pika.SelectConnection(pika.URLParameters(url), on_open_callback=on_open,
                                 on_open_error_callback=on_fail, on_close_callback=on_closed)
    conn.ioloop.start()
    return state["rc"] or (6 if state["nacks"] else 0)


if __name__ == "__main__":
    sys.exit(main())

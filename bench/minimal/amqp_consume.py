"""Minimal pika consumer: print COUNT message bodies (a line each), acknowledging them.

Written for speed: pika's asynchronous SelectConnection, prefetch 1000, bodies written
to a buffered stdout, and one Basic.Ack with multiple=True per burst of deliveries
(after the burst is written and flushed), so nothing is acknowledged before it is out.

    python amqp_consume.py URL QUEUE COUNT
"""

import sys

import pika


def main() -> int:
    url, queue, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    out = sys.stdout.buffer
    state = {"n": 0, "last": 0, "acked": 0}
    conn = None
    chan = []

    def flush_and_ack():
        if state["last"] > state["acked"]:
            out.flush()
            chan[0].basic_ack(state["last"], multiple=True)
            state["acked"] = state["last"]

    def on_message(channel, method, props, body):
        if state["n"] >= count:
            return
        out.write(body + b"\n")
        state["n"] += 1
        state["last"] = method.delivery_tag
        if state["n"] >= count:
            flush_and_ack()
            conn.close()
        elif state["n"] % 500 == 0:
            flush_and_ack()

    def on_channel(channel):
        chan.append(channel)
        channel.basic_qos(prefetch_count=1000,
                          callback=lambda _: channel.basic_consume(queue, on_message))

    def tick():
        flush_and_ack()
        conn.ioloop.call_later(0.05, tick)

    def on_open(connection):
        connection.channel(on_open_callback=on_channel)
        connection.ioloop.call_later(0.05, tick)

    def on_closed(connection, reason):
        connection.ioloop.stop()

    conn = pika.SelectConnection(pika.URLParameters(url), on_open_callback=on_open,
                                 on_open_error_callback=lambda c, e: c.ioloop.stop(),
                                 on_close_callback=on_closed)
    conn.ioloop.start()
    out.flush()
    return 0 if state["n"] >= count else 5


if __name__ == "__main__":
    sys.exit(main())

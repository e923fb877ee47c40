"""Minimal paho-mqtt bulk publisher: every stdin line is one message (like `pub -l`).

Written as a competent paho user would for speed: MQTT 5, CallbackAPIVersion.VERSION2,
driven from our own select loop (loop_read/loop_write/loop_misc) instead of
loop_start()'s thread, and at QoS > 0 at most the broker's receive maximum
unacknowledged at a time (so any number of lines is sent in bounded memory).
Exits when every message is written (QoS 0) or acknowledged (QoS 1/2).

    python pub_lines.py HOST PORT TOPIC QOS < lines
"""

import select
import sys

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

OK = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN)


def main() -> int:
    host, port, topic, qos = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    connack = []
    window = [65535]
    outstanding = set()

    def on_connect(c, u, flags, rc, props):
        connack.append(rc)
        rm = getattr(props, "ReceiveMaximum", None)
        if rm:
            window[0] = rm

    def on_publish(c, u, mid, rc, props):
        outstanding.discard(mid)

    client.on_connect = on_connect
    if qos:
        client.on_publish = on_publish
    client.connect(host, port)
    sock = client.socket()

    def pump(timeout: float) -> None:
        r, _, _ = select.select([sock], [sock] if client.want_write() else [], [], timeout)
        if r and client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise SystemExit("connection lost")
        if client.want_write() and client.loop_write() not in OK:
            raise SystemExit("connection lost")
        client.loop_misc()

    while not connack:
        pump(1.0)
    if connack[0].is_failure:
        print(f"refused: {connack[0]}", file=sys.stderr)
        return 4
    limit = window[0]
    publish = client.publish
    want_write = client.want_write
    for line in sys.stdin.buffer:
        # QoS 0: publish() writes at once; only wait when the socket is full
        while want_write() or len(outstanding) >= limit:
            pump(1.0)
        info = publish(topic, line.rstrip(b"\r\n"), qos)
        if qos:
            outstanding.add(info.mid)
    while want_write() or outstanding:
        pump(1.0)
    client.disconnect()
    while want_write():
        pump(1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

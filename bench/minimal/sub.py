"""Minimal paho-mqtt subscriber: print COUNT messages, then exit.

MQTT 5, CallbackAPIVersion.VERSION2, driven from our own select loop. paho's
loop_read() reads one packet per call when nothing is in flight (QoS 0), so after
select() says readable we keep calling it while it yields messages, and flush
stdout once per burst rather than once per message.

FORMAT raw:   the payload and a newline (what mosquitto_sub prints)
FORMAT jsonl: one json.dumps() of an envelope-like dict a line

    python sub.py HOST PORT TOPIC COUNT raw|jsonl [QOS]   (QOS of the subscription, default 0)
"""

import base64
import json
import select
import sys
from datetime import datetime, timezone

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode


def main() -> int:
    host, port, topic, count, fmt = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
    out = sys.stdout.buffer
    write = out.write
    n = 0

    def on_message_raw(c, u, m):
        nonlocal n
        if n < count:
            write(m.payload)
            write(b"\n")
            n += 1

    def on_message_jsonl(c, u, m):
        nonlocal n
        if n >= count:
            return
        try:
            text, encoding = m.payload.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(m.payload).decode("ascii"), "base64"
        env = {"ts": datetime.now(timezone.utc).isoformat(), "protocol": "mqtt", "address": m.topic,
               "payload": text, "encoding": encoding,
               "content_type": getattr(m.properties, "ContentType", None),
               "meta": {"qos": m.qos, "retain": m.retain}}
        write(json.dumps(env, ensure_ascii=False).encode("utf-8") + b"\n")
        n += 1

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    connack, suback = [], []
    client.on_connect = lambda c, u, flags, rc, props: connack.append(rc)
    client.on_subscribe = lambda c, u, mid, rcs, props: suback.append(rcs)
    client.on_message = on_message_raw if fmt == "raw" else on_message_jsonl
    client.connect(host, port)
    sock = client.socket()
    loop_read = client.loop_read

    def pump(timeout: float) -> bool:
        r, _, _ = select.select([sock], [sock] if client.want_write() else [], [], timeout)
        if r:
            while True:  # drain the burst: loop_read() handles one QoS 0 packet a call
                before = n
                if loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return False
                if n == before or n >= count:
                    break
            out.flush()
        if client.want_write():
            client.loop_write()
        client.loop_misc()
        return True

    while not connack:
        if not pump(1.0):
            return 3
    if connack[0].is_failure:
        print(f"refused: {connack[0]}", file=sys.stderr)
        return 4
    client.subscribe(topic, int(sys.argv[6]) if len(sys.argv) > 6 else 0)
    while not suback:
        if not pump(1.0):
            return 3
    while n < count:
        if not pump(1.0):
            out.flush()
            print("connection lost", file=sys.stderr)
            return 3
    out.flush()
    client.disconnect()
    while client.want_write():
        client.loop_write()
    return 0


if __name__ == "__main__":
    sys.exit(main())

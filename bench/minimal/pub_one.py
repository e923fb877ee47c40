"""Minimal paho-mqtt one-message publisher: connect, publish once at QoS 0, disconnect.

The floor for any paho-based `pub -m`: MQTT 5, CallbackAPIVersion.VERSION2, no thread.

    python pub_one.py HOST PORT TOPIC MESSAGE
"""

import sys

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def main() -> int:
    host, port, topic, message = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    connack = []
    client.on_connect = lambda c, u, flags, rc, props: connack.append(rc)
    client.connect(host, port)
    while not connack:  # wait for CONNACK, as mosquitto_pub does
        if client.loop(1.0) != mqtt.MQTT_ERR_SUCCESS:
            print("connection lost", file=sys.stderr)
            return 3
    if connack[0].is_failure:
        print(f"refused: {connack[0]}", file=sys.stderr)
        return 4
    client.publish(topic, message.encode(), 0)  # without a loop thread paho writes it at once
    client.disconnect()
    while client.want_write():
        client.loop_write()
    return 0


if __name__ == "__main__":
    sys.exit(main())

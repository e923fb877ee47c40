"""What an MQTT-SN message carries across to other protocols (message.Portable).

MQTT-SN v1.2 carries nothing but the payload and the topic: no content type, no user
properties or headers, no correlation id, no reply-to. So nothing of an MQTT-SN
message's meta (qos, retain, topic_id, topic_id_type) crosses; the address (the
topic) and the payload are the envelope's own fields."""

from __future__ import annotations

from iotctl.message import Message, Portable


def portable(msg: Message) -> Portable:
    return Portable(msg.content_type)

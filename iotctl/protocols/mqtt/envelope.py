"""What an MQTT message carries across to other protocols (message.Portable), read
from the envelope's meta without paho: the MQTT 5 content type, user properties,
correlation data and response topic."""

from __future__ import annotations

from iotctl.message import NOTHING, Message, Portable, text_pairs, meta_bytes


def portable(msg: Message) -> Portable:
    props = msg.meta.get("properties") if isinstance(msg.meta, dict) else None
    if not isinstance(props, dict):
        return NOTHING  # message.foreign adds the envelope's content type
    corr = props.get("correlation_data")
    reply = props.get("response_topic")
    return Portable(props.get("content_type") if isinstance(props.get("content_type"), str) else msg.content_type,
                    text_pairs(props.get("user_properties") or ()),
                    meta_bytes(corr) if isinstance(corr, str) else None,
                    reply if isinstance(reply, str) else None)


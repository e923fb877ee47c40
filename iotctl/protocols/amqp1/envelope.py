"""What an AMQP 1.0 message carries across to other protocols (message.Portable),
read from the envelope's meta without proton: the content type, the application
properties (as headers), the correlation id and reply-to.

The meta of a received AMQP 1.0 message (client.py writes it, README "AMQP 1.0"):

    {"durable": true, "priority": 7, "ttl": 60000, "delivery_count": 1, "body": "string",
     "properties": {"message_id": ..., "correlation_id": ..., "subject": ..., "reply_to": ...,
                    "to": ..., "user_id": ..., "content_encoding": ..., "creation_time": ms, ...},
     "headers": {application properties}, "annotations": {message annotations}}

Only the keys a message has are present: `priority` only when not the default 4,
`delivery_count` only when not 0 (a redelivery), `body` only when the body is not a
data section (the payload's bytes as they are).
"""

from __future__ import annotations

from iotctl.message import Message, Portable, text_pairs, meta_bytes

# the properties section's fields, in the spec's order (meta["properties"] keys)
PROPERTY_FIELDS = ("message_id", "user_id", "to", "subject", "reply_to", "correlation_id", "content_encoding",
                   "absolute_expiry_time", "creation_time", "group_id", "group_sequence", "reply_to_group_id")
BODY_KINDS = ("data", "string", "binary", "value", "sequence")


def portable(msg: Message) -> Portable:
    meta = msg.meta if isinstance(msg.meta, dict) else {}
    props = meta.get("properties")
    props = props if isinstance(props, dict) else {}
    corr = props.get("correlation_id")
    if isinstance(corr, str):
        corr = meta_bytes(corr)
    elif isinstance(corr, int) and not isinstance(corr, bool):
        corr = str(corr).encode()
    else:
        corr = None
    reply = props.get("reply_to")
    headers = meta.get("headers")
    return Portable(msg.content_type, text_pairs(headers) if isinstance(headers, (dict, list)) else [],
                    corr, reply if isinstance(reply, str) and reply else None)


"""What an AMQP message carries across to other protocols (message.Portable), read
from the envelope's meta without pika: the content type, the headers (as text pairs),
the correlation id and reply-to. Exchange, routing key, delivery tag, delivery mode,
priority, expiration and the other properties stay behind."""

from __future__ import annotations

from iotctl.message import Message, Portable, text_pairs, meta_bytes


def portable(msg: Message) -> Portable:
    meta = msg.meta if isinstance(msg.meta, dict) else {}
    props = meta.get("properties")
    props = props if isinstance(props, dict) else {}
    content_type = props.get("content_type")
    corr = props.get("correlation_id")
    reply = props.get("reply_to")
    headers = meta.get("headers")
    return Portable(content_type if isinstance(content_type, str) else msg.content_type,
                    text_pairs(headers) if isinstance(headers, dict) and headers else [],
                    _bytes(corr),
                    reply if isinstance(reply, str) and reply else None)


def _bytes(value) -> bytes | None:
    """A correlation id as bytes: as received (bytes when it was not UTF-8), or as a
    capture shows it (text, or `0x` and hex for bytes that were not)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str):
        return None
    return meta_bytes(value)

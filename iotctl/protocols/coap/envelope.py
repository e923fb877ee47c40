"""What a CoAP message carries across to other protocols (message.Portable), read from
the envelope without aiocoap: its content type, from the Content-Format option. CoAP
has no user headers, correlation id or reply-to of its own: nothing else crosses."""

from __future__ import annotations

from iotctl.message import Message, Portable


def portable(msg: Message) -> Portable:
    options = msg.meta.get("options") if isinstance(msg.meta, dict) else None
    number = options.get("Content-Format") if isinstance(options, dict) else None
    if isinstance(number, int) and not isinstance(number, bool):
        from iotctl.protocols.coap.formats import content_format_name

        name = content_format_name(number)
        if name is not None:
            return Portable(name)
    return Portable(msg.content_type)

"""What an HTTP message carries across to other protocols (message.Portable), read from
the envelope's meta without h11: the Content-Type, the user headers (not hop-by-hop,
framing, credentials or fields a server sets itself), and X-Correlation-ID /
X-Reply-To as the correlation id and reply-to address."""

from __future__ import annotations

from iotctl.message import Message, Portable
from iotctl.protocols.http import fields

CORRELATION = "x-correlation-id"
REPLY_TO = "x-reply-to"


def portable(msg: Message) -> Portable:
    meta = msg.meta if isinstance(msg.meta, dict) else {}
    pairs = []
    for item in meta.get("headers") or ():
        if isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(x, str) for x in item):
            pairs.append((item[0], item[1]))
    content_type = fields.header(pairs, "content-type") or msg.content_type
    corr = fields.header(pairs, CORRELATION)
    reply = fields.header(pairs, REPLY_TO)
    user = [(k, v) for k, v in fields.portable_headers(pairs) if k.lower() not in (CORRELATION, REPLY_TO)]
    return Portable(content_type, user, corr.encode("utf-8") if corr else None, reply or None)

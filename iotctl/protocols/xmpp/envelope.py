"""What an XMPP message carries across to other protocols (message.Portable), read
from the envelope's meta without slixmpp: the XEP-0131 headers (a `Content-Type`
header is the content type), and the <thread/> as the correlation id. An XMPP
message has no reply-to of its own (the sender's JID is its address); its type,
subject, id, delay stamp and recipient stay behind."""

from __future__ import annotations

from iotctl.message import Message, Portable, text_pairs


def portable(msg: Message) -> Portable:
    meta = msg.meta if isinstance(msg.meta, dict) else {}
    content_type = msg.content_type
    headers = []
    for name, value in text_pairs(meta.get("headers") or ()):
        if name.lower() == "content-type":
            content_type = content_type or value
        else:
            headers.append((name, value))
    thread = meta.get("thread")
    return Portable(content_type, headers, thread_bytes(thread) if isinstance(thread, str) and thread else None)


def thread_bytes(thread: str) -> bytes:
    """A thread id as a correlation id: `0x` and hex (how bytes that are not text are
    written into a thread) back to the bytes, else the text's UTF-8."""
    if thread.startswith("0x") and len(thread) > 2:
        try:
            return bytes.fromhex(thread[2:])
        except ValueError:
            pass
    return thread.encode("utf-8")


def thread_text(correlation_id: bytes) -> str:
    """A correlation id as a <thread/>: the text when it is printable UTF-8, else `0x`
    and hex."""
    from iotctl.message import bytes_text

    return bytes_text(correlation_id)

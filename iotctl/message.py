"""The message envelope shared by every protocol (README, "The message envelope")."""

from __future__ import annotations

import base64
import time
from datetime import datetime, timezone
from typing import Any


_now = time.time


class Message:
    """One message received or sent, whatever the protocol: what a receiver yields,
    what a sender takes, what -o json prints and --replay reads back.

    `protocol` is where the message came from ("" for one composed on the command
    line: it is native to whichever protocol sends it). `ts` is kept as a POSIX float
    and only formatted when a renderer needs it: subscribers create one of these per
    message on the hot path. `token` is the receiving protocol's acknowledgement
    handle (a packet id, a delivery tag, an ack id); it never leaves the process.
    """

    __slots__ = ("protocol", "address", "payload", "content_type", "meta", "ts", "token")

    def __init__(self, protocol: str, address: str, payload: bytes,
                 content_type: str | None = None, meta: dict | None = None,
                 ts: float | None = None, token=None):
        self.protocol = protocol
        self.address = address
        self.payload = payload
        self.content_type = content_type
        self.meta = meta if meta is not None else {}
        self.ts = _now() if ts is None else ts
        self.token = token

    def copy(self, **changes) -> "Message":
        """A copy with some fields changed (the token is not copied)."""
        fields = {"protocol": self.protocol, "address": self.address, "payload": self.payload,
                  "content_type": self.content_type, "meta": self.meta, "ts": self.ts}
        fields.update(changes)
        return Message(**fields)

    def __repr__(self) -> str:
        return f"Message({self.protocol!r}, {self.address!r}, {self.payload!r}, meta={self.meta!r})"

    @property
    def iso_ts(self) -> str:
        return datetime.fromtimestamp(self.ts, timezone.utc).isoformat()

    def payload_text(self) -> tuple[str, str]:
        """The payload as (text, encoding): UTF-8 text when valid, else base64."""
        try:
            return self.payload.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            return base64.b64encode(self.payload).decode("ascii"), "base64"

    def to_envelope(self) -> dict[str, Any]:
        text, encoding = self.payload_text()
        return {
            "ts": self.iso_ts,
            "protocol": self.protocol,
            "address": self.address,
            "payload": text,
            "encoding": encoding,
            "content_type": self.content_type,
            "meta": self.meta,
        }

    @classmethod
    def from_envelope(cls, env: dict[str, Any]) -> "Message":
        """Rebuild a message from a JSON envelope (the inverse of to_envelope)."""
        if not isinstance(env, dict):
            raise ValueError("an envelope must be a JSON object")
        payload = env.get("payload", "")
        if payload is None:
            payload = ""
        if not isinstance(payload, str):
            raise ValueError("'payload' must be a string")
        encoding = env.get("encoding", "utf-8")
        if encoding == "base64":
            data = base64.b64decode(payload, validate=True)
        elif encoding in ("utf-8", "utf8", None):
            data = payload.encode("utf-8")
        else:
            raise ValueError(f"unknown encoding {encoding!r}")
        ts = env.get("ts")
        when = datetime.fromisoformat(ts).timestamp() if isinstance(ts, str) else None
        meta = env.get("meta") or {}
        if not isinstance(meta, dict):
            raise ValueError("'meta' must be an object")
        protocol = env.get("protocol") or ""
        content_type = env.get("content_type")
        if content_type is not None and not isinstance(content_type, str):
            raise ValueError("'content_type' must be a string")
        return cls(str(protocol), str(env.get("address") or ""), data, content_type, meta, when)


class Portable:
    """What crosses from one protocol to another (README, "What crosses"): the content
    type, user properties / headers as text pairs, the correlation id and the reply-to
    address. Everything else of a foreign message's `meta` stays behind."""

    __slots__ = ("content_type", "headers", "correlation_id", "reply_to")

    def __init__(self, content_type: str | None = None, headers: list[tuple[str, str]] | None = None,
                 correlation_id: bytes | None = None, reply_to: str | None = None):
        self.content_type = content_type
        self.headers = headers or []
        self.correlation_id = correlation_id
        self.reply_to = reply_to

    def __repr__(self) -> str:
        return (f"Portable(content_type={self.content_type!r}, headers={self.headers!r}, "
                f"correlation_id={self.correlation_id!r}, reply_to={self.reply_to!r})")


# What crosses from a message that brings nothing across (a plain MQTT message, say):
# a portable reader may return this one shared, never changed, instance, and a sender
# that finds it has nothing to adopt (a bridge asks for every message).
NOTHING = Portable()


def foreign(msg: Message, protocol: str) -> Portable | None:
    """How a sender of `protocol` adopts `msg`: None when the message is native (from
    the same protocol, or composed on the command line): its `meta` is the sender's own.
    Else the portable fields, read by the source protocol's own reader (the registry's
    `portable` entry), so no shared module knows any protocol's meta."""
    if not msg.protocol or msg.protocol == protocol:
        return None
    reader = _portable_reader(msg.protocol)
    found = reader(msg) if reader is not None else NOTHING
    if found.content_type is None and msg.content_type is not None:
        if found is NOTHING:
            return Portable(msg.content_type)
        found.content_type = msg.content_type
    return found


def _portable_reader(name: str):
    """registry.portable_reader, imported at the first foreign message (a bridge asks
    for every message)."""
    global _portable_reader
    from iotctl.registry import portable_reader

    _portable_reader = portable_reader
    return portable_reader(name)


def text_pairs(value) -> list[tuple[str, str]]:
    """Headers or user properties (a dict, or a list of pairs) as (text, text) pairs;
    values that are not text are written as JSON."""
    import json

    items = value.items() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    out = []
    for item in items:
        try:
            key, val = item
        except (TypeError, ValueError):
            continue
        if not isinstance(val, str):
            val = json.dumps(jsonable(val), ensure_ascii=False)
        out.append((str(key), val))
    return out


def jsonable(value: Any) -> Any:
    """Make protocol metadata JSON-serialisable: bytes become text or 0x-hex."""
    if isinstance(value, (bytes, bytearray)):
        return bytes_text(bytes(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def meta_bytes(text: str) -> bytes:
    """Bytes as meta shows them (`bytes_text`) back as bytes: `0x` and hex, or text."""
    if text.startswith("0x"):
        try:
            return bytes.fromhex(text[2:])
        except ValueError:
            pass
    return text.encode("utf-8")


def bytes_text(value: bytes) -> str:
    """Metadata bytes for display: the text when printable UTF-8, else `0x` and hex."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + value.hex()
    return text if text.isprintable() else "0x" + value.hex()

"""The message envelope shared by every protocol (README, "The message envelope")."""

from __future__ import annotations

import base64
import time
from datetime import datetime, timezone
from typing import Any


_now = time.time


class Message:
    """One message received or sent, whatever the protocol.

    `ts` is kept as a POSIX float and only formatted when a renderer needs it:
    subscribers create one of these per message on the hot path.
    """

    __slots__ = ("protocol", "address", "payload", "content_type", "meta", "ts")

    def __init__(self, protocol: str, address: str, payload: bytes,
                 content_type: str | None = None, meta: dict | None = None,
                 ts: float | None = None):
        self.protocol = protocol
        self.address = address
        self.payload = payload
        self.content_type = content_type
        self.meta = meta if meta is not None else {}
        self.ts = _now() if ts is None else ts

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
        return cls(str(env.get("protocol", "")), str(env.get("address", "")), data,
                   env.get("content_type"), meta, when)


def jsonable(value: Any) -> Any:
    """Make protocol metadata JSON-serialisable: bytes become text or 0x-hex."""
    if isinstance(value, (bytes, bytearray)):
        return bytes_text(bytes(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def bytes_text(value: bytes) -> str:
    """Metadata bytes for display: the text when printable UTF-8, else `0x` and hex."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + value.hex()
    return text if text.isprintable() else "0x" + value.hex()

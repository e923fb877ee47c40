"""Payload codecs: turning command-line text into bytes (--encode) and decoding for display.

cbor2 is imported inside the functions that need it, never at module level.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from iotctl.errors import UsageError

ENCODINGS = ("json", "cbor", "hex", "base64")

_HEX_SEPARATORS = r"[\s:]+"  # re caches the compiled pattern on first use


def encode(data: bytes, how: str | None) -> bytes:
    """Turn the bytes of text given by the user into the payload to send.

    json   validates the text as JSON and sends it compact (UTF-8)
    cbor   parses the text as JSON and sends its CBOR encoding
    hex    hex digits (spaces, colons and a 0x prefix allowed) to bytes
    base64 standard base64 to bytes
    """
    if how is None:
        return data
    if how in ("json", "cbor"):
        value = parse_json(data)
        if how == "json":
            import json

            return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return cbor_encode(value)
    text = _text(data, how)
    if how == "hex":
        digits = re.sub(_HEX_SEPARATORS, "", text)
        if digits[:2].lower() == "0x":
            digits = digits[2:]
        try:
            return bytes.fromhex(digits)
        except ValueError:
            raise UsageError("--encode hex", "payload is not valid hex") from None
    if how == "base64":
        try:
            return base64.b64decode("".join(text.split()), validate=True)
        except binascii.Error as exc:
            raise UsageError("--encode base64", f"payload is not valid base64 ({exc})") from None
    raise UsageError("--encode", f"unknown encoding {how!r}; choose from {', '.join(ENCODINGS)}")


def _text(data: bytes, how: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"--encode {how}", "payload is not UTF-8 text") from None


MAX_DEPTH = 500  # nesting deeper than this is refused (Python's parsers would recurse out)


def parse_json(data: bytes) -> Any:
    import json

    text = _text(data, "json")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError("payload is not valid JSON",
                         f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise UsageError("payload is not valid JSON", "nested too deeply") from None
    if _depth(value) > MAX_DEPTH:
        raise UsageError("payload is not valid JSON", f"nested deeper than {MAX_DEPTH} levels")
    return value


def _depth(value: Any) -> int:
    """How deeply a parsed JSON value nests (iteratively: no recursion limit)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, (list, dict)))
    return deepest


def cbor_encode(value: Any) -> bytes:
    import cbor2

    return cbor2.dumps(value)


def cbor_decode(data: bytes) -> Any:
    """Decode CBOR; raises ValueError when the bytes are not one well-formed item."""
    import cbor2

    try:
        return cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several error types
        raise ValueError(f"not valid CBOR: {exc}") from None


def to_display_json(value: Any) -> Any:
    """Make a decoded CBOR value JSON-friendly for display (bytes as h'..', tags shown)."""
    if isinstance(value, (bytes, bytearray)):
        return f"h'{bytes(value).hex()}'"
    if isinstance(value, dict):
        return {str(to_display_json(k)) if not isinstance(k, str) else k: to_display_json(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_display_json(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    tag = getattr(value, "tag", None)
    if tag is not None:
        return {f"tag{tag}": to_display_json(getattr(value, "value", None))}
    return str(value)


def looks_like_json(data: bytes) -> Any:
    """Return the parsed JSON value when `data` is a JSON object or array, else None."""
    stripped = data.lstrip()
    if not stripped or stripped[:1] not in (b"{", b"["):
        return None
    import json

    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None

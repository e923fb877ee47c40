"""Pretty renderers chosen by content type.

The built-in ones cover what any protocol carries (JSON, CBOR, SenML, XML); a
protocol adds its own through its registry entry (CoAP: application/link-format).
Each renderer takes the payload bytes and returns a rich renderable, or raises
ValueError when the payload is not what its content type says (the pretty writer
then falls back to sniffing: JSON, text, hex dump).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def _json(payload: bytes):
    import json

    from rich.json import JSON

    return JSON(json.dumps(json.loads(payload)))


def _cbor(payload: bytes):
    from rich.json import JSON

    from iotctl import codecs

    return JSON.from_data(codecs.to_display_json(codecs.cbor_decode(payload)))


def _xml(payload: bytes):
    from xml.dom import minidom

    from rich.syntax import Syntax

    try:
        text = minidom.parseString(payload).toprettyxml(indent="  ")
    except Exception as exc:  # xml.parsers.expat.ExpatError and friends
        raise ValueError(str(exc)) from None
    text = "\n".join(line for line in text.splitlines()[1:] if line.strip())
    return Syntax(text, "xml", theme="ansi_dark", background_color="default")


BUILTIN: dict[str, Callable[[bytes], Any]] = {
    "application/json": _json,
    "application/cbor": _cbor,
    "application/xml": _xml,
    "text/xml": _xml,
}
# by structured-syntax suffix (RFC 6839): senml+json, senml+cbor, ...
SUFFIXES: dict[str, Callable[[bytes], Any]] = {"+json": _json, "+cbor": _cbor, "+xml": _xml}

_loaded: dict[str, Callable[[bytes], Any] | None] = {}


def lookup(content_type: str | None) -> Callable[[bytes], Any] | None:
    """The renderer for a content type (parameters ignored), or None."""
    ct = (content_type or "").split(";")[0].strip().lower()
    if not ct:
        return None
    if ct in _loaded:
        return _loaded[ct]
    found = BUILTIN.get(ct)
    if found is None:
        from iotctl.registry import content_renderers

        target = content_renderers().get(ct)
        if target is not None:
            module, attr = target.split(":")
            found = getattr(importlib.import_module(module), attr)
    if found is None:
        found = next((f for suffix, f in SUFFIXES.items() if ct.endswith(suffix)), None)
    _loaded[ct] = found
    return found

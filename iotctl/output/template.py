"""A safe `--format` template: `{field}` and `{field[key]}` only, never attributes."""

from __future__ import annotations

import string
from typing import Any

from iotctl.errors import UsageError

_ESCAPES = {"\\n": "\n", "\\t": "\t", "\\\\": "\\", "\\0": "\0", "\\e": "\x1b"}

FIELDS = ("ts", "protocol", "address", "payload", "encoding", "content_type", "meta",
          "size", "hex", "topic")


class SafeFormatter(string.Formatter):
    """`str.format` without attribute access or positional fields."""

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        first, rest = _split(field_name)
        if first not in kwargs:
            raise UsageError("--format", f"unknown field {{{first}}}; fields are {', '.join(FIELDS)}")
        obj = kwargs[first]
        for is_attr, key in rest:
            if is_attr:
                raise UsageError("--format", f"attribute access is not allowed in {{{field_name}}}")
            if isinstance(obj, dict):
                obj = obj.get(key, "")
            elif isinstance(obj, (list, tuple)) and isinstance(key, int):
                obj = obj[key] if -len(obj) <= key < len(obj) else ""
            else:
                obj = ""
        return obj, first

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion in (None, "s"):
            return value
        if conversion == "r":
            return repr(value)
        raise UsageError("--format", f"unknown conversion !{conversion}")

    def format_field(self, value: Any, format_spec: str) -> str:
        if value is None:
            value = ""
        elif isinstance(value, bool):
            value = "true" if value else "false"
        if isinstance(value, (dict, list)) and not format_spec:
            import json

            return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        try:
            return format(value, format_spec)
        except (ValueError, TypeError) as exc:
            raise UsageError("--format", str(exc)) from None


def _split(field_name: str):
    try:
        first, rest = string._string.formatter_field_name_split(field_name)  # type: ignore[attr-defined]
    except ValueError as exc:
        raise UsageError("--format", f"bad field {{{field_name}}}: {exc}") from None
    if not isinstance(first, str) or not first:
        raise UsageError("--format", "positional fields like {} or {0} are not allowed; name a field")
    return first, list(rest)


def unescape(template: str) -> str:
    out = []
    i = 0
    while i < len(template):
        pair = template[i:i + 2]
        if pair in _ESCAPES:
            out.append(_ESCAPES[pair])
            i += 2
        else:
            out.append(template[i])
            i += 1
    return "".join(out)


class Template:
    def __init__(self, template: str):
        self.template = unescape(template)
        self.formatter = SafeFormatter()
        try:
            parsed = list(self.formatter.parse(self.template))
        except ValueError as exc:
            raise UsageError("--format", str(exc)) from None
        for _, name, _, _ in parsed:
            if name is not None:
                _split(name)

    def render(self, fields: dict[str, Any]) -> str:
        return self.formatter.vformat(self.template, (), fields)

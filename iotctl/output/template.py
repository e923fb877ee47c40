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


MAX_WIDTH = 10000  # a wider field is a mistake, not a layout (and could fill memory)


def _check_spec(field: str, spec: str) -> None:
    """Refuse nested fields and absurd widths or precisions in a format spec."""
    import re

    if "{" in spec or "}" in spec:
        raise UsageError("--format", f"nested fields are not allowed in {{{field}:{spec}}}")
    for number in re.findall(r"\d+", spec):
        if int(number) > MAX_WIDTH:
            raise UsageError("--format", f"{{{field}:{spec}}}: widths and precisions above {MAX_WIDTH} "
                             "are not allowed")


class Template:
    """A --format template, checked completely when it is made: unknown fields,
    attribute access, positional fields, bad conversions and absurd widths are
    usage errors before anything connects."""

    def __init__(self, template: str):
        self.template = unescape(template)
        self.formatter = SafeFormatter()
        try:
            parsed = list(self.formatter.parse(self.template))
        except ValueError as exc:
            raise UsageError("--format", str(exc)) from None
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            first, rest = _split(name)
            if first not in FIELDS:
                raise UsageError("--format", f"unknown field {{{first}}}; fields are {', '.join(FIELDS)}")
            if any(is_attr for is_attr, _ in rest):
                raise UsageError("--format", f"attribute access is not allowed in {{{name}}}")
            if conversion not in (None, "s", "r"):
                raise UsageError("--format", f"unknown conversion !{conversion} in {{{name}}}")
            _check_spec(name, spec or "")
        try:  # a spec that does not fit its value type (e.g. {size:q}) fails here, not later
            self.render({f: "" for f in FIELDS} | {"size": 0, "meta": {}})
        except UsageError:
            raise
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise UsageError("--format", str(exc)) from None

    def render(self, fields: dict[str, Any]) -> str:
        return self.formatter.vformat(self.template, (), fields)

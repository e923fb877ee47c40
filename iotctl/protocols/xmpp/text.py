"""What XMPP can carry: XML text (no slixmpp here, so the checks run before anything
connects).

A body, a subject, a JID or a password is XML character data: UTF-8, without the
control characters XML 1.0 forbids. Text from the command line that was not UTF-8
reaches Python as lone surrogates (surrogateescape); a payload is bytes.
"""

from __future__ import annotations

import re

from iotctl.errors import UsageError

# characters XML 1.0 does not allow (lone surrogates included)
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
BINARY_HINT = ("XMPP carries XML text only: send binary data as base64 text "
               "(e.g. base64 FILE | iotctl xmpp send JID -s); --encode base64 is the other way round "
               "(base64 text to bytes)")


def _why(text: str, match) -> str:
    ch = match.group()
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"byte 0x{code - 0xDC00:02x} is not UTF-8"
    if 0xD800 <= code <= 0xDFFF:
        return "it is not valid UTF-8"
    return f"character U+{code:04X} at position {match.start() + 1} is not allowed in XML"


def xml_text(value: str, what: str, show: bool = True) -> str:
    """`value` when XMPP can carry it, else exit 2 naming `what` (the value itself is
    not shown when `show` is false: a password)."""
    match = _NOT_XML.search(value)
    if match is None:
        return value
    why = _why(value, match)
    if not show:
        why = why.split(" at position")[0]
    raise UsageError(f"{what} is not text XMPP can carry", why)


def body_text(payload: bytes, what: str = "payload") -> str:
    """A payload as the text of a <body/>: UTF-8 without XML's forbidden characters."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} is not text XMPP can carry",
                         f"byte 0x{payload[exc.start]:02x} at offset {exc.start} is not UTF-8",
                         hint=BINARY_HINT) from None
    match = _NOT_XML.search(text)
    if match is not None:
        code = ord(match.group())
        offset = len(text[: match.start()].encode("utf-8"))
        raise UsageError(f"{what} is not text XMPP can carry",
                         f"control character 0x{code:02x} at offset {offset} is not allowed in XML",
                         hint=BINARY_HINT)
    return text


def check_jid_text(value: str, what: str) -> None:
    """A JID given on the command line must be text before it can be parsed."""
    xml_text(value, what)


def check_options(**options) -> None:
    """Each given option (name=value, the name as on the command line) is XML text."""
    for name, value in options.items():
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, str):
                xml_text(v, "--" + name.replace("_", "-"))

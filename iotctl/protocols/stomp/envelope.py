"""STOMP headers without stomp.py: what a STOMP message carries across to other protocols
(message.Portable: the content type, the user headers, correlation-id and reply-to); the
names of the headers that are STOMP's own, which client.py never takes from another
protocol's message and never sends again from a capture; and what a header of each
version can carry at all (check_header, check_connect_value)."""

from __future__ import annotations

from iotctl.errors import UsageError
from iotctl.message import Message, Portable, text_pairs

# the frame's own headers and those a broker sets on delivery: never a user header,
# never sent again by --replay (address, content_type and the payload hold the first)
DELIVERY = frozenset(("destination", "content-type", "content-length", "receipt", "receipt-id", "message-id",
                      "subscription", "ack", "transaction", "redelivered", "id"))
# every header name the protocol gives a meaning to (frames, connection, subscription):
# a header from another protocol's message with one of these names is dropped
FRAME = DELIVERY | frozenset(("accept-version", "host", "login", "passcode", "heart-beat", "version", "session",
                              "server", "message", "selector"))
# message attributes the brokers set or read (RabbitMQ maps them to AMQP properties,
# ActiveMQ to JMS fields): not user headers; correlation-id and reply-to cross on their own
ATTRIBUTES = frozenset(("persistent", "priority", "expires", "expiration", "timestamp", "correlation-id",
                        "reply-to", "content-encoding", "amqp-message-id", "type", "user-id", "app-id"))
NOT_USER = FRAME | ATTRIBUTES


def portable(msg: Message) -> Portable:
    meta = msg.meta if isinstance(msg.meta, dict) else {}
    headers = text_pairs({k: v for k, v in meta.items()
                          if k not in NOT_USER and v is not None and not isinstance(v, (dict, list))})
    corr = meta.get("correlation-id")
    reply = meta.get("reply-to")
    return Portable(msg.content_type, headers,
                    corr.encode("utf-8") if isinstance(corr, str) else None,
                    reply if isinstance(reply, str) else None)


# --------------------------------------------------------------------------- what a frame can carry

# characters a header cannot carry, per version: NUL ends a frame in every version; 1.0
# has no escapes at all, 1.1 escapes LF, ':' and '\' but not CR, 1.2 escapes all four
# (client.py escapes names as well as values, as the specification says)
_NOT_IN_NAME = {"1.0": "\0\r\n:", "1.1": "\0\r", "1.2": "\0"}
_NOT_IN_VALUE = {"1.0": "\0\r\n", "1.1": "\0\r", "1.2": "\0"}
_SHOWN = {"\0": "NUL", "\r": "CR", "\n": "LF", ":": "':'"}


def check_header(name: str, value: str, version: str, what: str = "header") -> None:
    """Refuse (exit 2) a header that a frame of `version` cannot carry as given: sent
    anyway it would end the frame early or become a second header (header injection)."""
    if not name:
        raise UsageError(f"{what} {name!r}", "a header needs a name")
    for text, part, banned in ((name, "name", _NOT_IN_NAME[version]), (value, "value", _NOT_IN_VALUE[version])):
        for char in banned:
            if char in text:
                raise UsageError(f"{what} {name!r}", f"its {part} contains {_SHOWN[char]}, {_why(char, version)}")


def check_connect_value(value: str | None, what: str) -> None:
    """The CONNECT frame's headers (login, passcode, host, client-id) are never escaped,
    in any version: CR, LF and NUL are refused."""
    if value:
        for char in "\0\r\n":
            if char in value:
                raise UsageError(what, f"contains {_SHOWN[char]}, which a STOMP CONNECT frame cannot carry")


def _why(char: str, version: str) -> str:
    if char == "\0":
        return "which ends a STOMP frame"
    better = "-V 1.2" if version == "1.1" else "-V 1.1 or 1.2"
    return f"which STOMP {version} cannot escape (use {better})"

"""Topic names and filters with + and # wildcards (the MQTT and MQTT-SN syntax):
validation and matching (pure, no protocol library)."""

from __future__ import annotations

from iotctl.errors import UsageError

MAX_TOPIC_BYTES = 65535


def _check_common(topic: str, kind: str) -> None:
    if topic == "":
        raise UsageError(f"invalid {kind} ''", "must not be empty")
    if "\0" in topic:
        raise UsageError(f"invalid {kind} {topic!r}", "must not contain a NUL character")
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        raise UsageError(f"invalid {kind} {topic!r}", "is not valid UTF-8") from None
    if size > MAX_TOPIC_BYTES:
        raise UsageError(f"invalid {kind}", f"{size} bytes long; the limit is {MAX_TOPIC_BYTES}")


def validate_topic(topic: str) -> str:
    """A topic name to publish to: no wildcards."""
    _check_common(topic, "topic")
    if "+" in topic or "#" in topic:
        raise UsageError(f"invalid topic {topic!r}", "wildcards + and # are only allowed in subscriptions")
    return topic


def validate_filter(topic_filter: str) -> str:
    """A subscription filter: '+' fills a whole level, '#' only as the whole last level."""
    _check_common(topic_filter, "topic filter")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise UsageError(f"invalid topic filter {topic_filter!r}",
                             "'#' must be a whole level and the last one")
        if "+" in level and level != "+":
            raise UsageError(f"invalid topic filter {topic_filter!r}", "'+' must be a whole level")
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        if len(parts) < 3 or not parts[1] or "+" in parts[1] or "#" in parts[1]:
            raise UsageError(f"invalid shared subscription {topic_filter!r}",
                             "write $share/GROUP/FILTER")
    return topic_filter


def matches(topic_filter: str, topic: str) -> bool:
    """Whether `topic` matches `topic_filter` (MQTT 3.1.1 section 4.7 rules)."""
    if topic_filter.startswith("$share/"):
        topic_filter = topic_filter.split("/", 2)[2]
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    if topic.startswith("$") and f_levels[0] in ("+", "#"):
        return False
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels):
            return False
        if level != "+" and level != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)

"""MQTT topic names and filters: moved to the shared `iotctl.topics` (MQTT-SN uses the
same syntax); re-exported here for the mqtt group's imports."""

from iotctl.topics import MAX_TOPIC_BYTES, matches, validate_filter, validate_topic  # noqa: F401

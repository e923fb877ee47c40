"""MQTT's retained messages for `watch` (the registry's `retained` entry): which
message arrived as a retained one, and clearing one by publishing an empty retained
message through the MQTT endpoints' sink. No paho here (client.py is imported when
the sink is built)."""

from __future__ import annotations

from iotctl.message import Message


def flag(msg: Message) -> bool:
    """The broker delivered this message as its retained one (the RETAIN flag)."""
    return bool(msg.meta.get("retain"))


def clear(arguments: dict, address: str, timeout: float = 10.0) -> None:
    """Publish an empty retained message to `address` (QoS 1, so the broker confirms
    it) on a connection of its own to the source's broker: the same endpoint,
    credentials, TLS and MQTT version, but a fresh client id, a clean session, no
    will and no trace, so a watcher's persistent session is never taken over."""
    import copy

    from iotctl import send
    from iotctl.protocols.mqtt import endpoints

    cfg = copy.copy(arguments["cfg"])
    cfg.client_id, cfg.clean_start, cfg.session_expiry, cfg.will, cfg.debug = None, True, None, None, False
    cfg.connect_timeout = min(cfg.connect_timeout, timeout)
    publisher = endpoints.sink(cfg, topics=(address,), qos=1, retain=True)
    with publisher:
        send.run(publisher, [Message("", address, b"")], f"clear the retained message of {address}", timeout)

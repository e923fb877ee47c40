"""`mqttsn dump`: every MQTT-SN datagram arriving on a UDP port, decoded, as Messages."""

from __future__ import annotations

import select
import socket

from iotctl import receive
from iotctl.errors import ConnectError
from iotctl.message import Message
from iotctl.protocols.mqttsn import codec as c


def packet_message(p: c.Packet, sender: str) -> Message:
    """One decoded packet as a Message: address = packet type, payload = PUBLISH data
    (or will message), meta = every field and the sender."""
    meta = c.describe(p)
    meta["from"] = sender
    payload = p.fields.get("data")
    if payload is None:
        payload = p.fields.get("will_msg") or b""
    return Message("mqttsn", p.name, payload, None, meta)


class Dump(receive.Receiver):
    def __init__(self, bind: str, port: int):
        try:
            family, _, _, _, addr = socket.getaddrinfo(bind, port, 0, socket.SOCK_DGRAM)[0]
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
            self.sock.bind(addr)
        except OSError as exc:
            raise ConnectError(f"cannot listen on udp {bind}:{port}",
                               getattr(exc, "strerror", None) or str(exc)) from None
        self.sock.setblocking(False)

    def poll(self, wait):
        r, _, _ = select.select([self.sock], [], [], 1.0 if wait is None else wait)
        if not r:
            return []
        batch = []
        for _ in range(1000):
            try:
                data, addr = self.sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            sender = f"{addr[0]}:{addr[1]}"
            try:
                batch.append(packet_message(c.decode(data), sender))
            except c.CodecError as exc:
                batch.append(Message("mqttsn", "MALFORMED", bytes(data), None,
                                     {"type": "MALFORMED", "error": str(exc), "from": sender}))
        return batch

    def close(self) -> None:
        self.sock.close()

"""A steady MQTT flood for the `watch` tests: QoS 0 PUBLISHes to many distinct topics at
a fixed rate, written on a plain socket (MQTT 3.1.1), so the publisher itself costs
little CPU on a shared 2-core machine.

    python -m tests.mqtt_flood HOST PORT PREFIX TOPICS RATE SECONDS

Topic i is PREFIX/devNNNN/tK (ten topics a device); the payload is a sequence number.
Sends in bursts every 10 ms; prints the number of messages sent, then exits.
"""

from __future__ import annotations

import socket
import sys
import time


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: bytes) -> bytes:
    return len(text).to_bytes(2, "big") + text


def connect(host: str, port: int, client_id: str) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=10)
    body = _string(b"MQTT") + bytes([4, 0x02]) + (60).to_bytes(2, "big") + _string(client_id.encode())
    sock.sendall(b"\x10" + _length(len(body)) + body)
    ack = sock.recv(4)
    if ack[:1] != b"\x20" or ack[3:4] != b"\x00":
        raise SystemExit(f"mqtt_flood: connection refused: {ack!r}")
    return sock


def flood(host: str, port: int, prefix: str, topics: int, rate: float, seconds: float) -> int:
    sock = connect(host, port, f"flood-{prefix.replace('/', '-')[-20:]}")
    names = [_string(f"{prefix}/dev{i // 10:04d}/t{i % 10}".encode()) for i in range(topics)]
    started = time.monotonic()
    sent = 0
    while True:
        elapsed = time.monotonic() - started
        if elapsed >= seconds:
            break
        due = int(elapsed * rate) - sent
        if due > 0:
            burst = bytearray()
            for _ in range(due):
                body = names[sent % topics] + b"%d" % sent
                burst += b"\x30" + _length(len(body)) + body
                sent += 1
            sock.sendall(burst)
        time.sleep(0.01)
    sock.sendall(b"\xe0\x00")
    sock.close()
    return sent


if __name__ == "__main__":
    host, port, prefix, topics, rate, seconds = sys.argv[1:7]
    print(flood(host, int(port), prefix, int(topics), float(rate), float(seconds)), flush=True)

"""CoAP datagrams (RFC 7252 section 3) for the tests' own hostile and scripted peers:
written here, independently of iotctl's code, so that a test never checks the client or
the server against itself."""

from __future__ import annotations

CON, NON, ACK, RST = 0, 1, 2, 3


def _ext(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes([value - 13])
    return 14, (value - 269).to_bytes(2, "big")


def encode(mtype: int, code: int, mid: int, token: bytes, options=(), payload: bytes = b"") -> bytes:
    """A datagram: options as (number, raw value) pairs, in any order."""
    out = bytearray([0x40 | mtype << 4 | len(token), code]) + mid.to_bytes(2, "big") + token
    prev = 0
    for number, value in sorted(options, key=lambda o: o[0]):
        (dn, de), (ln, le) = _ext(number - prev), _ext(len(value))
        out += bytes([dn << 4 | ln]) + de + le + value
        prev = number
    if payload:
        out += b"\xff" + payload
    return bytes(out)


def decode(data: bytes) -> dict:
    """Type, code, MID, token, options {number: [raw, ...]} and payload of a datagram."""
    tkl = data[0] & 0x0F
    msg = {"type": (data[0] >> 4) & 3, "code": data[1], "mid": int.from_bytes(data[2:4], "big"),
           "token": data[4:4 + tkl], "options": {}, "payload": b""}
    pos, number = 4 + tkl, 0
    while pos < len(data):
        if data[pos] == 0xFF:
            msg["payload"] = data[pos + 1:]
            break
        delta, length = data[pos] >> 4, data[pos] & 0x0F
        pos += 1
        values = []
        for nibble in (delta, length):
            if nibble == 13:
                values.append(data[pos] + 13)
                pos += 1
            elif nibble == 14:
                values.append(int.from_bytes(data[pos:pos + 2], "big") + 269)
                pos += 2
            else:
                values.append(nibble)
        number += values[0]
        msg["options"].setdefault(number, []).append(data[pos:pos + values[1]])
        pos += values[1]
    return msg


def uint_value(raw: bytes) -> int:
    """An option's uint value."""
    return int.from_bytes(raw, "big")


def uint_option(value: int) -> bytes:
    """A uint option value in the fewest bytes (0 is empty)."""
    return value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""


def code(text: str) -> int:
    """'2.05' -> the code byte."""
    cls, detail = text.split(".")
    return int(cls) << 5 | int(detail)

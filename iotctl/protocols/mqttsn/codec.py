"""MQTT-SN v1.2 packets: encode and decode (pure Python, no dependencies).

A packet is a `Packet`: its type (an int, `PUBLISH`...) and its fields as
attributes. Every field of the specification's byte layouts (section 5) has one name:

    gw_id radius duration gw_add protocol_id client_id return_code topic_id msg_id
    topic_name data will_topic will_msg
    flags: dup qos retain will clean_session topic_id_type

`qos` is -1, 0, 1 or 2 (the flags' 0b11 is QoS -1); `topic_id_type` is NORMAL,
PREDEFINED or SHORT (a short topic name travels as its two bytes in `topic_id`; see
`short_id`/`short_name`). Text fields (client id, topic names) are str, payloads
(`data`, `will_msg`, `gw_add`) bytes. Optional trailing fields (GWINFO's address,
PINGREQ's client id, DISCONNECT's duration) are None when absent; an "empty" WILLTOPIC
or WILLTOPICUPD (no flags, no topic: delete the will) has `will_topic` None.

`decode(datagram)` raises `CodecError` (a ValueError) naming what is wrong with a
malformed datagram; `encode(packet)` raises it for a field that does not fit.
"""

from __future__ import annotations

import struct

ADVERTISE, SEARCHGW, GWINFO = 0x00, 0x01, 0x02
CONNECT, CONNACK = 0x04, 0x05
WILLTOPICREQ, WILLTOPIC, WILLMSGREQ, WILLMSG = 0x06, 0x07, 0x08, 0x09
REGISTER, REGACK = 0x0A, 0x0B
PUBLISH, PUBACK, PUBCOMP, PUBREC, PUBREL = 0x0C, 0x0D, 0x0E, 0x0F, 0x10
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 0x12, 0x13, 0x14, 0x15
PINGREQ, PINGRESP, DISCONNECT = 0x16, 0x17, 0x18
WILLTOPICUPD, WILLTOPICRESP, WILLMSGUPD, WILLMSGRESP = 0x1A, 0x1B, 0x1C, 0x1D

NAMES = {
    ADVERTISE: "ADVERTISE", SEARCHGW: "SEARCHGW", GWINFO: "GWINFO", CONNECT: "CONNECT",
    CONNACK: "CONNACK", WILLTOPICREQ: "WILLTOPICREQ", WILLTOPIC: "WILLTOPIC",
    WILLMSGREQ: "WILLMSGREQ", WILLMSG: "WILLMSG", REGISTER: "REGISTER", REGACK: "REGACK",
    PUBLISH: "PUBLISH", PUBACK: "PUBACK", PUBCOMP: "PUBCOMP", PUBREC: "PUBREC", PUBREL: "PUBREL",
    SUBSCRIBE: "SUBSCRIBE", SUBACK: "SUBACK", UNSUBSCRIBE: "UNSUBSCRIBE", UNSUBACK: "UNSUBACK",
    PINGREQ: "PINGREQ", PINGRESP: "PINGRESP", DISCONNECT: "DISCONNECT",
    WILLTOPICUPD: "WILLTOPICUPD", WILLTOPICRESP: "WILLTOPICRESP", WILLMSGUPD: "WILLMSGUPD",
    WILLMSGRESP: "WILLMSGRESP",
}

# TopicIdType (flags bits 1-0)
NORMAL, PREDEFINED, SHORT = 0, 1, 2
TOPIC_ID_TYPES = {NORMAL: "normal", PREDEFINED: "predefined", SHORT: "short"}

# return codes
ACCEPTED, CONGESTION, INVALID_TOPIC_ID, NOT_SUPPORTED = 0, 1, 2, 3
RETURN_CODES = {ACCEPTED: "accepted", CONGESTION: "rejected: congestion",
                INVALID_TOPIC_ID: "rejected: invalid topic ID", NOT_SUPPORTED: "rejected: not supported"}

PROTOCOL_ID = 0x01
MAX_PACKET = 65535

_QOS_BITS = {0: 0x00, 1: 0x20, 2: 0x40, -1: 0x60}
_BITS_QOS = {0x00: 0, 0x20: 1, 0x40: 2, 0x60: -1}

# The field layout after the MsgType byte. Kinds: "flags" (1 byte), "u8", "u16",
# "str"/"bytes" (the rest of the datagram), "topic" (SUBSCRIBE/UNSUBSCRIBE: a name
# or an id, as the flags' TopicIdType says), and "?" before a kind: optional (absent
# when nothing is left).
LAYOUTS: dict[int, tuple[tuple[str, str], ...]] = {
    ADVERTISE: (("u8", "gw_id"), ("u16", "duration")),
    SEARCHGW: (("u8", "radius"),),
    GWINFO: (("u8", "gw_id"), ("?bytes", "gw_add")),
    CONNECT: (("flags", ""), ("u8", "protocol_id"), ("u16", "duration"), ("str", "client_id")),
    CONNACK: (("u8", "return_code"),),
    WILLTOPICREQ: (),
    WILLTOPIC: (("?flags", ""), ("str", "will_topic")),
    WILLMSGREQ: (),
    WILLMSG: (("bytes", "will_msg"),),
    REGISTER: (("u16", "topic_id"), ("u16", "msg_id"), ("str", "topic_name")),
    REGACK: (("u16", "topic_id"), ("u16", "msg_id"), ("u8", "return_code")),
    PUBLISH: (("flags", ""), ("u16", "topic_id"), ("u16", "msg_id"), ("bytes", "data")),
    PUBACK: (("u16", "topic_id"), ("u16", "msg_id"), ("u8", "return_code")),
    PUBCOMP: (("u16", "msg_id"),),
    PUBREC: (("u16", "msg_id"),),
    PUBREL: (("u16", "msg_id"),),
    SUBSCRIBE: (("flags", ""), ("u16", "msg_id"), ("topic", "")),
    SUBACK: (("flags", ""), ("u16", "topic_id"), ("u16", "msg_id"), ("u8", "return_code")),
    UNSUBSCRIBE: (("flags", ""), ("u16", "msg_id"), ("topic", "")),
    UNSUBACK: (("u16", "msg_id"),),
    PINGREQ: (("?str", "client_id"),),
    PINGRESP: (),
    DISCONNECT: (("?u16", "duration"),),
    WILLTOPICUPD: (("?flags", ""), ("str", "will_topic")),
    WILLTOPICRESP: (("u8", "return_code"),),
    WILLMSGUPD: (("bytes", "will_msg"),),
    WILLMSGRESP: (("u8", "return_code"),),
}
FLAG_FIELDS = ("dup", "qos", "retain", "will", "clean_session", "topic_id_type")
_FLAG_DEFAULTS = {"dup": False, "qos": 0, "retain": False, "will": False, "clean_session": False,
                  "topic_id_type": NORMAL}


class CodecError(ValueError):
    """A datagram that is not a valid MQTT-SN v1.2 packet (or a field that cannot be encoded)."""


class Packet:
    """One MQTT-SN packet: `type` and its fields as attributes (see the module doc)."""

    __slots__ = ("type", "fields")

    def __init__(self, type: int, **fields):
        self.type = type
        self.fields = fields

    def __getattr__(self, name):
        try:
            return self.fields[name]
        except KeyError:
            if name in _FLAG_DEFAULTS:
                return _FLAG_DEFAULTS[name]
            raise AttributeError(name) from None

    @property
    def name(self) -> str:
        return NAMES.get(self.type, f"0x{self.type:02x}")

    def __eq__(self, other) -> bool:
        return isinstance(other, Packet) and self.type == other.type and self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"Packet({self.name}{', ' if inner else ''}{inner})"

    def as_dict(self) -> dict:
        """Every field of the packet's layout (flags expanded), defaults filled in."""
        out = {}
        for kind, name in LAYOUTS.get(self.type, ()):
            base = kind.lstrip("?")
            if base == "flags":
                for f in _flag_names(self.type):
                    out[f] = getattr(self, f)
            elif base == "topic":
                if self.topic_id_type == NORMAL:
                    out["topic_name"] = self.fields.get("topic_name")
                else:
                    out["topic_id"] = self.fields.get("topic_id")
            else:
                out[name] = self.fields.get(name)
        return out


def _flag_names(ptype: int) -> tuple[str, ...]:
    """The flags that mean something in this packet type (spec Table 5's use per message)."""
    if ptype == CONNECT:
        return ("will", "clean_session")
    if ptype in (WILLTOPIC, WILLTOPICUPD):
        return ("qos", "retain")
    if ptype == PUBLISH:
        return ("dup", "qos", "retain", "topic_id_type")
    if ptype == SUBSCRIBE:
        return ("dup", "qos", "topic_id_type")
    if ptype == SUBACK:
        return ("qos",)
    if ptype == UNSUBSCRIBE:
        return ("topic_id_type",)
    return FLAG_FIELDS


def short_id(name: str) -> int:
    """A two-character short topic name as the topic id that carries it."""
    raw = name.encode("utf-8")
    if len(raw) != 2:
        raise CodecError(f"a short topic name is exactly 2 bytes, {name!r} is {len(raw)}")
    return (raw[0] << 8) | raw[1]


def short_name(topic_id: int) -> str:
    """The short topic name a SHORT topic id carries."""
    return bytes(((topic_id >> 8) & 0xFF, topic_id & 0xFF)).decode("utf-8", "replace")


# --------------------------------------------------------------------------- flags


def flags_byte(dup=False, qos=0, retain=False, will=False, clean_session=False, topic_id_type=NORMAL) -> int:
    try:
        q = _QOS_BITS[qos]
    except KeyError:
        raise CodecError(f"QoS must be -1, 0, 1 or 2, not {qos!r}") from None
    if topic_id_type not in (0, 1, 2, 3):
        raise CodecError(f"TopicIdType must be 0..3, not {topic_id_type!r}")
    return ((0x80 if dup else 0) | q | (0x10 if retain else 0) | (0x08 if will else 0)
            | (0x04 if clean_session else 0) | topic_id_type)


def parse_flags(b: int) -> dict:
    return {"dup": bool(b & 0x80), "qos": _BITS_QOS[b & 0x60], "retain": bool(b & 0x10),
            "will": bool(b & 0x08), "clean_session": bool(b & 0x04), "topic_id_type": b & 0x03}


# --------------------------------------------------------------------------- encode


def frame(ptype: int, body: bytes) -> bytes:
    """Length header + MsgType + body: the 1-byte length form up to 255 octets, else 0x01
    and a 2-byte length."""
    n = len(body) + 2
    if n <= 255:
        return bytes((n, ptype)) + body
    n += 2
    if n > MAX_PACKET:
        raise CodecError(f"packet too long: {n} octets (the limit is {MAX_PACKET})")
    return bytes((0x01, n >> 8, n & 0xFF, ptype)) + body


def encode(p: Packet) -> bytes:
    """The datagram for packet `p`."""
    t = p.type
    if t == PUBLISH:  # the hot path
        f = p.fields
        try:
            head = _PUB_HEAD.pack(flags_byte(f.get("dup", False), f.get("qos", 0), f.get("retain", False),
                                             False, False, f.get("topic_id_type", NORMAL)),
                                  f.get("topic_id", 0), f.get("msg_id", 0))
        except struct.error as exc:
            raise CodecError(f"PUBLISH: {exc}") from None
        return frame(PUBLISH, head + bytes(f.get("data", b"")))
    layout = LAYOUTS.get(t)
    if layout is None:
        raise CodecError(f"unknown packet type 0x{t:02x}")
    out = bytearray()
    fields = p.fields
    for kind, name in layout:
        optional = kind.startswith("?")
        base = kind.lstrip("?")
        if base == "flags":
            if optional and fields.get("will_topic") is None:
                return frame(t, bytes(out))  # empty WILLTOPIC / WILLTOPICUPD
            out.append(flags_byte(**{k: fields[k] for k in FLAG_FIELDS if k in fields}))
            continue
        if base == "topic":
            if fields.get("topic_id_type", NORMAL) == NORMAL:
                out += _text(fields.get("topic_name"), "topic_name", t)
            else:
                out += _u16(fields.get("topic_id"), "topic_id", t)
            continue
        value = fields.get(name)
        if value is None:
            if optional:
                continue
            if base in ("u8", "u16"):
                value = PROTOCOL_ID if name == "protocol_id" else 0
            else:
                value = b"" if base == "bytes" else ""
        if base == "u8":
            if not isinstance(value, int) or not 0 <= value <= 0xFF:
                raise CodecError(f"{NAMES[t]}: {name} must be 0..255, not {value!r}")
            out.append(value)
        elif base == "u16":
            out += _u16(value, name, t)
        elif base == "str":
            out += _text(value, name, t)
        else:
            out += bytes(value)
    return frame(t, bytes(out))


def _u16(value, name: str, t: int) -> bytes:
    if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise CodecError(f"{NAMES[t]}: {name} must be 0..65535, not {value!r}")
    return value.to_bytes(2, "big")


def _text(value, name: str, t: int) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    return value.encode("utf-8")


_PUB_HEAD = struct.Struct(">BHH")


# --------------------------------------------------------------------------- decode


def decode(data: bytes) -> Packet:
    """The packet in one datagram; CodecError says what is wrong with a bad one."""
    n = len(data)
    if n < 2:
        raise CodecError(f"datagram too short: {n} octet{'s' if n != 1 else ''}")
    length = data[0]
    if length == 0x01:
        if n < 4:
            raise CodecError(f"datagram too short for the 3-octet length form: {n} octets")
        length = (data[1] << 8) | data[2]
        start = 3
        if length < 4:
            raise CodecError(f"length field says {length}, less than its own header")
    else:
        start = 1
        if length < 2:
            raise CodecError(f"length field says {length}, less than its own header")
    if length != n:
        raise CodecError(f"length field says {length} octets, the datagram has {n}")
    t = data[start]
    pos = start + 1
    if t == PUBLISH:  # the hot path
        if n - pos < 5:
            raise CodecError(f"PUBLISH too short: {n - pos} octets after the type, at least 5 needed")
        flags, topic_id, msg_id = _PUB_HEAD.unpack_from(data, pos)
        return Packet(PUBLISH, dup=flags & 0x80 != 0, qos=_BITS_QOS[flags & 0x60], retain=flags & 0x10 != 0,
                      topic_id_type=flags & 0x03, topic_id=topic_id, msg_id=msg_id, data=bytes(data[pos + 5:]))
    layout = LAYOUTS.get(t)
    if layout is None:
        raise CodecError(f"unknown packet type 0x{t:02x}")
    name_t = NAMES[t]
    fields: dict = {}
    for kind, name in layout:
        optional = kind.startswith("?")
        base = kind.lstrip("?")
        left = n - pos
        if optional and left == 0:
            if base == "flags":  # empty WILLTOPIC / WILLTOPICUPD: no flags, no topic
                fields["will_topic"] = None
                return Packet(t, **fields)
            fields[name] = None
            continue
        if base == "flags":
            if left < 1:
                raise CodecError(f"{name_t} too short: no flags")
            fl = parse_flags(data[pos])
            for key in _flag_names(t):
                fields[key] = fl[key]
            pos += 1
        elif base == "u8":
            if left < 1:
                raise CodecError(f"{name_t} too short: no {name}")
            fields[name] = data[pos]
            pos += 1
        elif base == "u16":
            if left < 2:
                raise CodecError(f"{name_t} too short: no {name}")
            fields[name] = (data[pos] << 8) | data[pos + 1]
            pos += 2
        elif base == "topic":
            if fields.get("topic_id_type", NORMAL) == NORMAL:
                fields["topic_name"] = _str(data[pos:], "topic_name", name_t)
            else:
                if left != 2:
                    raise CodecError(f"{name_t}: a topic id is 2 octets, found {left}")
                fields["topic_id"] = (data[pos] << 8) | data[pos + 1]
            pos = n
        elif base == "str":
            fields[name] = _str(data[pos:], name, name_t)
            pos = n
        else:
            fields[name] = bytes(data[pos:])
            pos = n
    if pos != n:
        raise CodecError(f"{name_t}: {n - pos} unexpected octet(s) at the end")
    if t == CONNECT and fields["protocol_id"] != PROTOCOL_ID:
        raise CodecError(f"CONNECT: protocol id 0x{fields['protocol_id']:02x}, not 0x01 (MQTT-SN v1.2)")
    return Packet(t, **fields)


def _str(raw: bytes, name: str, where: str) -> str:
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise CodecError(f"{where}: {name} is not valid UTF-8") from None


def describe(p: Packet) -> dict:
    """The packet's fields for display (JSON-friendly): type name, topic id type and
    return code as words, payload bytes left out (they are the message's payload)."""
    out = {"type": p.name}
    for key, value in p.as_dict().items():
        if key in ("data", "will_msg"):
            continue
        if key == "topic_id_type":
            value = TOPIC_ID_TYPES.get(value, "reserved")
        elif isinstance(value, bytes):
            value = "0x" + value.hex()
        out[key] = value
        if key == "return_code":
            out["return_code_text"] = RETURN_CODES.get(value, "reserved")
    if p.type in (PUBLISH, SUBSCRIBE, UNSUBSCRIBE) and p.topic_id_type == SHORT and "topic_id" in out:
        out["short_topic"] = short_name(out["topic_id"])
    return out

"""The MQTT-SN v1.2 codec against the byte layouts of the specification (section 5),
one case per packet type, plus the length forms, the flags, round trips and bad input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from iotctl.protocols.mqttsn import codec as c
from iotctl.protocols.mqttsn.codec import CodecError, Packet

# (packet, the exact datagram: Length, MsgType, the fields in spec order)
CASES = [
    (Packet(c.ADVERTISE, gw_id=5, duration=900), "05 00 05 0384"),
    (Packet(c.SEARCHGW, radius=1), "03 01 01"),
    (Packet(c.GWINFO, gw_id=7, gw_add=None), "03 02 07"),
    (Packet(c.GWINFO, gw_id=7, gw_add=b"\x7f\x00\x00\x01"), "07 02 07 7f000001"),
    (Packet(c.CONNECT, will=True, clean_session=True, protocol_id=1, duration=30, client_id="dev1"),
     "0a 04 0c 01 001e 64657631"),
    (Packet(c.CONNACK, return_code=0), "03 05 00"),
    (Packet(c.WILLTOPICREQ), "02 06"),
    (Packet(c.WILLTOPIC, qos=1, retain=True, will_topic="w/t"), "06 07 30 772f74"),
    (Packet(c.WILLTOPIC, will_topic=None), "02 07"),  # empty WILLTOPIC: delete the will
    (Packet(c.WILLMSGREQ), "02 08"),
    (Packet(c.WILLMSG, will_msg=b"bye"), "05 09 627965"),
    (Packet(c.REGISTER, topic_id=0, msg_id=1, topic_name="a/b"), "09 0a 0000 0001 612f62"),
    (Packet(c.REGACK, topic_id=0x0102, msg_id=0x0304, return_code=0), "07 0b 0102 0304 00"),
    (Packet(c.PUBLISH, dup=False, qos=1, retain=False, topic_id_type=c.NORMAL, topic_id=1, msg_id=2, data=b"hi"),
     "09 0c 20 0001 0002 6869"),
    (Packet(c.PUBLISH, dup=True, qos=2, retain=True, topic_id_type=c.SHORT, topic_id=c.short_id("ab"), msg_id=9,
            data=b""), "07 0c d2 6162 0009"),
    (Packet(c.PUBLISH, qos=-1, topic_id_type=c.PREDEFINED, topic_id=7, msg_id=0, data=b"x"),
     "08 0c 61 0007 0000 78"),
    (Packet(c.PUBACK, topic_id=1, msg_id=2, return_code=c.INVALID_TOPIC_ID), "07 0d 0001 0002 02"),
    (Packet(c.PUBCOMP, msg_id=0xABCD), "04 0e abcd"),
    (Packet(c.PUBREC, msg_id=1), "04 0f 0001"),
    (Packet(c.PUBREL, msg_id=1), "04 10 0001"),
    (Packet(c.SUBSCRIBE, dup=False, qos=1, topic_id_type=c.NORMAL, msg_id=3, topic_name="s/#"),
     "08 12 20 0003 732f23"),
    (Packet(c.SUBSCRIBE, dup=True, qos=2, topic_id_type=c.PREDEFINED, msg_id=3, topic_id=7), "07 12 c1 0003 0007"),
    (Packet(c.SUBACK, qos=1, topic_id=5, msg_id=3, return_code=0), "08 13 20 0005 0003 00"),
    (Packet(c.UNSUBSCRIBE, topic_id_type=c.NORMAL, msg_id=4, topic_name="s/#"), "08 14 00 0004 732f23"),
    (Packet(c.UNSUBSCRIBE, topic_id_type=c.SHORT, msg_id=4, topic_id=c.short_id("ab")), "07 14 02 0004 6162"),
    (Packet(c.UNSUBACK, msg_id=4), "04 15 0004"),
    (Packet(c.PINGREQ, client_id=None), "02 16"),
    (Packet(c.PINGREQ, client_id="dev1"), "06 16 64657631"),
    (Packet(c.PINGRESP), "02 17"),
    (Packet(c.DISCONNECT, duration=None), "02 18"),
    (Packet(c.DISCONNECT, duration=60), "04 18 003c"),
    (Packet(c.WILLTOPICUPD, qos=2, retain=False, will_topic="w"), "04 1a 40 77"),
    (Packet(c.WILLTOPICUPD, will_topic=None), "02 1a"),
    (Packet(c.WILLTOPICRESP, return_code=0), "03 1b 00"),
    (Packet(c.WILLMSGUPD, will_msg=b"new"), "05 1c 6e6577"),
    (Packet(c.WILLMSGRESP, return_code=3), "03 1d 03"),
]


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@pytest.mark.parametrize("packet,wire", CASES, ids=[f"{p.name}-{i}" for i, (p, _) in enumerate(CASES)])
def test_every_packet_type_matches_the_spec_layout(packet, wire):
    raw = _hex(wire)
    assert c.encode(packet) == raw
    assert c.decode(raw) == packet


def test_every_packet_type_is_covered():
    assert {p.type for p, _ in CASES} == set(c.NAMES)


def test_three_octet_length_form_from_256_octets():
    data = b"x" * 300
    raw = c.encode(Packet(c.PUBLISH, qos=0, topic_id=1, msg_id=0, data=data))
    assert raw[:4] == bytes([0x01, 0x01, 0x35, 0x0C])  # 0x01, length 309 (0x0135), PUBLISH
    assert len(raw) == 309
    assert c.decode(raw).data == data
    # 255 octets still fit the 1-octet form, 256 do not
    short = c.encode(Packet(c.PUBLISH, topic_id=1, msg_id=0, data=b"y" * 248))
    assert short[0] == 255 and len(short) == 255
    long = c.encode(Packet(c.PUBLISH, topic_id=1, msg_id=0, data=b"y" * 249))
    assert long[:3] == bytes([0x01, 0x01, 0x02]) and len(long) == 258


def test_three_octet_form_decodes_for_any_type():
    assert c.decode(bytes([0x01, 0x00, 0x05, 0x05, 0x00])) == Packet(c.CONNACK, return_code=0)


@pytest.mark.parametrize("byte,flags", [
    (0x80, {"dup": True}), (0x00, {"qos": 0}), (0x20, {"qos": 1}), (0x40, {"qos": 2}), (0x60, {"qos": -1}),
    (0x10, {"retain": True}), (0x08, {"will": True}), (0x04, {"clean_session": True}),
    (0x00, {"topic_id_type": c.NORMAL}), (0x01, {"topic_id_type": c.PREDEFINED}),
    (0x02, {"topic_id_type": c.SHORT}),
])
def test_flag_bits(byte, flags):
    assert c.flags_byte(**flags) == byte
    parsed = c.parse_flags(byte)
    for key, value in flags.items():
        assert parsed[key] == value


def test_short_topic_names():
    assert c.short_id("ab") == 0x6162
    assert c.short_name(0x6162) == "ab"
    with pytest.raises(CodecError, match="exactly 2 bytes"):
        c.short_id("abc")


@pytest.mark.parametrize("wire,why", [
    ("", "too short: 0 octets"),
    ("05", "too short: 1 octet"),
    ("01 00", "too short for the 3-octet length form"),
    ("09 0c 20 0001", "length field says 9 octets, the datagram has 5"),  # a length that lies
    ("04 0c 20 00", "PUBLISH too short"),
    ("01 0000 0c", "less than its own header"),
    ("01 ffff 0c 00", "length field says 65535 octets, the datagram has 5"),
    ("00 05", "less than its own header"),
    ("02 03", "unknown packet type 0x03"),
    ("02 fe", "unknown packet type 0xfe"),
    ("02 05", "CONNACK too short: no return_code"),
    ("04 05 00 00", "1 unexpected octet(s) at the end"),
    ("05 04 04 02 00", "CONNECT too short: no duration"),
    ("07 04 04 02 0000 61", "protocol id 0x02"),
    ("05 0a 0000 00", "REGISTER too short: no msg_id"),
    ("06 12 01 0001 07", "a topic id is 2 octets, found 1"),
    ("05 0c 00 0001", "PUBLISH too short"),
    ("04 0a 0001", "REGISTER too short: no msg_id"),
    ("07 0a 0000 0001 ff", "topic_name is not valid UTF-8"),
])
def test_malformed_input_raises_a_clear_codec_error(wire, why):
    with pytest.raises(CodecError) as info:
        c.decode(_hex(wire))
    assert why in str(info.value)
    assert isinstance(info.value, ValueError)


def test_encode_rejects_fields_that_do_not_fit():
    with pytest.raises(CodecError, match="QoS must be"):
        c.encode(Packet(c.PUBLISH, qos=3, topic_id=1, msg_id=0, data=b""))
    with pytest.raises(CodecError, match="0..65535"):
        c.encode(Packet(c.PUBACK, topic_id=70000, msg_id=1, return_code=0))
    with pytest.raises(CodecError, match="too long"):
        c.encode(Packet(c.PUBLISH, topic_id=1, msg_id=0, data=b"z" * 65530))
    with pytest.raises(CodecError, match="unknown packet type"):
        c.encode(Packet(0x30))


def test_describe_gives_words_for_display():
    d = c.describe(Packet(c.PUBLISH, qos=1, topic_id_type=c.SHORT, topic_id=c.short_id("ab"), msg_id=1, data=b"x"))
    assert d["type"] == "PUBLISH" and d["topic_id_type"] == "short" and d["short_topic"] == "ab"
    assert "data" not in d
    d = c.describe(Packet(c.PUBACK, topic_id=1, msg_id=1, return_code=2))
    assert d["return_code_text"] == "rejected: invalid topic ID"


# --------------------------------------------------------------------------- round trips

u8 = st.integers(0, 255)
u16 = st.integers(0, 0xFFFF)
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
blob = st.binary(max_size=400)
qos = st.sampled_from([-1, 0, 1, 2])
tt = st.sampled_from([c.NORMAL, c.PREDEFINED, c.SHORT])


def _topic_packet(ptype):
    def build(dup, q, t, msg_id, name, tid):
        fields = {"msg_id": msg_id, "topic_id_type": t}
        if ptype == c.SUBSCRIBE:
            fields.update(dup=dup, qos=q)
        if t == c.NORMAL:
            fields["topic_name"] = name
        else:
            fields["topic_id"] = tid
        return Packet(ptype, **fields)

    return st.builds(build, st.booleans(), qos, tt, u16, text, u16)


PACKETS = st.one_of(
    st.builds(lambda g, d: Packet(c.ADVERTISE, gw_id=g, duration=d), u8, u16),
    st.builds(lambda r: Packet(c.SEARCHGW, radius=r), u8),
    st.builds(lambda g, a: Packet(c.GWINFO, gw_id=g, gw_add=a or None), u8, blob),
    st.builds(lambda w, cs, d, cid: Packet(c.CONNECT, will=w, clean_session=cs, protocol_id=1, duration=d,
                                           client_id=cid), st.booleans(), st.booleans(), u16, text),
    st.builds(lambda r: Packet(c.CONNACK, return_code=r), u8),
    st.just(Packet(c.WILLTOPICREQ)), st.just(Packet(c.WILLMSGREQ)), st.just(Packet(c.PINGRESP)),
    st.builds(lambda q, r, t: Packet(c.WILLTOPIC, qos=q, retain=r, will_topic=t), qos, st.booleans(), text),
    st.builds(lambda m: Packet(c.WILLMSG, will_msg=m), blob),
    st.builds(lambda t, m, n: Packet(c.REGISTER, topic_id=t, msg_id=m, topic_name=n), u16, u16, text),
    st.builds(lambda t, m, r: Packet(c.REGACK, topic_id=t, msg_id=m, return_code=r), u16, u16, u8),
    st.builds(lambda d, q, r, t, tid, m, data: Packet(c.PUBLISH, dup=d, qos=q, retain=r, topic_id_type=t,
                                                      topic_id=tid, msg_id=m, data=data),
              st.booleans(), qos, st.booleans(), tt, u16, u16, st.binary(max_size=1000)),
    st.builds(lambda t, m, r: Packet(c.PUBACK, topic_id=t, msg_id=m, return_code=r), u16, u16, u8),
    *[st.builds(lambda m, t=t: Packet(t, msg_id=m), u16) for t in (c.PUBCOMP, c.PUBREC, c.PUBREL, c.UNSUBACK)],
    _topic_packet(c.SUBSCRIBE), _topic_packet(c.UNSUBSCRIBE),
    st.builds(lambda q, t, m, r: Packet(c.SUBACK, qos=q, topic_id=t, msg_id=m, return_code=r), qos, u16, u16, u8),
    st.builds(lambda cid: Packet(c.PINGREQ, client_id=cid or None), text),
    st.builds(lambda d: Packet(c.DISCONNECT, duration=d), st.none() | u16),
    st.builds(lambda q, r, t: Packet(c.WILLTOPICUPD, qos=q, retain=r, will_topic=t), qos, st.booleans(), text),
    st.builds(lambda r: Packet(c.WILLTOPICRESP, return_code=r), u8),
    st.builds(lambda m: Packet(c.WILLMSGUPD, will_msg=m), blob),
    st.builds(lambda r: Packet(c.WILLMSGRESP, return_code=r), u8),
)


@settings(max_examples=400, deadline=None)
@given(PACKETS)
def test_round_trip(packet):
    raw = c.encode(packet)
    assert c.decode(raw) == packet
    assert c.encode(c.decode(raw)) == raw
    # the length field always tells the truth, in the form its size calls for
    if len(raw) <= 255:
        assert raw[0] == len(raw)
    else:
        assert raw[0] == 1 and int.from_bytes(raw[1:3], "big") == len(raw)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_codec_error(data):
    try:
        p = c.decode(data)
    except CodecError:
        return
    assert c.decode(c.encode(p)) == p  # (flag bits a type does not use are not kept)

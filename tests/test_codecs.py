"""--encode: text given by the user turned into the bytes sent."""

import json

import cbor2
import pytest
from hypothesis import given, strategies as st

from iotctl import codecs
from iotctl.errors import UsageError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


@given(json_values)
def test_cbor_from_json_text_round_trips(value):
    data = codecs.encode(json.dumps(value).encode(), "cbor")
    assert cbor2.loads(data) == value


@given(json_values)
def test_json_is_validated_and_compacted(value):
    text = json.dumps(value, indent=2).encode()
    assert json.loads(codecs.encode(text, "json")) == value


@given(st.binary(max_size=64))
def test_hex_and_base64(data):
    import base64

    assert codecs.encode(data.hex().encode(), "hex") == data
    assert codecs.encode(base64.b64encode(data), "base64") == data


def test_hex_allows_separators_and_prefix():
    assert codecs.encode(b"0xDE:AD be ef", "hex") == b"\xde\xad\xbe\xef"


@pytest.mark.parametrize("how,text", [("json", b"{bad"), ("cbor", b"[1,"), ("hex", b"zz"), ("base64", b"!!!"),
                                      ("json", b"\xff")])
def test_bad_input_is_usage_error(how, text):
    with pytest.raises(UsageError):
        codecs.encode(text, how)


def test_no_encoding_passes_bytes_through():
    assert codecs.encode(b"\x00\x01", None) == b"\x00\x01"

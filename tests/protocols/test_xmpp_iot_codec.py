"""XMPP-IoT's elements and values without a server (iotctl/protocols/xmpp/iot.py): the
examples of XEP-0323 and XEP-0325 read as the XEPs mean them, the value types of both,
NAME[:TYPE]=VALUE, --from/--to times, and round trips."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from xml.etree import ElementTree as ET

import pytest
from hypothesis import given, strategies as st

from iotctl.protocols.xmpp import iot

# XEP-0323 v0.5, "Read-out all" (the second <fields/> message), and its momentary response
SPEC_FIELDS = """<fields xmlns='urn:xmpp:iot:sensordata' seqnr='4'>
  <node nodeId='Device01'>
    <timestamp value='2013-03-07T19:00:00'>
      <numeric name='Temperature, Max' peak='true' automaticReadout='true' value='25.9' unit='°C'/>
      <numeric name='Temperature, Min' peak='true' automaticReadout='true' value='18.7' unit='°C'/>
    </timestamp>
  </node>
  <node nodeId='Device02' sourceId='MeteringTopology'>
    <timestamp value='2013-03-07T00:00:00'>
      <numeric name='Temperature' historicalHour='true' historicalDay='true' automaticReadout='true' value='25.20'
               unit='°C'/>
      <boolean name='Alarm' status='true' value='1' writable='true'/>
      <enum name='Mode' momentary='true' value='Auto' dataType='ModeType' manualEstimate='true' warning='true'/>
      <timeSpan name='Runtime' status='true' value='PT12H'/>
      <foo name='ignored' value='x'/>
    </timestamp>
  </node>
</fields>"""


def test_a_readout_of_the_xeps_example():
    msgs = iot.readouts(ET.fromstring(SPEC_FIELDS), "device@example.org/amr", ts=1.0)
    assert [(m.meta["field"], m.payload) for m in msgs] == [
        ("Temperature, Max", b"25.9"), ("Temperature, Min", b"18.7"), ("Temperature", b"25.20"), ("Alarm", b"1"),
        ("Mode", b"Auto"), ("Runtime", b"PT12H")]
    assert all(m.address == "device@example.org/amr" and m.protocol == "xmpp" and m.ts == 1.0 for m in msgs)
    assert msgs[0].meta == {"field": "Temperature, Max", "type": "numeric", "unit": "°C",
                            "timestamp": "2013-03-07T19:00:00", "node": "Device01",
                            "flags": ["peak", "automaticReadout"]}
    assert msgs[2].meta["flags"] == ["historicalHour", "historicalDay", "automaticReadout"]
    assert msgs[2].meta["node"] == "Device02" and msgs[2].meta["sourceId"] == "MeteringTopology"
    assert msgs[3].meta["writable"] is True and msgs[3].meta["type"] == "boolean"
    assert msgs[4].meta["dataType"] == "ModeType" and msgs[4].meta["flags"] == ["momentary", "manualEstimate",
                                                                                "warning"]
    assert msgs[5].meta["type"] == "duration"  # timeSpan, the older name
    assert all(m.content_type is None for m in msgs)


def test_a_readout_as_json_keeps_the_devices_decimals():
    msgs = iot.readouts(ET.fromstring(SPEC_FIELDS), "d@x/y", as_json=True)
    texts = [m.payload.decode() for m in msgs]
    assert '"value": 25.20,' in texts[2]  # not 25.2: the precision is the device's
    docs = [json.loads(t) for t in texts]
    assert docs[2] == {"field": "Temperature", "value": 25.2, "type": "numeric", "unit": "°C",
                       "timestamp": "2013-03-07T00:00:00", "node": "Device02",
                       "flags": ["historicalHour", "historicalDay", "automaticReadout"]}
    assert docs[3]["value"] is True and docs[4]["value"] == "Auto" and docs[5]["value"] == "PT12H"
    assert all(m.content_type == "application/json" for m in msgs)


@given(st.text(min_size=1).filter(lambda s: "\x00" not in s), st.sampled_from(iot.VALUE_TYPES), st.text())
def test_json_payload_is_json_whatever_the_device_writes(name, kind, value):
    el = ET.Element(iot.SD + "fields")
    stamp = ET.SubElement(ET.SubElement(el, iot.SD + "node", nodeId="n"), iot.SD + "timestamp", value="t")
    ET.SubElement(stamp, iot.SD + kind, name=name, value=value)
    (msg,) = iot.readouts(el, "d@x", as_json=True)
    doc = json.loads(msg.payload)
    assert doc["field"] == name
    if isinstance(doc["value"], str):
        assert doc["value"] == value


def test_a_readout_request():
    req = iot.readout_request(7, ["momentary", "historical"], ["Energy", "Power"], ["Device04"],
                              "2026-01-02T03:04:05Z", None)
    assert req.tag == iot.SD + "req"
    assert req.attrib == {"seqnr": "7", "momentary": "true", "historical": "true", "from": "2026-01-02T03:04:05Z"}
    assert [(c.tag, c.attrib) for c in req] == [(iot.SD + "node", {"nodeId": "Device04"}),
                                                (iot.SD + "field", {"name": "Energy"}),
                                                (iot.SD + "field", {"name": "Power"})]
    assert iot.requested_kinds(req) == {"momentary", *iot.HISTORICAL}
    assert iot.requested_kinds(iot.readout_request(1, [])) == {"momentary"}
    assert iot.requested_kinds(iot.readout_request(1, ["all"])) == set(iot.KINDS)


def test_control_set_and_errors():
    el = iot.set_request([("FadeTimeMilliseconds", "int", "500"), ("OutputPercent", "int", "10")])
    assert ET.tostring(el).decode() == (
        '<ns0:set xmlns:ns0="urn:xmpp:iot:control"><ns0:int name="FadeTimeMilliseconds" value="500" />'
        '<ns0:int name="OutputPercent" value="10" /></ns0:set>')
    assert iot.set_params(el) == [("FadeTimeMilliseconds", "int", "500"), ("OutputPercent", "int", "10")]
    # XEP-0325's failure example (with its closing tag put right)
    error = ET.fromstring("<error xmlns='jabber:client' type='modify'>"
                          "<bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                          "<paramError xmlns='urn:xmpp:iot:control' var='Output'>Invalid parameter type.</paramError>"
                          "</error>")
    assert iot.param_errors(error) == [("Output", "Invalid parameter type.")]
    submitted = ET.fromstring("<set xmlns='urn:xmpp:iot:control'><x type='submit' xmlns='jabber:x:data'>"
                              "<field var='xdd session' type='hidden'><value>325E</value></field>"
                              "<field var='OutputPercent' type='text-single'><value>10</value></field></x></set>")
    assert iot.set_params(submitted) == [("OutputPercent", None, "10")]


def test_control_form_round_trip():
    params = [{"name": "OutputPercent", "type": "int", "value": "100", "label": "Output (%):", "min": 0, "max": 100},
              {"name": "MainSwitch", "type": "boolean", "value": "true", "label": "Main switch"},
              {"name": "Color", "type": "color", "value": "3399FF", "label": ""}]
    form = ET.fromstring(ET.tostring(iot.control_form("Dimmer", params)))
    assert iot.form_params(form) == [
        {"name": "OutputPercent", "type": "int", "value": "100", "label": "Output (%):"},
        {"name": "MainSwitch", "type": "boolean", "value": "true", "label": "Main switch"},
        {"name": "Color", "type": "color", "value": "3399FF", "label": "Color"}]
    rng = form.find(f".//{iot.XDV}range")
    assert rng.attrib == {"min": "0", "max": "100"}


@pytest.mark.parametrize("text, expected", [
    ("led=true", ("led", None, "true")),
    ("Output:boolean=ON", ("Output", "boolean", "true")),
    ("x:bool=0", ("x", "boolean", "false")),
    ("n:int=-2147483648", ("n", "int", "-2147483648")),
    ("n:long=500000000000000", ("n", "long", "500000000000000")),
    ("4-20mA:double=8.192", ("4-20mA", "double", "8.192")),
    ("f:float=1e3", ("f", "double", "1e3")),
    ("Row1:string=Temperature: 21.4 °C", ("Row1", "string", "Temperature: 21.4 °C")),
    ("s:str=a=b", ("s", "string", "a=b")),
    ("Color:color=#3399ff", ("Color", "color", "3399ff")),
    ("c:color=3399FF80", ("c", "color", "3399FF80")),
    ("TariffStartDate:date=2013-05-01", ("TariffStartDate", "date", "2013-05-01")),
    ("Alarm Time:time=08:00:00", ("Alarm Time", "time", "08:00:00")),
    ("at:dateTime=2013-04-02T08:00:00", ("at", "dateTime", "2013-04-02T08:00:00")),
    ("at:datetime=2013-04-02T08:00:00.5+02:00", ("at", "dateTime", "2013-04-02T08:00:00.5+02:00")),
    ("Alarm Duration:duration=PT3M30S", ("Alarm Duration", "duration", "PT3M30S")),
])
def test_parameters_from_the_command_line(text, expected):
    assert iot.parse_param(text) == expected


@pytest.mark.parametrize("text, why", [
    ("led", "is not NAME=VALUE"), ("=1", "empty name"), (":int=1", "empty name"),
    ("n:int=2147483648", "out of the 32-bit range"), ("n:long=9223372036854775808", "out of the 64-bit range"),
    ("n:int=1.5", "not an integer"), ("b:boolean=maybe", "not true or false"), ("d:double=1,5", "not a number"),
    ("d:double=nan", "not a number"), ("c:color=red", "not a colour"), ("c:color=12345", "not a colour"),
    ("d:date=2026-02-29", "not a date"), ("t:time=24:30:00", "not a time"), ("t:time=7:00", "not a time"),
    ("a:dateTime=2026-01-02 03:04:05", "not a date and time"), ("p:duration=P", "not a duration"),
    ("p:duration=PT", "not a duration"), ("p:duration=30s", "not a duration"), ("x:foo=1", "unknown type 'foo'"),
])
def test_bad_parameters_say_why(text, why):
    with pytest.raises(ValueError, match=why):
        iot.parse_param(text)


@given(st.integers())
def test_integers_in_their_range(n):
    for kind, (low, high) in (("int", iot.INT32), ("long", iot.INT64)):
        if low <= n <= high:
            assert iot.check_value(kind, str(n)) == str(n)
        else:
            with pytest.raises(ValueError):
                iot.check_value(kind, str(n))


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_doubles_as_python_writes_them(x):
    assert float(iot.check_value("double", repr(x))) == x


@given(st.integers(min_value=0, max_value=10 * 365 * 86400))
def test_durations_round_trip(seconds):
    text = iot.format_duration(seconds)
    assert iot.check_value("duration", text) == text
    assert iot.duration_seconds(text) == seconds


def test_the_type_of_an_untyped_value():
    assert [iot.infer_type(v) for v in ("true", "False", "12", "-3", "99999999999", "1.5", "1e3", "INF", "abc",
                                        "", "2026-01-02")] == \
        ["boolean", "boolean", "int", "int", "long", "double", "double", "string", "string", "string", "string"]


def test_times_for_from_and_to():
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc).timestamp()
    assert iot.parse_time("now", now) == "2026-01-02T03:04:05Z"
    assert iot.parse_time("-90s", now) == "2026-01-02T03:02:35Z"
    assert iot.parse_time("-1h30m", now) == "2026-01-02T01:34:05Z"
    assert iot.parse_time("-1d", now) == "2026-01-01T03:04:05Z"
    assert iot.parse_time("-1w", now) == "2025-12-26T03:04:05Z"
    assert iot.parse_time("+30s", now) == "2026-01-02T03:04:35Z"
    assert iot.parse_time("2026-01-02T03:04:05+02:00") == "2026-01-02T01:04:05Z"
    assert iot.parse_time("2026-01-02T03:04:05Z") == "2026-01-02T03:04:05Z"
    local = datetime(2026, 1, 2, 3, 4, 5).astimezone()  # no zone: the user's local time
    assert iot.parse_time("2026-01-02T03:04:05") == local.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    for bad in ("yesterday", "-1y", "1h", "2026-13-01"):
        with pytest.raises(ValueError, match="ISO 8601"):
            iot.parse_time(bad)

"""XMPP-IoT without slixmpp: the elements of XEP-0323 (sensor data) and XEP-0325
(control) as ElementTree, the value types the two share, and the checks that run
before anything connects (client.py and server.py send and read these elements).

Both XEPs were retracted by their author in 2017 (the last versions: 0323 v0.5,
0325 v0.5.1); the devices that speak them follow those versions, and so does this
module: rejections are IQ errors after RFC 6120 with a `paramError` per control
parameter, values are typed by element (`int`, `long`, `date`, `time`, `duration`,
...), a readout ends with `done='true'` or a `<done/>` message. What slixmpp's
plugins send (an older draft) is read too: `timeSpan` values, `<rejected>` and
`<setResponse responseCode=...>` errors.
"""

from __future__ import annotations

import json
import re
import time
from datetime import date, datetime, timezone
from xml.etree import ElementTree as ET

from iotctl.message import Message

NS_SENSOR = "urn:xmpp:iot:sensordata"
NS_CONTROL = "urn:xmpp:iot:control"
NS_DATA = "jabber:x:data"
NS_VALIDATE = "http://jabber.org/protocol/xdata-validate"
NS_DYNAMIC = "urn:xmpp:xdata:dynamic"
SD = "{%s}" % NS_SENSOR
CTL = "{%s}" % NS_CONTROL
XD = "{%s}" % NS_DATA
XDV = "{%s}" % NS_VALIDATE

# field types, in the XEP's order: a request asks for their union, a field has all it names
KINDS = ("momentary", "peak", "status", "computed", "identity", "historicalSecond", "historicalMinute",
         "historicalHour", "historicalDay", "historicalWeek", "historicalMonth", "historicalQuarter",
         "historicalYear", "historicalOther")
HISTORICAL = tuple(k for k in KINDS if k.startswith("historical"))
# quality of service flags of a field value, least reliable first
QOS = ("missing", "inProgress", "automaticEstimate", "manualEstimate", "manualReadout", "automaticReadout",
       "timeOffset", "warning", "error", "signed", "invoiced", "endOfSeries", "powerFailure", "invoiceConfirmed")
# the elements of a readout's values (timeSpan: the name of duration before XEP-0323 v0.3)
VALUE_TYPES = ("boolean", "date", "dateTime", "duration", "enum", "int", "long", "numeric", "string", "time",
               "timeSpan")
# the elements of control parameters
PARAM_TYPES = ("boolean", "int", "long", "double", "string", "color", "date", "time", "dateTime", "duration")
# the type names of `kv_option`'s typed syntax, and spellings people type
ALIASES = {"bool": "boolean", "float": "double", "str": "string", "datetime": "dateTime"}
# XEP-0122 datatypes of a control form's fields (XEP-0331 for colours)
DATATYPES = {"xs:boolean": "boolean", "xs:int": "int", "xs:long": "long", "xs:double": "double",
             "xs:string": "string", "xs:date": "date", "xs:time": "time", "xs:dateTime": "dateTime",
             "xs:duration": "duration", "xdc:Color": "color", "xdc:ColorAlpha": "color"}
DATATYPE_OF = {"boolean": "xs:boolean", "int": "xs:int", "long": "xs:long", "double": "xs:double",
               "string": "xs:string", "date": "xs:date", "time": "xs:time", "dateTime": "xs:dateTime",
               "duration": "xs:duration", "color": "xdc:Color"}

INT32 = (-(1 << 31), (1 << 31) - 1)
INT64 = (-(1 << 63), (1 << 63) - 1)

_INT = re.compile(r"[+-]?\d+\Z")
_DOUBLE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\Z|[+-]?INF\Z|NaN\Z")
_JSON_NUMBER = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?\Z")
_COLOR = re.compile(r"[0-9a-fA-F]{6}([0-9a-fA-F]{2})?\Z")
_TZ = r"(Z|[+-]\d{2}:\d{2})?"
_DATE = re.compile(r"(-?\d{4,})-(\d{2})-(\d{2})" + _TZ + r"\Z")
_TIME = re.compile(r"(\d{2}):(\d{2}):(\d{2})(\.\d+)?" + _TZ + r"\Z")
_DATETIME = re.compile(r"(-?\d{4,})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?" + _TZ + r"\Z")
_DURATION = re.compile(r"-?P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?\Z")
_RELATIVE = re.compile(r"([+-])((?:\d+(?:\.\d+)?[smhdw])+)\Z")
_TRUE, _FALSE = ("true", "1"), ("false", "0")


def _true(value: str | None) -> bool:
    return value in _TRUE


# --------------------------------------------------------------------------- values


def check_value(kind: str, text: str) -> str:
    """`text` as a value of XEP-0325 type `kind`, in the lexical form the XEPs use
    (xs:boolean, xs:int, ... and RRGGBB[AA] for a colour); ValueError says why not."""
    if kind == "boolean":
        word = text.strip().lower()
        if word in ("true", "1", "yes", "on"):
            return "true"
        if word in ("false", "0", "no", "off"):
            return "false"
        raise ValueError("not true or false")
    if kind in ("int", "long"):
        text = text.strip()
        if not _INT.match(text):
            raise ValueError("not an integer")
        low, high = INT32 if kind == "int" else INT64
        n = int(text)
        if not low <= n <= high:
            raise ValueError(f"out of the {'32' if kind == 'int' else '64'}-bit range")
        return str(n)
    if kind == "double":
        text = text.strip()
        if not _DOUBLE.match(text):
            raise ValueError("not a number")
        return text
    if kind == "string":
        return text
    if kind == "color":
        text = text.strip().lstrip("#")
        if not _COLOR.match(text):
            raise ValueError("not a colour RRGGBB or RRGGBBAA (hexadecimal)")
        return text
    if kind == "date":
        m = _DATE.match(text.strip())
        if not m or not _valid_date(*m.group(1, 2, 3)):
            raise ValueError("not a date YYYY-MM-DD")
        return text.strip()
    if kind == "time":
        m = _TIME.match(text.strip())
        if not m or not _valid_time(*m.group(1, 2, 3)):
            raise ValueError("not a time hh:mm:ss")
        return text.strip()
    if kind == "dateTime":
        m = _DATETIME.match(text.strip())
        if not m or not _valid_date(*m.group(1, 2, 3)) or not _valid_time(*m.group(4, 5, 6)):
            raise ValueError("not a date and time YYYY-MM-DDThh:mm:ss[Z|+hh:mm]")
        return text.strip()
    if kind == "duration":
        text = text.strip()
        m = _DURATION.match(text)
        if not m or not any(m.groups()) or text.endswith("T"):
            raise ValueError("not a duration (ISO 8601: PT30S, PT1H30M, P1D)")
        return text
    raise ValueError(f"unknown type {kind!r}")


def _valid_date(y: str, mo: str, d: str) -> bool:
    try:
        date(int(y) if 1 <= int(y) <= 9999 else 2000, int(mo), int(d))
    except ValueError:
        return False
    return True


def _valid_time(h: str, mi: str, s: str) -> bool:
    return int(h) < 24 and int(mi) < 60 and int(s) < 60 or (h, mi, s) == ("24", "00", "00")


def duration_seconds(text: str) -> float:
    """An xs:duration in seconds (a year 365 days, a month 30)."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError("not a duration")
    y, mo, d, h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    seconds = ((((y * 365 + mo * 30 + d) * 24 + h) * 60) + mi) * 60 + s
    return -seconds if text.startswith("-") else seconds


def format_duration(seconds: float) -> str:
    """Seconds as an xs:duration: PT1H2M3S (P1DT2H past a day)."""
    whole = int(round(seconds))
    days, rest = divmod(abs(whole), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    out = ("-" if whole < 0 else "") + "P" + (f"{days}D" if days else "")
    clock = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "") + (f"{secs}S" if secs else "")
    if clock or not days:
        out += "T" + (clock or "0S")
    return out


def infer_type(text: str) -> str:
    """The type an untyped NAME=VALUE most likely means (when the device's control form
    does not say): true/false, an integer (long past 32 bits), a number, else a string."""
    word = text.strip()
    if word.lower() in ("true", "false"):
        return "boolean"
    if _INT.match(word):
        return "int" if INT32[0] <= int(word) <= INT32[1] else "long"
    if _DOUBLE.match(word) and not word.isalpha():
        return "double"
    return "string"


def parse_param(text: str) -> tuple[str, str | None, str]:
    """`NAME=VALUE` or `NAME:TYPE=VALUE` -> (NAME, TYPE or None, VALUE checked for
    TYPE). ValueError says why not."""
    if "=" not in text:
        raise ValueError(f"{text!r} is not NAME=VALUE (or NAME:TYPE=VALUE)")
    key, value = text.split("=", 1)
    kind = None
    if ":" in key:
        key, given = key.rsplit(":", 1)
        kind = ALIASES.get(given, given)
        if kind not in PARAM_TYPES:
            raise ValueError(f"{text!r}: unknown type {given!r} ({', '.join(PARAM_TYPES)})")
    if not key:
        raise ValueError(f"{text!r} has an empty name")
    if kind is not None:
        try:
            value = check_value(kind, value)
        except ValueError as exc:
            raise ValueError(f"{text!r}: {exc}") from None
    return key, kind, value


# --------------------------------------------------------------------------- times


def parse_time(text: str, now: float | None = None) -> str:
    """A --from/--to/--when time as an xs:dateTime in UTC: ISO 8601 (a date, or a date
    and time; without a zone, local time), `now`, a time ago (`-90s`, `-15m`, `-2h`,
    `-1d`, `-1h30m`) or to come (`+30s`). ValueError says why not."""
    word = text.strip()
    now = time.time() if now is None else now
    if word.lower() == "now":
        return _utc(datetime.fromtimestamp(now, timezone.utc))
    m = _RELATIVE.match(word)
    if m:
        seconds = 0.0
        for amount, unit in re.findall(r"(\d+(?:\.\d+)?)([smhdw])", m.group(2)):
            seconds += float(amount) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
        return _utc(datetime.fromtimestamp(now - seconds if m.group(1) == "-" else now + seconds, timezone.utc))
    try:
        when = datetime.fromisoformat(word)
    except ValueError:
        raise ValueError("give an ISO 8601 time (2026-01-02T03:04:05Z, 2026-01-02), now, "
                         "a time ago (-30m, -2h, -1d) or to come (+30s)") from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time, as the user's clock says
    return _utc(when)


def _utc(when: datetime) -> str:
    return when.astimezone(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def stamp_seconds(text: str) -> float | None:
    """An xs:dateTime as POSIX seconds (no zone: local time), or None."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.astimezone()
    return when.timestamp()


def now_stamp(seconds: float | None = None) -> str:
    """An xs:dateTime in UTC to the second."""
    return _utc(datetime.fromtimestamp(time.time() if seconds is None else seconds, timezone.utc))


# --------------------------------------------------------------------------- sensor data (XEP-0323)


def readout_request(seqnr: int, kinds: list[str], fields=(), nodes=(), since: str | None = None,
                    until: str | None = None, when: str | None = None) -> ET.Element:
    """<req/>: `kinds` are field types (KINDS), "historical" (every historical kind) or
    "all"; `when` schedules the readout."""
    req = ET.Element(SD + "req", seqnr=str(seqnr))
    for kind in kinds:
        req.set(kind, "true")
    if since:
        req.set("from", since)
    if until:
        req.set("to", until)
    if when:
        req.set("when", when)
    for node in nodes:
        ET.SubElement(req, SD + "node", nodeId=node)
    for name in fields:
        ET.SubElement(req, SD + "field", name=name)
    return req


def requested_kinds(req: ET.Element) -> set[str]:
    """The field types a <req/> asks for (none named: momentary, the common read-out)."""
    if _true(req.get("all")):
        return set(KINDS)
    kinds = {k for k in KINDS if _true(req.get(k))}
    if _true(req.get("historical")):
        kinds.update(HISTORICAL)
    return kinds or {"momentary"}


def readouts(fields: ET.Element, sender: str, as_json: bool = False, ts: float | None = None) -> list[Message]:
    """The values of a <fields/> element, a Message each: the address is the device's
    JID, the payload the value as the device wrote it (`as_json`: an object with the
    field's name, value, unit, type, timestamp, node and flags), the meta the rest."""
    out = []
    ts = time.time() if ts is None else ts
    for node in fields.iter(SD + "node"):
        node_meta = {"node": node.get("nodeId", "")}
        for extra in ("sourceId", "cacheType"):
            if node.get(extra):
                node_meta[extra] = node.get(extra)
        for stamp in node.iter(SD + "timestamp"):
            when = stamp.get("value", "")
            for el in stamp:
                kind = el.tag[len(SD):] if el.tag.startswith(SD) else ""
                if kind not in VALUE_TYPES:
                    continue
                out.append(_readout(el, "duration" if kind == "timeSpan" else kind, when, node_meta, sender,
                                    as_json, ts))
    return out


def _readout(el: ET.Element, kind: str, when: str, node_meta: dict, sender: str, as_json: bool,
             ts: float) -> Message:
    attrs = el.attrib
    value = attrs.get("value", "")
    meta: dict = {"field": attrs.get("name", ""), "type": kind}
    if attrs.get("unit"):
        meta["unit"] = attrs["unit"]
    meta["timestamp"] = when
    meta.update(node_meta)
    meta["flags"] = [k for k in KINDS if _true(attrs.get(k))] + [q for q in QOS if _true(attrs.get(q))]
    if "writable" in attrs:
        meta["writable"] = _true(attrs["writable"])
    if kind == "enum" and attrs.get("dataType"):
        meta["dataType"] = attrs["dataType"]
    if not as_json:
        return Message("xmpp", sender, value.encode("utf-8"), None, meta, ts)
    rest = {"type": kind}
    for key in ("unit", "timestamp", "node", "flags"):
        if key in meta:
            rest[key] = meta[key]
    text = (f'{{"field": {json.dumps(meta["field"], ensure_ascii=False)}, "value": {_json_value(kind, value)}, '
            + json.dumps(rest, ensure_ascii=False)[1:])
    return Message("xmpp", sender, text.encode("utf-8"), "application/json", meta, ts)


def _json_value(kind: str, value: str) -> str:
    """A value as JSON: numbers as the device wrote them (10.00 keeps its decimals),
    booleans as JSON booleans, everything else a string."""
    if kind in ("numeric", "int", "long") and _JSON_NUMBER.match(value):
        return value
    if kind in ("numeric", "int", "long"):
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None and number == number and abs(number) != float("inf"):
            return json.dumps(number)
    if kind == "boolean" and value in ("true", "false", "1", "0"):
        return "true" if value in _TRUE else "false"
    return json.dumps(value, ensure_ascii=False)


def field_element(kind: str, name: str, value: str, kinds=(), qos=("automaticReadout",), unit: str | None = None,
                  writable: bool | None = None) -> ET.Element:
    """One value of a <timestamp/> (the device's side)."""
    el = ET.Element(SD + kind, name=name)
    for flag in kinds:
        el.set(flag, "true")
    for flag in qos:
        el.set(flag, "true")
    el.set("value", value)
    if unit is not None:
        el.set("unit", unit)
    if writable is not None:
        el.set("writable", "true" if writable else "false")
    return el


# --------------------------------------------------------------------------- control (XEP-0325)


def set_request(params: list[tuple[str, str, str]]) -> ET.Element:
    """<set/> with a typed element per (name, type, value), in the order given (the
    device applies them in that order)."""
    el = ET.Element(CTL + "set")
    for name, kind, value in params:
        ET.SubElement(el, CTL + kind, name=name, value=value)
    return el


def set_params(el: ET.Element) -> list[tuple[str, str, str]]:
    """(name, type, value) of a <set/>: its typed elements, or a submitted data form's
    fields (type None: as text, for the device to read by its own types)."""
    out = []
    for child in el:
        tag = child.tag
        if tag.startswith(CTL) and tag[len(CTL):] in PARAM_TYPES:
            out.append((child.get("name", ""), tag[len(CTL):], child.get("value", "")))
        elif tag == XD + "x":
            for field in child.iter(XD + "field"):
                var = field.get("var", "")
                if not var or field.get("type") == "hidden":
                    continue
                value = field.find(XD + "value")
                out.append((var, None, value.text or "" if value is not None else ""))
    return out


def param_errors(error: ET.Element | None) -> list[tuple[str, str]]:
    """(parameter, text) of each <paramError/> in an IQ error (and of the <error var/>
    of the older draft slixmpp's plugin answers with)."""
    if error is None:
        return []
    found = [(p.get("var", ""), (p.text or "").strip()) for p in error.iter(CTL + "paramError")]
    for response in error.iter(CTL + "setResponse"):
        for old in response.iter(CTL + "error"):
            found.append((old.get("var", ""), (old.text or "").strip()))
    return found


def form_params(form: ET.Element) -> list[dict]:
    """The control parameters of a control form (XEP-0004 with XEP-0122 datatypes):
    [{name, type, value, label}] in the form's order."""
    out = []
    for field in form.iter(XD + "field"):
        var, ftype = field.get("var", ""), field.get("type", "text-single")
        if not var or ftype in ("hidden", "fixed"):
            continue
        validate = field.find(XDV + "validate")
        datatype = validate.get("datatype", "xs:string") if validate is not None else None
        kind = DATATYPES.get(datatype) if datatype else ("boolean" if ftype == "boolean" else "string")
        value = field.find(XD + "value")
        out.append({"name": var, "type": kind or "string", "value": (value.text or "") if value is not None else "",
                    "label": field.get("label", "")})
    return out


def control_form(title: str, params: list[dict]) -> ET.Element:
    """A control form (the device's side): a field per parameter {name, type, value,
    label, min, max}, each marked notSame (XEP-0336) and typed (XEP-0122), as
    XEP-0325 asks."""
    x = ET.Element(XD + "x", type="form")
    ET.SubElement(x, XD + "title").text = title
    for p in params:
        field = ET.SubElement(x, XD + "field", var=p["name"], type="boolean" if p["type"] == "boolean" else
                              "text-single", label=p.get("label") or p["name"])
        ET.SubElement(field, XD + "value").text = p["value"]
        validate = ET.SubElement(field, XDV + "validate", datatype=DATATYPE_OF[p["type"]])
        if p.get("min") is not None or p.get("max") is not None:
            rng = ET.SubElement(validate, XDV + "range")
            if p.get("min") is not None:
                rng.set("min", str(p["min"]))
            if p.get("max") is not None:
                rng.set("max", str(p["max"]))
        ET.SubElement(field, "{%s}notSame" % NS_DYNAMIC)
    return x

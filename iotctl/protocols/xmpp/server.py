"""`xmpp device`: a simulated XMPP-IoT device on an account, as `coap serve` is for
CoAP. It answers XEP-0323 readouts (momentary, peak, computed, status, identity and
historical values), XEP-0325 control (typed <set/>, a submitted control form, the
<message/> form without an answer, getForm) and disco#info with both features.

Everything here runs on the loop's thread (slixmpp's handlers and the simulation's
tick); the main thread only starts, waits and stops.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from xml.etree import ElementTree as ET

from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from iotctl import background, receive
from iotctl.output.writers import Writer
from iotctl.protocols.xmpp import iot
from iotctl.protocols.xmpp.client import DISCO, END, PING, VERSION, Session, XmppConfig

HISTORY_SECONDS = 3600   # per-second samples kept (an hour)
HISTORY_HOURS = 24       # hourly values made up at start (the day before)
FIELDS_PER_MESSAGE = 200  # values in one <fields/> message of a long readout
MAX_QUEUED = 86400       # seconds ahead a scheduled readout (`when`) may be
_C = "{jabber:client}"


Log = background.ServerLog


class Param:
    """A control parameter: its XEP-0325 type, value (as text), bounds."""

    __slots__ = ("name", "kind", "value", "label", "low", "high", "unit")

    def __init__(self, name: str, kind: str, value: str, label: str, low=None, high=None, unit: str | None = None):
        self.name, self.kind, self.value, self.label = name, kind, value, label
        self.low, self.high, self.unit = low, high, unit

    def check(self, value: str) -> str:
        """The value checked against the type and bounds; ValueError says why not."""
        value = iot.check_value(self.kind, value)
        if self.low is not None:
            number = iot.duration_seconds(value) if self.kind == "duration" else float(value)
            if not self.low <= number <= self.high:
                shown = (f"{iot.format_duration(self.low)}..{iot.format_duration(self.high)}"
                         if self.kind == "duration" else f"{self.low:g}..{self.high:g}")
                raise ValueError(f"out of range ({shown})")
        return value


# a value of one type is accepted for a parameter of a wider one
WIDER = {("int", "long"), ("int", "double"), ("long", "double")}


class Simulation:
    """The device's state: sensors that drift every interval, a counter, the control
    parameters, and the history of the sensors."""

    def __init__(self, node: str, interval: float):
        self.node = node
        self.started = time.time()
        self.temperature, self.humidity, self.counter = 21.5, 45.0, 0
        self.t_max = self.t_min = self.temperature
        today = datetime.now(timezone.utc).date()
        self.params: dict[str, Param] = {p.name: p for p in (
            Param("led", "boolean", "false", "LED"),
            Param("brightness", "int", "50", "LED brightness (%)", 0, 100),
            Param("counter", "long", "0", "Counter (sets it)"),
            Param("setpoint", "double", "21.0", "Temperature set point (°C)", -10.0, 45.0, unit="°C"),
            Param("name", "string", "iotctl simulated device", "Name"),
            Param("color", "color", "FFFFFF", "LED colour (RRGGBB)"),
            Param("maintenance", "date", (today + timedelta(days=90)).isoformat(), "Next maintenance"),
            Param("wakeup", "time", "07:00:00", "Wake-up time"),
            Param("alarm", "dateTime", f"{today + timedelta(days=1)}T07:00:00Z", "Alarm"),
            Param("interval", "duration", iot.format_duration(interval) if interval >= 1 else f"PT{interval:g}S",
                  "How often the sensors change", 0.05, 3600.0),
        )}
        self.interval = interval
        self.seconds: deque = deque(maxlen=HISTORY_SECONDS)  # (whole second, temperature, humidity, counter)
        self.hours = self._made_up_hours()

    def _made_up_hours(self) -> list[tuple]:
        """Hourly values of the day before the start, walking back from now."""
        out = []
        hour = int(self.started // 3600) * 3600
        t, h = self.temperature, self.humidity
        for i in range(HISTORY_HOURS):
            stamp = hour - i * 3600
            out.append((stamp, round(t, 2), round(h, 1), 0))
            t = min(45.0, max(-10.0, t + random.uniform(-1.0, 1.0)))
            h = min(100.0, max(0.0, h + random.uniform(-3.0, 3.0)))
        return sorted(out)

    def step(self) -> None:
        self.temperature = min(45.0, max(-10.0, self.temperature + random.uniform(-1.1, 1.1)))
        self.humidity = min(100.0, max(0.0, self.humidity + random.uniform(-2.0, 2.0)))
        self.counter += 1
        self.params["counter"].value = str(self.counter)
        self.t_max, self.t_min = max(self.t_max, self.temperature), min(self.t_min, self.temperature)
        second = int(time.time())
        sample = (second, round(self.temperature, 2), round(self.humidity, 1), self.counter)
        if self.seconds and self.seconds[-1][0] == second:
            self.seconds[-1] = sample
        else:
            self.seconds.append(sample)

    def set(self, name: str, value: str) -> None:
        self.params[name].value = value
        if name == "counter":
            self.counter = int(value)
        elif name == "interval":
            self.interval = iot.duration_seconds(value)

    def dew_point(self) -> float:
        a, b = 17.62, 243.12
        gamma = math.log(max(self.humidity, 0.1) / 100.0) + a * self.temperature / (b + self.temperature)
        return b * gamma / (a - gamma)

    # ------------------------------------------------------------------ readouts

    def names(self) -> set[str]:
        return {"temperature", "humidity", "counter", "temperature_max", "temperature_min", "dew_point", "uptime",
                "serial", *self.params}

    def momentary(self, kinds: set[str]) -> list[ET.Element]:
        """The values of now of the requested field types."""
        auto = ("automaticReadout",)
        out = []
        if "momentary" in kinds:
            out += [iot.field_element("numeric", "temperature", f"{self.temperature:.2f}", ("momentary",), auto, "°C"),
                    iot.field_element("numeric", "humidity", f"{self.humidity:.1f}", ("momentary",), auto, "%"),
                    iot.field_element("long", "counter", str(self.counter), ("momentary",), auto, writable=True)]
            for p in self.params.values():
                if p.name == "counter":
                    continue
                kind = {"double": "numeric", "color": "string"}.get(p.kind, p.kind)
                out.append(iot.field_element(kind, p.name, p.value, ("momentary",), auto, p.unit if kind == "numeric"
                                             else None, writable=True))
        if "peak" in kinds:
            out += [iot.field_element("numeric", "temperature_max", f"{self.t_max:.2f}", ("peak",), auto, "°C"),
                    iot.field_element("numeric", "temperature_min", f"{self.t_min:.2f}", ("peak",), auto, "°C")]
        if "computed" in kinds:
            out.append(iot.field_element("numeric", "dew_point", f"{self.dew_point():.2f}", ("computed",), auto, "°C"))
        if "status" in kinds:
            out.append(iot.field_element("duration", "uptime", iot.format_duration(time.time() - self.started),
                                         ("status",), auto))
        if "identity" in kinds:
            out.append(iot.field_element("string", "serial", f"SIM-{self.node}", ("identity",), auto))
        return out

    def historical(self, kinds: set[str], since: float | None, until: float | None) -> list[tuple[int, list]]:
        """(second, values) of the history within [since, until], oldest first."""
        rows = []
        if "historicalHour" in kinds or "historicalDay" in kinds:
            for stamp, t, h, c in self.hours:
                flags = ("historicalHour", "historicalDay") if stamp % 86400 == 0 else ("historicalHour",)
                if "historicalHour" in kinds or "historicalDay" in flags:
                    rows.append((stamp, flags, t, h, c))
        if "historicalSecond" in kinds:
            rows += [(s, ("historicalSecond",), t, h, c) for s, t, h, c in self.seconds]
        out = []
        for stamp, flags, t, h, c in sorted(rows, key=lambda r: r[0]):
            if (since is not None and stamp < since) or (until is not None and stamp > until):
                continue
            auto = ("automaticReadout",)
            out.append((stamp, [iot.field_element("numeric", "temperature", f"{t:.2f}", flags, auto, "°C"),
                                iot.field_element("numeric", "humidity", f"{h:.1f}", flags, auto, "%"),
                                iot.field_element("long", "counter", str(c), flags, auto)]))
        return out


class Device:
    """The device on one session at a time (a new one after a reconnect): handlers for
    XEP-0323 and XEP-0325 requests, the simulation's tick, one log line per request."""

    def __init__(self, cfg: XmppConfig, node: str | None, interval: float, approve: bool, log: Log):
        self.cfg, self.approve, self.log = cfg, approve, log
        self.node = node or (cfg.jid.split("@", 1)[0] or "device")
        self.sim = Simulation(self.node, interval)
        self.session: Session | None = None
        self.resource = cfg.resource
        self.queued: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._tick: asyncio.Task | None = None

    # ------------------------------------------------------------------ life cycle (main thread)

    def open(self) -> None:
        session = Session(self.cfg, auto_approve=self.approve, plugins=[DISCO, PING, VERSION], resource=self.resource)
        session.open()
        try:
            session.call(self._install, session)
            session.send_presence(status=f"iotctl simulated XMPP-IoT device (node {self.node})")
        except BaseException:
            session.close()
            raise
        self.session = session
        self.resource = session.bound.split("/", 1)[1] if "/" in session.bound else None

    def close(self) -> None:
        if self.session is not None:
            self.session.loop.cleanup(self._stop)
            self.session.close()

    # ------------------------------------------------------------------ the loop's side

    def _install(self, session: Session) -> None:
        xmpp = session.xmpp
        self.xmpp = xmpp
        disco = xmpp.plugin[DISCO]
        disco.add_identity(category="client", itype="bot", name="iotctl simulated XMPP-IoT device")
        disco.add_feature(iot.NS_SENSOR)
        disco.add_feature(iot.NS_CONTROL)
        version = xmpp.plugin[VERSION]
        from iotctl import __version__

        version.software_name, version.version, version.os = "iotctl xmpp device", __version__, ""
        for name, path, handler in (
                ("readout", f"{_C}iq/{iot.SD}req", self._readout),
                ("cancel", f"{_C}iq/{iot.SD}cancel", self._cancel),
                ("control", f"{_C}iq/{iot.CTL}set", self._control),
                ("control form", f"{_C}iq/{iot.CTL}getForm", self._form),
                ("control message", f"{_C}message/{iot.CTL}set", self._control_message)):
            xmpp.register_handler(Callback(f"iotctl device {name}", MatchXPath(path), handler))
        xmpp.add_event_handler("presence_subscribe", self._subscribe)
        if self._tick is None:
            self._tick = asyncio.ensure_future(self._ticking())

    async def _stop(self) -> None:
        for handle in self.queued.values():
            handle.cancel()
        self.queued.clear()
        if self._tick is not None:
            self._tick.cancel()

    async def _ticking(self) -> None:
        while True:
            await asyncio.sleep(self.sim.interval)
            self.sim.step()

    def _line(self, who, what: str) -> None:
        self.log(f"{time.strftime('%H:%M:%S')} {who} {what}")

    def _subscribe(self, pres) -> None:
        self._line(pres["from"], "asks to see the device's presence: "
                   + ("approved" if self.approve else "not approved (--no-auto-approve)"))

    def _error(self, iq, condition: str, text: str, params=(), etype: str | None = None) -> None:
        reply = iq.reply(clear=True)
        reply.error()
        reply["error"]["condition"] = condition
        reply["error"]["type"] = etype or ("modify" if condition == "bad-request" else "cancel")
        reply["error"]["text"] = text
        for name, why in params:
            ET.SubElement(reply["error"].xml, iot.CTL + "paramError", var=name).text = why
        reply.send()

    # readouts (XEP-0323)

    def _readout(self, iq) -> None:
        req = iq.xml.find(iot.SD + "req")
        who, seqnr = iq["from"], req.get("seqnr", "")
        if iq["type"] != "get":
            return self._error(iq, "bad-request", "a readout request is an iq of type get")
        kinds = iot.requested_kinds(req)
        fields = [f.get("name", "") for f in req.iter(iot.SD + "field")]
        nodes = [n.get("nodeId", "") for n in req.iter(iot.SD + "node")]
        shown_kinds = sorted(kinds - set(iot.HISTORICAL)) + (["historical"] if set(iot.HISTORICAL) <= kinds else
                                                           sorted(kinds & set(iot.HISTORICAL)))
        asked = " ".join(shown_kinds) if len(kinds) < len(iot.KINDS) else "all"
        shown = f"readout #{seqnr} {asked}" + (f" fields {','.join(fields)}" if fields else "")
        unknown = [n for n in nodes if n != self.node]
        if unknown:
            self._line(who, f"{shown} -> item-not-found (node {', '.join(unknown)})")
            return self._error(iq, "item-not-found", f"no node {', '.join(unknown)} (this device is node {self.node})")
        missing = [f for f in fields if f not in self.sim.names()]
        if missing:
            self._line(who, f"{shown} -> item-not-found (field {', '.join(missing)})")
            return self._error(iq, "item-not-found", f"no field {', '.join(missing)}")
        try:
            since = self._stamp(req.get("from"))
            until = self._stamp(req.get("to"))
            when = self._stamp(req.get("when"))
        except ValueError as exc:
            self._line(who, f"{shown} -> bad-request ({exc})")
            return self._error(iq, "bad-request", str(exc))
        reply = iq.reply(clear=True)
        accepted = ET.SubElement(reply.xml, iot.SD + "accepted", seqnr=seqnr)
        delay = None if when is None else when - time.time()
        if delay is not None and delay > 0:
            if delay > MAX_QUEUED:
                self._line(who, f"{shown} -> bad-request (when is more than a day ahead)")
                return self._error(iq, "bad-request", "'when' is more than a day ahead")
            accepted.set("queued", "true")
            reply.send()
            key = (str(who), seqnr)
            self.queued[key] = asyncio.get_running_loop().call_later(
                delay, self._started, who, seqnr, kinds, fields, since, until, shown)
            self._line(who, f"{shown} -> queued for {req.get('when')}")
            return
        reply.send()
        self._send_fields(who, seqnr, kinds, fields, since, until, shown)

    @staticmethod
    def _stamp(text: str | None) -> float | None:
        if text is None:
            return None
        seconds = iot.stamp_seconds(text)
        if seconds is None:
            raise ValueError(f"not a date and time: {text!r}")
        return seconds

    def _started(self, who, seqnr, kinds, fields, since, until, shown) -> None:
        self.queued.pop((str(who), seqnr), None)
        msg = self.xmpp.make_message(mto=who)
        msg.xml.append(ET.Element(iot.SD + "started", seqnr=seqnr))
        msg.send()
        self._send_fields(who, seqnr, kinds, fields, since, until, shown)

    def _send_fields(self, who, seqnr: str, kinds: set[str], fields: list[str], since, until, shown: str) -> None:
        """The readout's values in <fields/> messages of at most FIELDS_PER_MESSAGE
        values, the last one done='true' (a <done/> message when nothing matched)."""
        wanted = set(fields)
        blocks: list[tuple[str, list]] = []
        now = self.sim.momentary(kinds)
        if now:
            blocks.append((iot.now_stamp(), now))
        if kinds & set(iot.HISTORICAL):
            for stamp, values in self.sim.historical(kinds, since, until):
                blocks.append((iot.now_stamp(stamp), values))
        if wanted:
            blocks = [(s, [v for v in values if v.get("name") in wanted]) for s, values in blocks]
            blocks = [(s, values) for s, values in blocks if values]
        count = sum(len(values) for _, values in blocks)
        messages: list[list[tuple[str, list]]] = [[]]
        size = 0
        for stamp, values in blocks:
            if size and size + len(values) > FIELDS_PER_MESSAGE:
                messages.append([])
                size = 0
            messages[-1].append((stamp, values))
            size += len(values)
        if not count:
            msg = self.xmpp.make_message(mto=who)
            msg.xml.append(ET.Element(iot.SD + "done", seqnr=seqnr))
            msg.send()
        for i, part in enumerate(messages if count else []):
            msg = self.xmpp.make_message(mto=who)
            el = ET.SubElement(msg.xml, iot.SD + "fields", seqnr=seqnr)
            if i == len(messages) - 1:
                el.set("done", "true")
            node = ET.SubElement(el, iot.SD + "node", nodeId=self.node)
            for stamp, values in part:
                ET.SubElement(node, iot.SD + "timestamp", value=stamp).extend(values)
            msg.send()
        self._line(who, f"{shown} -> {count} value(s)")

    def _cancel(self, iq) -> None:
        seqnr = iq.xml.find(iot.SD + "cancel").get("seqnr", "")
        handle = self.queued.pop((str(iq["from"]), seqnr), None)
        if handle is None:
            self._line(iq["from"], f"cancel #{seqnr} -> item-not-found")
            return self._error(iq, "item-not-found", f"no queued readout #{seqnr}")
        handle.cancel()
        reply = iq.reply(clear=True)
        ET.SubElement(reply.xml, iot.SD + "cancelled", seqnr=seqnr)
        reply.send()
        self._line(iq["from"], f"cancel #{seqnr} -> cancelled")

    # control (XEP-0325)

    def _apply(self, el) -> tuple[list[str], list[tuple[str, str]], str]:
        """Check every parameter of a <set/>, then (all of them valid) set them in
        order: (what was set, [(name, why)] of the refused ones, the condition)."""
        params = iot.set_params(el)
        if not params:
            return [], [("", "no parameter to set")], "bad-request"
        errors: list[tuple[str, str]] = []
        condition = "bad-request"
        checked = []
        for name, kind, value in params:
            param = self.sim.params.get(name)
            if param is None:
                errors.append((name, "no such parameter"))
                condition = "item-not-found"
                continue
            if kind is not None and kind != param.kind and (kind, param.kind) not in WIDER:
                errors.append((name, f"a {param.kind} parameter, not {kind}"))
                continue
            try:
                checked.append((name, param.check(value)))
            except ValueError as exc:
                errors.append((name, f"{value!r} is {exc}" if str(exc).startswith(("not ", "out ")) else str(exc)))
        if errors:
            return [], errors, condition
        for name, value in checked:
            self.sim.set(name, value)
        return [f"{name}={value}" for name, value in checked], [], ""

    def _control(self, iq) -> None:
        who = iq["from"]
        if iq["type"] != "set":
            return self._error(iq, "bad-request", "a control request is an iq of type set")
        done, errors, condition = self._apply(iq.xml.find(iot.CTL + "set"))
        if errors:
            shown = "; ".join(f"{n}: {why}" if n else why for n, why in errors)
            self._line(who, f"control -> {condition} ({shown})")
            return self._error(iq, condition, shown, [(n, why) for n, why in errors if n])
        reply = iq.reply(clear=True)
        ET.SubElement(reply.xml, iot.CTL + "setResponse")
        reply.send()
        self._line(who, f"control {' '.join(done)} -> ok")

    def _control_message(self, msg) -> None:
        """A <set/> in a message: done without an answer (XEP-0325), logged."""
        done, errors, condition = self._apply(msg.xml.find(iot.CTL + "set"))
        shown = "; ".join(f"{n}: {why}" if n else why for n, why in errors)
        self._line(msg["from"], f"control (message) {' '.join(done)} -> " + (f"{condition} ({shown}), not answered"
                                                                             if errors else "ok"))

    def _form(self, iq) -> None:
        if iq["type"] != "get":
            return self._error(iq, "bad-request", "a control form request is an iq of type get")
        params = [{"name": p.name, "type": p.kind, "value": p.value, "label": p.label, "min": p.low, "max": p.high}
                  for p in self.sim.params.values()]
        for p in params:
            if p["type"] == "duration" and p["min"] is not None:
                p["min"], p["max"] = iot.format_duration(p["min"]) if p["min"] >= 1 else "PT0.05S", \
                    iot.format_duration(p["max"])
        reply = iq.reply(clear=True)
        reply.xml.append(iot.control_form(f"{self.sim.params['name'].value} (node {self.node})", params))
        reply.send()
        self._line(iq["from"], f"control form -> {len(params)} parameters")


class Runner(receive.Receiver):
    """The device as a Receiver for the receive driver: nothing to print, the
    connection watched; after a lost connection the driver logs in again (same
    resource) with backoff."""

    can_reconnect = True

    def __init__(self, device: Device):
        self.device = device

    @property
    def where(self) -> str:
        return self.device.cfg.where

    def open(self) -> None:
        self.device.open()

    def close(self) -> None:
        self.device.close()

    def reconnect(self) -> None:
        old = self.device.session
        self.device.session = None
        if old is not None:
            old.abort()
        self.device.open()

    def poll(self, wait: float | None):
        session = self.device.session
        items = session.inbox.take(wait)
        if any(item is END for item in items):
            from iotctl.errors import ConnectionLost

            raise session.lost or ConnectionLost("xmpp device", "connection lost")
        return []


class _Nothing(Writer):
    """The writer of a run that prints nothing."""

    def __init__(self):
        super().__init__(None)

    def write(self, msg) -> None:
        pass

    def write_batch(self, msgs) -> None:
        pass

    def flush(self) -> None:
        pass


def run(cfg: XmppConfig, node: str | None, interval: float, approve: bool, log_stream, quiet: bool) -> None:
    """The device in the foreground until Ctrl-C or SIGTERM (then exit 0)."""
    from iotctl import interrupts

    log = Log(log_stream, quiet)
    device = Device(cfg, node, interval, approve, log)
    runner = Runner(device)
    restore = interrupts.terminate_as_interrupt()
    try:
        with runner:
            sim = device.sim
            log(f"iotctl: simulated XMPP-IoT device online as {device.session.bound} (node {device.node}; "
                f"sensors temperature, humidity, counter; parameters {', '.join(sim.params)}); Ctrl-C stops")
            background.ready()
            receive.run(runner, receive.ReceiveSpec(reconnect=True), "xmpp device", writer=_Nothing())
    finally:
        restore()
    log("iotctl: device stopped")

"""`iotctl check mqttsn://host:port`: what an MQTT-SN gateway is: its answer to
SEARCHGW (GWINFO and the gateway id), an ADVERTISE if one reaches this socket, the
CONNECT round trip; with a probe (on by default against loopback only) a REGISTER
round trip, a subscription to the registered topic and PUBLISH round trips at QoS 0
and 1 through it, and the same through a two-character short topic. The probe's
topic is private (iotctl/check/RANDOM), nothing is retained, and the clean session
ends with the check. Every step is bounded by --timeout (retries included)."""

from __future__ import annotations

import random
import select
import string
import time
import uuid

from iotctl.checking import Report, timed
from iotctl.errors import IotctlError


def check(report: Report, arguments: dict, probe: bool, max_payload: int, timeout: float) -> None:
    from iotctl.protocols.mqttsn.client import SnClient

    cfg = arguments["cfg"]
    # a request is sent again every Tretry until the check's step bound
    cfg.retry_interval = min(cfg.retry_interval, max(0.25, timeout / 4))
    cfg.retries = max(0, min(cfg.retries, int(timeout / cfg.retry_interval) - 1))
    report.add("server", "address", f"udp {cfg.display}")
    client = SnClient(cfg)
    try:
        _search(report, client, timeout)
        _, ms = timed(client.connect)
        report.ok("server", "connect", f"CONNACK accepted in {ms:.1f} ms (client id {client.client_id})")
        report.add("login", "none", "MQTT-SN has no login (the gateway logs in to its broker)")
        if probe:
            _Probe(report, client, timeout).run()
        else:
            report.probe_skipped("the probe publishes")
    finally:
        client.close()


def _search(report: Report, client, timeout: float) -> None:
    """SEARCHGW (radius 0: this hop) and the GWINFO that answers it, sent again every
    retry interval; a gateway that does not answer SEARCHGW sent to it directly may
    still take CONNECT, so no answer is a warning, not an error."""
    from iotctl.protocols.mqttsn import codec as c
    from iotctl.protocols.mqttsn.codec import Packet

    sock = client.sock
    deadline = time.monotonic() + timeout
    interval = client.cfg.retry_interval
    gwinfo = None
    sent = 0
    t0 = time.perf_counter()
    while gwinfo is None:
        now = time.monotonic()
        if now >= deadline:
            break
        t0 = time.perf_counter()
        client.send(Packet(c.SEARCHGW, radius=0))  # an ICMP port unreachable raises (exit 3)
        sent += 1
        until = min(deadline, now + interval)
        while gwinfo is None and time.monotonic() < until:
            ready, _, _ = select.select([sock], [], [], max(0.0, until - time.monotonic()))
            if not ready:
                break
            try:
                data = sock.recv(65536)
            except ConnectionRefusedError:
                raise client._refused() from None
            except (BlockingIOError, InterruptedError):
                continue
            try:
                p = c.decode(data)
            except c.CodecError:
                continue
            if p.type == c.GWINFO:
                gwinfo = p
            elif p.type == c.ADVERTISE:
                report.add("server", "advertise", f"gateway {p.gw_id}, every {p.duration} s")
    if gwinfo is None:
        report.warn("server", "SEARCHGW", f"no GWINFO within {timeout:g} s ({sent} sent)")
        return
    ms = (time.perf_counter() - t0) * 1000
    extra = f", address {gwinfo.fields.get('gw_add')!r}" if gwinfo.fields.get("gw_add") else ""
    report.ok("server", "SEARCHGW", f"GWINFO in {ms:.1f} ms")
    report.add("server", "gateway id", f"{gwinfo.gw_id}{extra}")


class _Probe:
    def __init__(self, report: Report, client, timeout: float):
        self.report, self.client, self.timeout = report, client, timeout
        self.topic = f"iotctl/check/{uuid.uuid4().hex[:10]}"

    def run(self) -> None:
        from iotctl.protocols.mqttsn import codec as c

        report, client = self.report, self.client
        report.add("probe", "topic", self.topic)
        try:
            (kind, tid), ms = timed(client.topic_id, self.topic)
            report.ok("probe", "REGISTER", f"topic id {tid} in {ms:.1f} ms")
            _, ms = timed(client.subscribe, self.topic, None, 1)
            report.ok("probe", "SUBSCRIBE (QoS 1)", f"SUBACK in {ms:.1f} ms")
        except IotctlError as exc:
            report.fail("probe", "REGISTER and SUBSCRIBE", exc.why or exc.what)
            return
        for qos in (0, 1):
            self._round_trip(f"QoS {qos} round trip", self.topic, kind, tid, qos)
        short = "".join(random.choice(string.ascii_letters + string.digits) for _ in range(2))
        try:
            client.subscribe(short, None, 1)
        except IotctlError as exc:
            report.fail("probe", f"short topic {short!r}", exc.why or exc.what)
            return
        self._round_trip(f"short topic {short!r} (QoS 1)", short, c.SHORT, c.short_id(short), 1)

    def _round_trip(self, name: str, topic: str, kind: int, tid: int, qos: int) -> None:
        client = self.client
        payload = f"iotctl check {uuid.uuid4().hex[:8]}".encode()
        client.take()
        t0 = time.perf_counter()
        try:
            msg_id = client.publish(kind, tid, payload, qos, False)
            acked = None
            back = None
            deadline = time.monotonic() + self.timeout
            while back is None or (msg_id is not None and acked is None):
                if msg_id is not None and acked is None:
                    if msg_id in client.acked:
                        client.acked.discard(msg_id)
                        acked = (time.perf_counter() - t0) * 1000
                    elif msg_id in client.refused:
                        self.report.fail("probe", name, f"PUBLISH refused: {client.refused.pop(msg_id)}")
                        return
                for msg in client.take():
                    client.ack(msg)
                    if msg.address == topic and msg.payload == payload:
                        back = (time.perf_counter() - t0) * 1000
                if back is not None and (msg_id is None or acked is not None):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                client.pump(min(left, 0.1))
        except IotctlError as exc:
            self.report.fail("probe", name, exc.why or exc.what)
            return
        ack = f"PUBACK in {acked:.1f} ms, " if acked is not None else ""
        if back is None:
            self.report.fail("probe", name, f"{ack}not back within {self.timeout:g} s")
        else:
            self.report.ok("probe", name, f"{ack}back in {back:.1f} ms")

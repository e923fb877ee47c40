"""`iotctl check amqp1://...`: what an AMQP 1.0 peer is (its open frame: container id,
product and version properties, capabilities, frame size, channels, idle timeout), which
SASL logins it takes, and with a probe (on by default against loopback) and an address
in the URL, what a message through that address does: the at-least-once outcome and
round trip, a pre-settled round trip, and the largest payload it carries (up to
--max-payload). Every step is bounded by --timeout. The probe sends only to the URL's
address, and takes back what it sent."""

from __future__ import annotations

import time
import uuid

from iotctl.checking import Report, timed
from iotctl.errors import IotctlError


def check(report: Report, arguments: dict, probe: bool, max_payload: int, timeout: float) -> None:
    from iotctl.protocols.amqp1.client import Session

    cfg = arguments["cfg"]
    ep = report.server(cfg, timeout)
    session = Session(cfg)
    try:
        _, ms = timed(session.connect)
    except IotctlError:
        session.abort()
        raise
    try:
        report.ok("server", "connect", f"{ms:.1f} ms (TCP{', TLS' if ep.tls else ''}, SASL, open)")
        _identity(report, session)
        _logins(report, cfg)
        addresses = arguments.get("addresses") or ()
        address = addresses[0] if addresses and addresses[0] != PLACEHOLDER else None
        if not probe:
            report.probe_skipped("the probe sends messages")
        elif address is None:
            report.add("probe", "skipped", "no address in the URL (amqp1://host/ADDRESS) to send through")
        else:
            _probe(report, session, address, max_payload, timeout)
    finally:
        session.close()


PLACEHOLDER = "iotctl-check-no-address"  # what address_args gives a URL without one


def _identity(report: Report, session) -> None:
    conn, transport = session.conn, session.transport
    report.add("server", "container id", conn.remote_container)
    props = conn.remote_properties or {}
    product = " ".join(str(props[k]) for k in ("product", "version") if props.get(k))
    if product:
        report.add("server", "product", product)
    if props.get("platform"):
        report.add("server", "platform", str(props["platform"]))
    caps = conn.remote_offered_capabilities
    report.add("server", "offered capabilities", ", ".join(map(str, caps)) if caps else "(none)")
    frame = transport.remote_max_frame_size
    report.add("limits", "max frame size", "unlimited" if frame in (0, 4294967295) else frame)
    report.add("limits", "channel max", transport.remote_channel_max)
    idle = transport.remote_idle_timeout
    report.add("limits", "idle timeout", f"{idle:g} s" if idle else "none")
    sasl = transport.sasl() if session.cfg.sasl != "none" else None
    report.ok("login", "accepted", (sasl.mech if sasl is not None else "no SASL layer")
              + (f" as {session.cfg.endpoint.username}" if session.cfg.endpoint.username else ""))


def _logins(report: Report, cfg) -> None:
    """Whether the peer also takes an anonymous login (when the check used another)."""
    from iotctl.endpoint import Endpoint
    from iotctl.protocols.amqp1.client import Session
    from iotctl.protocols.amqp1.config import Amqp1Config

    if cfg.sasl == "anonymous" or (cfg.sasl == "auto" and cfg.endpoint.username is None and not cfg.endpoint.cert):
        return
    ep = cfg.endpoint
    anon = Amqp1Config(Endpoint(ep.scheme, ep.host, ep.port, tls=ep.tls, cafile=ep.cafile, insecure=ep.insecure,
                                alpn=ep.alpn), "anonymous", cfg.vhost, None, cfg.heartbeat, cfg.connect_timeout)
    session = Session(anon)
    try:
        session.connect()
        report.warn("login", "anonymous", "allowed")
    except IotctlError as exc:
        report.ok("login", "anonymous", f"refused ({exc.why or exc.what})" if exc.code == 4 else f"no ({exc.why})")
    finally:
        session.close()


def _probe(report: Report, session, address: str, max_payload: int, timeout: float) -> None:
    from iotctl.message import Message
    from iotctl.protocols.amqp1.client import Receiver, Sender

    cfg = session.cfg
    tag = uuid.uuid4().hex[:8]
    try:
        with Receiver(cfg, (address,), credit=10) as receiver, Sender(cfg, address, timeout=timeout) as unsettled, \
                Sender(cfg, address, at_most_once=True, timeout=timeout) as presettled:
            def round_trip(payload: bytes, settled: bool) -> tuple[str | None, float | None]:
                sender = presettled if settled else unsettled
                t0 = time.perf_counter()
                key = sender.send(Message("", address, payload))
                outcome = None
                end = time.monotonic() + timeout
                got = None
                while time.monotonic() < end and got is None:
                    sender.pump(0.05)
                    if key is not None and key in sender.acked:
                        sender.acked.discard(key)
                        outcome = "accepted"
                    if key is not None and key in sender.refused:
                        return sender.refused.pop(key), None
                    for msg in receiver.poll(0.05):
                        receiver.ack([msg])
                        if msg.payload == payload:
                            got = (time.perf_counter() - t0) * 1000
                return (outcome or ("pre-settled" if settled else "no outcome")), got

            outcome, ms = round_trip(f"iotctl check {tag}".encode(), False)
            status = "ok" if outcome == "accepted" and ms is not None else "fail"
            report.add("probe", "at least once", f"{outcome}, back in {ms:.1f} ms" if ms is not None
                       else f"{outcome}, not back within {timeout:g} s", status)
            _, ms = round_trip(f"iotctl check {tag} settled".encode(), True)
            report.add("probe", "at most once (pre-settled)", f"back in {ms:.1f} ms" if ms is not None
                       else f"not back within {timeout:g} s", "ok" if ms is not None else "warn")
            size, largest = 1024, None
            while size <= max_payload:
                outcome, ms = round_trip(tag.encode() * (size // len(tag)), False)
                if ms is None:
                    break
                largest = size
                size *= 4
            report.add("probe", "largest payload", f"{largest} B" + (" (the limit asked)" if largest and
                                                                      largest * 4 > max_payload else "")
                       if largest else "none came back", "ok" if largest else "warn")
    except IotctlError as exc:
        report.fail("probe", address, f"{exc.what}: {exc.why}" if exc.why else exc.what)

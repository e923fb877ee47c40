"""`iotctl check stomp://...`: what a STOMP broker is: the connect round trip, its
CONNECTED frame (`server`, `version`, `heart-beat`, `session`), the vhost (host
header) and login; and with a probe (on by default against loopback only) a SEND with
a receipt to a temporary destination this connection subscribed to, and the MESSAGE
coming back. The destination is one nobody else uses and nothing keeps: on RabbitMQ
a /topic/ (its subscription queue is removed with the subscription), elsewhere a
/temp-queue/ (ActiveMQ removes it with the connection). Every step is bounded by
--timeout."""

from __future__ import annotations

import time
import uuid

from iotctl.checking import Report, timed
from iotctl.errors import IotctlError, TimeoutError_


def check(report: Report, arguments: dict, probe: bool, max_payload: int, timeout: float) -> None:
    from iotctl.protocols.stomp.client import Session
    from iotctl.protocols.stomp.endpoints import check_config

    cfg = arguments["cfg"]
    check_config(cfg)
    ep = report.server(cfg, timeout)
    session = Session(cfg)
    try:
        _, ms = timed(session.connect)
    except BaseException:
        session.close(0.5)
        raise
    try:
        report.ok("server", "connect", f"{ms:.1f} ms (TCP{', TLS' if ep.tls else ''}, CONNECT, CONNECTED)")
        headers = session.listener.connected or {}
        report.add("server", "server", headers.get("server") or "(not said)")
        version = headers.get("version") or "1.0"
        report.add("server", "version", version + ("" if version == cfg.version else f" (asked {cfg.version})"))
        report.add("server", "session", headers.get("session") or "(none)")
        _heartbeat(report, headers.get("heart-beat"), cfg.heartbeats)
        report.ok("login", "accepted", f"user {ep.username}" if ep.username else "without a login header")
        report.add("login", "vhost", f"{cfg.vhost} (the host header)" if cfg.vhost else
                   "(none sent: the broker's default)")
        if probe:
            _probe(report, session, timeout)
        else:
            report.probe_skipped("the probe sends")
    finally:
        session.close(min(timeout, 5.0))


def _heartbeat(report: Report, header: str | None, ours: tuple[int, int]) -> None:
    """The server's heart-beat header and what it means with ours (STOMP 1.1, 'Heart-beating')."""
    if header is None:
        report.add("server", "heart-beat", "(none: STOMP 1.0 has no heart-beats)")
        return
    try:
        sx, sy = (int(v) for v in header.split(","))
    except ValueError:
        report.warn("server", "heart-beat", f"{header!r} (not CX,CY)")
        return
    cx, cy = ours
    to_server = max(cx, sy) if cx and sy else 0
    to_client = max(sx, cy) if sx and cy else 0
    agreed = ", ".join(x for x in (f"we send every {to_server} ms" if to_server else "",
                                   f"the server every {to_client} ms" if to_client else "") if x) or "none"
    report.add("server", "heart-beat", f"{header} (asked {cx},{cy}: {agreed})")


def _probe(report: Report, session, timeout: float) -> None:
    server = (session.listener.connected or {}).get("server") or ""
    tag = uuid.uuid4().hex[:12]
    if server.lower().startswith("rabbitmq"):
        destination = f"/topic/iotctl.check.{tag}"  # an exclusive auto-delete queue bound to amq.topic
    else:
        destination = f"/temp-queue/iotctl-check-{tag}"  # this connection's own (ActiveMQ, Artemis)
    report.add("probe", "destination", f"{destination} (temporary)")
    sub_id = f"iotctl-check-{tag}"
    try:
        t0 = time.perf_counter()
        session.subscribe(destination, sub_id, "auto", {}, timeout)
        report.ok("probe", "subscribe (receipt)", f"{(time.perf_counter() - t0) * 1000:.1f} ms")
    except IotctlError as exc:
        report.fail("probe", "subscribe (receipt)", _why(exc))
        return
    body = f"iotctl check {tag}".encode()
    try:
        receipt, back = _send(session, destination, body, timeout)
        report.ok("probe", "send (receipt)", f"{receipt:.1f} ms")
        if back is None:
            report.fail("probe", "round trip", f"the message did not come back within {timeout:g} s")
        else:
            report.ok("probe", "round trip", f"MESSAGE back in {back:.1f} ms")
    except IotctlError as exc:
        report.fail("probe", "send (receipt)", _why(exc))
        return
    try:
        session.request("unsubscribe", "UNSUBSCRIBE", {"id": sub_id}, timeout)
    except IotctlError:
        pass


def _send(session, destination: str, body: bytes, timeout: float) -> tuple[float, float | None]:
    """SEND with a receipt: (ms to the RECEIPT, ms to the MESSAGE back or None)."""
    listener = session.listener
    rid = session.next_id("check")
    t0 = time.perf_counter()
    session.write(session.encode("SEND", {"destination": destination, "receipt": rid,
                                          "content-type": "text/plain"}, body), "send")
    receipt = back = None
    deadline = time.monotonic() + timeout
    while receipt is None or back is None:
        if receipt is None and rid in listener.receipts:
            listener.receipts.remove(rid)
            receipt = (time.perf_counter() - t0) * 1000
        while back is None and listener.messages:
            frame = listener.messages.popleft()
            listener.took(len(frame.body))
            if frame.body == body:
                back = (time.perf_counter() - t0) * 1000
        if receipt is not None and back is not None:
            break
        session.check("send")
        left = deadline - time.monotonic()
        if left <= 0:
            if receipt is None:
                raise TimeoutError_("send", f"no RECEIPT within {timeout:g} s")
            break
        session.wait(min(left, 0.5), lambda: rid in listener.receipts or bool(listener.messages))
    return receipt, back


def _why(exc: IotctlError) -> str:
    return exc.why or exc.what

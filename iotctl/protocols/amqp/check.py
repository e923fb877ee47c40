"""`iotctl check amqp://...`: what an AMQP 0-9-1 broker is and allows: the connect
round trip, its server-properties (product, version, platform, cluster name), the
capabilities it announces, the login mechanisms it offers and the one used, what it
proposes and what was agreed for frame_max, channel_max and heartbeat, the vhost; and
with a probe (on by default against loopback only) a message through a temporary
exclusive queue (published with a confirm, taken back with basic.get) and whether
the firehose (tracing) is on in the vhost. Every step is bounded by --timeout; the
probe's queues are exclusive to the check's connection, so the broker removes them
when it closes, also when it is lost."""

from __future__ import annotations

import time
import uuid

from iotctl.checking import Report, timed
from iotctl.errors import IotctlError

# capability name -> what the row says
CAPABILITIES = (
    ("publisher_confirms", "publisher confirms"),
    ("basic.nack", "basic.nack"),
    ("consumer_cancel_notify", "consumer cancel notify"),
    ("per_consumer_qos", "per-consumer qos"),
    ("direct_reply_to", "direct reply-to"),
    ("exchange_exchange_bindings", "exchange-to-exchange bindings"),
    ("connection.blocked", "connection.blocked"),
    ("consumer_priorities", "consumer priorities"),
    ("authentication_failure_close", "authentication failure close"),
)
TRACE_WAIT = 1.0  # how long a trace copy of the probe's message is waited for


def check(report: Report, arguments: dict, probe: bool, max_payload: int, timeout: float) -> None:
    from iotctl.protocols.amqp.client import Session

    cfg = arguments["cfg"]
    ep = report.server(cfg, timeout)
    session = Session(cfg, name="iotctl check")
    seen = _record(session)
    _, ms = timed(session.connect)
    try:
        report.ok("server", "connect", f"{ms:.1f} ms (TCP{', TLS' if ep.tls else ''}, AMQP handshake, channel)")
        _identity(report, session, seen)
        _limits(report, session, seen)
        report.ok("login", "accepted", f"user {ep.username if ep.username is not None else 'guest'} (PLAIN)")
        mechanisms = seen.get("mechanisms")
        if mechanisms:
            report.add("login", "mechanisms offered", mechanisms)
        report.ok("login", "vhost", cfg.vhost)
        if probe:
            _Probe(report, session, timeout).run()
        else:
            report.probe_skipped("the probe publishes")
    finally:
        session.close()


def _record(session) -> dict:
    """What the broker says in Connection.Start and Connection.Tune, before pika
    negotiates: the session's connection class, with the two handlers noting it."""
    seen: dict = {}
    base = session._bounded

    class Recording(base):
        def _on_connection_start(self, method_frame):
            m = method_frame.method
            seen["mechanisms"] = _text(m.mechanisms)
            seen["locales"] = _text(m.locales)
            super()._on_connection_start(method_frame)

        def _on_connection_tune(self, method_frame):
            m = method_frame.method
            seen["tune"] = (m.channel_max, m.frame_max, m.heartbeat)
            super()._on_connection_tune(method_frame)

    Recording.__name__ = base.__name__
    session._bounded = Recording
    return seen


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _identity(report: Report, session, seen: dict) -> None:
    props = session.conn._impl.server_properties or {}
    product = " ".join(_text(props[k]) for k in ("product", "version") if props.get(k))
    report.add("server", "product", product or "(not said)")
    if props.get("platform"):
        report.add("server", "platform", _text(props["platform"]))
    if props.get("cluster_name"):
        report.add("server", "cluster name", _text(props["cluster_name"]))
    caps = props.get("capabilities") or {}
    for key, name in CAPABILITIES:
        if key in caps:
            report.add("capabilities", name, bool(caps[key]), "info" if caps[key] else "warn")
        else:
            report.add("capabilities", name, "not announced")
    known = {k for k, _ in CAPABILITIES}
    for key in sorted(caps):
        if key not in known:
            report.add("capabilities", _text(key), caps[key] if isinstance(caps[key], bool) else _text(caps[key]))


def _limits(report: Report, session, seen: dict) -> None:
    from iotctl.protocols.amqp.client import FRAME_MAX

    params = session.conn._impl.params
    offered = seen.get("tune")
    server_channels, server_frame, server_heartbeat = offered if offered else (None, None, None)

    def note(value) -> str:
        return "no limit" if not value else str(value)

    report.add("limits", "frame max", f"{params.frame_max} bytes (the broker's {note(server_frame)}, iotctl asks "
                                      f"{FRAME_MAX})" if server_frame != params.frame_max else
               f"{params.frame_max} bytes")
    report.add("limits", "channel max", f"{params.channel_max}" + (f" (the broker's {note(server_channels)})"
                                                                   if server_channels != params.channel_max else ""))
    heartbeat = params.heartbeat
    shown = f"{heartbeat} s" if heartbeat else "off"
    if server_heartbeat is not None and server_heartbeat != heartbeat:
        shown += f" (the broker proposes {server_heartbeat} s)" if server_heartbeat else " (the broker proposes none)"
    report.add("limits", "heartbeat", shown)


# --------------------------------------------------------------------------- the probe


class _Probe:
    """One message through a temporary exclusive queue: publish with a confirm
    (mandatory, so an unroutable one comes back), take it with basic.get; then
    whether a trace copy of the get reaches amq.rabbitmq.trace (the firehose).

    On a channel of its own, opened on the session's connection (pika's asynchronous
    channel: every wait is bounded by the timeout; a refusal closes only this channel)."""

    def __init__(self, report: Report, session, timeout: float):
        self.report, self.session, self.timeout = report, session, timeout
        self.channel = None
        self.closed = None  # why the probe's channel closed

    def _until(self, done, what: str) -> None:
        from iotctl.errors import TimeoutError_
        from iotctl.protocols.amqp.client import amqp_error

        deadline = time.monotonic() + self.timeout
        while not done():
            if self.closed is not None:
                raise amqp_error(what, self.closed, self.session.cfg)
            self.session.check(what)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError_(what, f"no answer within {self.timeout:g} s")
            self.session.step(min(left, 0.25))

    def _wait(self, what: str, start) -> object:
        """start(callback) begins an asynchronous call; its answer, within the timeout."""
        box: list = []
        start(lambda *args: box.append(args[-1]))
        self._until(lambda: bool(box), what)
        return box[0]

    def _open(self) -> None:
        self.closed = None
        channel = self._wait("open a channel", lambda cb: self.session.conn._impl.channel(on_open_callback=cb))
        channel.add_on_close_callback(self._on_close)
        self.channel = channel

    def _on_close(self, channel, reason) -> None:
        if channel is self.channel:
            self.closed = reason

    def run(self) -> None:
        report = self.report
        try:
            self._open()
            frame = self._wait("declare a temporary queue", lambda cb: self.channel.queue_declare(
                "", exclusive=True, auto_delete=True, callback=cb))
            queue = frame.method.queue
        except IotctlError as exc:
            report.fail("probe", "temporary queue", _why(exc))
            return
        report.add("probe", "temporary queue", f"{queue} (exclusive: removed with the connection)")
        trace = self._trace_queue(queue)
        if self._round_trip(queue) and trace is not None:
            self._firehose(trace)
        try:
            if self.closed is None:
                self.channel.close()
        except Exception:
            pass

    def _trace_queue(self, queue: str) -> str | None:
        """A second exclusive queue bound to amq.rabbitmq.trace for the deliveries of
        `queue` only (`deliver.QUEUE`): others' traffic never reaches it. None when the
        binding is refused (its channel then closes: a new one is opened)."""
        from iotctl.protocols.amqp.client import FIREHOSE

        try:
            frame = self._wait("declare a trace queue", lambda cb: self.channel.queue_declare(
                "", exclusive=True, auto_delete=True, callback=cb))
            trace = frame.method.queue
            self._wait(f"bind to {FIREHOSE}", lambda cb: self.channel.queue_bind(
                trace, FIREHOSE, routing_key=f"deliver.{queue}", callback=cb))
            return trace
        except IotctlError as exc:
            self.report.add("probe", "firehose (tracing)", f"unknown: {_why(exc)}", "warn")
            if self.closed is not None:
                try:
                    self._open()
                except IotctlError:
                    pass
            return None

    def _round_trip(self, queue: str) -> bool:
        report, channel = self.report, self.channel
        body = f"iotctl check {uuid.uuid4().hex}".encode()
        confirms: list = []
        returned: list = []
        try:
            self._wait("confirm.select", lambda cb: channel.confirm_delivery(
                lambda frame: confirms.append(frame.method), callback=cb))
            channel.add_on_return_callback(lambda ch, method, props, b: returned.append(method))
            t0 = time.perf_counter()
            channel.basic_publish("", queue, body, None, True)
            self._until(lambda: bool(confirms), "publish with a confirm")
            confirmed = (time.perf_counter() - t0) * 1000
            kind = type(confirms[0]).__name__
            if returned:
                report.fail("probe", "publish (confirm)", f"returned unroutable: {returned[0].reply_text}")
                return False
            if kind != "Ack":
                report.fail("probe", "publish (confirm)", f"the broker answered {kind}")
                return False
            report.ok("probe", "publish (confirm)", f"acked in {confirmed:.1f} ms")
            got = self._get(queue)
            back = (time.perf_counter() - t0) * 1000
            if got == body:
                report.ok("probe", "round trip", f"back through basic.get in {back:.1f} ms")
                return True
            report.fail("probe", "round trip", "basic.get found the queue empty" if got is None else
                        "basic.get returned another message")
        except IotctlError as exc:
            report.fail("probe", "round trip", _why(exc))
        return False

    def _get(self, queue: str) -> bytes | None:
        """One basic.get: the body, or None when the queue is empty (GetEmpty)."""
        box: list = []
        channel = self.channel
        channel.basic_get(queue, lambda ch, method, props, body: box.append(body), auto_ack=True)
        self._until(lambda: channel._on_getok_callback is None, f"basic.get from {queue}")
        return box[0] if box else None

    def _firehose(self, trace: str) -> None:
        """A trace copy of the get on the trace queue within TRACE_WAIT: tracing is on."""
        deadline = time.monotonic() + min(TRACE_WAIT, self.timeout)
        vhost = self.session.cfg.vhost
        while True:
            try:
                copy = self._get(trace)
            except IotctlError as exc:
                self.report.add("probe", "firehose (tracing)", f"unknown: {_why(exc)}", "warn")
                return
            if copy is not None:
                self.report.add("probe", "firehose (tracing)", f"on in vhost {vhost!r}: every message is "
                                                               "copied to amq.rabbitmq.trace", "warn")
                return
            if time.monotonic() >= deadline:
                self.report.add("probe", "firehose (tracing)", f"off in vhost {vhost!r}")
                return
            self.session.step(0.05)


def _why(exc: IotctlError) -> str:
    return exc.why or exc.what

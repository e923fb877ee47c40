"""`iotctl check mqtt://...` (and `iotctl mqtt check`): which MQTT versions the broker
accepts, its MQTT 5 CONNACK limits, its identity ($SYS/broker/version where it has
one), and with --probe (on by default against loopback) what it really does: QoS 0/1/2
round trips, retain, + and # wildcards, shared subscriptions, the largest payload,
the longest topic and client id — each bounded in time, on a private topic prefix that
is cleaned up after."""

from __future__ import annotations

import os
import time
import uuid

from iotctl.checking import Report
from iotctl.errors import AuthError, IotctlError

VERSIONS = ("5", "3.1.1", "3.1")
# MQTT 5 CONNACK properties: paho attribute -> (row name, value when absent)
LIMITS = (
    ("MaximumQoS", "maximum QoS", 2),
    ("RetainAvailable", "retain available", 1),
    ("WildcardSubscriptionAvailable", "wildcard subscriptions", 1),
    ("SharedSubscriptionAvailable", "shared subscriptions", 1),
    ("SubscriptionIdentifierAvailable", "subscription identifiers", 1),
    ("ReceiveMaximum", "receive maximum", 65535),
    ("MaximumPacketSize", "maximum packet size", None),
    ("TopicAliasMaximum", "topic alias maximum", 0),
    ("ServerKeepAlive", "server keep alive", None),
    ("SessionExpiryInterval", "session expiry (server's)", None),
    ("AssignedClientIdentifier", "assigned client id", None),
)
BOOLEAN = {"retain available", "wildcard subscriptions", "shared subscriptions", "subscription identifiers"}


def check(report: Report, arguments: dict, probe: bool, max_payload: int, timeout: float) -> None:
    cfg = arguments["cfg"]
    ep = report.server(cfg, timeout)
    report.add("server", "login", f"user {ep.username}" if ep.username else "anonymous")
    accepted, connack = _versions(report, cfg)
    if connack is not None:
        _limits(report, connack)
    best = next((v for v in VERSIONS if v in accepted), None)
    _identity(report, cfg, best, timeout)
    if probe:
        _Probe(report, cfg, best, max_payload, timeout).run()
    else:
        report.probe_skipped("the probe publishes on a private prefix")


# --------------------------------------------------------------------------- connecting


def _config(cfg, version: str, client_id: str | None = None):
    from iotctl.protocols.mqtt.client import MqttConfig

    cid = client_id or (f"iotctl-chk-{os.getpid() % 100000}-{uuid.uuid4().hex[:6]}")
    return MqttConfig(endpoint=cfg.endpoint, version=version, client_id=cid, keepalive=cfg.keepalive,
                      clean_start=True, connect_timeout=cfg.connect_timeout, debug=cfg.debug)


def _connect(cfg, version: str, client_id: str | None = None, manual_ack: bool = False):
    from iotctl.protocols.mqtt.client import Session

    session = Session(_config(cfg, version, client_id), manual_ack=manual_ack)
    try:
        session.connect()
    except BaseException:
        session.close()
        raise
    return session


def _versions(report: Report, cfg) -> tuple[list[str], object]:
    accepted: list[str] = []
    connack = None
    errors: list[IotctlError] = []
    for version in VERSIONS:
        t0 = time.perf_counter()
        try:
            session = _connect(cfg, version)
        except IotctlError as exc:
            errors.append(exc)
            if isinstance(exc, AuthError):
                report.fail("versions", f"MQTT {version}", _why(exc))
            else:
                report.warn("versions", f"MQTT {version}", f"not accepted: {_why(exc)}")
            continue
        ms = (time.perf_counter() - t0) * 1000
        accepted.append(version)
        report.ok("versions", f"MQTT {version}", f"accepted (connect {ms:.1f} ms)")
        if version == "5":
            connack = session.connack[2]
        session.close()
    if not accepted:
        # nothing let us in: the usual exit status, a refused login first (a broker
        # without MQTT 5 drops that connection before the older versions refuse the login)
        raise next((e for e in errors if isinstance(e, AuthError)), errors[0])
    return accepted, connack


def _limits(report: Report, props) -> None:
    for attr, name, default in LIMITS:
        value = getattr(props, attr, None)
        given = value is not None
        if not given:
            if default is None:
                if attr in ("MaximumPacketSize",):
                    report.add("limits", name, "no limit")
                continue
            value = default
        shown = ("yes" if value else "no") if name in BOOLEAN else value
        note = "" if given else " (default)"
        status = "warn" if (name in BOOLEAN and not value) or (name == "maximum QoS" and value < 2) else "info"
        report.add("limits", name, f"{shown}{note}", status)


def _identity(report: Report, cfg, version: str | None, timeout: float) -> None:
    """Mosquitto and others publish their version on $SYS (retained): read it, publish nothing."""
    if version is None:
        return
    from iotctl.protocols.mqtt.client import Subscription

    try:
        session = _connect(cfg, version)
    except IotctlError:
        return
    try:
        session.subscribe([Subscription("$SYS/broker/version", 0)], min(timeout, 2.0))
        msg = _await(session, lambda m: m.address == "$SYS/broker/version", min(timeout, 1.0))
        report.add("server", "identity", msg.payload.decode("utf-8", "replace") if msg else "(not published)")
    except IotctlError:
        report.add("server", "identity", "(not published)")
    finally:
        session.close()


def _await(session, wanted, timeout: float):
    """The first message `wanted(msg)` accepts within `timeout`, or None."""
    deadline = time.monotonic() + timeout
    while True:
        for msg in session._take():
            if wanted(msg):
                return msg
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if not session._pump(min(left, 0.2)):
            for msg in session._take():
                if wanted(msg):
                    return msg
            return None


# --------------------------------------------------------------------------- probing


def _why(exc: IotctlError) -> str:
    """An error's reason without the send driver's counts."""
    return (exc.why or exc.what).split("; sent ")[0]


class _Probe:
    def __init__(self, report: Report, cfg, version: str | None, max_payload: int, timeout: float):
        self.report, self.cfg, self.version = report, cfg, version or "5"
        self.max_payload, self.timeout = max_payload, timeout
        self.prefix = f"iotctl/check/{uuid.uuid4().hex[:10]}"
        self.session = None
        self.retained: list[str] = []

    def run(self) -> None:
        report = self.report
        try:
            for qos in (0, 1, 2):
                self._round_trips(qos)
            self._retain()
            self._wildcards()
            self._shared()
            self._largest_payload()
            self._longest_topic()
            self._longest_client_id()
        finally:
            self._cleanup()
            self._drop()
        report.add("probe", "prefix", f"{self.prefix}/ (cleaned up)")

    # ---------------------------------------------------------------- a listening session

    def _listen(self):
        """The probe's session, subscribed to prefix/# (connected again after a broker
        dropped it for a probe it did not allow)."""
        if self.session is None or not self.session.connected:
            self._drop()
            from iotctl.protocols.mqtt.client import Subscription

            session = _connect(self.cfg, self.version)
            session.subscribe([Subscription(f"{self.prefix}/#", 2)], self.timeout)
            self.session = session
        return self.session

    def _drop(self) -> None:
        if self.session is not None:
            try:
                self.session.close()
            except Exception:
                pass
            self.session = None

    def _publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        from iotctl.protocols.mqtt.client import Publisher
        from iotctl.send import run as send_run
        from iotctl.message import Message

        session = self._listen()
        send_run(Publisher(self.cfg, qos, retain, None, session=session), [Message("", topic, payload)],
                 "publish", self.timeout)

    def _echo(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> float | None:
        """Publish and wait for it to come back on prefix/#: the round trip in ms, or None."""
        session = self._listen()
        session._take()
        t0 = time.perf_counter()
        self._publish(topic, payload, qos, retain)
        msg = _await(session, lambda m: m.address == topic and m.payload == payload, self.timeout)
        return None if msg is None else (time.perf_counter() - t0) * 1000

    def _attempt(self, fn, *args):
        """fn(*args), or the error that ended it (the session is then dropped)."""
        try:
            return fn(*args), None
        except IotctlError as exc:
            self._drop()
            return None, exc

    # ---------------------------------------------------------------- the probes

    def _round_trips(self, qos: int, n: int = 5) -> None:
        times = []
        error = None
        for i in range(n):
            rtt, error = self._attempt(self._echo, f"{self.prefix}/qos{qos}", f"probe {i}".encode(), qos)
            if error is not None:
                break
            if rtt is not None:
                times.append(rtt)
        name = f"QoS {qos} round trip"
        if error is not None and not times:
            self.report.fail("probe", name, f"refused: {_why(error)}")
        elif len(times) < n:
            self.report.warn("probe", name, f"{len(times)}/{n} came back")
        else:
            times.sort()
            self.report.ok("probe", name, f"{n}/{n}, median {times[n // 2]:.1f} ms, max {times[-1]:.1f} ms")

    def _retain(self) -> None:
        topic = f"{self.prefix}/retain"
        _, error = self._attempt(self._publish, topic, b"kept", 1, True)
        if error is not None:
            self.report.fail("probe", "retain", f"refused: {_why(error)}")
            return
        self.retained.append(topic)
        from iotctl.protocols.mqtt.client import Subscription

        try:
            session = _connect(self.cfg, self.version)
        except IotctlError as exc:
            self.report.fail("probe", "retain", _why(exc))
            return
        try:
            session.subscribe([Subscription(topic, 0)], self.timeout)
            msg = _await(session, lambda m: m.address == topic, self.timeout)
        except IotctlError as exc:
            msg = None
            self.report.fail("probe", "retain", _why(exc))
            return
        finally:
            session.close()
        if msg is not None and msg.meta.get("retain"):
            self.report.ok("probe", "retain", "kept for a new subscriber")
        else:
            self.report.warn("probe", "retain", "accepted but not given to a new subscriber")

    def _subscribed_echo(self, filter_: str, topic: str) -> tuple[bool | None, str | None]:
        from iotctl.protocols.mqtt.client import Subscription

        try:
            session = _connect(self.cfg, self.version)
        except IotctlError as exc:
            return None, _why(exc)
        try:
            session.subscribe([Subscription(filter_, 1)], self.timeout)
            self._publish(topic, b"w", 1)
            return _await(session, lambda m: m.address == topic, self.timeout) is not None, None
        except IotctlError as exc:
            self._drop()
            return None, _why(exc)
        finally:
            session.close()

    def _wildcards(self) -> None:
        for name, filter_, topic in (("wildcard +", f"{self.prefix}/+/w", f"{self.prefix}/a/w"),
                                     ("wildcard #", f"{self.prefix}/h/#", f"{self.prefix}/h/a/b")):
            got, why = self._subscribed_echo(filter_, topic)
            if got:
                self.report.ok("probe", name, "matches")
            elif got is None:
                self.report.fail("probe", name, f"refused: {why}")
            else:
                self.report.warn("probe", name, "subscribed, nothing came")

    def _shared(self) -> None:
        topic = f"{self.prefix}/shared"
        got, why = self._subscribed_echo(f"$share/iotctl/{topic}", topic)
        if got:
            self.report.ok("probe", "shared subscription", "$share/GROUP/... delivers")
        elif got is None:
            self.report.fail("probe", "shared subscription", f"refused: {why}")
        else:
            self.report.warn("probe", "shared subscription", "subscribed, nothing came")

    def _search(self, fits, high: int) -> tuple[int, bool]:
        """The largest n in [0, high] for which fits(n) (assumed monotonic), and whether
        `high` itself fits (then there may be no limit below the probe's maximum)."""
        if fits(high):
            return high, True
        low, bad = 0, high
        while bad - low > max(1, low // 100):  # within 1 %
            mid = (low + bad) // 2
            if fits(mid):
                low = mid
            else:
                bad = mid
        return low, False

    def _largest_payload(self) -> None:
        topic = f"{self.prefix}/size"

        def fits(n: int) -> bool:
            rtt, error = self._attempt(self._echo, topic, b"p" * n, 1)
            return error is None and rtt is not None

        started = time.monotonic()
        size, unbounded = self._search(fits, self.max_payload)
        spent = time.monotonic() - started
        if unbounded:
            self.report.ok("probe", "largest payload", f"at least {size} bytes (--max-payload) ({spent:.1f} s)")
        else:
            self.report.warn("probe", "largest payload", f"{size} bytes (within 1 %)")

    def _longest_topic(self) -> None:
        base = f"{self.prefix}/t/"

        def fits(n: int) -> bool:
            topic = base + "t" * n
            rtt, error = self._attempt(self._echo, topic, b"t", 1)
            return error is None and rtt is not None

        extra, unbounded = self._search(fits, 65535 - len(base) - 64)
        total = len(base) + extra
        if unbounded:
            self.report.ok("probe", "longest topic", f"{total} bytes (near the protocol's 65,535)")
        else:
            self.report.warn("probe", "longest topic", f"{total} bytes")

    def _longest_client_id(self) -> None:
        def fits(n: int) -> bool:
            try:
                _connect(self.cfg, self.version, client_id="c" * max(1, n)).close()
                return True
            except IotctlError:
                return False

        n, unbounded = self._search(fits, 65535)
        self.report.add("probe", "longest client id", f"{n} bytes" + (" (the protocol's limit)" if unbounded else ""),
                        "ok" if n >= 23 else "warn")

    def _cleanup(self) -> None:
        for topic in self.retained:
            try:
                self._publish(topic, b"", 1, True)
            except IotctlError:
                pass

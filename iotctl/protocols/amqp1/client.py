"""The one module that imports python-qpid-proton (AMQP 1.0).

Proton is used as a protocol engine only: a `Transport` turns bytes into frames and
events, a `Collector` hands the events out. The socket, TLS (Python's ssl, the same
SSLContext as every other group: --cafile/--cert/--key/--insecure/--alpn) and the
waiting are ours, on the main thread, like the other synchronous protocols: every
wait is bounded (`pump(wait)`), so -W and Ctrl-C work when the peer freezes, and
proton's reactor and its threads are never started.

A `Session` is one AMQP connection with one session. `Receiver` (the receive
driver's source) attaches one receiver link per address and grants credit; a message
is accepted only once it has been written (`ack`), released by `nack` and when the
run ends unwritten. `Sender` (the send driver's sink) attaches a sender link per
address; the broker's outcome of each delivery (accepted, rejected, released,
modified) settles it.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import time
import uuid

# the hot paths (a delivery in, a delivery out, a message decoded) call proton's C API
# through its own cffi binding, as proton's classes do, without a wrapper object per call
from cproton import (PN_BINARY, PN_DELIVERY, isnull, pn_collector_peek, pn_collector_pop, pn_data_get_binary,
                     pn_data_next, pn_data_rewind, pn_data_type, pn_delivery, pn_delivery_aborted,
                     pn_delivery_link, pn_delivery_partial, pn_delivery_pending, pn_delivery_readable,
                     pn_delivery_remote_state, pn_delivery_settle, pn_delivery_settled, pn_delivery_tag,
                     pn_delivery_update, pn_event_delivery, pn_event_type, pn_link_advance, pn_link_recv,
                     pn_link_send, pn_message_annotations, pn_message_body, pn_message_clear, pn_message_decode, pn_message_error,
                     pn_error_text, pn_message_get_address, pn_message_get_content_encoding,
                     pn_message_get_content_type, pn_message_get_correlation_id, pn_message_get_creation_time,
                     pn_message_get_delivery_count, pn_message_get_expiry_time, pn_message_get_group_id,
                     pn_message_get_group_sequence, pn_message_get_id, pn_message_get_priority,
                     pn_message_get_reply_to, pn_message_get_reply_to_group_id, pn_message_get_subject,
                     pn_message_get_ttl, pn_message_get_user_id, pn_message_is_durable, pn_message_is_inferred,
                     pn_message_properties)
from proton import (Collector, Connection as PnConnection, Data, Delivery, Endpoint as PnEndpoint, Event, Link,
                    Message as PnMessage, Terminus, Transport, symbol)

from iotctl import receive, send
from iotctl.errors import (AuthError, ConnectError, ConnectionLost, IotctlError, PeerError, TLSError,
                           TimeoutError_, UsageError, from_os_error)
from iotctl.message import Message, bytes_text, foreign
from iotctl.protocols.amqp1.config import Amqp1Config, Props
from iotctl.message import meta_bytes
from iotctl.protocols.amqp1.envelope import BODY_KINDS
from iotctl.trace import route_logs

SASL_CHOICES = ("auto", "plain", "anonymous", "external", "none")
_ACCEPTED, _REJECTED, _RELEASED, _MODIFIED = (Delivery.ACCEPTED, Delivery.REJECTED, Delivery.RELEASED,
                                             Delivery.MODIFIED)
_LOCAL_ACTIVE, _REMOTE_CLOSED = PnEndpoint.LOCAL_ACTIVE, PnEndpoint.REMOTE_CLOSED
_HANDLED = frozenset(e.number for e in (Event.CONNECTION_REMOTE_OPEN, Event.LINK_REMOTE_OPEN, Event.LINK_REMOTE_CLOSE,
                                        Event.LINK_REMOTE_DETACH,
                                        Event.SESSION_REMOTE_CLOSE, Event.CONNECTION_REMOTE_CLOSE,
                                        Event.TRANSPORT_CLOSED))
_READ_SIZE = 65536
_BUSY_OUTPUT = 1 << 20  # bytes of encoded frames not yet written that make the sender wait


# --------------------------------------------------------------------------- the connection


class Session:
    """One AMQP 1.0 connection and one session on it, driven by the caller: `pump(wait)`
    does socket I/O for at most `wait` seconds and then handles proton's events.
    `failure` is set once the connection is gone; `error(what)` is its IotctlError."""

    def __init__(self, cfg: Amqp1Config):
        self.cfg = cfg
        self.sock = None
        self.conn = self.transport = self.collector = self.ssn = None
        self.opened = False
        self.closing = False
        self.failure: tuple[str, str, str | None] | None = None
        self.link_states: dict[str, object] = {}  # link name -> None (attaching), True, or an IotctlError
        self.links: list = []
        self.detached: set = set()  # names of links the peer detached (or answered our detach)
        self.on_delivery = None  # the owner's handler of DELIVERY events
        self._eof = False
        self._io_error: BaseException | None = None
        self._log = route_logs(("iotctl.amqp1",), cfg.debug, "amqp1",
                               secrets=(cfg.endpoint.password,))[0]

    @property
    def display(self) -> str:
        return self.cfg.endpoint.display

    # ------------------------------------------------------------------ opening

    def connect(self) -> None:
        cfg, ep = self.cfg, self.cfg.endpoint
        what = f"cannot connect to {ep.display}"
        mechs = self._mechanisms()
        deadline = time.monotonic() + cfg.connect_timeout
        try:
            sock = socket.create_connection((ep.host, ep.port), timeout=cfg.connect_timeout)
        except OSError as exc:
            raise from_os_error(what, exc) from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ep.tls:
                context = ep.ssl_context()
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                sock = context.wrap_socket(sock, server_hostname=ep.host)
            sock.setblocking(False)
        except IotctlError:
            sock.close()
            raise
        except (OSError, ValueError) as exc:
            sock.close()
            raise from_os_error(what, exc) from None
        self.sock = sock
        self._engine(mechs)
        self.wait(lambda: self.opened, max(0.0, deadline - time.monotonic()), what,
                  f"no answer to the AMQP open within {cfg.connect_timeout:g} s")

    def _mechanisms(self) -> str | None:
        ep, choice = self.cfg.endpoint, self.cfg.sasl
        if choice == "none":
            return None
        if choice == "plain":
            if ep.username is None:
                raise UsageError("--sasl plain", "needs -u/--username (and -P/--password)")
            return "PLAIN"
        if choice == "anonymous":
            return "ANONYMOUS"
        if choice == "external":
            if not ep.tls or not ep.cert:
                raise UsageError("--sasl external", "needs TLS with a client certificate (--cert/--key)")
            return "EXTERNAL"
        if ep.username is not None:
            return "PLAIN"
        return "EXTERNAL ANONYMOUS" if ep.tls and ep.cert else "ANONYMOUS"

    def _engine(self, mechs: str | None) -> None:
        cfg, ep = self.cfg, self.cfg.endpoint
        conn = PnConnection()
        conn.container = cfg.container_id or f"iotctl-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        conn.hostname = f"vhost:{cfg.vhost}" if cfg.vhost else ep.host
        if ep.username is not None and mechs == "PLAIN":
            conn.user = ep.username
            conn.password = ep.password or ""
        transport = Transport()
        if cfg.heartbeat:
            transport.idle_timeout = cfg.heartbeat
        if mechs is not None:
            sasl = transport.sasl()
            sasl.allowed_mechs(mechs)
            sasl.allow_insecure_mechs = True  # TLS is Python's: proton cannot see it
        if cfg.debug:
            log = self._log
            transport.tracer = lambda _transport, text: log.debug(text)
            transport.trace(Transport.TRACE_FRM)
        collector = Collector()
        conn.collect(collector)
        transport.bind(conn)
        conn.open()
        ssn = conn.session()
        ssn.open()
        self.conn, self.transport, self.collector, self.ssn = conn, transport, collector, ssn

    def wait(self, done, timeout: float, what: str, late: str) -> None:
        """Pump until `done()`; the connection's failure or a TimeoutError_(what, late)."""
        end = time.monotonic() + timeout
        while not done():
            if self.failure is not None:
                raise self.error(what)
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError_(what, late)
            self.pump(min(left, 1.0))
        if self.failure is not None and not done():
            raise self.error(what)

    def attach(self, link, timeout: float, what: str) -> None:
        """Open `link` and wait for the peer's attach (a refusal raises its error)."""
        name = link.name
        self.link_states[name] = None
        self.links.append(link)
        link.open()
        self.wait(lambda: self.link_states.get(name) is not None, timeout, what,
                  f"the peer did not attach the link within {timeout:g} s")
        state = self.link_states[name]
        if isinstance(state, IotctlError):
            raise state

    # ------------------------------------------------------------------ the loop

    def pump(self, wait: float) -> None:
        """Socket I/O for at most `wait` seconds, then the events."""
        if self.sock is not None:
            self._io(wait)
        self._events()

    def flush(self) -> None:
        """Write what proton has (acknowledgements, credit) without waiting."""
        if self.sock is not None:
            self._write()

    def _io(self, wait: float) -> None:
        transport, sock = self.transport, self.sock
        now = time.monotonic()
        tick = transport.tick(now)
        if tick:
            wait = max(0.0, min(wait, tick - now))
        self._write()
        if self.sock is None:
            return
        readable = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        if not readable:
            try:
                r, w, _ = select.select([sock], [sock] if transport.pending() > 0 else [], [], wait)
            except (OSError, ValueError) as exc:
                self._io_failed(exc)
                return
            readable = bool(r)
            if w:
                self._write()
        if readable:
            self._read()
            self._write()  # what reading made: flow, dispositions, empty frames

    def _write(self) -> None:
        transport, sock = self.transport, self.sock
        while True:
            n = transport.pending()
            if n <= 0:
                return
            try:
                sent = sock.send(transport.peek(min(n, 1 << 20)))
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return
            except OSError as exc:
                self._io_failed(exc)
                return
            transport.pop(sent)
            if sent < n:
                return

    def _read(self) -> None:
        transport, sock = self.transport, self.sock
        for _ in range(64):
            capacity = transport.capacity()
            if capacity <= 0:
                return
            try:
                data = sock.recv(min(capacity, _READ_SIZE))
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except OSError as exc:
                self._io_failed(exc)
                return
            if not data:
                self._eof = True
                transport.close_tail()
                return
            transport.push(data)

    def _io_failed(self, exc: BaseException) -> None:
        self._io_error = exc
        try:
            self.transport.close_tail()
            self.transport.close_head()
        except Exception:
            pass

    # ------------------------------------------------------------------ events

    def _events(self) -> None:
        col = self.collector._impl
        on_delivery = self.on_delivery
        while True:
            raw = pn_collector_peek(col)
            if isnull(raw):
                return
            number = pn_event_type(raw)
            if number == PN_DELIVERY:  # the hot path: no Event object
                if on_delivery is not None:
                    on_delivery(pn_event_delivery(raw))
                pn_collector_pop(col)
                continue
            if number not in _HANDLED:  # link flow, transport, local state changes...
                pn_collector_pop(col)
                continue
            event = Event.wrap(raw)
            kind = event.type
            if kind is Event.CONNECTION_REMOTE_OPEN:
                self.opened = True
            elif kind is Event.LINK_REMOTE_OPEN:
                self._link_opened(event.link)
            elif kind is Event.LINK_REMOTE_CLOSE or kind is Event.LINK_REMOTE_DETACH:
                self._link_closed(event.link)
            elif kind is Event.SESSION_REMOTE_CLOSE:
                if not self.closing:
                    self._fail_by(event.session.remote_condition, "the broker ended the session")
            elif kind is Event.CONNECTION_REMOTE_CLOSE:
                if not self.closing:
                    self._fail_by(self.conn.remote_condition, "the broker closed the connection")
            elif kind is Event.TRANSPORT_CLOSED:
                if not self.closing:
                    self._transport_closed()
            pn_collector_pop(col)

    def _link_opened(self, link) -> None:
        terminus = link.remote_source if link.is_receiver else link.remote_target
        if terminus.type == Terminus.UNSPECIFIED:
            return  # a refusal (a null source or target): its detach, with the reason, follows
        if self.link_states.get(link.name) is None:
            self.link_states[link.name] = True

    def _link_closed(self, link) -> None:
        self.detached.add(link.name)
        if not link.state & _LOCAL_ACTIVE:
            return  # we closed it
        cond = link.remote_condition
        role = "source" if link.is_receiver else "target"
        address = (link.source if link.is_receiver else link.target).address
        what = f"link to {address!r}" if not link.is_receiver else f"link from {address!r}"
        if cond is not None:
            kind, why, hint = _classify(cond, f"the broker refused the {role}" if self.link_states.get(link.name)
                                        is None else "the broker detached the link")
        else:
            kind, why, hint = "peer", f"the broker detached the link ({role} {address!r})", None
        error = _ERRORS["peer" if kind == "lost" else kind](what, why, hint=hint)
        self.link_states[link.name] = error
        link.close()

    def _fail_by(self, cond, plain: str) -> None:
        if self.failure is not None:
            return
        if cond is None:
            self.failure = ("lost", plain, None)
        else:
            self.failure = _classify(cond, plain)

    def _transport_closed(self) -> None:
        if self.failure is not None:
            return
        exc = self._io_error
        cond = self.transport.condition
        if isinstance(exc, ssl.SSLError):
            self.failure = ("tls", f"TLS failed: {exc.reason or exc}", None)
        elif exc is not None:
            self.failure = ("lost", f"connection lost ({getattr(exc, 'strerror', None) or exc})", None)
        elif cond is not None and cond.name == "amqp:unauthorized-access":
            self.failure = _classify(cond, "")
        elif cond is not None and cond.name == "amqp:resource-limit-exceeded":
            self.failure = ("lost", f"nothing from the peer within the idle timeout ({cond.description})",
                            "the peer froze or the network dropped; --heartbeat sets the timeout")
        elif self._eof:
            self.failure = ("lost", "the peer closed the connection"
                            + ("" if self.opened else " before the AMQP open (not an AMQP 1.0 port?)"), None)
        elif cond is not None:
            kind, why, hint = _classify(cond, "")
            self.failure = ("connect" if not self.opened else kind, why, hint)
        else:
            self.failure = ("lost", "connection lost", None)

    def error(self, what: str) -> IotctlError:
        kind, why, hint = self.failure or ("lost", "connection lost", None)
        if not self.opened:
            what = f"cannot connect to {self.display}"
            if kind == "lost":
                kind = "connect"
        return _ERRORS[kind](what, why, hint=hint)

    # ------------------------------------------------------------------ closing

    def close(self, wait: float = 2.0) -> None:
        """Detach, end and close, wait (at most `wait` s) for the peer's close, then
        close the socket."""
        if self.sock is None:
            return
        try:
            if self.failure is None and self.opened:
                self.closing = True
                end = time.monotonic() + wait
                open_links = [link for link in self.links if link.state & _LOCAL_ACTIVE]
                for link in open_links:
                    link.close()
                # the links' detach answered first: a broker answers it after what came
                # before it on the link (RabbitMQ 3.10 closing at once lost the last
                # accepts: hundreds of printed messages came back). RabbitMQ answers a
                # closing detach with a plain one: either ends the wait.
                while self.failure is None and not self.transport.closed and time.monotonic() < end:
                    if all(link.name in self.detached for link in open_links):
                        break
                    self.pump(min(end - time.monotonic(), 0.5))
                self.ssn.close()
                self.conn.close()
                while self.failure is None and not self.transport.closed:
                    left = end - time.monotonic()
                    if left <= 0 or (self.conn.state & _REMOTE_CLOSED and self.transport.pending() <= 0):
                        break
                    self.pump(min(left, 0.5))
        except Exception:  # closing is best effort
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


_ERRORS = {"auth": AuthError, "peer": PeerError, "lost": ConnectionLost, "connect": ConnectError,
           "tls": TLSError, "timeout": TimeoutError_}


def _classify(cond, plain: str) -> tuple[str, str, str | None]:
    """(kind, why, hint) for an AMQP error condition."""
    name, desc = cond.name or "", cond.description or ""
    text = name + (f": {desc}" if desc else "")
    why = f"{plain}: {text}" if plain else text
    if name == "amqp:unauthorized-access":
        if "worthy" in desc.lower() or "mech=none" in desc.lower():
            return ("auth", f"no SASL mechanism in common with the peer ({text})",
                    "choose one with --sasl plain|anonymous|external (PLAIN needs -u/-P)")
        if desc.startswith("Authentication failed"):
            return ("auth", f"the peer refused the login ({text})",
                    "check -u/--username and -P/--password (or --sasl)")
        return "auth", why, None
    if name in ("amqp:resource-limit-exceeded",) and "idle" in desc:
        return "lost", why, None
    return "peer", why, None


# --------------------------------------------------------------------------- values


def _plain(value):
    """An AMQP value decoded by proton as something JSON can hold."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)  # ulong, timestamp, ...
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)  # symbol, char
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes_text(bytes(value))
    if isinstance(value, dict):
        return {str(_plain(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    described = getattr(value, "descriptor", None)
    if described is not None and hasattr(value, "value"):
        return {"descriptor": _plain(described), "value": _plain(value.value)}
    return str(value)


def _section(data) -> object:
    """The value of a decoded section (a pn_data_t), or None when it is empty."""
    pn_data_rewind(data)
    if not pn_data_next(data):
        return None
    return Data(data).get_object()


def decode(data: bytes, decoder: PnMessage | None = None) -> tuple[bytes, str | None, dict]:
    """An encoded AMQP message as (payload, content type, meta) (envelope.py has the
    meta's form)."""
    import json

    holder = decoder if decoder is not None else PnMessage()  # keeps the C message alive
    m = holder._msg
    pn_message_clear(m)  # decoding leaves the sections a message lacks as they were
    err = pn_message_decode(m, data)
    if err < 0:
        raise ValueError(pn_error_text(pn_message_error(m)))
    # Message.content_type/content_encoding give symbol("None") when absent (proton 0.40):
    # every field is read from the C message
    content_type = pn_message_get_content_type(m)
    inferred = pn_message_is_inferred(m)
    section = pn_message_body(m)
    pn_data_rewind(section)
    if not pn_data_next(section):
        payload, kind = b"", "data"
    elif pn_data_type(section) == PN_BINARY:
        payload, kind = bytes(pn_data_get_binary(section)), ("data" if inferred else "binary")
    else:
        body = Data(section).get_object()
        if isinstance(body, str):
            payload, kind = str(body).encode("utf-8"), "string"
        else:
            kind = "sequence" if (inferred and isinstance(body, list)) else "value"
            payload = json.dumps(_plain(body), ensure_ascii=False).encode("utf-8")
            if content_type is None:
                content_type = "application/json"
    meta: dict = {"durable": pn_message_is_durable(m)}
    priority = pn_message_get_priority(m)
    if priority != 4:
        meta["priority"] = priority
    ttl = pn_message_get_ttl(m)
    if ttl:
        meta["ttl"] = ttl
    count = pn_message_get_delivery_count(m)
    if count:
        meta["delivery_count"] = count  # delivered before: redelivered
    if kind != "data":
        meta["body"] = kind
    props = {}
    for key, value in (("message_id", pn_message_get_id(m)), ("user_id", pn_message_get_user_id(m) or None),
                       ("to", pn_message_get_address(m)), ("subject", pn_message_get_subject(m)),
                       ("reply_to", pn_message_get_reply_to(m)),
                       ("correlation_id", pn_message_get_correlation_id(m)),
                       ("content_encoding", pn_message_get_content_encoding(m)),
                       ("absolute_expiry_time", pn_message_get_expiry_time(m) or None),
                       ("creation_time", pn_message_get_creation_time(m) or None),
                       ("group_id", pn_message_get_group_id(m)),
                       ("group_sequence", pn_message_get_group_sequence(m) or None),
                       ("reply_to_group_id", pn_message_get_reply_to_group_id(m))):
        if value is not None and value != "":
            props[key] = _plain(value)
    if props:
        meta["properties"] = props
    headers = _section(pn_message_properties(m))
    if headers:
        meta["headers"] = _plain(headers)
    annotations = _section(pn_message_annotations(m))
    if annotations:
        meta["annotations"] = _plain(annotations)
    return payload, content_type, meta


# --------------------------------------------------------------------------- receiving


class Receiver(receive.Receiver):
    """Receiver links on one session as a source: entered, it connects and attaches a
    link per address with `credit`; a message is accepted (`ack`) once written, and at
    most `credit` per link are unsettled at a time. With `at_most_once` the broker sends
    pre-settled (nothing is acknowledged; what is in flight at the end is lost). After a
    lost connection it connects and attaches again: every unaccepted message comes
    back from the queue."""

    can_reconnect = True

    def __init__(self, cfg: Amqp1Config, addresses: tuple[str, ...], credit: int = 1000, at_most_once: bool = False,
                 count: int | None = None):
        self.cfg, self.addresses, self.credit = cfg, addresses, credit
        self.at_most_once, self.count = at_most_once, count
        self.delivery = "at-most-once" if at_most_once else "at-least-once"
        self.session: Session | None = None
        self._links: list = []
        self._held: list[dict] = []   # per link: id -> unsettled delivery
        self._incoming: list = []     # (link index, delivery, bytes) read, not yet handed out
        self._taken = 0               # messages handed out (for the -C credit cap)
        self._serial = 0              # the held deliveries' keys
        self._index: dict = {}        # pn_link_t -> link index
        self._decoder = None

    @property
    def where(self) -> str:
        return f"{self.cfg.endpoint.display} ({', '.join(self.addresses)})"

    def open(self) -> None:
        session = Session(self.cfg)
        try:
            session.connect()
            session.on_delivery = self._on_delivery
            links = []
            for i, address in enumerate(self.addresses):
                link = session.ssn.receiver(f"iotctl-receive-{i}-{uuid.uuid4().hex[:8]}")
                link.source.address = address
                link.snd_settle_mode = Link.SND_SETTLED if self.at_most_once else Link.SND_UNSETTLED
                link.rcv_settle_mode = Link.RCV_FIRST
                session.attach(link, self.cfg.connect_timeout, f"cannot receive from {address!r}")
                links.append(link)
        except BaseException:
            session.abort()
            raise
        self.session, self._links = session, links
        self._index = {link._impl: i for i, link in enumerate(links)}
        self._held = [{} for _ in links]
        self._incoming = []
        self._decoder = PnMessage()
        for i in range(len(links)):
            self._grant(i)
        session.flush()

    def close(self) -> None:
        session = self.session
        if session is None:
            return
        try:
            if session.failure is None and session.sock is not None:
                # nothing unwritten is lost: it goes back to the queue at once
                for _, delivery, _ in self._incoming:
                    if not pn_delivery_settled(delivery):
                        pn_delivery_update(delivery, _RELEASED)
                        pn_delivery_settle(delivery)
                for held in self._held:
                    for delivery in held.values():
                        pn_delivery_update(delivery, _RELEASED)
                        pn_delivery_settle(delivery)
        except Exception:
            pass
        self._incoming = []
        self._held = [{} for _ in self._links]
        session.close()

    def reconnect(self) -> None:
        old = self.session
        if old is not None:
            old.abort()
        self.session = None
        self.open()

    def _on_delivery(self, delivery) -> None:
        """A DELIVERY event (a raw pn_delivery_t): a whole message is read off its link."""
        if not pn_delivery_readable(delivery) or pn_delivery_partial(delivery):
            if pn_delivery_aborted(delivery):
                pn_delivery_settle(delivery)
            return
        link = pn_delivery_link(delivery)
        _, data = pn_link_recv(link, pn_delivery_pending(delivery))
        pn_link_advance(link)
        self._incoming.append((self._index[link], delivery, data))

    def _grant(self, i: int) -> None:
        """Top the link's credit up: at most `credit` granted or unsettled at once, and
        with -C no more than the messages still wanted."""
        link = self._links[i]
        limit = self.credit
        if self.count is not None:
            limit = min(limit, max(0, self.count - self._taken))
        want = limit - link.credit - len(self._held[i])
        if want > 0 and (link.credit == 0 or link.credit <= limit // 2):
            link.flow(want)

    def poll(self, wait):
        session = self.session
        if not self._incoming and session.failure is None:
            session.pump(1.0 if wait is None else wait)
        for link in self._links:
            state = session.link_states.get(link.name)
            if isinstance(state, IotctlError) and not self._incoming:
                raise state
        if not self._incoming:
            if session.failure is not None:
                raise session.error("receive")
            return []
        incoming, self._incoming = self._incoming, []
        decoder = self._decoder
        out = []
        held = self._held
        at_most_once = self.at_most_once
        serial = self._serial
        for i, delivery, data in incoming:
            try:
                payload, content_type, meta = decode(data, decoder)
            except Exception as exc:  # a message proton cannot decode: shown as raw bytes
                payload, content_type, meta = bytes(data), None, {"body": "undecodable", "error": str(exc)}
            msg = Message("amqp1", self.addresses[i], payload, content_type, meta)
            if at_most_once or pn_delivery_settled(delivery):
                if not pn_delivery_settled(delivery):
                    pn_delivery_update(delivery, _ACCEPTED)
                pn_delivery_settle(delivery)
            else:
                serial += 1
                held[i][serial] = delivery
                msg.token = (session, i, serial)
            out.append(msg)
        self._serial = serial
        self._taken += len(out)
        for i in range(len(self._links)):
            self._grant(i)
        session.flush()
        return out

    def _settle(self, messages, outcome) -> None:
        session = self.session
        if session is None:
            return
        held = self._held
        touched = set()
        for msg in messages:
            token = msg.token
            if token is None or token[0] is not session:
                continue
            msg.token = None
            delivery = held[token[1]].pop(token[2], None)
            if delivery is not None:
                pn_delivery_update(delivery, outcome)
                pn_delivery_settle(delivery)
                touched.add(token[1])
        if touched and session.failure is None:
            for i in touched:
                self._grant(i)
            session.flush()

    def ack(self, messages) -> None:
        self._settle(messages, _ACCEPTED)

    def nack(self, messages) -> None:
        self._settle(messages, _RELEASED)


# --------------------------------------------------------------------------- sending


def _data_section(payload: bytes) -> bytes:
    """A data section holding `payload` (AMQP 1.0 3.2.6: described by 0x75, vbin8 or vbin32)."""
    n = len(payload)
    if n < 256:
        return b"\x00\x53\x75\xa0" + bytes((n,)) + payload
    return b"\x00\x53\x75\xb0" + n.to_bytes(4, "big") + payload


class Sender(send.Sender):
    """Sender links on one session as a sink: one link per address (the fixed address,
    or each message's own), deliveries unsettled until the broker's outcome (accepted:
    acknowledged; rejected, released, modified: refused, with the reason), or
    pre-settled with `at_most_once` (nothing is acknowledged; closing waits for the
    broker's close, which comes after everything before it was taken). A peer that
    gives no credit, or reads nothing, for `timeout` seconds is exit 5."""

    protocol = "amqp1"
    MAX_LINKS = 64

    def __init__(self, cfg: Amqp1Config, address: str | None = None, props: Props | None = None,
                 at_most_once: bool = False, window: int = 1000, timeout: float = 10.0):
        super().__init__()
        self.cfg, self.address, self.props = cfg, address, props or Props()
        self.at_most_once, self.timeout = at_most_once, timeout
        self.window = None if at_most_once else window
        self.session: Session | None = None
        self._links: dict = {}
        self._last = None
        self._tag = 0
        self._stalled: float | None = None
        self._prefix: bytes | None = None  # the encoded sections before the body, for plain messages
        self._pm = None

    @property
    def where(self) -> str:
        return self.cfg.endpoint.display

    def open(self) -> None:
        session = Session(self.cfg)
        try:
            session.connect()
            session.on_delivery = self._on_delivery
            self.session = session
            self._links = {}
            self._pm = PnMessage()
            self._prefix = self._plain_prefix()
            if self.address is not None:
                self._link(self.address)
        except BaseException:
            session.abort()
            self.session = None
            raise

    def close(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            # pre-settled messages are only known to have arrived once the broker closed
            session.close(wait=max(2.0, self.timeout) if self.at_most_once else 2.0)

    def _link(self, address: str):
        link = self._links.get(address)
        if link is not None:
            return link
        session = self.session
        if len(self._links) >= self.MAX_LINKS:
            oldest = next(iter(self._links))
            if not self._links[oldest].unsettled:
                self._links.pop(oldest).close()
        link = session.ssn.sender(f"iotctl-send-{len(session.links)}-{uuid.uuid4().hex[:8]}")
        link.target.address = address
        link.snd_settle_mode = Link.SND_SETTLED if self.at_most_once else Link.SND_UNSETTLED
        session.attach(link, self.cfg.connect_timeout, f"cannot send to {address!r}")
        self._links[address] = link
        return link

    # ------------------------------------------------------------------ messages

    def _plain_prefix(self) -> bytes | None:
        """The encoded sections of a message composed on the command line, all but
        its body (the options are the same for every one), when the body is a data
        section: the hot path adds only the payload's data section."""
        p = self.props
        if (p.body or "data") != "data":
            return None
        m = self._pm
        m.clear()
        self._apply(m, self._fields(None))
        m.body = None
        return m.encode()

    def composed(self, msg: Message) -> Message:
        """As a capture has it: the command line's properties, headers and annotations
        go with a message into --failed, so `--replay FILE` alone sends it the same way."""
        p = self.props
        meta = dict(msg.meta) if isinstance(msg.meta, dict) else {}
        props = {key: getattr(p, key) for key in ("message_id", "subject", "reply_to", "to", "content_encoding")
                 if getattr(p, key) is not None}
        if p.correlation_id is not None:
            corr = p.correlation_id
            props["correlation_id"] = bytes_text(corr) if isinstance(corr, bytes) else corr
        if props:
            meta.setdefault("properties", props)
        if p.durable:
            meta.setdefault("durable", True)
        for key in ("priority", "ttl", "body"):
            if getattr(p, key) is not None:
                meta.setdefault(key, getattr(p, key))
        if p.headers:
            meta.setdefault("headers", dict(p.headers))
        if p.annotations:
            meta.setdefault("annotations", dict(p.annotations))
        return msg.copy(protocol=self.protocol, meta=meta, content_type=msg.content_type or p.content_type)

    def _fields(self, msg: Message | None) -> dict:
        """The message's fields: what it brings (an AMQP 1.0 capture's own meta, or what
        crosses from another protocol: content type, headers, correlation id, reply-to),
        then the command line's options over them. The one place a foreign message is
        adopted."""
        fields: dict = {}
        headers: dict = {}
        annotations: dict = {}
        if msg is not None:
            found = foreign(msg, "amqp1")
            if found is None:
                meta = msg.meta if isinstance(msg.meta, dict) else {}
                props = meta.get("properties") if isinstance(meta.get("properties"), dict) else {}
                for key in ("message_id", "subject", "reply_to", "to", "content_encoding", "group_id",
                            "reply_to_group_id"):
                    if isinstance(props.get(key), str) or (key == "message_id" and _is_int(props.get(key))):
                        fields[key] = props[key]
                corr = props.get("correlation_id")
                if isinstance(corr, str):
                    fields["correlation_id"] = _id_value(meta_bytes(corr))
                elif _is_int(corr):
                    fields["correlation_id"] = corr
                if isinstance(meta.get("durable"), bool):
                    fields["durable"] = meta["durable"]
                for key in ("priority", "ttl"):
                    if _is_int(meta.get(key)):
                        fields[key] = meta[key]
                if meta.get("body") in BODY_KINDS:
                    fields["body"] = meta["body"]
                if isinstance(meta.get("headers"), dict):
                    headers.update(meta["headers"])
                if isinstance(meta.get("annotations"), dict):
                    annotations.update(meta["annotations"])
                if msg.content_type:
                    fields["content_type"] = msg.content_type
            else:
                if found.content_type:
                    fields["content_type"] = found.content_type
                headers.update(found.headers)
                if found.correlation_id is not None:
                    fields["correlation_id"] = _id_value(found.correlation_id)
                if found.reply_to:
                    fields["reply_to"] = found.reply_to
        p = self.props
        for key in ("content_type", "content_encoding", "message_id", "correlation_id", "subject", "reply_to", "to",
                    "priority", "ttl", "body"):
            value = getattr(p, key)
            if value is not None:
                fields[key] = value
        if p.durable:
            fields["durable"] = True
        headers.update(p.headers)
        annotations.update(p.annotations)
        fields["headers"] = headers
        fields["annotations"] = annotations
        return fields

    @staticmethod
    def _apply(m: PnMessage, f: dict) -> None:
        for key in ("content_type", "content_encoding", "subject", "reply_to", "to", "group_id", "reply_to_group_id",
                    "message_id", "correlation_id"):
            if isinstance(f.get(key), str) and "\x00" in f[key]:
                # proton passes these as C strings: it would cut the text at the NUL
                raise UsageError(f"cannot send the {key.replace('_', ' ')} {f[key]!r}", "it contains a NUL character")
        if f.get("content_type"):
            m.content_type = f["content_type"]
        if f.get("content_encoding"):
            m.content_encoding = f["content_encoding"]
        if f.get("message_id") is not None:
            m.id = f["message_id"]
        if f.get("correlation_id") is not None:
            m.correlation_id = f["correlation_id"]
        for key, attr in (("subject", "subject"), ("reply_to", "reply_to"), ("to", "address"),
                          ("group_id", "group_id"), ("reply_to_group_id", "reply_to_group_id")):
            if f.get(key):
                setattr(m, attr, f[key])
        if f.get("durable"):
            m.durable = True
        if f.get("priority") is not None:
            m.priority = f["priority"]
        if f.get("ttl"):
            m.ttl = f["ttl"] / 1000
        if f["headers"]:
            m.properties = {str(k): _simple(v) for k, v in f["headers"].items()}
        if f["annotations"]:
            m.annotations = {symbol(str(k)): _simple(v) for k, v in f["annotations"].items()}

    def _encode(self, msg: Message) -> bytes:
        if self._prefix is not None and not msg.protocol and not msg.meta and not msg.content_type:
            return self._prefix + _data_section(msg.payload)
        fields = self._fields(msg)
        m = self._pm
        m.clear()
        self._apply(m, fields)
        kind = fields.get("body") or "data"
        payload = msg.payload
        if kind == "data":
            m.body = None
            return m.encode() + _data_section(payload)
        if kind == "string":
            try:
                m.body = payload.decode("utf-8")
            except UnicodeDecodeError:
                raise UsageError("--body string", "the payload is not UTF-8 text") from None
        elif kind in ("value", "sequence"):
            import json

            try:
                value = json.loads(payload) if payload.strip() else None
            except ValueError as exc:
                raise UsageError(f"--body {kind}", f"the payload is not JSON ({exc})") from None
            if kind == "sequence" and not isinstance(value, list):
                raise UsageError("--body sequence", "the payload is not a JSON array")
            m.body = value
            m.inferred = kind == "sequence"
        else:  # binary: an AMQP value of type binary
            m.body = payload
            m.inferred = False
        try:
            return m.encode()
        except (OverflowError, ValueError, TypeError) as exc:  # e.g. an integer beyond 64 bits
            raise UsageError(f"--body {kind}", f"the payload cannot be sent as an AMQP value ({exc})") from None

    def send(self, msg: Message):
        address = msg.address or self.address
        if not address:
            raise UsageError("no address", "give ADDRESS (a captured message without one cannot be sent)")
        link = self._last if (self._last is not None and address == self.address) else self._link(address)
        self._last = link
        data = self._encode(msg)
        self._tag += 1
        tag = self._tag
        impl = link._impl
        delivery = pn_delivery(impl, b"%d" % tag)
        pn_link_send(impl, data)
        pn_link_advance(impl)
        if self.at_most_once:
            pn_delivery_settle(delivery)
            return None
        return tag

    def busy(self) -> bool:
        session = self.session
        if session is None:
            return False
        if session.transport.pending() > _BUSY_OUTPUT:
            return True
        link = self._last
        return link is not None and link.credit <= 0 and link.queued > 0

    def _on_delivery(self, delivery) -> None:
        """A DELIVERY event (a raw pn_delivery_t): the broker's outcome of a message."""
        state = pn_delivery_remote_state(delivery)
        if state == _ACCEPTED:
            self.acked.add(int(pn_delivery_tag(delivery)))
        elif state in (_REJECTED, _RELEASED, _MODIFIED):
            self.refused[int(pn_delivery_tag(delivery))] = _outcome(Delivery.wrap(delivery))
        elif pn_delivery_settled(delivery):
            self.acked.add(int(pn_delivery_tag(delivery)))  # settled without an outcome: the broker took it
        else:
            return
        pn_delivery_settle(delivery)

    def pump(self, wait: float) -> None:
        session = self.session
        session.pump(wait)
        for link in self._links.values():
            state = session.link_states.get(link.name)
            if isinstance(state, IotctlError):
                raise state
        if session.failure is not None:
            if self.acked or self.refused:
                return  # outcomes read before the loss are reported first
            raise session.error("send")
        if self.busy():
            now = time.monotonic()
            if self._stalled is None:
                self._stalled = now
            elif now - self._stalled > self.timeout:
                link = self._last
                why = ("the peer gave no credit" if link is not None and link.credit <= 0
                       else "the peer read nothing")
                raise TimeoutError_("send", f"{why} for {self.timeout:g} s")
        else:
            self._stalled = None

    def finish(self) -> None:
        """Everything is settled: write what is left (pre-settled messages) within -W."""
        session = self.session
        end = time.monotonic() + self.timeout
        while session.transport.pending() > 0 or any(link.queued for link in self._links.values()):
            if session.failure is not None:
                raise session.error("send")
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError_("send", f"the peer did not take the last messages within {self.timeout:g} s")
            self.pump(min(left, 1.0))

    def refusal(self, refused: dict) -> IotctlError:
        reasons = sorted(set(map(str, refused.values())))
        cls = AuthError if any("unauthorized-access" in r for r in reasons) else PeerError
        return cls("send", f"the broker refused {len(refused)} message(s): {'; '.join(reasons[:3])}")


def _outcome(delivery) -> str:
    state = delivery.remote_state
    remote = delivery.remote
    if state == _REJECTED:
        cond = remote.condition
        return "rejected" + (f" ({cond.name}{': ' + cond.description if cond.description else ''})"
                             if cond is not None else "")
    if state == _RELEASED:
        return "released (the broker did not take it)"
    flags = [name for name, on in (("delivery-failed", remote.failed),
                                   ("undeliverable-here", remote.undeliverable)) if on]
    return "modified" + (f" ({', '.join(flags)})" if flags else "")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _id_value(data: bytes):
    """A correlation id from bytes: text when it is, else binary."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return data
    return text if text.isprintable() else data


def _simple(value):
    """An application property or annotation value: AMQP's simple types; anything else
    (a JSON list or object from a capture) as JSON text."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    import json

    return json.dumps(value, ensure_ascii=False)

"""STOMP 1.0/1.1/1.2 over stomp.py: the one module that imports it.

stomp.py runs a reader thread per connection and calls a listener for every frame;
here that listener only queues what arrived (receipts, messages, errors) and wakes the
command's thread, which does all the rest: the send driver's receipt window, the
receive driver's batches and acknowledgements. The socket is opened here (not by
stomp.py) so refused connections, DNS and TLS failures are classified like every
other protocol's, and TLS uses the shared --cafile/--cert/--key/--insecure context.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque

import stomp
from stomp.connect import BaseConnection
from stomp.protocol import Protocol10, Protocol11, Protocol12
from stomp.transport import Transport
from stomp.utils import Frame, convert_frame, pack

from iotctl import receive, send
from iotctl.errors import AuthError, ConnectError, IotctlError, PeerError, TimeoutError_, UsageError, \
    from_os_error
from iotctl.message import Message

# headers that describe the frame itself, or that the broker sets on delivery: kept out
# of a message's meta (address, content_type and the payload hold the first three) and
# never sent again by --replay
_FRAME_HEADERS = frozenset(("destination", "content-type", "content-length", "receipt"))
_DELIVERY_HEADERS = frozenset(("message-id", "subscription", "ack", "receipt", "receipt-id", "transaction",
                               "redelivered", "content-length", "destination", "content-type"))
# words in a CONNECT refusal that mean the login or the vhost was refused (exit 4)
_AUTH_WORDS = ("access refused", "access denied", "password", "login", "authenticat", "credential",
               "not authori", "virtual host", "vhost", "security")


class StompConfig:
    """Connection settings of every STOMP command."""

    def __init__(self, endpoint, vhost: str | None = "/", version: str = "1.2",
                 heartbeats: tuple[int, int] = (0, 0), connect_timeout: float = 10.0,
                 client_id: str | None = None, debug: bool = False):
        self.endpoint, self.vhost, self.version = endpoint, vhost, version
        self.heartbeats, self.connect_timeout, self.client_id = heartbeats, connect_timeout, client_id
        self.debug = debug


class _Transport(Transport):
    """stomp.py's transport with the socket opened by iotctl: errors raised as iotctl
    errors at once (no retry loop), TLS from the shared context."""

    def __init__(self, cfg: StompConfig):
        ep = cfg.endpoint
        super().__init__([(ep.host, ep.port)], prefer_localhost=False, try_loopback_connect=False,
                         reconnect_attempts_max=1, vhost=cfg.vhost, auto_decode=False)
        self._cfg = cfg

    def attempt_connection(self):
        import selectors
        import socket

        from stomp.utils import PollableQueue

        ep = self._cfg.endpoint
        what = f"cannot connect to {ep.display}"
        self.connection_error = False
        try:
            sock = socket.create_connection((ep.host, ep.port), self._cfg.connect_timeout)
            if ep.tls:
                try:
                    sock = ep.ssl_context().wrap_socket(sock, server_hostname=ep.host)
                except BaseException:
                    sock.close()
                    raise
        except IotctlError:
            raise
        except OSError as exc:
            raise from_os_error(what, exc) from None
        if ep.tls:
            # as stomp.py does for TLS: the reader thread writes, from a queue
            self._Transport__ssl_params[(ep.host, ep.port)] = {}
            self.send_queue = PollableQueue()
            self.sel = selectors.DefaultSelector()
            self.sel.register(self.send_queue, selectors.EVENT_READ)
            self.sel.register(sock, selectors.EVENT_READ)
            self.blocking = False
        else:
            self.blocking = True
        sock.settimeout(None)
        sock.setblocking(self.blocking)
        self.socket = sock
        self.current_host_and_port = (ep.host, ep.port)


class _Listener(stomp.ConnectionListener):
    """Runs on stomp.py's reader thread: queue what arrived, and wake the command's
    thread only when it is waiting (`waiting` is set before it looks at the queues, so
    nothing is missed; the GIL orders the two threads' steps)."""

    def __init__(self):
        self.connected = None          # the CONNECTED frame's headers
        self.errors: list = []         # ERROR frames
        self.receipts: deque = deque()
        self.messages: deque = deque()
        self.disconnected = False
        self.wake = threading.Event()
        self.waiting = False

    def on_connected(self, frame):
        self.connected = frame.headers
        self.wake.set()

    def on_error(self, frame):
        self.errors.append(frame)
        self.wake.set()

    def on_receipt(self, frame):
        self.receipts.append(frame.headers.get("receipt-id"))
        if self.waiting:
            self.wake.set()

    def on_message(self, frame):
        self.messages.append(frame)
        if self.waiting:
            self.wake.set()

    def on_disconnected(self):
        self.disconnected = True
        self.wake.set()

    def on_heartbeat_timeout(self):
        self.disconnected = True
        self.wake.set()


def error_text(frame) -> str:
    """An ERROR frame as one line: its message header, then its body (first line)."""
    message = (frame.headers.get("message") or "").strip()
    body = frame.body.decode("utf-8", "replace") if isinstance(frame.body, bytes) else str(frame.body or "")
    body = " ".join(body.split())
    if len(body) > 300:
        body = body[:300] + "..."
    if body and body not in message:
        return f"{message}: {body}" if message else body
    return message or "ERROR frame without a message"


class Session:
    """One STOMP connection."""

    def __init__(self, cfg: StompConfig):
        from iotctl.trace import route_logs

        route_logs(("stomp.py", "stomp"), cfg.debug, "stomp", secrets=(cfg.endpoint.password,))
        self.cfg = cfg
        self.version = cfg.version
        self.transport = _Transport(cfg)
        self.listener = _Listener()
        self.conn = self._connection()
        self.conn.set_listener("iotctl", self.listener)
        self._ids = itertools.count(1)
        self.open = False

    def _connection(self):
        proto = {"1.0": Protocol10, "1.1": Protocol11, "1.2": Protocol12}[self.version]
        conn_class = {"1.0": stomp.StompConnection10, "1.1": stomp.StompConnection11,
                      "1.2": stomp.StompConnection12}[self.version]
        conn = conn_class.__new__(conn_class)
        self._proto = proto
        BaseConnection.__init__(conn, self.transport)
        if proto is Protocol10:
            proto.__init__(conn, self.transport, True)
        else:
            proto.__init__(conn, self.transport, self.cfg.heartbeats, True)
        return conn

    def next_id(self, prefix: str = "r") -> str:
        return f"{prefix}{next(self._ids)}"

    # ------------------------------------------------------------------ connection

    def __enter__(self) -> "Session":
        try:
            self.connect()
        except BaseException:
            self.close(0.5)
            raise
        return self

    def __exit__(self, exc_type, *exc) -> None:
        # after a failure, a broker that may not answer is not waited for long
        self.close(5.0 if exc_type is None else 0.5)

    def connect(self) -> None:
        cfg, ep = self.cfg, self.cfg.endpoint
        what = f"cannot connect to {ep.display}"
        self.transport.start()  # opens the socket (raises iotctl errors) and the reader thread
        headers = {}
        if cfg.client_id:
            headers["client-id"] = cfg.client_id
        if self.version == "1.0":
            if cfg.vhost:
                headers["host"] = cfg.vhost
        try:
            # the protocol's connect: the connection class's would start a second transport
            if self.version == "1.0":
                self._proto.connect(self.conn, ep.username, ep.password, headers=headers)
            else:
                self._proto.connect(self.conn, ep.username, ep.password, headers=headers,
                                    with_connect_command=True)
        except OSError as exc:
            raise from_os_error(what, exc) from None
        listener = self.listener
        deadline = time.monotonic() + cfg.connect_timeout
        while listener.connected is None:
            if listener.errors:
                raise self._refused(what, listener.errors[0])
            if listener.disconnected or not self.transport.running:
                raise PeerError(what, "the broker closed the connection without answering CONNECT "
                                      "(it gave no reason)",
                                hint="check -u/-P, --vhost and --stomp-version")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError_(what, f"no CONNECTED frame within {cfg.connect_timeout:g} s",
                                    hint="is this a STOMP port?")
            listener.wake.wait(min(left, 1.0))
            listener.wake.clear()
        self.open = True

    def _refused(self, what: str, frame) -> IotctlError:
        text = error_text(frame)
        lowered = text.lower()
        if any(word in lowered for word in _AUTH_WORDS):
            hint = "check -u/--username and -P/--password"
            if "host" in lowered:
                hint = "check --vhost (RabbitMQ: an existing virtual host the user may use; default /)"
            return AuthError(what, f"the broker refused the login: {text}", hint=hint)
        return PeerError(what, f"the broker answered with an ERROR: {text}")

    def check(self, what: str) -> None:
        """Raise when an ERROR frame arrived or the connection is gone."""
        listener = self.listener
        if listener.errors:
            frame = listener.errors[0]
            raise PeerError(what, f"the broker answered with an ERROR: {error_text(frame)}")
        if listener.disconnected or not self.transport.running:
            raise ConnectError(what, "the broker closed the connection")

    def wait(self, seconds: float, ready=None) -> None:
        """Sleep until something arrives, at most `seconds`; not at all when `ready()`
        (checked after announcing the wait, so an arrival in between is not missed)."""
        listener = self.listener
        wake = listener.wake
        listener.waiting = True
        try:
            if ready is None or not ready():
                wake.wait(max(0.0, seconds))
            wake.clear()
        finally:
            listener.waiting = False

    def request(self, what: str, frame_sender, timeout: float) -> None:
        """Send a frame asking for a receipt and wait for it (SUBSCRIBE, BEGIN, COMMIT)."""
        rid = self.next_id("c")
        frame_sender(rid)
        receipts = self.listener.receipts
        deadline = time.monotonic() + timeout
        while rid not in receipts:
            self.check(what)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError_(what, f"no RECEIPT within {timeout:g} s")
            self.wait(min(left, 1.0), lambda: rid in receipts)
        receipts.remove(rid)

    def abort(self, tx: str) -> None:
        """ABORT a transaction, best effort (the connection may be gone already)."""
        if self.transport.running and not self.listener.errors:
            try:
                self.conn.send_frame("ABORT", {"transaction": tx})
            except Exception:
                pass

    def finish(self, what: str, timeout: float) -> None:
        """DISCONNECT and wait for its receipt: the broker has handled every frame before
        it. An ERROR frame that came first is exit 6; no receipt is exit 5."""
        rid = self.next_id("d")
        self.check(what)
        self.open = False
        try:
            self.conn.send_frame("DISCONNECT", {"receipt": rid})
        except OSError as exc:
            self.check(what)
            raise from_os_error(what, exc) from None
        deadline = time.monotonic() + timeout
        while rid not in self.listener.receipts:
            if self.listener.errors:
                self.check(what)
            if not self.transport.running:
                raise ConnectError(what, "the broker closed the connection before confirming DISCONNECT")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError_(what, f"no receipt for DISCONNECT within {timeout:g} s")
            self.wait(min(left, 0.5), lambda: rid in self.listener.receipts)

    def close(self, timeout: float = 5.0) -> None:
        """DISCONNECT with a receipt, so everything sent before (acks too) was handled."""
        transport = self.transport
        if self.open and transport.running and not self.listener.errors:
            self.open = False
            rid = self.next_id("d")
            try:
                # stomp.py's disconnect waits for its reader thread forever: send the frame directly
                self.conn.send_frame("DISCONNECT", {"receipt": rid})
                deadline = time.monotonic() + timeout
                while rid not in self.listener.receipts and transport.running and not self.listener.errors:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self.wait(min(left, 0.5), lambda: rid in self.listener.receipts)
            except Exception:  # closing is best effort
                pass
        self.open = False
        try:
            transport.running = False
            transport.disconnect_socket()
        except Exception:
            pass

    # ------------------------------------------------------------------ frames

    def encode(self, cmd: str, headers: dict, body: bytes = b"") -> bytes:
        """One frame as bytes, by stomp.py's rules (header escaping for the version,
        content-length when there is a body)."""
        h = dict(headers)
        if body:
            h["content-length"] = len(body)
        escape = getattr(self.conn, "_escape_headers", None)
        if escape is not None:
            escape(h)
        return pack(convert_frame(Frame(cmd, h, body)))

    def write(self, data: bytes, what: str = "send") -> None:
        """Frames already encoded, as one write (stomp.py's transport: the socket, or the
        TLS reader thread's queue)."""
        transport = self.transport
        if self.cfg.debug:
            stomp.log.debug("sending frames: %r", data)
        try:
            if transport.blocking:
                transport.send(data)
            else:
                transport.send_queue.put(data)
        except OSError as exc:
            self.check(what)
            raise from_os_error(what, exc) from None
        except stomp.exception.NotConnectedException:
            self.check(what)
            raise ConnectError(what, "the broker closed the connection") from None

    def subscribe(self, destination: str, sub_id: str, ack: str, headers: dict, timeout: float) -> None:
        conn = self.conn
        what = f"cannot subscribe to {destination}"

        def frame(rid):
            h = dict(headers)
            h["receipt"] = rid
            if self.version == "1.0":
                h["id"] = sub_id
                conn.subscribe(destination, id=sub_id, ack=ack, headers=h)
            else:
                conn.subscribe(destination, sub_id, ack=ack, headers=h)

        try:
            self.request(what, frame, timeout)
        except PeerError as exc:
            raise _classified(exc) from None

    def ack_frame(self, headers: dict, nack: bool = False) -> bytes:
        """The ACK (or NACK) of one received message, with the right headers for the
        version: 1.2 `id` = the MESSAGE's `ack` header; 1.1 `message-id` + `subscription`;
        1.0 `message-id` (NACK needs 1.1+; requeue:false asks RabbitMQ not to requeue)."""
        if self.version == "1.2":
            h = {"id": headers.get("ack") or headers.get("message-id")}
        else:
            h = {"message-id": headers.get("message-id")}
            if headers.get("subscription"):
                h["subscription"] = headers["subscription"]
        if nack:
            h["requeue"] = "false"
        return self.encode("NACK" if nack else "ACK", h)


def _classified(exc: PeerError) -> IotctlError:
    """A refusal of a SUBSCRIBE or SEND for lack of rights is still an ERROR frame: exit 6,
    with a hint."""
    why = (exc.why or "").lower()
    if "access" in why or "not authori" in why or "permission" in why:
        exc.hint = "the user may not use this destination (broker permissions)"
    return exc


def send_headers(out, base: dict, content_type: str | None) -> tuple[dict, str | None]:
    """The headers of one SEND: a replayed message's own (minus delivery headers),
    overridden by the command line's."""
    if out.meta:
        # scalar values only: a capture from another protocol may carry nested meta
        headers = {str(k): (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in out.meta.items()
                   if k not in _DELIVERY_HEADERS and v is not None and not isinstance(v, (dict, list))}
        headers.update(base)
    else:
        headers = base
    return headers, content_type or out.content_type


class Sender(send.Sender):
    """The send driver's STOMP side: SEND frames, each asking for a receipt (key: the
    receipt id), at most `window` waiting at once; `None` window with --no-receipt.

    The hot loop of `send -l`: the fixed part of the frame (command, destination and
    the command line's headers, encoded and escaped by stomp.py once) is reused, each
    message adds its content-length and receipt, and goes out in one write. Messages
    with headers of their own (--replay), or a --debug trace, take stomp.py's own path."""

    def __init__(self, session: Session, destination: str | None, headers: dict, content_type: str | None,
                 receipts: bool = True, window: int = 256, transaction: str | None = None):
        super().__init__()
        self.session = session
        self.destination = destination
        self.headers = dict(headers)
        if transaction:
            self.headers["transaction"] = transaction
        self.content_type = content_type
        self.receipts = receipts
        self.window = window if receipts else None
        self._ids = itertools.count(1)
        self._arrived = session.listener.receipts
        self._check = session.check
        self._wait = session.wait
        self._write = session.write
        self._prefix = None
        if destination is not None and not session.cfg.debug:
            fixed = dict(self.headers)
            fixed["destination"] = destination
            if content_type:
                fixed["content-type"] = content_type
            self._prefix = session.encode("SEND", fixed)[:-2]  # without the blank line and NUL

    def send(self, out):
        body = out.payload
        if self._prefix is not None and not out.meta and not out.content_type:
            if self.receipts:
                n = next(self._ids)
                self._write(b"%scontent-length:%d\nreceipt:s%d\n\n%s\0" % (self._prefix, len(body), n, body))
                return f"s{n}"
            self._write(b"%scontent-length:%d\n\n%s\0" % (self._prefix, len(body), body))
            return None
        destination = self.destination or out.address
        if not destination:
            raise UsageError("no destination", "give DESTINATION (a replayed message had no address)")
        headers, content_type = send_headers(out, self.headers, self.content_type)
        key = f"s{next(self._ids)}" if self.receipts else None
        try:
            self.session.conn.send(destination, body, content_type, headers,
                                   **({"receipt": key} if key else {}))
        except OSError as exc:
            self._check("send")
            raise from_os_error("send", exc) from None
        return key

    def pump(self, wait: float) -> None:
        arrived = self._arrived
        if not arrived:
            self._check(f"send to {self.destination or 'the replayed destinations'}")
            self._wait(wait, arrived.__len__)
        acked = self.acked
        while arrived:
            acked.add(arrived.popleft())
        if not acked:
            self._check(f"send to {self.destination or 'the replayed destinations'}")


class Receiver(receive.Receiver):
    """The receive driver's STOMP side: MESSAGE frames as Messages, acknowledged once
    written (ack modes client and client-individual), or rejected with --nack."""

    def __init__(self, session: Session, ack: str, nack: bool = False, what: str = "subscription"):
        self.session = session
        self.what = what
        self.ack_mode = ack
        self.nack = nack
        self._frames = session.listener.messages
        self._headers: dict = {}  # id(Message) -> the frame's headers, until acknowledged

    def poll(self, wait):
        frames = self._frames
        session = self.session
        if not frames:
            session.check(self.what)
            session.wait(1.0 if wait is None else wait, frames.__len__)
            if not frames:
                session.check(self.what)
                return []
        batch = []
        manual = self.ack_mode != "auto"
        remember = self._headers
        popleft = frames.popleft
        while frames:
            frame = popleft()
            headers = frame.headers
            meta = {k: v for k, v in headers.items() if k not in _FRAME_HEADERS}
            msg = Message("stomp", headers.get("destination", ""), frame.body, headers.get("content-type"), meta)
            if manual:
                remember[id(msg)] = headers
            batch.append(msg)
        return batch

    def ack(self, batch) -> None:
        if self.ack_mode == "auto":
            return
        remember = self._headers
        frame = self.session.ack_frame
        if self.ack_mode == "client" and not self.nack:
            # cumulative: the last message of each subscription acknowledges the ones before
            last: dict = {}
            for msg in batch:
                headers = remember.pop(id(msg), None)
                if headers is not None:
                    last[headers.get("subscription")] = headers
            frames = [frame(headers) for headers in last.values()]
        else:
            frames = []
            for msg in batch:
                headers = remember.pop(id(msg), None)
                if headers is not None:
                    frames.append(frame(headers, self.nack))
        if frames:
            self.session.write(b"".join(frames), self.what)

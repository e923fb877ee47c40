"""STOMP 1.0/1.1/1.2 over stomp.py: the one module that imports it.

stomp.py runs a reader thread per connection and calls a listener for every frame;
here that listener only queues what arrived (receipts, messages, errors) and wakes the
command's thread, which does all the rest: the send driver's receipt window, the
receive driver's batches and acknowledgements. The socket is opened here (not by
stomp.py) so refused connections, DNS and TLS failures are classified like every
other protocol's, and TLS uses the shared --cafile/--cert/--key/--insecure context.

What a peer can make this process hold is bounded: a frame's headers (1 MiB) and a
whole frame (--max-size plus the headers) while it is being read, and the messages
read but not yet taken by the command (the reader thread waits when they fill up, so
the broker's own flow control takes over); a subscription asks for a bounded prefetch.
"""

from __future__ import annotations

import itertools
import ssl
import threading
import time
from collections import deque

import stomp
from stomp.connect import BaseConnection
from stomp.protocol import Protocol10, Protocol11, Protocol12
from stomp.transport import Transport
from stomp.utils import Frame, convert_frame, pack

from iotctl import receive, send
from iotctl.errors import (AuthError, ConnectError, ConnectionLost, IotctlError, PeerError, TimeoutError_,
                           UsageError, from_os_error)
from iotctl.message import Message, bytes_text, foreign
from iotctl.protocols.stomp.envelope import DELIVERY, FRAME, check_header

MAX_HEADERS = 1 << 20          # the most a frame's headers may take while being read
DEFAULT_MAX_SIZE = 128 << 20   # the largest message body accepted (RabbitMQ's own default limit)
QUEUE_MESSAGES = 1000          # messages read and not yet taken before the reader waits
QUEUE_BYTES = 8 << 20          # ... or their bodies' bytes
RECV_BYTES = 1 << 14           # a read from the socket (stomp.py's own size)

# headers that describe the frame itself: kept out of a received message's meta
# (address, content_type and the payload hold them)
_FRAME_HEADERS = frozenset(("destination", "content-type", "content-length", "receipt"))
# words in a CONNECT refusal that mean the login or the vhost was refused (exit 4)
_AUTH_WORDS = ("access refused", "access denied", "password", "login", "authenticat", "credential",
               "not authori", "virtual host", "vhost", "security")
# words in an ERROR frame that mean the broker is closing the connection, not refusing something
_CLOSING_WORDS = ("connection_forced", "shutdown", "shutting down")
_SERVER_FRAMES = (b"CONNECTED", b"ERROR", b"MESSAGE", b"RECEIPT")


class StompConfig:
    """Connection settings of every STOMP command."""

    def __init__(self, endpoint, vhost: str | None = "/", version: str = "1.2",
                 heartbeats: tuple[int, int] = (0, 0), connect_timeout: float = 10.0,
                 client_id: str | None = None, debug: bool = False, max_size: int = DEFAULT_MAX_SIZE):
        self.endpoint, self.vhost, self.version = endpoint, vhost, version
        self.heartbeats, self.connect_timeout, self.client_id = heartbeats, connect_timeout, client_id
        self.debug, self.max_size = debug, max_size


class _Transport(Transport):
    """stomp.py's transport with the socket opened by iotctl (errors raised as iotctl
    errors at once, no retry loop; TLS from the shared context) and every chunk read
    measured: stomp.py keeps whatever a frame brings until it ends, so a peer sending a
    header line that never ends took gigabytes. Past the limits the reader stops and
    `failure` says why."""

    def __init__(self, cfg: StompConfig):
        ep = cfg.endpoint
        super().__init__([(ep.host, ep.port)], prefer_localhost=False, try_loopback_connect=False,
                         reconnect_attempts_max=1, vhost=cfg.vhost, auto_decode=False)
        self._cfg = cfg
        self.max_frame = cfg.max_size + MAX_HEADERS
        self.failure: str | None = None
        self.read_error: OSError | None = None
        self.first = b""         # the peer's first bytes (to tell a peer that does not speak STOMP)
        self._pending = 0        # bytes read since the last chunk that held a NUL
        self._head = b""         # the first bytes of those (where an unfinished frame's headers are)
        self._head_ok = False    # the unfinished frame's headers are complete

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

    def receive(self):
        sock = self.socket
        if sock is None:
            return b""
        try:
            data = sock.recv(RECV_BYTES)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise  # TLS: nothing to read yet (stomp.py's reader expects these)
        except OSError as exc:
            # the end of the connection: keep why (stomp.py would take a reset before
            # CONNECTED for a plain close) and stop the reader
            self.read_error = exc
            self.running = False
            return b""
        if not data:
            return data
        if len(self.first) < 64:
            self.first += data[:64 - len(self.first)]
        # stomp.py reads on until a chunk holds a NUL, then parses; what does not make a
        # whole frame stays in its buffer: together, the frame being read
        buffered = len(self._BaseTransport__recvbuf) + self._pending + len(data)
        if buffered > self.max_frame:
            return self._stop(f"the peer sent a frame larger than {self.max_frame} bytes",
                              "raise --max-size to accept larger messages")
        if b"\0" in data:
            self._pending, self._head, self._head_ok = 0, b"", False
            return data
        self._pending += len(data)
        if not self._head_ok:
            if len(self._head) <= MAX_HEADERS:
                self._head += data[:MAX_HEADERS + 4 - len(self._head)]
            if buffered > MAX_HEADERS:
                start = self._BaseTransport__recvbuf[:MAX_HEADERS + 4]
                start = (start + self._head[:MAX_HEADERS + 4 - len(start)]).lstrip(b"\r\n")
                if b"\n\n" in start or b"\n\r\n" in start:
                    self._head_ok = True
                elif len(start) > MAX_HEADERS:
                    return self._stop(f"the peer sent a frame larger than {MAX_HEADERS} bytes before the end "
                                      "of its headers (the most a frame's headers may take)")
        return data

    def _stop(self, why: str, hint: str | None = None):
        """Stop reading: stomp.py's reader takes an empty read as the end of the connection."""
        self.failure = why
        self.failure_hint = hint
        self.running = False
        self._head = b""
        return b""


class _Listener(stomp.ConnectionListener):
    """Runs on stomp.py's reader thread: queue what arrived, and wake the command's
    thread only when it is waiting (`waiting` is set before it looks at the queues, so
    nothing is missed; the GIL orders the two threads' steps).

    Messages wait in a bounded queue: when QUEUE_MESSAGES or QUEUE_BYTES are read and
    not taken, the reader thread waits for room (the socket is not read meanwhile, so
    the broker holds the rest) until the command takes them or `release()`s it."""

    def __init__(self):
        self.connected = None          # the CONNECTED frame's headers
        self.errors: list = []         # ERROR frames
        self.refusal: str | None = None  # an ERROR counted as a refused SEND (the connection closes after it)
        self.receipts: deque = deque()
        self.messages: deque = deque()
        self.arrived = 0               # body bytes queued, ever (written by the reader thread only)
        self.taken = 0                 # body bytes taken, ever (written by the command's thread only)
        self.room = threading.Condition()
        self.full = False
        self.released = False          # closing: drop what arrives, never wait
        self.alive = None              # called while the reader waits (heart-beats still count)
        self.max_size = DEFAULT_MAX_SIZE
        self.stop = None               # stop(why, hint): end the connection (a message over max_size)
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
        if self.released:
            return  # never acknowledged: a queue delivers it again
        if len(frame.body) > self.max_size:
            self.released = True  # nothing after it is taken either: the run ends with exit 6
            self.stop(f"the peer sent a message of {len(frame.body)} bytes, more than --max-size {self.max_size}",
                      "raise --max-size to accept larger messages")
            return
        messages = self.messages
        messages.append(frame)
        self.arrived += len(frame.body)
        if self.waiting:
            self.wake.set()
        if len(messages) >= QUEUE_MESSAGES or self.arrived - self.taken >= QUEUE_BYTES:
            self._wait_for_room()

    def _wait_for_room(self):
        messages = self.messages
        with self.room:
            self.full = True
            while ((len(messages) >= QUEUE_MESSAGES or self.arrived - self.taken >= QUEUE_BYTES)
                   and not self.released):
                self.room.wait(1.0)
                if self.alive is not None:
                    self.alive()
            self.full = False

    def took(self, nbytes: int) -> None:
        """The command's thread took messages of `nbytes` body bytes."""
        self.taken += nbytes
        if self.full:
            with self.room:
                self.room.notify()

    def release(self) -> None:
        self.released = True
        with self.room:
            self.room.notify_all()

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


def _escape(text: str, version: str) -> str:
    if version == "1.0":
        return text
    text = text.replace("\\", "\\\\").replace("\n", "\\n").replace(":", "\\c")
    return text.replace("\r", "\\r") if version == "1.2" else text


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
        self.listener.alive = self._alive
        self.listener.max_size = cfg.max_size
        self.listener.stop = self.transport._stop
        self._ids = itertools.count(1)
        self.open = False
        self.server = ""  # the CONNECTED frame's server header (e.g. RabbitMQ/3.10.8)

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

    def _alive(self) -> None:
        """While the reader waits for room, the broker's heart-beats sit unread in the
        socket: the connection is not dead for that."""
        if getattr(self.conn, "received_heartbeat", None) is not None:
            self.conn.received_heartbeat = time.monotonic()

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
        except stomp.exception.StompException:
            pass  # the connection went away before CONNECT could be sent: below says why
        listener, transport = self.listener, self.transport
        deadline = time.monotonic() + cfg.connect_timeout
        while listener.connected is None:
            if transport.failure:
                raise PeerError(what, transport.failure, hint=transport.failure_hint)
            if listener.errors:
                raise self._refused(what, listener.errors[0])
            if listener.disconnected or not transport.running:
                raise self._not_stomp(what, closed=True)
            left = deadline - time.monotonic()
            if left <= 0:
                if transport.first.strip(b"\r\n"):
                    raise self._not_stomp(what, closed=False)
                raise TimeoutError_(what, f"no CONNECTED frame within {cfg.connect_timeout:g} s",
                                    hint="is this a STOMP port?")
            listener.wake.wait(min(left, 1.0))
            listener.wake.clear()
        self.server = str(listener.connected.get("server") or "")
        self.open = True

    def _not_stomp(self, what: str, closed: bool) -> IotctlError:
        """The peer answered CONNECT with something that is not a STOMP frame (or with
        nothing and closed): a wrong port, not a refused login (brokers refuse with an
        ERROR frame)."""
        first = self.transport.first.lstrip(b"\r\n")
        hint = "is this a STOMP port? (RabbitMQ's and ActiveMQ's is 61613)"
        if first and not first.startswith(_SERVER_FRAMES):
            shown = repr(first[:40])[2:-1]
            return ConnectError(what, f"the peer does not speak STOMP: it answered '{shown}'", hint=hint)
        if closed and isinstance(self.transport.read_error, ConnectionResetError):
            # what an MQTT broker does with our CONNECT (and a port refusing while a broker starts)
            return ConnectError(what, "the peer reset the connection without answering CONNECT: "
                                      "it does not seem to speak STOMP", hint=hint)
        if closed:
            cfg = self.cfg
            if any("\\" in (v or "") for v in (cfg.endpoint.username, cfg.endpoint.password, cfg.vhost,
                                                cfg.client_id)):
                return ConnectError(what, "the peer closed the connection without answering CONNECT",
                                    hint="-u/-P/--vhost hold a backslash: RabbitMQ reads it as a STOMP escape "
                                         "(CONNECT has none) and closes the connection on one it does not know")
            return ConnectError(what, "the peer closed the connection without answering CONNECT: "
                                      "it does not speak STOMP", hint=hint)
        return PeerError(what, "the peer did not answer CONNECT with a STOMP frame")

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
        """Raise when an ERROR frame arrived, a frame broke the limits or the connection
        is gone (ConnectionLost: a receiver may connect again)."""
        listener, transport = self.listener, self.transport
        if transport.failure:
            raise PeerError(what, transport.failure, hint=transport.failure_hint)
        if listener.errors:
            text = error_text(listener.errors[0])
            if any(word in text.lower() for word in _CLOSING_WORDS):
                raise ConnectionLost(what, f"the broker closed the connection: {text}")
            raise PeerError(what, f"the broker answered with an ERROR: {text}")
        if listener.disconnected or not transport.running:
            if listener.refusal:
                raise ConnectionLost(what, f"the broker closed the connection after refusing a message ({listener.refusal})")
            raise ConnectionLost(what, "the broker closed the connection")

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

    def request(self, what: str, cmd: str, headers: dict, timeout: float) -> None:
        """Send a frame asking for a receipt and wait for it (SUBSCRIBE, BEGIN)."""
        rid = self.next_id("c")
        self.write(self.encode(cmd, {**headers, "receipt": rid}), what)
        receipts = self.listener.receipts
        deadline = time.monotonic() + timeout
        while rid not in receipts:
            self.check(what)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError_(what, f"no RECEIPT within {timeout:g} s")
            self.wait(min(left, 1.0), lambda: rid in receipts)
        receipts.remove(rid)

    def close(self, timeout: float = 5.0) -> None:
        """DISCONNECT with a receipt, so everything sent before (acks too) was handled."""
        transport, listener = self.transport, self.listener
        listener.release()  # a reader waiting for room must read the receipt
        if self.open and transport.running and not listener.errors:
            self.open = False
            rid = self.next_id("d")
            try:
                # stomp.py's disconnect waits for its reader thread forever: send the frame directly
                self.write(self.encode("DISCONNECT", {"receipt": rid}), "disconnect")
                deadline = time.monotonic() + timeout
                while rid not in listener.receipts and transport.running and not listener.errors:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self.wait(min(left, 0.5), lambda: rid in listener.receipts)
            except Exception:  # closing is best effort
                pass
        self.abort()

    def abort(self) -> None:
        """Drop the connection without a word (after it failed, or to connect again)."""
        self.open = False
        self.listener.release()
        transport = self.transport
        try:
            transport.running = False
            transport.disconnect_socket()
        except Exception:
            pass

    # ------------------------------------------------------------------ frames

    def encode(self, cmd: str, headers: dict, body: bytes = b"") -> bytes:
        """One frame as bytes: names and values escaped for the version (stomp.py
        escapes only values), content-length when there is a body. The caller has
        checked the headers (envelope.check_header)."""
        version = self.version
        h = {_escape(str(k), version): _escape(str(v), version) for k, v in headers.items()}
        if body:
            h["content-length"] = len(body)
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
        except (OSError, AttributeError, stomp.exception.NotConnectedException) as exc:
            # the connection went away under the write (AttributeError: the TLS queue is gone)
            self.check(what)
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "the broker closed the connection"
            raise ConnectionLost(what, f"connection lost ({why.lower()})") from None

    def subscribe(self, destination: str, sub_id: str, ack: str, headers: dict, timeout: float) -> None:
        what = f"cannot subscribe to {destination}"
        try:
            self.request(what, "SUBSCRIBE", {**headers, "destination": destination, "id": sub_id, "ack": ack},
                         timeout)
        except PeerError as exc:
            raise _classified(exc) from None

    def ack_frame(self, token, nack: bool = False, requeue: bool = True) -> bytes:
        """The ACK (or NACK) of one received message (its token), with the right headers
        for the version: 1.2 `id` = the MESSAGE's `ack` header; 1.1 `message-id` +
        `subscription`; 1.0 `message-id`. requeue:false asks RabbitMQ not to requeue."""
        _, _, sub, ack_id = token
        if self.version == "1.2":
            h = {"id": ack_id}
        else:
            h = {"message-id": ack_id}
            if sub:
                h["subscription"] = sub
        if nack and not requeue:
            h["requeue"] = "false"
        return self.encode("NACK" if nack else "ACK", h)


def _classified(exc: PeerError) -> IotctlError:
    """A refusal of a SUBSCRIBE or SEND for lack of rights is still an ERROR frame: exit 6,
    with a hint."""
    why = (exc.why or "").lower()
    if "access" in why or "not authori" in why or "permission" in why:
        exc.hint = "the user may not use this destination (broker permissions)"
    return exc


# --------------------------------------------------------------------------- sending


class Sender(send.Sender):
    """The send driver's STOMP side, a context manager (entered: connected, and in a
    transaction after BEGIN). Three ways to learn that the broker took a message:

    - receipts (default): every SEND asks for one; key = the receipt id; at most
      `window` outstanding.
    - --no-receipt: SENDs ask for none; after every `window` of them, and when the
      input pauses or the end comes, one checkpoint asks for a receipt (an empty
      transaction's ABORT): frames are handled in order, so it confirms every SEND
      before it. At most 4 x `window` are unconfirmed.
    - --transaction: BEGIN, the SENDs, and finish() sends COMMIT: its receipt settles
      every message, its ERROR refuses every one (they all reach --failed).

    The hot loop of `send -l`: the fixed part of the frame (command, destination and the
    command line's headers, encoded once) is reused, each message adds its
    content-length (and receipt) and goes out in one write. A message with headers of
    its own (--replay, a bridge) is adopted in `_adopt`, the one place for that."""

    protocol = "stomp"

    def __init__(self, cfg: StompConfig, destination: str | None, headers: dict, content_type: str | None,
                 receipts: bool = True, window: int = 256, transaction: bool = False, timeout: float = 10.0):
        super().__init__()
        self.cfg, self.destination, self.timeout = cfg, destination, timeout
        self.address = destination  # where a message without an address of its own goes
        self.headers = dict(headers)          # the command line's, checked, they win
        self.content_type = content_type
        self.transaction = transaction
        self.receipts = receipts and not transaction
        self.settles_at_finish = transaction
        self.window = window if self.receipts else (None if transaction else 4 * window)
        # what a message composed on the command line keeps in --failed, to replay alone
        self._kept = dict(headers)
        self.session: Session | None = None
        self.tx: str | None = None
        self._ids = itertools.count(1)
        # --no-receipt: a checkpoint every `window` SENDs (and whenever pumped with some unasked)
        self._every = window if not transaction else 1 << 62
        self._last = 0            # the last key sent (--no-receipt, --transaction)
        self._asked = 0           # the last key a checkpoint asked about
        self._confirmed = 0       # the last key confirmed
        self._commit: str | None = None
        self._receipted: str | None = None  # the last receipt-id (receipts come in the order of the SENDs)

    def composed(self, msg: Message) -> Message:
        """Also a message the input had given but that was not sent yet keeps the
        command line's headers and content type in --failed (a sent one has them)."""
        return msg.copy(protocol=self.protocol, meta=msg.meta or dict(self._kept),
                        content_type=msg.content_type or self.content_type)

    @property
    def what(self) -> str:
        return f"send to {self.destination or 'the replayed destinations'}"

    def __exit__(self, exc_type, *exc) -> None:
        self.close(failed=exc_type is not None)

    def open(self) -> None:
        session = Session(self.cfg)
        try:
            session.connect()
            if self.transaction:
                tx = f"iotctl-tx-{session.next_id('')}-{int(time.time() * 1000)}"
                session.request("BEGIN", "BEGIN", {"transaction": tx}, self.timeout)
                self.tx = tx
        except BaseException:
            session.close(0.5)
            raise
        self.session = session
        self._arrived = session.listener.receipts
        self._check = session.check
        self._wait = session.wait
        self._write = session.write
        fixed = dict(self.headers)
        if self.tx:
            fixed["transaction"] = self.tx
        self._fixed = fixed
        self._prefix = None
        if self.destination is not None and not self.cfg.debug:
            h = dict(fixed)
            h["destination"] = self.destination
            if self.content_type:
                h["content-type"] = self.content_type
            self._prefix = session.encode("SEND", h)[:-2]  # without the blank line and NUL

    def close(self, failed: bool = False) -> None:
        session = self.session
        if session is None:
            return
        self.session = None
        if self.tx and self._commit is None and session.transport.running and not session.listener.errors:
            try:  # not committed: nothing of it is delivered
                session.write(session.encode("ABORT", {"transaction": self.tx}), "abort")
            except IotctlError:
                pass
        session.close(0.5 if failed else 5.0)

    # ------------------------------------------------------------------ sending

    def send(self, out):
        body = out.payload
        address = out.address
        if (self._prefix is not None and (address is self.destination or not address or address == self.destination)
                and not out.meta and not out.content_type):
            n = next(self._ids)
            if not out.protocol:  # composed here: --failed keeps the headers, to replay alone
                if self._kept:
                    out.meta = self._kept
                if self.content_type:
                    out.content_type = self.content_type
            self._last = n
            if self.receipts:
                try:
                    self._write(b"%scontent-length:%d\nreceipt:s%d\n\n%s\0" % (self._prefix, len(body), n, body))
                except PeerError:
                    self._lost_after_refusal()
                return f"s{n}"
            self._write(b"%scontent-length:%d\n\n%s\0" % (self._prefix, len(body), body))
            if n - self._asked >= self._every:
                self._checkpoint()
            return n
        destination = address or self.destination
        if not destination:
            raise UsageError("no destination", "give DESTINATION (a replayed message had no address)")
        check_header("destination", destination, self.session.version, "the replayed destination")
        headers, content_type = self._adopt(out)
        headers["destination"] = destination
        if content_type:
            headers["content-type"] = content_type
        n = self._last = next(self._ids)
        if self.receipts:
            headers["receipt"] = key = f"s{n}"
        else:
            key = n
        try:
            self._write(self.session.encode("SEND", headers, body), self.what)
        except PeerError:
            self._lost_after_refusal()
        if not out.protocol and not out.meta:  # composed here: --failed keeps the headers
            out.meta = self._kept
            out.content_type = out.content_type or self.content_type
        if not self.receipts and n - self._asked >= self._every:
            self._checkpoint()
        return key

    def _adopt(self, out) -> tuple[dict, str | None]:
        """The headers and content type of a message that brings its own: a STOMP
        capture's headers as captured, minus those describing the frame or its delivery;
        from another protocol only what crosses (its user headers, content type,
        correlation-id, reply-to), never a header STOMP gives a meaning to. The command
        line's headers win. Every header is checked for what the version can carry."""
        found = foreign(out, "stomp")
        headers: dict = {}
        if found is None:
            for k, v in (out.meta or {}).items():
                if k not in DELIVERY and v is not None and not isinstance(v, (dict, list)):
                    headers[str(k)] = ("true" if v else "false") if isinstance(v, bool) else str(v)
            content_type = out.content_type
        else:
            for k, v in found.headers:
                if k not in FRAME:
                    headers[k] = v
            if found.correlation_id is not None:
                headers["correlation-id"] = bytes_text(found.correlation_id)
            if found.reply_to:
                headers["reply-to"] = found.reply_to
            content_type = found.content_type
        version = self.session.version
        for k, v in headers.items():
            check_header(k, v, version, "the replayed header")
        if content_type:
            check_header("content-type", content_type, version, "the replayed content type")
        headers.update(self._fixed)
        return headers, self.content_type or content_type

    def pump(self, wait: float) -> None:
        arrived = self._arrived
        if not self.receipts and not self.transaction and self._last > self._asked:
            self._checkpoint()
        errors = self.session.listener.errors
        if self.receipts and errors:
            self._take_receipts()
            if self._sends_refused():
                return  # settled first; then (RabbitMQ closes after an ERROR) the connection is lost
        if not arrived and not self._commit_refused():
            self._check(self.what)
            self._wait(wait, arrived.__len__)
        acked = self.acked
        if self.receipts:
            self._take_receipts()
            if errors and self._sends_refused():
                return
        else:
            while arrived:
                rid = arrived.popleft()
                if rid and rid[0] in "kt":  # a checkpoint's or the COMMIT's receipt
                    n = int(rid[1:])
                    if n > self._confirmed:
                        acked.update(range(self._confirmed + 1, n + 1))
                        self._confirmed = n
        if not acked and not self.refused and not self._commit_refused():
            self._check(self.what)

    def _lost_after_refusal(self) -> None:
        """A SEND could not be written because the broker closed the connection after an
        ERROR: when that ERROR refused an earlier SEND of ours, that one is refused and the
        connection is lost (the rest can go again on a new one); else the ERROR ends it."""
        if self.receipts:
            self._take_receipts()
            if self._sends_refused():
                raise ConnectionLost(self.what, "the broker closed the connection after refusing a message "
                                                f"({self.session.listener.refusal})") from None
        raise

    def _take_receipts(self) -> None:
        arrived, acked = self._arrived, self.acked
        while arrived:
            rid = arrived.popleft()
            acked.add(rid)
            self._receipted = rid

    def _sends_refused(self) -> bool:
        """The ERROR frames that refuse a SEND of ours, as refusals; True if any."""
        errors = self.session.listener.errors
        before = len(self.refused)
        while errors and self._send_refused():
            pass
        return len(self.refused) > before

    def _send_refused(self) -> bool:
        """An ERROR refusing a SEND (a destination the user may not write): that message
        is refused, like any other refusal (--failed, a bridge's --on-refused). RabbitMQ
        then closes the connection (the next pump is ConnectionLost: a bridge sends the
        rest again on a new one); ActiveMQ goes on. The refused SEND is the ERROR's receipt-id (ActiveMQ names it) or else the one
        after the last receipt (RabbitMQ names none; it answers a connection's frames in
        order, so every SEND before the refused one has its receipt already)."""
        listener = self.session.listener
        frame = listener.errors[0]
        reason = error_text(frame)
        if any(word in reason.lower() for word in _CLOSING_WORDS):
            return False
        rid = frame.headers.get("receipt-id")
        if not (rid and rid[0] == "s" and rid[1:].isdigit()):
            last = self._receipted
            n = int(last[1:]) + 1 if last and last[0] == "s" and last[1:].isdigit() else 1
            rid = f"s{n}"
        if int(rid[1:]) > self._last or rid in self.refused:
            return False  # not about a SEND of ours: _check ends the run with it
        listener.errors.pop(0)
        listener.refusal = reason  # check(): the connection it closes is lost, not an error of the run
        self.refused[rid] = reason
        self.acked.discard(rid)
        self._receipted = rid  # the next refusal without a receipt-id is about a later SEND
        return True

    def _commit_refused(self) -> bool:
        """An ERROR after the COMMIT refuses the transaction: every message is refused
        (none was delivered), for --failed, instead of ending the run as an error."""
        errors = self.session.listener.errors
        if self._commit is None or not errors:
            return False
        reason = error_text(errors[0])
        self.refused.update({k: reason for k in range(self._confirmed + 1, self._last + 1)})
        self._confirmed = self._last
        return True

    def _checkpoint(self) -> None:
        """Ask for a receipt covering every SEND so far: an empty transaction whose
        ABORT carries it (a frame with no other effect)."""
        n = self._last
        session = self.session
        tx = f"iotctl-k{n}-{id(self)}"
        self._write(session.encode("BEGIN", {"transaction": tx})
                    + session.encode("ABORT", {"transaction": tx, "receipt": f"k{n}"}), self.what)
        self._asked = n

    def finish(self) -> None:
        if self.tx and self._commit is None:
            self._commit = f"t{self._last}"
            self._write(self.session.encode("COMMIT", {"transaction": self.tx, "receipt": self._commit}),
                        self.what)

    def refusal(self, refused: dict) -> IotctlError:
        reasons = sorted(set(map(str, refused.values())))
        if self.transaction:
            return PeerError(self.what, f"the broker refused the transaction's COMMIT ({len(refused)} "
                                        f"message(s), none delivered): {'; '.join(reasons[:3])}")
        return PeerError(self.what, f"the broker refused {len(refused)} message(s): {'; '.join(reasons[:3])}")


# --------------------------------------------------------------------------- receiving


class _Runs(receive.Cumulative):
    """A `client` subscription's settlements: its ACK (and NACK) covers every earlier
    delivery, so only the delivered prefix whose every message was settled is sent, as
    one frame per run of the same kind (ACK up to here, NACK up to there, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.done = {}

    def settle(self, tokens, ack: bool) -> list:
        order, done = self.order, self.done
        for token in tokens:
            done[token] = ack
        runs: list = []
        while order and order[0] in done:
            token = order.popleft()
            kind = done.pop(token)
            if runs and runs[-1][0] == kind:
                runs[-1] = (kind, token)
            else:
                runs.append((kind, token))
        return runs


_QUEUES = ("/queue/", "/amq/queue/")


class Subscription(receive.Receiver):
    """Subscriptions on one connection as a source (a context manager: entered, it
    connects and subscribes to every destination). A message's token is its ack id (and
    subscription) on this connection: ack() acknowledges exactly the messages given
    (client-individual: one ACK each; client: only the longest wholly acknowledged
    delivered prefix, one cumulative ACK); nack() sends NACK where the broker then
    delivers them again (RabbitMQ; ActiveMQ's NACK discards, so there they are left
    unacknowledged); `reject` (--nack) settles every message with NACK requeue:false.
    After a lost connection it connects and subscribes again; tokens of the old one are
    ignored (the broker delivers those messages again)."""

    can_reconnect = True

    def __init__(self, cfg: StompConfig, subs: list[tuple[str, str, dict]], ack: str = "client-individual",
                 reject: bool = False, durable: bool = False):
        self.cfg, self.subs, self.ack_mode, self.reject = cfg, subs, ack, reject
        self.session: Session | None = None
        self.what = f"subscription to {', '.join(d for d, _, _ in subs)}"
        # unacknowledged messages come again from a queue or a durable subscription
        again = durable or all(d.startswith(_QUEUES) for d, _, _ in subs)
        self.delivery = "at-least-once" if ack != "auto" and again else "at-most-once"
        self._runs: dict[str, _Runs] = {}
        self._seq = itertools.count()

    @property
    def where(self) -> str:
        return self.cfg.endpoint.display

    def open(self) -> None:
        session = Session(self.cfg)
        try:
            session.connect()
            for dest, sid, headers in self.subs:
                session.subscribe(dest, sid, self.ack_mode, headers, self.cfg.connect_timeout)
        except BaseException:
            session.close(0.5)
            raise
        self._runs = {sid: _Runs() for _, sid, _ in self.subs} if self.ack_mode == "client" else {}
        self.session = session

    def close(self) -> None:
        if self.session is not None:
            self.session.close()

    def reconnect(self) -> None:
        old, self.session = self.session, None
        if old is not None:
            old.abort()
        self.open()

    def poll(self, wait):
        session = self.session
        listener = session.listener
        frames = listener.messages
        if not frames:
            session.check(self.what)
            session.wait(1.0 if wait is None else wait, frames.__len__)
            if not frames:
                session.check(self.what)
                return []
        batch = []
        manual = self.ack_mode != "auto"
        runs = self._runs
        seq = self._seq
        v12 = session.version == "1.2"
        nbytes = 0
        popleft = frames.popleft
        while frames:
            frame = popleft()
            headers = frame.headers
            body = frame.body
            nbytes += len(body)
            meta = {k: v for k, v in headers.items() if k not in _FRAME_HEADERS}
            msg = Message("stomp", headers.get("destination", ""), body, headers.get("content-type"), meta)
            if manual:
                sub = headers.get("subscription")
                ack_id = (headers.get("ack") or headers.get("message-id")) if v12 else headers.get("message-id")
                msg.token = token = (session, next(seq), sub, ack_id)
                if runs:
                    r = runs.get(sub)
                    if r is not None:
                        r.delivered(token)
            batch.append(msg)
        listener.took(nbytes)
        return batch

    def _tokens(self, messages) -> list:
        session = self.session
        return [m.token for m in messages if m.token is not None and m.token[0] is session]

    def ack(self, messages) -> None:
        if self.ack_mode == "auto" or self.session is None:
            return
        if self.reject:
            self._settle(messages, ack=False, requeue=False)
        else:
            self._settle(messages, ack=True)

    def nack(self, messages) -> None:
        session = self.session
        if self.ack_mode == "auto" or session is None or session.version == "1.0" \
                or session.server.startswith("ActiveMQ"):
            # 1.0 has no NACK, and ActiveMQ's sends the message to its dead-letter queue
            # (non-persistent ones are dropped): left unacknowledged, a queue delivers
            # them again to the next connection
            return
        self._settle(messages, ack=False, requeue=not self.reject)

    def _settle(self, messages, ack: bool, requeue: bool = True) -> None:
        session = self.session
        tokens = self._tokens(messages)
        if not tokens:
            return
        frame = session.ack_frame
        if self.ack_mode == "client":
            by_sub: dict = {}
            for token in tokens:
                by_sub.setdefault(token[2], []).append(token)
            frames = []
            for sub, mine in by_sub.items():
                r = self._runs.get(sub)
                if r is None:
                    continue
                frames += [frame(last, nack=not kind, requeue=requeue) for kind, last in r.settle(mine, ack)]
        else:
            frames = [frame(token, nack=not ack, requeue=requeue) for token in tokens]
        if frames:
            try:
                session.write(b"".join(frames), self.what)
            except ConnectionLost:
                pass  # the next poll says so (and a reconnect gets these messages again)

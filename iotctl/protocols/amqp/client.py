"""AMQP 0-9-1 through pika: the one module of the group that imports pika.

A `Session` is one pika BlockingConnection with one channel. The synchronous methods
(declare, bind, get, purge...) use pika's blocking channel; the hot paths (publishing
with confirms, consuming) talk to the channel underneath it (`BlockingChannel._impl`)
with callbacks and drive the connection's I/O loop themselves (`Session.step`):
pika's blocking `confirm_delivery` waits for each confirm in turn (a round trip per
message) and its blocking consumer queues every delivery as an event object; neither
is needed here.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable

import pika
import pika.exceptions as px
from pika import spec

from iotctl import receive, send
from iotctl.errors import (AuthError, ConnectError, IotctlError, PeerError, TimeoutError_, UsageError,
                           from_os_error)
from iotctl.message import Message
from iotctl.settings import warn

PROPERTY_NAMES = ("content_type", "content_encoding", "delivery_mode", "priority", "correlation_id",
                  "reply_to", "expiration", "message_id", "timestamp", "type", "user_id", "app_id",
                  "cluster_id")
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
FIREHOSE = "amq.rabbitmq.trace"


class AmqpConfig:
    """Where and how to connect: the endpoint, the vhost and the connection tuning."""

    __slots__ = ("endpoint", "vhost", "heartbeat", "connect_timeout", "debug", "connection_name")

    def __init__(self, endpoint, vhost: str = "/", heartbeat: int | None = None,
                 connect_timeout: float = 10.0, debug: bool = False, connection_name: str | None = None):
        self.endpoint, self.vhost, self.heartbeat = endpoint, vhost, heartbeat
        self.connect_timeout, self.debug, self.connection_name = connect_timeout, debug, connection_name


# --------------------------------------------------------------------------- errors


def _root_os_error(exc: BaseException) -> BaseException | None:
    """The socket or TLS error somewhere inside pika's connection-workflow exceptions."""
    seen = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError):
            return e
        for arg in getattr(e, "args", ()):
            if isinstance(arg, BaseException):
                todo.append(arg)
            elif isinstance(arg, (list, tuple)):
                todo.extend(a for a in arg if isinstance(a, BaseException))
        for attr in ("exception", "exceptions", "__cause__", "__context__"):
            inner = getattr(e, attr, None)
            if isinstance(inner, BaseException):
                todo.append(inner)
            elif isinstance(inner, (list, tuple)):
                todo.extend(a for a in inner if isinstance(a, BaseException))
    return None


def _closed_by_broker(exc: BaseException):
    """(reply_code, reply_text) of a Channel.Close or Connection.Close inside `exc`."""
    if isinstance(exc, (px.ChannelClosedByBroker, px.ConnectionClosedByBroker)):
        return exc.reply_code, exc.reply_text
    for arg in getattr(exc, "args", ()):
        if isinstance(arg, (px.ChannelClosedByBroker, px.ConnectionClosedByBroker)):
            return arg.reply_code, arg.reply_text
        if isinstance(arg, str) and "ConnectionClosedByBroker: (" in arg:
            import re

            m = re.search(r"\((\d+)\) '(.*)'", arg)
            if m:
                return int(m.group(1)), m.group(2)
    return None


def broker_error(what: str, code: int, text: str, hint: str | None = None) -> IotctlError:
    """A Channel.Close or Connection.Close from the broker as an iotctl error."""
    why = text or f"reply code {code}"
    if code == 403:
        return AuthError(what, why, hint)
    if code in (320, 541):  # CONNECTION_FORCED, INTERNAL_ERROR
        return ConnectError(what, f"the broker closed the connection: {why}", hint)
    return PeerError(what, why, hint)


def amqp_error(what: str, exc: BaseException, cfg: AmqpConfig | None = None) -> IotctlError:
    """Classify any pika failure."""
    if isinstance(exc, IotctlError):
        return exc
    closed = _closed_by_broker(exc)
    if isinstance(exc, px.ProbableAuthenticationError) or (closed and closed[0] == 403 and
                                                          isinstance(exc, px.AMQPConnectionError)):
        text = closed[1] if closed else str(exc)
        return AuthError(what, f"the broker refused the login: {text}",
                         hint="check -u/--username and -P/--password (the guest user may connect "
                              "from localhost only)")
    if isinstance(exc, px.ProbableAccessDeniedError) or (closed and closed[0] == 530):
        text = closed[1] if closed else str(exc)
        vhost = cfg.vhost if cfg is not None else None
        hint = "list the vhosts with: rabbitmqctl list_vhosts"
        if vhost == "":
            hint = ("a URL ending in '/' asks for the empty vhost; the default vhost '/' "
                    "is written /%2f (amqp://host:5672/%2f) or left out (amqp://host:5672)")
        return AuthError(what, f"the broker refused vhost {vhost!r}: {text}", hint)
    if closed is not None:
        return broker_error(what, closed[0], closed[1])
    if isinstance(exc, px.AMQPHeartbeatTimeout):
        return ConnectError(what, "the broker stopped answering (heartbeat timeout)")
    if isinstance(exc, px.IncompatibleProtocolError):
        return ConnectError(what, "the peer does not speak AMQP 0-9-1 (wrong port?)")
    root = _root_os_error(exc)
    if root is not None:
        return from_os_error(what, root)
    if isinstance(exc, px.StreamLostError):
        return ConnectError(what, f"connection lost ({exc})")
    if isinstance(exc, (px.ConnectionClosed, px.AMQPConnectionError)):
        text = str(exc) or type(exc).__name__
        return ConnectError(what, f"connection failed: {text}")
    if isinstance(exc, px.AMQPError):
        return PeerError(what, str(exc) or type(exc).__name__)
    return IotctlError(what, str(exc) or type(exc).__name__)


# --------------------------------------------------------------------------- values


def _plain(value: Any) -> Any:
    """Header and property values as JSON-serialisable values (bytes as text or 0x-hex,
    decimals as numbers, timestamps as ISO text)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        from iotctl.message import bytes_text

        return bytes_text(bytes(value))
    import datetime
    import decimal

    if isinstance(value, decimal.Decimal):
        return float(value) if value != value.to_integral_value() else int(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return str(value)


_PROPS_CACHE: dict = {}


def properties_dict(props) -> dict:
    """Every property that is set, except the headers. (The consume hot path: values
    are str or int as pika decodes them; a short string that is not UTF-8 stays bytes,
    which the JSON writer turns into text or 0x-hex. Messages with the same properties
    share one dict, which nothing modifies.)"""
    values = vars(props)
    if values["headers"] is None:
        key = tuple(values.values())
        found = _PROPS_CACHE.get(key)
        if found is None:
            if len(_PROPS_CACHE) > 256:
                _PROPS_CACHE.clear()
            found = _PROPS_CACHE[key] = {k: v for k, v in values.items() if v is not None}
        return found
    return {k: v for k, v in values.items() if v is not None and k != "headers"}


def to_message(method, props, body: bytes, extra: dict | None = None) -> Message:
    """A delivery (Basic.Deliver or Basic.GetOk) as an envelope; the address is the
    routing key, the exchange and the rest of the delivery are in meta."""
    headers = props.headers
    key = method.routing_key
    meta = {"exchange": method.exchange, "routing_key": key, "redelivered": method.redelivered,
            "delivery_tag": method.delivery_tag,
            "properties": properties_dict(props),
            "headers": _plain(headers) if headers else {}}
    if extra:
        meta.update(extra)
    return Message("amqp", key, body, props.content_type, meta)


def build_properties(fields: dict, headers: dict | None):
    """pika BasicProperties from property name -> value and the headers table."""
    kw = {k: v for k, v in fields.items() if v is not None}
    if headers:
        kw["headers"] = dict(headers)
    return spec.BasicProperties(**kw)


def _captured_properties(meta: dict) -> dict:
    """The AMQP properties a captured envelope (--replay) carries, where they fit."""
    props = meta.get("properties")
    out = {}
    if isinstance(props, dict):
        for name in PROPERTY_NAMES:
            value = props.get(name)
            if name in ("delivery_mode", "priority", "timestamp"):
                if isinstance(value, int) and not isinstance(value, bool):
                    out[name] = value
            elif isinstance(value, str):
                out[name] = value
    return out


# --------------------------------------------------------------------------- the session


class Session:
    """One connection and one channel to the broker."""

    def __init__(self, cfg: AmqpConfig, name: str = "iotctl"):
        self.cfg = cfg
        self.name = name
        self.conn = None
        self.channel = None
        self.impl = None
        self.channel_closed: BaseException | None = None
        self.conn_closed: BaseException | None = None
        from iotctl.trace import route_logs

        route_logs(("pika",), cfg.debug, label="amqp", secrets=(cfg.endpoint.password,))

    @property
    def where(self) -> str:
        ep = self.cfg.endpoint
        host = f"[{ep.host}]" if ":" in ep.host else ep.host
        return f"{ep.scheme}://{host}:{ep.port} (vhost {self.cfg.vhost!r})"

    def __enter__(self) -> "Session":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> None:
        cfg, ep = self.cfg, self.cfg.endpoint
        what = f"cannot connect to {self.where}"
        ssl_options = None
        if ep.tls:
            try:
                ssl_options = pika.SSLOptions(ep.ssl_context(), server_hostname=ep.host)
            except OSError as exc:
                raise from_os_error(what, exc) from None
        params = pika.ConnectionParameters(
            host=ep.host, port=ep.port, virtual_host=cfg.vhost,
            credentials=pika.PlainCredentials(ep.username if ep.username is not None else "guest",
                                              ep.password if ep.password is not None else "guest"),
            heartbeat=cfg.heartbeat, ssl_options=ssl_options, connection_attempts=1,
            socket_timeout=cfg.connect_timeout, stack_timeout=cfg.connect_timeout,
            client_properties={"connection_name": self.name, "product": "iotctl"})
        try:
            self.conn = pika.BlockingConnection(params)
            self.channel = self.conn.channel()
        except (px.AMQPError, OSError, ValueError) as exc:
            if isinstance(exc, ValueError) and not isinstance(exc, OSError):
                root = _root_os_error(exc)
                if root is None:
                    raise UsageError(what, str(exc)) from None
            raise amqp_error(what, exc, cfg) from None
        self.impl = self.channel._impl
        self.ioloop = self.conn._impl.ioloop
        self.impl.add_on_close_callback(self._on_channel_closed)
        self.conn._impl.add_on_close_callback(self._on_connection_closed)

    def _on_channel_closed(self, channel, reason) -> None:
        self.channel_closed = reason

    def _on_connection_closed(self, connection, reason) -> None:
        self.conn_closed = reason

    def close(self) -> None:
        conn = self.conn
        self.conn = None
        if conn is None:
            return
        try:
            if conn.is_open:
                conn.close()
        except Exception:  # closing is best effort
            try:
                conn._impl._transport.abort()  # noqa: SLF001
            except Exception:
                pass

    # ------------------------------------------------------------------ I/O

    def step(self, wait: float | None) -> None:
        """Do network I/O (and pika's timers: heartbeats) for at most `wait` seconds,
        returning once something was read or written."""
        ioloop = self.ioloop
        timer = ioloop.call_later(max(0.0, 1.0 if wait is None else wait), _noop)
        try:
            ioloop.poll()
            ioloop.process_timeouts()
        finally:
            ioloop.remove_timeout(timer)

    def failure(self, what: str) -> IotctlError | None:
        """The error when the channel or the connection has closed, else None."""
        reason = self.channel_closed
        if reason is not None and not isinstance(reason, px.ChannelClosedByClient):
            if isinstance(reason, px.ChannelClosedByBroker):
                return broker_error(what, reason.reply_code, reason.reply_text)
            if self.conn_closed is None:
                return amqp_error(what, reason, self.cfg)
        reason = self.conn_closed
        if reason is not None and not isinstance(reason, px.ConnectionClosedByClient):
            return amqp_error(what, reason, self.cfg)
        if reason is not None or (self.conn is not None and self.conn.is_closed):
            return ConnectError(what, "connection closed")
        return None

    def check(self, what: str) -> None:
        error = self.failure(what)
        if error is not None:
            raise error

    def until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Step until done() or fail (the channel closed, or exit 5 after `timeout`)."""
        deadline = time.monotonic() + timeout
        while not done():
            self.check(what)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError_(what, f"no answer within {timeout:g} s")
            self.step(min(left, 1.0))
        self.check(what)

    def call(self, what: str, fn: Callable, *args, **kwargs):
        """A blocking-channel call with pika's errors turned into iotctl errors."""
        try:
            return fn(*args, **kwargs)
        except (px.AMQPError, OSError) as exc:
            reason = self.channel_closed
            if isinstance(reason, px.ChannelClosedByBroker) and not _closed_by_broker(exc):
                exc = reason
            raise amqp_error(what, exc, self.cfg) from None
        except ValueError as exc:  # pika validates names and argument types
            raise UsageError(what, str(exc)) from None

    # ------------------------------------------------------------------ topology

    def declare_queue(self, name: str, durable=False, exclusive=False, auto_delete=False, arguments=None,
                      passive=False):
        what = f"cannot declare queue {name!r}" if name else "cannot declare a queue"
        ok = self.call(what, self.channel.queue_declare, name, passive=passive, durable=durable,
                       exclusive=exclusive, auto_delete=auto_delete, arguments=arguments or None)
        return ok.method

    def declare_exchange(self, name: str, kind="direct", durable=False, auto_delete=False, internal=False,
                         arguments=None, passive=False) -> None:
        self.call(f"cannot declare exchange {name!r}", self.channel.exchange_declare, name, kind,
                  passive=passive, durable=durable, auto_delete=auto_delete, internal=internal,
                  arguments=arguments or None)

    def bind(self, kind: str, destination: str, source: str, routing_key: str = "", arguments=None,
             unbind: bool = False) -> None:
        verb = "unbind" if unbind else "bind"
        what = f"cannot {verb} {kind} {destination!r} {'from' if unbind else 'to'} exchange {source!r}"
        if kind == "queue":
            fn = self.channel.queue_unbind if unbind else self.channel.queue_bind
            self.call(what, fn, destination, source, routing_key=routing_key, arguments=arguments or None)
        else:
            fn = self.channel.exchange_unbind if unbind else self.channel.exchange_bind
            self.call(what, fn, destination, source, routing_key=routing_key, arguments=arguments or None)

    def delete(self, kind: str, name: str, if_unused=False, if_empty=False):
        if kind == "queue":
            ok = self.call(f"cannot delete queue {name!r}", self.channel.queue_delete, name,
                           if_unused=if_unused, if_empty=if_empty)
            return ok.method.message_count
        self.call(f"cannot delete exchange {name!r}", self.channel.exchange_delete, name, if_unused=if_unused)
        return None

    def purge(self, queue: str) -> int:
        ok = self.call(f"cannot purge queue {queue!r}", self.channel.queue_purge, queue)
        return ok.method.message_count

    # ------------------------------------------------------------------ consuming

    def consume(self, queue: str, on_message, auto_ack=False, exclusive=False, arguments=None,
                timeout: float = 10.0) -> str:
        """Basic.Consume on the underlying channel; waits for ConsumeOk."""
        done = []
        what = f"cannot consume from queue {queue!r}"
        try:
            tag = self.impl.basic_consume(queue, on_message, auto_ack=auto_ack, exclusive=exclusive,
                                          arguments=arguments or None, callback=done.append)
        except (px.AMQPError, ValueError) as exc:
            raise amqp_error(what, exc, self.cfg) from None
        self.until(lambda: bool(done), timeout, what)
        return tag

    def qos(self, prefetch: int) -> None:
        self.call("cannot set the prefetch count", self.channel.basic_qos, prefetch_count=prefetch)


def _noop() -> None:
    pass


# --------------------------------------------------------------------------- publishing


class Publisher(send.Sender):
    """The send driver's AMQP side: Basic.Publish on the underlying channel, with
    publisher confirms (a window of outstanding delivery tags, acknowledged with
    multiple=True by the broker) unless `confirm` is off. With `mandatory` each
    message the broker returns as unroutable is reported and counted as refused."""

    def __init__(self, session: Session, exchange: str | None, props, headers: dict | None,
                 property_fields: dict, mandatory: bool = False, confirm: bool = True, window: int = 1000,
                 buffer: int = 1 << 18):
        super().__init__()
        self.session = session
        self.exchange = exchange
        self.props = props
        self.fields, self.headers = property_fields, headers
        self.mandatory = mandatory
        self.confirm = confirm
        self.window = window if confirm else None
        self._publish = session.impl.basic_publish
        self._buffered = session.conn._impl._get_write_buffer_size
        # pika queues every frame as its own buffer and sends each with its own
        # send() (three per message); pump() joins them first: one send per burst
        transport = getattr(session.conn._impl, "_transport", None)
        self._tx = getattr(transport, "_tx_buffers", None)
        self._limit = buffer
        self._tag = 0
        self._low = 1  # every tag below this is settled
        self._returned: dict = {}  # tag -> reason, for returns whose ack is still to come
        self._unconfirmed: list = []  # (tag, exchange, routing key, body) with --mandatory
        self.returned = 0
        self.nacked = 0
        impl = session.impl
        if mandatory:
            impl.add_on_return_callback(self._on_return)
        if confirm:
            done = []
            impl.confirm_delivery(self._on_confirm, callback=done.append)
            session.until(lambda: bool(done), session.cfg.connect_timeout, "cannot turn on publisher confirms")

    def send(self, out):
        exchange = self.exchange
        props = self.props
        meta = out.meta
        if meta:
            if exchange is None:
                captured = meta.get("exchange")
                exchange = captured if isinstance(captured, str) else ""
            props = self._replayed_props(out)
        elif exchange is None:
            exchange = ""
        if out.content_type and props.content_type is None and not meta:
            props = build_properties({**self.fields, "content_type": out.content_type}, self.headers)
        try:
            self._publish(exchange, out.address or "", out.payload, props, self.mandatory)
        except px.ChannelWrongStateError:
            raise self._lost() from None
        except (px.AMQPError, OSError) as exc:
            raise amqp_error("publish", exc, self.session.cfg) from None
        except (ValueError, TypeError) as exc:
            raise UsageError("cannot publish", str(exc)) from None
        if not self.confirm:
            return None
        self._tag += 1
        if self.mandatory:
            self._unconfirmed.append((self._tag, exchange, out.address or "", out.payload))
        return self._tag

    def _replayed_props(self, out):
        fields = _captured_properties(out.meta)
        if out.content_type and "content_type" not in fields:
            fields["content_type"] = out.content_type
        fields.update({k: v for k, v in self.fields.items() if v is not None})
        headers = out.meta.get("headers")
        headers = dict(headers) if isinstance(headers, dict) else {}
        if self.headers:
            headers.update(self.headers)
        return build_properties(fields, headers)

    def busy(self) -> bool:
        return self._buffered() > self._limit

    def pump(self, wait: float) -> None:
        session = self.session
        tx = self._tx
        if tx is not None and len(tx) > 1:
            joined = b"".join(tx)
            tx.clear()
            tx.append(joined)
        if not (self.acked or self.refused):
            session.step(wait)
        if session.channel_closed is not None or session.conn_closed is not None:
            raise self._lost()

    def _lost(self) -> IotctlError:
        error = self.session.failure("publish")
        return error if error is not None else ConnectError("publish", "the channel closed")

    def _on_confirm(self, frame) -> None:
        method = frame.method
        tag = method.delivery_tag
        nack = isinstance(method, spec.Basic.Nack)
        if method.multiple:
            tags = range(self._low, tag + 1)
            self._low = tag + 1
        else:
            tags = (tag,)
            if tag == self._low:
                self._low += 1
        if self._unconfirmed:
            self._forget(tag, method.multiple)
        if nack:
            for t in tags:
                self.refused[t] = "nack"
                self.nacked += 1
            return
        if self._returned:
            for t in tags:
                reason = self._returned.pop(t, None)
                if reason is not None:
                    self.refused[t] = reason
                else:
                    self.acked.add(t)
        elif method.multiple:
            self.acked.update(tags)
        else:
            self.acked.add(tag)

    def _forget(self, tag: int, multiple: bool) -> None:
        pending = self._unconfirmed
        if multiple:
            i = 0
            while i < len(pending) and pending[i][0] <= tag:
                i += 1
            del pending[:i]
        else:
            for i, entry in enumerate(pending):
                if entry[0] == tag:
                    del pending[i]
                    break

    def _on_return(self, channel, method, props, body) -> None:
        reason = f"{method.reply_code} {method.reply_text}"
        warn(f"returned unroutable: exchange {method.exchange!r}, routing key {method.routing_key!r}: {reason}")
        self.returned += 1
        if not self.confirm:
            return
        # a return comes before the confirm of its message, in publishing order: it is
        # the oldest unconfirmed message with that exchange, routing key and body
        for i, (tag, exchange, key, data) in enumerate(self._unconfirmed):
            if tag not in self._returned and exchange == method.exchange and key == method.routing_key \
                    and data == body:
                self._returned[tag] = f"returned {reason}"
                break

    def refusal(self, refused: dict) -> IotctlError:
        nacks = sum(1 for r in refused.values() if r == "nack")
        returns = len(refused) - nacks
        parts = []
        if nacks:
            parts.append(f"the broker refused (nack) {nacks} message(s)")
        if returns:
            parts.append(f"{returns} message(s) were returned as unroutable (--mandatory)")
        hint = None
        if nacks:
            hint = "a nack means the queue would not take it (x-max-length with x-overflow=reject-publish?)"
        return PeerError("publish", " and ".join(parts), hint)

    def finish(self) -> None:
        """After the driver: with --no-confirm, report the returns that came back (a
        Basic.Qos round trip: the broker sends a return before answering what the
        channel asked next)."""
        if not self.confirm and self.mandatory:
            done = []
            session = self.session
            try:
                session.impl.basic_qos(prefetch_count=0, callback=done.append)
            except px.AMQPError as exc:
                raise amqp_error("publish", exc, session.cfg) from None
            session.until(lambda: bool(done), session.cfg.connect_timeout, "publish")
            if self.returned:
                raise PeerError("publish", f"{self.returned} message(s) were returned as unroutable (--mandatory)")


# --------------------------------------------------------------------------- receiving


class Consumer(receive.Receiver):
    """Deliveries from Basic.Consume on one or more queues, for the receive driver.

    ack: "after-write" acknowledges each written batch (one Basic.Ack, multiple=True),
    "auto" lets the broker consider every delivery acknowledged, "none" never
    acknowledges (what was shown goes back to the queue when the connection closes);
    `requeue` rejects what was shown with requeue at the end. `accept(msg)` drops
    deliveries (already acknowledged or automatic) for which it is false."""

    def __init__(self, session: Session, ack: str = "after-write", requeue: bool = False,
                 accept: Callable[[Message], bool] | None = None):
        self.session = session
        self.mode = "none" if requeue else ack
        self.requeue = requeue
        self.accept = accept
        self._batch: list[Message] = []
        self.consumers: list[str] = []
        self.what = "consume"

    _interrupted = False
    _old_sigint = None

    def start(self, queues, exclusive=False, priority=None, prefetch: int | None = None) -> None:
        session = self.session
        if prefetch is not None and self.mode != "auto":
            session.qos(prefetch)
            if prefetch:  # acknowledge well before the broker stops at the prefetch window
                self.ACK_EVERY = max(1, min(self.ACK_EVERY, prefetch // 4))
        arguments = {"x-priority": priority} if priority is not None else None
        for queue in queues:
            self.consumers.append(session.consume(queue, self._on_message, auto_ack=self.mode == "auto",
                                                  exclusive=exclusive, arguments=arguments,
                                                  timeout=session.cfg.connect_timeout))
        self._defer_sigint()

    def _on_message(self, channel, method, props, body) -> None:
        # the consume hot path: to_message() inlined
        headers = props.headers
        key = method.routing_key
        msg = Message("amqp", key, body, props.content_type, {
            "exchange": method.exchange, "routing_key": key, "redelivered": method.redelivered,
            "delivery_tag": method.delivery_tag, "properties": properties_dict(props),
            "headers": _plain(headers) if headers else {}})
        if self.accept is None or self.accept(msg):
            self._batch.append(msg)

    def _defer_sigint(self) -> None:
        """Ctrl-C must not land inside pika's frame handling (that tears the connection
        down before the acknowledgements of what was written go out, and the broker
        delivers those messages again): note it, and stop at the next poll."""
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        old = signal.getsignal(signal.SIGINT)
        if old is signal.SIG_IGN:
            return

        def note(signum, frame):
            self._interrupted = True

        self._old_sigint = old
        signal.signal(signal.SIGINT, note)

    def _restore_sigint(self) -> None:
        if self._old_sigint is not None:
            import signal

            signal.signal(signal.SIGINT, self._old_sigint)
            self._old_sigint = None

    def poll(self, wait):
        if self._interrupted:
            raise KeyboardInterrupt
        step = self.session.step
        if not self._batch:
            step(0.25 if wait is None else min(wait, 0.25))
            if not self._batch:
                self._send_ack()  # a pause: acknowledge what was written so far
                self._check()
                return []
        # take what else is already readable: fewer, larger batches (writes, flushes)
        for _ in range(8):
            before = len(self._batch)
            if before >= 256:
                break
            step(0)
            if len(self._batch) == before:
                break
        batch = self._batch
        self._batch = []
        return batch

    def _check(self) -> None:
        session = self.session
        if session.channel_closed is not None or session.conn_closed is not None:
            raise session.failure(self.what) or ConnectError(self.what, "the channel closed")

    def ack(self, batch) -> None:
        """Written and flushed: acknowledge (one Basic.Ack, multiple=True, for every
        ACK_EVERY messages, at a pause, and at the end)."""
        if self.mode == "after-write" and batch:
            self._ack_tag = batch[-1].meta["delivery_tag"]
            self._unacked += len(batch)
            if self._unacked >= self.ACK_EVERY:
                self._send_ack()

    ACK_EVERY = 250
    _ack_tag = 0
    _unacked = 0

    def _send_ack(self) -> None:
        if self._unacked:
            self._unacked = 0
            try:
                self.session.impl.basic_ack(self._ack_tag, multiple=True)
            except px.AMQPError:
                pass  # the connection is gone: the broker requeues, the next poll reports it

    def finish(self) -> None:
        """At the end: acknowledge what is written; with --requeue reject (requeue)
        everything shown."""
        self._restore_sigint()
        if self.session.channel_closed is not None or self.session.conn_closed is not None:
            return
        self._send_ack()
        if self.requeue:
            try:
                self.session.impl.basic_nack(0, multiple=True, requeue=True)
            except px.AMQPError:
                pass


class Getter(receive.Receiver):
    """Basic.Get, one message per poll until the queue is empty (then the source ends)."""

    def __init__(self, session: Session, queue: str, requeue: bool = False, ack: bool = True):
        self.session, self.queue, self.requeue, self.do_ack = session, queue, requeue, ack
        self.last_tag = 0

    def poll(self, wait):
        session = self.session
        method, props, body = session.call(f"cannot get from queue {self.queue!r}", session.channel.basic_get,
                                           self.queue, auto_ack=False)
        if method is None:
            return None
        self.last_tag = method.delivery_tag
        return [to_message(method, props, body, {"message_count": method.message_count})]

    def ack(self, batch) -> None:
        if not self.requeue and self.do_ack and batch:
            self.session.impl.basic_ack(batch[-1].meta["delivery_tag"], multiple=True)

    def finish(self) -> None:
        if (self.requeue or not self.do_ack) and self.last_tag:
            self.session.impl.basic_nack(self.last_tag, multiple=True, requeue=True)


# --------------------------------------------------------------------------- tap


class Tap:
    """What flows through exchanges, copied into a temporary queue (nothing is taken
    from anyone): an auto-delete fanout exchange bound to each tapped exchange
    (exchange-to-exchange bindings) and an exclusive, auto-delete, server-named queue
    bound to it. The broker removes all of it when the connection ends, also when it
    is lost; `close()` removes it at once."""

    def __init__(self, session: Session):
        self.session = session
        self.exchange = f"iotctl.tap.{uuid.uuid4().hex[:12]}"
        self.queue = None

    def setup(self, taps: list[tuple[str, str]]) -> str:
        s = self.session
        s.declare_exchange(self.exchange, "fanout", auto_delete=True, internal=True)
        self.queue = s.declare_queue("", exclusive=True, auto_delete=True).queue
        s.bind("queue", self.queue, self.exchange, "")
        for source, key in taps:
            s.bind("exchange", self.exchange, source, key)
        return self.queue

    def setup_firehose(self) -> str:
        s = self.session
        self.queue = s.declare_queue("", exclusive=True, auto_delete=True).queue
        s.bind("queue", self.queue, FIREHOSE, "#")
        self.exchange = None
        return self.queue

    def close(self) -> None:
        s = self.session
        if s.conn is None or s.channel_closed is not None or s.conn_closed is not None:
            return
        try:
            if self.queue:
                s.channel.queue_delete(self.queue)
            if self.exchange:
                s.channel.exchange_delete(self.exchange)
        except Exception:  # the broker removes them with the connection anyway
            pass


class FirehoseProbe:
    """Tells whether tracing is on: publishes one unroutable probe message; with the
    firehose on, its `publish.` trace copy arrives (and is dropped)."""

    def __init__(self, session: Session, vhost: str, wait: float = 2.0):
        self.session = session
        self.key = f"iotctl.firehose-probe.{uuid.uuid4().hex[:12]}"
        self.vhost = vhost
        self.seen = False
        self.deadline = None
        self.wait = wait
        self.warned = False

    def send(self) -> None:
        self.session.impl.basic_publish("", self.key, b"", None, False)
        self.deadline = time.monotonic() + self.wait

    def accept(self, msg: Message) -> bool:
        if msg.address.startswith("publish.") and msg.meta.get("headers", {}).get("routing_keys") == [self.key]:
            self.seen = True
            return False
        if msg.address.startswith("deliver.") and self.key in str(msg.meta.get("headers", {}).get("routing_keys")):
            return False
        return True

    def check(self) -> None:
        if not self.seen and not self.warned and self.deadline is not None and time.monotonic() > self.deadline:
            self.warned = True
            vhost = self.vhost
            warn(f"tracing is off in vhost {vhost!r}: nothing reaches {FIREHOSE}; "
                 f"turn it on with: rabbitmqctl trace_on -p {_shell_quote(vhost)} "
                 f"(and off again with: rabbitmqctl trace_off -p {_shell_quote(vhost)})")


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


class TapConsumer(Consumer):
    """A Consumer that also runs the firehose probe's check while waiting."""

    def __init__(self, session: Session, probe: FirehoseProbe | None):
        super().__init__(session, ack="auto", accept=probe.accept if probe is not None else None)
        self.probe = probe
        self.what = "tap"

    def poll(self, wait):
        batch = super().poll(wait if self.probe is None or self.probe.seen else min(wait or 0.25, 0.25))
        if self.probe is not None:
            self.probe.check()
        return batch


# --------------------------------------------------------------------------- request


class Reply(receive.Receiver):
    """The answer to a request through RabbitMQ's direct reply-to."""

    def __init__(self, session: Session, correlation_id: str):
        self.session, self.correlation_id = session, correlation_id
        self._batch: list[Message] = []
        self.returned = None

    def start(self) -> None:
        self.session.consume(DIRECT_REPLY_TO, self._on_message, auto_ack=True,
                             timeout=self.session.cfg.connect_timeout)
        self.session.impl.add_on_return_callback(self._on_return)

    def _on_message(self, channel, method, props, body) -> None:
        if props.correlation_id in (None, self.correlation_id):
            self._batch.append(to_message(method, props, body))

    def _on_return(self, channel, method, props, body) -> None:
        self.returned = (method.exchange, method.routing_key, f"{method.reply_code} {method.reply_text}")

    def poll(self, wait):
        if not self._batch:
            self.session.step(1.0 if wait is None else min(wait, 1.0))
        if self.returned is not None:
            exchange, key, reason = self.returned
            raise PeerError("request", f"the broker returned it as unroutable: exchange {exchange!r}, "
                                       f"routing key {key!r}: {reason}",
                            hint="nothing is bound to that routing key: is the service consuming?")
        if not self._batch:
            self.session.check("request")
            return []
        batch, self._batch = self._batch[:1], []
        return batch


def publish_one(session: Session, exchange: str, routing_key: str, body: bytes, props,
                mandatory: bool = False) -> None:
    try:
        session.impl.basic_publish(exchange, routing_key, body, props, mandatory)
    except (px.AMQPError, OSError) as exc:
        raise amqp_error("publish", exc, session.cfg) from None
    except (ValueError, TypeError) as exc:
        raise UsageError("cannot publish", str(exc)) from None

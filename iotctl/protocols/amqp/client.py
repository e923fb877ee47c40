"""AMQP 0-9-1 through pika: the one module of the group that imports pika.

A `Session` is one pika BlockingConnection with one channel. The synchronous methods
(declare, bind, get, purge...) use pika's blocking channel; the hot paths (publishing
with confirms, consuming) talk to the channel underneath it (`BlockingChannel._impl`)
with callbacks and drive the connection's I/O loop themselves (`Session.step`):
pika's blocking `confirm_delivery` waits for each confirm in turn (a round trip per
message) and its blocking consumer queues every delivery as an event object; neither
is needed here.

The endpoints (`Publisher`, `Consumer`, `Getter`, `Tap`) are context managers that
open and close a session of their own; closing never waits more than `CLOSE_WAIT`
for the broker (a frozen broker, Ctrl-C), and pika's frame handling is never cut in
half by Ctrl-C (interrupts.shelter).

Limits (README, "AMQP"): pika itself checks no incoming frame against the negotiated
frame_max and assembles a message of any announced size; `_Bounded` refuses a frame
larger than frame_max (131,072 bytes, what iotctl proposes and RabbitMQ's default)
and a message announced larger than MAX_BODY (512 MiB, RabbitMQ's largest
max_message_size), and bytes that are not AMQP frames, before buffering them.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any, Callable

import pika
import pika.exceptions as px
from pika import frame as pika_frame, spec
from pika.adapters.select_connection import SelectConnection

from iotctl import interrupts, receive, send
from iotctl.errors import (AuthError, ConnectError, ConnectionLost, IotctlError, PeerError, SubscriptionEnded,
                           TimeoutError_, UsageError, from_os_error)
from iotctl.message import NOTHING, Message, foreign
from iotctl.protocols.amqp.fastpath import FastReader, ack_frame, nack_frame
from iotctl.settings import warn

PROPERTY_NAMES = ("content_type", "content_encoding", "delivery_mode", "priority", "correlation_id",
                  "reply_to", "expiration", "message_id", "timestamp", "type", "user_id", "app_id",
                  "cluster_id")
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
FIREHOSE = "amq.rabbitmq.trace"
FRAME_MAX = 131072          # what iotctl proposes (pika's default, RabbitMQ's default)
MAX_BODY = 512 * 1024 * 1024  # RabbitMQ's largest max_message_size
CLOSE_WAIT = 2.0            # the longest a close waits for the broker's CloseOk
SHORT_MAX = 255             # AMQP short strings: names, routing keys, most properties


class AmqpConfig:
    """Where and how to connect: the endpoint, the vhost and the connection tuning."""

    __slots__ = ("endpoint", "vhost", "heartbeat", "connect_timeout", "debug", "connection_name")

    def __init__(self, endpoint, vhost: str = "/", heartbeat: int | None = None,
                 connect_timeout: float = 10.0, debug: bool = False, connection_name: str | None = None):
        self.endpoint, self.vhost, self.heartbeat = endpoint, vhost, heartbeat
        self.connect_timeout, self.debug, self.connection_name = connect_timeout, debug, connection_name

    def name(self, command: str) -> str:
        return self.connection_name or f"iotctl amqp {command}"


def check_name(kind: str, value: str) -> str:
    """A queue, exchange or routing key fits AMQP's 255-byte short string (exit 2)."""
    size = len(value.encode("utf-8", "surrogateescape"))
    if size > SHORT_MAX:
        shown = value if len(value) <= 40 else value[:37] + "..."
        raise UsageError(f"{kind} {shown!r}", f"is {size} bytes; AMQP allows at most {SHORT_MAX}")
    return value


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
    if code in (320, 541):  # CONNECTION_FORCED (a broker shutting down), INTERNAL_ERROR
        return ConnectionLost(what, f"the broker closed the connection: {why}", hint)
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
        return ConnectionLost(what, "the broker stopped answering (heartbeat timeout)")
    if isinstance(exc, px.IncompatibleProtocolError):
        return ConnectError(what, "the peer does not speak AMQP 0-9-1 (wrong port?)")
    if isinstance(exc, px.ShortStringTooLong):
        return UsageError(what, f"a name or property is longer than AMQP's {SHORT_MAX} bytes")
    if _is_stack_timeout(exc):
        timeout = cfg.connect_timeout if cfg is not None else None
        return TimeoutError_(what, "no AMQP handshake" + (f" within {timeout:g} s" if timeout else ""),
                             hint="is the host reachable, and is it an AMQP 0-9-1 server (RabbitMQ: port "
                                  "5672, 5671 with TLS)?")
    root = _root_os_error(exc)
    if root is not None:
        return from_os_error(what, root)
    if isinstance(exc, px.StreamLostError):
        return ConnectionLost(what, f"connection lost ({_stream_reason(exc)})")
    if isinstance(exc, (px.ConnectionClosed, px.AMQPConnectionError)):
        text = str(exc) or type(exc).__name__
        return ConnectError(what, f"connection failed: {text}")
    if isinstance(exc, px.AMQPError):
        return PeerError(what, str(exc) or type(exc).__name__)
    return IotctlError(what, str(exc) or type(exc).__name__)


def _is_stack_timeout(exc: BaseException) -> bool:
    from pika.adapters.utils.connection_workflow import AMQPConnectorStackTimeout

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, AMQPConnectorStackTimeout):
            return True
        inner = [a for a in getattr(exc, "args", ()) if isinstance(a, BaseException)]
        exc = inner[0] if inner else None
        seen += 1
    return False


def _stream_reason(exc: BaseException) -> str:
    text = str(exc)
    if "EOF" in text or "ConnectionResetError" in text:
        return "the broker closed the socket"
    return text.replace("Stream connection lost: ", "") or type(exc).__name__


# --------------------------------------------------------------------------- bounded frames


_decode = pika_frame.decode_frame
_NOT_AMQP_HINT = "is it an AMQP 0-9-1 server (RabbitMQ: port 5672, 5671 with TLS)?"


class _Bounded(SelectConnection):
    """pika's connection with the input bounded: a frame larger than the negotiated
    frame_max (pika waits for any announced size), a message announced larger than
    MAX_BODY, or bytes that are not AMQP 0-9-1 frames end the connection before they
    are buffered. A subclass is made per session (`bounded()`), which keeps the error
    (pika turns the exception it aborts the transport with into a text). (The consume
    hot path: a complete frame costs nothing more than in pika; the rest is looked at
    once per read.)"""

    failure: IotctlError | None = None
    max_body = MAX_BODY
    what = "amqp"

    def _read_frame(self):
        try:
            consumed, value = _decode(self._frame_buffer)
        except Exception as exc:  # an unknown method, a bad frame end, undecodable fields
            why = (f"a method unknown to AMQP 0-9-1 ({exc.args[0]:#010x})" if isinstance(exc, KeyError)
                   and exc.args and isinstance(exc.args[0], int) else "a malformed frame")
            raise self._fail(ConnectError(self.what, f"the peer sent something that is not AMQP 0-9-1 ({why})",
                                          hint=_NOT_AMQP_HINT))
        if value is None:
            self._incomplete()
        return consumed, value

    def _incomplete(self) -> None:
        """A frame not complete yet: look at what it announces before buffering more."""
        buf = self._frame_buffer
        if len(buf) >= 7 and buf[:4] != b"AMQP":
            if buf[0] not in (1, 2, 3, 8):
                raise self._fail(ConnectError(
                    self.what, f"the peer sent something that is not AMQP 0-9-1 ({bytes(buf[:16])!r}...)",
                    hint=_NOT_AMQP_HINT))
            size = int.from_bytes(buf[3:7], "big")
            limit = self.params.frame_max
            if size + 8 > limit:
                raise self._fail(PeerError(self.what, f"the peer sent a frame larger than {limit} bytes "
                                                      f"(frame_max): {size + 8} bytes announced"))

    def _on_data_available(self, data_in) -> None:
        super()._on_data_available(data_in)  # a read of at most 4 KiB
        for channel in self._channels.values():  # a message being assembled
            header = channel._content_assembler._header_frame
            if header is not None and header.body_size > self.max_body:
                raise self._fail(PeerError(self.what, f"the peer announced a message of {header.body_size} "
                                                      f"bytes; iotctl takes at most {self.max_body}"))

    def _fail(self, error: IotctlError) -> IotctlError:
        type(self).failure = error
        return error


def bounded(what: str) -> type:
    return type("_BoundedConnection", (_Bounded,), {"what": what, "failure": None})


# --------------------------------------------------------------------------- values


def _plain(value: Any) -> Any:
    """Header and property values as JSON-serialisable values (bytes as text or 0x-hex,
    decimals as numbers, timestamps as ISO text)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):  # a key that is not UTF-8 (pika leaves it bytes) as bytes are shown
        return {(k if isinstance(k, str) else _text(k) if isinstance(k, bytes) else str(k)): _plain(v)
                for k, v in value.items()}
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


_RAW_PROPS: dict = {}  # property bytes without headers -> (content type, properties, None): shared
_RAW_HEADERS: dict = {}  # property bytes with headers -> the same with headers: copied for each message


def decode_properties(raw: bytes):
    """A content header's property bytes as the consumer's envelope has them:
    (content type, properties_dict(), headers through _plain() or None when there
    are none), decoded by pika; None when pika's decoder refuses them. (The fast
    path's hot path: the same bytes are decoded once. Without headers the result
    is shared, as properties_dict() shares it; with headers each message gets
    its own dicts and lists, as on pika's path.)"""
    found = _RAW_PROPS.get(raw)
    if found is not None:
        return found
    found = _RAW_HEADERS.get(raw)
    if found is None:
        try:
            props = spec.BasicProperties().decode(raw)
        except Exception:  # a malformed header: pika's own path reports it
            return None
        headers = props.headers
        cache = _RAW_PROPS if headers is None else _RAW_HEADERS
        if len(cache) > 256:
            cache.clear()
        found = cache[raw] = (_text(props.content_type), properties_dict(props),
                              None if headers is None else (_plain(headers) if headers else {}))
        if headers is None:
            return found
    content_type, properties, headers = found
    return content_type, dict(properties), _fresh(headers)


def _fresh(value):
    """A copy of _plain()'s dicts and lists (the rest is immutable)."""
    kind = type(value)
    if kind is dict:
        return {k: _fresh(v) for k, v in value.items()}
    if kind is list:
        return [_fresh(v) for v in value]
    return value


def _text(value):
    """A short string pika left as bytes (not UTF-8) as the envelope shows bytes: text,
    or `0x` and hex (a message's content type is text everywhere)."""
    if isinstance(value, bytes):
        from iotctl.message import bytes_text

        return bytes_text(value)
    return value


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
    return Message("amqp", key, body, _text(props.content_type), meta)


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
            elif isinstance(value, (str, bytes)):
                out[name] = value
    return out


def _fits(value) -> bool:
    data = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
    return len(data) <= SHORT_MAX


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
        self.consumers: dict[str, str] = {}  # consumer tag -> queue, of those started by consume()
        self.cancelled: str | None = None  # the queue whose consumer the broker cancelled
        self.conn_closed: BaseException | None = None
        self._bounded = bounded(f"cannot connect to {self.where}")
        from iotctl.trace import route_logs

        route_logs(("pika", "iotctl.amqp"), cfg.debug, label="amqp", secrets=(cfg.endpoint.password,))

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
            heartbeat=cfg.heartbeat, ssl_options=ssl_options, connection_attempts=1, frame_max=FRAME_MAX,
            socket_timeout=cfg.connect_timeout, stack_timeout=cfg.connect_timeout,
            client_properties={"connection_name": self.name, "product": "iotctl"})
        try:
            self.conn = pika.BlockingConnection(params, _impl_class=self._bounded)
            self.channel = self.conn.channel()
        except IotctlError:
            self.abort()
            raise
        except (px.AMQPError, OSError, ValueError, px.AMQPConnectionError) as exc:
            self.abort()
            if self._bounded.failure is not None:
                raise self._bounded.failure from None
            if isinstance(exc, ValueError) and not isinstance(exc, OSError):
                root = _root_os_error(exc)
                if root is None:
                    raise UsageError(what, str(exc)) from None
            raise amqp_error(what, exc, cfg) from None
        except Exception as exc:  # the connection workflow's own exceptions (a stack timeout)
            self.abort()
            if self._bounded.failure is not None:
                raise self._bounded.failure from None
            raise amqp_error(what, exc, cfg) from None
        self.ioloop = self.conn._impl.ioloop
        self._adopt_channel()
        self.conn._impl.add_on_close_callback(self._on_connection_closed)

    def _adopt_channel(self) -> None:
        """The channel's callbacks: its close, and a consumer the broker cancels. pika's
        BlockingChannel knows only the consumers started through it, not those started on
        its channel (`consume`): for one of ours its cancel handler raised KeyError, which
        pika took for a broken stream ("connection lost (KeyError('ctag1...'))")."""
        channel = self.channel
        self.impl = impl = channel._impl
        self.channel_closed = None
        self.cancelled = None
        impl.add_on_close_callback(self._on_channel_closed)
        theirs = channel._on_consumer_cancelled_by_broker
        if self.conn._impl.callbacks.remove(impl.channel_number, spec.Basic.Cancel, theirs):
            def on_cancel(frame) -> None:
                tag = frame.method.consumer_tag
                if tag in channel._consumer_infos:
                    theirs(frame)
                elif tag in self.consumers:
                    self.cancelled = self.consumers[tag]

            impl.add_on_cancel_callback(on_cancel)

    def _on_channel_closed(self, channel, reason) -> None:
        self.channel_closed = reason

    def _on_connection_closed(self, connection, reason) -> None:
        self.conn_closed = reason

    @property
    def usable(self) -> bool:
        return self.conn is not None and not self.broken

    @property
    def broken(self) -> bool:
        """The channel or the connection has closed (or the input was refused)."""
        return (self.channel_closed is not None or self.conn_closed is not None or self.cancelled is not None
                or self._bounded.failure is not None)

    def close(self, wait: float = CLOSE_WAIT) -> None:
        """Close gracefully (what was sent before is handled by the broker first), but
        wait at most `wait` seconds for the broker, and never longer on Ctrl-C."""
        conn = self.conn
        if conn is None:
            return
        impl = conn._impl
        try:
            if impl is not None and impl.is_open:
                impl.close()
                deadline = time.monotonic() + min(wait, self.cfg.connect_timeout)
                while not impl.is_closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self.step(min(left, 0.25))
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: drop the connection now
        except Exception:  # closing is best effort
            pass
        self.abort()

    def abort(self) -> None:
        """Drop the connection without waiting for anything (it is gone, or it must go)."""
        conn = self.conn
        self.conn = None
        if conn is None:
            return
        impl = conn._impl
        try:
            transport = getattr(impl, "_transport", None) if impl is not None else None
            if transport is not None and not impl.is_closed:
                sock = getattr(transport, "_sock", None)
                transport.abort()
                impl.ioloop.process_timeouts()  # pika closes the socket in a callback
                if sock is not None:
                    sock.close()  # (and when it did not get to it: the broker must see it go)
        except Exception:
            pass
        try:
            conn._cleanup()  # the I/O loop's descriptors
        except Exception:
            pass

    # ------------------------------------------------------------------ I/O

    def step(self, wait: float | None) -> None:
        """Do network I/O (and pika's timers: heartbeats) for at most `wait` seconds,
        returning once something was read or written. A Ctrl-C never cuts pika's frame
        handling in half (sheltered): the driver raises it afterwards."""
        ioloop = self.ioloop
        timer = ioloop.call_later(max(0.0, 1.0 if wait is None else wait), _noop)
        try:
            ioloop.poll()
            ioloop.process_timeouts()
        finally:
            ioloop.remove_timeout(timer)

    def failure(self, what: str) -> IotctlError | None:
        """The error when the channel or the connection has closed, else None."""
        if self._bounded.failure is not None:
            error = self._bounded.failure
            return type(error)(what, error.why, error.hint)
        if self.cancelled is not None:
            return SubscriptionEnded(what, f"the broker cancelled the consumer of queue {self.cancelled!r} (the "
                                           "queue was deleted, or its node went down)")
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
            return ConnectionLost(what, "connection closed")
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
        except IotctlError:
            raise
        except (px.AMQPError, OSError) as exc:
            if self._bounded.failure is not None:
                raise self.failure(what) from None
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
        ok = self.call(what, self.channel.queue_declare, check_name("queue", name), passive=passive,
                       durable=durable, exclusive=exclusive, auto_delete=auto_delete, arguments=arguments or None)
        return ok.method

    def declare_exchange(self, name: str, kind="direct", durable=False, auto_delete=False, internal=False,
                         arguments=None, passive=False) -> None:
        self.call(f"cannot declare exchange {name!r}", self.channel.exchange_declare, check_name("exchange", name),
                  kind, passive=passive, durable=durable, auto_delete=auto_delete, internal=internal,
                  arguments=arguments or None)

    def bind(self, kind: str, destination: str, source: str, routing_key: str = "", arguments=None,
             unbind: bool = False) -> None:
        verb = "unbind" if unbind else "bind"
        what = f"cannot {verb} {kind} {destination!r} {'from' if unbind else 'to'} exchange {source!r}"
        check_name(kind, destination)
        check_name("exchange", source)
        check_name("routing key", routing_key)
        if kind == "queue":
            fn = self.channel.queue_unbind if unbind else self.channel.queue_bind
            self.call(what, fn, destination, source, routing_key=routing_key, arguments=arguments or None)
        else:
            fn = self.channel.exchange_unbind if unbind else self.channel.exchange_bind
            self.call(what, fn, destination, source, routing_key=routing_key, arguments=arguments or None)

    def exists(self, kind: str, name: str) -> bool:
        """Whether queue or exchange `name` exists (a passive declare; a missing one
        closes the channel, so a fresh one replaces it)."""
        check_name(kind, name)
        fn = self.channel.queue_declare if kind == "queue" else self.channel.exchange_declare
        try:
            fn(name, passive=True)
            return True
        except px.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise amqp_error(f"cannot look up {kind} {name!r}", exc, self.cfg) from None
        except (px.AMQPError, OSError) as exc:
            raise amqp_error(f"cannot look up {kind} {name!r}", exc, self.cfg) from None
        self._new_channel(f"cannot look up {kind} {name!r}")
        return False

    def _new_channel(self, what: str) -> None:
        self.channel = self.call(what, self.conn.channel)
        self._adopt_channel()

    def delete(self, kind: str, name: str, if_unused=False, if_empty=False, if_exists=False):
        """Delete queue or exchange `name`; None when it did not exist (with `if_exists`),
        else the queue's message count (None for an exchange). RabbitMQ answers a delete
        of a missing name with DeleteOk: a passive declare first tells."""
        if not self.exists(kind, name):
            if if_exists:
                return "missing"
            raise PeerError(f"cannot delete {kind} {name!r}", f"no such {kind} in vhost {self.cfg.vhost!r}",
                            hint="--if-exists accepts a missing one")
        if kind == "queue":
            ok = self.call(f"cannot delete queue {name!r}", self.channel.queue_delete, name,
                           if_unused=if_unused, if_empty=if_empty)
            return ok.method.message_count
        self.call(f"cannot delete exchange {name!r}", self.channel.exchange_delete, name, if_unused=if_unused)
        return None

    def purge(self, queue: str) -> int:
        ok = self.call(f"cannot purge queue {queue!r}", self.channel.queue_purge, check_name("queue", queue))
        return ok.method.message_count

    def is_direct(self, exchange: str) -> bool | None:
        """Whether `exchange` is a direct exchange (True/False; None when it cannot be
        told). AMQP has no way to ask an exchange's type: on a channel of its own, an
        exchange that exists (a passive declare) is declared again as direct with no
        other change; the broker compares the type first, so a 406 about the 'type'
        means another type, success or a 406 about anything else means direct."""
        what = f"cannot look up exchange {exchange!r}"
        if not self.exists("exchange", exchange):
            raise PeerError(what, f"NOT_FOUND - no exchange {exchange!r} in vhost {self.cfg.vhost!r}")
        probe = self.call(what, self.conn.channel)
        try:
            probe.exchange_declare(exchange, "direct", passive=False)
        except px.ChannelClosedByBroker as exc:
            if exc.reply_code == 406:
                return "arg 'type'" not in exc.reply_text
            return None  # not allowed to configure it: cannot tell
        except (px.AMQPError, OSError) as exc:
            raise amqp_error(what, exc, self.cfg) from None
        try:
            probe.close()
        except Exception:
            pass
        return True

    # ------------------------------------------------------------------ consuming

    def consume(self, queue: str, on_message, auto_ack=False, exclusive=False, arguments=None,
                timeout: float = 10.0) -> str:
        """Basic.Consume on the underlying channel; waits for ConsumeOk."""
        done = []
        what = f"cannot consume from queue {queue!r}"
        check_name("queue", queue)
        try:
            tag = self.impl.basic_consume(queue, on_message, auto_ack=auto_ack, exclusive=exclusive,
                                          arguments=arguments or None, callback=done.append)
        except (px.AMQPError, ValueError) as exc:
            raise amqp_error(what, exc, self.cfg) from None
        self.until(lambda: bool(done), timeout, what)
        self.consumers[tag] = queue
        return tag

    def qos(self, prefetch: int) -> None:
        self.call("cannot set the prefetch count", self.channel.basic_qos, prefetch_count=prefetch)


def _noop() -> None:
    pass


class _Owner:
    """An endpoint that opens and closes a session of its own (`cfg`, `name`)."""

    cfg: AmqpConfig
    name: str
    session: Session | None

    @property
    def where(self) -> str:
        return self.session.where if self.session is not None else self.cfg.endpoint.display

    def _connected(self) -> Session:
        session = Session(self.cfg, self.name)
        session.connect()
        return session


# --------------------------------------------------------------------------- publishing


class Publisher(_Owner, send.Sender):
    """The send driver's AMQP side: Basic.Publish on the underlying channel, with
    publisher confirms (a window of outstanding delivery tags, acknowledged with
    multiple=True by the broker) unless `confirm` is off. With `mandatory` each
    message the broker returns as unroutable is reported and refused (--failed gets
    it); without confirms the outcome of a window of mandatory messages is learnt
    from a round trip (Basic.Qos: the broker sends a return before answering what
    the channel asks next).

    Entered, it connects a session of its own. `exchange` None: a replayed AMQP
    message goes to its captured exchange, anything else to ''. `fields`/`headers`:
    the command line's properties, which win over a message's own. A message from
    another protocol is adopted in one place, `_props`."""

    protocol = "amqp"

    def __init__(self, cfg: AmqpConfig, exchange: str | None = None, fields: dict | None = None,
                 headers: dict | None = None, mandatory: bool = False, confirm: bool = True, window: int = 1000,
                 name: str = "iotctl amqp publish", buffer: int = 1 << 18):
        super().__init__()
        self.cfg, self.name = cfg, name
        self.exchange = exchange
        self.fields = {k: v for k, v in (fields or {}).items() if v is not None}
        self.headers = dict(headers or {})
        self.props = build_properties(self.fields, self.headers)
        self.mandatory = mandatory
        self.confirm = confirm
        self.synced = mandatory and not confirm  # outcomes learnt by round trips
        self.window = window if (confirm or self.synced) else None
        self.routing_keys: tuple[str, ...] = ()
        self.address: str | None = None  # the URL's one routing key: for a message without an address
        self.session: Session | None = None
        self._limit = buffer
        self._tag = 0
        self._low = 1  # every tag below this is settled
        self._returned: dict = {}  # tag -> reason, for returns whose outcome is still to come
        self._unconfirmed: list = []  # (tag, exchange, routing key, body) with --mandatory
        self._sync_upto = 0  # with `synced`: the last tag a round trip in flight settles
        self.returned = 0
        self.nacked = 0

    def composed(self, msg: Message) -> Message:
        """As a capture has it: the exchange and the command line's properties and
        headers go with a message into --failed, so `--replay FILE` alone sends it to
        the same place, the same way (it went to the default exchange)."""
        meta = dict(msg.meta) if isinstance(msg.meta, dict) else {}
        meta.setdefault("exchange", self.exchange or "")
        if self.fields:
            meta.setdefault("properties", dict(self.fields))
        if self.headers:
            meta.setdefault("headers", dict(self.headers))
        return msg.copy(protocol=self.protocol, meta=meta)

    def open(self) -> None:
        session = self._connected()
        try:
            impl = session.impl
            if self.mandatory:
                impl.add_on_return_callback(self._on_return)
            if self.confirm:
                done = []
                impl.confirm_delivery(self._on_confirm, callback=done.append)
                session.until(lambda: bool(done), session.cfg.connect_timeout, "cannot turn on publisher confirms")
        except BaseException:
            session.abort()
            raise
        self.session = session
        self._publish = impl.basic_publish
        self._buffered = session.conn._impl._get_write_buffer_size
        # pika queues every frame as its own buffer and sends each with its own
        # send() (three per message); pump() joins them first: one send per burst
        transport = getattr(session.conn._impl, "_transport", None)
        self._tx = getattr(transport, "_tx_buffers", None)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()

    def send(self, msg):
        exchange = self.exchange
        if msg.meta or msg.protocol or msg.content_type:
            exchange, props = self._props(msg)
        else:
            props = self.props
            if exchange is None:
                exchange = ""
        key = msg.address or self.address or ""
        try:
            self._publish(exchange, key, msg.payload, props, self.mandatory)
        except px.ShortStringTooLong:
            raise _too_long(exchange, key, props) from None
        except px.ChannelWrongStateError:
            raise self._lost() from None
        except (px.AMQPError, OSError) as exc:
            raise amqp_error("publish", exc, self.cfg) from None
        except (ValueError, TypeError) as exc:
            raise UsageError("cannot publish", str(exc)) from None
        if self.window is None:
            return None
        self._tag += 1
        if self.mandatory:
            self._unconfirmed.append((self._tag, exchange, key, msg.payload))
        return self._tag

    def _props(self, msg: Message):
        """The exchange and properties of a message that brings its own (replayed or
        bridged): an AMQP (or command-line) message's captured properties, headers and
        exchange; from another protocol only what crosses (content type, headers,
        correlation id, reply-to), nothing else of its meta. The command line's
        properties win; its headers add to the message's."""
        found = foreign(msg, "amqp")
        exchange = self.exchange
        if found is NOTHING:  # a bridge's plain message: the command line's properties alone
            return ("" if exchange is None else exchange), self.props
        meta = msg.meta if isinstance(msg.meta, dict) else {}
        if found is None:
            fields = _captured_properties(meta)
            if msg.content_type and "content_type" not in fields:
                fields["content_type"] = msg.content_type
            captured = meta.get("headers")
            headers = dict(captured) if isinstance(captured, dict) else {}
            if exchange is None:
                captured = meta.get("exchange")
                exchange = captured if isinstance(captured, str) else ""
        else:
            if not (found.content_type or found.headers or found.correlation_id is not None or found.reply_to):
                # nothing crosses (a bridge's plain message): the command line's properties alone
                return ("" if exchange is None else exchange), self.props
            fields = {}
            if found.content_type and _fits(found.content_type):
                fields["content_type"] = found.content_type
            corr = found.correlation_id
            if corr is not None and _fits(corr):
                try:
                    fields["correlation_id"] = corr.decode("utf-8")
                except UnicodeDecodeError:
                    fields["correlation_id"] = corr  # a short string may carry any bytes
            if found.reply_to and _fits(found.reply_to):
                fields["reply_to"] = found.reply_to
            headers = {k: v for k, v in found.headers if _fits(k)}
            if exchange is None:
                exchange = ""
        fields.update(self.fields)
        headers.update(self.headers)
        return exchange, build_properties(fields, headers)

    def busy(self) -> bool:
        return self._buffered() > self._limit

    def pump(self, wait: float) -> None:
        session = self.session
        tx = self._tx
        if tx is not None and len(tx) > 1:
            joined = b"".join(tx)
            tx.clear()
            tx.append(joined)
        if self.synced and self._tag > self._sync_upto and not self._sync_pending:
            self._sync()
        if not (self.acked or self.refused):
            session.step(wait)
        if session.broken:
            raise self._lost()

    _sync_pending = False

    def _sync(self) -> None:
        """A round trip after the mandatory messages sent so far: once it is answered,
        each of them was either returned (refused) or routed (acknowledged)."""
        upto = self._tag

        def answered(_frame) -> None:
            self._sync_pending = False
            for entry in self._unconfirmed:
                if entry[0] > upto:
                    break
                tag = entry[0]
                reason = self._returned.pop(tag, None)
                if reason is not None:
                    self.refused[tag] = reason
                else:
                    self.acked.add(tag)
            self._forget(upto, True)

        self._sync_pending = True
        self._sync_upto = upto
        try:
            self.session.impl.basic_qos(prefetch_count=0, callback=answered)
        except px.AMQPError:
            raise self._lost() from None

    def finish(self) -> None:
        """Everything was sent and settled: with --no-confirm --mandatory a last round
        trip for anything sent since the last one (its returns go to `refused`)."""
        if self.synced and self._tag > self._sync_upto and not self._sync_pending:
            self._sync()

    def _lost(self) -> IotctlError:
        error = self.session.failure("publish") if self.session is not None else None
        return error if error is not None else ConnectionLost("publish", "the channel closed")

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
        # a return comes before the confirm (or the round trip) of its message, in
        # publishing order: it is the oldest unsettled message with that exchange,
        # routing key and body
        for tag, exchange, key, data in self._unconfirmed:
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


def _too_long(exchange: str, key: str, props) -> IotctlError:
    for kind, value in (("exchange", exchange), ("routing key", key)):
        try:
            check_name(kind, value)
        except UsageError as exc:
            return exc
    return UsageError("cannot publish", f"a property or header name is longer than AMQP's {SHORT_MAX} bytes")


# --------------------------------------------------------------------------- receiving


def _log():
    import logging

    return logging.getLogger("iotctl.amqp")


def _why_left(stop, rest: bytes) -> str:
    """What ended the fast path, for the -d trace."""
    if stop is None:
        return "closing"
    if stop.error is not None:
        return f"socket error ({stop.error})"
    if stop.eof:
        return "the stream ended"
    if stop.dead:
        return "nothing from the broker for longer than the heartbeat allows"
    if len(rest) >= 11 and rest[0] == 1:
        return (f"a method frame it does not take (class {int.from_bytes(rest[7:9], 'big')}, method "
                f"{int.from_bytes(rest[9:11], 'big')}, channel {int.from_bytes(rest[1:3], 'big')})")
    return f"a frame it does not take ({bytes(rest[:16])!r})"


_GENERATION = 1 << 48  # tokens: generation * _GENERATION + delivery tag


class Consumer(_Owner, receive.Receiver):
    """Deliveries from Basic.Consume on one or more queues, for the receive driver.

    Entered, it connects a session of its own, declares the throw-away queue of the
    tap form (`declare`: (exchange, keys)), sets the prefetch and consumes.

    ack: "after-write" acknowledges exactly the messages the driver gives back, with
    one Basic.Ack multiple=True for the longest prefix of deliveries wholly
    acknowledged (receive.Cumulative), sent as soon as they are written; "auto" lets the broker consider every delivery acknowledged; "none" never
    acknowledges (what was shown goes back to the queue when the connection closes);
    `requeue` rejects everything shown with requeue at the end. A message's `token`
    is its delivery tag plus the connection's generation: the tokens of a connection
    since replaced are ignored. `accept(msg)` drops deliveries for which it is false
    (acknowledged, or automatic).

    Once consuming, the socket is read by the fast path (fastpath.py, `fast`) rather
    than pika, over plain TCP and TLS alike; the first frame it does not take (any
    but a delivery on this channel or a heartbeat), the end of the stream or a socket
    error hands the connection back to pika for good (`_leave_fast`), so pika reports
    every failure as before. IOTCTL_AMQP_PIKA_RECEIVE=1 keeps pika's receive path
    (differential tests)."""

    can_reconnect = True
    fast = None  # the FastReader while the fast path reads the socket

    def __init__(self, cfg: AmqpConfig, queues=(), ack: str = "after-write", requeue: bool = False,
                 prefetch: int | None = None, exclusive: bool = False, priority: int | None = None,
                 declare: tuple[str, tuple[str, ...]] | None = None, name: str = "iotctl amqp consume",
                 accept: Callable[[Message], bool] | None = None):
        self.cfg, self.name = cfg, name
        self.names = list(queues)
        self.mode = "none" if requeue else ack
        self.requeue = requeue
        self.prefetch, self.exclusive, self.priority = prefetch, exclusive, priority
        self.declare = declare
        self.accept = accept
        self.delivery = "at-most-once" if self.mode == "auto" else "at-least-once"
        self.session: Session | None = None
        self.queues: list[str] = []
        self.what = "consume"
        self._batch: list[Message] = []
        self._base = 0
        self._cumulative = receive.Cumulative()
        self._delivered = self._cumulative.order.append  # Cumulative.delivered, without a call of its own
        self._exact = self.mode == "after-write"
        self._ack_tag = 0
        self._unacked = 0

    def open(self) -> None:
        session = self._connected()
        try:
            self.queues = self._prepare(session)
            if self.prefetch is not None and self.mode != "auto":
                session.qos(self.prefetch)
            arguments = {"x-priority": self.priority} if self.priority is not None else None
            self.session = session
            for queue in self.queues:
                session.consume(queue, self._on_message, auto_ack=self.mode == "auto", exclusive=self.exclusive,
                                arguments=arguments, timeout=session.cfg.connect_timeout)
            self._consuming(session)
            self.fast = self._fast(session)
        except BaseException:
            self.session = None
            self.fast = None
            session.abort()
            raise

    def _consuming(self, session: Session) -> None:
        """Consuming, before the fast path takes over (Tap sends its probe here)."""

    def _prepare(self, session: Session) -> list[str]:
        """The queues to consume from (the tap form declares its own)."""
        names = list(self.names)
        if self.declare is not None:
            exchange, keys = self.declare
            if not keys:
                refuse_direct(session, exchange, f"consume --declare -e {exchange}", "-r KEY")
            q = session.declare_queue("", exclusive=True, auto_delete=True).queue
            for key in keys or ("#",):
                session.bind("queue", q, exchange, key)
            names.append(q)
        return names

    # ------------------------------------------------------------------ the fast path

    def _fast(self, session: Session):
        """The FastReader, once pika is between deliveries and has written all it
        queued (its loop runs until then, at most connect_timeout); None when pika
        keeps reading (IOTCTL_AMQP_PIKA_RECEIVE=1, or it never got there)."""
        if os.environ.get("IOTCTL_AMQP_PIKA_RECEIVE") == "1":
            return None
        impl = session.conn._impl
        transport = getattr(impl, "_transport", None)
        sock = getattr(transport, "_sock", None)
        if sock is None:
            return None
        deadline = time.monotonic() + session.cfg.connect_timeout
        while (impl._get_write_buffer_size()
               or any(c._content_assembler._method_frame is not None for c in impl._channels.values())):
            if session.broken or time.monotonic() > deadline:
                return None
            session.step(0.05)
        if session.broken or not session.impl.is_open:
            return None
        buffered = impl._frame_buffer  # the start of a frame pika has not got whole (taken over)
        impl._frame_buffer = b""
        _log().debug("consuming: iotctl reads the socket from now on (the fast path; "
                     "IOTCTL_AMQP_PIKA_RECEIVE=1 leaves it to pika)")
        return FastReader(sock, session.impl.channel_number, impl.params.frame_max, impl.params.heartbeat,
                          impl.max_body, session.impl._consumers.keys(), decode_properties, _RAW_PROPS,
                          bytes(buffered))

    def _leave_fast(self) -> None:
        """pika reads the connection again, for good: it gets what the fast path has
        not taken (written acks still queued go to its output first), as its
        transport would have given it (4 KiB at a time), and then the reason the
        fast path stopped: the end of the stream and a socket error as its
        transport meets them, a broker silent past the heartbeat as its heartbeat
        checker ends the connection. pika's byte counters are brought up to date
        (its heartbeat checker compares them)."""
        fast, self.fast = self.fast, None
        session = self.session
        if fast is None or session is None or session.conn is None:
            return
        impl = session.conn._impl
        transport = getattr(impl, "_transport", None)
        stop = fast.stop
        rest = stop.rest if stop is not None else fast.buffered()
        _log().debug("pika reads the socket again: %s", _why_left(stop, rest))
        impl.bytes_received += fast.consumed
        impl.bytes_sent += fast.sent
        if transport is None:
            return
        if fast.out:
            transport.write(bytes(fast.out))
            fast.out.clear()
        active = transport._STATE_ACTIVE
        try:
            for i in range(0, len(rest), 4096):
                if transport._state != active:
                    return
                transport._protocol.data_received(rest[i:i + 4096])
        except Exception as exc:  # what pika's transport does when its protocol refuses the data
            if transport._state == active:
                transport._initiate_abort(exc)
            return
        if stop is None or transport._state != active:
            return
        if stop.error is not None:
            transport._initiate_abort(stop.error)
        elif stop.dead:
            checker = impl._heartbeat_checker
            if checker is not None:
                checker._close_connection()
            else:
                transport._initiate_abort(px.AMQPHeartbeatTimeout("the broker stopped answering"))
        # eof: pika's transport reads it again from the socket

    def _took(self, batch: list[Message]) -> list[Message]:
        """The fast path's deliveries, as _on_message keeps them (tokens, delivery
        order for the cumulative acknowledgement, accept)."""
        accept = self.accept
        if self.mode == "auto":  # nothing to acknowledge: no token, as _on_message leaves it
            for msg in batch:
                msg.token = None
            return batch if accept is None else [m for m in batch if accept(m)]
        base = self._base
        delivered = self._delivered
        exact = self._exact
        if accept is None:
            for msg in batch:
                msg.token = token = base + msg.token
                if exact:
                    delivered(token)
            return batch
        kept = []
        for msg in batch:
            msg.token = token = base + msg.token
            if exact:
                delivered(token)
                if not accept(msg):
                    self._settle([token])  # not shown: nothing to keep it for
                    continue
            kept.append(msg)
        return kept

    def _fast_poll(self, fast, wait) -> list[Message]:
        """poll() on the fast path (sheltered as Session.step is: a Ctrl-C waits at most
        the 0.25 s of a wait, never cuts a read or its bookkeeping in half)."""
        if self._batch:  # read by pika before the fast path took over
            batch, self._batch = self._batch, []
            return batch
        batch = []
        if fast.wait(0.25 if wait is None else min(wait, 0.25)):
            got = fast.read()
            if got:
                batch = self._took(got)
        if fast.stop is not None:
            self._leave_fast()  # (pika may deliver what came after: in order, after these)
            if self._batch:
                batch = batch + self._batch
                self._batch = []
            if not batch:
                return self.poll(0)
        return batch

    # ------------------------------------------------------------------ the receive driver's side

    def close(self) -> None:
        """Acknowledge what was written; with --requeue reject (requeue) everything
        shown; close (at most CLOSE_WAIT for the broker)."""
        session = self.session
        if session is None:
            return
        if self.fast is not None:
            self._send_ack()
            self._leave_fast()
        if session.usable:
            try:
                self._send_ack()
                if self.requeue:
                    session.impl.basic_nack(0, multiple=True, requeue=True)
            except (px.AMQPError, OSError):
                pass
        session.close()

    def reconnect(self) -> None:
        old = self.session
        self.session = None
        self.fast = None
        if old is not None:
            old.abort()
        # deliveries of the old connection go back to the queue: not written, never acknowledged
        self._base += _GENERATION
        self._cumulative.forget()
        self._batch = []
        self._ack_tag = 0
        self._unacked = 0
        self.open()

    def _on_message(self, channel, method, props, body) -> None:
        """A delivery pika read (before the fast path took over, or without it): kept
        as the fast path keeps its own (_took)."""
        msg = to_message(method, props, body)
        msg.token = method.delivery_tag
        self._batch.extend(self._took([msg]))

    def poll(self, wait):
        fast = self.fast
        if fast is not None:
            return self._fast_poll(fast, wait)
        session = self.session
        step = session.step
        if self._unacked:
            self._send_ack()
        if not self._batch:
            step(0.25 if wait is None else min(wait, 0.25))
            if not self._batch:
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
        if session.broken:
            raise session.failure(self.what) or ConnectionLost(self.what, "the channel closed")

    def ack(self, batch) -> None:
        """Written and flushed: acknowledge exactly these, at once (one Basic.Ack,
        multiple=True, for the longest prefix of deliveries wholly acknowledged: an
        acknowledgement that waits is one a broker restart loses, and the message
        comes twice)."""
        if self._exact and batch:
            base = self._base
            self._settle([t for t in [msg.token for msg in batch] if t is not None and t > base])

    def _settle(self, tokens, given_back=()) -> None:
        """Settle tokens of this connection (the caller drops older ones)."""
        base = self._base
        last = self._cumulative.confirm(tokens, given_back)
        if last is not None:
            self._ack_tag = last - base
            self._unacked = 1
            # made now (pika buffers it until its next I/O: the next poll(), flush() or
            # close()): an ack left for close() was lost when Ctrl-C found the session
            # unusable, and everything printed came back (seen in CI)
            self._send_ack()

    def nack(self, batch) -> None:
        """Give these back to the queue (Basic.Nack with requeue), at once."""
        if self.mode == "auto" or self.session is None:
            return
        fast = self.fast
        if fast is None and not self.session.usable:
            return
        base = self._base
        tokens = [msg.token for msg in batch if msg.token is not None and msg.token > base]
        if fast is not None:
            channel = fast.channel
            fast.write(b"".join(nack_frame(channel, token - base, False, True) for token in tokens))
            if fast.stop is not None:
                self._leave_fast()
        else:
            try:
                for token in tokens:
                    self.session.impl.basic_nack(token - base, multiple=False, requeue=True)
            except (px.AMQPError, OSError):
                return  # the connection is gone: the broker requeues them anyway
        if self.mode == "after-write":
            self._settle((), tokens)  # settled: a later cumulative ack may pass them

    def flush(self) -> None:
        """The acks pika buffered go out now (pika writes only inside its I/O loop's
        poll; deliveries read meanwhile wait for the next poll). On the fast path:
        what is queued, and a heartbeat when one is due."""
        session = self.session
        if session is None:
            return
        fast = self.fast
        if fast is not None:
            if self._unacked:
                self._send_ack()
            fast.upkeep()
            if fast.stop is not None:
                self._leave_fast()
            return
        if not session.usable:
            return
        if self._unacked:
            self._send_ack()
        if session.conn._impl._get_write_buffer_size():
            session.step(0)

    def _send_ack(self) -> None:
        if self._unacked:
            self._unacked = 0
            fast = self.fast
            if fast is not None:
                fast.write(ack_frame(fast.channel, self._ack_tag, True))
                if fast.stop is not None:
                    self._leave_fast()
                return
            try:
                self.session.impl.basic_ack(self._ack_tag, multiple=True)
            except (px.AMQPError, OSError):
                pass  # the connection is gone: the broker requeues, the next poll reports it


interrupts.shelter(Session.step, Publisher.send, Consumer.ack, Consumer.nack, Consumer._leave_fast,
                   Consumer._took, Consumer._fast_poll, FastReader.read, FastReader.flush, FastReader.upkeep)


def refuse_direct(session: Session, exchange: str, what: str, fix: str) -> None:
    """Binding '#' to a direct exchange matches only the routing key '#': refuse it."""
    if exchange == "" or session.is_direct(exchange) is not True:
        return
    raise UsageError(f"{what}: exchange {exchange!r} is a direct exchange",
                     "it routes by the exact routing key, so '#' would match only the key '#'",
                     hint=f"give the key to watch ({fix})")


class Getter(_Owner, receive.Receiver):
    """Basic.Get, one message per poll until the queue is empty (then the source ends);
    each message is acknowledged once written, or all are put back (`requeue`)."""

    delivery = "at-least-once"

    def __init__(self, cfg: AmqpConfig, queue: str, requeue: bool = False, name: str = "iotctl amqp get"):
        self.cfg, self.queue, self.requeue, self.name = cfg, check_name("queue", queue), requeue, name
        self.session: Session | None = None
        self.last_tag = 0
        self._cumulative = receive.Cumulative()
        self._answer: list = []

    def open(self) -> None:
        self.session = session = self._connected()
        session.impl.add_callback(lambda frame: self._answer.append(None), [spec.Basic.GetEmpty], one_shot=False)

    def close(self) -> None:
        session = self.session
        if session is None:
            return
        if session.usable and self.requeue and self.last_tag:
            try:
                session.impl.basic_nack(self.last_tag, multiple=True, requeue=True)
            except (px.AMQPError, OSError):
                pass
        session.close()

    def poll(self, wait):
        session = self.session
        answer = self._answer
        answer.clear()

        def got(channel, method, props, body) -> None:
            answer.append((method, props, body))

        what = f"cannot get from queue {self.queue!r}"
        try:
            session.impl.basic_get(self.queue, got, auto_ack=False)
        except (px.AMQPError, OSError) as exc:
            raise amqp_error(what, exc, self.cfg) from None
        session.until(lambda: bool(answer), self.cfg.connect_timeout, what)
        if answer[0] is None:
            return None
        method, props, body = answer[0]
        self.last_tag = method.delivery_tag
        msg = to_message(method, props, body, {"message_count": method.message_count})
        msg.token = method.delivery_tag
        self._cumulative.delivered(msg.token)
        return [msg]

    def ack(self, batch) -> None:
        if self.requeue or not batch:
            return
        last = self._cumulative.confirm([m.token for m in batch])
        if last is not None:
            self.session.impl.basic_ack(last, multiple=True)

    def nack(self, batch) -> None:
        for msg in batch:
            self.session.impl.basic_nack(msg.token, multiple=False, requeue=True)
        if not self.requeue:
            last = self._cumulative.confirm((), [m.token for m in batch])
            if last is not None:
                self.session.impl.basic_ack(last, multiple=True)


# --------------------------------------------------------------------------- tap


class Tap(Consumer):
    """What flows through exchanges, copied into a temporary queue (nothing is taken
    from anyone): an auto-delete fanout exchange bound to each tapped exchange
    (exchange-to-exchange bindings) and an exclusive, auto-delete, server-named queue
    bound to it; with `firehose` the queue is bound to amq.rabbitmq.trace too. The
    broker removes all of it when the connection ends (the queue with its connection,
    the exchange with its last binding), also when it is lost. After a lost
    connection it is made again (what flowed meanwhile is not seen)."""

    def __init__(self, cfg: AmqpConfig, taps: list[tuple[str, str | None]], firehose: bool = False,
                 name: str = "iotctl amqp tap"):
        super().__init__(cfg, ack="auto", name=name)
        self.taps = taps
        self.firehose = firehose
        self.probe: FirehoseProbe | None = None
        self.exchange: str | None = None
        self.what = "tap"
        self.exclusive = True

    def _prepare(self, session: Session) -> list[str]:
        for source, key in self.taps:
            if key is None:
                refuse_direct(session, source, f"tap {source}", f"{source}:KEY")
        queue = session.declare_queue("", exclusive=True, auto_delete=True).queue
        if self.taps:
            self.exchange = f"iotctl.tap.{uuid.uuid4().hex[:12]}"
            session.declare_exchange(self.exchange, "fanout", auto_delete=True, internal=True)
            session.bind("queue", queue, self.exchange, "")
            for source, key in self.taps:
                session.bind("exchange", self.exchange, source, "#" if key is None else key)
        if self.firehose:
            session.bind("queue", queue, FIREHOSE, "#")
            if self.probe is None:
                self.probe = FirehoseProbe(self.cfg.vhost)
                self.accept = self.probe.accept
        return [queue]

    def _consuming(self, session: Session) -> None:
        if self.probe is not None and not self.probe.sent:
            self.probe.send(session)  # (written by pika before the fast path takes over)

    def poll(self, wait):
        probe = self.probe
        batch = super().poll(wait if probe is None or probe.seen else min(wait or 0.25, 0.25))
        if probe is not None:
            probe.check()
        return batch


class FirehoseProbe:
    """Tells whether tracing is on: publishes one unroutable probe message; with the
    firehose on, its `publish.` trace copy arrives (and is dropped)."""

    def __init__(self, vhost: str, wait: float = 2.0):
        self.key = f"iotctl.firehose-probe.{uuid.uuid4().hex[:12]}"
        self.vhost = vhost
        self.seen = False
        self.sent = False
        self.deadline = None
        self.wait = wait
        self.warned = False

    def send(self, session: Session) -> None:
        session.impl.basic_publish("", self.key, b"", None, False)
        self.sent = True
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
        session.impl.basic_publish(check_name("exchange", exchange), check_name("routing key", routing_key),
                                   body, props, mandatory)
    except px.ShortStringTooLong:
        raise _too_long(exchange, routing_key, props) from None
    except (px.AMQPError, OSError) as exc:
        raise amqp_error("publish", exc, session.cfg) from None
    except (ValueError, TypeError) as exc:
        raise UsageError("cannot publish", str(exc)) from None

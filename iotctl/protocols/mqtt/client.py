"""The one module that imports paho-mqtt.

The client is driven from our own select loop (loop_read/loop_write/loop_misc),
never from paho's background thread: bulk publishing through loop_start() is
several times slower. Received messages are turned into `Message`s and handed out
in batches (one batch per burst read from the socket) so the output can flush once
per batch instead of once per message.
"""

from __future__ import annotations

import logging
import os
import select
import time
import uuid
from typing import Iterable, Iterator

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from iotctl import receive, send
from iotctl.deadline import wait_until
from iotctl.endpoint import Endpoint
from iotctl.errors import (AuthError, ConnectError, ConnectionLost, IotctlError, PeerError, TLSError,
                           TimeoutError_, UsageError, from_os_error)
from iotctl.message import Message, bytes_text, foreign
from iotctl.topics import matches, validate_topic
from iotctl.trace import route_logs

VERSIONS = {"3.1": paho.MQTTv31, "3.1.1": paho.MQTTv311, "5": paho.MQTTv5}
AUTH_REASONS = {0x86, 0x87, 0x8C}  # bad user name or password, not authorised, bad auth method
_PRIVATE = frozenset(("packetType", "types", "names", "properties"))
# paho's property attribute names -> the envelope's snake_case keys
PROPERTY_KEYS = {
    "PayloadFormatIndicator": "payload_format_indicator",
    "MessageExpiryInterval": "message_expiry_interval",
    "ContentType": "content_type",
    "ResponseTopic": "response_topic",
    "CorrelationData": "correlation_data",
    "SubscriptionIdentifier": "subscription_identifier",
    "TopicAlias": "topic_alias",
    "UserProperty": "user_properties",
}


class Will:
    def __init__(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False):
        self.topic, self.payload, self.qos, self.retain = topic, payload, qos, retain


class MqttConfig:
    def __init__(self, endpoint: Endpoint, version: str = "5", client_id: str | None = None,
                 keepalive: int = 60, clean_start: bool = True, session_expiry: int | None = None,
                 will: Will | None = None, connect_timeout: float = 10.0, debug: bool = False,
                 max_packet: int | None = None, receive_maximum: int | None = None):
        self.endpoint, self.version, self.client_id, self.keepalive = endpoint, version, client_id, keepalive
        self.max_packet = max_packet  # --max-size of a subscriber: the largest packet it takes
        # a subscriber's --receive-maximum: the QoS 1/2 messages the broker may send it
        # unacknowledged (MQTT 5's Receive Maximum in CONNECT; None: not sent)
        self.receive_maximum = receive_maximum
        self.clean_start, self.session_expiry, self.will = clean_start, session_expiry, will
        self.connect_timeout, self.debug = connect_timeout, debug


class PublishProps:
    """MQTT 5 PUBLISH properties given on the command line."""

    def __init__(self, content_type: str | None = None, response_topic: str | None = None,
                 correlation_data: bytes | None = None, message_expiry: int | None = None,
                 payload_format_indicator: int | None = None,
                 user_properties: list[tuple[str, str]] | None = None):
        self.content_type, self.response_topic, self.correlation_data = content_type, response_topic, correlation_data
        self.message_expiry, self.payload_format_indicator = message_expiry, payload_format_indicator
        self.user_properties = user_properties or []

    def empty(self) -> bool:
        return (self.content_type is None and self.response_topic is None and self.correlation_data is None
                and self.message_expiry is None and self.payload_format_indicator is None
                and not self.user_properties)

    def to_paho(self) -> Properties | None:
        if self.empty():
            return None
        props = Properties(PacketTypes.PUBLISH)
        if self.content_type is not None:
            props.ContentType = self.content_type
        if self.response_topic is not None:
            props.ResponseTopic = self.response_topic
        if self.correlation_data is not None:
            props.CorrelationData = self.correlation_data
        if self.message_expiry is not None:
            props.MessageExpiryInterval = self.message_expiry
        if self.payload_format_indicator is not None:
            props.PayloadFormatIndicator = self.payload_format_indicator
        if self.user_properties:
            props.UserProperty = list(self.user_properties)
        return props


class Subscription:
    def __init__(self, topic_filter: str, qos: int = 0, no_local: bool = False,
                 retain_as_published: bool = False, retain_handling: int = 0):
        self.topic_filter, self.qos, self.no_local = topic_filter, qos, no_local
        self.retain_as_published, self.retain_handling = retain_as_published, retain_handling


def properties_dict(props) -> dict:
    """MQTT 5 properties as the envelope's `meta.properties` (only those present)."""
    out = {}
    for name, value in vars(props).items():
        if name in _PRIVATE:
            continue
        key = PROPERTY_KEYS.get(name) or name
        if key == "user_properties":
            value = [list(pair) for pair in value]
        elif isinstance(value, bytes):
            value = bytes_text(value)
        out[key] = value
    return out


class _Client(paho.Client):
    """paho, with QoS 2 receipt that a tool persisting nothing can honour.

    paho answers a QoS 2 PUBLISH with PUBREC at once and hands the message out only
    at PUBREL; with manual acks it then never answers a PUBREL for a message it does
    not know. After the PUBREC the broker never sends that PUBLISH again, so a message
    read but not yet shown when the process ends (-C, Ctrl-C) was lost, and the next
    session's PUBRELs for such messages, never completed, filled the broker's
    in-flight window: nothing more was delivered. In manual-ack mode here a QoS 2
    message is handed out at PUBLISH, PUBREC is its acknowledgement (sent once it is
    written, by Session.ack), and every PUBREL is completed: a message not shown is
    sent again by the broker, one shown is never shown twice."""

    def _handle_publish(self):
        if not self._manual_ack:
            return super()._handle_publish()
        held: list[int] = []
        self._send_pubrec = lambda mid: held.append(mid) or MQTTErrorCode.MQTT_ERR_SUCCESS
        try:
            rc = super()._handle_publish()
        finally:
            del self._send_pubrec
        for mid in held:
            with self._in_message_mutex:
                message = self._in_messages.pop(mid, None)
            if message is not None:
                self._handle_on_message(message)
        return rc

    def _handle_pubrec(self):
        """paho ignores a PUBREC's reason code and sends PUBREL anyway: a QoS 2 message
        the broker refused (0x87 not authorised) was then reported as a lost
        connection (Mosquitto closes it). A refusing PUBREC settles the message as
        refused, as a refusing PUBACK does at QoS 1."""
        if self._protocol == paho.MQTTv5:
            packet = self._in_packet["packet"]
            if len(packet) >= 3 and packet[2] >= 0x80:
                from paho.mqtt.reasoncodes import ReasonCode

                mid = int.from_bytes(packet[:2], "big")
                with self._out_message_mutex:
                    if mid in self._out_messages:
                        try:
                            reason = ReasonCode(PacketTypes.PUBREC, identifier=packet[2])
                        except (KeyError, ValueError):
                            reason = ReasonCode(PacketTypes.PUBREC, "Unspecified error")
                        return self._do_on_publish(mid, reason, None)
        return super()._handle_pubrec()

    def _handle_pubrel(self):
        rc = super()._handle_pubrel()
        if not self._manual_ack or rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return rc
        return self._send_pubcomp(int.from_bytes(self._in_packet["packet"][:2], "big"))

    def ack(self, mid: int, qos: int):
        if self._manual_ack and qos == 2:
            return self._send_pubrec(mid)
        return super().ack(mid, qos)


class _ErrorCapture(logging.Handler):
    """Remembers the last error paho logged (e.g. why a TLS read failed)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.last: str | None = None

    def emit(self, record):
        self.last = record.getMessage()



class _Held:
    """paho's socket for a publisher (Session.hold_writes): send() gathers what paho
    writes and reports it written; flush() sends what gathered in one call (what the
    socket does not take now stays for the next). Everything else is the socket's."""

    LIMIT = 64 << 10

    def __init__(self, sock):
        self._sock = sock
        self.data = bytearray()

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def send(self, data) -> int:
        self.data += data
        if len(self.data) >= self.LIMIT:
            self.flush()
        return len(data)

    def flush(self) -> None:
        data = self.data
        while data:
            try:
                n = self._sock.send(data)
            except BlockingIOError:
                return
            del data[:n]

    def drain(self, timeout: float = 5.0) -> None:
        """Everything gathered sent, waiting for the socket up to `timeout`."""
        deadline = time.monotonic() + timeout
        while self.data:
            self.flush()
            left = deadline - time.monotonic()
            if not self.data or left <= 0:
                return
            select.select([], [self._sock], [], left)

    def shutdown(self, how) -> None:
        try:
            self.drain()
        except OSError:
            pass
        self._sock.shutdown(how)

    def close(self) -> None:
        try:
            self.drain(1.0)
        except OSError:
            pass
        self._sock.close()

class Session:
    """One connection to a broker, driven synchronously by the caller."""

    def __init__(self, cfg: MqttConfig, manual_ack: bool = False):
        self.cfg = cfg
        self.manual_ack = manual_ack
        self.v5 = cfg.version == "5"
        self.client_id = cfg.client_id or f"iotctl-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.connected = False
        self.connack: tuple | None = None
        self.disconnect_reason = None
        self.receive_maximum = 65535
        self._batch: list[Message] = []
        self._accept = None
        self._acked: set[int] = set()
        self._refused: dict[int, tuple[int, str]] = {}
        self._suback: dict[int, list] = {}
        self._subscribed = False  # a session that never subscribed has nothing unread to protect
        self._held: _Held | None = None  # a publisher's writes, sent a batch at a time (hold_writes)
        # paho logs every packet: a trace with --debug; errors are always captured
        # so a failed TLS read can be reported for what it is
        self._log = route_logs(("iotctl.mqtt",), cfg.debug, "mqtt", quiet_level=logging.ERROR,
                               secrets=(cfg.endpoint.password,))[0]
        self._errors = _ErrorCapture()
        self._log.addHandler(self._errors)
        self.client = self._make_client()

    # ------------------------------------------------------------------ set-up

    def _make_client(self) -> paho.Client:
        cfg, ep = self.cfg, self.cfg.endpoint
        kwargs = {}
        if not self.v5:
            kwargs["clean_session"] = cfg.clean_start
        try:
            client = _Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                 protocol=VERSIONS[cfg.version],
                                 transport="websockets" if ep.ws else "tcp",
                                 reconnect_on_failure=False, **kwargs)
        except ValueError as exc:
            raise UsageError("bad MQTT client settings", str(exc)) from None
        client.enable_logger(self._log)
        if ep.ws:
            client.ws_set_options(path=ep.path or "/mqtt")
        if ep.username is not None or ep.password is not None:
            client.username_pw_set(ep.username or "", ep.password)
        if ep.tls:
            client.tls_set_context(ep.ssl_context())
            if ep.insecure:
                client.tls_insecure_set(True)
        if cfg.will is not None:
            client.will_set(cfg.will.topic, cfg.will.payload, cfg.will.qos, cfg.will.retain)
        client.connect_timeout = cfg.connect_timeout
        # our own window (the broker's receive maximum) limits what is in flight
        client.max_inflight_messages_set(65535)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        # on_publish is set only while QoS 1/2 messages are sent: with it set, paho
        # builds a reason code and properties object for every QoS 0 message too
        client.on_subscribe = self._on_subscribe
        if self.manual_ack:
            # acknowledge a QoS 1/2 message only once it has been written out, so one
            # that was never shown (-C reached, Ctrl-C) is delivered again to a
            # persistent session instead of being lost
            client.manual_ack_set(True)
        return client

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = (reason_code, flags, properties)
        if not reason_code.is_failure:
            self.connected = True
            rm = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
            if rm:
                self.receive_maximum = rm

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.connected = False
        self.disconnect_reason = reason_code

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        if reason_code.is_failure:
            self._refused[mid] = Refusal((reason_code.value, str(reason_code)))
        else:
            self._acked.add(mid)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self._suback[mid] = reason_codes

    def _on_message(self, client, userdata, m):
        # the receive hot path: one Message per PUBLISH, nothing else that can be avoided
        props = m.properties
        if props is not None and len(vars(props)) > 4:
            pd = properties_dict(props)
            msg = Message("mqtt", m.topic, m.payload, pd.get("content_type"),
                          {"qos": m.qos, "retain": m.retain, "properties": pd})
        else:
            msg = Message("mqtt", m.topic, m.payload, None, {"qos": m.qos, "retain": m.retain})
        if self._accept is None or self._accept(msg):
            self._batch.append(msg)
            if self.manual_ack and m.qos:
                msg.token = (self, m.mid, m.qos)
        elif self.manual_ack and m.qos:
            client.ack(m.mid, m.qos)

    def ack(self, msg: Message) -> None:
        """Acknowledge a received message once it has been handled (manual_ack mode);
        a message of an earlier connection (before a reconnect) is not this session's."""
        token = msg.token
        if token is not None and token[0] is self:
            msg.token = None
            self.client.ack(token[1], token[2])

    # ------------------------------------------------------------------ connection

    def __enter__(self) -> "Session":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> None:
        cfg = self.cfg
        what = self.begin_connect()

        def step(wait: float) -> None:
            # a refusing CONNACK also ends the connection: look at it before the loss
            if not self._pump(wait) and self.connack is None:
                raise self._lost(what)

        wait_until(lambda: self.connack is not None, step, cfg.connect_timeout,
                   lambda: TimeoutError_(what, f"no CONNACK within {cfg.connect_timeout:g} s"), slice_=30.0)
        error = self.connack_error()
        if error is not None:
            raise error

    def begin_connect(self) -> str:
        """Open the connection and send CONNECT without waiting for the CONNACK (for a
        caller driving many sessions from one loop: `fileno`/`step`, then
        `connack_error()` once `connack` is set). Returns the 'cannot connect' text."""
        cfg, ep = self.cfg, self.cfg.endpoint
        what = f"cannot connect to {ep.display}"
        props = None
        kwargs = {}
        if self.v5:
            kwargs["clean_start"] = cfg.clean_start
            expiry = cfg.session_expiry
            if expiry is None and not cfg.clean_start:
                expiry = 0xFFFFFFFF  # a persistent session must outlive the connection
            if expiry:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = expiry
            if cfg.max_packet:  # the broker then never sends us a bigger packet
                props = props or Properties(PacketTypes.CONNECT)
                props.MaximumPacketSize = cfg.max_packet
            if cfg.receive_maximum:  # without it Mosquitto keeps 20 unacknowledged (max_inflight_messages)
                props = props or Properties(PacketTypes.CONNECT)
                props.ReceiveMaximum = cfg.receive_maximum
            kwargs["properties"] = props
        try:
            self.client.connect(ep.host, ep.port, cfg.keepalive, **kwargs)
        except IotctlError:
            raise
        except OSError as exc:  # socket and TLS errors (SSLCertVerificationError is a ValueError too)
            raise from_os_error(what, exc) from None
        except ValueError as exc:
            raise UsageError(what, str(exc)) from None
        except Exception as exc:  # websocket errors
            if type(exc).__name__ == "WebsocketConnectionError":
                raise ConnectError(what, f"websocket handshake failed: {exc}") from None
            raise from_os_error(what, exc) from None
        return what

    def connack_error(self) -> IotctlError | None:
        """After the CONNACK: the error when the broker refused, else None."""
        what = f"cannot connect to {self.cfg.endpoint.display}"
        if not self.cfg.debug:
            # paho logs every packet; past the handshake only --debug wants that
            self.client.disable_logger()
        reason = self.connack[0]
        if reason.is_failure:
            if reason.value in AUTH_REASONS:
                return AuthError(what, f"broker refused the login: {reason}",
                                 hint="check -u/--username and -P/--password (or the profile's password)")
            return PeerError(what, f"broker refused the connection: {reason}")
        return None

    def lost(self, what: str) -> IotctlError:
        """The error for a connection that is gone (why, as far as it is known)."""
        return self._lost(what)

    def _lost(self, what: str) -> IotctlError:
        reason = self.disconnect_reason
        last = self._errors.last or ""
        if self.cfg.endpoint.tls and self.connack is None and ("ssl" in last.lower() or "alert" in last):
            return TLSError(what, "the server ended the TLS session before the MQTT handshake: "
                            + last.split(": ", 1)[-1],
                            hint="does the server require a client certificate (--cert/--key)?")
        if reason is not None and getattr(reason, "is_failure", False) and reason.value not in (0x80,):
            if reason.value in AUTH_REASONS:
                return AuthError(what, f"broker closed the connection: {reason}")
            return PeerError(what, f"broker closed the connection: {reason}")
        cls = ConnectionLost if self.connack is not None else ConnectError
        return cls(what, "connection lost" + (f" ({last})" if last else ""))

    def close(self, wait: float = 2.0) -> None:
        """End the session the way MQTT intends: no more PUBLISHes are read, the
        acknowledgements already queued go out, then DISCONNECT, a half-close, and
        the socket is read to its end before it is closed.

        paho closes the socket as soon as DISCONNECT is written. With PUBLISHes still
        unread in the socket that close is a reset, and a reset makes the broker's
        kernel drop what it had not read yet: the last PUBACKs, so a persistent
        session gets back messages already printed and acknowledged. Whatever is
        read here is never acknowledged, so the broker keeps it for the next session."""
        client = self.client
        if self.connected:
            try:
                self._disconnect(wait)
            except Exception:  # closing is best effort
                pass
        try:
            sock = client.socket()
            if sock is not None:
                sock.close()
        except Exception:
            pass
        self._log.removeHandler(self._errors)

    def abort(self) -> None:
        """Drop the connection without DISCONNECT, as a lost client would (the broker
        then publishes the will)."""
        try:
            sock = self.client.socket()
            if sock is not None:
                sock.close()
        except Exception:
            pass
        self.connected = False
        self._log.removeHandler(self._errors)

    # ------------------------------------------------------------------ driven from a caller's loop
    # (a gateway with one session per client: select over every fileno(), then step())

    def fileno(self) -> int | None:
        sock = self.client.socket()
        return sock.fileno() if sock is not None else None

    def want_write(self) -> bool:
        return self.client.want_write()

    def step(self, readable: bool, writable: bool) -> bool:
        """Read, write and do housekeeping once the caller's select says so; False when
        the connection is gone."""
        client = self.client
        sock = client.socket()
        if sock is None:
            return False
        if readable or (hasattr(sock, "pending") and sock.pending()):
            if not self._read_burst():
                return False
        if writable or client.want_write() or (self._held is not None and self._held.data):
            if self._held is not None:
                try:
                    self._held.flush()
                except OSError:
                    return False
            if client.loop_write() not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
                return False
        if client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        return client.socket() is not None

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> int | None:
        """Queue one PUBLISH; returns its message id for QoS 1/2 (it shows up in
        `take_acked()` once the broker acknowledged it), None for QoS 0."""
        if qos and self.client.on_publish is None:
            self.client.on_publish = self._on_publish
        try:
            info = self.client.publish(topic, payload, qos, retain)
        except ValueError as exc:
            raise UsageError(f"cannot publish to {topic!r}", str(exc)) from None
        if info.rc > 0:
            raise self._lost("publish")
        return info.mid if qos else None

    def take_acked(self) -> set[int]:
        """Message ids the broker acknowledged since the last call (see publish)."""
        acked = set(self._acked)
        self._acked.clear()
        return acked

    def take(self) -> list[Message]:
        """The messages received since the last call."""
        return self._take()

    def subscribe_request(self, subs: list[Subscription]) -> int:
        """Send SUBSCRIBE without waiting; `suback(mid)` has the granted QoS (or a
        reason code >= 0x80) per filter once it came."""
        if self.v5:
            topics = [(s.topic_filter, SubscribeOptions(qos=s.qos, noLocal=s.no_local,
                                                        retainAsPublished=s.retain_as_published,
                                                        retainHandling=s.retain_handling))
                      for s in subs]
        else:
            topics = [(s.topic_filter, s.qos) for s in subs]
        self._subscribed = True
        try:
            rc, mid = self.client.subscribe(topics)
        except ValueError as exc:
            raise UsageError("cannot subscribe", str(exc)) from None
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise self._lost("subscribe")
        return mid

    def suback(self, mid: int) -> list[int] | None:
        codes = self._suback.pop(mid, None)
        if codes is None:
            return None
        return [code.value if hasattr(code, "value") else int(code) for code in codes]

    def unsubscribe(self, topic_filter: str) -> None:
        self.client.unsubscribe(topic_filter)

    def _disconnect(self, wait: float) -> None:
        import socket

        client = self.client
        sock = client.socket()
        deadline = time.monotonic() + wait
        client._sock_close = lambda: None  # keep the socket open past DISCONNECT (see close)
        try:
            client.disconnect()
            while client.want_write() and time.monotonic() < deadline:
                select.select([], [sock], [], max(0.0, deadline - time.monotonic()))
                if self._held is not None:
                    try:
                        self._held.flush()
                    except OSError:
                        break
                client.loop_write()
        finally:
            del client._sock_close
        raw = getattr(sock, "_socket", sock)  # paho's websocket wrapper holds the TCP socket
        try:
            raw.shutdown(socket.SHUT_WR)
            if not self._subscribed and not select.select([raw], [], [], 0)[0]:
                return  # a publisher with nothing unread: closing now cannot reset anything
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([raw], [], [], left)[0]:
                    break
                try:
                    if not raw.recv(65536):
                        break  # the broker closed its side: nothing unread is left
                except (BlockingIOError, InterruptedError):
                    continue
        except OSError:
            pass
        finally:
            client._sock_close()

    # ------------------------------------------------------------------ the loop

    def between_packets(self):
        """paho's socket once paho is between packets and has written everything it
        queued (a fast path may then take the socket over), else None."""
        client = self.client
        deadline = time.monotonic() + self.cfg.connect_timeout
        while client._in_packet["command"] != 0 or client.want_write():
            if time.monotonic() > deadline or not self._pump(0.05):
                return None
        return client.socket()

    def hold_writes(self) -> None:
        """A publisher's packets go out a batch at a time: paho makes one send() per
        packet (a system call per message, a third of `pub -l`'s time); held, they
        leave in one send() when 64 KiB gathered, at the next wait (_pump: the send
        driver waits whenever the input pauses or the window is full) or at the close.
        Plain TCP only (TLS and websockets keep paho's own writes)."""
        import socket

        client = self.client
        sock = client.socket()
        if type(sock) is not socket.socket or self._held is not None:
            return
        self._held = _Held(sock)
        client._sock = self._held

    def _pump(self, timeout: float) -> bool:
        """Wait up to `timeout` for the socket, then read, write and do housekeeping.

        Returns False when the connection is gone."""
        client = self.client
        sock = client.socket()
        if sock is None:
            return False
        if self._held is not None:
            try:
                self._held.flush()
            except OSError:
                return False
        pending = sock.pending() if hasattr(sock, "pending") else 0
        if pending:
            readable = True
            writable = client.want_write()
        else:
            want = client.want_write() or (self._held is not None and bool(self._held.data))
            try:
                r, w, _ = select.select([sock], [sock] if want else [], [], max(0.0, timeout))
            except (ValueError, OSError):
                return False
            readable, writable = bool(r), bool(w)
        return self.step(readable, writable)

    def _read_burst(self, limit: int = 2000) -> bool:
        """Read packets until the socket has no more (paho's loop_read reads only one
        when nothing is in flight, whatever max_packets says)."""
        client = self.client
        batch = self._batch
        for _ in range(limit):
            before = len(batch)
            acked = len(self._acked)
            if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return False
            if len(batch) == before and len(self._acked) == acked:
                break
        return True

    # ------------------------------------------------------------------ publishing

    def publish_stream(self, messages: Iterable[tuple[str, bytes]], qos: int = 0, retain: bool = False,
                       props=None, timeout: float = 10.0) -> int:
        """Publish (topic, payload) pairs through the send driver (for the commands'
        own small publishes: a request, clearing retained messages)."""
        publisher = Publisher(self.cfg, qos, retain, None, session=self, paho_props=props)
        return send.run(publisher, (Message("", t, p) for t, p in messages), "publish", timeout).sent

    # ------------------------------------------------------------------ subscribing

    def subscribe(self, subs: list[Subscription], timeout: float, hold: int | None = None) -> int | None:
        """SUBSCRIBE and wait for the SUBACK. With `hold`, stop waiting once that many
        messages came before it (a resumed session's backlog): their packet id is
        returned, and the caller checks `suback(mid)` as it reads on (check_suback)."""
        mid = self.subscribe_request(subs)

        def step(wait: float) -> None:
            if not self._pump(wait):
                raise self._lost("subscribe")

        wait_until(lambda: mid in self._suback or (hold is not None and len(self._batch) >= hold), step, timeout,
                   lambda: TimeoutError_("subscribe", f"no SUBACK within {timeout:g} s"), slice_=30.0)
        if mid not in self._suback:
            return mid
        self.check_suback(subs, self._suback.pop(mid))
        return None

    def check_suback(self, subs: list[Subscription], codes) -> None:
        """Exit 4 or 6 for a filter the SUBACK refused (`codes`: paho's, or the bytes)."""
        for sub, code in zip(subs, codes):
            value = code.value if hasattr(code, "value") else int(code)
            if value >= 0x80:
                why = str(code) if hasattr(code, "value") else _suback_reason(value) if self.v5 else "refused"
                if value == 0x87:
                    raise AuthError(f"cannot subscribe to {sub.topic_filter!r}", f"broker refused: {why}")
                raise PeerError(f"cannot subscribe to {sub.topic_filter!r}", f"broker refused: {why}")

    def flush_writes(self, timeout: float) -> bool:
        """Write what paho queued without reading (a fast path reads the socket);
        False when the connection is gone or it did not go within `timeout`."""
        client = self.client
        deadline = time.monotonic() + timeout
        while client.want_write():
            if time.monotonic() > deadline:
                return False
            try:
                select.select([], [client.socket()], [], 0.05)
            except (OSError, ValueError, TypeError):
                return False
            if client.loop_write() not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
                return False
        return True

    def receiver(self, accept=None, until=None) -> "Receiver":
        """This (open) session's messages for the receive driver."""
        self._accept = accept
        return Receiver(self, until)

    def batches(self, deadline: float | None = None, accept=None,
                until=None) -> Iterator[list[Message]]:
        """Received messages, a batch per burst; ends at `deadline` (monotonic) or when
        `until(message)` is true for a message (that message is not yielded)."""
        self._accept = accept
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            wait = 1.0 if deadline is None else min(1.0, deadline - now)
            if self._batch:
                wait = 0.0
            if not self._pump(wait):
                if self._batch:
                    yield self._take()
                raise self._lost("subscription")
            if self._batch:
                batch = self._take()
                if until is not None:
                    for i, msg in enumerate(batch):
                        if until(msg):
                            yield batch[:i]
                            return
                yield batch

    def _take(self, limit: int | None = None) -> list[Message]:
        batch = self._batch
        if limit is not None and len(batch) > limit:
            self._batch = batch[limit:]
            return batch[:limit]
        self._batch = []
        return batch

    # ------------------------------------------------------------------ helpers for commands

    def probe_topic(self) -> str:
        return f"iotctl/probe/{self.client_id}"

    def publish_probe(self) -> None:
        self.client.publish(self.probe_topic(), b"", 0, False)


# At most this many messages a resumed session's broker sent before the SUBACK are held
# before the subscriber starts handing them on, and they go to the receive driver this
# many at a time, as the fast path's reads do (about 2,000 small messages a read): memory
# stays bounded and a Ctrl-C waits for one batch, not for the whole backlog. (Mosquitto
# 2.0.11 sends a resumed session its whole queue at once, past the receive maximum.)
EARLY_BATCH = 2048


def _suback_reason(value: int) -> str:
    from paho.mqtt.reasoncodes import ReasonCode

    try:
        return str(ReasonCode(PacketTypes.SUBACK, identifier=value))
    except ValueError:
        return f"reason 0x{value:02x}"


class Refusal(tuple):
    """A refusing PUBACK/PUBREC: (reason code, reason); shown as 'Not authorized (0x87)'
    where only the reason is read (a bridge's warning)."""

    def __str__(self) -> str:
        return f"{self[1]} (0x{self[0]:02x})"


class Publisher(send.Sender):
    """The send driver's MQTT side: PUBLISH with a window of unacknowledged QoS 1/2
    messages (at most the broker's receive maximum, capped at 100: paho's in-flight
    bookkeeping is O(in-flight) per acknowledgement). This is the hot loop of
    `pub -l`: keep it lean.

    Entered, it connects a Session of its own (`cfg`); with `session` it publishes on
    that open one. `props`: the command's PublishProps; a message that brings meta of
    its own (a replay, a bridge) gets its properties adopted in `_properties`."""

    protocol = "mqtt"

    def __init__(self, cfg: MqttConfig, qos: int = 0, retain: bool = False, props: PublishProps | None = None,
                 topics: tuple[str, ...] = (), session: Session | None = None, paho_props=None):
        super().__init__()
        self.cfg = cfg
        self.qos, self.retain = qos, retain
        self.cli_props = props
        self.paho_props = paho_props if paho_props is not None else (props.to_paho() if props is not None else None)
        self.address = topics[0] if len(topics) == 1 else None
        self.session = session
        self.owned = session is None
        self.window = None
        self.fast = None  # the FastWriter of a session of its own (fastsend.py)
        if session is not None:
            self._ready()

    @property
    def where(self) -> str:
        return self.cfg.endpoint.display

    def open(self) -> None:
        if self.session is None:
            self.session = Session(self.cfg)
            try:
                self.session.connect()
            except BaseException:
                self.session.close()
                self.session = None
                raise
        self._ready()

    def close(self) -> None:
        if self.owned and self.session is not None:
            if self.fast is not None:
                self.fast.drain(2.0)  # what is buffered goes before paho's DISCONNECT
                self.fast = None
            self.session.close()
            self.session = None

    def _ready(self) -> None:
        session, qos = self.session, self.qos
        self.client = session.client
        self.window = max(1, min(session.receive_maximum, 100)) if qos else None
        self.acked = session._acked
        self.refused = session._refused
        # with on_publish set, paho builds a reason code and properties object for
        # every QoS 0 message too: only listen for acknowledgements when there are any
        self.client.on_publish = session._on_publish if qos else None
        self.fast = self._fast() if self.owned else None
        if self.fast is not None:  # this command's own session, written by iotctl's codec
            self.busy = self.fast.busy
            self.send = self._fast_sender()
            return
        if self.owned:
            session.hold_writes()  # its PUBLISHes leave a batch at a time
        self.busy = self.client.want_write
        self.send = self._sender()

    def _fast(self):
        """The send fast path (fastsend.py) over this session's socket, unless it is a
        websocket, --debug wants paho's packet trace, or IOTCTL_MQTT_PAHO_SEND=1."""
        from iotctl.protocols.mqtt.fastsend import FastWriter

        cfg = self.cfg
        if cfg.endpoint.ws or cfg.debug or os.environ.get("IOTCTL_MQTT_PAHO_SEND") == "1":
            return None
        session = self.session
        sock = session.between_packets()
        if sock is None:
            return None
        return FastWriter(sock, session.v5, session.client._keepalive, self.acked, self.refused, Refusal)

    def _fast_sender(self):
        """send(msg) on the fast path: the hot loop of `pub -l` and of a bridge into MQTT."""
        from iotctl.protocols.mqtt.fastsend import BadPublish, encode_properties

        publish, qos, retain = self.fast.publish, self.qos, self.retain
        props = self._publish_props
        v5 = self.session.v5
        default = self.address or ""
        try:
            wire = encode_properties(self.cli_props) if v5 else b""
        except BadPublish as exc:
            raise UsageError("bad MQTT 5 properties", str(exc)) from None

        def send(msg):
            p = wire
            address = msg.address or default
            try:
                if v5 and (msg.meta or msg.content_type or msg.protocol):
                    own = props(msg)
                    if own is not None:
                        p = encode_properties(own)
                return publish(address, msg.payload, qos, retain, p)
            except BadPublish as exc:
                raise UsageError(f"cannot publish to {address!r}", str(exc)) from None

        return send

    def _sender(self):
        """send(msg) as a closure over what stays fixed for the run: the hot loop of
        `pub -l` looks nothing up per message."""
        publish, qos, retain, props, session = self.client.publish, self.qos, self.retain, self.paho_props, self.session
        properties = self._properties
        v5 = session.v5
        default = self.address or ""

        def send(msg):
            p = properties(msg) if (v5 and (msg.meta or msg.content_type or msg.protocol)) else props
            try:
                info = publish(msg.address or default, msg.payload, qos, retain, p)
            except ValueError as exc:
                raise UsageError(f"cannot publish to {msg.address!r}", str(exc)) from None
            if info.rc > 0:  # MQTT_ERR_AGAIN (-1) only means "queued"
                if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN or not session.connected:
                    raise session._lost("publish")
                raise IotctlError("publish", paho.error_string(info.rc))
            return info.mid if qos else None

        return send

    def composed(self, msg: Message) -> Message:
        """As a capture has it: the command line's MQTT 5 properties go with a message
        into --failed, so `--replay FILE` alone sends it the same way (QoS and retain
        come from -q/-r on a replay, as for any capture)."""
        from iotctl.message import bytes_text

        meta = dict(msg.meta) if isinstance(msg.meta, dict) else {}
        meta.setdefault("qos", self.qos)
        meta.setdefault("retain", self.retain)
        cli = self.cli_props
        if cli is not None and not cli.empty() and "properties" not in meta:
            props: dict = {}
            for key, name in (("content_type", "content_type"), ("response_topic", "response_topic"),
                              ("message_expiry", "message_expiry_interval"),
                              ("payload_format_indicator", "payload_format_indicator")):
                if getattr(cli, key) is not None:
                    props[name] = getattr(cli, key)
            if cli.correlation_data is not None:
                props["correlation_data"] = bytes_text(cli.correlation_data)
            if cli.user_properties:
                props["user_properties"] = [list(pair) for pair in cli.user_properties]
            meta["properties"] = props
        return msg.copy(protocol=self.protocol, meta=meta)

    def _properties(self, msg: Message):
        """paho's PUBLISH properties for `msg` (see _publish_props)."""
        own = self._publish_props(msg)
        return self.paho_props if own is None else own.to_paho()

    def _publish_props(self, msg: Message) -> PublishProps | None:
        """The PUBLISH properties of a message that brings its own (replayed or bridged):
        an MQTT message's properties as captured; from another protocol, what crosses
        (content type, user properties from its headers, correlation data, response
        topic); the command line's own properties win, user properties add up."""
        found = foreign(msg, "mqtt")
        fields: dict = {}
        if found is None:
            captured = msg.meta.get("properties") if isinstance(msg.meta, dict) else None
            if isinstance(captured, dict):
                from iotctl.message import text_pairs
                from iotctl.message import meta_bytes

                for key in ("content_type", "response_topic"):
                    if isinstance(captured.get(key), str):
                        fields[key] = captured[key]
                if isinstance(captured.get("correlation_data"), str):
                    fields["correlation_data"] = meta_bytes(captured["correlation_data"])
                for key in ("message_expiry_interval", "payload_format_indicator"):
                    if isinstance(captured.get(key), int) and not isinstance(captured.get(key), bool):
                        fields[{"message_expiry_interval": "message_expiry"}.get(key, key)] = captured[key]
                fields["user_properties"] = text_pairs(captured.get("user_properties") or ())
            if msg.content_type and "content_type" not in fields:
                fields["content_type"] = msg.content_type
        else:
            if not (found.content_type or found.headers or found.correlation_id is not None or found.reply_to):
                return None  # nothing crosses (a bridge's plain message): the command line's alone
            fields = {"content_type": found.content_type, "user_properties": found.headers,
                      "correlation_data": found.correlation_id}
            if found.reply_to:
                try:
                    fields["response_topic"] = validate_topic(found.reply_to)
                except UsageError:
                    pass
        cli = self.cli_props
        if cli is not None:
            for key in ("content_type", "response_topic", "correlation_data", "message_expiry",
                        "payload_format_indicator"):
                if getattr(cli, key) is not None:
                    fields[key] = getattr(cli, key)
            if cli.user_properties:
                fields["user_properties"] = list(fields.get("user_properties") or []) + list(cli.user_properties)
        return PublishProps(**{k: v for k, v in fields.items() if v is not None})

    def pump(self, wait: float) -> None:
        # outcomes read before the connection went are reported first (Mosquitto 2.0
        # closes the connection right after a PUBACK refusing a message)
        fast = self.fast
        if fast is not None:
            if not fast.pump(wait) and not self.acked and not self.refused:
                raise fast.error
        elif not self.session._pump(wait) and not self.acked and not self.refused:
            raise self.session._lost("publish")

    def refusal(self, refused: dict) -> IotctlError:
        code, reason = next(iter(refused.values()))
        cls = AuthError if code in AUTH_REASONS else PeerError
        return cls("publish", f"broker refused {len(refused)} message(s): {reason} (0x{code:02x})")


class Receiver(receive.Receiver):
    """The receive driver's MQTT side over an open session; `until(msg)` ends the
    stream at that message (which is not returned)."""

    def __init__(self, session: Session | None, until=None):
        self.session, self.until, self.ended = session, until, False

    def poll(self, wait):
        session = self.session
        if self.ended:
            return None
        if session._batch:  # read already (e.g. while waiting for the SUBACK): no waiting
            wait = 0.0
        if not session._pump(1.0 if wait is None else wait):
            if session._batch:
                return session._take(EARLY_BATCH)
            raise session._lost("subscription")
        if not session._batch:
            return []
        return self._cut(session._take(EARLY_BATCH))

    def _cut(self, batch: list[Message]) -> list[Message]:
        """The batch up to the message `until` ends the stream at (that one left out)."""
        if self.until is not None:
            for i, msg in enumerate(batch):
                if self.until(msg):
                    self.ended = True
                    return batch[:i]
        return batch

    def ack(self, batch) -> None:
        if self.session.manual_ack:
            ack = self.session.ack
            for msg in batch:
                ack(msg)


class Subscriber(Receiver):
    """A subscription as a source: entered, it connects its own session and
    subscribes (and for --retained-only publishes the probe that marks the end of the
    retained messages); after a lost connection it connects again and subscribes
    again (a persistent session then delivers what was published meanwhile)."""

    can_reconnect = True

    def __init__(self, cfg: MqttConfig, subs: list[Subscription], filter_out: tuple[str, ...] = (),
                 no_retained: bool = False, retained_only: bool = False):
        super().__init__(None)
        self.cfg, self.subs = cfg, subs
        self.filter_out, self.no_retained, self.retained_only = filter_out, no_retained, retained_only
        self.manual_ack = any(sub.qos for sub in subs)
        self.delivery = "at-least-once" if (self.manual_ack and not cfg.clean_start) else "at-most-once"

    @property
    def where(self) -> str:
        return self.cfg.endpoint.display

    @property
    def filters(self) -> list[str]:
        return [s.topic_filter for s in self.subs]

    fast = None  # the FastReader once the subscription stands (not over websockets)
    _suback_due = None  # (packet id, subscriptions) of a SUBACK still to come behind a backlog

    def open(self) -> None:
        self._suback_due = None
        session = Session(self.cfg, manual_ack=self.manual_ack)
        try:
            session.connect()
            probe = session.probe_topic()
            subs = list(self.subs)
            if self.retained_only:
                subs.append(Subscription(probe, 0))
            session._accept = self._accept(probe)
            fast = None if self.retained_only else self._fast(session)
            if fast is not None:
                self._subscribe_fast(session, fast, subs)
            else:
                due = session.subscribe(subs, self.cfg.connect_timeout, hold=EARLY_BATCH)
                if due is not None:
                    self._suback_due = (due, subs)
                if self.retained_only:
                    session.publish_probe()
                    self.until = (lambda m: m.address == probe)
                fast = self._fast(session)
            self.fast = fast
        except BaseException:
            session.close()
            raise
        self.session = session

    def _subscribe_fast(self, session: Session, fast, subs: list[Subscription]) -> None:
        """SUBSCRIBE with the fast path already reading: a resumed session's backlog,
        which a broker sends from the CONNACK on and so mostly before the SUBACK, is read
        by it too, not by paho one by one (kept in the session's batch until the first
        poll). Once EARLY_BATCH messages came first, the SUBACK is looked for as polls
        go on (`_suback_due`), so memory stays bounded whatever the broker sends ahead."""
        timeout = self.cfg.connect_timeout
        mid = session.subscribe_request(subs)
        if not session.flush_writes(timeout):
            raise session._lost("subscribe")
        deadline = time.monotonic() + timeout
        while mid not in fast.subacks:
            if len(session._batch) >= EARLY_BATCH:  # a resumed session's messages: they prove it stands
                self._suback_due = (mid, subs)
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError_("subscribe", f"no SUBACK within {timeout:g} s")
            try:
                session._batch.extend(fast.poll(min(left, 1.0)))
            except ConnectionLost as lost:
                raise ConnectionLost("subscribe", lost.why) from None
        session.check_suback(subs, fast.subacks.pop(mid))

    def _fast(self, session: Session):
        """Read the socket directly from now on (fastpath.py), once paho is between
        packets and has written everything it queued."""
        from iotctl.protocols.mqtt.fastpath import FastReader

        if self.cfg.endpoint.ws or os.environ.get("IOTCTL_MQTT_PAHO_RECEIVE") == "1":
            return None
        sock = session.between_packets()
        if sock is None:
            return None
        fast = FastReader(sock, session.v5, self.cfg.keepalive, self.manual_ack, owner=session,
                          max_packet=self.cfg.max_packet)
        fast.accept = session._accept
        return fast

    def close(self) -> None:
        if self.session is not None:
            if self.fast is not None and self.fast.out:
                try:
                    self.fast._write(bytes(self.fast.out))
                except Exception:
                    pass
            self.session.close()

    def poll(self, wait):
        fast = self.fast
        if fast is None:
            batch = super().poll(wait)
            due = self._suback_due
            if due is not None and due[0] in self.session._suback:
                self._suback_due = None
                self.session.check_suback(due[1], self.session._suback.pop(due[0]))
            return batch
        if self.ended:
            return None
        session = self.session
        if session._batch:  # read before the SUBACK (or by paho before the fast path took over)
            batch = session._take(EARLY_BATCH)
        else:
            try:
                batch = fast.poll(wait)
            except ConnectionLost as lost:
                raise ConnectionLost(f"subscription to {', '.join(self.filters)}", lost.why) from None
            due = self._suback_due
            if due is not None and due[0] in fast.subacks:
                self._suback_due = None
                session.check_suback(due[1], fast.subacks.pop(due[0]))
        return self._cut(batch)

    def ack(self, batch) -> None:
        if self.fast is None:
            return super().ack(batch)
        if self.manual_ack or self.fast.out:
            self.fast.ack(batch)  # also what paho read before: its tokens are this session's too

    def reconnect(self) -> None:
        old = self.session
        if old is not None:
            old.abort()
        self.session = None
        self.open()

    def _accept(self, probe: str):
        filter_out, no_retained, retained_only = self.filter_out, self.no_retained, self.retained_only
        if not (filter_out or no_retained or retained_only):
            return None

        def accept(msg) -> bool:
            if msg.address == probe:
                return retained_only
            if no_retained and msg.meta["retain"]:
                return False
            if retained_only and not msg.meta["retain"]:
                return False
            return not any(matches(f, msg.address) for f in filter_out)

        return accept

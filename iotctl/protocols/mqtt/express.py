"""The express lane for `iotctl mqtt pub` of one message (see iotctl/express.py): its
own small MQTT 3.1/3.1.1/5 codec over a plain socket — CONNECT, CONNACK, PUBLISH,
PUBACK, PUBREC, PUBREL, PUBCOMP, DISCONNECT — and nothing else. Anything beyond one
message to one topic without TLS, websockets, will or properties goes the normal way.

Its output, errors and exit statuses are those of the normal path (client.Session,
the send driver): tests/test_express.py compares both on a corpus against Mosquitto.
"""

from __future__ import annotations

import os
import sys

from iotctl.express import Options, connect_error, error, integer, positive, run_lane, status, tcp_connect

OPTIONS = Options({
    "-h": ("host", "value"), "--host": ("host", "value"),
    "-p": ("port", "value"), "--port": ("port", "value"),
    "-t": ("topic", "value"), "--topic": ("topic", "value"),
    "-m": ("message", "value"), "--message": ("message", "value"),
    "-q": ("qos", "value"), "--qos": ("qos", "value"),
    "-r": ("retain", "flag"), "--retain": ("retain", "flag"),
    "-u": ("username", "value"), "--username": ("username", "value"),
    "-P": ("password", "value"), "--password": ("password", "value"),
    "-i": ("client_id", "value"), "--client-id": ("client_id", "value"),
    "-k": ("keepalive", "value"), "--keepalive": ("keepalive", "value"),
    "-V": ("version", "value"), "--mqtt-version": ("version", "value"),
    "-W": ("timeout", "value"), "--timeout": ("timeout", "value"),
    "--connect-timeout": ("connect_timeout", "value"),
    "--null": ("null", "flag"), "--quiet": ("quiet", "flag"),
}, positional="message_arg")

LEVELS = {"3.1": (b"MQIsdp", 3), "3.1.1": (b"MQTT", 4), "5": (b"MQTT", 5)}
AUTH_REASONS = {0x86, 0x87, 0x8C}
V3_CONNACK = {1: 0x84, 2: 0x85, 3: 0x88, 4: 0x86, 5: 0x87}  # 3.1.1 return codes as MQTT 5 reasons
# MQTT 5 reason codes as paho names them (the normal path prints paho's names)
REASONS = {
    0x80: "Unspecified error", 0x81: "Malformed packet", 0x82: "Protocol error",
    0x83: "Implementation specific error", 0x84: "Unsupported protocol version",
    0x85: "Client identifier not valid", 0x86: "Bad user name or password", 0x87: "Not authorized",
    0x88: "Server unavailable", 0x89: "Server busy", 0x8A: "Banned", 0x8C: "Bad authentication method",
    0x90: "Topic name invalid", 0x91: "Packet identifier in use", 0x95: "Packet too large",
    0x97: "Quota exceeded", 0x99: "Payload format invalid", 0x9A: "Retain not supported",
    0x9B: "QoS not supported", 0x9C: "Use another server", 0x9D: "Server moved",
    0x9F: "Connection rate exceeded",
}
SEND_NOTE = " (--failed FILE keeps what was not acknowledged)"


def pub(argv: list[str]) -> int | None:
    return run_lane(argv, ("pub", "publish"), OPTIONS, _job, _publish)


def _job(v: dict):
    """The validated settings, or None (the normal path then says what is wrong)."""
    topic = v.get("topic")
    if topic is None or not _valid_topic(topic):
        return None
    given = [k for k in ("message", "message_arg", "null") if k in v]
    if len(given) != 1:
        return None
    payload = b"" if "null" in v else v[given[0]].encode("utf-8", "surrogateescape")
    host = v.get("host", "localhost")
    if not host or host.startswith("[") or not host.isprintable():
        return None
    port = integer(v.get("port", "1883"), 1, 65535)
    qos = integer(v.get("qos", "0"), 0, 2)
    keepalive = integer(v.get("keepalive", "60"), 0, 65535)
    version = v.get("version", "5")
    timeout = positive(v.get("timeout", "10"))
    connect_timeout = positive(v.get("connect_timeout", "10"))
    if None in (port, qos, keepalive, timeout, connect_timeout) or version not in LEVELS:
        return None
    user, password = v.get("username"), v.get("password")
    if password == "-":
        return None
    client_id = v.get("client_id") or f"iotctl-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        fields = [s.encode("utf-8") for s in (topic, client_id, user or "", password or "")]
    except UnicodeEncodeError:
        return None
    if any(len(f) > 65535 for f in fields) or len(payload) > 200_000_000:
        return None
    if version == "3.1" and len(fields[1]) > 23:
        return None  # paho's own check, with its own message: the normal path
    return (host, port, fields[0], payload, qos, bool(v.get("retain")), fields[1],
            user is not None and fields[2], password is not None and fields[3], keepalive, version, timeout,
            connect_timeout, bool(v.get("quiet")))


def _valid_topic(topic: str) -> bool:
    """topics.validate_topic without its errors."""
    if not topic or "\0" in topic or "+" in topic or "#" in topic:
        return False
    try:
        return len(topic.encode("utf-8")) <= 65535
    except UnicodeEncodeError:
        return False


# --------------------------------------------------------------------------- the wire


def varint(n: int) -> bytes:
    """An MQTT variable byte integer (a remaining length; fastsend.py's too)."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _s(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def _connect(client_id: bytes, user, password, keepalive: int, version: str) -> bytes:
    name, level = LEVELS[version]
    flags = 0x02  # clean session / clean start
    payload = _s(client_id)
    if user is not False:
        flags |= 0x80
        payload += _s(user)
    if password is not False:
        flags |= 0x40
        payload += _s(password)
    body = _s(name) + bytes([level, flags]) + keepalive.to_bytes(2, "big")
    if level == 5:
        body += b"\x00"  # no properties
    return _packet(0x10, body + payload)


class Lost(Exception):
    pass


class Reader:
    """MQTT packets from a blocking socket with a deadline per read."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def packet(self, deadline: float) -> tuple[int, bytes]:
        import time

        while True:
            got = self._parse()
            if got is not None:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, OSError) as exc:
                if isinstance(exc, TimeoutError) or exc.__class__.__name__ == "timeout":
                    raise TimeoutError from None
                raise Lost(str(exc)) from None
            if not data:
                raise Lost("")
            self.buf += data

    def _parse(self):
        buf = self.buf
        if len(buf) < 2:
            return None
        length, shift, i = 0, 0, 1
        while True:
            if i >= len(buf):
                return None
            byte = buf[i]
            length |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                raise Lost("malformed packet")
        if len(buf) < i + length:
            return None
        self.buf = buf[i + length:]
        return buf[0], buf[i:i + length]


def _publish(host, port, topic, payload, qos, retain, client_id, user, password, keepalive, version, timeout,
             connect_timeout, quiet) -> int:
    import _socket as socket
    import time

    shown = f"mqtt://{f'[{host}]' if ':' in host else host}:{port}"
    what = f"cannot connect to {shown}"
    try:
        sock = tcp_connect(host, port, connect_timeout)
    except OSError as exc:
        code, why, hint = connect_error(what, exc)
        error(what, why, hint)
        return code
    v5 = version == "5"
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = Reader(sock)
        try:
            sock.sendall(_connect(client_id, user, password, keepalive, version))
            first, body = reader.packet(time.monotonic() + connect_timeout)
        except TimeoutError:
            error(what, f"no CONNACK within {connect_timeout:g} s")
            return 5
        except (Lost, OSError):
            error(what, "connection lost")
            return 3
        if first >> 4 != 2 or len(body) < 2:
            error(what, "connection lost")
            return 3
        reason = body[1] if v5 else V3_CONNACK.get(body[1], body[1] and 0x80)
        if reason >= 0x80:
            name = REASONS.get(reason, "Unspecified error")
            if reason in AUTH_REASONS:
                error(what, f"broker refused the login: {name}",
                      "check -u/--username and -P/--password (or the profile's password)")
                return 4
            error(what, f"broker refused the connection: {name}")
            return 6
        mid = 1
        header = 0x30 | (qos << 1) | (1 if retain else 0)
        body = _s(topic) + (mid.to_bytes(2, "big") if qos else b"") + (b"\x00" if v5 else b"") + payload
        try:
            sock.sendall(_packet(header, body))
            if qos:
                code = _acknowledged(sock, reader, mid, qos, v5, timeout)
                if code:
                    return code
        except (Lost, OSError):
            error("publish", f"connection lost; sent 1, acknowledged 0{SEND_NOTE}")
            return 3
        status("published 1 message(s)", quiet)
        return 0
    finally:
        _close(sock, v5)


def _acknowledged(sock, reader: Reader, mid: int, qos: int, v5: bool, timeout: float) -> int:
    """Wait for PUBACK (QoS 1) or PUBREC/PUBCOMP (QoS 2); 0 when acknowledged."""
    import time

    deadline = time.monotonic() + timeout
    wanted = 4 if qos == 1 else 5  # PUBACK, then PUBREC
    while True:
        try:
            first, body = reader.packet(deadline)
        except TimeoutError:
            error("publish", f"1 message(s) not acknowledged within {timeout:g} s; sent 1, acknowledged 0{SEND_NOTE}")
            return 5
        kind = first >> 4
        if kind not in (4, 5, 7) or len(body) < 2 or int.from_bytes(body[:2], "big") != mid:
            continue
        reason = body[2] if v5 and len(body) > 2 else 0
        if reason >= 0x80 and kind in (4, 5):
            name = REASONS.get(reason, "Unspecified error")
            error("publish", f"broker refused 1 message(s): {name} (0x{reason:02x}); sent 1, acknowledged 0, "
                             f"refused 1{SEND_NOTE}")
            return 4 if reason in AUTH_REASONS else 6
        if kind == wanted == 4 or kind == 7:
            return 0
        if kind == 5 and wanted == 5:
            sock.sendall(_packet(0x62, mid.to_bytes(2, "big")))  # PUBREL
            wanted = 7


def _close(sock, v5: bool) -> None:
    """DISCONNECT, half-close, close (client.Session._disconnect for a publisher)."""
    import _socket as socket

    try:
        sock.sendall(b"\xe0\x01\x00" if v5 else b"\xe0\x00")
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pub(sys.argv[1:]) or 0)

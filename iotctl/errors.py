"""Exit codes and the exceptions that carry them.

`main()` in cli.py is the one place that turns these into an exit status and a
one-line message on stderr.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    CONNECT = 3
    AUTH = 4
    TIMEOUT = 5
    PEER = 6
    TLS = 7
    INTERRUPTED = 130


EXIT_CODE_MEANINGS = {
    ExitCode.OK: "success (Ctrl-C ending subscribe, observe, consume or listen is success)",
    ExitCode.ERROR: "any other error",
    ExitCode.USAGE: "usage error: bad option, bad URL, invalid topic, unreadable file, bad payload",
    ExitCode.CONNECT: "could not connect: refused, unreachable, DNS failure",
    ExitCode.AUTH: "authentication or authorisation refused",
    ExitCode.TIMEOUT: "timeout: no answer, no acknowledgement, or --count not reached within --timeout",
    ExitCode.PEER: "the peer answered with an error (CoAP 4.xx/5.xx, AMQP channel close, "
    "STOMP ERROR, XMPP error stanza, MQTT negative reason code)",
    ExitCode.TLS: "TLS failure: certificate verification or handshake",
    ExitCode.INTERRUPTED: "interrupted before the work was finished (e.g. a publish cut short)",
}


class IotctlError(Exception):
    """An error the user should see as one line: `iotctl: error: WHAT: WHY`."""

    code: ExitCode = ExitCode.ERROR

    def __init__(self, what: str, why: str | None = None, hint: str | None = None):
        super().__init__(what if why is None else f"{what}: {why}")
        self.what = what
        self.why = why
        self.hint = hint


class UsageError(IotctlError):
    code = ExitCode.USAGE


class ConnectError(IotctlError):
    code = ExitCode.CONNECT


class ConnectionLost(ConnectError):
    """A connection that was up is gone (exit 3, unless a receiver reconnects)."""


class SubscriptionEnded(ConnectionLost):
    """The peer ended a subscription on a connection that stays up (RabbitMQ cancels a
    consumer whose queue was deleted or whose node went down). A receiver subscribes
    again as after a lost connection; where it cannot, exit 6 (the peer said so)."""

    code = ExitCode.PEER


class AuthError(IotctlError):
    code = ExitCode.AUTH


class TimeoutError_(IotctlError):
    code = ExitCode.TIMEOUT


class PeerError(IotctlError):
    code = ExitCode.PEER


class TLSError(IotctlError):
    code = ExitCode.TLS


class Interrupted(IotctlError):
    code = ExitCode.INTERRUPTED


class OutputFailed(IotctlError):
    """Output that cannot be written (a full disk, a quota): `cannot write output: WHY`,
    exit 1, raised before anything written is acknowledged."""


class OutputClosed(IotctlError):
    """Whoever read our stdout has gone (`| head -1`): stop quietly, successfully, as
    mosquitto_sub does. Not an OSError, so click's own broken-pipe path (exit 1) never
    sees it."""

    code = ExitCode.OK

    def __init__(self):
        super().__init__("output closed")


def from_os_error(what: str, exc: BaseException) -> IotctlError:
    """Classify a socket-level failure (refused, DNS, TLS) into the right error."""
    import ssl
    import socket

    if isinstance(exc, ssl.SSLCertVerificationError):
        return TLSError(what, f"certificate verification failed: {exc.verify_message}",
                        hint="pass --cafile with the CA that signed the server certificate, or --insecure")
    if isinstance(exc, ssl.SSLError):
        return TLSError(what, f"TLS handshake failed: {exc.reason or exc}")
    if isinstance(exc, socket.gaierror):
        return ConnectError(what, f"cannot resolve host: {exc.strerror}")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError(what, "connection refused", hint="is the server running on that host and port?")
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return TimeoutError_(what, "timed out")
    if isinstance(exc, OSError):
        return ConnectError(what, exc.strerror or str(exc))
    return IotctlError(what, str(exc))

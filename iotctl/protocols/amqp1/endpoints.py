"""AMQP 1.0 endpoints: the source (receiver links) and the sink (sender links) that
the `amqp1` commands and URLs both open. No proton here: client.py is imported when an
endpoint is built.

The group's --url takes `amqp[s]://user:pass@host:port` (the connection); a URL
endpoint is `amqp1[s]://user:pass@host:port/ADDRESS?options` so that it never clashes
with AMQP 0-9-1's `amqp://`. The address is the path after its first '/', as in
proton's own URLs: `amqp1://host/jobs` is `jobs`, `amqp1://host//queue/jobs` (or
`/%2Fqueue%2Fjobs`) is RabbitMQ 3's `/queue/jobs`. URL parameters are the long options
of `amqp1 receive` (source) and `amqp1 send` (sink): `?credit=100&at_most_once=true`,
`?durable=true&content_type=application/json&sasl=plain`.
"""

from __future__ import annotations

from iotctl.endpoint import Scheme
from iotctl.errors import UsageError

# what --url takes (the connection); the registry's URL schemes map onto these
SCHEMES = {
    "amqp": Scheme(tls=False, ws=False, port=5672),
    "amqps": Scheme(tls=True, ws=False, port=5671),
}
URL_SCHEMES = {"amqp1": "amqp", "amqp1s": "amqps"}


def address_args(url, role: str) -> list[str]:
    """The command-line arguments a URL's address part means: --url with the 0-9-1-free
    scheme swapped for the connection's, and the path (after its first '/') as ADDRESS."""
    scheme = URL_SCHEMES.get(url.scheme)
    if scheme is None:
        raise UsageError(f"bad URL {url.shown!r}", "give amqp1://host/ADDRESS or amqp1s://host/ADDRESS")
    args = ["--url", scheme + url.base[len(url.scheme):]]
    address = (url.path or "")[1:]
    if address:
        args.append(address)
    elif role == "check":
        args.append("iotctl-check-no-address")  # receive requires one; check.py knows it
    elif role == "source":
        raise UsageError(f"bad URL {url.shown!r}", "no address to receive from: amqp1://host/ADDRESS")
    return args


def _client():
    """client.py, or a one-line error when python-qpid-proton is not installed."""
    try:
        from iotctl.protocols.amqp1 import client
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in ("proton", "cproton", "cproton_ffi"):
            raise
        from iotctl.errors import IotctlError

        raise IotctlError("amqp1 needs python-qpid-proton", "it is not installed",
                          hint="pip install 'iotctl[amqp1]' (it builds from source: a C compiler and the "
                               "Python headers)") from None
    return client


def check_address(address: str) -> str:
    if not address:
        raise UsageError("no address", "give ADDRESS (a queue or topic name, e.g. /queue/jobs on RabbitMQ 3)")
    return address


# --------------------------------------------------------------------------- source


def source(cfg, addresses=(), credit=1000, at_most_once=False, receive=None, **_ignored):
    """The receiver links (a receive.Receiver, entered to connect and attach)."""
    Receiver = _client().Receiver
    if not addresses:
        raise UsageError("no address", "give ADDRESS... (in a URL: amqp1://host/ADDRESS)")
    for a in addresses:
        check_address(a)
    count = receive.count if receive is not None else None
    if receive is not None and receive.timeout is not None:  # -W bounds the whole run, the connection included
        cfg.connect_timeout = min(cfg.connect_timeout, receive.timeout)
    return Receiver(cfg, tuple(addresses), credit, at_most_once, count)


# --------------------------------------------------------------------------- sink


def sink(cfg, address=None, props=None, at_most_once=False, window=1000, timeout=10.0, payload=None,
         **_ignored):
    """The sender (a send.Sender, entered to connect). Messages go to `address`, else to
    their own address (a replay, a bridge), one link per address."""
    Sender = _client().Sender
    if address is not None:
        check_address(address)
    if props is not None and payload is not None and payload.encode in ("json", "cbor") \
            and props.content_type is None:
        props.content_type = f"application/{payload.encode}"
    return Sender(cfg, address, props, at_most_once, window, timeout)

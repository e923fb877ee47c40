"""STOMP endpoints: the source (a subscription) and the sink (a sender) that the `stomp`
commands and URLs (`stomp[+ssl]://user:pass@host:port/queue/Q?...`) both open. No
stomp.py here: client.py is imported when an endpoint is built.

The URL's path is the destination as the broker spells it (`/queue/Q`, `/topic/x`,
`/exchange/amq.topic/key`, `/amq/queue/Q`); its parameters are the long options of
`stomp subscribe` (source: `?ack=client&prefetch=100&vhost=v`) and `stomp send` (sink:
`?receipt=false&persistent=true&header=x-site%3Dlab`).
"""

from __future__ import annotations

from iotctl.endpoint import Scheme
from iotctl.errors import UsageError
from iotctl.protocols.stomp.envelope import check_connect_value, check_header

SCHEMES = {
    "stomp": Scheme(tls=False, ws=False, port=61613),
    "stomp+ssl": Scheme(tls=True, ws=False, port=61614),
}
VERSIONS = ("1.0", "1.1", "1.2")
PREFETCH = 1000  # unacknowledged messages a subscription may hold when --prefetch is not given


def address_args(url, role: str) -> list[str]:
    """The command-line arguments a URL's address part means: the path is the destination
    (`iotctl check` parses a URL like a source and sends to a temporary destination of
    its own: without a path, a stand-in satisfies the source command)."""
    args = ["--url", url.base]
    if url.path and url.path != "/":
        args.append(url.path)
    elif role == "check":
        args.append("/topic/iotctl-check")
    return args


def check_destination(destination: str | None, version: str = "1.2") -> str:
    if not destination:
        raise UsageError(f"bad destination {destination or ''!r}", "give e.g. /queue/NAME or /topic/NAME")
    check_header("destination", destination, version, "destination")
    if "\n" in destination or "\r" in destination:
        raise UsageError(f"bad destination {destination!r}", "a destination is one line")
    return destination


def check_config(cfg) -> None:
    """What the CONNECT frame carries is never escaped: no CR, LF or NUL in it."""
    ep = cfg.endpoint
    check_connect_value(ep.username, "-u/--username")
    check_connect_value(ep.password, "-P/--password")
    check_connect_value(cfg.vhost, "--vhost")
    check_connect_value(cfg.client_id, "the client id (--id of a durable subscription)")


# headers iotctl sets itself: a --header of that name would make a second one
_OWN = {"source": ("destination", "id", "ack", "receipt", "content-length"),
        "sink": ("destination", "receipt", "transaction", "content-length", "content-type")}


def _headers(pairs, version: str, role: str) -> dict:
    headers = {}
    for name, value in pairs:
        value = str(value)
        check_header(name, value, version, "--header")
        if name.lower() in _OWN[role]:
            instead = {"destination": "DESTINATION", "content-type": "--content-type",
                       "transaction": "--transaction"}.get(name.lower(), "")
            raise UsageError(f"--header {name!r}", "iotctl sets this header itself"
                             + (f" (give {instead})" if instead else ""))
        headers[name] = value
    return headers


# --------------------------------------------------------------------------- source


def source(cfg, destinations=(), ack_mode=None, nack=False, prefetch=None, durable=False, sub_id=None,
           selector=None, header=(), receive=None, **_ignored):
    """The subscription (a receive.Receiver, entered to connect and subscribe)."""
    from iotctl.protocols.stomp.client import Subscription

    if not destinations:
        raise UsageError("no destination", "give DESTINATION (in a URL: stomp://host/queue/NAME)")
    version = cfg.version
    for d in destinations:
        check_destination(d, version)
    if durable and not sub_id:
        raise UsageError("--durable", "a durable subscription needs a name: add --id NAME")
    ack = ack_mode or "client-individual"
    if nack and version == "1.0":
        raise UsageError("--nack", "STOMP 1.0 has no NACK; use -V 1.1 or 1.2")
    if nack and ack == "auto":
        raise UsageError("--nack and --ack auto", "contradict each other")
    headers = _headers(header, version, "source")
    count = str(prefetch or PREFETCH)
    headers.setdefault("prefetch-count", count)          # RabbitMQ
    headers.setdefault("activemq.prefetchSize", count)   # ActiveMQ
    if selector:
        check_header("selector", selector, version, "--selector")
        headers["selector"] = selector
    if durable:
        headers.update({"durable": "true", "auto-delete": "false", "persistent": "true"})
        cfg.client_id = cfg.client_id or sub_id
    check_config(cfg)
    subs = []
    for i, dest in enumerate(destinations):
        sid = (sub_id if i == 0 else f"{sub_id}-{i + 1}") if sub_id else f"iotctl-{i + 1}"
        check_header("id", sid, version, "--id")
        h = dict(headers)
        if durable:
            h["activemq.subscriptionName"] = sid
        subs.append((dest, sid, h))
    if receive is not None and receive.timeout is not None:  # -W bounds the whole run, the connection included
        cfg.connect_timeout = min(cfg.connect_timeout, receive.timeout)
    return Subscription(cfg, subs, ack, reject=nack, durable=durable)


# --------------------------------------------------------------------------- sink


def sink(cfg, destination=None, header=(), content_type=None, persistent=False, reply_to=None, expires=None,
         priority=None, receipt=True, window=256, transaction=False, timeout=10.0, payload=None, **_ignored):
    """The sender (a send.Sender, entered to connect). Messages go to `destination`,
    else to their own address (a replay)."""
    import time

    from iotctl.protocols.stomp.client import Sender

    version = cfg.version
    if destination is not None:
        check_destination(destination, version)
    if payload is not None and payload.encode in ("json", "cbor") and content_type is None:
        content_type = f"application/{payload.encode}"
    headers = _headers(header, version, "sink")
    if content_type is not None:
        check_header("content-type", content_type, version, "--content-type")
    if persistent:
        headers["persistent"] = "true"
    if reply_to:
        check_header("reply-to", reply_to, version, "--reply-to")
        headers["reply-to"] = reply_to
    if priority is not None:
        headers["priority"] = str(priority)
    if expires is not None:
        headers["expiration"] = str(expires)
        headers["expires"] = str(int(time.time() * 1000) + expires)
    check_config(cfg)
    return Sender(cfg, destination, headers, content_type, receipts=receipt, window=window,
                  transaction=transaction, timeout=timeout)

"""XMPP endpoints: the source (`listen`) and the sink (`send`) that the `xmpp` commands
and URLs both open. No slixmpp here: client.py is imported when an endpoint is built.

The URL names the account in its authority and the peer in its path, after RFC 5122:

    xmpp://alice:PASSWORD@localhost/bob@localhost?server=127.0.0.1:5222

is the account alice@localhost (logging in with PASSWORD) talking to bob@localhost: as
a sink, the recipient of every message; as a source, only messages from bob (without
a path, a source takes every message). The server is the JID's domain (SRV records,
else the domain on port 5222) unless `?server=HOST[:PORT]` names it; a port in the
authority (`@localhost:5223`) means the domain on that port. The other parameters are
the long options of `xmpp listen` (source) and `xmpp send` (sink): `?resource=r1`,
`?cafile=ca.pem`, `?muc=room@conference.localhost&nick=bot`, `?type=normal&subject=alarm`.

XMPP-IoT readouts (XEP-0323) have a scheme of their own, whose path is the device:

    xmpp+iot://reader:PASSWORD@localhost/thing@localhost/dev?field=temperature&interval=5

is `xmpp sensor thing@localhost/dev --field temperature --interval 5` logged in as
reader@localhost: a value a message, a readout every 5 s. Its parameters are the long
options of `xmpp sensor` (`?historical=true&from=-1h`, `?payload=json`). A scheme and
not `xmpp://...?sensor=true`: a URL's parameters are one command's options, and the
registry picks that command by scheme, so xmpp:// keeps meaning listen and send.
"""

from __future__ import annotations

from iotctl.endpoint import Scheme
from iotctl.errors import UsageError

# STARTTLS on 5222 always (tls=True: --cafile/--cert/--insecure apply); --direct-tls: 5223
SCHEMES = {"xmpp": Scheme(tls=True, ws=False, port=5222), "xmpp+iot": Scheme(tls=True, ws=False, port=5222)}
IOT_SCHEME = "xmpp+iot"
DIRECT_TLS_PORT = 5223


def address_args(url, role: str) -> list[str]:
    """The command-line arguments a URL's address part means: --jid (and -P) from the
    authority, --server from its port, the path as the peer (`send`'s JID, `listen`'s
    --from)."""
    from urllib.parse import parse_qsl, unquote, urlsplit

    iot = url.scheme == IOT_SCHEME
    if not url.username:
        raise UsageError(f"bad URL {url.shown!r}", f"no account: give {url.scheme}://USER[:PASSWORD]@DOMAIN/"
                                                   + ("DEVICE_JID" if iot else "PEER_JID"))
    args = ["--jid", f"{url.username}@{url.host}"]
    password = urlsplit(url.base).password
    if password is not None:
        args += ["-P", unquote(password)]
    if url.port is not None:
        names = [k for k, _ in parse_qsl(url.query or "", keep_blank_values=True)]
        if "server" in names:
            raise UsageError(f"bad URL {url.shown!r}", "a port in the account and ?server=: give the port in "
                                                       "?server=HOST:PORT")
        args += ["--server", f"{url.host}:{url.port}"]
    peer = (url.path or "").lstrip("/")
    if iot:  # xmpp sensor DEVICE_JID
        if not peer:
            raise UsageError(f"bad URL {url.shown!r}", "no device: give xmpp+iot://USER[:PASSWORD]@DOMAIN/DEVICE_JID")
        return args + [peer]
    if peer:
        args += [peer] if role == "sink" else ["--from", peer]  # a source (and check) parse as listen
    return args


# --------------------------------------------------------------------------- source


def source(cfg, senders=(), rooms=(), nick=None, with_presence=False, auto_approve=False, priority=0,
           receive=None, device=None, **options):
    """The listener (a receive.Receiver, entered to log in and send presence); with a
    `device` (`xmpp sensor`, xmpp+iot://), the sensor reader."""
    if device is not None:
        return sensor(cfg, device, receive=receive, **options)
    from iotctl.protocols.xmpp.client import Listener, parse_jid
    from iotctl.protocols.xmpp.text import check_options

    check_options(nick=nick)
    senders = [str(parse_jid(s, "--from JID")) for s in senders]
    for r in rooms:
        parse_jid(r, "--muc room")
    if receive is not None and receive.timeout is not None:  # -W bounds the whole run, the login included
        cfg.connect_timeout = min(cfg.connect_timeout, receive.timeout)
    return Listener(cfg, senders, rooms, nick, with_presence, auto_approve, priority)


# --------------------------------------------------------------------------- sink


def sink(cfg, peer=None, mtype="chat", subject=None, thread=None, muc=None, nick=None, sending=None,
         timeout=10.0, payload=None, **_ignored):
    """The messenger (a send.Sender, entered to log in, and join --muc ROOM). Messages
    go to `peer` (or the room); without either, to each message's own recipient
    (a replayed capture)."""
    from iotctl.protocols.xmpp.client import Messenger, parse_jid
    from iotctl.protocols.xmpp.text import check_options

    check_options(subject=subject, thread=thread, nick=nick)
    replay = payload is not None and payload.replay is not None
    if muc and peer:
        raise UsageError("--muc and JID", "give one: the room is the recipient")
    if not peer and not muc and not replay:
        raise UsageError("no recipient", "give JID (or --muc ROOM)")
    if peer:
        peer = user_jid(peer, cfg, "recipient")
    if muc:
        muc = str(parse_jid(muc, "--muc room"))
        mtype = "groupchat"
    if sending is not None and payload is not None and sending.repeat > 1 and payload.streaming:
        raise UsageError("--repeat", "cannot be combined with -l or --replay")
    return Messenger(cfg, peer, mtype, subject, thread, muc, nick, join_timeout=timeout)


def user_jid(text: str, cfg, what: str = "JID") -> str:
    """A user's JID given on the command line: `nc2` alone (a name without a domain) is
    a server's address in XMPP, and almost always a forgotten @domain."""
    from iotctl.protocols.xmpp.client import parse_jid

    jid = parse_jid(text, what)
    own = (cfg.endpoint.username or "").split("@", 1)[-1].split("/", 1)[0].lower()
    if not jid.user and "." not in jid.domain and jid.domain.lower() != own:
        suggestion = f"{text}@{own}" if own else f"{text}@<your server>"
        raise UsageError(f"bad {what} {text!r}", "no @domain (a bare name is a server's address)",
                         hint=f"did you mean {suggestion}?")
    return str(jid)


# --------------------------------------------------------------------------- XMPP-IoT


def sensor(cfg, device, fields=(), nodes=(), momentary=False, historical=False, peak=False, status_values=False,
           computed=False, identity=False, all_kinds=False, since=None, until=None, interval=None,
           payload_form="value", answer_timeout=10.0, receive=None, when=None, **_ignored):
    """The sensor reader (a receive.Receiver, entered to log in and find the device):
    XEP-0323 readouts of `device`, once or every `interval` seconds."""
    from iotctl.protocols.xmpp import iot
    from iotctl.protocols.xmpp.client import SensorReader, parse_jid
    from iotctl.protocols.xmpp.text import check_options

    parse_jid(device, "device JID")
    check_options(field=list(fields), node=list(nodes))
    kinds = [k for k, on in (("momentary", momentary), ("peak", peak), ("status", status_values),
                             ("computed", computed), ("identity", identity)) if on]
    if historical or ((since or until) and not kinds):
        kinds.append("historical")
    if all_kinds:
        kinds = ["all"]
    times = {}
    for name, value in (("--from", since), ("--to", until), ("--when", when)):
        if value is not None:
            try:
                times[name] = iot.parse_time(value)
            except ValueError as exc:
                raise UsageError(f"bad {name} {value!r}", str(exc)) from None
    if "--from" in times and "--to" in times and times["--from"] > times["--to"]:
        raise UsageError("bad --from/--to", f"{since!r} is after {until!r}")
    if when is not None and interval is not None:
        raise UsageError("--when and --interval", "give one: a scheduled readout is made once")
    if receive is not None and receive.timeout is not None:  # -W bounds the whole run, the login included
        cfg.connect_timeout = min(cfg.connect_timeout, receive.timeout)
    return SensorReader(cfg, device, kinds or ["momentary"], fields, nodes, times.get("--from"), times.get("--to"),
                        interval, payload_form == "json", answer_timeout, times.get("--when"))

"""`iotctl check xmpp://user:password@domain`: what an XMPP server is and offers: the
login round trip (connect, TLS, SASL, bind), its stream features (STARTTLS or direct
TLS, the SASL mechanisms offered and the one used, stream management, client state
indication, roster versioning...), its service discovery (identities, features such
as ping, blocking, carbons, message archive, and the components it lists with what
they are: group chat, upload...), its software version (XEP-0092) when it answers,
and the TLS rows; with a probe (on by default against loopback only) a ping round
trip and a message to oneself. Every step is bounded by --timeout."""

from __future__ import annotations

import time
import uuid

from iotctl.checking import Report, timed
from iotctl.errors import IotctlError, TLSError

STREAM = "http://etherx.jabber.org/streams"
TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"
# stream features after the login: namespace -> row
STREAM_FEATURES = (
    ("urn:xmpp:sm:3", "stream management (XEP-0198)"),
    ("urn:xmpp:csi:0", "client state indication (XEP-0352)"),
    ("urn:xmpp:features:rosterver", "roster versioning"),
    ("urn:xmpp:features:pre-approval", "subscription pre-approval"),
    ("urn:ietf:params:xml:ns:xmpp-bind", "resource binding"),
)
# disco#info features of the server: namespace -> row
DISCO_FEATURES = (
    ("urn:xmpp:ping", "ping (XEP-0199)"),
    ("urn:xmpp:blocking", "blocking (XEP-0191)"),
    ("urn:xmpp:carbons:2", "message carbons (XEP-0280)"),
    ("urn:xmpp:mam:2", "message archive (XEP-0313)"),
    ("jabber:iq:version", "software version (XEP-0092)"),
    ("urn:xmpp:time", "entity time (XEP-0202)"),
    ("jabber:iq:last", "last activity (XEP-0012)"),
    ("vcard-temp", "vCard (XEP-0054)"),
    ("urn:xmpp:push:0", "push notifications (XEP-0357)"),
    ("msgoffline", "offline messages"),
)
# what a component's disco identity says it is
COMPONENTS = {("conference", "text"): "group chat (MUC)", ("store", "file"): "file upload",
              ("proxy", "bytestreams"): "file transfer proxy", ("pubsub", "service"): "publish-subscribe",
              ("directory", "user"): "user directory"}
MAX_COMPONENTS = 8  # disco#info asked of at most this many listed items
READ_LIMIT = 64 << 10


def check(report: Report, arguments: dict, probe: bool, max_payload: int, timeout: float) -> None:
    from iotctl.protocols.xmpp.client import DISCO, PING, VERSION, Session

    cfg = arguments["cfg"]
    cfg.connect_timeout = min(cfg.connect_timeout, timeout)
    ep = cfg.endpoint
    session = Session(cfg, plugins=[DISCO, VERSION, PING])
    session.check_login()
    domain = cfg.jid.split("@", 1)[-1].split("/", 1)[0]
    report.tls(ep, timeout, server_name=domain, starttls=None if cfg.direct_tls else _starttls(domain))
    report.add("server", "address", f"{ep.host}:{ep.port} (domain {domain})")
    _, ms = timed(session.open)
    try:
        report.ok("server", "login", f"{ms:.1f} ms (TCP, {'direct TLS' if cfg.direct_tls else 'STARTTLS'}, SASL, "
                                     "bind)")
        features = _discovery(report, session, timeout)  # server rows
        _stream_features(report, session, cfg.direct_tls, features)
        _components(report, session, timeout)
        if probe:
            _probe(report, session, timeout)
        else:
            report.probe_skipped("the probe sends a message")
    finally:
        session.close()


def _starttls(domain: str):
    """The plain-text part of a STARTTLS connection (RFC 6120, 5.4), for tls.inspect."""
    header = (f"<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' "
              f"xmlns:stream='{STREAM}' version='1.0'>").encode()

    def upgrade(sock) -> None:
        what = f"STARTTLS with {domain}"
        sock.sendall(header)
        features = _read_until(sock, (b"features>",))
        if b"starttls" not in features:
            raise TLSError(what, "the server does not offer STARTTLS")
        sock.sendall(f"<starttls xmlns='{TLS_NS}'/>".encode())
        answer = _read_until(sock, (b"<proceed", b"<failure"))
        if b"<proceed" not in answer:
            raise TLSError(what, "the server refused STARTTLS")

    return upgrade


def _read_until(sock, marks: tuple[bytes, ...]) -> bytes:
    data = b""
    while not any(m in data for m in marks):
        chunk = sock.recv(4096)
        if not chunk:
            raise TLSError("STARTTLS", "the server closed the connection")
        data += chunk
        if len(data) > READ_LIMIT:
            raise TLSError("STARTTLS", "the server sent more than 64 KiB before answering")
    return data


def _children(features) -> dict:
    """{namespace: element} of one <stream:features/>."""
    out = {}
    for child in list(features):
        ns = child.tag[1:].split("}", 1)[0] if child.tag.startswith("{") else ""
        out.setdefault(ns, child)
    return out


def _stream_features(report: Report, session, direct_tls: bool, disco_features: set | None) -> None:
    stanzas = [_children(f) for f in session.features]
    if direct_tls:
        report.ok("features", "TLS", "direct TLS (XEP-0368)")
    else:
        starttls = next((s[TLS_NS] for s in stanzas if TLS_NS in s), None)
        required = starttls is not None and starttls.find(f"{{{TLS_NS}}}required") is not None
        report.ok("features", "TLS", "STARTTLS" + (" (required)" if required else " (offered, not required)"))
    sasl = [s[SASL_NS] for s in stanzas if SASL_NS in s]
    if sasl:
        mechanisms = [m.text or "" for m in sasl[-1].findall(f"{{{SASL_NS}}}mechanism")]
        report.add("features", "SASL mechanisms", " ".join(mechanisms) or "(none)")
        before_tls = [s for s in stanzas[:1] if SASL_NS in s and TLS_NS in s and not direct_tls]
        if before_tls:
            report.warn("features", "SASL before TLS", "offered: a login may go over plain text")

    def used():
        mech = session.xmpp.plugin["feature_mechanisms"].mech
        return mech.name if mech is not None else None

    last = stanzas[-1] if stanzas else {}
    for ns, name in STREAM_FEATURES:
        offered = ns in last
        if ns == "urn:xmpp:sm:3" and offered:
            report.add("features", name, "enabled" if session.sm else "offered, not enabled")
        else:
            report.add("features", name, "yes" if offered else "no")
    if disco_features is not None:
        for ns, name in DISCO_FEATURES:
            report.add("features", name, "yes" if ns in disco_features else "no")
        report.add("features", "disco#info features", f"{len(disco_features)} in all")
    mechanism = session.call(used)
    report.ok("login", "accepted", f"{session.bound}" + (f" ({mechanism})" if mechanism else ""))


def _discovery(report: Report, session, timeout: float) -> set | None:
    """The server rows (identity, software); the server's disco#info features."""
    from iotctl.protocols.xmpp.client import disco, version

    domain = session.domain
    try:
        _, info = disco(session, None, None, False, timeout)
    except IotctlError as exc:
        report.warn("server", "disco#info", f"no answer: {exc.why or exc.what}")
        info = None
    if info is not None:
        idents = ", ".join(f"{i['category']}/{i['type']}" + (f" ({i['name']})" if i["name"] else "")
                           for i in info["identities"])
        report.add("server", "identity", idents or "(none)")
    try:
        v = version(session, domain, timeout)
        shown = " ".join(x for x in (v["name"], v["version"]) if x) + (f" on {v['os']}" if v["os"] else "")
        report.add("server", "software", shown or "(empty answer)")
    except IotctlError as exc:
        report.add("server", "software", f"not answered ({exc.why or exc.what})")
    return set(info["features"]) if info is not None else None


def _components(report: Report, session, timeout: float) -> None:
    from iotctl.protocols.xmpp.client import disco

    try:
        _, items = disco(session, None, None, True, timeout)
    except IotctlError as exc:
        report.add("server", "components", f"no answer to disco#items ({exc.why or exc.what})")
        return
    if not items:
        report.add("server", "components", "(none listed)")
        return
    for item in items[:MAX_COMPONENTS]:
        jid = item["jid"]
        try:
            _, info = disco(session, jid, item["node"] or None, False, timeout)
            kinds = [COMPONENTS.get((i["category"], i["type"]), f"{i['category']}/{i['type']}")
                     for i in info["identities"]]
            report.add("components", jid, ", ".join(kinds) or "(no identity)")
        except IotctlError as exc:
            report.add("components", jid, f"no answer ({exc.why or exc.what})")
    if len(items) > MAX_COMPONENTS:
        report.add("components", "more", f"{len(items) - MAX_COMPONENTS} not asked")


def _probe(report: Report, session, timeout: float) -> None:
    from iotctl.protocols.xmpp.client import ping

    try:
        rtt = ping(session, None, timeout)
        report.ok("probe", "ping", f"{rtt * 1000:.1f} ms (the server answered)")
    except IotctlError as exc:
        report.fail("probe", "ping", exc.why or exc.what)
    body = f"iotctl check {uuid.uuid4().hex}"

    async def to_myself():
        import asyncio

        xmpp = session.xmpp
        arrived = asyncio.get_running_loop().create_future()

        def on_message(stanza) -> None:
            if stanza["body"] == body and not arrived.done():
                arrived.set_result(True)

        xmpp.add_event_handler("message", on_message)
        try:
            xmpp.send_message(mto=session.bound, mbody=body, mtype="chat")
            await arrived
        finally:
            xmpp.del_event_handler("message", on_message)

    t0 = time.perf_counter()
    try:
        session.request(to_myself, "a message to oneself", timeout)
        report.ok("probe", "message to oneself", f"back in {(time.perf_counter() - t0) * 1000:.1f} ms")
    except IotctlError as exc:
        report.fail("probe", "message to oneself", exc.why or exc.what)

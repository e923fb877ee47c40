"""XMPP client on slixmpp: a logged-in session driven through the shared bridge.

The one module that imports slixmpp; cli.py imports it inside command bodies only.
Everything here is synchronous from the outside: `Session` runs slixmpp's coroutines
on one `iotctl.bridge.Bridge` for the whole command, so Ctrl-C cancels cleanly.

slixmpp 1.17 behaviour handled here:
- a failed connection attempt is retried for ever (with growing delays); the first
  `connection_failed` ends the login here instead;
- with a host given, it tries direct TLS, then STARTTLS, then plain text on the same
  port unless told otherwise: exactly one of them is enabled here;
- its roster accepts every subscription request by default (`auto_authorize`); here
  nothing is approved unless asked (`listen --auto-approve`);
- stream management (XEP-0198) reports acknowledged stanzas as `stanza_acked`; the
  `Messenger` (a send.Sender) counts those as the server's acknowledgements.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Iterable

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.jid import InvalidJID, JID

from iotctl import receive, send
from iotctl.bridge import Bridge, Bridged
from iotctl.errors import (AuthError, ConnectError, IotctlError, PeerError, TimeoutError_, TLSError,
                           UsageError, from_os_error)
from iotctl.message import Message
from iotctl.trace import route_logs

# always loaded: stream management (acknowledgements). Each command adds what it
# uses: every plugin loaded costs handler matching on every stanza received
BASE_PLUGINS = ("xep_0198",)
MUC, BLOCKING, DISCO, VERSION, PING = "xep_0045", "xep_0191", "xep_0030", "xep_0092", "xep_0199"
SM_WINDOW = 256            # stanzas between two ack requests of stream management
SEND_WINDOW = 4096         # stanzas sent but not yet acknowledged


class XmppConfig:
    """Everything a session needs: endpoint (jid in .username), --resource, --direct-tls,
    --connect-timeout, -d."""

    def __init__(self, endpoint, resource: str | None = None, direct_tls: bool = False,
                 connect_timeout: float = 10.0, debug: bool = False):
        self.endpoint, self.resource, self.direct_tls = endpoint, resource, direct_tls
        self.connect_timeout, self.debug = connect_timeout, debug

    @property
    def jid(self) -> str:
        jid = self.endpoint.username or ""
        if self.resource:
            jid = jid.split("/", 1)[0] + "/" + self.resource
        return jid


def parse_jid(text: str, what: str = "JID") -> JID:
    try:
        jid = JID(text)
    except InvalidJID as exc:
        raise UsageError(f"bad {what} {text!r}", str(exc) or "not a valid JID") from None
    if not jid.domain:
        raise UsageError(f"bad {what} {text!r}", "no domain")
    return jid


def condition(stanza) -> str:
    """`condition: text` of an error stanza."""
    err = stanza["error"]
    cond = err["condition"] or "undefined-condition"
    text = err["text"]
    return f"{cond}: {text}" if text else cond


def iq_error(exc: BaseException, what: str, timeout: float | None = None) -> IotctlError:
    if isinstance(exc, IqError):
        return PeerError(what, condition(exc.iq))
    if isinstance(exc, (IqTimeout, asyncio.TimeoutError, TimeoutError)):
        return TimeoutError_(what, f"no answer within {timeout:g} s" if timeout else "no answer")
    if isinstance(exc, IotctlError):
        return exc
    return IotctlError(what, f"{type(exc).__name__}: {exc}")


class Session(Bridged):
    """One logged-in connection on its own bridge; `plugins` are the slixmpp plugins
    the command uses besides stream management:

        with Session(cfg, plugins=[VERSION]) as s:
            iq = s.call(s.xmpp.plugin[VERSION].get_version(JID("example.com")), "version", 10)
    """

    def __init__(self, cfg: XmppConfig, auto_approve: bool = False, plugins: Iterable[str] = ()):
        self.cfg = cfg
        self.plugins = BASE_PLUGINS + tuple(plugins)
        self.bridge = Bridge()
        self.xmpp = None
        self.auto_approve = auto_approve
        self.sm = False
        self.queue: asyncio.Queue | None = None
        self.lost: IotctlError | None = None
        self.connected = False
        self.online = False
        self.final_ack = None  # a Listener's: the count of stanzas written, sent before closing
        route_logs(("slixmpp",), cfg.debug, label="xmpp", secrets=(cfg.endpoint.password,))

    # ------------------------------------------------------------------ life cycle

    @property
    def what(self) -> str:
        ep = self.cfg.endpoint
        return f"login as {self.cfg.jid} on {ep.host}:{ep.port}"

    async def _open(self) -> None:  # the login
        cfg, ep = self.cfg, self.cfg.endpoint
        if not ep.username:
            raise UsageError("no JID", "give --jid user@domain (or IOTCTL_XMPP_JID, or a profile's jid)")
        jid = parse_jid(cfg.jid, "--jid")
        if not jid.user:
            raise UsageError(f"bad --jid {cfg.jid!r}", "give user@domain")
        if ep.password is None:
            raise UsageError("no password", "give -P/--password (or IOTCTL_XMPP_PASSWORD, or a profile's "
                             "password_env/password_cmd)")
        if ep.insecure:
            from iotctl.settings import warn

            warn("--insecure: the server's certificate and name are not checked")
        xmpp = slixmpp.ClientXMPP(cfg.jid, ep.password)
        self.xmpp = xmpp
        for name in self.plugins:
            xmpp.register_plugin(name)
        sm = xmpp.plugin["xep_0198"]
        sm.allow_resume = False
        sm.window = SM_WINDOW
        sm.window_counter = SM_WINDOW
        xmpp.whitespace_keepalive = False
        xmpp.ssl_context = ep.ssl_context()
        xmpp.enable_direct_tls = cfg.direct_tls
        xmpp.enable_starttls = not cfg.direct_tls
        xmpp.enable_plaintext = False
        xmpp.default_port = ep.port  # without SRV records, the JID's domain on this port
        xmpp.auto_authorize = True if self.auto_approve else None
        xmpp.auto_subscribe = False
        self.queue = asyncio.Queue()

        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def fail(error: IotctlError) -> None:
            if not done.done():
                done.set_exception(error)

        failures: list = []

        def on_failed(reason=None) -> None:
            # one address failed; slixmpp goes on with the next (SRV, IPv6 then IPv4)
            failures.append(reason)

        def attempt_done(fut) -> None:
            if self.connected or done.done():
                return
            reason = failures[-1] if failures else None
            if isinstance(reason, BaseException):
                fail(from_os_error(self.what, reason))
            else:
                fail(ConnectError(self.what, str(reason or "cannot connect")))

        def on_connected(*_):
            self.connected = True

        def on_auth_failed(stanza=None) -> None:
            cond = stanza["condition"] if stanza is not None else "not-authorized"
            text = stanza["text"] if stanza is not None else ""
            fail(AuthError(self.what, f"the server refused the login ({cond}{': ' + text if text else ''})",
                           hint="check --jid and the password"))

        def on_no_auth(*_):
            fail(AuthError(self.what, "no SASL mechanism the server offers can be used",
                           hint="the server may allow logins only over TLS"))

        def on_tls(exc=None) -> None:
            error = from_os_error(self.what, exc) if isinstance(exc, BaseException) else None
            if not isinstance(error, TLSError):
                error = TLSError(self.what, f"TLS handshake failed: {exc}")
            fail(error)

        def on_stream_error(stanza) -> None:
            # a stream error carries its condition itself (no <error/> child)
            cond, text = stanza["condition"] or "undefined-condition", stanza["text"]
            what = self.what if not self.online else f"connection to {ep.host}:{ep.port}"
            err = PeerError(what, f"stream error: {cond}{': ' + text if text else ''}")
            fail(err)
            self.lost = err

        def on_disconnected(*_):
            # a failed STARTTLS handshake closes the connection before start_tls()
            # reports why: give that report a moment to arrive first
            loop.call_later(0.2, fail, ConnectError(self.what, "the server closed the connection "
                                                               "before the login ended"))
            if self.lost is None:
                self.lost = ConnectError(f"connection to {ep.host}:{ep.port}", "the server closed the connection")
            self.queue.put_nowait(_END)

        def on_session(*_):
            self.online = True
            if not done.done():
                done.set_result(True)

        sm_answer: asyncio.Future = loop.create_future()

        def on_sm(*_):
            self.sm = True
            if not sm_answer.done():
                sm_answer.set_result(True)

        def on_sm_failed(*_):
            if not sm_answer.done():
                sm_answer.set_result(False)

        xmpp.add_event_handler("connection_failed", on_failed)
        xmpp.add_event_handler("connected", on_connected)
        xmpp.add_event_handler("failed_auth", on_auth_failed)
        xmpp.add_event_handler("no_auth", on_no_auth)
        xmpp.add_event_handler("ssl_invalid_chain", on_tls)
        xmpp.add_event_handler("stream_error", on_stream_error)
        xmpp.add_event_handler("disconnected", on_disconnected)
        xmpp.add_event_handler("session_start", on_session)
        xmpp.add_event_handler("sm_enabled", on_sm)
        xmpp.add_event_handler("sm_failed", on_sm_failed)
        offers_sm: list = []

        def on_features(features) -> None:
            offers_sm[:] = [features.xml.find("{urn:xmpp:sm:3}sm") is not None]

        from slixmpp.xmlstream.handler import Callback
        from slixmpp.xmlstream.matcher import MatchXPath

        xmpp.register_handler(Callback("iotctl stream features", MatchXPath("{%s}features" % xmpp.stream_ns),
                                       on_features))
        if ep.server_given:
            attempt = xmpp.connect(ep.host, ep.port)
        else:
            attempt = xmpp.connect()
        attempt.add_done_callback(attempt_done)
        try:
            async with asyncio.timeout(cfg.connect_timeout):
                await done
                # session_start comes before the answer to stream management's <enable/>:
                # wait for it, so senders know whether the server acknowledges stanzas
                if any(offers_sm) and not self.sm:
                    await sm_answer
        except TimeoutError:
            raise TimeoutError_(self.what, f"no answer within {cfg.connect_timeout:g} s",
                                hint="is an XMPP server running there? (--connect-timeout sets the wait)") from None
        finally:
            xmpp.cancel_connection_attempt()

    def send_presence(self, show: str | None = None, status: str | None = None, priority: int | None = None,
                      to: str | None = None, ptype: str | None = None) -> None:
        pres = self.xmpp.make_presence(pshow=show, pstatus=status, ppriority=priority, pto=to, ptype=ptype)
        pres.send()

    def close(self) -> None:
        cleanups = []
        if self.xmpp is not None:
            cleanups.append(self._logout)
        self.bridge.close(*cleanups)
        self.xmpp = None

    async def _logout(self) -> None:
        xmpp = self.xmpp
        if xmpp.transport is None or not self.online:
            # never logged in (refused, TLS, no answer): nothing to close politely
            xmpp.cancel_connection_attempt()
            if xmpp.transport is not None:
                xmpp.abort()
            return
        if self.final_ack is not None:
            self.final_ack()
        try:
            await xmpp.disconnect(wait=1.0)
        except Exception:
            xmpp.abort()

    # ------------------------------------------------------------------ calls

    def call(self, coro, what: str, timeout: float):
        """Run one request (an iq) to its answer: PeerError (6) for an error stanza,
        TimeoutError_ (5) when none comes."""
        try:
            return self.bridge.run(self._guarded(coro), timeout)
        except (IqError, IqTimeout, asyncio.TimeoutError, TimeoutError) as exc:
            raise iq_error(exc, what, timeout) from None

    async def _guarded(self, awaitable):
        # iq.send() gives a Future; the bridge runs coroutines
        return await awaitable

    def iq(self, build, what: str, timeout: float):
        """Send the iq `build(iq)` fills and return its result."""
        iq = self.xmpp.Iq()
        build(iq)
        return self.call(iq.send(timeout=timeout), what, timeout)

    def round_trip(self, timeout: float) -> float:
        """A ping to our own server: everything sent before it has been handled."""
        from xml.etree import ElementTree as ET

        iq = self.xmpp.make_iq_get(ito=self.xmpp.boundjid.domain)
        iq.xml.append(ET.Element("{urn:xmpp:ping}ping"))
        start = time.perf_counter()
        self.call(iq.send(timeout=timeout), "round trip to the server", timeout)
        return time.perf_counter() - start

    def run_for(self, seconds: float) -> None:
        self.bridge.sleep(seconds)

    def check(self) -> None:
        if self.lost is not None:
            raise self.lost

    def take(self, wait: float | None) -> list[Message] | None:
        """For a Receiver's poll: what the handlers queued within `wait` seconds; once
        the connection is gone and the queue empty, the reason it ended (raised)."""
        items = self.bridge.take(self.queue, wait)
        out = [m for m in items if m is not _END]
        if not out and items:
            self.check()
            return None
        return out


class _End:
    pass


_END = _End()


# --------------------------------------------------------------------------- sending


class Messenger(send.Sender):
    """Messages for the send driver. With stream management (XEP-0198) every stanza
    is acknowledged by the server (`<a h=.../>`): keys are stanza ids. Without it,
    nothing is acknowledged per message; `finish()` does one round trip (a ping) so
    the server has taken everything before the command exits."""

    def __init__(self, session: Session, to: str | None, mtype: str, subject: str | None = None,
                 thread: str | None = None):
        super().__init__()
        self.session = session
        self.xmpp = session.xmpp
        self.to, self.mtype, self.subject, self.thread = to, mtype, subject, thread
        self.window = SEND_WINDOW if session.sm else None
        self.acks: asyncio.Queue = session.bridge.queue()
        self.prefix = uuid.uuid4().hex[:8] + "-"
        self.n = 0
        self.outq = self.xmpp.waiting_queue
        self.written = 0
        self.requested = -1  # stream management's count when we last asked for an ack
        self.xmpp.add_filter("out_sync", self._written)
        self.xmpp.add_event_handler("stanza_acked", self._acked)
        self.xmpp.add_event_handler("message_error", self._error)

    def _written(self, stanza):
        if stanza.name == "message":
            self.written += 1
        return stanza

    def _acked(self, stanza) -> None:
        if stanza.name == "message":
            self.acks.put_nowait(stanza["id"])

    def _error(self, stanza) -> None:
        self.acks.put_nowait(_Refused(stanza["id"], condition(stanza)))

    def send(self, out) -> str | None:
        self.n += 1
        key = self.prefix + str(self.n)
        to = self.to or out.address
        if not to:
            raise UsageError("no recipient", "give JID (or --muc ROOM)")
        meta = out.meta  # --replay: a captured message keeps its subject and thread
        msg = self.xmpp.make_message(mto=to, mbody=out.payload.decode("utf-8", "replace"), mtype=self.mtype,
                                     msubject=self.subject or meta.get("subject"))
        msg["id"] = key
        thread = self.thread or meta.get("thread")
        if thread:
            msg["thread"] = thread
        msg.send()
        return key if self.window else None

    def busy(self) -> bool:
        return self.outq.qsize() > SM_WINDOW

    def pump(self, wait: float) -> None:
        self.session.check()
        items = self.session.bridge.run(self._pump(wait))
        # an error stanza comes before the ack of the message it answers: refused wins
        for item in items:
            if isinstance(item, _Refused):
                self.refused[item.key] = item.reason
        for item in items:
            if not isinstance(item, _Refused) and item is not _END and item not in self.refused:
                self.acked.add(item)
        self.session.check()

    async def _pump(self, wait: float) -> list:
        end = time.monotonic() + wait
        flushed = self.written < self.n
        while self.written < self.n:  # an ack request must follow what it is for
            await asyncio.sleep(0)
            if time.monotonic() > end:
                return []
        if flushed:
            # called to write out the send queue: acks arrive by themselves (slixmpp asks
            # every SM_WINDOW stanzas); do not wait for one
            await asyncio.sleep(0)
            return self._ready()
        sm = self.xmpp.plugin["xep_0198"]
        if self.window and sm.unacked_queue and self.acks.empty() and sm.seq != self.requested:
            self.requested = sm.seq
            sm.request_ack()
        items = []
        if self.acks.empty():
            try:
                async with asyncio.timeout(max(0.0, end - time.monotonic())):
                    items.append(await self.acks.get())
            except TimeoutError:
                return items
        return items + self._ready()

    def _ready(self) -> list:
        items = []
        while not self.acks.empty():
            items.append(self.acks.get_nowait())
        return items

    def refusal(self, refused: dict) -> IotctlError:
        reasons = sorted(set(map(str, refused.values())))
        return PeerError("send", f"the server refused {len(refused)} message(s): {'; '.join(reasons[:3])}")

    def finish(self, timeout: float | None = None) -> None:
        """Without stream management: one round trip, then report any error stanza
        that came back for the messages (called by the CLI with its timeout; the send
        driver's call without one does nothing yet)."""
        if timeout is None:
            return
        if not self.window:
            self.session.round_trip(timeout)
        refused = {}
        while not self.acks.empty():
            item = self.acks.get_nowait()
            if isinstance(item, _Refused):
                refused[item.key] = item.reason
        if refused:
            raise self.refusal(refused)


class _Refused:
    __slots__ = ("key", "reason")

    def __init__(self, key, reason):
        self.key, self.reason = key, reason


# --------------------------------------------------------------------------- receiving


DELAY = "{urn:xmpp:delay}delay"


def _stamp(stanza) -> str | None:
    """The XEP-0203 delay stamp as ISO 8601 (UTC), or None."""
    delay = stanza.xml.find(DELAY)
    if delay is None:
        return None
    stamp = delay.get("stamp")
    if not stamp:
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).isoformat()
    except ValueError:
        return stamp


_NS = "{jabber:client}"
_BODY, _SUBJECT, _THREAD = _NS + "body", _NS + "subject", _NS + "thread"


def body_of(msg) -> str | None:
    """The message body, read from the XML (slixmpp's msg["body"] costs ~10 µs)."""
    el = msg.xml.find(_BODY)
    return el.text if el is not None else None


def message_of(msg, body: str | None = None) -> Message:
    """A message stanza as a Message, read straight from its XML (the receive hot path)."""
    xml = msg.xml
    attrs = xml.attrib
    mtype = attrs.get("type") or "normal"
    meta: dict = {"type": mtype}
    el = xml.find(_THREAD)
    if el is not None and el.text:
        meta["thread"] = el.text
    el = xml.find(_SUBJECT)
    if el is not None and el.text:
        meta["subject"] = el.text
    meta["to"] = attrs.get("to", "")
    if attrs.get("id"):
        meta["id"] = attrs["id"]
    stamp = _stamp(msg)
    if stamp is not None:
        meta["delay"] = stamp
    if mtype == "error":
        meta["error"] = condition(msg)
    if body is None:
        body = body_of(msg) or ""
    return Message("xmpp", attrs.get("from", ""), body.encode("utf-8"), None, meta)


def ptype(pres) -> str:
    """The presence type attribute (slixmpp's pres["type"] answers the <show> instead)."""
    return pres.xml.attrib.get("type") or "available"


def presence_of(pres, summary: bool = False) -> Message:
    """A presence stanza as a Message: the payload is the status text, or with
    `summary` one line `PRESENCE [SHOW] [STATUS]` (presence watch when piped)."""
    meta: dict = {"type": "presence", "presence": ptype(pres)}
    if pres["show"]:
        meta["show"] = pres["show"]
    if pres["priority"]:
        meta["priority"] = pres["priority"]
    meta["to"] = pres["to"].full
    stamp = _stamp(pres)
    if stamp is not None:
        meta["delay"] = stamp
    text = pres["status"] or ""
    if summary:
        text = " ".join(t for t in (meta["presence"], meta.get("show", ""), text) if t)
    return Message("xmpp", pres["from"].full, text.encode("utf-8"), None, meta)


class Listener(receive.Receiver):
    """Incoming messages (and, with `presence`, presence changes) as a Receiver on
    the bridge. `senders`: only from these JIDs (bare ones match every resource).

    With stream management the server learns that a message was handled only once it
    has been written: the count acknowledged (`<a h=.../>`) stops before the first
    message not yet written, so messages that arrived but were not printed (after -C,
    at Ctrl-C) stay the server's: it stores them again for the next listen. Messages
    that --from filters out count as handled."""

    def __init__(self, session: Session, senders: Iterable[str] = (), presence: bool = False):
        self.session = session
        self.queue = session.queue
        self.full = {s for s in senders if "/" in s}
        self.bare = {s.lower() for s in senders if "/" not in s}
        self.filtered = bool(self.full or self.bare)
        xmpp = session.xmpp
        self.sm = xmpp.plugin["xep_0198"]
        self.unwritten: dict[int, int] = {}   # id(Message) -> its stream management count
        self.ack_due = False
        self.sm.send_ack = self._request
        session.final_ack = self._send_ack
        xmpp.add_event_handler("message", self._message)
        if presence:
            xmpp.add_event_handler("presence", self._presence)

    def _wanted(self, jid) -> bool:
        return not self.filtered or jid.full in self.full or jid.bare.lower() in self.bare

    def _put(self, msg: Message) -> None:
        self.unwritten[id(msg)] = self.sm.handled
        self.queue.put_nowait(msg)

    def _message(self, msg) -> None:
        body = body_of(msg)
        if body and (not self.filtered or self._wanted(msg["from"])):
            self._put(message_of(msg, body))

    def _presence(self, pres) -> None:
        if ptype(pres) == "error":
            return
        if self._wanted(pres["from"]):
            self._put(presence_of(pres))

    def _request(self) -> None:
        """The server's ack request (<r/>): answered at once when everything has been
        written, else once the batch is (one answer per batch, not per message)."""
        if self.unwritten:
            self.ack_due = True
        else:
            self._send_ack()

    def _send_ack(self) -> None:
        """slixmpp's XEP-0198 send_ack, counting only what has been written."""
        self.ack_due = False
        xmpp = self.session.xmpp
        if xmpp is None or not xmpp.transport or not self.sm.enabled_in:
            return
        h = self.sm.handled
        if self.unwritten:
            h = (min(self.unwritten.values()) - 1) % (1 << 32)
        from slixmpp.plugins.xep_0198 import stanza as sm_stanza

        ack = sm_stanza.Ack(xmpp)
        ack["h"] = h
        xmpp.send_raw(str(ack))

    def ack(self, batch: list[Message]) -> None:
        for msg in batch:
            self.unwritten.pop(id(msg), None)
        if self.ack_due:
            self._send_ack()

    def poll(self, wait: float | None) -> list[Message] | None:
        return self.session.take(wait)


def join_muc(session: Session, room: str, nick: str, timeout: float) -> None:
    """Join a group chat (no history); exit 6 when the room refuses."""
    muc = session.xmpp.plugin["xep_0045"]
    try:
        session.bridge.run(muc.join_muc_wait(JID(room), nick, maxstanzas=0, timeout=timeout), timeout + 1)
    except (asyncio.TimeoutError, TimeoutError):
        raise TimeoutError_(f"join {room}", f"no answer within {timeout:g} s") from None
    except Exception as exc:  # slixmpp raises PresenceError for a refusal
        stanza = getattr(exc, "presence", None)
        if stanza is not None:
            raise PeerError(f"join {room} as {nick}", condition(stanza)) from None
        raise IotctlError(f"join {room}", f"{type(exc).__name__}: {exc}") from None


def leave_muc(session: Session, room: str, nick: str) -> None:
    try:
        session.xmpp.plugin["xep_0045"].leave_muc(JID(room), nick)
    except KeyError:
        pass


# --------------------------------------------------------------------------- presence


def collect_presence(session: Session, timeout: float, who: str | None = None) -> list[Message]:
    """Send initial presence (priority -1: offline messages stay stored), then gather
    the presence the server sends back (contacts' current presence, pending
    subscription requests) up to a round trip."""
    got: list = []

    def on_presence(pres) -> None:
        if who is None or pres["from"].bare.lower() == who.lower():
            got.append(pres)

    session.xmpp.add_event_handler("presence", on_presence)
    session.send_presence(priority=-1)
    session.round_trip(timeout)
    session.xmpp.del_event_handler("presence", on_presence)
    return [presence_of(p) for p in got]


class PresenceWatch(receive.Receiver):
    """Presence changes of the roster, for the receive driver."""

    def __init__(self, session: Session, summary: bool = False):
        self.session = session
        self.queue = session.queue
        self.summary = summary
        session.xmpp.add_event_handler("presence", self._presence)
        session.send_presence(priority=-1)

    def _presence(self, pres) -> None:
        if ptype(pres) in ("available", "unavailable"):
            if pres["from"] != self.session.xmpp.boundjid:
                self.queue.put_nowait(presence_of(pres, self.summary))

    def poll(self, wait: float | None):
        return self.session.take(wait)


class Idle(receive.Receiver):
    """Nothing to print: keeps the session online (presence set) until the driver's
    duration or Ctrl-C."""

    def __init__(self, session: Session):
        self.session = session

    def poll(self, wait: float | None):
        return [] if self.session.take(wait) is not None else None


# --------------------------------------------------------------------------- roster, blocking, diagnostics


def roster(session: Session, timeout: float) -> list[dict]:
    """[{jid, name, subscription, ask, groups}], sorted by JID."""
    def build(iq):
        iq["type"] = "get"
        iq.enable("roster")

    result = session.iq(build, "get the roster", timeout)
    items = []
    for jid, item in result["roster"]["items"].items():
        items.append({"jid": str(jid), "name": item.get("name") or "", "subscription": item.get("subscription")
                      or "none", "ask": item.get("ask") or "", "groups": sorted(item.get("groups") or [])})
    return sorted(items, key=lambda i: i["jid"])


def roster_set(session: Session, jid: str, timeout: float, name: str | None = None,
               groups: Iterable[str] = (), remove: bool = False) -> None:
    parse_jid(jid)

    def build(iq):
        iq["type"] = "set"
        entry = {"subscription": "remove"} if remove else {"name": name or "", "groups": list(groups)}
        iq["roster"]["items"] = {jid: entry}

    session.iq(build, f"{'remove' if remove else 'add'} {jid} {'from' if remove else 'to'} the roster", timeout)


def blocklist(session: Session, timeout: float) -> list[str]:
    result = session.call(session.xmpp.plugin["xep_0191"].get_blocked(timeout=timeout), "get the blocklist",
                          timeout)
    return sorted(str(item["jid"]) for item in result["blocklist"])


def block(session: Session, jids: list[str], timeout: float) -> None:
    for j in jids:
        parse_jid(j)
    session.call(session.xmpp.plugin["xep_0191"].block(jids, timeout=timeout), f"block {', '.join(jids)}",
                 timeout)


def unblock(session: Session, jids: list[str] | None, timeout: float) -> None:
    plugin = session.xmpp.plugin["xep_0191"]
    if jids:
        for j in jids:
            parse_jid(j)
        session.call(plugin.unblock(jids, timeout=timeout), f"unblock {', '.join(jids)}", timeout)
    else:
        iq = session.xmpp.make_iq_set()
        iq.enable("unblock")
        session.call(iq.send(timeout=timeout), "unblock everyone", timeout)


def ping(session: Session, jid: str | None, timeout: float) -> float:
    """Round-trip time in seconds of one XEP-0199 ping (an error answer is exit 6,
    except from our own server, which answering at all proves alive)."""
    target = jid or session.xmpp.boundjid.domain
    if jid:
        parse_jid(jid)
    start = time.perf_counter()
    try:
        session.call(session.xmpp.plugin["xep_0199"].send_ping(JID(target), timeout=timeout), f"ping {target}",
                     timeout)
    except PeerError:
        if jid and JID(jid).full != session.xmpp.boundjid.domain:
            raise
    return time.perf_counter() - start


def disco(session: Session, jid: str | None, node: str | None, items: bool, timeout: float):
    target = jid or session.xmpp.boundjid.domain
    plugin = session.xmpp.plugin["xep_0030"]
    what = f"disco {'items' if items else 'info'} of {target}" + (f" node {node}" if node else "")
    if items:
        iq = session.call(plugin.get_items(jid=JID(target), node=node, timeout=timeout), what, timeout)
        return target, [{"jid": str(j), "node": n or "", "name": name or ""}
                        for j, n, name in iq["disco_items"]["items"]]
    iq = session.call(plugin.get_info(jid=JID(target), node=node, timeout=timeout, local=False, cached=False),
                      what, timeout)
    info = iq["disco_info"]
    identities = [{"category": c, "type": t, "lang": lang or "", "name": name or ""}
                  for c, t, lang, name in info["identities"]]
    return target, {"identities": identities, "features": sorted(info["features"])}


def version(session: Session, jid: str, timeout: float) -> dict:
    parse_jid(jid)
    iq = session.call(session.xmpp.plugin["xep_0092"].get_version(JID(jid), timeout=timeout), f"version of {jid}",
                      timeout)
    v = iq["software_version"]
    return {"name": v["name"] or "", "version": v["version"] or "", "os": v["os"] or ""}

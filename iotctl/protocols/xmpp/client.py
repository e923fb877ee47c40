"""XMPP client on slixmpp, run on the process's one asyncio loop (iotctl.aioloop).

The one module that imports slixmpp; cli.py and endpoints.py import it inside
functions only. Every touch of a slixmpp object happens on the loop's thread: in a
coroutine given to `Session.request`/`Session.run`, in slixmpp's handlers, or through
`loop.call`/`loop.soon`. The main thread only sees plain values: Messages (through a
`Handoff`), dicts, strings and counters.

slixmpp 1.17 behaviour handled here:
- a failed connection attempt is retried for ever (with growing delays); the first
  `connection_failed` ends the login here instead;
- with a host given, it tries direct TLS, then STARTTLS, then plain text on the same
  port unless told otherwise: exactly one of them is enabled here;
- its roster accepts every subscription request by default (`auto_authorize`); here
  nothing is approved unless asked (`listen --auto-approve`);
- its XML parser keeps whatever the server sends: one stanza may be as large and as
  deeply nested as the server likes (`_Client` bounds both, also after the login);
- stream management (XEP-0198): slixmpp acknowledges every stanza it parsed; here a
  `Listener` acknowledges (`<a h=.../>`) only up to the first message not yet written,
  and a `Messenger` counts the server's acknowledgements (`stanza_acked`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from typing import Iterable
from xml.etree import ElementTree as ET

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.jid import InvalidJID, JID

from iotctl import aioloop, receive, send
from iotctl.errors import (AuthError, ConnectError, ConnectionLost, IotctlError, PeerError, TimeoutError_,
                           TLSError, UsageError, from_os_error)
from iotctl.message import Message, foreign, text_pairs
from iotctl.protocols.xmpp.text import xml_text, body_text, check_jid_text
from iotctl.trace import route_logs

# always loaded: stream management (acknowledgements). Each command adds what it
# uses: every plugin loaded costs handler matching on every stanza received
BASE_PLUGINS = ("xep_0198",)
MUC, BLOCKING, DISCO, VERSION, PING = "xep_0045", "xep_0191", "xep_0030", "xep_0092", "xep_0199"
SM_WINDOW = 256            # stanzas between two ack requests of stream management
SEND_WINDOW = 4096         # stanzas sent but not yet acknowledged
SEND_BATCH = 128           # messages handed to the loop's thread at once while it is busy
SEND_BACKLOG = 2048        # messages handed over but not yet written: the sender waits
MAX_STANZA = 4 << 20       # bytes of one stanza from the server
MAX_DEPTH = 64             # nesting of elements in one stanza
MAX_ELEMENTS = 100_000     # elements in one stanza
MAX_SEQ = 1 << 32          # stream management counts wrap here
# stream errors after which connecting again makes sense (the server restarts, moves)
TRANSIENT = {"system-shutdown", "reset", "connection-timeout", "see-other-host", "remote-connection-failed"}
SHIM = "http://jabber.org/protocol/shim"
SM_NS = "urn:xmpp:sm:3"    # the stream management slixmpp enables
PING_NS = "urn:xmpp:ping"

_log = logging.getLogger("slixmpp.iotctl")


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

    @property
    def where(self) -> str:
        ep = self.endpoint
        host = f"[{ep.host}]" if ":" in ep.host else ep.host
        return f"{self.jid} on {host}:{ep.port}"


def parse_jid(text: str, what: str = "JID") -> JID:
    check_jid_text(text, what)
    try:
        jid = JID(text)
    except (InvalidJID, UnicodeError) as exc:
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


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and not n % (1 << 20) else f"{n:,} bytes"


class _Client(slixmpp.ClientXMPP):
    """slixmpp's client with a bounded XML reader: one stanza is at most MAX_STANZA
    bytes, MAX_DEPTH elements deep and MAX_ELEMENTS elements large, during the login
    and after it. slixmpp's own reader keeps whatever arrives (an endlessly nested
    stanza took gigabytes). Past a bound, `on_violation(reason)` is told and the
    connection is closed."""

    on_violation = None

    def init_parser(self) -> None:
        super().init_parser()
        self._stanza_bytes = 0
        self._elements = 0

    def data_received(self, data) -> None:
        parser = self.parser
        if parser is None:
            return
        self._stanza_bytes += len(data)
        if self._stanza_bytes > MAX_STANZA:
            return self._violation(f"the server sent a stanza larger than {_size(MAX_STANZA)}")
        try:
            parser.feed(data)
            for event, element in parser.read_events():
                if event == "start":
                    depth = self.xml_depth = self.xml_depth + 1
                    if depth == 1:
                        self.xml_root = element
                        _log.debug("RECV: <stream:stream %s>", " ".join(f"{k.rsplit('}', 1)[-1]}='{v}'"
                                                                         for k, v in element.attrib.items()))
                        self.start_stream_handler(element)
                        continue
                    self._elements += 1
                    if depth > MAX_DEPTH:
                        return self._violation(f"the server sent a stanza nested deeper than {MAX_DEPTH} elements")
                    if self._elements > MAX_ELEMENTS:
                        return self._violation(f"the server sent a stanza of more than {MAX_ELEMENTS:,} elements")
                    continue
                depth = self.xml_depth = self.xml_depth - 1
                if depth == 0:  # the server closed its stream
                    self.disconnect_reason = "End of stream"
                    self.abort()
                    return
                if depth == 1:  # a whole stanza
                    self._stanza_bytes = 0
                    self._elements = 0
                    self._spawn_event(element)
                    if self.xml_root is not None:
                        self.xml_root.clear()  # the stream keeps no children
                    if self.parser is not parser:  # a handler closed the connection
                        return
        except ET.ParseError as exc:
            self._violation(f"the server sent bad XML: {exc}")

    def _violation(self, reason: str) -> None:
        self.parser = None  # nothing more is read from this connection
        if self.on_violation is not None:
            self.on_violation(reason)
        self.abort()


class Session:
    """One logged-in connection, on the shared loop; `plugins` are the slixmpp plugins
    the command uses besides stream management:

        with Session(cfg, plugins=[VERSION]) as s:
            info = s.request(lambda: get_version(s.xmpp), "version", 10)

    What the handlers produce for the main thread goes through `inbox` (Messages, and
    `END` once the connection is gone); `lost` is the error that ended it."""

    def __init__(self, cfg: XmppConfig, auto_approve: bool = False, plugins: Iterable[str] = (),
                 resource: str | None = None):
        self.cfg = cfg
        self.plugins = BASE_PLUGINS + tuple(p for p in plugins if p not in BASE_PLUGINS)
        self.loop = aioloop.shared()
        self.inbox = self.loop.handoff()
        self.resource = resource  # bind this one (a reconnect takes over its old resource)
        self.xmpp = None
        self.auto_approve = auto_approve
        self.sm = False
        self.lost: IotctlError | None = None
        self.connected = False
        self.online = False
        self.bound = ""    # the full JID bound, as text
        self.domain = ""
        self.features: list = []  # every <stream:features/> the server sent, in order (iotctl check)
        self._gone: asyncio.Future | None = None
        self._watchers: list = []  # called (on the loop's thread) once the connection is gone
        self.before_logout: list = []  # called (on the loop's thread) before a polite logout
        # the trace (and, with it, asyncio's complaints about writes to a closed socket:
        # a cut connection printed "socket.send() raised exception." per stanza)
        route_logs(("slixmpp", "asyncio"), cfg.debug, label="xmpp", secrets=(cfg.endpoint.password,))

    # ------------------------------------------------------------------ life cycle

    @property
    def what(self) -> str:
        ep = self.cfg.endpoint
        return f"login as {self.jid} on {ep.host}:{ep.port}"

    @property
    def jid(self) -> str:
        jid = self.cfg.jid
        if self.resource:
            jid = jid.split("/", 1)[0] + "/" + self.resource
        return jid

    def __enter__(self) -> "Session":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        self.check_login()
        try:
            self.loop.run(self._open())
        except BaseException:
            self.close()
            raise

    def check_login(self) -> None:
        """What the login needs, checked before connecting (exit 2)."""
        cfg, ep = self.cfg, self.cfg.endpoint
        if not ep.username:
            raise UsageError("no JID", "give --jid user@domain (or IOTCTL_XMPP_JID, or a profile's jid)")
        jid = parse_jid(self.jid, "--jid")
        if not jid.user:
            raise UsageError(f"bad --jid {cfg.jid!r}", "give user@domain")
        if ep.password is None:
            raise UsageError("no password", "give -P/--password (or IOTCTL_XMPP_PASSWORD, or a profile's "
                             "password_env/password_cmd)")
        xml_text(ep.password, "-P/--password", show=False)

    async def _open(self) -> None:  # the login, on the loop's thread
        cfg, ep = self.cfg, self.cfg.endpoint
        if ep.insecure:
            from iotctl.settings import warn

            warn("--insecure: the server's certificate and name are not checked")
        # our context from the start: slixmpp otherwise builds a default one (loading the
        # system's CA store twice, ~40 ms of every login) only for it to be replaced
        xmpp = _Client(self.jid, ep.password, ssl_context=ep.ssl_context())
        self.xmpp = xmpp
        for name in self.plugins:
            xmpp.register_plugin(name)
        sm = xmpp.plugin["xep_0198"]
        sm.allow_resume = False
        sm.window = SM_WINDOW
        sm.window_counter = SM_WINDOW
        xmpp.whitespace_keepalive = False
        xmpp.enable_direct_tls = cfg.direct_tls
        xmpp.enable_starttls = not cfg.direct_tls
        xmpp.enable_plaintext = False
        xmpp.default_port = ep.port  # without SRV records, the JID's domain on this port
        xmpp.auto_authorize = True if self.auto_approve else None
        xmpp.auto_subscribe = False

        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        self._gone = loop.create_future()
        where = f"connection to {ep.host}:{ep.port}"

        def fail(error: IotctlError) -> None:
            if not done.done():
                done.set_exception(error)

        def gone(error: IotctlError) -> None:
            """The connection is over: the first reason stands."""
            if self.lost is None:
                self.lost = error
            fail(error)
            if not self._gone.done():
                self._gone.set_result(True)
                for watcher in self._watchers:
                    watcher()
                self.inbox.put(END)

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
            why = f"stream error: {cond}{': ' + text if text else ''}"
            if not self.online:
                gone(PeerError(self.what, why))
            elif cond in TRANSIENT:  # the server restarts: connecting again makes sense
                gone(ConnectionLost(where, why))
            else:
                gone(PeerError(where, why))

        def on_violation(reason: str) -> None:
            gone(PeerError(where if self.online else self.what, reason))

        def on_disconnected(*_):
            # a failed STARTTLS handshake closes the connection before start_tls()
            # reports why: give that report a moment to arrive first
            loop.call_later(0.2, fail, ConnectError(self.what, "the server closed the connection "
                                                               "before the login ended"))
            if self.online or self.lost is not None:
                gone(ConnectionLost(where, "the server closed the connection"))
            else:
                loop.call_later(0.2, gone, ConnectionLost(where, "the server closed the connection"))

        def on_session(*_):
            self.online = True
            self.bound = xmpp.boundjid.full
            self.domain = xmpp.boundjid.domain
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

        xmpp.on_violation = on_violation
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
            self.features.append(features.xml)
            del self.features[:-4]  # one login's (before TLS, after TLS, after SASL), bounded

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
                    await asyncio.wait({sm_answer, self._gone}, return_when=asyncio.FIRST_COMPLETED)
                    if self.lost is not None:
                        raise self.lost
        except TimeoutError:
            raise TimeoutError_(self.what, f"no answer within {cfg.connect_timeout:g} s",
                                hint="is an XMPP server running there? (--connect-timeout sets the wait)") from None
        finally:
            xmpp.cancel_connection_attempt()

    def close(self) -> None:
        if self.xmpp is not None:
            self.loop.cleanup(self._logout)
            self.xmpp = None

    def abort(self) -> None:
        """Drop the connection without a goodbye (after it was lost)."""
        if self.xmpp is not None:
            self.loop.cleanup(self._abort)
            self.xmpp = None

    async def _abort(self) -> None:
        xmpp = self.xmpp
        xmpp.cancel_connection_attempt()
        if xmpp.transport is not None:
            xmpp.abort()
        self._stop_tasks(xmpp)

    async def _logout(self) -> None:
        xmpp = self.xmpp
        if xmpp.transport is None or not self.online or self.lost is not None:
            # never logged in (refused, TLS, no answer) or already gone: nothing to close politely
            await self._abort()
            return
        for hook in self.before_logout:
            hook()
        try:
            await xmpp.disconnect(wait=1.0)
        except Exception:
            xmpp.abort()
        self._stop_tasks(xmpp)

    @staticmethod
    def _stop_tasks(xmpp) -> None:
        # slixmpp's send loop waits on its queue for ever; on the shared loop it would
        # outlive the session (and keep the whole client alive) after a reconnect
        task = getattr(xmpp, "_run_out_filters", None)
        if task is not None and not task.done():
            task.cancel()

    def on_gone(self, watcher) -> None:
        """Call `watcher()` on the loop's thread once the connection is gone."""
        self._watchers.append(watcher)

    # ------------------------------------------------------------------ on the loop's thread

    def run(self, coro, timeout: float | None = None):
        """Run a coroutine on the loop's thread and return its result."""
        return self.loop.run(coro, timeout)

    def call(self, fn, *args):
        """Call a plain function on the loop's thread and return its result."""
        return self.loop.call(fn, *args)

    def request(self, make, what: str, timeout: float):
        """Run the coroutine `make()` (built on the loop's thread: it may create
        stanzas) to its result: PeerError (6) for an error stanza, TimeoutError_ (5)
        when no answer comes within `timeout`, the connection's end when it ends first."""

        async def guarded():
            task = asyncio.ensure_future(make())
            gone = self._gone
            try:
                done, _ = await asyncio.wait({task, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            except BaseException:
                task.cancel()
                raise
            if task in done:
                return task.result()
            task.cancel()
            if gone.done() and self.lost is not None:
                raise self.lost
            raise asyncio.TimeoutError()

        try:
            return self.loop.run(guarded())
        except (IqError, IqTimeout, asyncio.TimeoutError, TimeoutError) as exc:
            raise iq_error(exc, what, timeout) from None

    def send_presence(self, show: str | None = None, status: str | None = None, priority: int | None = None,
                      to: str | None = None, ptype: str | None = None) -> None:
        def presence():
            self.xmpp.make_presence(pshow=show, pstatus=status, ppriority=priority, pto=to, ptype=ptype).send()

        self.call(presence)

    async def _ping(self, timeout: float) -> None:
        iq = self.xmpp.make_iq_get(ito=self.xmpp.boundjid.domain)
        iq.xml.append(ET.Element("{urn:xmpp:ping}ping"))
        try:
            await iq.send(timeout=timeout)
        except IqError:
            pass  # an answer all the same: everything before it was handled

    def round_trip(self, timeout: float) -> None:
        """A ping to our own server: everything sent before it has been handled."""
        self.request(lambda: self._ping(timeout), "round trip to the server", timeout)

    def wait(self, seconds: float) -> None:
        """Stay connected for `seconds` (the loop answers the server meanwhile); the
        connection's end is raised."""
        self.check()
        items = self.inbox.take(seconds) if seconds > 0 else []
        if END in items:
            self.check()

    def check(self) -> None:
        if self.lost is not None:
            raise self.lost


class _End:
    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


END = _End()  # in an inbox: the connection is gone (Session.lost says why)


# --------------------------------------------------------------------------- sending


class _Refused:
    __slots__ = ("key", "reason")

    def __init__(self, key, reason):
        self.key, self.reason = key, reason


class Messenger(send.Sender):
    """The send driver's XMPP side: each message one <message/> stanza, keyed by its id.

    With stream management (XEP-0198) the server acknowledges stanzas (`<a h=.../>`):
    an ack request follows whenever the writer has caught up (and every SM_WINDOW
    stanzas). Without it, a ping to the server follows instead: its answer means every
    message written before it was handled. An error stanza for a message (the
    recipient does not exist, blocks us) makes it refused: it reaches --failed.

    The main thread prepares messages (checks, adoption) and hands them to the loop's
    thread in batches while the loop is busy, one by one while it is idle, so a slow
    input (`tail -f | xmpp send -l`) is sent at once and a fast one costs one
    hand-over per batch."""

    protocol = "xmpp"

    def __init__(self, cfg: XmppConfig, to: str | None = None, mtype: str = "chat", subject: str | None = None,
                 thread: str | None = None, muc: str | None = None, nick: str | None = None,
                 join_timeout: float = 10.0):
        super().__init__()
        self.cfg = cfg
        self.to, self.mtype, self.subject, self.thread = to, mtype, subject, thread
        self.muc, self.nick, self.join_timeout = muc, nick, join_timeout
        self.address = muc or to  # where a message without an address of its own goes
        self.window = SEND_WINDOW
        self.session: Session | None = None
        self.prefix = uuid.uuid4().hex[:8] + "-"
        self.n = 0
        self.pending: list = []      # prepared on the main thread, not yet handed over
        self.handed = 0              # main thread: messages handed to the loop's thread
        self.written = 0             # loop's thread: message stanzas written
        self.events = None           # loop -> main: acknowledged keys, _Refused, END
        self._recipients: dict[str, str] = {}
        self._refused_keys: set = set()

    @property
    def where(self) -> str:
        return self.cfg.where

    def composed(self, msg: Message) -> Message:
        """Into --failed with its recipient and the command line's --subject and
        --thread, so `--replay FILE` alone sends it the same way."""
        meta = dict(msg.meta) if isinstance(msg.meta, dict) else {}
        if self.subject is not None:
            meta.setdefault("subject", self.subject)
        if self.thread is not None:
            meta.setdefault("thread", self.thread)
        return msg.copy(protocol=self.protocol, address=msg.address or self.address or "", meta=meta)

    # ------------------------------------------------------------------ life cycle

    def open(self) -> None:
        session = Session(self.cfg, plugins=[MUC] if self.muc else [])
        session.open()
        try:
            self.events = session.loop.handoff()
            session.call(self._install, session)
            if self.muc:
                self.nick = self.nick or session.bound.split("@", 1)[0]
                join_muc(session, self.muc, self.nick, self.join_timeout)
        except BaseException:
            session.close()
            raise
        self.session = session

    def close(self) -> None:
        session = self.session
        if session is None:
            return
        if self.muc and session.lost is None:
            try:
                leave_muc(session, self.muc, self.nick)
            except (IotctlError, KeyboardInterrupt):
                pass
        session.close()

    # ------------------------------------------------------------------ the loop's side

    def _install(self, session: Session) -> None:
        xmpp = session.xmpp
        self.session = session
        self.xmpp = xmpp
        self.sm_plugin = xmpp.plugin["xep_0198"]
        self.sm = session.sm
        self.loop_handed = 0
        self.requested = -1          # stream management's count when we last asked for an ack
        self.unconfirmed: deque = deque()  # without SM: keys written, not yet confirmed by a ping
        self.pinging = False
        self.asking = False
        self._acked_now: list = []
        xmpp.add_filter("out_sync", self._written)
        xmpp.add_event_handler("stanza_acked", self._acked)
        xmpp.add_event_handler("message_error", self._error)
        session.on_gone(lambda: self.events.put(END))

    def _write(self, batch: list) -> None:
        """Build and queue the stanzas of a batch (loop's thread)."""
        xmpp = self.xmpp
        if xmpp.transport is None:
            return  # the connection is gone: they stay unacknowledged (--failed)
        make = xmpp.make_message
        mtype = self.mtype
        for key, to, body, subject, thread, headers in batch:
            stanza = make(mto=to, mbody=body, mtype=mtype, msubject=subject)
            xml = stanza.xml
            xml.set("id", key)
            if thread:
                ET.SubElement(xml, "{jabber:client}thread").text = thread
            if headers:
                box = ET.SubElement(xml, "{%s}headers" % SHIM)
                for name, value in headers:
                    header = ET.SubElement(box, "{%s}header" % SHIM, name=name)
                    header.text = value
            stanza.send()
        self.loop_handed += len(batch)

    def _written(self, stanza):
        if stanza.name == "message":
            self.written += 1
            if not self.sm:
                self.unconfirmed.append(stanza.xml.get("id"))
            if self.written == self.loop_handed:
                self._caught_up()
        return stanza

    def _caught_up(self) -> None:
        """Everything handed over is written: ask for the acknowledgements now rather
        than after the next SM_WINDOW stanzas (or, without SM, ping)."""
        if self.sm:
            if not self.asking:  # once the stanza is out: this runs in the send queue's filter
                self.asking = True
                asyncio.get_running_loop().call_soon(self._ask)
        elif self.unconfirmed and not self.pinging:
            self.pinging = True
            upto = self.unconfirmed[-1]
            asyncio.ensure_future(self._confirm_by_ping(upto))

    def _ask(self) -> None:
        self.asking = False
        sm = self.sm_plugin
        if sm.enabled_out and sm.unacked_queue and sm.seq != self.requested and self.xmpp.transport:
            self.requested = sm.seq
            sm.request_ack()

    async def _confirm_by_ping(self, upto: str) -> None:
        try:
            await self.session._ping(max(self.join_timeout, 10.0))
        except (IqTimeout, asyncio.TimeoutError, TimeoutError):
            return  # the window's own timeout reports it
        except Exception:
            return
        finally:
            self.pinging = False
        keys = []
        unconfirmed = self.unconfirmed
        while unconfirmed:
            key = unconfirmed.popleft()
            keys.append(key)
            if key == upto:
                break
        if keys:
            self.events.put(keys)
        if unconfirmed and self.written == self.loop_handed:
            self._caught_up()

    def _acked(self, stanza) -> None:
        if stanza.name == "message":
            if not self._acked_now:
                asyncio.get_running_loop().call_soon(self._hand_acks)
            self._acked_now.append(stanza.xml.get("id"))

    def _hand_acks(self) -> None:
        keys, self._acked_now = self._acked_now, []
        self.events.put(keys)

    def _error(self, stanza) -> None:
        key = stanza.xml.get("id")
        if key and key.startswith(self.prefix):
            self.events.put(_Refused(key, condition(stanza)))

    # ------------------------------------------------------------------ the main thread's side

    def send(self, msg: Message) -> str:
        self.n += 1
        to = self._recipient(msg)
        body = body_text(msg.payload, "payload" if self.n == 1 else f"message {self.n}")
        subject, thread, headers = self._adopt(msg)
        key = self.prefix + str(self.n)
        # so --failed keeps where it was going (a replay of it needs nothing else)
        msg.address = to
        meta = msg.meta
        if meta and meta.get("to", to) != to and msg.protocol in ("xmpp", ""):
            msg.meta = {**meta, "to": to}  # a captured message's recipient is where it went now
        pending = self.pending
        pending.append((key, to, body, subject, thread, headers))
        # idle loop: now (a slow input goes out at once); busy: in batches
        if self.handed == self.written or len(pending) >= SEND_BATCH:
            self._flush()
        return key

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        self.handed += len(batch)
        self.session.loop.soon(self._write, batch)

    def _recipient(self, msg: Message) -> str:
        """The room (--muc); else the message's own address (the send contract: the
        command line and a bridge set it) when it is an XMPP address (an XMPP message,
        or a user's JID); else JID (this sink's `address`)."""
        if self.muc:
            return self.muc
        to = msg.address
        if to and msg.protocol and msg.protocol != "xmpp" and "@" not in to:
            to = ""  # a topic, a routing key...: not a recipient
        to = to or self.to
        if not to:
            if msg.protocol and msg.protocol != "xmpp" and msg.address:
                raise UsageError(f"no recipient for a {msg.protocol} message", "give JID: its address "
                                 f"{msg.address!r} is not an XMPP address")
            raise UsageError("no recipient", "give JID (or --muc ROOM)")
        checked = self._recipients.get(to)
        if checked is None:
            checked = self._recipients[to] = str(parse_jid(to, "recipient"))
        return checked

    def _adopt(self, msg: Message):
        """The one place a message's own meta becomes stanza fields: (subject, thread,
        headers). An XMPP message (or one composed here) keeps its subject, thread and
        XEP-0131 headers; from another protocol only what crosses: its content type
        and headers as XEP-0131 headers, its correlation id as the thread; nothing
        else of its meta is sent. --subject and --thread win."""
        found = foreign(msg, "xmpp")
        subject = thread = None
        headers: list = []
        content_type = msg.content_type
        if found is None:
            meta = msg.meta if isinstance(msg.meta, dict) else {}
            if meta:
                subject = meta.get("subject") if isinstance(meta.get("subject"), str) else None
                thread = meta.get("thread") if isinstance(meta.get("thread"), str) else None
                headers = text_pairs(meta.get("headers") or ())
        else:
            content_type = found.content_type
            headers = list(found.headers)
            if found.correlation_id is not None:
                from iotctl.protocols.xmpp.envelope import thread_text

                thread = thread_text(found.correlation_id)
        if self.subject is not None:
            subject = self.subject
        if self.thread is not None:
            thread = self.thread
        if content_type and not any(k.lower() == "content-type" for k, _ in headers):
            headers.append(("Content-Type", content_type))
        if headers:  # a header XML cannot carry is dropped, not sent half
            headers = [(k, v) for k, v in headers if k and _is_text(k) and _is_text(v)]
        if subject is not None and not _is_text(subject):
            subject = None
        if thread is not None and not _is_text(thread):
            thread = None
        return subject, thread, headers

    def busy(self) -> bool:
        return self.handed - self.written > SEND_BACKLOG or len(self.pending) >= SEND_BATCH

    def pump(self, wait: float) -> None:
        if self.pending:
            self._flush()
        session = self.session
        items = self.events.take(wait)
        refused, acked, keys = self.refused, self.acked, self._refused_keys
        ended = False
        for item in items:
            if item is END:
                ended = True
            elif isinstance(item, _Refused):
                refused[item.key] = item.reason
                keys.add(item.key)
            else:
                # an error stanza comes before the ack of the message it answers: refused wins
                acked.update(k for k in item if k not in keys)
        if ended or session.lost is not None:
            if acked or refused:
                return  # counted first; the next pump reports the loss
            raise _as_send_error(session.lost)

    def finish(self) -> None:
        """Nothing is left to learn once everything is settled: with stream management
        the server answers an error stanza for a message before it acknowledges it;
        without it, the ping that confirmed the last messages came after their error
        stanzas. Either way a refusal is in `refused` by now (and in --failed)."""

    def refusal(self, refused: dict) -> IotctlError:
        reasons = sorted(set(map(str, refused.values())))
        return PeerError("send", f"the server refused {len(refused)} message(s): {'; '.join(reasons[:3])}")


def _is_text(value: str) -> bool:
    try:
        xml_text(value, "")
    except UsageError:
        return False
    return True


def _as_send_error(lost: IotctlError | None) -> IotctlError:
    if lost is None:
        return ConnectionLost("send", "connection lost")
    if isinstance(lost, ConnectionLost):
        return ConnectionLost("send", f"connection lost ({lost.why or lost.what})")
    return lost


# --------------------------------------------------------------------------- receiving


DELAY = "{urn:xmpp:delay}delay"
_NS = "{jabber:client}"
_BODY, _SUBJECT, _THREAD = _NS + "body", _NS + "subject", _NS + "thread"
_HEADERS, _HEADER = "{%s}headers" % SHIM, "{%s}header" % SHIM


def _stamp(xml) -> str | None:
    """The XEP-0203 delay stamp as ISO 8601 (UTC), or None."""
    delay = xml.find(DELAY)
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
    stamp = _stamp(xml)
    if stamp is not None:
        meta["delay"] = stamp
    content_type = None
    box = xml.find(_HEADERS)
    if box is not None:  # XEP-0131 headers, in order
        pairs = [[h.get("name", ""), h.text or ""] for h in box.iter(_HEADER)]
        meta["headers"] = pairs
        for name, value in pairs:
            if name.lower() == "content-type":
                content_type = value
    if mtype == "error":
        meta["error"] = condition(msg)
    if body is None:
        body = body_of(msg) or ""
    return Message("xmpp", attrs.get("from", ""), body.encode("utf-8"), content_type, meta)


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
    stamp = _stamp(pres.xml)
    if stamp is not None:
        meta["delay"] = stamp
    text = pres["status"] or ""
    if summary:
        text = " ".join(t for t in (meta["presence"], meta.get("show", ""), text) if t)
    return Message("xmpp", pres["from"].full, text.encode("utf-8"), None, meta)


ACK_EVERY = 0.05  # seconds: the loop acknowledges what was written at least this often
WAKE_COUNT = 64   # the main thread has the loop acknowledge at once after this many written
WAKE_EVERY = 0.02  # ... or this long after it last did


class _Inbound:
    """A session's incoming messages on the loop's thread: each into the inbox with
    its stream-management count as token, and acknowledgements (`<a h=.../>`) that
    stop before the first message not yet written. Messages that arrived but were
    not printed (after -C, at Ctrl-C, a cut) stay the server's: it stores them again
    for the next listen. Stanzas that are not printed by design (no body, --from
    filtered, presence without --presence) count as handled.

    The main thread reports what it wrote by appending counts to `written`, and wakes
    the loop to acknowledge them only every WAKE_COUNT messages or WAKE_EVERY seconds
    (a wake-up per written batch halved the rate of `listen` when batches are small);
    the loop also acknowledges every ACK_EVERY seconds while messages are unwritten,
    in answer to the server's <r/>, and before the session closes. After a cut, what
    was written since the last acknowledgement comes again: at most about WAKE_COUNT
    messages or WAKE_EVERY seconds' worth."""

    def __init__(self, session: Session, senders: Iterable[str], presence: bool):
        self.session = session
        self.inbox = session.inbox
        self.full = {s for s in senders if "/" in s}
        self.bare = {s.lower() for s in senders if "/" not in s}
        self.filtered = bool(self.full or self.bare)
        self.presence = presence
        self.closed = False
        self.pending = receive.Cumulative()
        self.written: deque = deque()  # counts written (main thread appends, loop takes)
        self.acked_h = -1
        self.due = False  # the server asked, the answer waits for the next write
        self.ticking = False
        self.unreported = 0  # main thread: written since it last woke the loop
        self.woken = 0.0
        self.batch: list = []  # read, not yet handed to the main thread

    def install(self) -> None:  # loop's thread
        session = self.session
        xmpp = session.xmpp
        self.sm = xmpp.plugin["xep_0198"]
        self.counting = session.sm
        self.sm.send_ack = self.answer  # the server's <r/>: what was written, not what was read
        xmpp.add_event_handler("message", self.message)
        if self.presence:
            xmpp.add_event_handler("presence", self.presence_changed)
        session.on_gone(self.close)
        session.before_logout.append(self.answer)

    def close(self) -> None:  # the connection is gone: what was read goes out before the end
        self._hand()
        self.closed = True

    def _wanted(self, jid: str) -> bool:
        if not self.filtered or jid in self.full:
            return True
        return jid.split("/", 1)[0].lower() in self.bare

    def _put(self, msg: Message) -> None:
        if self.counting:
            h = self.sm.handled
            msg.token = (self, h)
            self.pending.delivered(h)
            if not self.ticking:
                self.ticking = True
                asyncio.get_running_loop().call_later(ACK_EVERY, self._tick)
        batch = self.batch
        batch.append(msg)
        if len(batch) == 1:  # handed over once the read that brought it is done: one wake-up a read
            asyncio.get_running_loop().call_soon(self._hand)

    def _hand(self) -> None:
        if self.batch:
            batch, self.batch = self.batch, []
            self.inbox.put(batch)

    def message(self, stanza) -> None:
        body = body_of(stanza)
        if body and (not self.filtered or self._wanted(stanza.xml.get("from", ""))):
            self._put(message_of(stanza, body))
        if len(self.written) >= WAKE_COUNT:  # a long read (stored messages at login) acknowledges as it goes
            self.answer(True)

    def presence_changed(self, pres) -> None:
        if ptype(pres) == "error":
            return
        if self._wanted(pres.xml.get("from", "")):
            self._put(presence_of(pres))

    def _tick(self) -> None:
        self.ticking = False
        if self.closed:
            return
        self.answer(unasked=True)
        if self.pending.order:
            self.ticking = True
            asyncio.get_running_loop().call_later(ACK_EVERY, self._tick)

    def handled(self) -> int:
        """The count of stanzas handled: everything before the first one not written."""
        written = self.written
        if written:
            counts = []
            while written:
                counts.append(written.popleft())
            self.pending.confirm(counts)
        order = self.pending.order
        if order:
            return (order[0] - 1) % MAX_SEQ
        return self.sm.handled

    def wrote(self, counts: list) -> None:  # main thread
        self.written.extend(counts)
        self.unreported += len(counts)
        now = time.monotonic()
        if self.unreported >= WAKE_COUNT or now - self.woken >= WAKE_EVERY:
            self.unreported = 0
            self.woken = now
            self.session.loop.soon(self.answer, True)

    def answer(self, unasked: bool = False) -> None:
        """<a h=.../> with the count handled: whenever more has been written, and to
        the server's <r/>. An <r/> that comes while messages wait to be written and
        brings nothing new to say is answered once they are (Prosody asks again after
        every <a/> while it sends: answering at once made a request and an answer per
        read)."""
        xmpp = self.session.xmpp
        if self.closed or xmpp is None or not xmpp.transport or not self.sm.enabled_in:
            return
        h = self.handled()
        if h == self.acked_h:
            if unasked and not self.due:
                return
            if not unasked and self.pending.order:
                self.due = True
                return
        self.acked_h = h
        self.due = False
        xmpp.send_raw(f"<a xmlns='{SM_NS}' h='{h}'/>")


class Listener(receive.Receiver):
    """Incoming messages (and, with `presence`, presence changes) as a Receiver:
    entered, it logs in, joins the group chats and sends presence (so the server
    routes messages here, including those stored while offline); after a lost
    connection it logs in again with the same resource, so the server hands what the
    old session had not acknowledged back to this one."""

    can_reconnect = True

    def __init__(self, cfg: XmppConfig, senders: Iterable[str] = (), rooms: Iterable[str] = (),
                 nick: str | None = None, presence: bool = False, auto_approve: bool = False, priority: int = 0):
        self.cfg = cfg
        self.senders, self.rooms, self.nick = tuple(senders), tuple(rooms), nick
        self.with_presence, self.auto_approve, self.priority = presence, auto_approve, priority
        self.session: Session | None = None
        self.inbound: _Inbound | None = None
        self.resource = cfg.resource
        self._ended = False

    @property
    def where(self) -> str:
        return self.cfg.where

    @property
    def bound(self) -> str:
        return self.session.bound if self.session is not None else ""

    @property
    def delivery(self) -> str:
        """With stream management a message not acknowledged (not written) is kept by
        the server: Prosody stores what the session had not acknowledged as offline
        messages when it ends (for chat and normal messages, when it was the account's
        only session, up to its smacks_max_queue_size). Without it, what was sent is
        gone from the server."""
        session = self.session
        return "at-least-once" if session is not None and session.sm and not self.rooms else "at-most-once"

    def open(self) -> None:
        session = Session(self.cfg, self.auto_approve, [MUC] if self.rooms else [], resource=self.resource)
        session.open()
        try:
            inbound = _Inbound(session, self.senders, self.with_presence)
            session.call(inbound.install)
            nick = self.nick or session.bound.split("@", 1)[0]
            for room in self.rooms:
                join_muc(session, room, nick, self.cfg.connect_timeout)
            session.send_presence(priority=self.priority)
        except BaseException:
            session.close()
            raise
        self.session, self.inbound, self._ended = session, inbound, False
        # a reconnect binds this resource again: the server then closes a session of
        # ours it still believes alive, and stores what that one had not acknowledged
        self.resource = session.bound.split("/", 1)[1] if "/" in session.bound else None

    def close(self) -> None:
        if self.session is not None:
            self.session.close()

    def reconnect(self) -> None:
        old = self.session
        self.session = None
        if old is not None:
            old.abort()
        self.open()

    def poll(self, wait: float | None):
        session = self.session
        if self._ended:
            raise session.lost or ConnectionLost("listen", "connection lost")
        out: list = []
        for batch in session.inbox.take(wait):  # lists of messages, then END once the connection is gone
            if batch is END:
                self._ended = True
            else:
                out.extend(batch)
        if self._ended and not out:
            raise session.lost or ConnectionLost("listen", "connection lost")
        return out

    def ack(self, messages: list[Message]) -> None:
        """What was written: the loop acknowledges it soon (every ACK_EVERY seconds
        while messages come, and before closing)."""
        counts: list = []
        inbound = None
        for msg in messages:
            token = msg.token
            if token is not None:
                if token[0] is not inbound:  # tokens of a replaced session are ignored by it
                    if counts:
                        inbound.wrote(counts)
                    inbound, counts = token[0], []
                counts.append(token[1])
        if counts:
            inbound.wrote(counts)


def join_muc(session: Session, room: str, nick: str, timeout: float) -> None:
    """Join a group chat (no history); exit 6 when the room refuses."""
    try:
        session.request(lambda: session.xmpp.plugin[MUC].join_muc_wait(JID(room), nick, maxstanzas=0,
                                                                       timeout=timeout),
                        f"join {room}", timeout + 1)
    except IotctlError:
        raise
    except Exception as exc:  # slixmpp raises PresenceError for a refusal
        stanza = getattr(exc, "presence", None)
        if stanza is not None:
            raise PeerError(f"join {room} as {nick}", condition(stanza)) from None
        raise IotctlError(f"join {room}", f"{type(exc).__name__}: {exc}") from None


def leave_muc(session: Session, room: str, nick: str) -> None:
    def leave():
        try:
            session.xmpp.plugin[MUC].leave_muc(JID(room), nick)
        except KeyError:
            pass

    session.call(leave)


# --------------------------------------------------------------------------- presence


def collect_presence(session: Session, timeout: float, who: str | None = None) -> list[Message]:
    """Send initial presence (priority -1: offline messages stay stored), then gather
    the presence the server sends back (contacts' current presence, pending
    subscription requests) up to a round trip."""

    async def collect():
        got: list = []

        def on_presence(pres) -> None:
            if who is None or pres["from"].bare.lower() == who.lower():
                got.append(presence_of(pres))

        xmpp = session.xmpp
        xmpp.add_event_handler("presence", on_presence)
        try:
            xmpp.make_presence(ppriority=-1).send()
            await session._ping(timeout)
        finally:
            xmpp.del_event_handler("presence", on_presence)
        return got

    return session.request(collect, "presence", timeout)


class PresenceWatch(receive.Receiver):
    """Presence changes of the roster, for the receive driver."""

    def __init__(self, session: Session, summary: bool = False):
        self.session = session
        self.summary = summary
        self._ended = False

        def install():
            session.xmpp.add_event_handler("presence", self._presence)
            session.xmpp.make_presence(ppriority=-1).send()

        session.call(install)

    def _presence(self, pres) -> None:  # loop's thread
        if ptype(pres) in ("available", "unavailable"):
            if pres["from"] != self.session.xmpp.boundjid:
                self.session.inbox.put(presence_of(pres, self.summary))

    def poll(self, wait: float | None):
        return _take(self.session, wait)


class Idle(receive.Receiver):
    """Nothing to print: keeps the session online (presence set) until the driver's
    duration or Ctrl-C; a lost connection is its error."""

    def __init__(self, session: Session):
        self.session = session

    def poll(self, wait: float | None):
        _take(self.session, wait)
        return []


def _take(session: Session, wait: float | None) -> list:
    """What the session's handlers put in its inbox; once the connection is gone,
    the messages before its end, then (at the next call) the reason it ended."""
    items = session.inbox.take(wait)
    if items and items[-1] is END:
        items.pop()
        if not items:
            session.check()
            raise ConnectionLost("xmpp", "connection lost")
        session.inbox.put(END)  # seen at the next poll, after these
    return items


# --------------------------------------------------------------------------- roster, blocking, diagnostics


def roster(session: Session, timeout: float) -> list[dict]:
    """[{jid, name, subscription, ask, groups}], sorted by JID."""

    async def get():
        iq = session.xmpp.Iq()
        iq["type"] = "get"
        iq.enable("roster")
        result = await iq.send(timeout=timeout)
        items = []
        for jid, item in result["roster"]["items"].items():
            items.append({"jid": str(jid), "name": item.get("name") or "",
                          "subscription": item.get("subscription") or "none", "ask": item.get("ask") or "",
                          "groups": sorted(item.get("groups") or [])})
        return sorted(items, key=lambda i: i["jid"])

    return session.request(get, "get the roster", timeout)


def roster_set(session: Session, jid: str, timeout: float, name: str | None = None,
               groups: Iterable[str] = (), remove: bool = False) -> None:
    parse_jid(jid)
    groups = list(groups)

    async def set_item():
        iq = session.xmpp.Iq()
        iq["type"] = "set"
        entry = {"subscription": "remove"} if remove else {"name": name or "", "groups": groups}
        iq["roster"]["items"] = {jid: entry}
        await iq.send(timeout=timeout)

    session.request(set_item, f"{'remove' if remove else 'add'} {jid} {'from' if remove else 'to'} the roster",
                    timeout)


def blocklist(session: Session, timeout: float) -> list[str]:
    async def get():
        result = await session.xmpp.plugin[BLOCKING].get_blocked(timeout=timeout)
        return sorted(str(item["jid"]) for item in result["blocklist"])

    return session.request(get, "get the blocklist", timeout)


def block(session: Session, jids: list[str], timeout: float) -> None:
    for j in jids:
        parse_jid(j)
    session.request(lambda: session.xmpp.plugin[BLOCKING].block(jids, timeout=timeout),
                    f"block {', '.join(jids)}", timeout)


def unblock(session: Session, jids: list[str] | None, timeout: float) -> None:
    if jids:
        for j in jids:
            parse_jid(j)
        session.request(lambda: session.xmpp.plugin[BLOCKING].unblock(jids, timeout=timeout),
                        f"unblock {', '.join(jids)}", timeout)
        return

    async def everyone():
        iq = session.xmpp.make_iq_set()
        iq.enable("unblock")
        await iq.send(timeout=timeout)

    session.request(everyone, "unblock everyone", timeout)


def ping(session: Session, jid: str | None, timeout: float) -> float:
    """Round-trip time in seconds of one XEP-0199 ping (an error answer is exit 6,
    except from our own server, which answering at all proves alive)."""
    import time

    target = jid or session.domain
    if jid:
        parse_jid(jid)
    start = time.perf_counter()
    try:
        session.request(lambda: session.xmpp.plugin[PING].send_ping(JID(target), timeout=timeout), f"ping {target}",
                        timeout)
    except PeerError:
        if jid and JID(jid).full != session.domain:
            raise
    return time.perf_counter() - start


def disco(session: Session, jid: str | None, node: str | None, items: bool, timeout: float):
    target = jid or session.domain
    what = f"disco {'items' if items else 'info'} of {target}" + (f" node {node}" if node else "")

    async def get():
        plugin = session.xmpp.plugin[DISCO]
        if items:
            iq = await plugin.get_items(jid=JID(target), node=node, timeout=timeout)
            return [{"jid": str(j), "node": n or "", "name": name or ""} for j, n, name in iq["disco_items"]["items"]]
        iq = await plugin.get_info(jid=JID(target), node=node, timeout=timeout, local=False, cached=False)
        info = iq["disco_info"]
        identities = [{"category": c, "type": t, "lang": lang or "", "name": name or ""}
                      for c, t, lang, name in info["identities"]]
        return {"identities": identities, "features": sorted(info["features"])}

    return target, session.request(get, what, timeout)


def version(session: Session, jid: str, timeout: float) -> dict:
    parse_jid(jid)

    async def get():
        iq = await session.xmpp.plugin[VERSION].get_version(JID(jid), timeout=timeout)
        v = iq["software_version"]
        return {"name": v["name"] or "", "version": v["version"] or "", "os": v["os"] or ""}

    return session.request(get, f"version of {jid}", timeout)


# --------------------------------------------------------------------------- XMPP-IoT (XEP-0323, XEP-0325)
#
# slixmpp ships plugins for both (xep_0323, xep_0325); they are not used here. They
# follow drafts older than the XEPs' last versions (rejections as <rejected/> and
# <setResponse responseCode/> instead of RFC 6120 IQ errors; no int, long, date, time
# or duration values; a <done/> message is never read), and they break in use: the
# readout runs device callbacks on threads of their own (slixmpp objects must stay on
# the loop's thread), a request naming several fields asks the device for the last
# one that many times (`[f['name'] for n in ...]`), a control timeout calls its
# handler with the wrong arguments (TypeError), and a <fields/> message with a
# sequence number they do not know raises KeyError in the handler. The stanzas are
# built and read here with ElementTree (iot.py), on slixmpp's stream and IQ matching.

from iotctl.protocols.xmpp import iot  # noqa: E402  (no slixmpp there)

DISCO_INFO = "http://jabber.org/protocol/disco#info"
SENSOR_FEATURE, CONTROL_FEATURE = iot.NS_SENSOR, iot.NS_CONTROL


class _SensorData:
    """A slixmpp matcher: a <message/> with a sensor data child (fields, failure,
    done, started)."""

    def match(self, stanza) -> bool:
        xml = stanza.xml
        return xml.tag == "{jabber:client}message" and any(child.tag.startswith(iot.SD) for child in xml)


def device_error(iq) -> str:
    """The reason of a device's IQ error: its condition and text, each paramError
    (`NAME: text`), and what the older draft puts in <rejected/>."""
    err = iq.xml.find("{jabber:client}error")
    params = iot.param_errors(err)
    rejected = iq.xml.find(iot.SD + "rejected")
    why = condition(iq)
    if params:
        cond = iq["error"]["condition"] or "undefined-condition"
        why = cond + ": " + "; ".join(f"{name}: {text}" if text else name for name, text in params)
    if rejected is not None:
        text = (rejected.findtext(iot.SD + "error") or "").strip()
        if text:
            why = f"{why}: {text}" if iq["error"]["condition"] else text
    return why


def _offline_hint(jid: str) -> str | None:
    if "/" in jid:
        bare = jid.split("/", 1)[0]
        return f"is the device online? (iotctl xmpp presence get {bare})"
    return None


def device_jid(session: Session, jid: str, feature: str, timeout: float, what: str) -> str:
    """The full JID to address: JID itself when it names a resource, else the resource
    of JID that is online (learnt from its presence, so you must be subscribed to it);
    of several, the one whose disco#info offers `feature`."""
    parsed = parse_jid(jid, "device JID")
    if parsed.resource:
        return parsed.full
    bare = parsed.bare
    state: dict[str, str] = {}
    for m in collect_presence(session, timeout, who=bare):
        if "/" in m.address and m.meta.get("presence") in ("available", "unavailable"):
            state[m.address] = m.meta["presence"]
    online = [j for j, p in state.items() if p == "available" and j != session.bound]
    if not online:
        item = next((i for i in roster(session, timeout) if i["jid"].lower() == bare.lower()), None)
        if item is None or item["subscription"] not in ("to", "both"):
            raise UsageError(what, f"you are not subscribed to {bare}'s presence, so which of its resources "
                                   "is the device is unknown",
                             hint=f"give the full JID ({bare}/RESOURCE: `xmpp device` prints it), or subscribe: "
                                  f"iotctl xmpp subscription request {bare}")
        raise PeerError(what, f"{bare} is offline (no resource online)")
    if len(online) == 1:
        return online[0]
    offering = [j for j in online if feature in disco_features(session, j, timeout)]
    if len(offering) == 1:
        return offering[0]
    if not offering:
        raise PeerError(what, f"none of {bare}'s resources ({', '.join(sorted(online))}) offers {feature}")
    raise UsageError(what, f"{len(offering)} resources of {bare} offer {feature}: {', '.join(sorted(offering))}",
                     hint="give the full JID of one")


def disco_features(session: Session, jid: str, timeout: float) -> set[str]:
    """The features of JID's disco#info (none when it answers with an error)."""

    async def get():
        iq = session.xmpp.make_iq_get(queryxmlns=DISCO_INFO, ito=jid)
        try:
            result = await iq.send(timeout=timeout)
        except IqError:
            return set()
        query = result.xml.find("{%s}query" % DISCO_INFO)
        return {f.get("var", "") for f in query.iter("{%s}feature" % DISCO_INFO)} if query is not None else set()

    return session.request(get, f"disco info of {jid}", timeout)


class _Readout:
    """One readout request in flight (main thread)."""

    __slots__ = ("seqnr", "started", "last", "count", "failures", "queued")

    def __init__(self, seqnr: int):
        self.seqnr = seqnr
        self.started = self.last = time.monotonic()
        self.count = 0
        self.failures: list[str] = []
        self.queued = False  # the device scheduled it (--when): it answers then


class SensorReader(receive.Receiver):
    """XEP-0323 readouts of a device as a Receiver: a Message per value (iot.readouts).

    Entered, it logs in and finds the device's full JID; each readout is an IQ
    request (<req/>) answered by <accepted/>, then <fields/> messages until one says
    done (or a <done/> message). Without `interval` one readout is made and the
    source ends; with it, a readout every `interval` seconds (XEP-0323 has no
    subscription: its event subscriptions stayed a ProtoXEP, so polling is what every
    device answers). Readouts cannot be asked for twice: at most once. Once a readout
    has succeeded, a later one that fails (the device offline, silent, refusing) is a
    warning and the next is tried; the first one's failure is the error."""

    can_reconnect = True

    def __init__(self, cfg: XmppConfig, device: str, kinds: list[str], fields=(), nodes=(), since: str | None = None,
                 until: str | None = None, interval: float | None = None, as_json: bool = False,
                 answer_timeout: float = 10.0, when: str | None = None):
        self.cfg, self.device = cfg, device
        self.kinds, self.fields, self.nodes = list(kinds), list(fields), list(nodes)
        self.since, self.until, self.interval, self.when = since, until, interval, when
        self.as_json, self.answer_timeout = as_json, answer_timeout
        self.session: Session | None = None
        self.target = ""
        self.resource = cfg.resource
        self.seqnr = 0
        self.current: _Readout | None = None
        self.next_at = 0.0
        self.done = 0          # readouts completed
        self.finished = False  # one readout made (no interval): the source ends
        self.error: IotctlError | None = None  # raised at the next poll (after what came with it)
        self.stale = False     # the device's JID is to be found again before the next readout
        self._ended = False
        self._live: set = set()  # loop's thread: sequence numbers of the readouts in flight

    @property
    def where(self) -> str:
        return self.cfg.where

    @property
    def what(self) -> str:
        return f"read {self.target or self.device}"

    def open(self) -> None:
        session = Session(self.cfg, resource=self.resource)
        session.open()
        try:
            self.target = device_jid(session, self.device, iot.NS_SENSOR, self.answer_timeout, f"read {self.device}")
            self._target_jid = JID(self.target)
            session.call(self._install, session)
        except BaseException:
            session.close()
            raise
        self.session, self._ended, self.current, self.stale = session, False, None, False
        self.resource = session.bound.split("/", 1)[1] if "/" in session.bound else None

    def close(self) -> None:
        session = self.session
        if session is None:
            return
        current = self.current
        if current is not None and current.queued and session.lost is None:
            # stopped before a scheduled readout: the device forgets it (XEP-0323 cancel)
            try:
                session.request(lambda: self._cancel(current.seqnr), f"cancel readout #{current.seqnr}", 2.0)
            except (IotctlError, KeyboardInterrupt):
                pass
        session.close()

    def reconnect(self) -> None:
        old, self.session = self.session, None
        if old is not None:
            old.abort()
        self.open()

    # ------------------------------------------------------------------ the loop's side

    def _install(self, session: Session) -> None:
        from slixmpp.xmlstream.handler import Callback

        session.xmpp.register_handler(Callback("iotctl sensor data", _SensorData(), self._message))

    async def _cancel(self, seqnr: int) -> None:
        self._live.discard(str(seqnr))
        iq = self.session.xmpp.make_iq_get(ito=self.target)
        ET.SubElement(iq.xml, iot.SD + "cancel", seqnr=str(seqnr))
        try:
            await iq.send(timeout=2.0)
        except IqError:
            pass

    def _put(self, *item) -> None:
        self.session.inbox.put(item)

    def _message(self, stanza) -> None:
        xml = stanza.xml
        sender = xml.get("from", "")
        try:
            if JID(sender) != self._target_jid:
                return  # only the device's answers (anyone can send a <fields/> message)
        except InvalidJID:
            return
        for child in xml:
            if not child.tag.startswith(iot.SD):
                continue
            name, seqnr = child.tag[len(iot.SD):], child.get("seqnr", "")
            if seqnr not in self._live:
                continue
            if name == "fields":
                self._put("fields", seqnr, iot.readouts(child, sender, self.as_json))
                if child.get("done") in ("true", "1"):
                    self._live.discard(seqnr)
                    self._put("done", seqnr)
            elif name == "failure":
                reasons = [f"{e.get('nodeId') or 'device'}: {(e.text or '').strip() or 'failed'}"
                           for e in child.iter(iot.SD + "error")]
                done = child.get("done") in ("true", "1")
                if done:
                    self._live.discard(seqnr)
                self._put("failure", seqnr, "; ".join(reasons) or "the readout failed", done)
            elif name == "done":
                self._live.discard(seqnr)
                self._put("done", seqnr)

    async def _ask(self, seqnr: int) -> None:
        key = str(seqnr)
        xmpp = self.session.xmpp
        iq = xmpp.make_iq_get(ito=self.target)
        iq.xml.append(iot.readout_request(seqnr, self.kinds, self.fields, self.nodes, self.since, self.until,
                                          self.when))
        self._live.add(key)
        try:
            result = await iq.send(timeout=self.answer_timeout)
        except IqError as exc:
            self._live.discard(key)
            self._put("error", key, PeerError(f"read {self.target}", device_error(exc.iq),
                                              hint=_offline_hint(self.target)
                                              if exc.iq["error"]["condition"] == "service-unavailable" else None))
            return
        except IqTimeout:
            return  # the main thread's answer timeout says so
        accepted = result.xml.find(iot.SD + "accepted")
        self._put("accepted", key, accepted is not None and accepted.get("queued") in ("true", "1"))

    # ------------------------------------------------------------------ the main thread's side

    def _start(self) -> None:
        if self.stale and "/" not in self.device:
            self.session.loop.soon(self._live.clear)
            self.target = device_jid(self.session, self.device, iot.NS_SENSOR, self.answer_timeout, self.what)
            self._target_jid = JID(self.target)
            self.stale = False
        self.seqnr += 1
        self.current = _Readout(self.seqnr)
        self._asked_at = time.time()
        self.session.loop.soon(lambda n=self.seqnr: asyncio.ensure_future(self._ask(n)))

    def poll(self, wait: float | None):
        session = self.session
        if self.error is not None:
            error, self.error = self.error, None
            self._failed(error)
            return []
        if self._ended:
            raise session.lost or ConnectionLost(self.what, "connection lost")
        now = time.monotonic()
        if self.current is None:
            if self.finished:
                return None
            if now >= self.next_at:
                try:
                    self._start()
                except IotctlError as exc:
                    if isinstance(exc, ConnectionLost):
                        raise
                    self._failed(exc)
                    return []
            else:
                left = self.next_at - now
                wait = left if wait is None else min(wait, left)
        if self.current is not None:
            last = self.current.last
            if self.current.queued:  # scheduled: the device answers at --when
                last = max(last, self.current.started + (iot.stamp_seconds(self.when) or 0) - self._asked_at)
            left = last + self.answer_timeout - now
            if left <= 0:
                self._failed(TimeoutError_(self.what, f"no answer within {self.answer_timeout:g} s",
                                           hint="the device is offline, busy or frozen "
                                                "(--answer-timeout waits longer)"))
                return []
            wait = left if wait is None else min(wait, left)
        out: list = []
        for item in session.inbox.take(max(0.0, wait)):
            if item is END:
                self._ended = True
                continue
            current = self.current
            if current is None or item[1] != str(current.seqnr):
                continue  # late news of a readout given up
            current.last = time.monotonic()
            kind = item[0]
            if kind == "fields":
                out.extend(item[2])
                current.count += len(item[2])
            elif kind == "done":
                self._end_readout()
            elif kind == "failure":
                current.failures.append(item[2])
                if item[3]:
                    self._end_readout()
            elif kind == "accepted":
                current.queued = item[2]
            elif kind == "error":
                self.error = item[2]  # reported once what came before it is written
        if self.error is not None and not out:
            error, self.error = self.error, None
            self._failed(error)
            return []
        if self._ended and not out:
            raise session.lost or ConnectionLost(self.what, "connection lost")
        if not out and self.finished and self.current is None:
            return None
        return out

    def _end_readout(self) -> None:
        current, self.current = self.current, None
        if current.failures:
            error = PeerError(self.what, "the device reports a failure: " + "; ".join(current.failures))
            if self.interval is None or not self.done:
                self.error = error
                self.finished = self.interval is None
                return
            from iotctl.settings import warn

            warn(f"{error.what}: {error.why}")
        self.done += 1
        if self.interval is None:
            self.finished = True
        else:
            self.next_at = current.started + self.interval

    def _failed(self, error: IotctlError) -> None:
        """A readout got no answer or an error: the error at first (or without
        --interval), a warning once readouts have worked (the device may come back)."""
        current, self.current = self.current, None
        if current is not None:
            self.session.loop.soon(self._live.discard, str(current.seqnr))
        if self.interval is None or not self.done:
            raise error
        from iotctl.settings import warn

        warn(f"{error.what}: {error.why}; reading again in {self.interval:g} s")
        self.stale = True
        self.next_at = (current.started if current is not None else time.monotonic()) + self.interval


def control(session: Session, target: str, params: list[tuple[str, str | None, str]], timeout: float) -> list[str]:
    """Set the control parameters (XEP-0325) in one <set/>, in the order given: a
    parameter without a type takes the one the device's control form gives it (else
    iot.infer_type). A device's refusal is PeerError (6) with its condition and each
    parameter's error. Returns the parameters the device says it limited the command
    to (empty: everything was done as asked)."""
    what = f"control {target}"
    if any(kind is None for _, kind, _ in params):
        try:
            form = {p["name"]: p["type"] for p in control_form(session, target, timeout)}
        except PeerError as exc:
            if "service-unavailable" in (exc.why or ""):
                raise PeerError(what, exc.why, hint=_offline_hint(target)) from None
            form = {}  # no control form: the value's own look decides
        typed = []
        for name, kind, value in params:
            if kind is None:
                kind = form.get(name) or iot.infer_type(value)
                try:
                    value = iot.check_value(kind, value)
                except ValueError as exc:
                    raise UsageError(f"bad value for {name}", f"{target}'s {name} is a {kind}: {value!r} is {exc}")
            typed.append((name, kind, value))
        params = typed

    async def set_them():
        iq = session.xmpp.make_iq_set(ito=target)
        iq.xml.append(iot.set_request(params))
        try:
            result = await iq.send(timeout=timeout)
        except IqError as exc:
            cond = exc.iq["error"]["condition"]
            raise PeerError(what, device_error(exc.iq),
                            hint=_offline_hint(target) if cond == "service-unavailable" else None) from None
        response = result.xml.find(iot.CTL + "setResponse")
        if response is None:
            return []
        return [p.get("name", "") for p in response.iter(iot.CTL + "parameter")]

    return session.request(set_them, what, timeout)


def control_form(session: Session, target: str, timeout: float) -> list[dict]:
    """The device's control parameters from its control form (XEP-0325 getForm):
    [{name, type, value, label}]."""
    what = f"control form of {target}"

    async def get():
        iq = session.xmpp.make_iq_get(ito=target)
        iq.xml.append(ET.Element(iot.CTL + "getForm"))
        try:
            result = await iq.send(timeout=timeout)
        except IqError as exc:
            raise PeerError(what, device_error(exc.iq)) from None
        form = result.xml.find(".//" + iot.XD + "x")
        if form is None:
            raise PeerError(what, "the answer holds no data form")
        return iot.form_params(form)

    return session.request(get, what, timeout)

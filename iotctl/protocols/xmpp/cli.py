"""The `xmpp` group: send, listen, presence, subscription, roster, block, unblock,
blocklist, ping, disco, version.

Only option parsing lives here; slixmpp is imported by client.py, inside the commands.
"""

from __future__ import annotations

import click

from iotctl.errors import TimeoutError_, UsageError
from iotctl.groups import ProtocolGroup
from iotctl.output import run_writer
from iotctl.options import (bundle, connection_options, payload_options, receive_options, send_options,
                            timeout_option)
from iotctl.settings import current as settings, status

from iotctl.protocols.xmpp import endpoints
from iotctl.protocols.xmpp.endpoints import DIRECT_TLS_PORT, SCHEMES


@click.group(cls=ProtocolGroup, protocol="xmpp")
def group():
    """XMPP: messages, presence, subscriptions, the contact list, blocking, diagnostics.

    Log in with --jid and -P (or IOTCTL_XMPP_JID / IOTCTL_XMPP_PASSWORD, or a
    profile's [xmpp] table); the server is the JID's domain (SRV records) unless
    --server HOST[:PORT] names one. STARTTLS is required; --direct-tls uses port 5223.

    \b
    iotctl xmpp send bob@example.com 'door opened'
    iotctl xmpp listen --from sensor@example.com -o jsonl
    iotctl xmpp roster list
    iotctl xmpp ping -c 3
    """


# --------------------------------------------------------------------------- shared options


def _xmpp_config(endpoint, resource, direct_tls, connect_timeout):
    from iotctl.endpoint import split_host_port
    from iotctl.protocols.xmpp.client import XmppConfig
    from iotctl.protocols.xmpp.text import check_options

    check_options(jid=endpoint.username, resource=resource)
    server = click.get_current_context().params.get("server")
    if direct_tls and (not server or split_host_port(server, "--server")[1] is None):
        endpoint.port = DIRECT_TLS_PORT
    return XmppConfig(endpoint, resource=resource, direct_tls=direct_tls, connect_timeout=connect_timeout,
                      debug=settings().debug)


_XMPP_OPTIONS = bundle("cfg", [
    click.option("--resource", metavar="NAME", help="Resource to bind [default: chosen by the server]."),
    click.option("--direct-tls", is_flag=True, default=False,
                 help="TLS from the first byte (XEP-0368, port 5223) instead of STARTTLS."),
    click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
                 show_default=True, metavar="SECONDS", help="Seconds to wait for the login to complete."),
], _xmpp_config, consumes=("endpoint",))


def xmpp_options(f):
    """Connection options of every XMPP command; the command receives `cfg`."""
    return connection_options(SCHEMES, "xmpp", identity="jid")(_XMPP_OPTIONS(f))


# --------------------------------------------------------------------------- send


@group.command()
@xmpp_options
@click.argument("peer", metavar="[JID]", required=False)
@click.option("--type", "mtype", type=click.Choice(("chat", "normal", "headline")), default="chat",
              show_default=True, help="Message type.")
@click.option("--subject", help="Subject of the message.")
@click.option("--thread", help="Thread id of the conversation.")
@click.option("--muc", metavar="ROOM", help="Send to this group chat (room@conference.example.com): "
                                            "join it, send, leave.")
@click.option("--nick", metavar="NICK", help="Nickname in the group chat [default: the JID's user part].")
@send_options()
@timeout_option(10.0, "Give up (exit 5) when the server acknowledges nothing for this many seconds.")
@payload_options()
def send(cfg, peer, mtype, subject, thread, muc, nick, sending, timeout, payload):
    """Send a message (or every line of stdin) to JID.

    Exits once the server has taken every message: acknowledged by stream management
    (XEP-0198) when the server offers it, else confirmed by a round trip. With --muc
    the messages go to the group chat ROOM (JID is then not given). A body is text:
    a payload that is not UTF-8 or holds control characters is refused (exit 2)
    before anything is sent. Stopped early, it says how many were sent and
    acknowledged; --failed FILE keeps the rest with their recipient, for --replay.

    \b
    iotctl xmpp send bob@example.com 'door opened'
    iotctl xmpp send bob@example.com --subject alarm --type normal -f report.txt
    tail -f events.log | iotctl xmpp send ops@example.com -l
    iotctl xmpp send --muc ops@conference.example.com --nick sensor1 'temperature 21.5'
    """
    from itertools import chain

    from iotctl import send as sending_driver
    from iotctl.protocols.xmpp.text import body_text

    if muc and peer is not None and payload.message is None:
        payload.message, peer = peer, None  # `send --muc ROOM TEXT`: the positional is the message
    payload.validate()
    messenger = endpoints.sink(cfg, peer, mtype, subject, thread, muc, nick, sending, timeout, payload)
    to = messenger.address
    # addressed: what --failed keeps says where it was going, so --replay FILE needs nothing else
    items = sending_driver.outgoing(payload, sending, addresses=(to,) if to else None)
    if not to:
        items = _to_recipients(items)
    if not payload.streaming:  # one message: refused before logging in when XMPP cannot carry it
        first = next(items)
        body_text(first.payload)
        items = chain([first], items)
    with messenger:
        result = sending_driver.run(messenger, items, "send", timeout, progress=payload.streaming,
                                    failed=sending.failed, verb="sending")
    status(f"sent {result.sent} message(s)", tty_only=True)


def _to_recipients(items):
    """--replay without JID: a captured XMPP message goes to its recipient (meta.to; its
    address is the sender's JID)."""
    for msg in items:
        if msg.protocol == "xmpp" and isinstance(msg.meta, dict) and isinstance(msg.meta.get("to"), str):
            msg.address = msg.meta["to"] or msg.address
        yield msg


# --------------------------------------------------------------------------- listen


@group.command()
@xmpp_options
@click.option("--from", "senders", multiple=True, metavar="JID",
              help="Only messages from this JID (a bare JID matches every resource; repeatable).")
@click.option("--muc", "rooms", multiple=True, metavar="ROOM", help="Also join this group chat (repeatable).")
@click.option("--nick", metavar="NICK", help="Nickname in group chats [default: the JID's user part].")
@click.option("--presence", "with_presence", is_flag=True, default=False, help="Print presence changes too.")
@click.option("--auto-approve", is_flag=True, default=False,
              help="Approve every subscription request (for devices).")
@click.option("--priority", type=click.IntRange(-128, 127), default=0, show_default=True,
              help="Presence priority (negative: offline messages stay stored).")
@receive_options(idle="ok", reconnect=True)
def listen(cfg, senders, rooms, nick, with_presence, auto_approve, priority, receive):
    """Print incoming messages (sends presence so the server routes messages here).

    The address of each is the sender's full JID; meta holds type, thread, subject,
    to, id, XEP-0131 headers and the delay stamp of messages stored while you were
    offline. Only what has been written is acknowledged to the server: what arrived
    but was not printed (-C reached, Ctrl-C, a cut) stays stored for the next
    listen. After a lost connection it logs in again (--no-reconnect: exit 3).
    Ctrl-C ends it (exit 0); -C N stops after N messages, -W S gives up after S seconds.

    \b
    iotctl xmpp listen
    iotctl xmpp listen --from sensor@example.com -C 1 -W 30 -o json
    iotctl xmpp listen --muc ops@conference.example.com --presence -o jsonl
    """
    from iotctl import receive as receiving

    listener = endpoints.source(cfg, senders, rooms, nick, with_presence, auto_approve, priority, receive)
    with listener:
        status(f"listening as {listener.bound}")
        receiving.run(listener, receive, "listen")


# --------------------------------------------------------------------------- presence


@group.group()
def presence():
    """Set, get or watch presence."""


@presence.command("set")
@xmpp_options
@click.option("--show", type=click.Choice(("chat", "away", "xa", "dnd")), help="Availability detail.")
@click.option("--status", "status_text", metavar="TEXT", help="Status message.")
@click.option("--priority", type=click.IntRange(-128, 127), default=0, show_default=True, help="Priority.")
@click.option("--for", "duration", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stay online this long, then go offline [default: until Ctrl-C].")
def presence_set(cfg, show, status_text, priority, duration):
    """Go online with this presence; stay until Ctrl-C or --for SECONDS.

    \b
    iotctl xmpp presence set --show dnd --status 'firmware update' --for 600
    """
    from iotctl import receive as receiving
    from iotctl.protocols.xmpp.client import Idle, Session
    from iotctl.protocols.xmpp.text import check_options

    check_options(status=status_text)

    with Session(cfg) as session:
        session.send_presence(show=show, status=status_text, priority=priority)
        status(f"online as {session.bound}" + (f" ({show})" if show else "")
               + (f" for {duration:g} s" if duration else "; Ctrl-C ends it"))
        receiving.run(Idle(session), receiving.ReceiveSpec(duration=duration), "presence set")


@presence.command("get")
@xmpp_options
@click.argument("peer", metavar="JID")
@timeout_option(10.0)
def presence_get(cfg, peer, timeout):
    """Print the current presence of each of JID's resources: "available" (with show,
    status and priority), "unavailable" (a contact you are subscribed to, offline), or
    "unknown" when you are not subscribed to JID's presence (the server tells you
    nothing then; stderr says so). Piped: JID, presence, show, status, priority
    separated by tabs.

    \b
    iotctl xmpp presence get bob@example.com
    """
    from iotctl.protocols.xmpp.client import Session, collect_presence, roster
    from iotctl.protocols.xmpp.tables import write_rows
    from iotctl.settings import warn

    bare = endpoints.user_jid(peer, cfg).split("/", 1)[0]
    with Session(cfg) as session:
        me = session.bound
        own = me.split("/", 1)[0]
        item = None
        if bare.lower() != own.lower():
            item = next((i for i in roster(session, timeout) if i["jid"].lower() == bare.lower()),
                        {"subscription": "none", "ask": ""})
        got = collect_presence(session, timeout, who=bare)
    rows = {}
    for m in got:
        if m.meta.get("presence") in ("available", "unavailable") and m.address != me:
            rows[m.address] = {"jid": m.address, "presence": m.meta["presence"], "show": m.meta.get("show", ""),
                               "status": m.payload.decode("utf-8", "replace"),
                               "priority": m.meta.get("priority", "")}
    rows = [r for r in rows.values() if r["presence"] == "available"]
    if not rows:
        subscribed = item is None or item["subscription"] in ("to", "both")
        rows = [{"jid": bare, "presence": "unavailable" if subscribed else "unknown", "show": "", "status": "",
                 "priority": ""}]
        if not subscribed:
            pending = item["ask"] == "subscribe"
            warn(f"you are not subscribed to {bare}'s presence, so the server does not say whether it is online"
                 + ("; your request is not answered yet" if pending else
                    f" (ask with: iotctl xmpp subscription request {bare})"))
    write_rows(bare, ["jid", "presence", "show", "status", "priority"], rows)


@presence.command("watch")
@xmpp_options
@receive_options(idle="ok")
def presence_watch(cfg, receive):
    """Watch the presence of your contacts: a live table on a terminal, a line per
    change when piped (JID PRESENCE [SHOW] [STATUS]).

    \b
    iotctl xmpp presence watch
    iotctl xmpp presence watch -o jsonl | jq .
    """
    from iotctl import receive as receiving
    from iotctl.output import resolve_mode
    from iotctl.protocols.xmpp.client import PresenceWatch, Session

    s = settings()
    mode = resolve_mode(s.output, s.format, "text")
    with Session(cfg) as session:
        watch = PresenceWatch(session, summary=mode in ("text", "raw"))
        writer = None
        if mode == "pretty":
            from iotctl.protocols.xmpp.tables import LiveTable

            writer = LiveTable()
        else:
            writer = run_writer(piped_default="text")
        try:
            receiving.run(watch, receive, "presence watch", writer=writer, noun="presence")
        finally:
            if hasattr(writer, "close"):
                writer.close()


# --------------------------------------------------------------------------- subscriptions


@group.group()
def subscription():
    """Request, approve, deny or cancel presence subscriptions; list pending ones."""


def _subscription_command(name: str, ptype: str, doc: str):
    def command(cfg, peer, timeout):
        from iotctl.protocols.xmpp.client import Session

        bare = endpoints.user_jid(peer, cfg).split("/", 1)[0]
        with Session(cfg) as session:
            session.send_presence(to=bare, ptype=ptype)
            session.round_trip(timeout)
        status(f"{name}: {ptype} sent to {bare}", tty_only=True)

    command.__doc__ = doc
    command.__name__ = f"subscription_{name}"
    decorated = timeout_option(10.0)(click.argument("peer", metavar="JID")(xmpp_options(command)))
    return subscription.command(name)(decorated)


_subscription_command("request", "subscribe", """Ask JID to share its presence with you.

    \b
    iotctl xmpp subscription request bob@example.com
    """)
_subscription_command("approve", "subscribed", """Let JID see your presence (approve its request).""")
_subscription_command("deny", "unsubscribed", """Refuse JID's request (or revoke its subscription).""")
_subscription_command("cancel", "unsubscribe", """Stop receiving JID's presence (withdraw your subscription
    or your pending request).""")


@subscription.command("list")
@xmpp_options
@timeout_option(10.0)
def subscription_list(cfg, timeout):
    """List pending subscription requests: "in" (waiting for your approval) and
    "out" (your requests not yet answered)."""
    from iotctl.protocols.xmpp.client import Session, collect_presence, roster
    from iotctl.protocols.xmpp.tables import write_rows

    with Session(cfg) as session:
        items = roster(session, timeout)
        got = collect_presence(session, timeout)
        me = session.bound.split("/", 1)[0]
    rows = []
    seen = set()
    for m in got:
        bare = m.address.split("/", 1)[0]
        if m.meta.get("presence") == "subscribe" and bare not in seen:
            seen.add(bare)
            rows.append({"jid": bare, "direction": "in", "status": m.payload.decode("utf-8", "replace")})
    for item in items:
        if item["ask"] == "subscribe":
            rows.append({"jid": item["jid"], "direction": "out", "status": ""})
    write_rows(me, ["jid", "direction", "status"], rows)


# --------------------------------------------------------------------------- roster


@group.group("roster")
def roster_group():
    """List, add, remove, export and import contacts."""


ROSTER_COLUMNS = ["jid", "name", "subscription", "ask", "groups"]


@roster_group.command("list")
@xmpp_options
@timeout_option(10.0)
def roster_list(cfg, timeout):
    """Print the contact list: JID, name, subscription state (none, to, from, both),
    a pending request (ask) and groups. A table on a terminal; a tab-separated line
    per contact when piped; one JSON object per contact with -o jsonl."""
    from iotctl.protocols.xmpp.client import Session, roster
    from iotctl.protocols.xmpp.tables import write_rows

    with Session(cfg) as session:
        items = roster(session, timeout)
        me = session.bound.split("/", 1)[0]
    write_rows(me, ROSTER_COLUMNS, items)


@roster_group.command("add")
@xmpp_options
@click.argument("peer", metavar="JID")
@click.option("--name", help="Display name.")
@click.option("--group", "groups", multiple=True, metavar="GROUP", help="Group (repeatable).")
@timeout_option(10.0)
def roster_add(cfg, peer, name, groups, timeout):
    """Add JID to the contact list (or change its name and groups).

    Adding does not subscribe: `subscription request JID` asks for its presence.

    \b
    iotctl xmpp roster add sensor1@example.com --name 'Sensor 1' --group sensors
    """
    from iotctl.protocols.xmpp.client import Session, roster_set
    from iotctl.protocols.xmpp.text import check_options

    check_options(name=name, group=groups)

    bare = endpoints.user_jid(peer, cfg).split("/", 1)[0]
    with Session(cfg) as session:
        roster_set(session, bare, timeout, name=name, groups=groups)
    status(f"added {bare}", tty_only=True)


@roster_group.command("remove")
@xmpp_options
@click.argument("peer", metavar="JID")
@timeout_option(10.0)
def roster_remove(cfg, peer, timeout):
    """Remove JID from the contact list (this also cancels both subscriptions)."""
    from iotctl.protocols.xmpp.client import Session, roster_set

    bare = endpoints.user_jid(peer, cfg).split("/", 1)[0]
    with Session(cfg) as session:
        roster_set(session, bare, timeout, remove=True)
    status(f"removed {bare}", tty_only=True)


@roster_group.command("export")
@xmpp_options
@timeout_option(10.0)
def roster_export(cfg, timeout):
    """Print the contact list as one JSON document (for `roster import`)."""
    import json

    from iotctl.protocols.xmpp.client import Session, roster

    with Session(cfg) as session:
        items = roster(session, timeout)
        me = session.bound.split("/", 1)[0]
    doc = {"jid": me, "roster": [{"jid": i["jid"], "name": i["name"], "groups": i["groups"]} for i in items]}
    click.echo(json.dumps(doc, indent=2, ensure_ascii=False))


@roster_group.command("import")
@xmpp_options
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@timeout_option(10.0)
def roster_import(cfg, file, timeout):
    """Add every contact of FILE (`roster export` output; - for stdin) with its name
    and groups. Subscriptions are not requested."""
    import json

    from iotctl.payload import read_file
    from iotctl.protocols.xmpp.client import Session, parse_jid, roster_set

    try:
        doc = json.loads(read_file(file))
        entries = doc["roster"] if isinstance(doc, dict) else doc
        entries = [(str(e["jid"]), e.get("name") or None, [str(g) for g in e.get("groups") or []])
                   for e in entries]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"cannot import {file}", f"not a roster export ({exc})") from None
    for peer, _, _ in entries:
        parse_jid(peer)
    with Session(cfg) as session:
        for peer, name, groups in entries:
            roster_set(session, peer, timeout, name=name, groups=groups)
    status(f"imported {len(entries)} contact(s)", tty_only=True)


# --------------------------------------------------------------------------- blocking


@group.command()
@xmpp_options
@click.argument("jids", nargs=-1, required=True, metavar="JID...")
@timeout_option(10.0)
def block(cfg, jids, timeout):
    """Block all communication with each JID (XEP-0191).

    \b
    iotctl xmpp block spammer@example.com
    """
    from iotctl.protocols.xmpp.client import BLOCKING, Session, block as do_block

    with Session(cfg, plugins=[BLOCKING]) as session:
        do_block(session, list(jids), timeout)
    status(f"blocked {', '.join(jids)}", tty_only=True)


@group.command()
@xmpp_options
@click.argument("jids", nargs=-1, metavar="JID...")
@click.option("--all", "everyone", is_flag=True, default=False, help="Unblock everyone.")
@timeout_option(10.0)
def unblock(cfg, jids, everyone, timeout):
    """Unblock each JID (or --all)."""
    from iotctl.protocols.xmpp.client import BLOCKING, Session, unblock as do_unblock

    if bool(jids) == everyone:
        raise UsageError("unblock", "give JID... or --all")
    with Session(cfg, plugins=[BLOCKING]) as session:
        do_unblock(session, list(jids) or None, timeout)
    status(f"unblocked {', '.join(jids) if jids else 'everyone'}", tty_only=True)


@group.command()
@xmpp_options
@timeout_option(10.0)
def blocklist(cfg, timeout):
    """Print the blocked JIDs, one a line."""
    from iotctl.protocols.xmpp.client import BLOCKING, Session, blocklist as get_blocklist
    from iotctl.protocols.xmpp.tables import write_rows

    with Session(cfg, plugins=[BLOCKING]) as session:
        jids = get_blocklist(session, timeout)
        me = session.bound.split("/", 1)[0]
    write_rows(me, ["jid"], [{"jid": j} for j in jids])


# --------------------------------------------------------------------------- diagnostics


@group.command()
@xmpp_options
@click.argument("peer", metavar="[JID]", required=False)
@click.option("-c", "--count", type=click.IntRange(min=1), default=1, show_default=True,
              help="Number of pings.")
@click.option("-i", "--interval", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Seconds between pings.")
@timeout_option(10.0, "Seconds to wait for each answer.")
def ping(cfg, peer, count, interval, timeout):
    """XEP-0199 ping of JID (default: your server): a line per answer with the
    round-trip time (piped: 'JID seq=N time=T ms'), then a summary on stderr as
    ping(8) prints it.

    Exit 5 when no answer came, 6 when JID answered with an error.

    \b
    iotctl xmpp ping
    iotctl xmpp ping bob@example.com/phone -c 5
    """
    from iotctl.message import Message
    from iotctl.output import resolve_mode
    from iotctl.protocols.xmpp.client import PING, Session, ping as do_ping

    s = settings()
    if resolve_mode(s.output, s.format, "text") == "pretty":  # one line a reply, as ping(8)
        from iotctl.output import console

        out = console.stdout()

        def write(target, seq, ms):
            out.print(f"reply from {target}: seq={seq} time={ms:.3f} ms", highlight=False, markup=False)
    else:
        writer = run_writer(piped_default="text")

        def write(target, seq, ms):
            writer.write(Message("xmpp", target, f"seq={seq} time={ms:.3f} ms".encode(), None,
                                 {"seq": seq, "rtt_ms": round(ms, 3)}))
            writer.flush()
    rtts: list[float] = []
    sent = 0
    with Session(cfg, plugins=[PING]) as session:
        target = peer or session.domain
        try:
            for seq in range(1, count + 1):
                if seq > 1 and interval:
                    session.wait(interval)
                sent += 1
                try:
                    rtt = do_ping(session, peer, timeout)
                except TimeoutError_:
                    if count == 1:
                        raise
                    status(f"no answer from {target} (seq={seq})")
                    continue
                rtts.append(rtt)
                write(target, seq, rtt * 1000)
        except KeyboardInterrupt:
            pass
    if count > 1 or len(rtts) != sent:
        loss = 100.0 * (sent - len(rtts)) / sent if sent else 0.0
        # three lines, as ping(8): one was 118 columns and wrapped in an 80-column terminal
        status(f"--- {target} ping statistics ---")
        status(f"{sent} sent, {len(rtts)} received, {loss:.0f}% loss")
        if rtts:
            ms = [r * 1000 for r in rtts]
            avg = sum(ms) / len(ms)
            mdev = (sum((m - avg) ** 2 for m in ms) / len(ms)) ** 0.5
            status(f"rtt min/avg/max/mdev = {min(ms):.3f}/{avg:.3f}/{max(ms):.3f}/{mdev:.3f} ms")
    if not rtts:
        raise TimeoutError_(f"ping {target}", f"no answer to {sent} ping(s)")


@group.command()
@xmpp_options
@click.argument("peer", metavar="[JID]", required=False)
@click.option("--items", "items", is_flag=True, default=False, help="List items instead of identities and features.")
@click.option("--node", metavar="NODE", help="Query this node.")
@timeout_option(10.0)
def disco(cfg, peer, items, node, timeout):
    """XEP-0030 service discovery of JID (default: your server): identities and
    features, or with --items the items (components, rooms, ...).

    \b
    iotctl xmpp disco
    iotctl xmpp disco --items
    iotctl xmpp disco conference.example.com --items
    """
    from iotctl.protocols.xmpp.client import DISCO, Session, disco as do_disco, parse_jid
    from iotctl.protocols.xmpp.tables import write_rows

    if peer:
        parse_jid(peer)
    with Session(cfg, plugins=[DISCO]) as session:
        target, found = do_disco(session, peer, node, items, timeout)
    meta = {"node": node} if node else {}
    if items:
        write_rows(target, ["jid", "node", "name"], found, meta)
        return
    rows = [{"kind": "identity", "value": f"{i['category']}/{i['type']}", "name": i["name"]}
            for i in found["identities"]]
    rows += [{"kind": "feature", "value": f, "name": ""} for f in found["features"]]
    write_rows(target, ["kind", "value", "name"], rows, meta)


@group.command()
@xmpp_options
@click.argument("peer", metavar="[JID]", required=False)
@timeout_option(10.0)
def version(cfg, peer, timeout):
    """XEP-0092 software version of JID (default: your server): name, version, OS."""
    from iotctl.protocols.xmpp.client import VERSION, Session, version as do_version
    from iotctl.protocols.xmpp.tables import write_rows

    with Session(cfg, plugins=[VERSION]) as session:
        target = peer or session.domain
        found = do_version(session, target, timeout)
    write_rows(target, ["name", "version", "os"], [found])


# --------------------------------------------------------------------------- XMPP-IoT


@group.command()
@xmpp_options
@click.argument("device", metavar="JID")
@click.option("--field", "fields", multiple=True, metavar="NAME",
              help="Only this field (repeatable) [default: every field].")
@click.option("--node", "nodes", multiple=True, metavar="ID",
              help="Only this node, of a device that serves several (repeatable).")
@click.option("--momentary", is_flag=True, default=False,
              help="Values of now (what is read when no other kind is asked for).")
@click.option("--historical", is_flag=True, default=False,
              help="Stored values of every period (--from/--to bound them).")
@click.option("--peak", is_flag=True, default=False, help="Maximum and minimum values.")
@click.option("--status", "status_values", is_flag=True, default=False, help="Status values (uptime, health...).")
@click.option("--computed", is_flag=True, default=False, help="Computed values.")
@click.option("--identity", is_flag=True, default=False, help="Identification values (serial numbers...).")
@click.option("--all", "all_kinds", is_flag=True, default=False, help="Every kind of value.")
@click.option("--from", "since", metavar="TIME",
              help="Historical values from TIME: ISO 8601 (2026-01-02T03:04:05Z; local time without a zone), "
                   "now, or a time ago (-30m, -2h, -1d). Implies --historical when no kind is given.")
@click.option("--to", "until", metavar="TIME", help="Historical values up to TIME (as --from).")
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Read again every SECONDS until Ctrl-C, -C or -W [default: read once].")
@click.option("--when", metavar="TIME",
              help="Ask the device to read at TIME (as --from; +30s is in 30 seconds): it answers then. "
                   "Stopped before, the readout is cancelled at the device.")
@click.option("--payload", "payload_form", type=click.Choice(("value", "json")), default="value",
              show_default=True,
              help="Each message's payload: the value as the device wrote it, or a JSON object of the field's "
                   "name, value, unit, type, timestamp, node and flags.")
@click.option("--answer-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              metavar="SECONDS", help="Give up (exit 5) when the device says nothing for this long during a readout.")
@receive_options(reconnect=True)
def sensor(cfg, device, fields, nodes, momentary, historical, peak, status_values, computed, identity, all_kinds,
           since, until, interval, when, payload_form, answer_timeout, receive):
    """Read a device's sensor data (XEP-0323): a message per value.

    The address is the device's full JID, the payload the value as the device wrote
    it (--payload json: an object with the field's name, value and unit too); meta
    holds field, type (numeric, int, long, boolean, string, date, time, dateTime,
    duration, enum), unit, timestamp, node and flags (the field types: momentary,
    peak, historicalHour... and the quality of service: automaticReadout,
    estimates, warning, error...), and writable for a field that `xmpp control` sets.
    JID may be bare when you are subscribed to its presence (the resource online is
    used; `xmpp device` approves subscriptions). One readout, then exit 0; with
    --interval, one every SECONDS (XEP-0323 has no subscriptions: it polls), a failed
    readout then a warning once one has worked. Exit 6 when the device refuses or is
    offline, 5 when it does not answer.

    \b
    iotctl xmpp sensor thing@example.com/dev
    iotctl xmpp sensor thing@example.com --field temperature -o raw
    iotctl xmpp sensor thing@example.com --historical --from -1h -o jsonl
    iotctl xmpp sensor thing@example.com --interval 5 --payload json --save readings.jsonl
    """
    from iotctl import receive as receiving

    reader = endpoints.sensor(cfg, device, fields, nodes, momentary, historical, peak, status_values, computed,
                              identity, all_kinds, since, until, interval, payload_form, answer_timeout, receive,
                              when)
    with reader:
        if interval:
            status(f"reading {reader.target} every {interval:g} s")
        n = receiving.run(reader, receive, "sensor", noun="value")
    if not n and not interval:
        status("the device sent no values")


@group.command()
@xmpp_options
@click.argument("device", metavar="JID")
@click.argument("params", nargs=-1, metavar="[NAME[:TYPE]=VALUE]...")
@timeout_option(10.0, "Seconds to wait for the device's answer (exit 5 when none comes).")
def control(cfg, device, params, timeout):
    """Set a device's control parameters (XEP-0325), all in one request, in the order
    given; without NAME=VALUE, list its parameters (name, type, value, label) from its
    control form.

    TYPE is one of boolean, int, long, double, string, color (RRGGBB[AA]), date
    (2026-01-02), time (07:30:00), dateTime (2026-01-02T07:30:00Z), duration (PT30S);
    bool, float and str as in KEY:TYPE=VALUE elsewhere. Without one, the device's
    control form says the type (else: true/false a boolean, an integer an int, a
    number a double, anything else a string). A value that is not of its type is
    refused before sending (exit 2). Exit 6 when the device refuses: its error is
    shown (a parameter it does not have, a wrong type, a value out of range), and
    nothing is set.

    \b
    iotctl xmpp control thing@example.com/dev led=true brightness:int=80
    iotctl xmpp control thing@example.com color:color=FF8800 wakeup:time=06:45:00
    iotctl xmpp control thing@example.com
    """
    from iotctl.protocols.xmpp import iot
    from iotctl.protocols.xmpp.client import CONTROL_FEATURE, Session, control as set_params, control_form, \
        device_jid, parse_jid
    from iotctl.protocols.xmpp.tables import write_rows
    from iotctl.protocols.xmpp.text import xml_text
    from iotctl.settings import warn

    parse_jid(device, "device JID")
    parsed = []
    for text in params:
        try:
            name, kind, value = iot.parse_param(text)
        except ValueError as exc:
            raise UsageError("bad parameter", str(exc)) from None
        xml_text(name, f"parameter name {name!r}")
        xml_text(value, f"the value of {name}")
        parsed.append((name, kind, value))
    with Session(cfg) as session:
        target = device_jid(session, device, CONTROL_FEATURE, timeout, f"control {device}")
        if not parsed:
            rows = control_form(session, target, timeout)
        else:
            limited = set_params(session, target, parsed, timeout)
    if not parsed:
        write_rows(target, ["name", "type", "value", "label"], rows)
        return
    if limited:
        warn(f"{target} limited the command to: {', '.join(limited)}")
    status(f"set {', '.join(name for name, _, _ in parsed)} on {target}", tty_only=True)


@group.command()
@xmpp_options
@click.option("--node", metavar="ID", help="The node id in readouts [default: the JID's user part].")
@click.option("--interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True, metavar="SECONDS",
              help="How often the simulated sensors change (and a historical value is kept).")
@click.option("--auto-approve/--no-auto-approve", default=True, show_default=True,
              help="Approve every presence subscription request, so readers can give the bare JID.")
@click.option("--background", is_flag=True, default=False,
              help="Return once the device is online, leaving it running (its pid is printed); "
                   "it logs to --log FILE, never to this terminal.")
@click.option("--log", "log_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Append the request log to FILE instead of stderr [default with --background: "
                   "$XDG_STATE_HOME/iotctl/xmpp-device-USER.log; nothing with --quiet].")
def device(cfg, node, interval, auto_approve, background, log_file):
    """Run a simulated XMPP-IoT device on your account until Ctrl-C.

    It answers XEP-0323 readouts, XEP-0325 control and disco#info (both features):

    \b
    momentary   temperature (°C) and humidity (%), which drift every --interval,
                counter (counts every --interval), and every parameter below
    peak        temperature_max, temperature_min since the start
    computed    dew_point          status    uptime
    identity    serial
    historical  temperature, humidity, counter: a value a second for the last
                hour (historicalSecond), a value an hour for the day before
                the start (historicalHour, historicalDay at midnight)
    parameters  led boolean, brightness int 0..100, counter long, setpoint double
                -10..45, name string, color color, maintenance date, wakeup time,
                alarm dateTime, interval duration (how often the sensors change)

    A control request is all or nothing: an unknown parameter (item-not-found), a
    wrong type or a value out of range (bad-request) sets none of them. One line per
    request is logged on stderr or --log FILE (--quiet turns it off). --background
    returns once the device is online; it then logs to --log FILE (by default under
    $XDG_STATE_HOME/iotctl/, the path is printed), never to this terminal. After a
    lost connection it logs in again with the same resource.

    \b
    iotctl xmpp device --jid thing@example.com --resource dev --background
    iotctl xmpp sensor thing@example.com/dev
    iotctl xmpp control thing@example.com/dev led=true
    """
    from iotctl.protocols.xmpp.text import check_options

    check_options(node=node)
    if background:
        from iotctl import background as bg

        user = (cfg.endpoint.username or "device").split("@", 1)[0]
        _prompted_password_to_child(cfg)
        pid = bg.start("xmpp device", log=log_file, name=f"xmpp-device-{user}")
        click.echo(pid)
        status(f"the simulated device runs in the background (pid {pid}); stop it with: kill {pid}")
        return
    from iotctl.protocols.xmpp import server

    log = None
    if log_file is not None:
        from iotctl import background as bg

        log = bg.open_log(log_file, text=True)
    server.run(cfg, node, interval, auto_approve, log, settings().quiet)


def _prompted_password_to_child(cfg) -> None:
    """`-P -` asked for the password on this terminal: the background child (which has
    none) gets it in its environment, IOTCTL_XMPP_PASSWORD, and not `-P -` again. Not
    on its command line either, where `ps` would show it."""
    import os
    import sys

    argv, kept, prompted = sys.argv, [], False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-P", "--password") and i + 1 < len(argv) and argv[i + 1] == "-":
            prompted, i = True, i + 2
            continue
        if arg in ("-P-", "--password=-"):
            prompted, i = True, i + 1
            continue
        kept.append(arg)
        i += 1
    if prompted and cfg.endpoint.password is not None:
        os.environ["IOTCTL_XMPP_PASSWORD"] = cfg.endpoint.password
        sys.argv = kept

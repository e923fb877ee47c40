"""The `coap` group: get/put/post/delete/fetch/patch/ipatch, observe, discover, serve.

Only option parsing lives here; aiocoap is imported by client.py (and server.py for
`serve`), inside the command bodies. Names and numbers are checked by formats.py
before any network library is loaded, so a typo fails fast with exit 2.
"""

from __future__ import annotations


import click

from iotctl.groups import ProtocolGroup
from iotctl.output import JsonWriter, run_writer
from iotctl.settings import current as settings, status
from iotctl.errors import UsageError
from iotctl.options import bundle, payload_options, receive_options, send_options, shared_factory
from iotctl.protocols.coap import endpoints, formats

DEFAULT_TIMEOUT = 10.0
MULTICAST_WAIT = 3.0
MULTICAST_TARGETS = ("coap://224.0.1.187/.well-known/core", "coap://[ff02::fd]/.well-known/core")


@click.group(cls=ProtocolGroup, protocol="coap")
def group():
    """CoAP (RFC 7252) on aiocoap: requests, observe, discovery, a simulated device, a proxy.

    URIs: coap:// (UDP), coap+tcp://, coaps+tcp:// (TLS); coaps:// (DTLS, needs
    DTLSSocket) and coap+ws:// (needs websockets) where aiocoap has the modules.
    Flags follow aiocoap-client and coap-client: -t content format, -A accept,
    -O option, --non, -C count, -W timeout.

    \b
    iotctl coap serve --background
    iotctl coap get coap://127.0.0.1/sensors/temperature -A json
    iotctl coap observe coap://127.0.0.1/time -C 3
    iotctl coap discover coap://127.0.0.1 --rt 'temperature*'
    iotctl coap proxy --http 8080 --coap 5700
    """


# --------------------------------------------------------------------------- shared options


def _content_format(option: str):
    def callback(ctx, param, value):
        if value is None:
            return None
        return formats.parse_content_format(str(value), option)

    return callback


def _options(ctx, param, values):
    return [formats.parse_option(v) for v in values]


def _block_size(ctx, param, value):
    if value is None:
        return None
    return formats.block_szx(value)


def _proxy(ctx, param, value):
    if value is None or value in ("", "none", "-"):
        return None
    return formats.check_uri(value, "--proxy URI")


@shared_factory
def request_options(content_format: bool = True, timeout: float | None = DEFAULT_TIMEOUT,
                    with_timeout: bool = True):
    """Options of every CoAP request; the command receives `req` (a dict of
    client.RequestSpec fields, checked but without aiocoap)."""
    options = []
    if content_format:
        options.append(click.option(
            "-t", "--content-format", metavar="TYPE", callback=_content_format("--content-format"),
            help="Content format of the payload, by name (text/plain, application/json, "
                 "application/cbor, json, cbor, senml+json, ...) or number [default: "
                 "application/cbor with --encode cbor, application/json with --encode json]."))
    options += [
        click.option("-A", "--accept", metavar="TYPE", callback=_content_format("--accept"),
                     help="Content format to ask for (Accept), by name or number."),
        click.option("--non", is_flag=True, default=False,
                     help="Send the request non-confirmable (NON) instead of CON."),
        click.option("-O", "--option", multiple=True, metavar="NUM=VALUE",
                     callback=_options,
                     help="Add CoAP option NUM (or its name) with VALUE: text, a number for uint "
                          "options, or 0x-hex; repeatable. E.g. -O 2048=0x0102, -O Uri-Query=x=1."),
        click.option("--block-size", type=click.Choice([str(s) for s in formats.BLOCK_SIZES]),
                     default=None, callback=lambda c, p, v: _block_size(c, p, int(v) if v else None),
                     help="Block size for block-wise transfer (RFC 7959) [default: 1024]."),
        click.option("--proxy", metavar="URI", callback=_proxy,
                     help="Send the request through this CoAP forward proxy (e.g. coap://proxy:5683)."),
        click.option("--max-size", metavar="SIZE", default="16MiB", show_default=True,
                     callback=lambda c, p, v: formats.parse_size(str(v)),
                     help="Largest response to assemble from blocks (bytes, or 64k, 16M, ...): a "
                          "server sending more exits 6."),
    ]
    if with_timeout:
        options.append(click.option(
            "-W", "--timeout", type=click.FloatRange(min=0, min_open=True), default=timeout, metavar="SECONDS",
            show_default=timeout is not None,
            help="Seconds to wait for the response (exit 5 when none comes)."))

    def build(accept, non, option, block_size, proxy, max_size, content_format=None, timeout=None):
        req = {"content_format": content_format, "accept": accept, "non": non, "options": option,
               "block_szx": block_size, "proxy": proxy, "max_size": max_size}
        if with_timeout:
            req["timeout"] = timeout
        return req

    return bundle("req", options, build)


def _security(psk_identity, psk, credentials, oscore):
    key = None
    if psk is not None:
        if psk[:2].lower() == "0x":
            try:
                key = bytes.fromhex(psk[2:])
            except ValueError:
                raise UsageError("--psk", "the value after 0x is not valid hex") from None
        else:
            key = psk.encode("utf-8")
    if (key is None) != (psk_identity is None):
        raise UsageError("--psk and --psk-identity", "give both, or neither")
    return {"psk_identity": psk_identity, "psk": key, "credentials": credentials, "oscore": oscore}


# DTLS PSK, aiocoap credentials and OSCORE, the same on every client command; the
# command receives `security` (a dict of client.Security fields)
security_options = bundle("security", [

    click.option("--psk-identity", metavar="ID", help="DTLS PSK identity (coaps://)."),
    click.option("--psk", metavar="KEY",
                 help="DTLS pre-shared key: text, or 0x-hex (a profile can name psk_env or psk_cmd)."),
    click.option("--credentials", metavar="FILE", type=click.Path(dir_okay=False),
                 help="aiocoap credentials file (JSON) mapping URI patterns to DTLS/OSCORE keys."),
    click.option("--oscore", metavar="DIR", type=click.Path(file_okay=False),
                 help="Protect the request with OSCORE using this security context directory."),
], _security)


def _spec(method: str, uri: str, req: dict, security: dict, payload: bytes = b""):
    return endpoints.request_spec(method, uri, req, security, payload)


def _write(messages, writer) -> int:
    """Write responses; in raw/hex mode an empty payload prints nothing (the code goes to
    stderr as a status line) so `put` and `delete` stay quiet in scripts."""
    from iotctl.output import HexWriter, RawWriter

    n = 0
    for msg in messages:
        n += 1
        if msg.meta.get("location"):
            status(f"{msg.meta.get('code')}: {msg.meta['location']}")
        if not msg.payload and isinstance(writer, (RawWriter, HexWriter)):
            status(f"{msg.address}: {msg.meta.get('code')}", tty_only=True)
            continue
        writer.write(msg)
        writer.flush()
    return n


# --------------------------------------------------------------------------- get, put, post, ...


METHOD_HELP = {
    "get": "Fetch a resource (GET) and print the response.",
    "delete": "Delete a resource (DELETE).",
    "put": "Create or replace a resource (PUT) with the payload.",
    "post": "Send the payload to a resource (POST); the payload is optional.",
    "fetch": "FETCH (RFC 8132): GET with a request body.",
    "patch": "PATCH (RFC 8132) a resource with the payload.",
    "ipatch": "iPATCH (RFC 8132): an idempotent PATCH.",
}
PAYLOAD_REQUIRED = {"put": True, "patch": True, "ipatch": True, "post": False, "fetch": False}

EXAMPLES = {
    "get": "iotctl coap get coap://127.0.0.1/sensors/temperature -A json\n"
           "iotctl coap get coap://127.0.0.1/large -o json | jq -r .meta.code",
    "put": "iotctl coap put coap://127.0.0.1/store/led on\n"
           "iotctl coap put coap://127.0.0.1/store/cfg --encode cbor -m '{\"rate\": 5}'",
    "post": "iotctl coap post coap://127.0.0.1/store -t json -m '{\"x\": 1}'",
    "delete": "iotctl coap delete coap://127.0.0.1/store/led",
    "fetch": "iotctl coap fetch coap://127.0.0.1/x -t json -m '[\"a\"]'",
    "patch": "iotctl coap patch coap://127.0.0.1/x -t merge-patch+json -m '{\"a\": 1}'",
    "ipatch": "iotctl coap ipatch coap://127.0.0.1/x -t merge-patch+json -m '{\"a\": 1}'",
}


def _responder(writer):
    """What a request command does with each response: print it (an error response only
    with -o json/jsonl, whose exit status still says 6)."""
    errors_too = isinstance(writer, JsonWriter)

    def respond(msg, ok: bool) -> None:
        if ok or errors_too:
            _write([msg], writer)

    return respond


def _method_command(verb: str):
    has_payload = verb in PAYLOAD_REQUIRED
    doc = (f"{METHOD_HELP[verb]}\n\n"
           "Prints the payload (raw when piped; rendered by content format on a terminal; "
           "-o json for the envelope with the code and options in meta). A 4.xx/5.xx "
           "response exits 6 with the code and diagnostic payload on stderr (with -o json or "
           "jsonl its envelope is printed on stdout too). A created resource's Location-Path "
           "is shown on stderr and in meta.location."
           + (" With -l (or --replay), each message is sent as its own request, one at a time, "
              "each 2.xx response its acknowledgement; stopped early, it says how many were sent "
              "and acknowledged, and --failed FILE keeps the rest." if has_payload else "")
           + (" --method put (in a URL: #method=put) sends PUT requests instead: `coap post` is "
              "also the sink of URLs such as coap://host/path#method=put." if verb == "post" else "")
           + "\n\n\b\n" + EXAMPLES[verb])

    if has_payload:
        def body(uri, req, security, sending, payload, method=None):
            from iotctl import send

            payload.validate(required=PAYLOAD_REQUIRED[verb])
            if sending.repeat > 1 and payload.streaming:
                raise UsageError("--repeat", "cannot be combined with -l or --replay")
            writer = run_writer(piped_default="raw")
            requests = endpoints.sink(uri, req, security, payload, method or verb, _responder(writer))
            items = send.outgoing(payload, sending, addresses=(requests.address,))  # the URI wins over a replay's
            with requests:
                result = send.run(requests, items, requests.spec.what, requests.spec.timeout + 1.0,
                                  progress=payload.streaming, failed=sending.failed, verb="sending")
            if payload.streaming:
                status(f"sent {result.sent} request(s)", tty_only=True)
    else:
        def body(uri, req, security):
            from iotctl.protocols.coap import client

            uri = endpoints.check(uri, req, security)
            writer = run_writer(piped_default="raw")
            spec = _spec(verb, uri, req, security)
            # with -o json/jsonl a 4.xx/5.xx response is printed too (the exit status still says 6)
            _write(client.request_all(iter([spec]), yield_errors=isinstance(writer, JsonWriter)), writer)

    f = body
    if has_payload:
        f = payload_options()(f)
        f = send_options()(f)
        if verb == "post":
            f = click.option("--method", type=click.Choice(endpoints.SINK_METHODS, case_sensitive=False),
                             default="post", show_default=True,
                             help="Send each message with this method instead (as a URL sink: #method=put).")(f)
    f = security_options(f)
    f = request_options(content_format=has_payload)(f)
    f = click.argument("uri", metavar="URI")(f)
    cmd = click.command(verb, help=doc, cls=group.command_class, short_help=METHOD_HELP[verb])(f)
    group.add_command(cmd)
    return cmd


for _method in ("get", "put", "post", "delete", "fetch", "patch", "ipatch"):
    _method_command(_method)


# --------------------------------------------------------------------------- observe


@group.command()
@click.argument("uri", metavar="URI")
@request_options(content_format=False, with_timeout=False)
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Observe for this long, then deregister and exit 0.")
@security_options
@receive_options(idle="error", reconnect=True)
def observe(uri, req, duration, security, receive):
    """Observe a resource (RFC 7641): print the current state and every notification.

    Every notification is printed, one per line when piped. Ctrl-C, --duration or
    -C COUNT ends it (exit 0) and deregisters from the server. -W TIMEOUT gives up
    after that many seconds (exit 5 when COUNT, or anything, was not received);
    it also bounds the wait for the first response [default: 10 s].

    When a notification's Max-Age passes without a new one, it registers again: a
    server that restarted has forgotten the observation. A server that cannot be
    reached is tried again with backoff (a status line each time); --no-reconnect
    exits 3 instead.

    \b
    iotctl coap observe coap://127.0.0.1/time -C 3
    iotctl coap observe coap://127.0.0.1/sensors/temperature -A json -o jsonl --duration 60
    """
    from iotctl import receive as receiving

    observation = endpoints.source(uri, req, security, receive, duration)
    with observation:
        status(f"observing {observation.where}")
        receiving.run(observation, receive, f"observe {observation.where}", noun="notification")


# --------------------------------------------------------------------------- discover


@group.command()
@click.argument("uri", metavar="[URI]", required=False)
@click.option("--rt", metavar="TYPE", help="Only links with this resource type (a trailing * matches a prefix).")
@click.option("--if", "if_", metavar="IFACE", envvar="IOTCTL_COAP_IF", help="Only links with this interface description (* as in --rt).")
@request_options(content_format=False, timeout=None)
@security_options
def discover(uri, rt, if_, req, security):
    """List a server's resources (GET /.well-known/core, RFC 6690).

    URI defaults to the path /.well-known/core on its host. Without URI, it asks every
    CoAP node on the local network (multicast to 224.0.1.187 and ff02::fd) and prints
    each answer that comes within -W seconds [default: 3 s; 10 s for unicast].

    Output: a table on a terminal; one link per line with -o raw (piped) or -o text
    ('URI LINK'); -o json/jsonl give the envelope with the parsed links in meta.links.

    \b
    iotctl coap discover coap://127.0.0.1
    iotctl coap discover coap://127.0.0.1 --rt 'temperature*' -o raw
    iotctl coap discover -W 5
    """
    from iotctl.errors import IotctlError, TimeoutError_

    if uri is None:
        targets = list(MULTICAST_TARGETS)
    else:
        targets = [formats.with_path(formats.check_uri(uri), "/.well-known/core")]
    endpoints.check(targets[0], req, security)
    query = f"rt={rt}" if rt is not None else (f"if={if_}" if if_ is not None else None)
    if query:
        from urllib.parse import quote

        key, value = query.split("=", 1)
        targets = [t if "?" in t else f"{t}?{key}={quote(value, safe='*')}" for t in targets]
    if req["accept"] is None:
        req["accept"] = 40
    multicast = [t for t in targets if formats.is_multicast_host(formats.uri_host(t))]
    for t in multicast:
        if formats.uri_scheme(t) != "coap":
            raise UsageError(f"bad URI {t!r}", "multicast discovery works over coap:// (UDP) only")
        if req["proxy"]:
            raise UsageError("--proxy", "cannot be combined with multicast discovery")
    from iotctl.protocols.coap import client

    responses = []
    errors: list[IotctlError] = []
    for target in targets:
        if target in multicast:
            wait = req["timeout"] or MULTICAST_WAIT
            spec = _spec("get", target, {**req, "non": True, "timeout": wait}, security)
            try:
                answers = client.multicast_request(spec, wait)
            except IotctlError as exc:
                errors.append(exc)
                continue
            responses.extend(client.complete_blocks(answers, spec))
        else:
            spec = _spec("get", target, {**req, "timeout": req["timeout"] or DEFAULT_TIMEOUT}, security)
            responses.extend(client.request_all(iter([spec])))
    if errors and len(errors) == len(targets):
        raise errors[0]
    for exc in errors:
        from iotctl.settings import warn

        warn(f"{exc.what}: {exc.why}")
    good = [m for m in responses if m.meta.get("code", "").startswith("2.")]
    for m in responses:
        if m not in good:
            from iotctl.settings import warn

            warn(f"{m.address}: {m.meta.get('code')}")
    if not good:
        if multicast:
            raise TimeoutError_("discover", f"no CoAP server answered within {wait:g} s")
        raise TimeoutError_("discover", "no answer")
    _write_links(good, rt, if_)


def _write_links(responses, rt, if_) -> None:
    from iotctl.settings import warn
    from iotctl.protocols.coap.linkformat import filter_links, format_link, format_links, parse_links
    from iotctl.message import Message
    from iotctl.output import resolve_mode

    s = settings()
    mode = resolve_mode(s.output, s.format, "raw")
    writer = run_writer(piped_default="raw")
    for resp in responses:
        try:
            links = parse_links(resp.payload.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            warn(f"{resp.address}: the answer is not link-format ({exc}); printing it as it came")
            writer.write(resp)
            continue
        links = filter_links(links, rt=rt, if_=if_)
        if mode in ("raw", "text", "template"):
            for link in links:
                writer.write(Message("coap", resp.address, format_link(link).encode("utf-8"),
                                     "application/link-format", {**resp.meta, "link": link}, resp.ts))
        else:
            meta = dict(resp.meta)
            if mode in ("json", "jsonl"):
                meta["links"] = links
            writer.write(Message("coap", resp.address, format_links(links).encode("utf-8"),
                                 "application/link-format", meta, resp.ts))
    writer.flush()


# --------------------------------------------------------------------------- serve


@group.command()
@click.option("-b", "--bind", default="127.0.0.1", show_default=True, metavar="ADDRESS",
              help="Address to listen on (:: for every IPv6 and IPv4 address).")
@click.option("-p", "--port", type=click.IntRange(1, 65535), default=5683, show_default=True, metavar="PORT",
              help="UDP port to listen on.")
@click.option("--tcp", is_flag=True, default=False, help="Also serve CoAP over TCP (coap+tcp://) on the same port.")
@click.option("--dir", type=click.Path(exists=True, file_okay=False), metavar="DIR",
              help="Also serve the files under DIR (read-only) at /files/...")
@click.option("--interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True, metavar="SECONDS",
              help="How often the simulated sensors change (and observers are notified).")
@click.option("--large-size", type=click.IntRange(1, 16 * 1024 * 1024), default=4096, show_default=True,
              metavar="BYTES", help="Size of /large, the resource that needs block-wise transfer.")
@click.option("--background", is_flag=True, default=False,
              help="Return once the device listens, leaving it running (its pid is printed); "
                   "it logs to --log FILE, never to this terminal.")
@click.option("--log", "log_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Append the request log to FILE instead of stderr [default with --background: "
                   "$XDG_STATE_HOME/iotctl/coap-serve-PORT.log; nothing with --quiet].")
def serve(bind, port, tcp, dir, interval, large_size, background, log_file):
    """Run a simulated CoAP device until Ctrl-C.

    \b
    /time                  the time, observable (a notification every second)
    /sensors/temperature   observable, changes every --interval (Accept: text, json,
    /sensors/humidity        cbor, senml+json, senml+cbor)
    /actuators/led         writable: PUT on|off (or JSON/CBOR true/false), POST toggles
    /store                 POST creates /store/N; PUT /store/NAME creates or replaces,
                           DELETE removes; every entry is observable
    /large                 --large-size bytes of text: needs block-wise transfer
    /files/...             the files of --dir, read-only
    /.well-known/core      all of the above with rt, if, ct, obs, title

    One line per request is logged on stderr or --log FILE (--quiet turns it off).
    --background returns as soon as the device listens, so the next command can use
    it at once; the device then logs to --log FILE (by default under
    $XDG_STATE_HOME/iotctl/, the path is printed), never to this terminal, and
    nowhere with --quiet. A device that cannot start exits with its error and status.

    \b
    iotctl coap serve --background
    iotctl coap get coap://127.0.0.1/sensors/temperature
    iotctl coap observe coap://127.0.0.1/time -C 3
    """
    if background:
        from iotctl import background as bg

        pid = bg.start("coap serve", log=log_file, name=f"coap-serve-{port}")
        click.echo(pid)
        status(f"the simulated device runs in the background (pid {pid}); stop it with: kill {pid}")
        return
    from iotctl.protocols.coap import server

    s = settings()
    log = None
    if log_file is not None:
        from iotctl import background as bg

        log = bg.open_log(log_file, text=True)
    server.serve(server.ServeConfig(address=bind, port=port, tcp=tcp, directory=dir,
                                    interval=interval, large_size=large_size, quiet=s.quiet,
                                    debug=s.debug, log=log))


# --------------------------------------------------------------------------- proxy


def _listen_address(option: str):
    def callback(ctx, param, value):
        if value is None:
            return None
        return formats.parse_listen(value, option)

    return callback


@group.command()
@click.option("--http", "http", metavar="[HOST:]PORT", callback=_listen_address("--http"),
              help="Listen for HTTP here: HTTP to CoAP (RFC 8075) and the page at / [default: 127.0.0.1:8080 "
                   "when --coap is not given either; HOST defaults to 127.0.0.1, PORT 0 is any free port].")
@click.option("--coap", "coap", metavar="[HOST:]PORT", callback=_listen_address("--coap"),
              help="Listen for CoAP here (UDP): requests with Proxy-Uri http://... are carried out over HTTP.")
@click.option("-W", "--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              metavar="SECONDS",
              help="How long one request to a device (or an HTTP server) may take: then 504 (5.04).")
@click.option("--max-size", metavar="SIZE", default="16MiB", show_default=True,
              callback=lambda c, p, v: formats.parse_size(str(v), "--max-size"),
              help="Largest response taken from a device (block-wise assembled) or an HTTP server: "
                   "larger is 502 (5.02).")
@click.option("--max-body", metavar="SIZE", default="1MiB", show_default=True,
              callback=lambda c, p, v: formats.parse_size(str(v), "--max-body"),
              help="Largest request body (HTTP, or a CoAP block-wise upload): larger is 413 (4.13).")
@click.option("--max-requests", type=click.IntRange(1, 100000), default=256, show_default=True, metavar="N",
              help="Requests in progress at once, on each side; past it 503 with Retry-After (CoAP: 5.03 "
                   "with Max-Age).")
@click.option("--max-connections", type=click.IntRange(1, 100000), default=512, show_default=True, metavar="N",
              help="HTTP connections open at once; past it a new one gets 503 and is closed.")
@click.option("--max-observers", type=click.IntRange(1, 100000), default=256, show_default=True, metavar="N",
              help="Event-stream subscriptions at once (an HTTP client watching a resource); past it 503.")
@click.option("--client-timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              metavar="SECONDS", help="Drop an HTTP client that stops reading (an event stream) for this long.")
@click.option("--cafile", type=click.Path(dir_okay=False), metavar="FILE",
              help="CA certificates for https:// targets of CoAP requests [default: the system's].")
@click.option("--background", is_flag=True, default=False,
              help="Return once the proxy listens, leaving it running (its pid is printed); "
                   "it logs to --log FILE, never to this terminal.")
@click.option("--log", "log_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Append the request log to FILE instead of stderr [default with --background: "
                   "$XDG_STATE_HOME/iotctl/coap-proxy-PORT.log; nothing with --quiet].")
def proxy(http, coap, timeout, max_size, max_body, max_requests, max_connections, max_observers,
          client_timeout, cafile, background, log_file):
    """An HTTP-to-CoAP and CoAP-to-HTTP proxy, until Ctrl-C.

    HTTP to CoAP (RFC 8075): a request to /hc/coap://HOST:PORT/PATH (or
    /coap://HOST:PORT/PATH) is sent to that CoAP resource, with its method (GET, HEAD,
    POST, PUT, DELETE, PATCH, FETCH, iPATCH), Content-Type and Accept as Content-Format
    and Accept, and the answer comes back mapped: 2.05 is 200, 2.04 without a payload
    204, 4.04 404, ... (README has the table), the diagnostic payload as the body; no
    answer within -W is 504, an unreachable device 502, a malformed target 400.
    With Accept: text/event-stream a GET observes the resource: each notification is a
    server-sent event (iotctl's own mapping), and every client of a resource shares one
    observation, deregistered when the last one goes. GET / is a page listing a
    device's resources with their observable values live.

    CoAP to HTTP (--coap): a CoAP request with Proxy-Uri http[s]://... (or Proxy-Scheme
    http and Uri-Host) is carried out over HTTP, the answer mapped back (200 to a GET is
    2.05, 201 2.01, 404 4.04, ...), so a CoAP-only device reaches a REST API.

    One line per request is logged on stderr or --log FILE (--quiet turns it off);
    --background as `coap serve`.

    \b
    iotctl coap proxy --http 8080 --coap 5700 --background
    curl http://127.0.0.1:8080/hc/coap://127.0.0.1:5683/sensors/temperature
    curl -N -H 'Accept: text/event-stream' http://127.0.0.1:8080/hc/coap://127.0.0.1/time
    coap-client-notls -P coap://127.0.0.1:5700 http://example.com/api
    """
    if http is None and coap is None:
        http = ("127.0.0.1", 8080)
    if background:
        from iotctl import background as bg

        port = (http or coap)[1]
        pid = bg.start("coap proxy", log=log_file, name=f"coap-proxy-{port}")
        click.echo(pid)
        status(f"the proxy runs in the background (pid {pid}); stop it with: kill {pid}")
        return
    if cafile is not None:
        from iotctl.tls import make_ssl_context

        make_ssl_context(cafile=cafile)  # an unreadable or bad file fails here (exit 2)
    from iotctl.protocols.coap.proxy import server as proxy_server

    s = settings()
    log = None
    if log_file is not None:
        from iotctl import background as bg

        log = bg.open_log(log_file, text=True)
    proxy_server.serve(proxy_server.ProxyConfig(
        http=http, coap=coap, timeout=timeout, max_size=max_size, max_body=max_body,
        max_requests=max_requests, max_connections=max_connections, max_observers=max_observers,
        client_timeout=client_timeout, cafile=cafile, quiet=s.quiet, debug=s.debug, log=log))

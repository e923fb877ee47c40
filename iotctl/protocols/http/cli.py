"""The `http` group: get, head, post, put, patch, delete, request (any method), listen.

Only option parsing lives here; h11 is imported by client.py and server.py when a
command runs. Headers, URLs and sizes are checked by fields.py before anything connects.
"""

from __future__ import annotations

import click

from iotctl.errors import UsageError
from iotctl.groups import ProtocolGroup
from iotctl.options import bundle, connection_options, payload_options, receive_options, send_options
from iotctl.protocols.http import endpoints, fields
from iotctl.settings import current as settings, status, warn

DEFAULT_TIMEOUT = 30.0


@click.group(cls=ProtocolGroup, protocol="http")
def group():
    """HTTP/1.1 requests, streams and a webhook listener (REST as the other groups see it).

    A response is a message: the body is the payload (raw when piped, rendered by
    Content-Type on a terminal); -o json gives the envelope with status, reason,
    headers, HTTP version and timing in meta. 2xx/3xx exit 0, 4xx/5xx exit 6 (401/407: 4).
    Flags follow curl and httpie: -H 'Name: value', -u user:pass, -L (follow), -i,
    -j/--json, ':PORT/path' for localhost.

    \b
    iotctl http get https://example.org/api/things -H 'Accept: application/json'
    iotctl http post :8080/api/things --json '{"name": "t1"}'
    iotctl http get :8080/events --stream -C 10 -o jsonl
    iotctl http listen -p 8080 -o jsonl --save hooks.jsonl
    """


# --------------------------------------------------------------------------- shared options


def _headers(ctx, param, values):
    return [fields.parse_header_option(v) for v in values]


def _size(ctx, param, value):
    return None if value is None else fields.parse_size(str(value), "--max-size")


def _http_config(endpoint, header, token, timeout, max_size, follow, max_redirects):
    from iotctl.protocols.http.client import HttpConfig

    ctx = click.get_current_context()
    user, password = endpoint.username, endpoint.password
    if user is not None and password is None and ":" in user:
        user, password = user.split(":", 1)  # curl and httpie: -u user:password
        if password == "-":
            from iotctl.endpoint import prompt_password

            password = prompt_password(user)
    if token is not None and user is not None:
        raise UsageError("--token and -u", "give a bearer token or a user name, not both")
    if endpoint.insecure:
        warn("--insecure: the server's certificate and name are not checked")
    cfg = HttpConfig(endpoint=endpoint, headers=header, basic=(user, password) if user is not None else None,
                     token=token or None, timeout=timeout, max_size=max_size, follow=follow,
                     max_redirects=max_redirects, debug=settings().debug)
    base = ctx.params.get("base_url")
    cfg.base_url = base if base else None
    return cfg


_HTTP_OPTIONS = bundle("cfg", [
    click.option("-H", "--header", multiple=True, metavar="'NAME: VALUE'", callback=_headers,
                 help="Add a request header (repeatable); 'NAME:' leaves a default header out, "
                      "'NAME;' sends it empty (as curl)."),
    click.option("--token", metavar="TOKEN",
                 help="Bearer token (Authorization: Bearer TOKEN); a profile can name token_env or token_cmd."),
    click.option("-W", "--timeout", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_TIMEOUT,
                 show_default=True, metavar="SECONDS",
                 help="Give up (exit 5) when a request's whole answer has not come within this many seconds "
                      "(with --stream: the whole run, as -W of every receiving command)."),
    click.option("--max-size", metavar="SIZE", default="16MiB", show_default=True, callback=_size,
                 help="Largest response body (bytes, or 64k, 16M, ...): a larger one exits 6 "
                      "(with --stream: the largest event or line)."),
    click.option("-L", "--follow", is_flag=True, default=False,
                 help="Follow redirects (303, and 301/302 after POST, continue as GET)."),
    click.option("--max-redirects", type=click.IntRange(0, 100), default=30, show_default=True,
                 help="With -L: give up (exit 6) after this many redirects."),
], _http_config, consumes=("endpoint",))


def http_options(f):
    """Connection, credentials, TLS and request options of every client command; the
    command receives `cfg` (a client.HttpConfig)."""
    return connection_options(endpoints.CONNECT_SCHEMES, "http", tls=True, url_option="--base-url",
                              host_port=False)(_HTTP_OPTIONS(f))


# option objects built once and shared by every command (as bundle() does)
_BODY_OPTIONS = bundle(None, [
    click.option("-j", "--json", "json_", is_flag=True, default=False,
                 help="The body is JSON (checked, sent compact): Content-Type and Accept application/json "
                      "(httpie's -j; curl's --json)."),
    click.option("--content-type", metavar="TYPE",
                 help="Content-Type of the body [default: application/json or application/cbor with "
                      "--json or --encode json|cbor; else none]."),
    click.option("-i", "--include", is_flag=True, default=False,
                 help="Print the status line and headers before the body (as curl -i)."),
])

_STREAM_OPTIONS = bundle(None, [
    click.option("--stream", is_flag=True, default=False,
                 help="Read the body as a stream of server-sent events or NDJSON lines, a message each."),
    click.option("--stream-format", type=click.Choice(["auto", "sse", "ndjson"]), default="auto",
                 show_default=True, help="With --stream: how to split the body (auto: by Content-Type)."),
    click.option("-C", "--count", type=click.IntRange(min=1), default=None,
                 help="With --stream: stop after COUNT messages."),
    click.option("--save", type=click.Path(dir_okay=False, writable=True), metavar="FILE.jsonl",
                 help="With --stream: also append every message to FILE as JSON lines."),
    click.option("--idle-timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
                 help="With --stream: stop (exit 0) once nothing arrived for this long."),
    click.option("--reconnect", is_flag=True, default=False,
                 help="With --stream: after a broken connection, ask again with backoff (with Last-Event-ID for "
                      "an event stream, as EventSource does) instead of exit 3."),
])


def _writer_for(include: bool):
    """on_response for the Requester: print each response (bodies raw when piped; a
    4xx/5xx only with -o json/jsonl or pretty); statuses and redirects on stderr."""
    from iotctl.output import HexWriter, JsonWriter, RawWriter, run_writer

    writer = run_writer(piped_default="raw")
    shows_errors = isinstance(writer, JsonWriter) or type(writer).__name__ == "PrettyWriter"
    quiet_empty = isinstance(writer, (RawWriter, HexWriter))

    def on_response(resp) -> None:
        msg = resp.message()
        if resp.status >= 400 and not shows_errors:
            return
        if 300 <= resp.status < 400:
            location = fields.header(resp.headers, "location")
            if location:
                status(f"{resp.status} {resp.reason}: Location: {location} (-L follows it)")
        if include:
            head = f"HTTP/{resp.http_version} {resp.status} {resp.reason}\r\n" + "".join(
                f"{k}: {fields.masked_value(k, v)}\r\n" for k, v in resp.headers) + "\r\n"
            msg.payload = head.encode("latin-1", "replace") + msg.payload
        if not msg.payload and quiet_empty:
            status(f"{resp.method} {resp.url.shown}: {resp.status} {resp.reason}", tty_only=True)
            return
        writer.write(msg)
        writer.flush()

    return on_response


def _body_content_type(payload, json_, content_type, cfg) -> str | None:
    if json_:
        if payload.encode not in (None, "json"):
            raise UsageError("--json and --encode " + payload.encode, "choose one")
        payload.encode = "json"
        if not any(k.lower() == "accept" for k, _ in cfg.headers):
            cfg.headers.append(("Accept", "application/json, */*;q=0.5"))
    if content_type is not None:
        fields.check_header("Content-Type", content_type, "--content-type")
        return content_type
    if any(k.lower() == "content-type" for k, _ in cfg.headers):
        return None  # -H wins
    if payload.encode in ("json", "cbor"):
        return f"application/{payload.encode}"
    return None


def _run_requests(method, url, cfg, payload, sending, json_, content_type, include):
    """Every method command: the payload options on the send driver, a request per message."""
    from iotctl import send

    given = payload.sources()
    payload.validate(required=False)
    if sending.repeat > 1 and payload.streaming:
        raise UsageError("--repeat", "cannot be combined with -l or --replay")
    ctype = _body_content_type(payload, json_, content_type, cfg)
    if method is None and not given:
        method = "GET"  # curl: GET without data, POST with it
    requester = endpoints.sink(cfg, url, method, ctype, on_response=_writer_for(include))
    if given:
        items = _at_the_url(send.outgoing(payload, sending))
    else:
        items = _empty_requests(sending)
    what = f"{method or 'POST'} {requester.url.shown if requester.url else 'http'}"
    with requester:
        # one request with no body of the user's (`http get URL`): its error is the whole story
        send.run(requester, items, what, cfg.timeout + 5, progress=payload.streaming, failed=sending.failed,
                 verb="requesting", report=bool(given) or sending.repeat > 1)


def _at_the_url(items):
    """On the command line the URL is where every request goes: a replayed message's
    captured address (an MQTT topic, a path `http listen` saw) is not a URL."""
    for msg in items:
        if msg.address:
            msg.address = ""
        yield msg


def _empty_requests(sending):
    import time

    from iotctl.message import Message

    for i in range(sending.repeat):
        if i and sending.interval:
            time.sleep(sending.interval)
        yield Message("", "", b"")


METHOD_HELP = {
    "get": "GET a resource and print the response body.",
    "head": "HEAD: the status and headers only (-i or -o json shows them).",
    "post": "POST the payload (optional) and print the response.",
    "put": "PUT the payload and print the response.",
    "patch": "PATCH with the payload and print the response.",
    "delete": "DELETE a resource.",
}
EXAMPLES = {
    "get": "iotctl http get http://127.0.0.1:8080/api/things -H 'Accept: application/json'\n"
           "iotctl http get :8080/status -o json | jq .meta.status\n"
           "iotctl http get :8080/events --stream -C 5 -o jsonl",
    "head": "iotctl http head https://example.org/ -i",
    "post": "iotctl http post :8080/api/things --json '{\"name\": \"t1\"}'\n"
            "seq 3 | iotctl http post :8080/api/readings -l --content-type text/plain",
    "put": "iotctl http put :8080/store/cfg -f config.json --content-type application/json",
    "patch": "iotctl http patch :8080/api/things/1 --json '{\"name\": \"t2\"}'",
    "delete": "iotctl http delete :8080/store/cfg",
}


def _method_command(method: str):
    doc = (f"{METHOD_HELP[method]}\n\n"
           "A 2xx or 3xx answer exits 0; 4xx/5xx exits 6 (401/407: 4) with the status and the start of "
           "the body on stderr (with -o json/jsonl or pretty the response is printed too). No answer within "
           "-W exits 5, a refused connection 3, a TLS failure 7. The payload options make a request per "
           "message (-l: a request per line of stdin, on one kept-alive connection); --failed FILE keeps the "
           "messages not acknowledged when it stops early."
           + ("\n\nWith --stream the body is read as it comes, one message per server-sent event "
              "(text/event-stream) or per line (NDJSON): a receiving command with -C, -W, --idle-timeout "
              "and --save." if method == "get" else "")
           + "\n\n\b\n" + EXAMPLES[method])
    upper = method.upper()

    def body(url, cfg, payload, sending, json_, content_type, include, stream=False, stream_format="auto",
             count=None, save=None, idle_timeout=None, reconnect=False):
        if stream:
            return _stream(url, cfg, payload, stream_format, count, save, idle_timeout, reconnect)
        if count is not None or save is not None or idle_timeout is not None or reconnect:
            raise UsageError("-C, --save, --idle-timeout and --reconnect", "need --stream")
        _run_requests(upper, url, cfg, payload, sending, json_, content_type, include)

    f = body
    if method == "get":
        f = _STREAM_OPTIONS(f)
    f = _BODY_OPTIONS(f)
    f = send_options()(f)
    f = payload_options()(f)
    f = http_options(f)
    f = click.argument("url", metavar="URL")(f)
    cmd = click.command(method, help=doc, cls=group.command_class, short_help=METHOD_HELP[method])(f)
    group.add_command(cmd)
    return cmd


def _stream(url, cfg, payload, stream_format, count, save, idle_timeout, reconnect=False):
    from iotctl import receive

    if payload.sources():
        raise UsageError("--stream", "sends no payload")
    spec = receive.ReceiveSpec(count, cfg.timeout if _given("timeout") else None, save, idle_timeout,
                               idle_ok=True, reconnect=reconnect)
    cfg.connect_timeout = min(cfg.timeout, DEFAULT_TIMEOUT)
    streamer = endpoints.source(cfg, url, stream_format, max_size=cfg.max_size if _given("max_size") else None)
    with streamer:
        status(f"streaming {streamer.where}")
        receive.run(streamer, spec, f"GET {streamer.where}", noun="event")


def _given(name: str) -> bool:
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)


for _method in ("get", "head", "post", "put", "patch", "delete"):
    _method_command(_method)


@group.command()
@click.argument("url", metavar="URL")
@http_options
@click.option("-X", "--method", metavar="METHOD",
              help="The request method [default: GET without a payload, else POST; replayed HTTP requests "
                   "keep their own].")
@payload_options()
@send_options()
@_BODY_OPTIONS
def request(url, cfg, method, payload, sending, json_, content_type, include):
    """Any method (curl's -X): a request per message, as the method commands.

    \b
    iotctl http request -X OPTIONS :8080/api -i
    iotctl http request --replay hooks.jsonl :3000/hooks     # requests captured by 'http listen'
    """
    if method is not None:
        if not fields.valid_name(method):
            raise UsageError(f"bad method {method!r}", "a method is a token such as GET, POST or PROPFIND")
        method = method.upper()
    _run_requests(method, url, cfg, payload, sending, json_, content_type, include)


# --------------------------------------------------------------------------- listen


@group.command()
@click.option("-b", "--bind", default="127.0.0.1", show_default=True, metavar="ADDRESS",
              help="Address to listen on (0.0.0.0 or :: for every interface).")
@click.option("-p", "--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="TCP port to listen on (0: any free port, shown on stderr).")
@click.option("--path", default="/", show_default=True, metavar="PREFIX",
              help="Take requests under this path only (others get 404).")
@click.option("--max-size", metavar="SIZE", default="1MiB", show_default=True, callback=_size,
              help="Largest request body; a larger one gets 413.")
@click.option("--max-pending", type=click.IntRange(1, 100000), default=256, show_default=True,
              help="Requests waiting for the output at once; past it 503 with Retry-After.")
@click.option("--max-connections", type=click.IntRange(1, 100000), default=512, show_default=True,
              help="Open connections at once; past it a new one gets 503 and is closed.")
@click.option("--status", "status_code", type=click.IntRange(200, 299), default=204, show_default=True,
              help="The 2xx answered once a request was written.")
@receive_options(idle="ok")
def listen(bind, port, path, max_size, max_pending, max_connections, status_code, receive):
    """Receive requests (webhooks): every request is a message, answered 2xx once written.

    The body is the payload; meta has method, path, query, headers, HTTP version and the
    client's address. A request is answered --status (204) only after its message was
    written and flushed; one not written (the output went away, -C reached, Ctrl-C) gets
    503, so a webhook sender retries it. Ctrl-C ends it (exit 0); -C, -W, --idle-timeout,
    --save as every receiving command.

    \b
    iotctl http listen -p 8080 -o jsonl --save hooks.jsonl
    iotctl http listen -p 8080 --path /hooks -C 1 -W 60    # wait for one webhook
    """
    from iotctl import receive as receiving

    def log_request(request, code, size, seconds):
        if code >= 300:
            status(f"{code} {request.method} {request.target} from {request.remote}")

    listener = endpoints.source(bind=bind, port=port, path=path, max_size=max_size, max_pending=max_pending,
                                max_connections=max_connections, status_code=status_code,
                                log_requests=log_request)
    from iotctl.interrupts import terminate_as_interrupt

    restore = terminate_as_interrupt()  # `kill PID` ends it as Ctrl-C does: what waits gets 503
    try:
        with listener:
            status(f"listening on {listener.where}")
            receiving.run(listener, receive, f"listen on {listener.where}", noun="request")
    finally:
        restore()

"""The mapping tables of `coap proxy`, as pure functions (no aiocoap, no h11).

HTTP to CoAP follows RFC 8075 (Guidelines for Mapping Implementations: HTTP to CoAP):

- the target CoAP URI is appended to the proxy's URI as it is (the default mapping,
  section 5.3): `/hc/coap://device:5683/path?query`; `/coap://...` (the proxy URI being
  `/`) and the absolute form of a forward proxy (`GET coap://device/path HTTP/1.1`) are
  taken too. An IPv6 literal's brackets come percent-encoded (`%5B::1%5D`, 5.3.2); a
  target URI percent-encoded as a whole (`coap%3A%2F%2F...`, what encodeURIComponent
  makes) is decoded once. No scheme is a client error (5.3.1): 400.
- media types (section 6): Content-Type to Content-Format by the IANA registry and
  `application/coap-payload; cf=N` (6.2); one that has no Content-Format is 415; an
  Accept that maps to nothing is ignored (no Accept option; `*/*` is none either).
  Back: a Content-Format to its media type, or `application/coap-payload; cf=N`.
- response codes (section 7, Table 2, with its notes), and the diagnostic payload of an
  error as the body (6.5.3), never as the reason phrase.

CoAP to HTTP (a CoAP request with Proxy-Uri `http://...`, or Proxy-Scheme `http` and
Uri-Host/Uri-Port/Uri-Path/Uri-Query) follows RFC 7252 section 10.1: the method, the
Content-Format as Content-Type and Accept as Accept; the HTTP status back as a CoAP
response code by method (section 10.1.1-10.1.2 and the codes' meanings in 5.9).

Observe over HTTP is iotctl's own (RFC 8075 defines no mapping): a GET with
`Accept: text/event-stream` is an observation, each notification a server-sent event
(`sse_event`).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from iotctl.errors import UsageError
from iotctl.protocols.coap import formats

# --------------------------------------------------------------------------- errors


class MappingError(Exception):
    """A request the proxy answers itself: an HTTP status (or a CoAP code, "4.00") and
    one line of text."""

    def __init__(self, status, text: str):
        super().__init__(text)
        self.status, self.text = status, text


# --------------------------------------------------------------------------- target URIs

HC_PREFIX = "/hc/"
# the schemes an HTTP request may name as its target; coaps:// (DTLS) needs keys the
# proxy does not have
TARGET_SCHEMES = ("coap", "coap+tcp", "coaps+tcp", "coap+ws", "coaps+ws")


@dataclass(frozen=True)
class Target:
    prefix: str   # what came before the target URI: "/hc/", "/" or "" (absolute form)
    uri: str      # the target CoAP URI, checked

    def mapped(self, uri: str) -> str:
        """The URI of another CoAP resource as this client addressed the proxy (a
        Location, a link of the page)."""
        return self.prefix + hosting(uri)


def hosting(uri: str) -> str:
    """A CoAP URI as it goes into a Hosting HTTP URI (RFC 8075 5.3.2): an IPv6
    literal's brackets percent-encoded, everything else as it is."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    end = len(rest)
    for stop in ("/", "?"):
        at = rest.find(stop)
        if 0 <= at < end:
            end = at
    authority = rest[:end].replace("[", "%5B").replace("]", "%5D")
    return f"{scheme}://{authority}{rest[end:]}"


_ENCODED = re.compile(r"^coaps?(%2B(tcp|ws))?%3A%2F%2F", re.IGNORECASE)


def parse_target(target: str) -> Target:
    """The target CoAP URI of an HTTP request target; MappingError 400 (malformed, no
    scheme), 403 (multicast, section 8.4) or 501 (a scheme the proxy cannot reach)."""
    if target.startswith(HC_PREFIX):
        prefix, rest = HC_PREFIX, target[len(HC_PREFIX):]
    elif target.startswith("/"):
        prefix, rest = "/", target[1:]
    elif "://" in target:
        prefix, rest = "", target
    else:
        raise MappingError(400, f"bad request target {target!r}")
    if not rest:
        raise MappingError(400, "no target CoAP URI: the form is /hc/coap://HOST[:PORT]/PATH")
    if _ENCODED.match(rest):
        rest = unquote(rest)
    scheme, sep, after = rest.partition("://")
    if not sep or not scheme:
        raise MappingError(400, f"{rest!r} is not a CoAP URI (no scheme): the form is "
                                f"{prefix or '/'}coap://HOST[:PORT]/PATH")
    end = len(after)
    for stop in ("/", "?"):
        at = after.find(stop)
        if 0 <= at < end:
            end = at
    authority = re.sub("%5b", "[", after[:end], flags=re.IGNORECASE)
    authority = re.sub("%5d", "]", authority, flags=re.IGNORECASE)
    uri = f"{scheme.lower()}://{authority}{after[end:]}"
    if "#" in uri:
        raise MappingError(400, "a target CoAP URI has no #fragment")
    try:
        uri = formats.check_uri(uri, "target CoAP URI")
    except UsageError as exc:
        raise MappingError(400, f"{exc.what}: {exc.why}") from None
    scheme = formats.uri_scheme(uri)
    if scheme not in TARGET_SCHEMES:
        raise MappingError(501, f"{scheme}:// targets are not supported by this proxy "
                                f"(it has no DTLS keys); use one of "
                                + ", ".join(s + "://" for s in TARGET_SCHEMES))
    if formats.is_multicast_host(formats.uri_host(uri)):
        raise MappingError(403, "multicast targets are not proxied (RFC 8075 8.4)")
    return Target(prefix, uri)


# --------------------------------------------------------------------------- methods

# HTTP method -> CoAP method (client.METHODS names); HEAD is a GET whose body is not
# sent back (RFC 7252 10.2); FETCH and iPATCH (RFC 8132) pass as extension methods
HTTP_TO_COAP_METHOD = {"GET": "get", "HEAD": "get", "POST": "post", "PUT": "put", "DELETE": "delete",
                       "PATCH": "patch", "FETCH": "fetch", "IPATCH": "ipatch"}


def coap_method(http_method: str) -> str:
    """The CoAP method of an HTTP request; MappingError 501 for one CoAP has not
    (OPTIONS, TRACE, CONNECT, ...: RFC 7252 10.2)."""
    method = HTTP_TO_COAP_METHOD.get(http_method.upper())
    if method is None:
        raise MappingError(501, f"CoAP has no {http_method} method")
    return method


# CoAP method -> HTTP method (iPATCH is a PATCH that is idempotent; FETCH has no HTTP
# method and is answered 5.01)
COAP_TO_HTTP_METHOD = {"GET": "GET", "POST": "POST", "PUT": "PUT", "DELETE": "DELETE", "PATCH": "PATCH",
                       "IPATCH": "PATCH"}


def http_method(coap_method_name: str) -> str:
    method = COAP_TO_HTTP_METHOD.get(coap_method_name.upper())
    if method is None:
        raise MappingError("5.01", f"HTTP has no {coap_method_name} method")
    return method


# --------------------------------------------------------------------------- media types

COAP_PAYLOAD = "application/coap-payload"
EVENT_STREAM = "text/event-stream"
_CF_PARAM = re.compile(r"^\s*cf\s*=\s*\"?(\d{1,5})\"?\s*$", re.IGNORECASE)


def _split_media_type(value: str) -> tuple[str, list[str]]:
    parts = [p.strip() for p in value.split(";")]
    return parts[0].lower(), [p for p in parts[1:] if p]


def content_format(media_type: str) -> int | None:
    """The Content-Format of an HTTP media type (with its parameters), or None when
    CoAP has none for it. `application/coap-payload; cf=N` is N (RFC 8075 6.2)."""
    base, params = _split_media_type(media_type)
    if not base:
        return None
    if base == COAP_PAYLOAD:
        for param in params:
            found = _CF_PARAM.match(param)
            if found and int(found.group(1)) <= 0xFFFF:
                return int(found.group(1))
        return None
    number = formats.content_format_number(media_type)
    if number is None:
        # US-ASCII is a subset of UTF-8: text/plain; charset=us-ascii is Content-Format 0
        rest = [p for p in params if p.lower().replace(" ", "") not in ("charset=us-ascii", 'charset="us-ascii"')]
        if len(rest) < len(params):
            number = formats.content_format_number("; ".join([base, *rest]))
    return number


def request_content_format(content_type: str | None, content_encoding: str | None = None) -> int | None:
    """The Content-Format option of a request with this Content-Type (None: no header,
    no option); MappingError 415 when CoAP has no Content-Format for it (RFC 8075 6.1)."""
    if content_encoding and content_encoding.strip().lower() not in ("", "identity"):
        raise MappingError(415, f"content coding {content_encoding.strip()!r} has no CoAP Content-Format")
    if content_type is None or not content_type.strip():
        return None
    number = content_format(content_type)
    if number is None:
        raise MappingError(415, f"{content_type.strip()!r} has no CoAP Content-Format (send it as "
                                f"{COAP_PAYLOAD}; cf=N to give the number)")
    return number


def media_type(number: int | None) -> str | None:
    """The HTTP Content-Type of a Content-Format (None: no option)."""
    if number is None:
        return None
    return formats.content_format_name(number) or f"{COAP_PAYLOAD}; cf={number}"


@dataclass(frozen=True)
class Accept:
    content_format: int | None   # the CoAP Accept option (None: none)
    event_stream: bool           # text/event-stream was asked for: an observation


def parse_accept(value: str | None) -> Accept:
    """An HTTP Accept header as a CoAP Accept option: the most preferred media type
    that has a Content-Format (q order, then header order); a wildcard preferred to
    every mapped type, or nothing mapped, is no Accept option (RFC 8075 6.1: `*/*` MUST
    be none, an unmapped Accept is ignored). text/event-stream asks for an observation."""
    if not value:
        return Accept(None, False)
    items = []
    for order, item in enumerate(value.split(",")):
        base, params = _split_media_type(item)
        if not base:
            continue
        q = 1.0
        rest = []
        for param in params:
            name, _, val = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(val.strip())
                except ValueError:
                    q = 0.0
            else:
                rest.append(param)
        if q <= 0:
            continue
        items.append((-q, order, base, rest))
    items.sort()
    event_stream = any(base == EVENT_STREAM for _, _, base, _ in items)
    for _, _, base, params in items:
        if base == EVENT_STREAM:
            continue
        if base.endswith("/*"):
            return Accept(None, event_stream)
        number = content_format("; ".join([base, *params]))
        if number is not None:
            return Accept(number, event_stream)
    return Accept(None, event_stream)


# --------------------------------------------------------------------------- entity tags


def etag_header(etag: bytes) -> str:
    """A CoAP ETag (1-8 opaque bytes) as an HTTP entity tag: its hex, quoted."""
    return f'"{etag.hex()}"'


def parse_etags(value: str) -> list[bytes | None] | str:
    """An If-Match / If-None-Match header: "*" as the string "*", else one entry per
    entity tag: the CoAP ETag it names (an etag_header of this proxy), or None for
    one that cannot be a CoAP ETag (not hex, longer than 8 bytes)."""
    value = value.strip()
    if value == "*":
        return "*"
    out: list[bytes | None] = []
    for tag in re.findall(r'(?:W/)?"([^"]*)"', value):
        try:
            raw = bytes.fromhex(tag)
        except ValueError:
            out.append(None)
            continue
        out.append(raw if 1 <= len(raw) <= 8 else None)
    return out


# CoAP option numbers the mapping sets
IF_MATCH, ETAG, IF_NONE_MATCH = 1, 4, 5


def conditional_options(if_match: str | None, if_none_match: str | None) -> tuple[list[tuple[int, bytes]], bool]:
    """The CoAP options of HTTP preconditions (RFC 7252 5.10.8 and 5.10.6): If-Match
    "tag" -> If-Match, If-Match * -> If-Match (empty), If-None-Match * -> If-None-Match,
    If-None-Match "tag" -> ETag (a validation: 2.03 Valid comes back as 304).
    Returns (options, conditional GET). An If-Match none of whose tags can be a CoAP
    ETag cannot match: MappingError 412."""
    options: list[tuple[int, bytes]] = []
    validating = False
    if if_match is not None:
        tags = parse_etags(if_match)
        if tags == "*":
            options.append((IF_MATCH, b""))
        else:
            good = [t for t in tags if t is not None]
            if not good:
                raise MappingError(412, "If-Match names no entity tag this proxy gave (a CoAP ETag)")
            options += [(IF_MATCH, t) for t in good]
    if if_none_match is not None:
        tags = parse_etags(if_none_match)
        if tags == "*":
            options.append((IF_NONE_MATCH, b""))
        else:
            good = [t for t in tags if t is not None]
            options += [(ETAG, t) for t in good]
            validating = bool(good)
    return options, validating


# --------------------------------------------------------------------------- CoAP -> HTTP status

# RFC 8075 Table 2 (and, for the codes added later, the HTTP status each was modelled
# on: 4.09 and 4.22 in RFC 8132, 4.29 in RFC 8516)
STATUS = {
    (2, 1): 201, (2, 2): 200, (2, 3): 304, (2, 4): 200, (2, 5): 200,
    (4, 0): 400, (4, 1): 403, (4, 2): 400, (4, 3): 403, (4, 4): 404, (4, 5): 400, (4, 6): 406,
    (4, 9): 409, (4, 12): 412, (4, 13): 413, (4, 15): 415, (4, 22): 422, (4, 29): 429,
    (5, 0): 500, (5, 1): 501, (5, 2): 502, (5, 3): 503, (5, 4): 504, (5, 5): 502,
}
REASONS = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified", 400: "Bad Request",
           403: "Forbidden", 404: "Not Found", 406: "Not Acceptable", 409: "Conflict",
           412: "Precondition Failed", 413: "Content Too Large", 415: "Unsupported Media Type",
           422: "Unprocessable Content", 429: "Too Many Requests", 500: "Internal Server Error",
           501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


def code_text(cls: int, detail: int) -> str:
    return f"{cls}.{detail:02d}"


def http_status(cls: int, detail: int, has_payload: bool, conditional: bool = False,
                proxy_options: bool = False) -> tuple[int, str]:
    """The HTTP status and reason phrase of a CoAP response code (RFC 8075 section 7):

    - 2.02 Deleted and 2.04 Changed: 200 with a payload, 204 without (note 2);
    - 2.03 Valid: 304 to a conditional request (note 3), 200 otherwise (note 4);
    - 4.02 Bad Option: 400 when the options came from the client's request, 500 when
      the proxy added one (`proxy_options`: Block, Observe) (note 6);
    - 4.05 Method Not Allowed: 400 with the reason "CoAP server returned 4.05 ..." (note
      7: a 405 would need an Allow header, and the allowed methods are not known);
    - 2.31 Continue and 4.08 Request Entity Incomplete belong to block-wise transfers
      between the proxy and the server (note 10): one reaching here is 502;
    - a code Table 2 does not list: its class (2.xx 200, 4.xx 400, 5.xx 500)."""
    code = (cls, detail)
    if code in ((2, 31), (4, 8)):
        return 502, "Bad Gateway"
    if code in ((2, 2), (2, 4)):
        status = 200 if has_payload else 204
    elif code == (2, 3):
        status = 304 if conditional else 200
    elif code == (4, 2):
        status = 500 if proxy_options else 400
    elif code in STATUS:
        status = STATUS[code]
    else:
        status = {2: 200, 4: 400, 5: 500}.get(cls, 502)
    if code == (4, 5):
        return status, "CoAP server returned 4.05 Method Not Allowed"
    return status, REASONS.get(status, "")


def cache_control(max_age: int | None, cls: int, detail: int) -> list[tuple[str, str]]:
    """Max-Age as HTTP headers: Cache-Control max-age on a 2.05 (CoAP's default of 60 s
    when the option is absent, RFC 7252 5.10.5), Retry-After on a 5.03 or 4.29 that
    carries one (RFC 8075 note 8, RFC 8516)."""
    if (cls, detail) == (2, 5):
        return [("Cache-Control", f"max-age={60 if max_age is None else max_age}")]
    if (cls, detail) in ((5, 3), (4, 29)) and max_age is not None:
        return [("Retry-After", str(max_age))]
    return []


def location(target: Target, location_path: tuple[str, ...], location_query: tuple[str, ...]) -> str | None:
    """Location-Path/Location-Query of a 2.01 as an HTTP Location: the created
    resource's CoAP URI, mapped the way the client addressed the proxy."""
    if not location_path and not location_query:
        return None
    parts = urlsplit(target.uri)
    path = "/" + "/".join(quote(p, safe="!$&'()*+,;=:@") for p in location_path)
    query = "&".join(quote(q, safe="!$&'()*+,;=:@/?") for q in location_query)
    uri = f"{parts.scheme}://{parts.netloc}{path}" + (f"?{query}" if query else "")
    return target.mapped(uri)


# --------------------------------------------------------------------------- HTTP -> CoAP code

# HTTP 4xx/5xx -> CoAP code (the codes modelled on them); others: 4.00 or 5.00
ERROR_CODES = {400: "4.00", 401: "4.01", 403: "4.03", 404: "4.04", 405: "4.05", 406: "4.06", 409: "4.09",
               410: "4.04", 412: "4.12", 413: "4.13", 415: "4.15", 422: "4.22", 429: "4.29",
               500: "5.00", 501: "5.01", 502: "5.02", 503: "5.03", 504: "5.04"}


def coap_code(method: str, status: int, validating: bool = False) -> str:
    """The CoAP response code ("2.05") of an HTTP status answering `method` (the CoAP
    method name) (RFC 7252 10.1): a GET's 2xx is 2.05 (304 to a validation: 2.03), a
    DELETE's 2.02, a PUT's or POST's 201 2.01 and any other 2xx 2.04; 4xx and 5xx by the
    codes modelled on them, else 4.00 / 5.00; a redirect that was not followed, 5.02."""
    method = method.upper()
    if 200 <= status < 300:
        if method in ("GET", "FETCH"):
            return "2.05"
        if method == "DELETE":
            return "2.02"
        if status == 201 and method in ("PUT", "POST"):
            return "2.01"
        return "2.04"
    if status == 304:
        return "2.03" if validating else "5.02"
    if status in ERROR_CODES:
        return ERROR_CODES[status]
    if 400 <= status < 500:
        return "4.00"
    return "5.00" if status >= 500 else "5.02"


def header(headers: list[tuple[str, str]], name: str) -> str | None:
    """The first value of a header (names compared without case)."""
    name = name.lower()
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def max_age(headers: list[tuple[str, str]], status: int) -> int | None:
    """CoAP Max-Age of an HTTP response: Cache-Control max-age (no-store, no-cache: 0),
    Retry-After (seconds) on a 503 or 429."""
    if status in (503, 429):
        retry = header(headers, "retry-after")
        if retry is not None and retry.strip().isdigit():
            return min(int(retry.strip()), 0xFFFFFFFF)
    control = header(headers, "cache-control")
    if control is None:
        return None
    for item in control.split(","):
        name, _, value = item.strip().partition("=")
        name = name.strip().lower()
        if name in ("no-store", "no-cache"):
            return 0
        if name in ("max-age", "s-maxage") and value.strip().strip('"').isdigit():
            return min(int(value.strip().strip('"')), 0xFFFFFFFF)
    return None


def proxy_url(proxy_uri: str | None, proxy_scheme: str | None, uri_host: str | None, uri_port: int | None,
              uri_path: tuple[str, ...], uri_query: tuple[str, ...]) -> str:
    """The HTTP URL of a CoAP request to the proxy: its Proxy-Uri, or Proxy-Scheme with
    Uri-Host, Uri-Port, Uri-Path and Uri-Query (RFC 7252 5.10.2, 6.5). MappingError
    "4.00" for a malformed one, "5.05" for a scheme other than http and https."""
    if proxy_uri is not None:
        url = proxy_uri.strip()
        scheme = url.partition(":")[0].lower()
    else:
        scheme = (proxy_scheme or "").strip().lower()
        if scheme in ("http", "https"):
            if not uri_host:
                raise MappingError("4.00", "Proxy-Scheme needs Uri-Host (the HTTP server's name)")
            host = f"[{uri_host}]" if ":" in uri_host and not uri_host.startswith("[") else uri_host
            port = f":{uri_port}" if uri_port else ""
            path = "/" + "/".join(quote(p, safe="!$&'()*+,;=:@") for p in uri_path)
            query = "&".join(quote(q, safe="!$&'()*+,;=:@/?") for q in uri_query)
            url = f"{scheme}://{host}{port}{path}" + (f"?{query}" if query else "")
    if scheme not in ("http", "https"):
        raise MappingError("5.05", f"this proxy forwards to http:// and https:// only, not {scheme or '?'}://")
    try:
        parts = urlsplit(url)
        parts.port
    except ValueError as exc:
        raise MappingError("4.00", f"bad Proxy-Uri {url!r}: {exc}") from None
    if not parts.hostname:
        raise MappingError("4.00", f"bad Proxy-Uri {url!r}: no host")
    if parts.fragment or any(c.isspace() or ord(c) < 32 for c in url):
        raise MappingError("4.00", f"bad Proxy-Uri {url!r}")
    return url


# --------------------------------------------------------------------------- server-sent events

_LINES = re.compile(r"\r\n|\r|\n")


def sse_event(payload: bytes, event_id: int | None = None, event: str | None = None) -> bytes:
    """One server-sent event carrying a CoAP payload: the payload as `data:` lines when
    it is UTF-8 text (an event of the default type, `message`), else base64 in an event
    named `base64`. An empty payload is one empty `data:` line."""
    try:
        text = payload.decode("utf-8")
        if "\0" in text:
            raise UnicodeDecodeError("utf-8", payload, 0, 1, "NUL")
    except UnicodeDecodeError:
        text = base64.b64encode(payload).decode("ascii")
        event = event or "base64"
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event:
        lines.append(f"event: {event}")
    lines += ["data: " + line if line else "data:" for line in _LINES.split(text)]
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def sse_comment(text: str) -> bytes:
    return "".join(f": {line}\n" for line in _LINES.split(text)).encode("utf-8") + b"\n"

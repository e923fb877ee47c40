"""HTTP without a library: URLs, header fields, sizes, and the two streaming formats
(server-sent events, newline-delimited JSON). Pure functions, checked before anything
connects (a bad -H is exit 2 at once), shared by client.py, server.py and the CLI."""

from __future__ import annotations

from iotctl.errors import UsageError

# RFC 9110 5.1: a field name is a token
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# RFC 9110 5.5: a field value is visible characters, spaces and tabs (and obs-text);
# CR, LF, NUL and the other controls never: they would split or end the header block
_BAD_VALUE_CHARS = frozenset(chr(c) for c in (*range(0, 9), *range(10, 32), 127))

# headers that describe one connection (RFC 9110 7.6.1) or the framing of one message:
# never user headers, never carried from one message to another
HOP_BY_HOP = frozenset((
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    "proxy-authenticate", "proxy-authorization", "content-length", "host",
))
# what a sender sets from other fields (the content type) or owns (credentials, caching
# validators of one response): not carried across as user headers either
NOT_PORTABLE = HOP_BY_HOP | frozenset((
    "content-type", "authorization", "cookie", "set-cookie", "date", "server", "user-agent", "accept",
    "accept-encoding", "content-encoding", "etag", "last-modified", "expect", "via", "age",
    "www-authenticate", "location", "vary", "cache-control", "expires", "pragma",
))
CREDENTIALS = frozenset(("authorization", "proxy-authorization"))

SCHEME_PORTS = {"http": 80, "https": 443}


def valid_name(name: str) -> bool:
    return bool(name) and all(c in _TOKEN_CHARS for c in name)


def valid_value(value: str) -> bool:
    return _BAD_VALUE_CHARS.isdisjoint(value)


def check_header(name: str, value: str, what: str = "-H") -> tuple[str, str]:
    """A header as given by the user: a token name, a value without CR, LF or NUL."""
    if not valid_name(name):
        raise UsageError(f"bad header name {name!r} in {what}",
                         "a name is letters, digits and !#$%&'*+-.^_`|~ (no spaces, no colon)")
    if not valid_value(value):
        raise UsageError(f"bad header value for {name} in {what}",
                         "control characters (CR, LF, NUL, ...) are not allowed in a value")
    return name, value


def parse_header_option(text: str) -> tuple[str, str | None]:
    """`-H 'Name: value'` (curl) -> (Name, value); `-H 'Name:'` -> (Name, None): remove
    that header (as curl does); `-H 'Name;'` -> (Name, ""): send it empty."""
    if text.endswith(";") and ":" not in text:
        name, value = text[:-1].strip(), ""
        check_header(name, value)
        return name, value
    if ":" not in text:
        raise UsageError(f"bad -H {text!r}", "give 'Name: value' ('Name:' removes a header, 'Name;' sends it empty)")
    name, value = text.split(":", 1)
    name, value = name.strip(), value.strip(" \t")
    check_header(name, value)
    return name, (value if value else None)


def portable_headers(pairs) -> list[tuple[str, str]]:
    """The user headers among `pairs`: valid names and values that are not hop-by-hop,
    framing, credentials or fields a sender sets itself."""
    out = []
    for name, value in pairs:
        if not isinstance(name, str) or not isinstance(value, str):
            continue
        if name.lower() in NOT_PORTABLE or not valid_name(name) or not valid_value(value):
            continue
        out.append((name, value))
    return out


def masked_value(name: str, value: str) -> str:
    """A header value as shown: credentials keep their scheme only (`Basic ****`)."""
    if name.lower() in CREDENTIALS:
        scheme = value.split(" ", 1)[0] if " " in value else ""
        return f"{scheme} ****" if scheme else "****"
    return value


def header(pairs, name: str) -> str | None:
    """The first value of header `name` (any case) in a list of pairs."""
    name = name.lower()
    for key, value in pairs:
        if key.lower() == name:
            return value
    return None


def phrase(status: int) -> str:
    """The standard reason phrase of a status (a server may send none)."""
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


AUTH_HINT = "give -u USER -P PASSWORD, --token TOKEN or a profile's [http] credentials"


def refusal_text(status: int, reason: str, body: bytes = b"") -> tuple[int, str, str | None]:
    """What a 4xx/5xx answer says: (exit status, why, hint). A refused login (401, 407)
    exits 4, the rest 6; the start of a short text body says why."""
    why = f"{status} {reason or phrase(status)}".rstrip()
    text = body[:200].decode("utf-8", "replace").strip().replace("\n", " ")
    if text and len(text) < 200 and "<" not in text[:1]:
        why += f": {text}"
    if status in (401, 407):
        return 4, why, AUTH_HINT
    return 6, why, None


def media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


# --------------------------------------------------------------------------- URLs


class Url:
    """An http(s) URL split for a request: `target` is path?query as sent on the
    request line; `shown` never has the password."""

    __slots__ = ("scheme", "host", "port", "target", "username", "password", "fragment", "shown")

    def __init__(self, scheme, host, port, target, username=None, password=None, fragment=""):
        self.scheme, self.host, self.port, self.target = scheme, host, port, target
        self.username, self.password, self.fragment = username, password, fragment
        self.shown = self.text(userinfo=False)

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def authority(self) -> str:
        """host[:port] as the Host header says it (the port only when not the default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == SCHEME_PORTS[self.scheme] else f"{host}:{self.port}"

    def text(self, userinfo: bool = False) -> str:
        user = ""
        if userinfo and self.username is not None:
            from urllib.parse import quote

            user = quote(self.username, safe="") + (":****" if self.password is not None else "") + "@"
        return f"{self.scheme}://{user}{self.authority}{self.target}"

    def join(self, location: str) -> "Url":
        """The URL a Location header points to, relative to this one (no userinfo)."""
        from urllib.parse import urljoin

        return parse_url(urljoin(self.text(), location), keep_fragment=False)

    def __repr__(self) -> str:
        return f"Url({self.shown!r})"


def parse_url(text: str, default_scheme: str = "http", keep_fragment: bool = True) -> Url:
    """`http[s]://[user[:pass]@]host[:port][/path][?query][#fragment]`; without a scheme
    (`127.0.0.1:8080/x`, `localhost/x`, as httpie takes them) `default_scheme`; a bad one
    is exit 2 and its message never shows the password."""
    from urllib.parse import unquote, urlsplit

    if "://" not in text:
        text = f"{default_scheme}://{text}"
    shown = _masked(text)
    if any(c in text for c in "\r\n\x00 \t"):
        raise UsageError(f"bad URL {shown!r}", "spaces and control characters must be percent-encoded")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"bad URL {shown!r}", str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEME_PORTS:
        raise UsageError(f"bad URL {shown!r}", "the scheme must be http:// or https://")
    if not parts.hostname:
        raise UsageError(f"bad URL {shown!r}", "no host")
    target = parts.path or "/"
    if not target.startswith("/"):
        target = "/" + target
    if parts.query:
        target += "?" + parts.query
    return Url(scheme, parts.hostname, port or SCHEME_PORTS[scheme], target,
               unquote(parts.username) if parts.username is not None else None,
               unquote(parts.password) if parts.password is not None else None,
               parts.fragment if keep_fragment else "")


def _masked(url: str) -> str:
    """endpoint.mask_url (the password as ****) without importing click."""
    scheme, sep, rest = url.partition("://")
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if not sep or "@" not in authority:
        return url
    userinfo, _, host = authority.rpartition("@")
    if ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:****@{host}{rest[len(authority):]}"


# --------------------------------------------------------------------------- sizes


_SIZE = r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(i?b?)\s*$"


def parse_size(text: str, what: str = "--max-size") -> int:
    """`1048576`, `64k`, `16M`, `16MiB`, `1G` -> bytes (k = 1024)."""
    import re

    m = re.match(_SIZE, str(text), re.IGNORECASE)
    if not m:
        raise UsageError(f"bad {what} {text!r}", "give bytes, or a number with k, M or G (e.g. 16M)")
    number, unit = float(m.group(1)), m.group(2).lower()
    size = int(number * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit])
    if size < 1:
        raise UsageError(f"bad {what} {text!r}", "must be at least 1 byte")
    return size


def size_text(n: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n} B"


# --------------------------------------------------------------------------- streams


class EventStream:
    """A text/event-stream parser (the WHATWG HTML "server-sent events" rules): feed
    bytes as they come, take complete events. Each event is a dict with `data` (the
    data lines joined by LF), `event` (type, default "message"), `id` (the last event
    id, kept across events), `retry` (the last reconnection time given, ms). Comments and events without data are
    skipped, as EventSource does. `limit`: the longest line or event (bytes); longer is
    a ValueError (a stream that never sends a line end is bounded)."""

    def __init__(self, limit: int = 1 << 20):
        self.limit = limit
        self.buffer = b""
        self.data: list[str] = []
        self.size = 0
        self.event = ""
        self.last_id = ""
        self.retry: int | None = None
        self.first = True

    def feed(self, chunk: bytes) -> list[dict]:
        out: list[dict] = []
        buffer = self.buffer + chunk
        if self.first and buffer:
            if buffer.startswith(b"\xef\xbb\xbf"):
                buffer = buffer[3:]
            elif len(buffer) < 3 and b"\xef\xbb\xbf".startswith(buffer):
                self.buffer = buffer
                return out
            self.first = False
        start = 0
        n = len(buffer)
        while start < n:
            cr = buffer.find(b"\r", start)
            lf = buffer.find(b"\n", start)
            if cr < 0 and lf < 0:
                break
            if cr >= 0 and (lf < 0 or cr < lf):
                if cr + 1 == n:
                    break  # CR at the end: it may be CRLF, wait for the next byte
                end, nxt = cr, cr + 2 if buffer[cr + 1:cr + 2] == b"\n" else cr + 1
            else:
                end, nxt = lf, lf + 1
            self._line(buffer[start:end].decode("utf-8", "replace"), out)
            start = nxt
        self.buffer = buffer[start:]
        if len(self.buffer) > self.limit:
            raise ValueError(f"an event-stream line longer than {size_text(self.limit)}")
        return out

    def _line(self, line: str, out: list[dict]) -> None:
        if not line:
            if self.data:
                event = {"data": "\n".join(self.data), "event": self.event or "message", "id": self.last_id}
                if self.retry is not None:
                    event["retry"] = self.retry
                out.append(event)
            self.data, self.size, self.event = [], 0, ""  # the id and the retry time stay
            return
        if line.startswith(":"):
            return
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self.size += len(value) + 1
            if self.size > self.limit:
                raise ValueError(f"an event larger than {size_text(self.limit)}")
            self.data.append(value)
        elif field == "event":
            self.event = value
        elif field == "id":
            if "\x00" not in value:
                self.last_id = value
        elif field == "retry":
            if value.isdigit():
                self.retry = int(value)


class Lines:
    """Newline-delimited records (NDJSON, JSON Lines): feed bytes, take complete lines
    without their LF (and a CR before it); blank lines are skipped. A line longer than
    `limit` bytes is a ValueError."""

    def __init__(self, limit: int = 1 << 20):
        self.limit = limit
        self.buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self.buffer + chunk
        parts = buffer.split(b"\n")
        self.buffer = parts.pop()
        if len(self.buffer) > self.limit:
            raise ValueError(f"a line longer than {size_text(self.limit)}")
        out = []
        for line in parts:
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.limit:
                raise ValueError(f"a line longer than {size_text(self.limit)}")
            if line.strip():
                out.append(line)
        return out

    def end(self) -> list[bytes]:
        rest, self.buffer = self.buffer, b""
        return [rest.rstrip(b"\r")] if rest.strip() else []


STREAM_TYPES = {
    "text/event-stream": "sse",
    "application/x-ndjson": "ndjson", "application/ndjson": "ndjson", "application/jsonl": "ndjson",
    "application/x-jsonlines": "ndjson", "application/jsonlines": "ndjson", "application/json-seq": "ndjson",
}


def stream_format(content_type: str | None, wanted: str = "auto") -> str:
    """"sse" or "ndjson" for a response's content type (`wanted` when not "auto");
    anything else is read as lines."""
    if wanted != "auto":
        return wanted
    return STREAM_TYPES.get(media_type(content_type), "ndjson")

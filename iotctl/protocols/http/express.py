"""The express lane for `iotctl http get URL` (see iotctl/express.py): one GET over a
plain socket, without click, asyncio or h11, printed raw. Only plain http:// (no TLS,
no credentials, no redirects followed), at most one -H, -W, --quiet, -o raw or a
piped stdout; anything else goes the normal way.

Its output, errors and exit statuses are those of the normal path (the Requester on
the send driver): tests/protocols/test_http_express.py compares both on a corpus
against nginx and fake servers. A response it does not fully understand (garbage, a
body cut short, more than --max-size) is left to the normal path, which asks again: a
GET is safe to repeat. A timeout is its own (asking again would double the wait).
"""

from __future__ import annotations

import sys
import time

from iotctl.express import Options, connect_error, emit, error, positive, status

OPTIONS = Options({
    "-H": ("header", "value"), "--header": ("header", "value"),
    "-W": ("timeout", "value"), "--timeout": ("timeout", "value"),
    "-o": ("output", "value"), "--output": ("output", "value"),
    "--quiet": ("quiet", "flag"),
}, positional="url")

MAX_SIZE = 16 << 20  # the normal path's --max-size default
MAX_HEAD = 64 * 1024
CONNECT_CAP = 30.0  # the normal path connects within min(-W, 30 s)


class _Give(Exception):
    """Not understood: the normal path runs the command line."""


def get(argv: list[str]) -> int | None:
    if not argv or argv[0] != "get":
        return None
    v = OPTIONS.take(argv[1:])
    if v is None or "url" not in v:
        return None
    output = v.get("output", "auto")
    if output not in ("auto", "raw") or (output == "auto" and sys.stdout.isatty()):
        return None  # pretty output needs rich: the normal path
    timeout = positive(v.get("timeout", "30"))
    if timeout is None:
        return None
    from iotctl.errors import UsageError
    from iotctl.protocols.http import fields

    text = v["url"]
    if text.startswith(":"):
        rest = text[1:]
        text = "localhost" + (":" + rest if rest[:1].isdigit() else rest)
    elif text.startswith("/"):
        return None  # --base-url (a profile's): the normal path
    try:
        url = fields.parse_url(text)
        header = fields.parse_header_option(v["header"]) if "header" in v else None
    except UsageError:
        return None
    if url.scheme != "http" or url.username is not None or not url.host.isascii():
        return None
    head = _request_head(url, header)
    try:
        return _run(url, head, timeout, bool(v.get("quiet")), fields)
    except _Give:
        return None
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        error(f"GET {url.shown} interrupted")
        return 130


def _request_head(url, header) -> bytes:
    """The request as the normal path writes it (client.Client.request_headers, h11)."""
    out: dict[str, tuple[str, str]] = {}
    for name, value in (("Host", url.authority), ("User-Agent", "iotctl"), ("Accept", "*/*")):
        out[name.lower()] = (name, value)
    if header is not None:
        name, value = header
        if value is None:
            out.pop(name.lower(), None)
        else:
            out[name.lower()] = (name, value)
    out.pop("content-length", None)
    lines = [f"GET {url.target} HTTP/1.1"] + [f"{k}: {v}" for k, v in out.values()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _run(url, head: bytes, timeout: float, quiet: bool, fields) -> int:
    import socket

    started = time.monotonic()
    deadline = started + timeout
    connect_within = min(timeout, CONNECT_CAP)
    what = f"cannot connect to {url.scheme}://{url.authority}"
    try:
        sock = socket.create_connection((url.host, url.port), timeout=connect_within)
    except socket.timeout:
        error(what, f"no connection within {connect_within:g} s")
        return 5
    except OSError as exc:
        code, why, hint = connect_error(what, exc)
        error(what, why, hint)
        return code
    with sock:
        try:
            sock.sendall(head)
            status_code, reason, headers, body = _response(sock, deadline)
        except socket.timeout:
            error(f"GET {url.shown}", f"no complete response within {timeout:g} s")
            return 5
        except OSError:
            raise _Give() from None
    if status_code >= 400:
        code, why, hint = fields.refusal_text(status_code, reason, body)
        error(f"GET {url.shown}", why, hint)
        return code
    if 300 <= status_code and not quiet:
        location = fields.header(headers, "location")
        if location:
            sys.stderr.write(f"iotctl: {status_code} {reason}: Location: {location} (-L follows it)\n")
            sys.stderr.flush()
    if not body:
        status(f"GET {url.shown}: {status_code} {reason}", quiet)
        return 0
    return emit(body + b"\n")


def _response(sock, deadline: float):
    """(status, reason, headers, body) of the final response, or _Give."""
    buffer = b""
    while True:
        while b"\r\n\r\n" not in buffer:
            if len(buffer) > MAX_HEAD:
                raise _Give()
            buffer += _recv(sock, deadline)
        raw, buffer = buffer.split(b"\r\n\r\n", 1)
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or parts[0] not in ("HTTP/1.1", "HTTP/1.0") or not parts[1].isdigit() \
                or len(parts[1]) != 3:
            raise _Give()
        status_code = int(parts[1])
        reason = parts[2] if len(parts) > 2 else ""
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip() or any(c in name for c in " \t"):
                raise _Give()
            headers.append((name, value.strip(" \t")))
        if 100 <= status_code < 200:
            if status_code == 101:
                raise _Give()
            continue
        break
    lowered = {k.lower(): v for k, v in headers}
    if any(k.lower() == "transfer-encoding" for k, _ in headers):
        if lowered["transfer-encoding"].strip().lower() != "chunked" or "content-length" in lowered:
            raise _Give()
        body = _chunked(sock, buffer, deadline)
    elif "content-length" in lowered:
        values = {v.strip() for k, v in headers if k.lower() == "content-length"}
        length = values.pop() if len(values) == 1 else ""
        if not length.isdigit() or int(length) > MAX_SIZE or status_code in (204, 304):
            if status_code in (204, 304) and length in ("", "0"):
                return status_code, reason, headers, b""
            raise _Give()
        need = int(length)
        while len(buffer) < need:
            buffer += _recv(sock, deadline)
        body = buffer[:need]
    elif status_code in (204, 304):
        body = b""
    else:  # the body ends with the connection
        chunks = [buffer]
        size = len(buffer)
        while True:
            chunk = _recv(sock, deadline, eof_ok=True)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_SIZE:
                raise _Give()
            chunks.append(chunk)
        body = b"".join(chunks)
    return status_code, reason, headers, body


def _chunked(sock, buffer: bytes, deadline: float) -> bytes:
    body = []
    size = 0
    while True:
        while b"\r\n" not in buffer:
            if len(buffer) > 4096:
                raise _Give()
            buffer += _recv(sock, deadline)
        line, buffer = buffer.split(b"\r\n", 1)
        digits = line.split(b";", 1)[0].strip()
        try:
            n = int(digits, 16)
        except ValueError:
            raise _Give() from None
        if n == 0:
            while b"\r\n\r\n" not in b"\r\n" + buffer:  # trailers end with an empty line
                if len(buffer) > 4096:
                    raise _Give()
                buffer += _recv(sock, deadline)
            return b"".join(body)
        size += n
        if size > MAX_SIZE:
            raise _Give()
        while len(buffer) < n + 2:
            buffer += _recv(sock, deadline)
        if buffer[n:n + 2] != b"\r\n":
            raise _Give()
        body.append(buffer[:n])
        buffer = buffer[n + 2:]


def _recv(sock, deadline: float, eof_ok: bool = False) -> bytes:
    import socket

    left = deadline - time.monotonic()
    if left <= 0:
        raise socket.timeout()
    sock.settimeout(left)
    data = sock.recv(65536)
    if not data and not eof_ok:
        raise _Give()  # closed early: the normal path says how
    return data

"""CoAP names and numbers without aiocoap: content formats, option numbers, URIs.

Pure functions, shared by the commands (to validate what the user typed before any
network library is imported) and by client.py (to describe what came back).
"""

from __future__ import annotations

import re

from iotctl.errors import UsageError

# --------------------------------------------------------------------------- content formats

# IANA "CoAP Content-Formats" (the ones worth knowing by name)
CONTENT_FORMATS: dict[int, str] = {
    0: "text/plain; charset=utf-8",
    16: 'application/cose; cose-type="cose-encrypt0"',
    17: 'application/cose; cose-type="cose-mac0"',
    18: 'application/cose; cose-type="cose-sign1"',
    19: "application/ace+cbor",
    21: "image/gif",
    22: "image/jpeg",
    23: "image/png",
    40: "application/link-format",
    41: "application/xml",
    42: "application/octet-stream",
    47: "application/exi",
    50: "application/json",
    51: "application/json-patch+json",
    52: "application/merge-patch+json",
    60: "application/cbor",
    61: "application/cwt",
    62: "application/multipart-core",
    63: "application/cbor-seq",
    96: 'application/cose; cose-type="cose-encrypt"',
    97: 'application/cose; cose-type="cose-mac"',
    98: 'application/cose; cose-type="cose-sign"',
    101: "application/cose-key",
    102: "application/cose-key-set",
    110: "application/senml+json",
    111: "application/sensml+json",
    112: "application/senml+cbor",
    113: "application/sensml+cbor",
    114: "application/senml-exi",
    115: "application/sensml-exi",
    256: "application/coap-group+json",
    257: "application/concise-problem-details+cbor",
    310: "application/senml+xml",
    311: "application/sensml+xml",
    320: "application/senml-etch+json",
    322: "application/senml-etch+cbor",
    340: "application/yang-data+cbor",
    432: "application/td+json",
    10001: "application/oscore",
    10002: "application/javascript",
    11542: "application/vnd.oma.lwm2m+tlv",
    11543: "application/vnd.oma.lwm2m+json",
    11544: "application/vnd.oma.lwm2m+cbor",
    20000: "text/css",
    30000: "image/svg+xml",
}

# short names people type (aiocoap-client and coap-client habits)
ALIASES: dict[str, int] = {
    "text": 0, "plain": 0, "text/plain": 0, "txt": 0,
    "link": 40, "link-format": 40, "linkformat": 40,
    "xml": 41,
    "octet-stream": 42, "octet": 42, "binary": 42, "bin": 42,
    "exi": 47,
    "json": 50,
    "json-patch": 51, "json-patch+json": 51,
    "merge-patch": 52, "merge-patch+json": 52,
    "cbor": 60,
    "cbor-seq": 63,
    "senml": 110, "senml+json": 110, "senml-json": 110,
    "sensml+json": 111,
    "senml+cbor": 112, "senml-cbor": 112,
    "sensml+cbor": 113,
    "td+json": 432,
    "lwm2m+tlv": 11542, "lwm2m+json": 11543, "lwm2m+cbor": 11544,
}

COMMON_NAMES = ("text/plain", "application/json", "application/cbor", "application/link-format",
                "application/senml+json", "application/senml+cbor", "application/octet-stream")


def _norm(media_type: str) -> str:
    return re.sub(r"\s*;\s*", ";", media_type.strip().lower())


_BY_NAME: dict[str, int] = {}
for _number, _name in CONTENT_FORMATS.items():
    _BY_NAME.setdefault(_norm(_name), _number)
for _alias, _number in ALIASES.items():
    _BY_NAME.setdefault(_alias, _number)
    _BY_NAME.setdefault("application/" + _alias, _number)


def parse_content_format(text: str, option: str = "--content-format") -> int:
    """A content format given by name ('application/json', 'json') or number ('50')."""
    value = text.strip()
    if value.isdigit():
        number = int(value)
        if number > 0xFFFF:
            raise UsageError(f"{option} {text}", "a content-format number is 0..65535")
        return number
    number = _BY_NAME.get(_norm(value))
    if number is None:
        raise UsageError(f"{option} {text!r}", "unknown content-format name; use a number (0..65535) "
                         f"or one of {', '.join(COMMON_NAMES)}")
    return number


def content_format_number(media_type: str) -> int | None:
    """The Content-Format number of a media type from another protocol's message
    (MQTT 5, AMQP, STOMP, HTTP content types), or None when CoAP has none for it. A
    charset=utf-8 parameter is CoAP's default for text and JSON and may be left out."""
    norm = _norm(media_type)
    number = _BY_NAME.get(norm)
    if number is None and norm.endswith(";charset=utf-8"):
        number = _BY_NAME.get(norm[: -len(";charset=utf-8")])
    if number is None and norm.endswith(';charset="utf-8"'):
        number = _BY_NAME.get(norm[: -len(';charset="utf-8"')])
    return number


def content_format_name(number: int | None) -> str | None:
    """The media type for a content-format number, or None when it has no known name."""
    if number is None:
        return None
    return CONTENT_FORMATS.get(number)


# --------------------------------------------------------------------------- options

UINT, STRING, OPAQUE, EMPTY, BLOCK = "uint", "string", "opaque", "empty", "block"

# number -> (name, value format); RFC 7252, 7641, 7959, 8613, 8768, 9175, 7967, 9177
OPTIONS: dict[int, tuple[str, str]] = {
    1: ("If-Match", OPAQUE),
    3: ("Uri-Host", STRING),
    4: ("ETag", OPAQUE),
    5: ("If-None-Match", EMPTY),
    6: ("Observe", UINT),
    7: ("Uri-Port", UINT),
    8: ("Location-Path", STRING),
    9: ("OSCORE", OPAQUE),
    11: ("Uri-Path", STRING),
    12: ("Content-Format", UINT),
    14: ("Max-Age", UINT),
    15: ("Uri-Query", STRING),
    16: ("Hop-Limit", UINT),
    17: ("Accept", UINT),
    19: ("Q-Block1", BLOCK),
    20: ("Location-Query", STRING),
    21: ("EDHOC", EMPTY),
    23: ("Block2", BLOCK),
    27: ("Block1", BLOCK),
    28: ("Size2", UINT),
    31: ("Q-Block2", BLOCK),
    35: ("Proxy-Uri", STRING),
    39: ("Proxy-Scheme", STRING),
    60: ("Size1", UINT),
    252: ("Echo", OPAQUE),
    258: ("No-Response", UINT),
    292: ("Request-Tag", OPAQUE),
}
_OPTION_BY_NAME = {name.lower(): number for number, (name, _) in OPTIONS.items()}


def option_number(text: str) -> int:
    """An option given by number ('2048') or name ('If-Match', case-insensitive)."""
    value = text.strip()
    if value.isdigit():
        number = int(value)
        if not 0 < number <= 0xFFFF:
            raise UsageError(f"--option {text}", "an option number is 1..65535")
        return number
    number = _OPTION_BY_NAME.get(value.lower())
    if number is None:
        raise UsageError(f"--option {text!r}", "unknown option name; use its number")
    return number


def uint_bytes(value: int) -> bytes:
    """The shortest big-endian encoding of a CoAP uint (0 is the empty string)."""
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def parse_option(text: str) -> tuple[int, bytes]:
    """`-O NUM=VALUE` (also `NUM,VALUE` as coap-client writes it, or `NAME=VALUE`).

    VALUE starting with 0x is hex; a decimal VALUE of a uint option (Max-Age, Accept...)
    is encoded as a uint; anything else is sent as UTF-8 text. An empty VALUE is an
    empty option (If-None-Match).
    """
    match = re.match(r"^\s*([A-Za-z0-9-]+)\s*[=,](.*)$", text, re.S)
    if match is None:
        if re.fullmatch(r"\s*[A-Za-z0-9-]+\s*", text):
            return option_number(text), b""
        raise UsageError(f"--option {text!r}", "expected NUM=VALUE (VALUE may be 0x-hex), e.g. -O 2048=0x0102")
    number = option_number(match.group(1))
    value = match.group(2)
    fmt = OPTIONS.get(number, ("", OPAQUE))[1]
    if value[:2].lower() == "0x":
        digits = value[2:].replace(" ", "").replace(":", "")
        try:
            data = bytes.fromhex(digits)
        except ValueError:
            raise UsageError(f"--option {text!r}", "the value after 0x is not valid hex") from None
    elif fmt in (UINT, BLOCK) and value.strip().isdigit():
        data = uint_bytes(int(value.strip()))
    else:
        data = value.encode("utf-8", "surrogateescape")
    if fmt in (UINT, BLOCK) and len(data) > 4:
        raise UsageError(f"--option {text!r}", f"option {number} is a uint of at most 4 bytes")
    if len(data) > 1034:
        raise UsageError(f"--option {text!r}", "an option value is at most 1034 bytes")
    return number, data


def option_name(number: int) -> str:
    return OPTIONS.get(number, (str(number), OPAQUE))[0]


def option_display(number: int, raw: bytes):
    """A JSON-friendly value of a received option (for the envelope's meta.options)."""
    fmt = OPTIONS.get(number, ("", OPAQUE))[1]
    if fmt == UINT:
        return int.from_bytes(raw, "big")
    if fmt == BLOCK:
        value = int.from_bytes(raw, "big")
        return f"{value >> 4}/{(value >> 3) & 1}/{2 ** ((value & 7) + 4)}"
    if fmt == EMPTY:
        return "" if not raw else "0x" + raw.hex()
    if fmt == STRING:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return "0x" + raw.hex()


def options_meta(options: list[tuple[int, bytes]], skip: tuple[int, ...] = ()) -> dict:
    """{name: value} of a message's options; repeated options become lists."""
    out: dict = {}
    for number, raw in options:
        if number in skip:
            continue
        name = option_name(number)
        value = option_display(number, raw)
        if name in out:
            if not isinstance(out[name], list):
                out[name] = [out[name]]
            out[name].append(value)
        else:
            out[name] = value
    return out


# --------------------------------------------------------------------------- block sizes

SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024 ** 2, "mb": 1000 ** 2,
              "mib": 1024 ** 2, "g": 1024 ** 3, "gb": 1000 ** 3, "gib": 1024 ** 3}


def parse_size(text: str, option: str = "--max-size") -> int:
    """A byte count: 65536, 64k, 64KiB, 16M, 16MiB, 1G (k/M/G are binary; kB/MB/GB decimal)."""
    import re

    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).lower() if m else None
    if m is None or unit not in SIZE_UNITS or int(m.group(1)) == 0:
        raise UsageError(f"{option} {text}", "expected a positive size in bytes, e.g. 65536, 64k, 16M, 16MiB")
    return int(m.group(1)) * SIZE_UNITS[unit]


BLOCK_SIZES = (16, 32, 64, 128, 256, 512, 1024)


def block_szx(size: int) -> int:
    """The SZX exponent of a block size (16..1024, a power of two)."""
    if size not in BLOCK_SIZES:
        raise UsageError(f"--block-size {size}", f"must be one of {', '.join(map(str, BLOCK_SIZES))}")
    return BLOCK_SIZES.index(size)


# --------------------------------------------------------------------------- URIs

SCHEMES = {"coap": 5683, "coaps": 5684, "coap+tcp": 5683, "coaps+tcp": 5684,
           "coap+ws": 80, "coaps+ws": 443}


def check_uri(uri: str, what: str = "URI") -> str:
    """Validate a CoAP URI (scheme, host, numeric port); a bad one is a usage error."""
    from urllib.parse import urlsplit

    from iotctl.endpoint import mask_url

    text = uri.strip()
    uri = mask_url(uri)  # as shown in an error: never a password
    if "://" not in text:
        hint = None
        if text and not text.startswith("/"):
            hint = f"did you mean coap://{text}?"
        raise UsageError(f"bad {what} {uri!r}", "no scheme; it must start with "
                         + ", ".join(s + "://" for s in SCHEMES), hint=hint)
    try:
        parts = urlsplit(text)
        parts.port
    except ValueError as exc:
        raise UsageError(f"bad {what} {uri!r}", str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise UsageError(f"bad {what} {uri!r}", f"unknown scheme {parts.scheme + '://'!r}; use one of "
                         + ", ".join(s + "://" for s in SCHEMES))
    if not parts.hostname:
        raise UsageError(f"bad {what} {uri!r}", "no host")
    if parts.username is not None or parts.password is not None:
        raise UsageError(f"bad {what} {uri!r}", "CoAP URIs carry no user name or password")
    if parts.fragment:
        raise UsageError(f"bad {what} {uri!r}", "CoAP URIs have no #fragment")
    if any(c.isspace() for c in text):
        raise UsageError(f"bad {what} {uri!r}", "contains white space (percent-encode it as %20)")
    host = parts.hostname
    if "[" in parts.netloc:
        import ipaddress

        try:
            ipaddress.IPv6Address(host.split("%")[0])
        except ValueError:
            raise UsageError(f"bad {what} {uri!r}", f"{host!r} is not an IPv6 address") from None
    return text


def uri_scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower()


def uri_host(uri: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(uri).hostname or ""


def with_path(uri: str, path: str) -> str:
    """URI with its path replaced when it has none ('coap://h' -> 'coap://h/.well-known/core')."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.path in ("", "/"):
        return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
    return uri


def is_multicast_host(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host.split("%")[0]).is_multicast
    except ValueError:
        return False


def parse_listen(text: str, option: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """A listening address: PORT, :PORT, HOST:PORT or [IPv6]:PORT (HOST defaults to
    127.0.0.1; port 0 is any free port)."""
    value = text.strip()
    host, port = default_host, value
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or value[end + 1:end + 2] != ":":
            raise UsageError(f"{option} {text!r}", "an IPv6 address is written [ADDRESS]:PORT")
        host, port = value[1:end], value[end + 2:]
    elif ":" in value:
        host, _, port = value.rpartition(":")
        host = host or default_host
        if ":" in host:
            raise UsageError(f"{option} {text!r}", "an IPv6 address is written [ADDRESS]:PORT")
    if not port.isdigit() or int(port) > 65535:
        raise UsageError(f"{option} {text!r}", "expected [HOST:]PORT with a port 0..65535")
    return host, int(port)

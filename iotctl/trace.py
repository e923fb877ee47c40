"""Where protocol libraries' log records go: a trace on stderr with -d/--debug, nowhere
otherwise. Every protocol client routes its library's loggers through here, and the
trace never shows a secret: the session's own password is masked by its value, in
every form a library may print it (as is, escaped the way STOMP, Python's repr, JSON,
XML, a URL or Qpid Proton's frame trace write it); STOMP passcodes, SASL PLAIN
credentials and URL passwords of other origins are masked by pattern. Each becomes ****."""

from __future__ import annotations

import logging
import re
import sys

# secrets a library may write in its protocol trace, whatever the session (compiled
# when a trace is first shown: start-up pays nothing for them)
_SOURCES = (
    # STOMP CONNECT, as is or inside a repr: up to the end of the line (a newline or its
    # escape) or the quote that closes the repr; escaped characters are part of the value
    (r"(passcode:)(?:\\\\|\\[^n]|[^\\\n])*?(?=\\n|\n|['\"](?:[,\])]|$)|$)", r"\1****"),
    (r"(mechanism=[\"']PLAIN[\"'][^>]*>)[^<]*", r"\1****"),        # SASL PLAIN
    (r"([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@'\"]*:)[^/\s'\"]+@", r"\1****@"),  # URLs
)


class Redact(logging.Filter):
    """Replaces secrets in a record's message (formatted once, here)."""

    def __init__(self, secrets: tuple[str, ...] = ()):
        super().__init__()
        forms = {form for s in secrets if s for form in spellings(s)}
        self.secrets = tuple(sorted(forms, key=len, reverse=True))  # the longest first
        self.patterns = [(re.compile(pattern), replacement) for pattern, replacement in _SOURCES]

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        for secret in self.secrets:
            text = text.replace(secret, "****")
        for pattern, replacement in self.patterns:
            text = pattern.sub(replacement, text)
        record.msg, record.args = text, None
        return True


def spellings(secret: str) -> set[str]:
    """Every way a trace may spell `secret`: as is; with STOMP 1.1/1.2 header escapes;
    inside Python's repr of a str or of bytes (backslashes doubled, control characters
    escaped, a quote escaped or not depending on the text around it); JSON-, XML- and
    URL-encoded; as Qpid Proton shows a binary."""
    import json
    from html import escape
    from urllib.parse import quote, quote_plus

    stomp = secret.replace("\\", "\\\\").replace("\n", "\\n").replace(":", "\\c")
    bases = {secret, stomp, stomp.replace("\r", "\\r")}
    forms = set(bases)
    for base in bases:
        # with both quotes after it, repr quotes with ' and escapes every ' (the suffix
        # \\'" is cut off again); inside a text without ', a ' is not escaped
        for shown in (repr(base + "'\""), repr((base + "'\"").encode("utf-8", "surrogateescape"))):
            inner = shown[shown.index("'") + 1:-4]
            forms.update((inner, inner.replace("\\'", "'")))
        forms.update((json.dumps(base)[1:-1], json.dumps(base, ensure_ascii=False)[1:-1], escape(base),
                      escape(base, quote=False), quote(base, safe=""), quote_plus(base)))
    raw = secret.encode("utf-8", "surrogateescape")
    # Qpid Proton's frame trace of a binary (SASL PLAIN's initial response): printable
    # ASCII but \\, " and ' as it is, every other byte as \\xHH
    forms.add("".join(chr(b) if 32 <= b < 127 and b not in b"\\\"'" else f"\\x{b:02x}" for b in raw))
    forms.discard("")
    return forms


def route_logs(names: tuple[str, ...] | list[str], verbose: bool, label: str | None = None,
               quiet_level: int = logging.CRITICAL, secrets: tuple[str | None, ...] = ()) -> list[logging.Logger]:
    """Point the loggers `names` at stderr (DEBUG, lines prefixed `iotctl: LABEL: `) when
    `verbose`, else silence them below `quiet_level`. `secrets` (the session's
    password, ...) never appear in the trace. Returns the loggers."""
    loggers = []
    for name in names:
        log = logging.getLogger(name)
        log.propagate = False
        log.handlers[:] = []
        if verbose:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter(f"iotctl: {label or '%(name)s'}: %(message)s"))
            handler.addFilter(Redact(tuple(s for s in secrets if s)))
            log.addHandler(handler)
            log.setLevel(logging.DEBUG)
        else:
            log.addHandler(logging.NullHandler())
            log.setLevel(quiet_level)
        loggers.append(log)
    return loggers

"""Where protocol libraries' log records go: a trace on stderr with -d/--debug, nowhere
otherwise. Every protocol client routes its library's loggers through here, and the
trace never shows a secret: the session's own password, STOMP passcodes, SASL PLAIN
credentials and URL passwords are replaced by ****."""

from __future__ import annotations

import logging
import re
import sys

# secrets a library may write in its protocol trace, whatever the session (compiled
# when a trace is first shown: start-up pays nothing for them)
_SOURCES = (
    (r"(passcode:)[^\\\n'\"]*", r"\1****"),                      # STOMP CONNECT
    (r"(mechanism=[\"']PLAIN[\"'][^>]*>)[^<]*", r"\1****"),        # SASL PLAIN
    (r"([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@'\"]*:)[^/\s'\"]+@", r"\1****@"),  # URLs
)


class Redact(logging.Filter):
    """Replaces secrets in a record's message (formatted once, here)."""

    def __init__(self, secrets: tuple[str, ...] = ()):
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)
        self.patterns = [(re.compile(pattern), replacement) for pattern, replacement in _SOURCES]

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        for secret in self.secrets:
            text = text.replace(secret, "****")
        for pattern, replacement in self.patterns:
            text = pattern.sub(replacement, text)
        record.msg, record.args = text, None
        return True


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

"""Where protocol libraries' log records go: a trace on stderr with --verbose, nowhere
otherwise. Every protocol client routes its library's loggers through here."""

from __future__ import annotations

import logging
import sys


def route_logs(names: tuple[str, ...] | list[str], verbose: bool, label: str | None = None,
               quiet_level: int = logging.CRITICAL) -> list[logging.Logger]:
    """Point the loggers `names` at stderr (DEBUG, lines prefixed `iotctl: LABEL: `) when
    `verbose`, else silence them below `quiet_level`. Returns the loggers."""
    loggers = []
    for name in names:
        log = logging.getLogger(name)
        log.propagate = False
        log.handlers[:] = []
        if verbose:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter(f"iotctl: {label or '%(name)s'}: %(message)s"))
            log.addHandler(handler)
            log.setLevel(logging.DEBUG)
        else:
            log.addHandler(logging.NullHandler())
            log.setLevel(quiet_level)
        loggers.append(log)
    return loggers

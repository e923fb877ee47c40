"""The run's settings (the global options) and its status and warning lines.

The bottom of the shared layer: it imports nothing of iotctl, so every other module
(options, profiles, output, the drivers, protocol code) may use it.
"""

from __future__ import annotations

import sys


class Settings:
    """The global options of one run, kept on the root click context's `obj`."""

    def __init__(self) -> None:
        self.profile: str | None = None
        self.output: str = "auto"
        self.format: str | None = None
        self.color: bool | None = None
        self.debug: bool = False
        self.quiet: bool = False


_fallback = Settings()


def current() -> Settings:
    """The settings of the click command running now (defaults outside of one)."""
    import click

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return _fallback
    return ctx.find_root().ensure_object(Settings)


def status(text: str, tty_only: bool = False) -> None:
    """A status line on stderr, unless --quiet; with `tty_only`, only when stderr is a
    terminal (or with --debug): confirmations a script does not need."""
    s = current()
    if s.quiet or (tty_only and not s.debug and not sys.stderr.isatty()):
        return
    sys.stderr.write(f"iotctl: {text}\n")
    sys.stderr.flush()


def warn(text: str) -> None:
    sys.stderr.write(f"iotctl: warning: {text}\n")
    sys.stderr.flush()

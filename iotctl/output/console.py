"""The one place that creates rich consoles (stdout for data, stderr for the rest).

rich is imported only when a console is first asked for.
"""

from __future__ import annotations

import sys

_consoles: dict[str, object] = {}
_color: bool | None = None


def set_color(color: bool | None) -> None:
    """--color/--no-color; None means decide from NO_COLOR/FORCE_COLOR and the terminal."""
    global _color
    _color = color
    _consoles.clear()


def _make(name: str):
    """rich decides colour itself (a terminal, NO_COLOR, FORCE_COLOR); --color/--no-color
    override it."""
    from rich.console import Console

    stream = sys.stdout if name == "stdout" else sys.stderr
    if name == "stdout" and hasattr(stream, "buffer"):
        stream = _WholeText(stream)
    return Console(file=stream, force_terminal=_color, no_color=True if _color is False else None,
                   highlight=False, soft_wrap=name == "stdout", stderr=name == "stderr")


class _WholeText:
    """sys.stdout for rich, its text written whole. TextIOWrapper ignores a short write of
    its buffer (output.writers.Whole says when CPython makes one: a Ctrl-C held while a
    terminal paused with Ctrl-S lets nothing through), and the rest was lost."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        from iotctl.express import write_whole

        stream = self.stream
        stream.flush()  # what was written through sys.stdout itself goes first
        write_whole(stream.buffer, text.encode(stream.encoding or "utf-8", stream.errors or "strict"))
        return len(text)

    def flush(self) -> None:
        self.stream.buffer.flush()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def stdout():
    if "stdout" not in _consoles:
        _consoles["stdout"] = _make("stdout")
    return _consoles["stdout"]


def stderr():
    if "stderr" not in _consoles:
        _consoles["stderr"] = _make("stderr")
    return _consoles["stderr"]


def progress(total: int | None, description: str):
    """A rich progress bar on stderr when it is a terminal, else a no-op stand-in."""
    if not sys.stderr.isatty():
        return _NoProgress()
    from rich.progress import Progress

    bar = Progress(console=stderr(), transient=True)
    task = bar.add_task(description, total=total)
    return _Bar(bar, task)


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, n: int = 1) -> None:
        pass


class _Bar:
    def __init__(self, bar, task):
        self.bar, self.task = bar, task

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def advance(self, n: int = 1) -> None:
        self.bar.advance(self.task, n)

"""The express lane: the commonest one-shot command lines (`iotctl --version`, `mqtt pub`
of one message, ...) run here without importing click or any protocol library, at
the speed of the interpreter, for shell loops where start-up is the whole cost.

`attempt(argv)` returns an exit status when a lane ran the command line, or None: then
the normal path runs it (every option, profiles, and all the usual errors). A lane
takes only command lines it fully understands and that are valid, and produces the
same stdout, stderr and exit status as the normal path (tests/test_express.py runs a
corpus both ways against the real peers and compares).

Nothing here may import more than the standard library's socket-level modules: this
module and the lanes are imported by every run of iotctl.
"""

from __future__ import annotations

import os
import sys

# settings that change what a command does (profiles, IOTCTL_* variables): the normal
# path applies them; IOTCTL_EXPRESS=0 turns the lane off (the differential test)
_NEUTRAL = ("IOTCTL_CONFIG_DIR", "IOTCTL_PEERS_DIR")


def attempt(argv: list[str]) -> int | None:
    if argv == ["--version"]:
        from iotctl import __version__

        return _write_out(f"iotctl {__version__}\n")
    if len(argv) < 2 or not _plain_environment():
        return None
    from iotctl.registry import PROTOCOLS

    protocol = PROTOCOLS.get(argv[0])
    lane = getattr(protocol, "express", None) if protocol is not None else None
    if not lane:
        return None
    import importlib

    module, attr = lane.split(":")
    return getattr(importlib.import_module(module), attr)(argv[1:])


def _plain_environment() -> bool:
    for key in os.environ:
        if key.startswith("IOTCTL_") and key not in _NEUTRAL:
            return False
    return not os.path.exists(os.path.join(_config_dir(), "current"))


def _config_dir() -> str:
    """profiles.config_dir(), without pathlib."""
    if os.environ.get("IOTCTL_CONFIG_DIR"):
        return os.environ["IOTCTL_CONFIG_DIR"]
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "iotctl")


def _write_out(text: str) -> int:
    return emit(text.encode())


# --------------------------------------------------------------------------- what lanes share


def run_lane(argv: list[str], verbs: tuple[str, ...], options: "Options", job, run) -> int | None:
    """A lane's usual entry: the command (argv[0]) one of `verbs`, the options read,
    `job(values)` the validated settings (None: not understood), `run(*settings)` the
    exit status. None as soon as a step declines: the normal path runs."""
    if not argv or argv[0] not in verbs:
        return None
    values = options.take(argv[1:])
    if values is None:
        return None
    settings = job(values)
    return None if settings is None else run(*settings)



class Options:
    """A strict reader of one command's options: `take(argv)` returns the values, or
    None as soon as anything is not exactly understood (the normal path then runs)."""

    def __init__(self, spec: dict[str, tuple[str, str]], positional: str | tuple[str, ...] | None = None):
        # "-t"/"--topic" -> (name, kind): kind "value" or "flag"; positional: the names
        # of the arguments, in order (each at most once)
        self.spec = spec
        self.positional = (positional,) if isinstance(positional, str) else tuple(positional or ())

    def take(self, argv: list[str]) -> dict | None:
        values: dict = {}
        i = 0
        while i < len(argv):
            arg = argv[i]
            if arg.startswith("-") and arg != "-":
                if "=" in arg and arg.startswith("--"):
                    arg, value = arg.split("=", 1)
                    inline = True
                else:
                    value, inline = None, False
                entry = self.spec.get(arg)
                if entry is None:
                    return None
                name, kind = entry
                if name in values:
                    return None  # repeated: the normal path knows what that means
                if kind == "flag":
                    if inline:
                        return None
                    values[name] = True
                else:
                    if not inline:
                        if i + 1 >= len(argv):
                            return None
                        i += 1
                        value = argv[i]
                    values[name] = value
            else:
                name = next((p for p in self.positional if p not in values), None)
                if name is None:
                    return None
                values[name] = arg
            i += 1
        return values


def integer(text: str | None, low: int, high: int) -> int | None:
    if text is None or not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0"):
        return None
    n = int(text)
    return n if low <= n <= high else None


def positive(text: str | None) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if 0 < value < 1e9 else None


def error(what: str, why: str | None = None, hint: str | None = None) -> None:
    """The error line, `iotctl: error: WHAT: WHY`, and a hint line: for the express
    lanes and the normal path alike (cli._error)."""
    line = f"iotctl: error: {what}" + (f": {why}" if why else "")
    sys.stderr.write(line.replace("\n", " ") + "\n")
    if hint:
        sys.stderr.write(f"iotctl: hint: {hint}\n")
    sys.stderr.flush()


def emit(data: bytes) -> int:
    """A response's bytes on stdout, all of them (output.writers.Whole says why a write
    may come back short): 0; a reader that has gone is a quiet 0, output that cannot be
    written (a full disk) the error line and 1, as on the normal path."""
    out = sys.stdout.buffer
    try:
        write_whole(out, data)
        out.flush()
    except BrokenPipeError:
        quiet_stdout()
    except OSError as exc:
        error("cannot write output", os_reason(exc))
        return 1
    return 0


def os_reason(exc: OSError) -> str:
    """An OSError as an error line says it: `no space left on device`."""
    return (os.strerror(exc.errno) if exc.errno else str(exc)).lower()


def write_whole(stream, data) -> None:
    """stream.write(data), then what a short write left of it (output.writers.Whole says
    when CPython makes one)."""
    n = stream.write(data)
    if n is None or n >= len(data):
        return
    view = memoryview(data)[n:]
    while view:
        n = stream.write(view)
        if n is None:  # a non-blocking stream that is full
            raise BlockingIOError(11, "write could not complete without blocking")
        view = view[n:]


def quiet_stdout() -> None:
    """After EPIPE (or a full disk), point stdout at /dev/null so the interpreter's
    final flush stays silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def status(text: str, quiet: bool) -> None:
    """settings.status(text, tty_only=True)."""
    if not quiet and sys.stderr.isatty():
        sys.stderr.write(f"iotctl: {text}\n")
        sys.stderr.flush()


def tcp_connect(host: str, port: int, timeout: float):
    """A connected TCP socket, as socket.create_connection makes one (every address
    getaddrinfo gives, in its order, until one connects; OSError as it raises), on
    _socket: socket.py's wrappers and the IDNA codec that a host name given as text
    pulls in (getaddrinfo of a str encodes it with it) cost a lane start-up time and
    memory; an ASCII name is given as bytes."""
    import _socket

    try:
        name = host.encode("ascii")
    except UnicodeEncodeError:
        name = host.encode("idna")
    last = None
    for family, kind, proto, _, address in _socket.getaddrinfo(name, port, 0, _socket.SOCK_STREAM):
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as exc:
            last = exc
            sock.close()
    raise last if last is not None else OSError("getaddrinfo returns an empty list")


def connect_error(what: str, exc: OSError) -> tuple[int, str, str | None]:
    """errors.from_os_error for plain sockets: (exit status, why, hint)."""
    import _socket as socket

    if isinstance(exc, socket.gaierror):
        return 3, f"cannot resolve host: {exc.strerror}", None
    if isinstance(exc, ConnectionRefusedError):
        return 3, "connection refused", "is the server running on that host and port?"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return 5, "timed out", None
    return 3, exc.strerror or str(exc), None

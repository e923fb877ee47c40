"""`--background` for the commands that serve (coap serve, mqttsn gateway): start the
same command as a detached process and return once it is listening, so a script (or a
README block pasted whole) can use the server on the next line.

The child reports readiness by writing to the file descriptor named in
IOTCTL_READY_FD (`ready()`), after it has bound its sockets. It never writes to the
terminal it was started from: its stderr (the request log, warnings, the -d trace)
goes to a log file, `--log FILE` or by default `$XDG_STATE_HOME/iotctl/NAME.log`
(~/.local/state/iotctl/...), whose path is printed at start; with --quiet and no
--log, nowhere. A child that fails to start is reported with its own error line and
exit status.
"""

from __future__ import annotations

import os
import sys
import time

from iotctl.errors import ExitCode, IotctlError, UsageError

ENV = "IOTCTL_READY_FD"
SILENT_ENV = "IOTCTL_BACKGROUND_SILENT"  # the child drops its stderr once ready (no log file)
FLAG = "--background"
TAIL = 64 * 1024  # what is kept of a child's output before it is ready (its error line)


class ServerLog:
    """A server's log: one line per request (and its start and stop) on stderr or the
    --log file; nothing with --quiet but warnings. Never raises: a closed stderr loses
    lines, not the server."""

    def __init__(self, stream, quiet: bool):
        self.stream, self.quiet = stream, quiet

    def __call__(self, line: str, always: bool = False) -> None:
        if self.quiet and not always:
            return
        out = self.stream if self.stream is not None else sys.stderr
        try:
            out.write(line + "\n")
            out.flush()
        except (OSError, ValueError):
            pass

    def warning(self, text: str) -> None:
        """Shown even with --quiet."""
        self(f"iotctl: warning: {text}", always=True)


def serve_forever(loop, start, stop_of, timeout: float):
    """Run a server on the shared asyncio loop in the foreground: `start` (a coroutine)
    binds it, a --background parent is told it is ready, then it serves until Ctrl-C or
    SIGTERM, and `stop_of(what start returned)` (a coroutine function) is given
    `timeout` seconds to close it. Returns what `start` returned."""
    from iotctl import interrupts

    restore = interrupts.terminate_as_interrupt()
    try:
        running = loop.run(start)
        ready()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        loop.cleanup(stop_of(running), timeout=timeout)
    finally:
        restore()
    return running


class Failed(IotctlError):
    """The background child exited before it was ready: its error, its exit status."""

    def __init__(self, what: str, why: str | None, hint: str | None, code: int):
        super().__init__(what, why, hint)
        self.code = code if 0 < code < 256 else ExitCode.ERROR


def state_dir() -> str:
    """$XDG_STATE_HOME/iotctl (default ~/.local/state/iotctl)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "iotctl")


def default_log(name: str) -> str:
    return os.path.join(state_dir(), f"{name}.log")


def open_log(path: str, text: bool = False):
    """The log file, appended to (its folder made 0700, a new file 0600); `text`: a
    line-buffered text stream (a foreground server's --log)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot write the log file {path}", exc.strerror or str(exc)) from None
    if text:
        return os.fdopen(fd, "a", encoding="utf-8", buffering=1)
    return os.fdopen(fd, "ab")


def start(what: str, log: str | None = None, name: str | None = None, timeout: float = 15.0) -> int:
    """Run this command again without --background, detached; wait until it is ready.
    Its stderr goes to `log` (default: NAME.log in the state dir, NAME from `name` or
    `what`; with --quiet and no `log`, nowhere). Returns the child's pid; raises
    `Failed` (its error line, its exit status) when it exits before it is ready."""
    import selectors
    import subprocess

    from iotctl.settings import current, status

    if log is None and not current().quiet:
        log = default_log(name or what.replace(" ", "-"))
    args = [a for a in sys.argv[1:] if a != FLAG]
    env = {**os.environ}
    sink = offset = None
    if log is not None:
        sink = open_log(log)
        offset = sink.seek(0, os.SEEK_END)
        env.pop(SILENT_ENV, None)
    else:
        env[SILENT_ENV] = "1"
    read_fd, write_fd = os.pipe()
    env[ENV] = str(write_fd)
    try:
        # stdout is not inherited: `pid=$(iotctl coap serve --background)` must not wait for
        # the server to end; nor is stderr: the log file, or a pipe read here until ready
        child = subprocess.Popen([sys.executable, "-m", "iotctl", *args], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=sink if sink is not None else subprocess.PIPE,
                                 pass_fds=(write_fd,), env=env, start_new_session=True)
    finally:
        os.close(write_fd)
        if sink is not None:
            sink.close()
    if log is not None:
        status(f"{what} logs to {log}")
    said = bytearray()
    ready = False
    with selectors.DefaultSelector() as sel, os.fdopen(read_fd, "rb") as pipe:
        sel.register(pipe, selectors.EVENT_READ, "ready")
        if child.stderr is not None:
            sel.register(child.stderr, selectors.EVENT_READ, "stderr")
        end = time.monotonic() + timeout
        while not ready:
            left = end - time.monotonic()
            if left <= 0:
                break
            events = sel.select(left)
            for key, _ in events:
                if key.data == "ready":
                    ready = pipe.read(1) == b"1"
                    if not ready:  # the child is gone without saying so
                        sel.unregister(pipe)
                    continue
                chunk = os.read(key.fileobj.fileno(), 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                said += chunk
                del said[:-TAIL]
            if not ready and not sel.get_map():
                break
    if child.stderr is not None:
        child.stderr.close()
    if ready:
        return child.pid
    try:
        code = child.wait(0.5 if child.poll() is None else 0)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        raise IotctlError(f"{what} in the background", f"not ready within {timeout:g} s",
                          hint=f"see its log: {log}" if log else None) from None
    if log is not None:
        try:
            with open(log, "rb") as fh:
                fh.seek(offset)
                said = bytearray(fh.read()[-TAIL:])
        except OSError:
            pass
    why, hint = _last_error(bytes(said).decode("utf-8", "replace"))
    if why is None:
        why = f"it exited with status {code}"
        hint = f"see its log: {log}" if log else hint
    raise Failed(f"{what} in the background", why, hint, code)


def _last_error(text: str) -> tuple[str | None, str | None]:
    """The child's last `iotctl: error: ...` line (without the prefix) and its hint."""
    why = hint = None
    for line in text.splitlines():
        if line.startswith("iotctl: error: "):
            why, hint = line[len("iotctl: error: "):], None
        elif line.startswith("iotctl: hint: ") and why is not None:
            hint = line[len("iotctl: hint: "):]
    return why, hint


def ready() -> None:
    """In the child: say that the server listens (does nothing in the foreground). With
    no log file, stderr is dropped from here on: it must never reach the terminal."""
    fd = os.environ.pop(ENV, None)
    if fd is None:
        return
    if os.environ.pop(SILENT_ENV, None):
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        except OSError:
            pass
    try:
        os.write(int(fd), b"1")
        os.close(int(fd))
    except (OSError, ValueError):
        pass

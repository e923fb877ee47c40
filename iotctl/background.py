"""`--background` for the commands that serve (coap serve, mqttsn gateway): start the
same command as a detached process and return once it is listening, so a script (or a
README block pasted whole) can use the server on the next line.

The child reports readiness by writing to the file descriptor named in
IOTCTL_READY_FD (`ready()`), after it has bound its sockets.
"""

from __future__ import annotations

import os
import sys

from iotctl.errors import IotctlError

ENV = "IOTCTL_READY_FD"
FLAG = "--background"


def start(what: str, timeout: float = 15.0) -> int:
    """Run this command again without --background, detached; wait until it is ready.
    Returns the child's pid; raises when it exits or does not get ready in time."""
    import selectors
    import subprocess

    args = [a for a in sys.argv[1:] if a != FLAG]
    read_fd, write_fd = os.pipe()
    try:
        # stdout is not inherited: `pid=$(iotctl coap serve --background)` must not wait for
        # the server to end; its log (stderr) still reaches the terminal, as with `&`
        child = subprocess.Popen([sys.executable, "-m", "iotctl", *args], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, pass_fds=(write_fd,), env={**os.environ, ENV: str(write_fd)},
                                 start_new_session=True)
    finally:
        os.close(write_fd)
    with selectors.DefaultSelector() as sel, os.fdopen(read_fd, "rb") as pipe:
        sel.register(pipe, selectors.EVENT_READ)
        if sel.select(timeout) and pipe.read(1) == b"1":
            return child.pid
    code = child.poll()
    if code is None:
        child.kill()
        raise IotctlError(f"{what} in the background", f"not ready within {timeout:g} s")
    raise IotctlError(f"{what} in the background", f"it exited with status {code}")


def ready() -> None:
    """In the child: say that the server listens (does nothing in the foreground)."""
    fd = os.environ.pop(ENV, None)
    if fd is None:
        return
    try:
        os.write(int(fd), b"1")
        os.close(int(fd))
    except (OSError, ValueError):
        pass

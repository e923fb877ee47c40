"""The `iotctl` command: the express lane when it takes the command line, else the
full command tree (iotctl.cli, click)."""

from __future__ import annotations


def main() -> None:
    import sys

    from iotctl.express import attempt

    code = attempt(sys.argv[1:])
    if code is None:
        from iotctl.cli import main as full

        full()
    sys.exit(code)

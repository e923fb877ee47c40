"""What every benchmark script shares: where things are, the interpreter and iotctl
command the contenders run, and the environment they run in."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
MINIMAL = BENCH / "minimal"

_venv_py = ROOT / ".venv" / "bin" / "python"
PY = str(_venv_py) if _venv_py.exists() else sys.executable
_venv_iotctl = ROOT / ".venv" / "bin" / "iotctl"
if _venv_iotctl.exists():
    IOTCTL = [str(_venv_iotctl)]
elif shutil.which("iotctl"):
    IOTCTL = [shutil.which("iotctl")]
else:
    IOTCTL = [PY, "-m", "iotctl"]


def write_section(text: str, start: str, end: str) -> None:
    """Put `text` (which begins with the marker line `start` and ends with `end`) into
    bench/README.md in place of the section between those markers, or at the end of
    the file when it has none yet; the other sections stay where they are."""
    readme = BENCH / "README.md"
    old = readme.read_text()
    text = text.rstrip("\n") + "\n"
    if start in old and end in old[old.index(start):]:
        head, rest = old.split(start, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        new = head + text + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    readme.write_text(new)
    print(f"wrote {readme}", file=sys.stderr)


def child_env(config_dir: str) -> dict:
    """The environment of every contender: as in a user's shell (bytecode written,
    stdout block-buffered when piped), with no iotctl settings leaking in."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE") and not k.startswith("IOTCTL_")}
    env["IOTCTL_CONFIG_DIR"] = config_dir  # empty: no profile applies
    env.pop("FORCE_COLOR", None)
    return env

"""Profiles: one TOML file per profile, one table per protocol (README, "Profiles").

    $IOTCTL_CONFIG_DIR/profiles/<name>.toml  (else $XDG_CONFIG_HOME/iotctl/..., else ~/.config/iotctl/...)

Keys are the long option names with `-` written `_`. A profile is applied as click's
`default_map`, so the command line and IOTCTL_<PROTO>_<OPTION> still win over it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterator

from iotctl.errors import IotctlError, UsageError

SECRET_WORDS = ("password", "psk", "secret", "token")
INDIRECT = ("_env", "_cmd")


def config_dir() -> Path:
    if os.environ.get("IOTCTL_CONFIG_DIR"):
        return Path(os.environ["IOTCTL_CONFIG_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "iotctl"


def profiles_dir() -> Path:
    return config_dir() / "profiles"


def _current_file() -> Path:
    return config_dir() / "current"


def is_path(name: str) -> bool:
    return os.sep in name or name.endswith(".toml")


def valid_name(name: str) -> str:
    if not name or name.startswith(".") or any(c in name for c in "/\\\0") or name.endswith(".toml"):
        raise UsageError(f"bad profile name {name!r}", "use letters, digits, '-', '_' or '.'")
    return name


def path_for(name: str) -> Path:
    if is_path(name):
        return Path(name).expanduser()
    return profiles_dir() / f"{valid_name(name)}.toml"


def list_profiles() -> list[str]:
    try:
        return sorted(p.stem for p in profiles_dir().glob("*.toml"))
    except OSError:
        return []


def current() -> str | None:
    try:
        name = _current_file().read_text().strip()
    except OSError:
        return None
    return name or None


def set_current(name: str | None) -> None:
    if name is None:
        try:
            _current_file().unlink()
        except FileNotFoundError:
            pass
        return
    _atomic_write(_current_file(), (name + "\n").encode())


def active_name(selected: str | None) -> str | None:
    """The profile in force: --profile / IOTCTL_PROFILE, else the one chosen by `profile use`."""
    return selected if selected else current()


def load(name: str, missing_ok: bool = False) -> dict[str, Any]:
    import tomllib

    path = path_for(name)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise UsageError(f"no profile {name!r}", f"{path} does not exist",
                         hint="'iotctl profile list' shows the profiles there are") from None
    except OSError as exc:
        raise UsageError(f"cannot read profile {path}", exc.strerror or str(exc)) from None
    _warn_if_readable(path)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"profile {path} is not valid TOML", str(exc)) from None
    return data


def _warn_if_readable(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        from iotctl.settings import warn

        warn(f"profile {path} can be read by others (mode {stat.S_IMODE(mode):o}); "
             f"run 'chmod 600 {path}'")


def save(name: str, data: dict[str, Any]) -> Path:
    import tomli_w

    path = path_for(name)
    _atomic_write(path, tomli_w.dumps(data).encode("utf-8"))
    return path


def _atomic_write(path: Path, content: bytes) -> None:
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.parent in (profiles_dir(), config_dir()):
        os.chmod(path.parent, 0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def is_secret(key: str) -> bool:
    return any(word in key for word in SECRET_WORDS) and not key.endswith(INDIRECT)


def masked(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out[key] = masked(value)
        elif is_secret(key) and value not in (None, ""):
            out[key] = "********"
        else:
            out[key] = value
    return out


def resolve_secret(table: dict[str, Any], key: str) -> str | None:
    """`password` itself, or from `password_env` (a variable) or `password_cmd` (a command)."""
    if key in table:
        return table[key]
    env = table.get(f"{key}_env")
    if env:
        if env not in os.environ:
            raise UsageError(f"{key}_env names {env!r}", "that environment variable is not set")
        return os.environ[env]
    cmd = table.get(f"{key}_cmd")
    if cmd:
        import subprocess

        try:
            done = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            raise IotctlError(f"{key}_cmd {cmd!r}", "did not finish within 30 s") from None
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise IotctlError(f"{key}_cmd {cmd!r} failed", why)
        return done.stdout.rstrip("\n")
    return None


class ProfileSection(Mapping):
    """The active profile's table for one protocol, read only when first looked up.

    It is a command's `default_map`; reading it lazily means `--profile` given after
    the command (processed eagerly) is already known when defaults are resolved.
    """

    def __init__(self, protocol: str, selected: Callable[[], str | None]):
        self.protocol = protocol
        self.selected = selected  # the --profile given (read when first needed)
        self._data: dict[str, Any] | None = None

    def _table(self) -> dict[str, Any]:
        if self._data is None:
            from iotctl.settings import current as settings

            name = active_name(settings().profile)
            table = {}
            if name:
                profile = load(name, missing_ok=not settings().profile and not is_path(name))
                table = dict(profile.get(self.protocol) or {})
            for key in list(table):
                for suffix in INDIRECT:
                    if key.endswith(suffix):
                        base = key[: -len(suffix)]
                        table.setdefault(base, _Lazy(table, base))
            self._data = table
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._table()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


class _Lazy:
    """A secret resolved only when click needs the value (it calls callables)."""

    def __init__(self, table: dict[str, Any], key: str):
        self.table = {k: v for k, v in table.items() if k != key}
        self.key = key

    def __call__(self) -> Any:
        return resolve_secret(self.table, self.key)

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
    from iotctl.settings import warn

    try:
        mode = path.stat().st_mode
        folder_mode = path.parent.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warn(f"profile {path} can be read by others (mode {stat.S_IMODE(mode):o}); "
             f"run 'chmod 600 {path}'")
    if folder_mode & (stat.S_IWGRP | stat.S_IWOTH):
        warn(f"the folder {path.parent} can be written by others (mode {stat.S_IMODE(folder_mode):o}): "
             f"they could replace a profile; run 'chmod 700 {path.parent}'")


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
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):  # a full disk, a quota: the file is left as it was
            from iotctl.express import os_reason

            raise IotctlError(f"cannot write {path}", os_reason(exc)) from None
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
        return _run_secret_command(key, cmd)
    return None


def protocol_table(profile: dict[str, Any], protocol: str, path: Path) -> dict[str, Any]:
    """The profile's [protocol] table (a copy); warns about tables no protocol has."""
    from iotctl import registry

    for key, value in profile.items():
        if isinstance(value, dict) and key not in registry.names():
            _warn_unknown(f"profile {path}: unknown table [{key}]", key, registry.names(), "[{}]")
    table = profile.get(protocol)
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise UsageError(f"profile {path}", f"'{protocol}' must be a table ([{protocol}]), "
                         f"not {type(table).__name__}")
    return dict(table)


def check_keys(table: dict[str, Any], known: Mapping[str, Any], protocol: str, path: Path) -> None:
    """Warn about each key no option of the protocol has (a misspelt `pasword` would
    otherwise connect without a password), naming the nearest valid one."""
    for key in table:
        base = key[:-4] if key.endswith(INDIRECT) else key
        if base not in known:
            _warn_unknown(f"profile {path}: [{protocol}] has no setting '{key}'", key, list(known), "'{}'")


def _warn_unknown(text: str, key: str, choices, form: str) -> None:
    import difflib

    from iotctl.settings import warn

    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.6)
    warn(text + (f"; did you mean {form.format(close[0])}?" if close else " (ignored)"))


class ProfileSection(Mapping):
    """The active profile's table for one protocol, read only when first looked up.

    It is a command's `default_map`; reading it lazily means `--profile` given after
    the command (processed eagerly) is already known when defaults are resolved.
    """

    def __init__(self, protocol: str, selected: Callable[[], str | None],
                 known: Callable[[], Mapping[str, Any]] | None = None):
        self.protocol = protocol
        self.selected = selected  # the --profile given (read when first needed)
        self.known = known  # the option names a table may hold (for warnings)
        self._data: dict[str, Any] | None = None

    def _table(self) -> dict[str, Any]:
        if self._data is None:
            selected = self.selected()
            name = active_name(selected)
            table = {}
            if name:
                path = path_for(name)
                profile = load(name, missing_ok=not selected and not is_path(name))
                table = protocol_table(profile, self.protocol, path)
                if self.known is not None and table:
                    check_keys(table, self.known(), self.protocol, path)
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


SECRET_CMD_TIMEOUT = 30.0


def _run_secret_command(key: str, cmd: str) -> str:
    """The output of a `password_cmd`; one that hangs is killed with everything it started."""
    import signal
    import subprocess

    proc = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=SECRET_CMD_TIMEOUT)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.communicate()
        raise IotctlError(f"{key}_cmd {cmd!r}", f"did not finish within {SECRET_CMD_TIMEOUT:g} s") from None
    if proc.returncode != 0:
        why = (err.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise IotctlError(f"{key}_cmd {cmd!r} failed", why)
    return out.rstrip("\n")


class _Lazy:
    """A secret resolved only when click needs the value (it calls callables)."""

    def __init__(self, table: dict[str, Any], key: str):
        self.table = {k: v for k, v in table.items() if k != key}
        self.key = key

    def __call__(self) -> Any:
        return resolve_secret(self.table, self.key)

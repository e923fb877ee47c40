"""completions/ and man/ are generated from the command tree, committed, and checked here.

When a test here fails because the committed copies are stale, run the generator it names
(scripts/gen-completions, scripts/gen-man) and commit the result.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from iotctl.errors import EXIT_CODE_MEANINGS, ExitCode

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
MAN = ROOT / "man"

GEN_COMPLETIONS_HINT = "completions/ is stale: run scripts/gen-completions and commit"
GEN_MAN_HINT = "man/ is stale: run scripts/gen-man and commit"


def _load(script: str):
    """Import a generator script (no .py suffix) as a module, without running its main()."""
    path = SCRIPTS / script
    loader = importlib.machinery.SourceFileLoader(f"_gen_{script.replace('-', '_')}", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen_completions():
    return _load("gen-completions")


@pytest.fixture(scope="module")
def gen_man():
    return _load("gen-man")


@pytest.fixture(scope="module")
def man_pages(gen_man) -> dict[str, str]:
    return gen_man.render()


def _unroff(text: str) -> str:
    """Just enough roff unescaping to search a page's text."""
    for escape, plain in ((r"\fB", ""), (r"\fI", ""), (r"\fR", ""), (r"\fP", ""), (r"\-", "-"),
                          (r"\(aq", "'"), (r"\(ga", "`"), (r"\(ha", "^"), (r"\(ti", "~"),
                          (r"\&", ""), (r"\e", "\\")):
        text = text.replace(escape, plain)
    return text


def _section(page: str, name: str) -> str:
    match = re.search(rf"^\.SH {re.escape(name)}\n(.*?)(?=^\.SH |\Z)", page, re.M | re.S)
    assert match, f"no .SH {name} section"
    return match.group(1)


# --------------------------------------------------------------------------- staleness


def test_completions_are_current(gen_completions):
    stale = gen_completions.stale(gen_completions.render())
    if stale:
        pytest.fail(f"{GEN_COMPLETIONS_HINT} (differs: {', '.join(stale)})", pytrace=False)


def test_man_pages_are_current(gen_man, man_pages):
    changed, extra = gen_man.stale(man_pages)
    if changed or extra:
        detail = ", ".join(changed + [f"{name} (no such command)" for name in extra])
        pytest.fail(f"{GEN_MAN_HINT} (differs: {detail})", pytrace=False)


@pytest.mark.parametrize("script, hint", [("gen-completions", GEN_COMPLETIONS_HINT),
                                          ("gen-man", GEN_MAN_HINT)], ids=["completions", "man"])
def test_generator_check_mode_from_another_directory(script, hint, tmp_path):
    path = SCRIPTS / script
    assert os.access(path, os.X_OK), f"{path} is not executable"
    assert path.read_text().startswith("#!"), f"{path} has no #! line"
    proc = subprocess.run([sys.executable, str(path), "--check"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        pytest.fail(f"{hint}\n{proc.stderr}", pytrace=False)


def test_generation_is_deterministic(gen_man, man_pages, monkeypatch):
    monkeypatch.setenv("COLUMNS", "33")
    monkeypatch.setenv("IOTCTL_MQTT_HOST", "elsewhere")
    monkeypatch.setenv("HOME", "/nonexistent")
    assert gen_man.render() == man_pages


# --------------------------------------------------------------------------- content


def test_root_page_lists_every_exit_status():
    page = (MAN / "iotctl.1").read_text()
    section = _section(page, "EXIT STATUS")
    text = _unroff(section)
    for code in (0, 1, 2, 3, 4, 5, 6, 7, 130):
        assert re.search(rf"^\.TP.*\n{code}\n", text, re.M), f"exit status {code} not listed"
    for code, meaning in EXIT_CODE_MEANINGS.items():
        assert meaning in text, f"meaning of {int(code)} not in man/iotctl.1"
    assert set(EXIT_CODE_MEANINGS) == set(ExitCode)


def test_root_page_sections():
    page = _unroff((MAN / "iotctl.1").read_text())
    for name in ("NAME", "SYNOPSIS", "DESCRIPTION", "GLOBAL OPTIONS", "COMMANDS", "ENVIRONMENT",
                 "FILES", "EXIT STATUS", "SEE ALSO"):
        assert f"\n.SH {name}\n" in page, f"man/iotctl.1 has no {name} section"
    env = _section(page, "ENVIRONMENT")
    for var in ("IOTCTL_PROFILE", "IOTCTL_OUTPUT", "IOTCTL_FORMAT", "IOTCTL_COLOR", "IOTCTL_VERBOSE",
                "IOTCTL_QUIET", "IOTCTL_CONFIG_DIR", "XDG_CONFIG_HOME", "NO_COLOR", "FORCE_COLOR",
                "IOTCTL_<PROTO>_<OPTION>"):
        assert var in env, f"{var} not in ENVIRONMENT"
    options = _section(page, "GLOBAL OPTIONS")
    for flag in ("--profile", "--output", "--format", "--color", "--verbose", "--quiet", "--version"):
        assert flag in options
    assert "profiles/NAME.toml" in _section(page, "FILES")


def test_command_pages(man_pages):
    assert "man/iotctl-mqtt-publish.1" in man_pages
    assert "man/iotctl-mqtt-retained-list.1" in man_pages
    assert "man/iotctl-profile-add.1" in man_pages
    for name, page in man_pages.items():
        if name == "man/iotctl.1":
            continue
        for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "EXIT STATUS", "SEE ALSO"):
            assert f"\n.SH {section}\n" in page, f"{name} has no {section} section"
        see_also = _unroff(_section(page, "SEE ALSO"))
        assert ".BR iotctl (1)" in see_also, name
        stem = Path(name).stem
        if stem.count("-") > 1:  # nested: names its parent group's page
            assert f".BR {stem.rsplit('-', 1)[0]} (1)" in see_also, name
        # the hidden global options are on the root page only
        tags = re.findall(r"^\.TP\n(.*)$", page, re.M)
        for hidden in ("--profile", "--output", "--format", "--quiet", "--verbose"):
            assert not any(hidden in _unroff(tag) for tag in tags), f"{name} lists hidden {hidden}"


def test_publish_page_has_options_and_alias(man_pages):
    page = _unroff(man_pages["man/iotctl-mqtt-publish.1"])
    assert "iotctl mqtt publish [OPTIONS] [MESSAGE]" in page
    options = _section(page, "OPTIONS")
    assert "-t, --topic TOPIC" in options
    assert "[default: localhost]" in options
    assert "IOTCTL_MQTT_HOST" in options
    assert "iotctl mqtt pub" in _section(page, "ALIASES")
    # a \b paragraph of click help keeps its lines
    description = _section(page, "DESCRIPTION")
    assert ".nf\n" in description and "iotctl mqtt pub -t sensors/t1 -m 21.5\n" in description


# --------------------------------------------------------------------------- roff


def test_pages_are_valid_roff(man_pages):
    """Structural checks, then a real formatter's warnings (groff, or mandoc)."""
    for name, text in man_pages.items():
        lines = text.splitlines()
        assert lines[1].startswith(".TH "), name
        assert not re.search(r"\d{4}-\d{2}-\d{2}", lines[1]), f"{name}: date in .TH"
        for number, line in enumerate(lines, 1):
            where = f"{name}:{number}: {line!r}"
            assert line.isascii(), f"non-ASCII (use \\[uXXXX]): {where}"
            assert line.strip(), f"empty line: {where}"
            assert not line.startswith("'"), f"line starts with a quote: {where}"
            if not line.startswith("."):
                # every hyphen escaped, every backslash starts a known escape
                assert not re.search(r"(?<!\\)-", line), f"unescaped hyphen: {where}"
                assert not re.search(r"\\(?![-e&f(\[ ])", line), f"odd escape: {where}"

    groff, mandoc = shutil.which("groff"), shutil.which("mandoc")
    if not groff and not mandoc:
        pytest.fail("neither groff nor mandoc is installed to lint the man pages; "
                    "run: scripts/services up tools", pytrace=False)
    problems = []
    for name in sorted(man_pages):
        path = ROOT / name
        if groff:
            proc = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", str(path)],
                                  capture_output=True, text=True, timeout=30)
            output = proc.stderr.strip()
        else:
            proc = subprocess.run([mandoc, "-Tlint", "-W", "warning", str(path)],
                                  capture_output=True, text=True, timeout=30)
            # the pages carry no date on purpose (deterministic output)
            output = "\n".join(line for line in (proc.stdout + proc.stderr).splitlines()
                               if "date" not in line.lower())
        if output:
            problems.append(f"{name}:\n{output}")
    assert not problems, "\n".join(problems)


def test_man_finds_the_pages_from_the_environments_bin():
    """`man iotctl` works in the environment the tests run in: a regular install copies
    the pages to <prefix>/share/man, an editable one (scripts/test) links them there
    (scripts/link-man); man-db looks in ../share/man of every PATH entry."""
    import shutil
    import subprocess
    import sys

    man = shutil.which("man")
    assert man is not None, "man is missing: scripts/services up tools installs man-db"
    bindir = str(Path(sys.executable).parent)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": "/nonexistent", "MANPATH": ""}
    for page in ("iotctl", "iotctl-mqtt-publish", "iotctl-bridge"):
        r = subprocess.run([man, "-w", page], capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode == 0 and r.stdout.strip().endswith(f"{page}.1"), (page, r.stderr)

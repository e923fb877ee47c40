"""`iotctl completion SHELL` and click's completion protocol, end to end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _complete(iotctl_proc, words: str, cword: int | None = None) -> list[tuple[str, str]]:
    """What bash would get back for COMP_WORDS/COMP_CWORD: (type, value) pairs."""
    if cword is None:
        cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    proc = iotctl_proc(env={"_IOTCTL_COMPLETE": "bash_complete", "COMP_WORDS": words,
                            "COMP_CWORD": str(cword)})
    assert proc.returncode == 0, proc.stderr.decode()
    items = []
    for line in proc.stdout.decode().splitlines():
        kind, _, value = line.partition(",")
        items.append((kind, value))
    return items


def test_completion_bash_prints_a_bash_script_for_iotctl(iotctl):
    result = iotctl("completion", "bash")
    assert result.exit_code == 0, result
    assert result.stderr == ""
    assert "_IOTCTL_COMPLETE=bash_complete" in result.stdout
    assert "complete -o nosort -F _iotctl_completion iotctl" in result.stdout


@pytest.mark.parametrize("shell, marker", [("zsh", "#compdef iotctl"),
                                           ("fish", "complete --no-files --command iotctl")])
def test_completion_zsh_and_fish(iotctl, shell, marker):
    result = iotctl("completion", shell)
    assert result.exit_code == 0, result
    assert marker in result.stdout
    assert f"_IOTCTL_COMPLETE={shell}_complete" in result.stdout


def test_completion_of_an_unknown_shell_is_a_usage_error(iotctl):
    result = iotctl("completion", "tcsh")
    assert result.exit_code == 2, result
    assert result.stdout == ""
    assert "iotctl: error:" in result.stderr


def test_completion_matches_committed_script(iotctl):
    committed = Path(__file__).resolve().parent.parent / "completions" / "iotctl.bash"
    assert iotctl("completion", "bash").stdout == committed.read_text(), \
        "completions/ is stale: run scripts/gen-completions and commit"


def test_round_trip_completes_the_protocol_group(iotctl_proc):
    assert ("plain", "mqtt") in _complete(iotctl_proc, "iotctl mq")


def test_round_trip_completes_options_after_an_alias(iotctl_proc):
    values = [value for _, value in _complete(iotctl_proc, "iotctl mqtt pub --to")]
    assert values == ["--topic"]


def test_round_trip_completes_profile_names(iotctl_proc):
    profiles = Path(os.environ["IOTCTL_CONFIG_DIR"]) / "profiles"
    profiles.mkdir(parents=True)
    (profiles / "lab.toml").write_text('[mqtt]\nhost = "broker.lab"\n')
    (profiles / "prod.toml").write_text('[mqtt]\nhost = "broker.prod"\n')

    assert _complete(iotctl_proc, "iotctl --profile l") == [("plain", "lab")]
    # the global option is accepted after the command too, and completes there as well
    assert _complete(iotctl_proc, "iotctl mqtt sub --profile l") == [("plain", "lab")]
    assert sorted(_complete(iotctl_proc, "iotctl --profile ")) == [("plain", "lab"), ("plain", "prod")]

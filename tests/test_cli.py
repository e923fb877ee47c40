"""The root command: help, version, global options in both places, errors, import boundary."""

import json
import subprocess
import sys

import pytest

from iotctl import __version__


def test_help_lists_every_group(iotctl):
    r = iotctl("--help")
    assert r.exit_code == 0
    for group in ("mqtt", "coap", "amqp", "stomp", "xmpp", "profile", "completion"):
        assert f"\n  {group} " in r.stdout
    assert "Exit status" in r.stdout


def test_version(iotctl):
    r = iotctl("--version")
    assert (r.exit_code, r.stdout) == (0, f"iotctl {__version__}\n")


def test_no_arguments_shows_help(iotctl):
    r = iotctl()
    assert r.exit_code == 0 and r.stderr == ""
    assert r.stdout.startswith("Usage: iotctl") and "\nCommands:\n" in r.stdout


def test_unknown_command_is_one_line_usage_error(iotctl):
    r = iotctl("mqqt")
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("iotctl: error: No such command 'mqqt'")
    assert all(line.startswith("iotctl: ") for line in lines)
    assert "Traceback" not in r.stderr


def test_bad_option_value_is_usage_error_with_hint(iotctl):
    r = iotctl("mqtt", "sub", "-t", "x", "-q", "7")
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [
        "iotctl: error: Invalid value for '-q' / '--qos': 7 is not in the range 0<=x<=2.",
        "iotctl: hint: try 'iotctl mqtt subscribe --help'",
    ]


def test_bad_output_mode_before_and_after(iotctl):
    assert iotctl("-o", "yaml", "mqtt", "pub", "-t", "x", "-m", "y").exit_code == 2
    assert iotctl("mqtt", "pub", "-t", "x", "-m", "y", "-o", "yaml").exit_code == 2


def _run_code(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


HEAVY = ("paho", "aiocoap", "pika", "slixmpp", "stomp", "cbor2", "rich")

PROBE = """
import sys, json, contextlib, io
from iotctl.cli import run
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
    code = run({args!r})
mods = sorted({{m.split('.')[0] for m in sys.modules}})
print(json.dumps({{"code": code, "mods": mods}}))
"""


def _modules_after(args):
    result = json.loads(_run_code(PROBE.format(args=args)))
    return result["code"], set(result["mods"])


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["mqtt", "--help"], ["mqtt", "publish", "--help"],
                                  ["amqp", "--help"], ["amqp", "publish", "--help"]])
def test_help_imports_no_protocol_library(args):
    code, mods = _modules_after(args)
    assert code == 0
    assert not mods & set(HEAVY), f"{args} imported {sorted(mods & set(HEAVY))}"


def test_mqtt_publish_imports_only_paho(peer):
    peer("mosquitto")
    code, mods = _modules_after(["mqtt", "publish", "-t", "iotctl-test/imports", "-m", "x"])
    assert code == 0
    assert "paho" in mods
    assert not mods & {"aiocoap", "pika", "slixmpp", "stomp", "cbor2", "rich"}


def test_amqp_publish_imports_only_pika(peer):
    peer("rabbitmq")
    code, mods = _modules_after(["amqp", "publish", "-r", "iotctl-test.imports", "-m", "x"])
    assert code == 0
    assert "pika" in mods
    assert not mods & {"paho", "aiocoap", "slixmpp", "stomp", "cbor2", "rich"}


def test_unreadable_profile_is_usage_error_traceback_only_with_debug(iotctl, tmp_path):
    # a profile that is a directory makes reading it fail
    bad = tmp_path / "dir.toml"
    bad.mkdir()
    r = iotctl("--profile", str(bad), "mqtt", "pub", "-t", "x", "-m", "y")
    assert r.exit_code == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("iotctl: error: cannot read profile")
    for flag in ("-d", "--debug", "--verbose"):
        r = iotctl(flag, "--profile", str(bad), "mqtt", "pub", "-t", "x", "-m", "y")
        assert "Traceback" in r.stderr, flag


def test_unexpected_exception_is_one_line_exit_1_traceback_only_with_debug(iotctl, monkeypatch):
    """The catch-all of cli.run(): a bug anywhere is one line, exit 1, and a hint."""
    from iotctl import profiles

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(profiles, "load", broken)
    r = iotctl("--profile", "x", "mqtt", "pub", "-t", "x", "-m", "y")
    assert r.exit_code == 1
    assert r.stderr.splitlines() == ["iotctl: error: unexpected RuntimeError: simulated bug",
                                     "iotctl: hint: run again with -d/--debug for the traceback"]
    r = iotctl("--profile", "x", "mqtt", "pub", "-t", "x", "-m", "y", "-d")
    assert r.exit_code == 1
    assert "Traceback" in r.stderr and "RuntimeError: simulated bug" in r.stderr

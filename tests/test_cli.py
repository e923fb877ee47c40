"""The root command: help, version, global options in both places, errors, import boundary."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from iotctl import __version__


def test_help_lists_every_group(iotctl):
    r = iotctl("--help")
    assert r.exit_code == 0
    for group in ("mqtt", "mqttsn", "coap", "amqp", "stomp", "xmpp", "http", "profile", "completion"):
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


HEAVY = tuple(sorted(__import__("iotctl.registry").registry.libraries() | {"cbor2", "rich", "asyncio"}))

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
                                  ["stomp", "--help"], ["stomp", "send", "--help"], ["stomp", "subscribe", "--help"],
                                  ["mqttsn", "--help"], ["mqttsn", "publish", "--help"],
                                  ["mqttsn", "gateway", "--help"],
                                  ["xmpp", "--help"], ["xmpp", "send", "--help"],
                                  ["amqp", "--help"], ["amqp", "publish", "--help"],
                                  ["http", "--help"], ["http", "get", "--help"], ["http", "listen", "--help"],
                                  ["amqp1", "--help"], ["amqp1", "send", "--help"]])
def test_help_imports_no_protocol_library(args):
    code, mods = _modules_after(args)
    assert code == 0
    assert not mods & set(HEAVY), f"{args} imported {sorted(mods & set(HEAVY))}"


def test_mqtt_publish_imports_only_paho(peer):
    peer("mosquitto")
    code, mods = _modules_after(["mqtt", "publish", "-t", "iotctl-test/imports", "-m", "x"])
    assert code == 0
    assert "paho" in mods
    assert not mods & {"aiocoap", "pika", "slixmpp", "stomp", "cbor2", "rich", "proton"}


def test_amqp_publish_imports_only_pika(peer):
    peer("rabbitmq")
    code, mods = _modules_after(["amqp", "publish", "-r", "iotctl-test.imports", "-m", "x"])
    assert code == 0
    assert "pika" in mods
    assert not mods & {"paho", "aiocoap", "slixmpp", "stomp", "cbor2", "rich", "proton"}


def test_stomp_send_imports_only_stomp(peer):
    peer("activemq")
    code, mods = _modules_after(["stomp", "send", "-p", "61614", "-u", "iotctl", "-P", "iotctl-secret",
                                 "/queue/iotctl-test-imports", "-m", "x", "--no-receipt"])
    assert code == 0
    assert "stomp" in mods
    assert not mods & {"paho", "aiocoap", "pika", "slixmpp", "cbor2", "rich", "proton"}


def test_mqttsn_publish_imports_no_protocol_library():
    """The MQTT-SN client is pure Python (its codec): only the gateway loads paho."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # a port nobody answers from (no ICMP)
        silent.bind(("127.0.0.1", 0))
        code, mods = _modules_after(["mqttsn", "publish", "-q", "-1", "-T", "1", "-p",
                                     str(silent.getsockname()[1]), "-m", "x"])
    assert code == 0
    assert not mods & set(HEAVY), sorted(mods & set(HEAVY))


def test_xmpp_command_imports_only_slixmpp(peer):
    peer("prosody")
    ca = str(Path(os.environ.get("IOTCTL_PEERS_DIR", "/var/tmp/iotctl-peers")) / "certs" / "ca.crt")
    code, mods = _modules_after(["xmpp", "unblock", "nobody@localhost", "--jid", "alice@localhost", "-P", "alice-pw",
                                 "--server", "127.0.0.1:5222", "--cafile", ca])
    assert code == 0
    assert "slixmpp" in mods
    assert not mods & {"paho", "aiocoap", "pika", "stomp", "cbor2", "rich"}


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


@pytest.mark.parametrize("typed,expected", [(["mqt"], "'mqtt'"), (["coap", "gte"], "'get'"),
                                            (["profle"], "'profile'"), (["mqtt", "retaind"], "'retained'")])
def test_misspelt_group_or_command_gets_did_you_mean(iotctl, typed, expected):
    r = iotctl(*typed)
    assert r.exit_code == 2
    assert r.stderr.splitlines()[0] == f"iotctl: error: No such command '{typed[-1]}'. Did you mean {expected}?"


def test_every_group_help_shows_examples(iotctl):
    from iotctl.registry import names

    for group in [*names(), "profile"]:
        r = iotctl(group, "--help")
        assert r.exit_code == 0
        examples = [line for line in r.stdout.splitlines() if line.strip().startswith(f"iotctl {group} ")]
        assert 2 <= len(examples) <= 6 or group in ("amqp", "stomp", "xmpp"), (group, r.stdout)


def test_command_lists_are_not_cut_mid_sentence(iotctl):
    for group in ("profile", "mqtt", "coap"):
        r = iotctl(group, "--help")
        listing = r.stdout.split("Commands:\n", 1)[1]
        for line in listing.splitlines():
            assert not line.rstrip().endswith(("e.g.", ",")), line


def test_completion_names_the_supported_shells(iotctl):
    r = iotctl("completion", "tcsh")
    assert r.exit_code == 2
    assert "'tcsh' is not one of 'bash', 'zsh', 'fish'" in r.stderr and "{bash|zsh|fish}" not in r.stderr


def test_retained_list_filter_is_optional_in_usage(iotctl):
    r = iotctl("mqtt", "retained", "list", "--help")
    assert "[FILTER]" in r.stdout.splitlines()[0]


@pytest.mark.parametrize("template,why", [
    ("{nope}", "unknown field {nope}"), ("{payload.__class__}", "attribute access"), ("{0}", "positional"),
    ("{payload:>999999999}", "widths and precisions above 10000"), ("{payload:{size}}", "nested fields"),
])
def test_bad_template_is_usage_error_before_connecting(iotctl, template, why):
    # port 1 refuses: a template checked only later would give exit 3 instead
    for args in (["-F", template, "mqtt", "sub", "-t", "x", "-p", "1"], ["mqtt", "sub", "-t", "x", "-p", "1", "-F", template]):
        r = iotctl(*args)
        assert r.exit_code == 2, r
        assert why in r.stderr and len(r.stderr.splitlines()) == 1


@pytest.mark.parametrize("command", [
    ("mqtt", "pub", "-p", "11883", "-t", "iotctl-test/nothing-sent"),
    ("amqp", "publish", "-r", "iotctl-test-nothing-sent"),
    ("stomp", "send", "/queue/iotctl-test-nothing-sent"),
    ("amqp1", "send", "iotctl-test-nothing-sent"),
    ("coap", "put", "coap://127.0.0.1:5783/iotctl-test-nothing-sent"),
    ("http", "post", "http://127.0.0.1:18080/echo"),
], ids=lambda c: c[0])
def test_a_usage_error_before_anything_was_sent_has_no_send_report(iotctl, peer, tmp_path, command):
    """Issue 22 item 5: a missing --replay file ended with 'sent 0, acknowledged 0
    (--failed FILE keeps ...)'. Against the real peers, so that it would show were the
    file read after connecting: one line, exit 2, nothing written to --failed."""
    peer({"mqtt": "mosquitto-private", "amqp": "rabbitmq", "stomp": "rabbitmq-stomp", "amqp1": "rabbitmq",
          "coap": "coap-server", "http": "nginx"}[command[0]])
    failed = tmp_path / "failed.jsonl"
    r = iotctl(*command, "--replay", str(tmp_path / "missing.jsonl"), "--failed", str(failed))
    assert (r.exit_code, r.stderr) == (2, f"iotctl: error: cannot read file {tmp_path / 'missing.jsonl'}: "
                                          "No such file or directory\n"), r
    assert not failed.exists() or failed.read_bytes() == b""


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["mqtt", "--help"], ["completion", "bash"],
                                  ["profile", "--help"]])
def test_a_full_disk_under_text_output_is_one_line_and_exit_1(args):
    """stdout on /dev/full (ENOSPC) under what click prints (help, completion) or the
    express lane (--version): one line, exit 1 (it was `unexpected OSError`, and a
    traceback for --version)."""
    import subprocess
    import sys

    from tests.helpers import clean_env

    with open("/dev/full", "wb") as full:
        r = subprocess.run([sys.executable, "-m", "iotctl", *args], stdout=full, stderr=subprocess.PIPE,
                           env=clean_env(), timeout=60)
    assert (r.returncode, r.stderr) == (1, b"iotctl: error: cannot write output: no space left on device\n")

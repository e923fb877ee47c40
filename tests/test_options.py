"""Shared options: one definition, every command; each protocol reads its own variables."""

import click

from iotctl.cli import cli


def _command(*path):
    ctx = click.Context(cli)
    cmd = cli
    for name in path:
        cmd = cmd.get_command(ctx, name)
    return cmd


def test_payload_options_are_one_definition_across_commands():
    publish = {p.name: p for p in _command("mqtt", "publish").params}
    put = {p.name: p for p in _command("coap", "put").params}
    assert publish["encode"] is put["encode"]  # the same Option object, built once
    host_sub = {p.name: p for p in _command("mqtt", "subscribe").params}["host"]
    assert host_sub is {p.name: p for p in _command("mqtt", "retained", "list").params}["host"]


def test_each_protocol_reads_its_own_environment(iotctl, peer):
    peer("mosquitto-private")
    # the same shared -m option: only IOTCTL_MQTT_MESSAGE applies to mqtt
    r = iotctl("mqtt", "pub", "-p", "11883", "-t", "iotctl-test/env", env={"IOTCTL_COAP_MESSAGE": "x"})
    assert r.exit_code == 2 and "no payload" in r.stderr
    r = iotctl("mqtt", "pub", "-p", "11883", "-t", "iotctl-test/env", env={"IOTCTL_MQTT_MESSAGE": "x"})
    assert r.exit_code == 0, r
    # nested groups (mqtt retained list) read IOTCTL_MQTT_* too
    r = iotctl("mqtt", "retained", "list", "iotctl-test/none/#", env={"IOTCTL_MQTT_PORT": "1"})
    assert r.exit_code == 3 and "mqtt://localhost:1:" in r.stderr


def test_global_options_on_commands_do_not_read_protocol_variables(iotctl, peer):
    peer("mosquitto-private")
    r = iotctl("mqtt", "pub", "-p", "11883", "-t", "iotctl-test/env", "-m", "x", env={"IOTCTL_MQTT_OUTPUT": "nope"})
    assert r.exit_code == 0, r

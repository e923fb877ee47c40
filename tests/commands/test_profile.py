"""`iotctl profile ...` as a user drives it, and the files it leaves behind."""

import os
import stat
import tomllib

import pytest


def profile_file(config_dir, name):
    return config_dir / "profiles" / f"{name}.toml"


def test_add_show_list_use_remove(iotctl, config_dir):
    r = iotctl("profile", "add", "lab", "mqtt.host=broker.lab", "mqtt.port=8883", "mqtt.tls=true",
               "mqtt.username=dev", "mqtt.password=s3cret")
    assert r.exit_code == 0, r
    path = profile_file(config_dir, "lab")
    assert tomllib.loads(path.read_text()) == {
        "mqtt": {"host": "broker.lab", "port": 8883, "tls": True, "username": "dev", "password": "s3cret"}}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    r = iotctl("profile", "show", "lab")
    assert r.exit_code == 0
    assert 'password = "********"' in r.stdout and "s3cret" not in r.stdout
    assert 'host = "broker.lab"' in r.stdout
    assert "s3cret" in iotctl("profile", "show", "lab", "--show-secrets").stdout

    assert iotctl("profile", "list").stdout == "  lab\n"
    assert iotctl("profile", "use", "lab").exit_code == 0
    assert iotctl("profile", "list").stdout == "* lab\n"
    assert iotctl("profile", "show").exit_code == 0  # the one in use

    assert iotctl("profile", "remove", "lab").exit_code == 0
    assert not path.exists()
    assert iotctl("profile", "list").stdout == ""


def test_set_and_unset(iotctl, config_dir):
    assert iotctl("profile", "set", "p", "mqtt.port=1884", "coap.timeout=3").exit_code == 0
    assert iotctl("profile", "unset", "p", "mqtt.port").exit_code == 0
    assert tomllib.loads(profile_file(config_dir, "p").read_text()) == {"coap": {"timeout": 3}}
    r = iotctl("profile", "unset", "p", "mqtt.port")
    assert r.exit_code == 2 and "not set" in r.stderr


def test_add_refuses_to_overwrite_and_validates(iotctl):
    assert iotctl("profile", "add", "a", "mqtt.port=1").exit_code == 0
    r = iotctl("profile", "add", "a", "mqtt.port=2")
    assert r.exit_code == 2 and "exists" in r.stderr
    assert iotctl("profile", "add", "a", "--force", "mqtt.port=2").exit_code == 0
    for bad, why in [("mqtt.nosuch=1", "unknown setting"), ("zigbee.port=1", "unknown protocol"),
                     ("port=1", "PROTOCOL.KEY=VALUE")]:
        r = iotctl("profile", "add", "b", bad)
        assert r.exit_code == 2 and why in r.stderr, (bad, r)
    r = iotctl("profile", "add", "../evil", "mqtt.port=1")
    assert r.exit_code == 2


def test_missing_profile_is_clear_error(iotctl):
    r = iotctl("--profile", "ghost", "mqtt", "pub", "-t", "x", "-m", "y")
    assert r.exit_code == 2
    assert r.stderr.startswith("iotctl: error: no profile 'ghost'")


def test_broken_toml_is_clear_error(iotctl, config_dir):
    path = profile_file(config_dir, "broken")
    path.parent.mkdir(parents=True)
    path.write_text("[mqtt\nport = ")
    os.chmod(path, 0o600)
    r = iotctl("--profile", "broken", "mqtt", "pub", "-t", "x", "-m", "y")
    assert r.exit_code == 2 and "not valid TOML" in r.stderr


def test_world_readable_profile_warns(iotctl, config_dir, tmp_path):
    path = tmp_path / "open.toml"
    path.write_text('[mqtt]\nhost = "nowhere.invalid"\nport = 1\n')
    os.chmod(path, 0o644)
    r = iotctl("--profile", str(path), "mqtt", "pub", "-t", "x", "-m", "y", "-h", "127.0.0.1")
    assert "can be read by others" in r.stderr


def test_path(iotctl, config_dir):
    assert iotctl("profile", "path").stdout.strip() == str(config_dir / "profiles")
    assert iotctl("profile", "path", "x").stdout.strip() == str(config_dir / "profiles" / "x.toml")


# --------------------------------------------------------------------------- precedence, on the wire

AUTH = ("-p", "1884")


@pytest.fixture
def lab(iotctl, peer):
    """A profile pointing at the password-protected listener with the right password."""
    peer("mosquitto-auth")
    assert iotctl("profile", "add", "lab", "mqtt.port=1884", "mqtt.username=iotctl",
                  "mqtt.password=iotctl-secret", "mqtt.host=127.0.0.1").exit_code == 0
    return "lab"


def pub(iotctl, *args, env=None):
    return iotctl("mqtt", "pub", "-t", "iotctl-test/precedence", "-m", "x", *args, env=env)


def test_profile_supplies_connection(iotctl, lab):
    assert pub(iotctl, "--profile", lab).exit_code == 0
    # --profile after the command and before the group are the same
    assert iotctl("--profile", lab, "mqtt", "pub", "-t", "iotctl-test/p", "-m", "x").exit_code == 0
    # without the profile the listener refuses an anonymous client
    assert pub(iotctl, "-p", "1884").exit_code == 4


def test_environment_beats_profile(iotctl, lab):
    assert pub(iotctl, "--profile", lab, env={"IOTCTL_MQTT_PASSWORD": "wrong"}).exit_code == 4
    assert pub(iotctl, env={"IOTCTL_PROFILE": lab}).exit_code == 0


def test_command_line_beats_environment(iotctl, lab):
    env = {"IOTCTL_MQTT_PASSWORD": "wrong"}
    assert pub(iotctl, "--profile", lab, "-P", "iotctl-secret", env=env).exit_code == 0
    assert pub(iotctl, "--profile", lab, "-P", "wrong").exit_code == 4


def test_profile_in_use_applies_and_profile_flag_overrides(iotctl, lab):
    assert iotctl("profile", "use", lab).exit_code == 0
    assert pub(iotctl).exit_code == 0
    iotctl("profile", "add", "other", "mqtt.port=1884", "mqtt.host=127.0.0.1")
    assert pub(iotctl, "--profile", "other").exit_code == 4


def test_password_env_and_cmd(iotctl, peer):
    peer("mosquitto-auth")
    iotctl("profile", "add", "e", "mqtt.port=1884", "mqtt.username=iotctl", "mqtt.password_env=LAB_PW")
    assert pub(iotctl, "--profile", "e", env={"LAB_PW": "iotctl-secret"}).exit_code == 0
    r = pub(iotctl, "--profile", "e")
    assert r.exit_code == 2 and "LAB_PW" in r.stderr
    iotctl("profile", "add", "c", "mqtt.port=1884", "mqtt.username=iotctl",
           "mqtt.password_cmd=echo iotctl-secret")
    assert pub(iotctl, "--profile", "c").exit_code == 0
    iotctl("profile", "add", "f", "mqtt.port=1884", "mqtt.username=iotctl", "mqtt.password_cmd=exit 3")
    r = pub(iotctl, "--profile", "f")
    assert r.exit_code == 1 and "password_cmd" in r.stderr
    r = iotctl("profile", "show", "c")
    assert "echo iotctl-secret" in r.stdout  # a command is not a secret


def test_profile_by_path(iotctl, peer, tmp_path):
    peer("mosquitto-auth")
    path = tmp_path / "mine.toml"
    path.write_text('[mqtt]\nport = 1884\nusername = "iotctl"\npassword = "iotctl-secret"\n')
    os.chmod(path, 0o600)
    r = pub(iotctl, "--profile", str(path))
    assert r.exit_code == 0 and r.stderr == ""

"""Shared fixtures: run the CLI as a user would, and find the real peers.

- `iotctl(*args, input=..., env=...)` runs the CLI in-process (click's CliRunner,
  NO_COLOR=1, COLUMNS=80, a temporary config dir) and returns stdout, stderr and
  the exit code as a user sees them.
- `iotctl_proc(...)` runs it as a real subprocess (for stdin streams, pipes, signals).
- `peer(name)` fails (never skips) when a real peer is not running, naming the
  command that starts it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from iotctl.cli import run
from tests.helpers import clean_env, tcp_answers

ROOT = Path(__file__).resolve().parent.parent
PEERS_DIR = Path(os.environ.get("IOTCTL_PEERS_DIR", "/var/tmp/iotctl-peers"))
CERTS = PEERS_DIR / "certs"

# name -> (host, port, transport); see scripts/services
PEERS = {
    "mosquitto": ("127.0.0.1", 1883, "tcp"),
    "mosquitto-private": ("127.0.0.1", 11883, "tcp"),
    "mosquitto-limits": ("127.0.0.1", 11885, "tcp"),  # every limit set; 11886 needs a password
    "mosquitto-auth": ("127.0.0.1", 1884, "tcp"),
    "mosquitto-tls": ("127.0.0.1", 8883, "tcp"),
    "mosquitto-mtls": ("127.0.0.1", 8884, "tcp"),
    "mosquitto-ws": ("127.0.0.1", 9001, "tcp"),
    "mosquitto-wss": ("127.0.0.1", 9443, "tcp"),
    "coap-server": ("127.0.0.1", 5783, "udp"),
    "coaps-server": ("127.0.0.1", 5785, "udp"),  # its DTLS port is 5786 (PSK iotctl / iotctl-psk)
    "rabbitmq": ("127.0.0.1", 5672, "tcp"),
    "rabbitmq-stomp": ("127.0.0.1", 61613, "tcp"),
    "rabbitmq-mqtt": ("127.0.0.1", 11887, "tcp"),  # RabbitMQ's MQTT plugin (guest/guest)
    "activemq": ("127.0.0.1", 61614, "tcp"),
    "amqp1": ("127.0.0.1", 5691, "tcp"),  # the Qpid Proton example broker; RabbitMQ's AMQP 1.0 is on 5672  # STOMP; STOMP over TLS on 61615
    "prosody": ("127.0.0.1", 5222, "tcp"),  # XMPP c2s (STARTTLS); direct TLS on 5223; domain localhost
    "nginx": ("127.0.0.1", 18080, "tcp"),  # HTTP; HTTPS on 18443 (the test CA's server.crt)
}
SERVICE_OF = {"coap-server": "coap", "coaps-server": "coaps", "rabbitmq-stomp": "rabbitmq-stomp",
              "rabbitmq-mqtt": "rabbitmq-mqtt"}


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str
    stdout_bytes: bytes

    def __repr__(self) -> str:
        return f"Result(exit_code={self.exit_code}, stdout={self.stdout[:500]!r}, stderr={self.stderr[:500]!r})"


@click.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def _entry(args):
    sys.exit(run(list(args)))


BASE_ENV = {"NO_COLOR": "1", "COLUMNS": "80", "FORCE_COLOR": None, "IOTCTL_PROFILE": None,
            "IOTCTL_OUTPUT": None, "IOTCTL_FORMAT": None}


@pytest.fixture(autouse=True)
def config_dir(tmp_path, monkeypatch):
    """Every test gets its own empty config dir and no IOTCTL_* variables from outside."""
    for key in list(os.environ):
        if key.startswith("IOTCTL_") and key != "IOTCTL_PEERS_DIR":
            monkeypatch.delenv(key)
    cfg = tmp_path / "config"
    monkeypatch.setenv("IOTCTL_CONFIG_DIR", str(cfg))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    return cfg


@pytest.fixture
def iotctl():
    def invoke(*args: str, input: str | bytes | None = None, env: dict | None = None) -> Result:
        runner = CliRunner()
        result = runner.invoke(_entry, [str(a) for a in args], input=input, env={**BASE_ENV, **(env or {})},
                               catch_exceptions=False)
        return Result(result.exit_code, result.stdout, result.stderr, result.stdout_bytes)

    return invoke


@pytest.fixture
def iotctl_proc():
    """Run iotctl as a subprocess; returns a CompletedProcess (bytes stdout/stderr)."""

    def invoke(*args: str, input: bytes | None = None, env: dict | None = None, timeout: float = 60,
               **kw) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "iotctl", *map(str, args)], input=input,
                              capture_output=True, env=clean_env(**(env or {})), timeout=timeout, **kw)

    return invoke


def _answers(host: str, port: int, transport: str) -> bool:
    if transport == "udp":
        return _coap_ping(host, port)
    return tcp_answers(host, port)


def _coap_ping(host: str, port: int) -> bool:
    """A CoAP empty confirmable message (a 'ping'); a server answers with RST."""
    msg_id = os.getpid() & 0xFFFF
    packet = bytes([0x40, 0x00, msg_id >> 8, msg_id & 0xFF])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1)
        try:
            sock.sendto(packet, (host, port))
            data, _ = sock.recvfrom(64)
        except OSError:
            return False
    return len(data) >= 4


@pytest.fixture(scope="session")
def peer():
    checked: dict[str, tuple[str, int]] = {}

    def need(name: str) -> tuple[str, int]:
        if name not in checked:
            host, port, transport = PEERS[name]
            if not _answers(host, port, transport):
                service = SERVICE_OF.get(name, name.split("-")[0])
                pytest.fail(f"peer {name} is not answering on {host}:{port}/{transport}; "
                            f"start it with: scripts/services up {service}", pytrace=False)
            checked[name] = (host, port)
        return checked[name]

    return need


@pytest.fixture
def certs(peer):
    peer("mosquitto-tls")
    paths = {name: CERTS / f"{name}" for name in
             ("ca.crt", "other-ca.crt", "client.crt", "client.key", "server.crt")}
    for path in paths.values():
        if not path.exists():
            pytest.fail(f"test certificate {path} is missing; run: scripts/services up mosquitto", pytrace=False)
    return {k.replace(".", "_").replace("-", "_"): str(v) for k, v in paths.items()}


@pytest.fixture
def topic(request):
    """A topic no other test (or run) uses."""
    return f"iotctl-test/{request.node.name[:40]}/{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- running in parallel

# scripts/test runs the suite on two workers (pytest-xdist, --dist loadgroup): a module's
# tests stay together on one worker, and modules that share a peer's fixed accounts say
# so with a module-level XDIST_GROUP (the XMPP modules log in as alice and bob), so they
# never run at the same time.


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    grouping = bool(getattr(config.option, "loadgroup", False))
    for item in items:
        module = item.module
        group = getattr(module, "XDIST_GROUP", None) or module.__name__
        item.add_marker(pytest.mark.xdist_group(group))
        if grouping:
            _suffix_node_id(item, group)


def _suffix_node_id(item, group: str) -> None:
    """What pytest-xdist's worker does for an xdist_group mark (the node id ends in
    @GROUP, which its scheduler groups by): xdist 3.8 writes `_nodeid`, which pytest 9.2
    no longer reads (the id is the structured `_id`), so the groups were silently
    ignored and the XMPP modules ran at the same time."""
    if hasattr(item, "_id") and "@" not in str(item._id).rsplit("]", 1)[-1]:
        from _pytest.nodeid import NodeId

        item._id = NodeId.parse(f"{item._id}@{group}")

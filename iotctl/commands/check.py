"""`iotctl check URL`: connect and report what the server is and what it allows (the
protocol's registry entry names the checks; checking.py holds the report)."""

from __future__ import annotations

import click

from iotctl.groups import Command
from iotctl.options import check_options


@click.command(cls=Command)
@click.argument("url")
@check_options()
def command(url, checking):
    """Connect to URL and report what the server is and allows: connect round trip,
    server identity, authentication, TLS (protocol, cipher, certificate names, issuer,
    days to expiry, whether it verifies), and the protocol's own capabilities: MQTT
    versions, limits and probed QoS round trips, retain, wildcards, shared
    subscriptions, largest payload, longest topic and client id; AMQP server
    properties, capabilities, frame and channel limits; STOMP server, version and
    heart-beats; XMPP stream features and service discovery; CoAP resources and
    block-wise transfer; the MQTT-SN gateway's id; HTTP status, server and methods.

    Connection settings go in the URL as for every URL endpoint ('?cafile=ca.pem').
    Exit 0 when the server answers (a limit it has is a finding, not an error); the
    usual codes when it does not. -o json for scripts; piped, tab-separated lines
    (section, check, value, status).

    \b
    iotctl check mqtt://127.0.0.1
    iotctl check 'mqtts://broker.example.com?cafile=ca.pem' --no-probe
    iotctl check 'amqp://guest:guest@127.0.0.1/%2f' -o json
    """
    from iotctl import checking as checks, resolver

    target = resolver.resolve(url, "check")
    checks.run(target.protocol, target.url.shown, target.url.host, target.arguments, checking)

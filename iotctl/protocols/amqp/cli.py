"""The `amqp` group: not built yet; it exists so the command tree is complete."""

import click

from iotctl.groups import ProtocolGroup


@click.group(cls=ProtocolGroup, protocol="amqp")
def group():
    """AMQP commands (not built yet)."""

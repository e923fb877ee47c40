"""The `stomp` group: not built yet; it exists so the command tree is complete."""

import click

from iotctl.groups import ProtocolGroup


@click.group(cls=ProtocolGroup, protocol="stomp")
def group():
    """STOMP commands (not built yet)."""

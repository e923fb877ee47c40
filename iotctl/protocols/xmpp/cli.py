"""The `xmpp` group: not built yet; it exists so the command tree is complete."""

import click

from iotctl.context import ProtocolGroup


@click.group(cls=ProtocolGroup, protocol="xmpp")
def group():
    """XMPP commands (not built yet)."""

"""The `xmpp` group: not built yet; it exists so the command tree is complete."""

import click

from iotctl.groups import ProtocolGroup


@click.group(cls=ProtocolGroup, protocol="xmpp")
def group():
    """XMPP commands (not built yet)."""

"""The `coap` group (being built)."""

import click

from iotctl.context import ProtocolGroup


@click.group(cls=ProtocolGroup, protocol="coap")
def group():
    """CoAP commands (being built)."""

"""`iotctl completion bash|zsh|fish`: click's own completion script for iotctl."""

from __future__ import annotations

import click

from iotctl.groups import Command

SHELLS = ("bash", "zsh", "fish")


def completion_source(shell: str) -> str:
    from click.shell_completion import get_completion_class

    from iotctl.cli import cli

    cls = get_completion_class(shell)
    return cls(cli, {}, "iotctl", "_IOTCTL_COMPLETE").source()


@click.command(cls=Command)
@click.argument("shell", metavar="SHELL", type=click.Choice(SHELLS))
def command(shell: str) -> None:
    """Print the shell completion script for SHELL (bash, zsh or fish).

    \b
    bash: eval "$(iotctl completion bash)"    (or save it in ~/.local/share/bash-completion/completions/iotctl)
    zsh:  eval "$(iotctl completion zsh)"
    fish: iotctl completion fish > ~/.config/fish/completions/iotctl.fish
    """
    click.echo(completion_source(shell), nl=False)

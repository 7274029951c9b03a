"""Client commands of the ``omniflash`` CLI: generate, tasks."""

from __future__ import annotations

import click

__all__ = ["generate", "tasks"]


@click.command()
def generate() -> None:
    """Generate a video (not yet available)."""
    raise click.ClickException("not yet available")


@click.group()
def tasks() -> None:
    """List, get and cancel tasks (not yet available)."""

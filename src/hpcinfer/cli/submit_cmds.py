"""CLI commands for `hpcinfer submit` (registered on the app by `register`)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `hpcinfer` app."""

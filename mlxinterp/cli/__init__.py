"""The `mlxinterp` command (Typer). Each command validates its arguments before any model loads."""
from mlxinterp.cli.commands import app, main

__all__ = ["app", "main"]

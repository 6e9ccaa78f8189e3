"""What every `mlxinterp` command shares: the consoles, the model options, JSON output, and `run`,
which turns every expected failure into one clear line and exit code 2.

The entry point re-executes itself once with OpenBLAS preloaded on Linux
(platform.ensure_fast_blas), because MLX's CPU wheel ships a slow BLAS.
"""
from __future__ import annotations

import sys

import click
import typer
from rich.console import Console

from mlxinterp.core.errors import MlxInterpError
from mlxinterp.core.io import dumps
from mlxinterp.core.platform import ensure_fast_blas

console = Console(stderr=True)
out = Console()

MODEL_OPT = typer.Option("default", "--model", "-m", help="default | local mlx-lm dir | HF repo id in the local cache | .gguf file; optional @8bit/@4bit variant")
DTYPE_OPT = typer.Option(None, "--dtype", help="float32 | float16 | bfloat16 | native (as stored). Default: float32 on CPU, as stored on Metal")


def load_model(model: str, dtype: str | None):
    from mlxinterp.core.hooks import load

    with console.status(f"loading {model} ..."):
        return load(model, dtype=dtype)


def print_json(obj) -> None:
    sys.stdout.write(dumps(obj) + "\n")


def run(app: typer.Typer, argv: list[str] | None = None) -> None:
    """Run a Typer app as a command: expected errors are one line and exit 2, Ctrl-C exits 130."""
    if argv is None:  # a real command line, not a call from Python (which must not be re-executed)
        ensure_fast_blas()
    try:
        code = app(args=argv, standalone_mode=False)
    except MlxInterpError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        console.print("interrupted")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # usage errors: bad option, '--alpha lots'
        if isinstance(e, _usage_errors()):
            e.show()
            sys.exit(e.exit_code)
        raise
    if isinstance(code, int) and code:  # typer turns Ctrl-C into an exit code (130) when not standalone
        if code == 130:
            console.print("interrupted")
        sys.exit(code)


def _usage_errors() -> tuple[type, ...]:
    """click's ClickException and the one typer raises: typer >= 0.20 vendors its own click,
    whose exceptions are not click's (see BUGFIX.md)."""
    vendored = [c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"]
    return (click.ClickException, *vendored)

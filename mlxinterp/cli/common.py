"""What every `mlxinterp` command shares: the consoles, the model options, JSON output, and `run`,
which turns every expected failure into one clear line and exit code 2.

The entry point re-executes itself once with OpenBLAS preloaded on Linux
(platform.ensure_fast_blas), because MLX's CPU wheel ships a slow BLAS.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import re
import sys

import click
import typer
from rich.console import Console
from rich.text import Text

from mlxinterp.core.errors import MlxInterpError
from mlxinterp.core.io import dumps
from mlxinterp.core.platform import check_environment, ensure_fast_blas
from mlxinterp.core.validate import env_flag

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel



def _console(stderr: bool) -> Console:
    """A terminal wraps at its width; a pipe or a file gets whole lines (no wrapping, no '…'), so
    generated text, paths and suggested commands survive copy-paste and grep."""
    tty = (sys.stderr if stderr else sys.stdout).isatty()
    return Console(stderr=stderr, width=None if tty else 100_000, soft_wrap=not tty)


console = _console(stderr=True)
out = _console(stderr=False)

MODEL_OPT = typer.Option("default", "--model", "-m", help="default | local mlx-lm dir | HF repo id in the local cache | .gguf file; optional @8bit/@4bit variant")
DTYPE_OPT = typer.Option(None, "--dtype", help="float32 | float16 | bfloat16 | native (as stored). Default: float32 on CPU, as stored on Metal")


def load_model(model: str, dtype: str | None):
    from mlxinterp.core.hooks import load

    with console.status(f"loading {model} ..."):
        return load(model, dtype=dtype)


# Control tokens named like <start_of_image> or <end_of_turn>: Gemma's GGUF tokenizer does not flag all of
# them special, but they are markup for the model, not text (HTML-like added tokens such as <table> stay).
_CONTROL_TOKEN = re.compile(r"^<(\|[^<>|]+\||[a-z]+(_[a-z0-9]+)+|unused\d+)>$")


def shown_text(hm: HookedModel, generation) -> str:
    """Generated text as shown to a person: special and control tokens removed (JSON keeps them)."""
    tok = hm.tokenizer
    special = set(getattr(tok, "all_special_ids", []) or [])
    text = generation.text  # mlx-lm's own detokenization, minus the hidden tokens' strings
    for token, i in tok.get_added_vocab().items():
        if token in text and (i in special or _CONTROL_TOKEN.match(token)):
            text = text.replace(token, "")
    return text


def print_json(obj) -> None:
    sys.stdout.write(dumps(obj) + "\n")


def run(app: typer.Typer, argv: list[str] | None = None) -> None:
    """Run a Typer app as a command: expected errors are one line and exit 2, Ctrl-C exits 130.

    Anything else is a bug in mlxinterp: one line saying so (exit 1), with the
    traceback only under `--debug` (anywhere on the command line) or MLXINTERP_DEBUG=1.
    """
    if argv is None:  # a real command line, not a call from Python (which must not be re-executed)
        ensure_fast_blas()
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        debug = debug or env_flag("MLXINTERP_DEBUG")
        check_environment()
        code = app(args=args, standalone_mode=False)
    except MlxInterpError as e:
        error_line(str(e))
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        console.print("interrupted")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:
        if isinstance(e, _usage_errors()):  # usage errors: bad option, '--alpha lots'
            where = getattr(getattr(e, "ctx", None), "command_path", None) or "mlxinterp"
            error_line(e.format_message(), hint=f"`{where} --help` lists the arguments and options")
            sys.exit(e.exit_code)
        if debug:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        error_line(f"internal error in mlxinterp (a bug, not a problem with your input): {type(e).__name__}: {first}",
                   hint="please report it with the command you ran; run it again with --debug "
                        "(or MLXINTERP_DEBUG=1) to see the traceback")
        sys.exit(1)
    if isinstance(code, int) and code:  # typer turns Ctrl-C into an exit code (130) when not standalone
        if code == 130:
            console.print("interrupted")
        sys.exit(code)


def error_line(message: str, hint: str | None = None) -> None:
    """'error: message' (+ its hint line) on stderr, never wrapped: logs and CI keep it on one line
    whatever the terminal width, and no text in it is taken for rich markup."""
    text = Text("error:", style="red") + Text(f" {message}")
    if hint:
        text += Text(f"\n  hint: {hint}")
    console.print(text, soft_wrap=True, highlight=False)


def _usage_errors() -> tuple[type, ...]:
    """click's ClickException and the one typer raises: typer >= 0.20 vendors its own click,
    whose exceptions are not click's (see BUGFIX.md)."""
    vendored = [c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"]
    return (click.ClickException, *vendored)

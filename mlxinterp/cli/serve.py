"""`mlxinterp serve`: load a model once and explore it in the browser (docs/serve.md)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from mlxinterp.cli.common import DTYPE_OPT, MODEL_OPT, console, load_model
from mlxinterp.core.errors import MlxInterpError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
WARMUP_PROMPT = "The Eiffel Tower is located in the city of Paris, which is the capital of France and"


def serve(model: str = MODEL_OPT, dtype: Optional[str] = DTYPE_OPT,
          host: str = typer.Option("127.0.0.1", "--host", help="address to bind; anything but loopback needs a token "
                                   "(one is made and printed unless --token is given)"),
          port: int = typer.Option(8000, "--port", help="TCP port (1-65535)"),
          token: Optional[str] = typer.Option(None, "--token", help="require this token on every request "
                                              "(default: none on loopback, a random one elsewhere)"),
          results: Path = typer.Option(Path("results"), "--results", help="results directory the results "
                                       "browser shows (read only)"),
          vectors: Optional[Path] = typer.Option(None, "--vectors", help="directory of steering vectors to offer; "
                                                 "uploads go to its uploads/ folder (default: --results)"),
          tuned_lens: Optional[Path] = typer.Option(None, "--tuned-lens", help="a tuned lens for this model "
                                                    "(`mlxinterp tuned-lens --out FILE`): adds the lens's 'tuned' mode"),
          sae: Optional[Path] = typer.Option(None, "--sae", help="an SAE for this model (a SAELens directory or a "
                                             "Gemma Scope params file; docs/sae.md): adds the 'SAE features' view"),
          queue: int = typer.Option(2, "--queue", help="requests that may wait behind the running one "
                                    "before the server answers 503 busy (0-16)"),
          warmup: bool = typer.Option(True, "--warmup/--no-warmup", help="run one lens view and a short steered "
                                      "generation before serving, so the first real ones do not pay for first-time "
                                      "allocations")) -> None:
    """Explore a model in the browser: logit lens grid, attention patterns, steering playground,
    patching heatmap and the results browser, with the model loaded once.

    Examples:
      [bold]mlxinterp serve[/bold]                      (then open http://127.0.0.1:8000)
      [bold]mlxinterp serve --model default --port 8765 --vectors my-vectors[/bold]
      [bold]mlxinterp serve --host 0.0.0.0[/bold]       (prints a URL with a token, like Jupyter)
    """
    if not 1 <= port <= 65535:
        raise MlxInterpError(f"--port {port} is not allowed; use 1-65535")
    if not 0 <= queue <= 16:
        raise MlxInterpError(f"--queue {queue} is not allowed; use 0-16")
    if token is not None and len(token) < 8:
        raise MlxInterpError("--token must be at least 8 characters")
    vectors = vectors or results
    if tuned_lens is not None and not tuned_lens.is_file():
        raise MlxInterpError(f"--tuned-lens {tuned_lens} is not a file", hint="train one with `mlxinterp tuned-lens --out FILE`")
    if sae is not None and not sae.exists():
        raise MlxInterpError(f"--sae {sae} does not exist", hint="give a SAELens directory (cfg.json + "
                             "sae_weights.safetensors) or a Gemma Scope params.npz")
    for flag, d in (("--results", results), ("--vectors", vectors)):
        if d.exists() and not d.is_dir():
            raise MlxInterpError(f"{flag} {d} is not a directory")
    try:  # optional dependency (the `serve` extra): imported only by this command
        import uvicorn

        from mlxinterp.serve.app import ServeConfig, create_app, new_token
    except ImportError as e:
        raise MlxInterpError(f"`mlxinterp serve` needs the serve extra ({e.name} is missing)",
                             hint="pip install 'mlxinterp[serve]'") from None
    loopback = host in LOOPBACK
    if not loopback and token is None:
        token = new_token()
    hm = load_model(model, dtype)
    config = ServeConfig(results_dir=results, vectors_dir=vectors, token=token, loopback_only=loopback, queue=queue,
                         tuned_lens=tuned_lens, sae=sae)
    app = create_app(hm, config)
    if warmup:
        from mlxinterp.serve.engine import warm_up  # here, not at the top: `mlxinterp --help` stays fast

        t0 = time.perf_counter()
        with console.status("warming up (one lens view, two steered tokens) ..."):
            app.state.explorer.worker.run_sync(warm_up, hm, WARMUP_PROMPT, config.limits)
        console.print(f"warm-up: {time.perf_counter() - t0:.1f} s", highlight=False)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    console.print(f"mlxinterp explorer for {hm.info.slug} at [bold]{url}[/bold]  (Ctrl-C stops it)", highlight=False)
    if not loopback:
        console.print(f"[yellow]bound to {host}: anyone who can reach this address and has the token can use "
                      "the model and read the results directory[/yellow]", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="warning")

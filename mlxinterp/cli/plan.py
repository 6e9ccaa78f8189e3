"""`mlxinterp plan`: which layers each host holds when a model is layer-sharded, and whether each share fits."""
from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from mlxinterp.cli.common import DTYPE_OPT, MODEL_OPT, console, out, print_json
from mlxinterp.core.errors import MlxInterpError


def plan(model: str = MODEL_OPT, dtype: Optional[str] = DTYPE_OPT,
         hosts: int = typer.Option(2, "--hosts", help="ranks (Macs) the model's layers are split across"),
         memory: float = typer.Option(..., "--memory", help="memory of each host, in GB (1 GB = 1e9 bytes)"),
         as_json: bool = typer.Option(False, "--json")) -> None:
    """Per-host memory plan for pipeline (layer) sharding, from the model's config (nothing is loaded).

    Example: [bold]mlxinterp plan --model gemma-2-9b-it-4bit --hosts 2 --memory 16[/bold]
    (then `mlx.launch --hosts A,B ... mlxinterp run-suite --shard layers ...`, docs/bigger-models.md)
    """
    from mlxinterp.core.loading import parse_spec
    from mlxinterp.core.memory import gb
    from mlxinterp.suite.planner import plan_hosts, spec_config

    if isinstance(hosts, bool) or hosts < 1:
        raise MlxInterpError(f"--hosts={hosts} is not allowed; use a whole number >= 1")
    if not memory > 0:
        raise MlxInterpError(f"--memory={memory} is not allowed; use a number of GB > 0, e.g. 16")
    cfg, source = spec_config(model)
    if cfg is None:
        raise MlxInterpError(f"no config for {model!r} without loading it (not a local directory, the HF cache "
                             "or the catalogue)", hint="`mlxinterp models --catalogue` lists the known checkpoints")
    n_layers = int(cfg.get("text_config", cfg).get("num_hidden_layers", 0))
    if hosts > n_layers:
        raise MlxInterpError(f"--hosts={hosts} is more than the model's {n_layers} layers; each host needs one",
                             hint=f"use --hosts <= {n_layers}")
    shares, note = plan_hosts(cfg, hosts, int(memory * 1e9), dtype, parse_spec(model)[1])
    report = {"model": model, "config": source, "hosts": hosts, "memory_per_host": int(memory * 1e9),
              "dtype_note": note, "fits": all(s.fits for s in shares), "shares": [s.to_dict() for s in shares]}
    if as_json:
        print_json(report)
        return
    table = Table("host (rank)", "layers", "also holds", "weights", "KV cache", "margin", "needs", f"fits {memory:g} GB")
    for s in shares:
        extra = ", ".join(w for w, on in (("embedding", s.embedding), ("final norm + unembedding", s.unembedding)) if on)
        table.add_row(str(s.rank), f"{s.layers.start}-{s.layers.stop - 1}", extra or "-", gb(s.weights),
                      gb(s.kv_cache), gb(s.margin), gb(s.need), "yes" if s.fits else "[red]no[/red]")
    out.print(table)
    if note:
        console.print(note)
    console.print(f"{model}: {'every host fits' if report['fits'] else 'does NOT fit on every host'} "
                  f"({hosts} x {memory:g} GB; config from {source})", highlight=False)

"""`mlxinterp run-suite --list --cost`: each experiment's forwards, tokens, generated tokens and unembedded
positions, and the time they should take on this machine (mlxinterp.suite.cost)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from rich.table import Table

from mlxinterp.cli.common import console, load_model, out, print_json


def print_cost(models: Sequence[str], only: Optional[str], skip: Optional[str], n: Optional[int], seed: int,
               sets: Sequence[str], reference: Optional[Path], as_json: bool, quick: bool = False) -> None:
    """Load each model, measure its rates here, and print every selected experiment's cost and estimate."""
    from mlxinterp.suite import cost
    from mlxinterp.suite.registry import make_config, parse_overrides, register_builtin, select

    register_builtin()
    exps = select(only, skip)
    overrides = parse_overrides(sets, [e.name for e in exps], quick)
    configs = {e.name: make_config(e, n, seed, overrides.get(e.name)) for e in exps}  # checked before loading
    ref = reference if reference is not None else cost.DEFAULT_REFERENCE
    results = []
    for spec in models:
        hm = load_model(spec, None)
        with console.status(f"measuring {spec}'s forward, token and unembedding rates ..."):
            rates = cost.measure_rates(hm)
        results.append(cost.suite_estimate(exps, configs, hm, rates, ref))
    if as_json:
        print_json(results[0] if len(results) == 1 else results)
        return
    for est in results:
        table = Table("experiment", "source", "items", "forwards/item", "tokens/item", "generated/item",
                      "unembedded/item", "estimate", title=est["model"])
        for name, e in est["experiments"].items():
            p = e.get("per_item") or {}
            secs = e["estimated_seconds"]
            table.add_row(name, e["source"], str(e.get("items", "")), *(f"{p[k]:g}" if k in p else "" for k in
                          ("forwards", "tokens", "generated", "unembedded")),
                          cost.duration(secs) if secs is not None else "?")
        out.print(table)
        out.print(cost.summary_line(est), highlight=False, markup=False, soft_wrap=True)

"""Where each phenomenon localises, by model size: the cross-model plan's Phase 4 depth-vs-size table.

The plan's table has one row per phenomenon (refusal, sycophancy, confidence,
two-hop bridge, function vectors) and one column per model size, each cell the
depth (% of the layers, 0 = first block, 100 = last) where the phenomenon
localises. Here each cell comes from the result of the study that measures it,
as its `depth` entry (behaviour.depth_pct of the layer that study chose or
measured):

- refusal: the refusal study's chosen direction layer;
- sycophancy, confidence: the directions study's chosen layers;
- two-hop bridge: the mean layer at which the bridge enters the logit-lens
  top-k (twohop, every query where it enters);
- function vectors: the layer of the FV (v3) chosen on selection queries.

It computes nothing itself: it reads every model's finished results in the
run's output directory (`ctx.results_across_models`), so the table fills in as
more models run into the same `--out` (one row per model, sorted by size). With
one model it has one row and names the models the plan would add. Run it after
the studies it reads (`--only refusal,directions,twohop,function_vectors,depth_vs_size`,
or on its own once their results exist).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mlxinterp.analysis.plotting import subplots
from mlxinterp.suite import experiment
from mlxinterp.suite.summary import Summary

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

# (row of the plan's table, experiment whose result holds it, key of that result's "depth" dict)
PHENOMENA = (
    ("refusal", "refusal", "refusal"),
    ("sycophancy", "directions", "sycophancy"),
    ("confidence", "directions", "confidence"),
    ("two-hop bridge", "twohop", "two-hop bridge (mean entry layer)"),
    ("function vectors", "function_vectors", "function vector (v3 layer)"),
)
SOURCES = tuple(dict.fromkeys(exp for _, exp, _ in PHENOMENA))
# The cross-model plan's models (its size columns: 2B, 7-9B, 14-27B); run them into the same --out to fill the table.
PLAN_MODELS = ("google/gemma-2-2b", "meta-llama/Llama-3.2-3B", "Qwen/Qwen2.5-7B", "meta-llama/Llama-3.1-8B",
               "google/gemma-2-9b", "a 14-27B model (e.g. Qwen/Qwen2.5-14B, google/gemma-2-27b)")


@dataclass
class DepthVsSizeConfig:
    seed: int = 0  # nothing is sampled: the table only reads other studies' results


@experiment("depth_vs_size", DepthVsSizeConfig, reuses=list(SOURCES))
def depth_vs_size(hm: HookedModel, cfg: DepthVsSizeConfig, ctx) -> dict:
    """Depth (% of layers) of each phenomenon per model, from the other studies' results: the plan's Phase 4 table."""
    rows = table(ctx)
    me = hm.info.slug
    if me not in {r["model"] for r in rows}:  # the running model without any of the results yet: still a row
        rows.append(_row(hm.info.to_dict()))
        rows.sort(key=lambda r: (r["n_params"] or 0, r["model"]))
    mine = next(r for r in rows if r["model"] == me)
    missing = [p for p, _, _ in PHENOMENA if mine["depth_pct"][p] is None]
    s = Summary()
    s.add("models", "models in the table", len(rows))
    for p, exp, _ in PHENOMENA:
        v = mine["depth_pct"][p]
        s.add(f"{_key(p)}.depth_pct", f"{p}: depth % on this model (from {exp})",
              round(v, 1) if v is not None else f"no {exp} result for this model in this output dir")
    note = None
    if len(rows) < 2:
        note = ("one model so far: run the cross-model plan's models into the same --out to fill the table: "
                + ", ".join(PLAN_MODELS))
        s.add("to_fill", "to fill the table", note)
    result = {**s.to_result(), "phenomena": [{"name": p, "experiment": e, "depth_key": k} for p, e, k in PHENOMENA],
              "table": rows, "missing_for_this_model": missing, "note": note, "plan_models": list(PLAN_MODELS)}
    _figure(rows, note, ctx)
    return result


def table(ctx) -> list[dict]:
    """One row per model with any source result in this output dir: size, layers, depth % per phenomenon."""
    rows: dict[str, dict] = {}
    for exp in SOURCES:
        for info, result in ctx.results_across_models(exp):
            row = rows.setdefault(info.get("slug", "?"), _row(info))
            for p, e, key in PHENOMENA:
                if e == exp and (result.get("depth") or {}).get(key) is not None:
                    row["depth_pct"][p] = float(result["depth"][key])
                    row["source"][p] = exp
    return sorted(rows.values(), key=lambda r: (r["n_params"] or 0, r["model"]))


def _row(info: dict) -> dict:
    return {"model": info.get("slug", "?"), "spec": info.get("spec"), "n_params": info.get("n_params"),
            "n_layers": info.get("n_layers"), "depth_pct": {p: None for p, _, _ in PHENOMENA},
            "source": {p: None for p, _, _ in PHENOMENA}}


def _key(name: str) -> str:
    return name.replace("-", "_").replace(" ", "_")


def _size(n: int | None) -> str:
    return "?" if not n else f"{n / 1e9:.2f}B" if n < 1e10 else f"{n / 1e9:.0f}B"


def _figure(rows: list[dict], note: str | None, ctx) -> None:
    """The table as a heat map (models x phenomena, depth %) and depth vs parameters."""
    names = [p for p, _, _ in PHENOMENA]
    grid = np.array([[np.nan if r["depth_pct"][p] is None else r["depth_pct"][p] for p in names] for r in rows], float)
    fig, axes = subplots(1, 2, figsize=(13, 1.8 + 0.6 * max(len(rows), 2)))
    ax = axes[0]
    ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i, r in enumerate(rows):
        for j, p in enumerate(names):
            v = grid[i, j]
            ax.text(j, i, "-" if np.isnan(v) else f"{v:.0f} %", ha="center", va="center",
                    color="w" if not np.isnan(v) and v < 60 else "k", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [f"{r['model']} ({_size(r['n_params'])}, {r['n_layers']} layers)" for r in rows],
                  fontsize=7)
    ax.set_title("depth % of each phenomenon (- = no result)", fontsize=9)
    ax = axes[1]
    x = np.array([r["n_params"] or np.nan for r in rows], float)
    for j, p in enumerate(names):
        ax.plot(x, grid[:, j], "o-", label=p)
    ax.set(xscale="log", xlabel="parameters", ylabel="depth % of the layer", ylim=(0, 100),
           title="depth vs model size")
    ax.legend(fontsize=7)
    if note:
        fig.text(0.01, 0.01, "one model so far: run the plan's models into the same --out to fill the table",
                 fontsize=7, style="italic")
    fig.tight_layout()
    ctx.save_figure("depth_vs_size_table", fig)

"""Attribution patching vs exact patching on factual recall (Nanda 2023; Kramár et al. 2024, "AtP*").

Prompt pairs: "The capital of {country} is the city of" for two countries whose
prompts have the same number of tokens and whose capitals start with different
tokens (data/function_vectors/country_capital.json). Metric: logit(clean capital)
- logit(corrupt capital) at the last position. A pair is kept only when the model
does the task on it (metric > 0 on the clean prompt and < 0 on the corrupted one),
measured before any attribution.

Per pair: AtP over resid_pre, attn_out, mlp_out and every head's z (one forward +
backward), the exact patching grid of resid_pre at every layer x position
(patch_sweep), and the built-in check (exact patching of the top-k AtP cells over
all hooks plus k random ones).

Layers "where the effect is large" are chosen on one half of the pairs (the
selection split): layers whose mean over pairs of max_position |exact effect| /
|total effect| is at least `large_effect`. Agreement (Spearman of AtP vs exact over
the resid_pre cells of those layers, per pair) is reported on the other half with
a bootstrap CI across pairs, so the choice of layers does not flatter the number.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from mlxinterp.analysis import attribution as A
from mlxinterp.analysis import circuits
from mlxinterp.analysis.patching import logit_diff, patch_sweep
from mlxinterp.analysis.plotting import subplots
from mlxinterp.analysis.stats import bootstrap_ci
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.suite import experiment, preregistration
from mlxinterp.suite.summary import Summary
from mlxinterp.tasks.function_vectors import load_task

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

TEMPLATE = "The capital of {} is the city of"


@dataclass
class AttributionPatchingConfig:
    n: int = 60  # pairs kept (model right on both sides): half choose the layers, 30 independent pairs report
    seed: int = 0
    check_k: int = 10  # exact patches per pair: top-k AtP cells + k random cells
    large_effect: float = 0.2  # layer kept when its largest resid_pre effect is >= this fraction of the total
    require_correct: bool = True  # keep only pairs the model gets right (off: plumbing tests on random weights)
    circuit_pairs: int = 10  # EAP-IG circuits on the first pairs of the report split
    circuit_steps: int = 8  # EAP-IG interpolation points
    circuit_target: float = 0.8  # a circuit is the fewest top edges recovering this fraction of the effect


def candidate_pairs(hm: HookedModel, seed: int = 0) -> list[dict]:
    """Country pairs with equal-length prompts and capitals whose first tokens differ, in a seeded order."""
    rows = []
    for country, capital in load_task("country_capital"):
        ids = hm.tokens(TEMPLATE.format(country)).ids[0].tolist()
        cap = hm.tokenizer.encode(" " + capital, add_special_tokens=False)
        if cap:
            rows.append((country, capital, ids, int(cap[0])))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))
    pairs, used = [], set()
    for i in order:
        for j in order:
            a, b = rows[i], rows[j]
            if i == j or (i, j) in used or len(a[2]) != len(b[2]) or a[3] == b[3]:
                continue
            used.add((i, j))
            pairs.append({"clean": TEMPLATE.format(a[0]), "corrupt": TEMPLATE.format(b[0]), "target": a[3],
                          "foil": b[3], "clean_answer": a[1], "corrupt_answer": b[1]})
            break
    return pairs


def _pair_result(hm: HookedModel, p: dict, cfg: AttributionPatchingConfig) -> dict:
    metric = logit_diff(hm, p["target"], p["foil"])
    att = A.attribute(hm, p["clean"], p["corrupt"], metric)
    if cfg.require_correct and not (att.clean_metric > 0 > att.corrupt_metric):
        return {"kept": False, "clean_metric": att.clean_metric, "corrupt_metric": att.corrupt_metric}
    sweep = patch_sweep(hm, att.clean_ids, att.corrupt_ids, metric, hook="hook_resid_pre")
    exact = np.array(sweep.metric) - sweep.corrupt  # [layers, L]
    est = np.stack([att.estimates[f"blocks.{l}.hook_resid_pre"] for l in range(hm.info.n_layers)])
    chk = A.check(hm, att, metric, k=cfg.check_k, seed=cfg.seed)
    return {"kept": True, "target": p["target"], "foil": p["foil"], "clean": p["clean"], "corrupt": p["corrupt"], "clean_metric": att.clean_metric,
            "corrupt_metric": att.corrupt_metric, "resid_exact": exact.tolist(), "resid_atp": est.tolist(),
            "check": {k: v for k, v in chk.items() if k != "points"}, "check_points": chk["points"]}


def _circuit(hm: HookedModel, p: dict, cfg: AttributionPatchingConfig) -> dict:
    """EAP-IG over heads and MLPs for one pair: circuit size and the faithfulness curve."""
    c = circuits.find_circuit(hm, p["clean"], p["corrupt"], logit_diff(hm, p["target"], p["foil"]),
                              steps=cfg.circuit_steps, target=cfg.circuit_target)
    return {"clean": p["clean"], "n_edges": c.n_edges, "n_edges_total": len(c.ranked),
            "recovered": {str(n): r for n, r in zip(c.curve_edges, c.recovered)}, "edges": c.edges()}


def _edge_counts(circ: list[dict]) -> list[dict]:
    """Edges by the number of pairs whose circuit contains them (most frequent first)."""
    counts: dict[str, int] = {}
    for c in circ:
        for e in c["edges"]:
            key = f"{e['sender']}->{e['receiver']}"
            counts[key] = counts.get(key, 0) + 1
    return [{"edge": k, "pairs": v} for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:20]]


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = np.ravel(a), np.ravel(b)
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(sps.spearmanr(a, b).statistic)


@experiment("attribution_patching", AttributionPatchingConfig, quick={"n": 6, "circuit_pairs": 2},
            whole_model="it differentiates through every layer; MLX's transfers between ranks have no gradient")
def attribution_patching(hm: HookedModel, cfg: AttributionPatchingConfig, ctx) -> dict:
    """AtP vs exact patching on >= 30 factual prompt pairs: agreement with CIs, layers chosen on a held-out split."""
    cands = candidate_pairs(hm, cfg.seed)
    results, tried = [], 0
    # Pairs are tried in chunks until n are kept (the model fails some); ctx.map checkpoints each.
    while len([r for r in results if r["kept"]]) < cfg.n and tried < len(cands):
        need = cfg.n - len([r for r in results if r["kept"]])
        chunk = cands[tried: tried + need]
        results += ctx.map(f"pairs_{tried}", chunk, lambda p: _pair_result(hm, p, cfg))
        tried += len(chunk)
    kept = [r for r in results if r["kept"]]
    if len(kept) < 4:
        raise MlxInterpError(f"only {len(kept)} of {tried} pairs are done correctly by the model; need >= 4")
    half = len(kept) // 2
    select, report = kept[:half], kept[half:]
    exact = [np.array(r["resid_exact"]) for r in kept]
    atp = [np.array(r["resid_atp"]) for r in kept]
    total = [r["clean_metric"] - r["corrupt_metric"] for r in kept]
    share = np.array([np.abs(e).max(axis=1) / t for e, t in zip(exact, total)])  # [pairs, layers]
    large = [int(l) for l in np.flatnonzero(share[:half].mean(0) >= cfg.large_effect)]
    rho_large = [_spearman(atp[i][large], exact[i][large]) for i in range(half, len(kept))] if large else []
    rho_all = [_spearman(a, e) for a, e in zip(atp[half:], exact[half:])]
    per_layer = [[_spearman(a[l], e[l]) for a, e in zip(atp[half:], exact[half:])] for l in range(hm.info.n_layers)]
    sign = [float(np.mean(np.sign(a[np.abs(e) > 0.01 * t]) == np.sign(e[np.abs(e) > 0.01 * t])))
            for a, e, t in zip(atp[half:], exact[half:], total[half:]) if (np.abs(e) > 0.01 * t).any()]
    chk_rho = [r["check"]["spearman"] for r in report]
    chk_sign = [r["check"]["sign_agreement"] for r in report]
    ci = lambda xs: bootstrap_ci([x for x in xs if x is not None], np.median, seed=cfg.seed)  # noqa: E731
    circ = ctx.map("circuits", [{k: r[k] for k in ("clean", "corrupt", "target", "foil")}
                                for r in report[:cfg.circuit_pairs]], lambda p: _circuit(hm, p, cfg))
    _figure(ctx, kept[half:], per_layer, large, hm.info.n_layers)
    s = Summary()
    s.add("resid_spearman_large_layers", f"AtP vs exact, resid_pre at layers {large} (chosen on the other split), "
          "median Spearman over pairs [95% CI]", ci(rho_large))
    s.add("resid_spearman_all_layers", "AtP vs exact, resid_pre all layers x positions, median Spearman [95% CI]",
          ci(rho_all))
    s.add("resid_sign_agreement", "sign agreement on resid_pre cells with |exact| > 1% of total, median [95% CI]",
          ci(sign))
    s.add("check_spearman", f"all hooks incl. heads, top-{cfg.check_k} + {cfg.check_k} random cells checked: "
          "median Spearman [95% CI]", ci(chk_rho))
    s.add("check_sign_agreement", "same cells: median sign agreement [95% CI]", ci(chk_sign))
    if circ:
        s.add("circuit_edges", f"EAP-IG circuit size: fewest top edges recovering >= {cfg.circuit_target:.0%} of the "
              f"effect (exact edge patching), median over {len(circ)} pairs [95% CI]", ci([c["n_edges"] for c in circ]))
        s.add("circuit_recovered_at_10", "metric recovered by the top-10 edges, median [95% CI]",
              ci([c["recovered"].get("10") for c in circ]))
    s.add("pairs", "pairs kept (model right on both sides) / tried; selection / report split",
          f"{len(kept)} / {tried}; {half} / {len(kept) - half}")
    prereg = preregistration.load().report("attribution_patching",
                                           {"resid_spearman_large_layers": ci(rho_large)})
    s.add("prereg", "pre-registered checks (mlxinterp/data/preregistration.toml)",
          {k: v["verdict"] for k, v in prereg["checks"].items()})
    return {**s.to_result(), "prereg": prereg, "split": {"selection": [r["clean"] for r in select],
                                                         "report": [r["clean"] for r in report]}, "circuits": circ, "circuit_edge_counts": _edge_counts(circ), "large_effect_layers": large, "large_effect_threshold": cfg.large_effect,
            "layer_effect_share_selection": share[:half].mean(0).round(4).tolist(),
            "per_layer_spearman_median": [None if not [x for x in v if x is not None] else
                                          float(np.median([x for x in v if x is not None])) for v in per_layer],
            "pairs": [{k: r[k] for k in ("clean", "corrupt", "clean_metric", "corrupt_metric", "check")}
                      for r in kept], "n_failed": tried - len(kept)}


def _figure(ctx, report: list[dict], per_layer, large, n_layers: int) -> None:
    fig, ax = subplots(1, 2, figsize=(11, 4.5))
    xs, ys = [], []
    for r in report:
        t = r["clean_metric"] - r["corrupt_metric"]
        xs += (np.ravel(r["resid_exact"]) / t).tolist()
        ys += (np.ravel(r["resid_atp"]) / t).tolist()
    ax[0].scatter(xs, ys, s=5, alpha=0.4)
    lim = [min(xs + ys), max(xs + ys)]
    ax[0].plot(lim, lim, color="grey", lw=0.8, ls="--")
    ax[0].set(xlabel="exact patching effect / total", ylabel="AtP estimate / total",
              title="resid_pre, every layer x position (report split)")
    med = [np.median([x for x in v if x is not None]) if any(x is not None for x in v) else np.nan for v in per_layer]
    ax[1].bar(range(n_layers), med, color=["tab:red" if l in large else "tab:blue" for l in range(n_layers)])
    ax[1].set(xlabel="layer", ylabel="median Spearman over pairs", ylim=(-1, 1),
              title="AtP vs exact per layer (red: large-effect layers)")
    fig.tight_layout()
    ctx.save_figure("attribution_patching", fig)

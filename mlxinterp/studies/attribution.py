"""Gradient x input attribution (the Qwen3-VL-8B notes §10): from the next-token logit to MLP neurons and input tokens.

For each prompt the target is the model's own top-1 next token; `neurons.attribute`
differentiates its logit (mx.grad through mlx-lm's forward) with respect to a zero
probe added at every `mlp.hook_post` and to the input embeddings, and multiplies
by the activation (summed over positions) / the embedding (summed over d_model).
Per category: mean |attribution| per neuron and per layer (early / mid / late thirds).
*Backbone* neurons are in the top-`top_k` of every category (and of >= 80 %).
Check of the first-order approximation: the top neurons of one prompt per category
are zero-ablated for real and the logit change compared with -attribution
(Spearman rho; the gradient is only a local slope, so rho well below 1 is expected).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from mlxinterp.suite.summary import Summary
from mlxinterp.analysis import neurons
from mlxinterp.analysis.stats import bootstrap_ci
from mlxinterp.analysis.plotting import subplots
from mlxinterp.suite import experiment
from mlxinterp.tasks import categories

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel


@dataclass
class AttributionConfig:
    n: int = 4  # prompts per category (full run: 30)
    seed: int = 0
    top_k: int = 50
    check_neurons: int = 8  # neurons ablated per category to check the linear approximation


@experiment("attribution", AttributionConfig)
def attribution(hm: HookedModel, cfg: AttributionConfig, ctx) -> dict:
    """Gradient x input from the top-1 logit to MLP neurons and input tokens; backbone neurons across categories."""
    cats = categories.categories(cfg.n)
    names = list(cats)
    per = dict(zip(names, ctx.map("categories", names, lambda c: _category(hm, cats[c], cfg))))
    mag = np.array([per[c]["mean_abs"] for c in names])  # [C, nl, d]
    C, nl, d = mag.shape
    flat = mag.reshape(C, -1)
    top_sets = [set(np.argsort(-f)[: cfg.top_k].tolist()) for f in flat]
    counts = np.zeros(nl * d, int)
    for s in top_sets:
        counts[list(s)] += 1
    backbone = _ranked(np.nonzero(counts == C)[0], flat, counts, d)
    near = _ranked(np.nonzero(counts >= int(np.ceil(0.8 * C)))[0], flat, counts, d)
    exclusive = {c: _ranked(np.array(sorted(top_sets[i] - set().union(*(top_sets[:i] + top_sets[i + 1:])))),
                            flat[i:i + 1], counts, d)[:5] for i, c in enumerate(names)}
    layer_mass = mag.sum(-1)  # [C, nl]
    thirds = np.array_split(np.arange(nl), 3)
    bands = {c: {k: float(layer_mass[i, t].mean()) for k, t in zip(("early", "mid", "late"), thirds)}
             for i, c in enumerate(names)}
    pred = np.concatenate([per[c]["check"]["predicted"] for c in names])
    actual = np.concatenate([per[c]["check"]["actual"] for c in names])
    rho = sps.spearmanr(pred, actual)
    sign_agree = float(np.mean(np.sign(pred) == np.sign(actual)))
    tok = {c: per[c]["token_share_last"] for c in names}
    jacc = _jaccard(top_sets)
    _figure(ctx, names, layer_mass, pred, actual, per)
    ratio = [bands[c]["late"] / bands[c]["early"] for c in names]
    s = Summary()
    s.add("backbone_neurons", f"backbone neurons (top-{cfg.top_k} in all {C} categories)", len(backbone))
    s.add("backbone_neurons_80pct", "backbone neurons (top-k in >= 80% of categories)", len(near))
    s.add("top_backbone_neuron", "top backbone neuron", backbone[0]["neuron"] if backbone else None)
    s.add("late_early_ratio_range", "late/early layer attribution ratio, range over categories",
          f"{min(ratio):.1f}..{max(ratio):.1f}")
    s.add("linear_check_spearman", "linear check: Spearman(predicted, actual ablation effect)",
          f"{rho.statistic:.2f} (p={rho.pvalue:.1e}, n={pred.size})")
    s.add("linear_check_sign_agreement", "linear check: sign agreement", round(sign_agree, 3))
    s.add("topk_jaccard_mean", "top-k overlap between categories (Jaccard, mean)",
          round(float(jacc[~np.eye(C, dtype=bool)].mean()), 3))
    s.add("prompts", "prompts", f"{C} categories x {cfg.n}")
    return {**s.to_result(), "target": "logit of the model's own top-1 next token at the last position",
            "attribution": "gradient x activation summed over positions (neurons); gradient . embedding (tokens)",
            "backbone": backbone[:20], "backbone_80pct": near[:20], "exclusive_top": exclusive,
            "layer_attribution": {c: layer_mass[i].tolist() for i, c in enumerate(names)}, "layer_bands": bands,
            "top_neurons": {c: _ranked(np.argsort(-flat[i])[:10], flat[i:i + 1], counts, d) for i, c in enumerate(names)},
            "token_attribution_examples": {c: per[c]["example"] for c in names},
            "last_token_share_of_token_attribution": {c: bootstrap_ci(tok[c], seed=cfg.seed) for c in names},
            "topk_jaccard": {"labels": names, "matrix": np.round(jacc, 3).tolist()},
            "linear_check": {"spearman": float(rho.statistic), "p": float(rho.pvalue), "n": int(pred.size),
                             "sign_agreement": sign_agree, "predicted": pred.round(4).tolist(),
                             "actual": actual.round(4).tolist()},
            "n_prompts": cfg.n}


def _category(hm: HookedModel, prompts: list[str], cfg) -> dict:
    rows = [neurons.attribute(hm, p) for p in prompts]
    attr = np.stack([r["neurons"] for r in rows])  # [n, nl, d]
    first = rows[0]
    order = np.argsort(-np.abs(first["neurons"]).ravel())[: cfg.check_neurons]
    d = attr.shape[-1]
    cells = [(int(i) // d, int(i) % d) for i in order]
    actual = neurons.ablate_neurons_effect(hm, prompts[0], first["target"], cells)
    predicted = -first["neurons"].ravel()[order]  # zeroing removes the neuron's gradient x activation
    decode = hm.tokenizer.decode
    shares = [float(abs(r["tokens"][-1]) / (np.abs(r["tokens"]).sum() + 1e-12)) for r in rows]
    return {"mean_abs": np.abs(attr).mean(0).astype(np.float32), "mean": attr.mean(0).astype(np.float32),
            "check": {"predicted": predicted.tolist(), "actual": actual.tolist()},
            "token_share_last": shares,
            "example": {"prompt": prompts[0], "target": decode([first["target"]]),
                        "tokens": [decode([t]) for t in first["token_ids"]],
                        "attribution": np.round(first["tokens"], 4).tolist()}}


def _ranked(idx: np.ndarray, flat: np.ndarray, counts: np.ndarray, d: int) -> list[dict]:
    if idx.size == 0:
        return []
    score = flat[:, idx].mean(0)
    order = idx[np.argsort(-score)]
    return [{"neuron": f"L{int(i) // d}.n{int(i) % d}", "mean_abs_attr": round(float(flat[:, i].mean()), 5),
             "categories_in_top_k": int(counts[i])} for i in order]


def _jaccard(sets: list[set]) -> np.ndarray:
    C = len(sets)
    return np.array([[len(a & b) / len(a | b) for b in sets] for a in sets]) if C else np.zeros((0, 0))


def _figure(ctx, names, layer_mass, pred, actual, per) -> None:
    fig, ax = subplots(1, 3, figsize=(17, 4.5))
    for i, c in enumerate(names):
        ax[0].plot(layer_mass[i], "o-", ms=3, label=c)
    ax[0].set(xlabel="layer", ylabel="sum of mean |grad x act|", yscale="log", title="attribution mass per layer")
    ax[0].legend(fontsize=6, ncol=2)
    ax[1].scatter(pred, actual, s=10)
    lim = float(max(np.abs(pred).max(), np.abs(actual).max(), 1e-6))
    ax[1].plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
    ax[1].set(xlabel="predicted logit change (-attribution)", ylabel="actual change (zero-ablation)",
              title="first-order check")
    ex = per[names[0]]["example"]
    ax[2].bar(range(len(ex["tokens"])), ex["attribution"])
    ax[2].set_xticks(range(len(ex["tokens"])), [t[:8] for t in ex["tokens"]], rotation=60, fontsize=7)
    ax[2].set_title(f"token attribution -> {ex['target']!r}", fontsize=9)
    fig.tight_layout()
    ctx.save_figure("attribution", fig)

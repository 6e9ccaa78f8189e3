"""Gradient x input attribution (the Qwen3-VL-8B notes §10): from the next-token logit to MLP neurons and input tokens.

For each prompt the target is the model's own top-1 next token; `neurons.attribute`
differentiates its logit (mx.grad through mlx-lm's forward) with respect to a zero
probe added at every `mlp.hook_post` and to the input embeddings, and multiplies
by the activation (summed over positions) / the embedding (summed over d_model).
Per category: mean |attribution| per neuron and per layer (early / mid / late thirds).
*Backbone* neurons are in the top-`top_k` of every category (and of >= 80 %).
Check of the first-order approximation: for `check_prompts` prompts per category,
that prompt's top `check_neurons` neurons are zero-ablated for real and the logit
change compared with -attribution: Spearman rho and sign agreement *per prompt* (the
gradient is only a local slope, so rho well below 1 is expected).

Sizes and statistics: every prompt the data has (30 per category, 10 categories).
Neurons of one prompt are not independent, so no p-value is computed over neurons:
the linear check's units are the check prompts (nested in categories:
`cluster_mean_ci`), and its p-values are over the category means (10 independent
units), Holm-adjusted over the family of tests reported (rho = 0, sign agreement =
0.5, late/early log-ratio = 0).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from mlxinterp.suite.summary import Summary
from mlxinterp.analysis import neurons
from mlxinterp.analysis.stats import cluster_mean_ci, format_interval, holm, mean_ci, p_value_mean
from mlxinterp.analysis.plotting import subplots
from mlxinterp.suite import experiment, preregistration
from mlxinterp.tasks import categories

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel


@dataclass
class AttributionConfig:
    n: int = 30  # prompts per category: all the data has (30 per category, 10 categories)
    seed: int = 0
    top_k: int = 50
    check_neurons: int = 8  # neurons ablated per check prompt to check the linear approximation
    check_prompts: int = 3  # check prompts per category (30 in all: the linear check's units)


@experiment("attribution", AttributionConfig, quick={"n": 3, "check_prompts": 2},
            whole_model="it differentiates through every layer; MLX's transfers between ranks have no gradient")
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
    checks = [(c, k) for c in names for k in range(len(per[c]["check"]))]
    chk = [per[c]["check"][k] for c, k in checks]
    labels = [c for c, _ in checks]
    rho_vals = np.array([np.nan if x["spearman"] is None else x["spearman"] for x in chk], dtype=float)
    sign_vals = np.array([x["sign_agreement"] for x in chk])
    prompt_labels = [c for c in names for _ in per[c]["late_early_ratio"]]
    log_ratio = np.log(np.concatenate([per[c]["late_early_ratio"] for c in names]))
    cat_mean = lambda v, lab: [float(np.nanmean(np.asarray(v)[np.asarray(lab) == c])) for c in names]  # noqa: E731
    tests = {"spearman_rho_is_0": p_value_mean(cat_mean(rho_vals, labels)),
             "sign_agreement_is_half": p_value_mean(cat_mean(sign_vals, labels), 0.5),
             "late_early_log_ratio_is_0": p_value_mean(cat_mean(log_ratio, prompt_labels))}
    adj = dict(zip(tests, holm(list(tests.values()))))
    rho_ci = cluster_mean_ci(rho_vals, labels, seed=cfg.seed)
    sign_ci = cluster_mean_ci(sign_vals, labels, seed=cfg.seed)
    ratio_ci = cluster_mean_ci(np.exp(log_ratio), prompt_labels, seed=cfg.seed)
    pred = np.concatenate([x["predicted"] for x in chk])
    actual = np.concatenate([x["actual"] for x in chk])
    tok = {c: per[c]["token_share_last"] for c in names}
    jacc = _jaccard(top_sets)
    _figure(ctx, names, layer_mass, pred, actual, per)
    ratio = [bands[c]["late"] / bands[c]["early"] for c in names]
    s = Summary()
    s.add("backbone_neurons", f"backbone neurons (top-{cfg.top_k} in all {C} categories)", len(backbone))
    s.add("backbone_neurons_80pct", "backbone neurons (top-k in >= 80% of categories)", len(near))
    s.add("top_backbone_neuron", "top backbone neuron", backbone[0]["neuron"] if backbone else None)
    s.add("late_early_ratio", "late/early layer attribution ratio per prompt, mean [95% CI, prompts nested in "
          "categories] (p over category means, Holm)", f"{format_interval(ratio_ci, '.2f')} (p_holm="
          f"{adj['late_early_log_ratio_is_0']:.1e})")
    s.add("late_early_ratio_range", "late/early layer attribution ratio of the category means, range",
          f"{min(ratio):.1f}..{max(ratio):.1f}")
    s.add("linear_check_spearman", "linear check: Spearman(predicted, actual) per check prompt, mean [95% CI, "
          "clustered] (p over category means, Holm)",
          f"{format_interval(rho_ci, '.2f')} (p_holm={adj['spearman_rho_is_0']:.1e}, {len(chk)} prompts)")
    s.add("linear_check_sign_agreement", "linear check: sign agreement per check prompt, mean [95% CI, clustered]",
          f"{format_interval(sign_ci, '.2f')} (p_holm={adj['sign_agreement_is_half']:.1e} vs 0.5)")
    s.add("topk_jaccard_mean", "top-k overlap between categories (Jaccard, mean)",
          round(float(jacc[~np.eye(C, dtype=bool)].mean()), 3))
    s.add("prompts", "prompts", f"{C} categories x {cfg.n}")
    prereg = preregistration.load().report("attribution", {"linear_check_positive": rho_ci,
                                                           "late_layers_dominate": ratio_ci})
    s.add_checks(prereg)

    return {**s.to_result(), "prereg": prereg, "target": "logit of the model's own top-1 next token at the last position",
            "attribution": "gradient x activation summed over positions (neurons); gradient . embedding (tokens)",
            "backbone": backbone[:20], "backbone_80pct": near[:20], "exclusive_top": exclusive,
            "layer_attribution": {c: layer_mass[i].tolist() for i, c in enumerate(names)}, "layer_bands": bands,
            "late_early_ratio": {"all": ratio_ci, "by_category": {c: mean_ci(per[c]["late_early_ratio"], seed=cfg.seed)
                                                                 for c in names},
                                 "per_prompt": {c: np.round(per[c]["late_early_ratio"], 5).tolist() for c in names}},
            "top_neurons": {c: _ranked(np.argsort(-flat[i])[:10], flat[i:i + 1], counts, d) for i, c in enumerate(names)},
            "token_attribution_examples": {c: per[c]["example"] for c in names},
            "last_token_share_of_token_attribution": {c: mean_ci(tok[c], seed=cfg.seed) for c in names},
            "topk_jaccard": {"labels": names, "matrix": np.round(jacc, 3).tolist()},
            "linear_check": {"spearman": rho_ci, "sign_agreement": sign_ci, "tests": tests, "p_holm": adj,
                             "test": "one-sample t over the 10 category means (independent units), Holm over the 3 tests",
                             "pooled_spearman_over_neurons": float(sps.spearmanr(pred, actual).statistic),
                             "pooled_note": "pooled over neurons of a few prompts: descriptive only, no p-value "
                                            "(neurons of one prompt are not independent)",
                             "per_prompt": [{"category": c, "check": k, **x} for (c, k), x in zip(checks, chk)]},
            "n_prompts": cfg.n}


def _category(hm: HookedModel, prompts: list[str], cfg) -> dict:
    rows = [neurons.attribute(hm, p) for p in prompts]
    attr = np.stack([r["neurons"] for r in rows])  # [n, nl, d]
    d = attr.shape[-1]
    checks = []
    for r, p in zip(rows[: cfg.check_prompts], prompts):
        order = np.argsort(-np.abs(r["neurons"]).ravel())[: cfg.check_neurons]
        cells = [(int(i) // d, int(i) % d) for i in order]
        actual = neurons.ablate_neurons_effect(hm, p, r["target"], cells)
        predicted = -r["neurons"].ravel()[order]  # zeroing removes the neuron's gradient x activation
        rho = sps.spearmanr(predicted, actual).statistic
        checks.append({"predicted": predicted.tolist(), "actual": actual.tolist(),
                       "spearman": float(rho) if np.isfinite(rho) else None,
                       "sign_agreement": float(np.mean(np.sign(predicted) == np.sign(actual)))})
    first = rows[0]
    mass = np.abs(attr).sum(-1)  # [n, nl]
    thirds = np.array_split(np.arange(attr.shape[1]), 3)
    ratio = mass[:, thirds[2]].mean(1) / np.maximum(mass[:, thirds[0]].mean(1), 1e-30)
    decode = hm.tokenizer.decode
    shares = [float(abs(r["tokens"][-1]) / (np.abs(r["tokens"]).sum() + 1e-12)) for r in rows]
    return {"mean_abs": np.abs(attr).mean(0).astype(np.float32), "mean": attr.mean(0).astype(np.float32),
            "check": checks, "late_early_ratio": ratio.tolist(),
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

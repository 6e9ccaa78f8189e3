"""Component share (the Qwen3-VL-8B notes §2-3): how much of each layer's residual update is MLP vs attention, and head types.

Share: per prompt, layer and token (BOS excluded), ||mlp_out|| / (||attn_out|| +
||mlp_out||) of what each sublayer adds to the residual (`hook_attn_out`,
`hook_mlp_out`: after Gemma's post-norms), averaged over tokens; per category
the mean over prompts (`mean_ci`); pooled over categories and per layer with prompts
nested in categories (`cluster_mean_ci`; per layer at the Bonferroni level over layers,
so the attention-dominant layers are those whose simultaneous interval lies below 0.5).
The Qwen3-VL-8B notes saw 70-78 % MLP on Qwen3-VL-8B. Sizes: every prompt the data has
(30 per category; the notes' 20 categories were not published).

Heads: patterns recomputed from captured q/k (`mlxinterp.analysis.attention`, checked
against `attn.hook_z`). A head is *identity* / *previous-token* / *BOS-sink*
when its mean attention to itself / the previous token / position 0 exceeds
`type_threshold` (fixed before running). *Category-selective*: one-way ANOVA of
the head's mean output norm ||z_h|| across categories, eta squared and
Holm-adjusted p over all heads (prompts are the units).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from scipy import stats as sps

from mlxinterp.suite.summary import Summary
from mlxinterp.analysis import attention, neurons
from mlxinterp.analysis.stats import cluster_mean_ci, format_interval, holm, mean_ci
from mlxinterp.analysis.plotting import subplots
from mlxinterp.suite import experiment, preregistration
from mlxinterp.tasks import categories
from mlxinterp.core import names as H

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

TYPES = ("identity", "previous_token", "bos_sink")


@dataclass
class ComponentShareConfig:
    n: int = 30  # prompts per category: all the data has (30 per category, 10 categories)
    seed: int = 0
    type_threshold: float = 0.5
    alpha: float = 0.05
    top_k: int = 10


@experiment("component_share", ComponentShareConfig, quick={"n": 4})
def component_share(hm: HookedModel, cfg: ComponentShareConfig, ctx) -> dict:
    """MLP vs attention share of the residual update per layer and category; identity/prev/BOS/category heads."""
    cats = categories.categories(cfg.n)
    names = list(cats)
    per = dict(zip(names, ctx.map("categories", names, lambda c: [_prompt_stats(hm, p) for p in cats[c]])))
    share = {c: np.array([r["share"] for r in per[c]]) for c in names}  # [n, nl]
    nl, H = hm.info.n_layers, hm.info.n_heads
    overall = {c: mean_ci(share[c].mean(1), seed=cfg.seed) for c in names}
    by_layer = {c: share[c].mean(0).tolist() for c in names}
    heads = _heads(per, names, cfg, nl, H)
    all_share = np.concatenate([share[c] for c in names])
    labels = [c for c in names for _ in range(len(share[c]))]
    _figure(ctx, names, share, heads, nl, H)
    pooled = cluster_mean_ci(all_share.mean(1), labels, seed=cfg.seed)
    layer_level = 1 - cfg.alpha / nl  # simultaneous over the layers (Bonferroni)
    layer_ci = [cluster_mean_ci(all_share[:, l], labels, level=layer_level, seed=cfg.seed) for l in range(nl)]
    s = Summary()
    s.add("mlp_share", "MLP share of residual update, all prompts [95% CI, prompts nested in categories]",
          format_interval(pooled, ".3f"))
    s.add("mlp_share_category_range", "MLP share by category, min..max",
          f"{min(v['estimate'] for v in overall.values()):.3f}..{max(v['estimate'] for v in overall.values()):.3f}")
    s.add("attention_dominant_layers", "layers where attention > MLP (simultaneous 95% interval below 0.5)",
          [l for l, c in enumerate(layer_ci) if c["high"] is not None and c["high"] < 0.5])
    s.add("mlp_dominant_layers", "layers where MLP > attention (simultaneous 95% interval above 0.5)",
          [l for l, c in enumerate(layer_ci) if c["low"] is not None and c["low"] > 0.5])
    s.add("head_type_counts", "identity / previous-token / BOS-sink heads",
          " / ".join(str(heads["counts"][t]) for t in TYPES))
    s.add("selective_heads", "category-selective heads (Holm-adjusted p < 0.05 over all heads)", heads["selective_count"])
    s.add("prompts", "prompts", f"{len(names)} categories x {cfg.n}")
    prereg = preregistration.load().report("component_share", {"mlp_majority": pooled})
    s.add_checks(prereg)

    return {**s.to_result(), "definition": "share = ||hook_mlp_out|| / (||hook_attn_out|| + ||hook_mlp_out||) "
            "per token (BOS excluded), mean over tokens", "mlp_share_by_category": overall,
            "mlp_share_by_layer": by_layer, "mlp_share_all": pooled, "prereg": prereg,
            "mlp_share_by_layer_all": layer_ci,
            "mlp_share_per_prompt": {c: np.round(share[c].mean(1), 6).tolist() for c in names},
            "norm_by_layer": {c: {k: np.mean([r[k] for r in per[c]], 0).round(3).tolist()
                                  for k in ("attn_norm", "mlp_norm")} for c in names},
            "heads": heads, "n_prompts": cfg.n}


def _prompt_stats(hm: HookedModel, prompt: str) -> dict:
    """Share per layer, and per head: pattern type scores and mean ||z_h||, from one forward."""
    nl = hm.info.n_layers
    names = [H.name(l, s) for l in range(nl) for s in
             ("hook_attn_out", "hook_mlp_out", "attn.hook_q", "attn.hook_k", "attn.hook_z")]
    batch = hm.tokens(prompt)
    _, cache = hm.run_with_cache(batch.ids, names=names)
    s0 = neurons.first_real(hm)
    share, an, mn, scores, znorm = [], [], [], {t: [] for t in TYPES}, []
    for l in range(nl):
        a = np.linalg.norm(np.array(cache[H.attn_out(l)][0, s0:].astype(mx.float32)), axis=-1)
        m = np.linalg.norm(np.array(cache[H.mlp_out(l)][0, s0:].astype(mx.float32)), axis=-1)
        share.append(float(np.mean(m / (a + m + 1e-12))))
        an.append(float(a.mean()))
        mn.append(float(m.mean()))
        p = attention.pattern(hm, l, cache[H.name(l, "attn.hook_q")], cache[H.name(l, "attn.hook_k")])
        for t, v in attention.head_scores(np.array(p[0])).items():
            scores[t].append(v.tolist())
        z = np.array(cache[H.z(l)][0, s0:].astype(mx.float32))  # [L, H, Dh]
        znorm.append(np.linalg.norm(z, axis=-1).mean(0).tolist())
    return {"share": share, "attn_norm": an, "mlp_norm": mn, "head_scores": scores, "z_norm": znorm}


def _heads(per, names, cfg, nl, H) -> dict:
    rows = [r for c in names for r in per[c]]
    mean_scores = {t: np.mean([r["head_scores"][t] for r in rows], 0) for t in TYPES}  # [nl, H]
    typed = {t: [{"layer": int(l), "head": int(h), "score": round(float(mean_scores[t][l, h]), 3)}
                 for l, h in zip(*np.nonzero(mean_scores[t] > cfg.type_threshold))] for t in TYPES}
    groups = [np.array([r["z_norm"] for r in per[c]]) for c in names]  # each [n, nl, H]
    f, p = sps.f_oneway(*groups, axis=0)
    allz = np.concatenate(groups)
    grand = allz.mean(0)
    ss_b = sum(len(g) * (g.mean(0) - grand) ** 2 for g in groups)
    ss_t = ((allz - grand) ** 2).sum(0)
    eta = ss_b / np.maximum(ss_t, 1e-12)
    p_holm = np.array(holm(np.nan_to_num(p, nan=1.0).ravel().tolist())).reshape(p.shape)
    sig = p_holm < cfg.alpha
    order = np.argsort(-eta.ravel())[: cfg.top_k]
    top = []
    for i in order:
        l, h = divmod(int(i), H)
        means = {c: round(float(g[:, l, h].mean()), 3) for c, g in zip(names, groups)}
        top.append({"layer": l, "head": h, "eta_squared": round(float(eta[l, h]), 3), "p": float(p[l, h]),
                    "p_holm": float(p_holm[l, h]),
                    "significant": bool(sig[l, h]), "highest_category": max(means, key=means.get),
                    "lowest_category": min(means, key=means.get)})
    return {"threshold": cfg.type_threshold, "mean_scores": {t: np.round(v, 4).tolist() for t, v in mean_scores.items()},
            "typed": typed, "counts": {t: len(v) for t, v in typed.items()},
            "counts_by_layer": {t: (mean_scores[t] > cfg.type_threshold).sum(1).tolist() for t in TYPES},
            "selective_count": int(sig.sum()), "selective_by_layer": sig.sum(1).tolist(),
            "eta_squared": np.round(eta, 4).tolist(), "top_selective": top,
            "selectivity_test": "one-way ANOVA of mean ||z_h|| (BOS excluded) across categories; "
                                f"Holm over {nl * H} heads"}


def _figure(ctx, names, share, heads, nl, H) -> None:
    fig, ax = subplots(1, 3, figsize=(17, 4.5))
    for c in names:
        ax[0].plot(share[c].mean(0), "o-", ms=3, label=c)
    ax[0].axhline(0.5, color="grey", lw=0.8)
    ax[0].set(xlabel="layer", ylabel="MLP share of residual update", ylim=(0, 1), title="MLP vs attention")
    ax[0].legend(fontsize=6, ncol=2)
    for t in TYPES:
        ax[1].plot(heads["counts_by_layer"][t], "o-", label=t)
    ax[1].plot(heads["selective_by_layer"], "s--", label="category-selective")
    ax[1].set(xlabel="layer", ylabel=f"heads (of {H})", title="head types per layer")
    ax[1].legend(fontsize=7)
    im = ax[2].imshow(np.array(heads["eta_squared"]).T, aspect="auto", origin="lower", cmap="magma", vmin=0, vmax=1)
    ax[2].set(xlabel="layer", ylabel="head", title="category selectivity (eta^2 of ||z_h||)")
    fig.colorbar(im, ax=ax[2])
    fig.tight_layout()
    ctx.save_figure("component_share", fig)

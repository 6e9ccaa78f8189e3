"""Connectome (the Qwen3-VL-8B notes §1): which MLP neurons each prompt category moves, compared with a baseline set.

Per category and per (layer, neuron): Welch t of the neuron's mean activation
over the prompt's tokens (BOS excluded), category vs baseline ("z" in seed
000). A neuron is *significant* for a category at Bonferroni-corrected
p < 0.05 over all n_layers x d_mlp neurons. From those: category-overlap
cosines of the t maps, per-category SVD of the standardised activations (top-k
explained variance, k80, with a mixed-category null of the same size), hub
neurons (significant in many categories) and category-exclusive neurons.

Sizes: every prompt the data has (30 per category, 30 baseline; the notes used 20
categories); the Welch tests are over prompts, the independent units. Intervals:
the per-prompt displacement from the baseline (mean |z| over all neurons) and the
top hubs' z, per category (`mean_ci`) and pooled over categories with prompts
nested in them (`cluster_mean_ci`, two-stage bootstrap).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import io as _io
from dataclasses import dataclass

import numpy as np

from mlxinterp.suite.summary import Summary
from mlxinterp.core import io
from mlxinterp.analysis import neurons
from mlxinterp.analysis.stats import cluster_mean_ci, format_interval, mean_ci
from mlxinterp.analysis.plotting import subplots
from mlxinterp.suite import experiment, preregistration
from mlxinterp.tasks import categories

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel


MIXED = "mixed_null"


@dataclass
class ConnectomeConfig:
    n: int = 30  # prompts per category and baseline: all the data has (30 each); Welch tests are over prompts
    seed: int = 0
    alpha: float = 0.05  # family-wise, Bonferroni over all neurons
    hub_min_frac: float = 0.8  # hub: significant in >= this fraction of categories
    top_k: int = 10
    svd_k: int = 5
    sd_floor: float = 0.1  # z-space SVD: baseline std floored at this fraction of its layer median (see below)


def _floored_sd(base: np.ndarray, floor: float) -> np.ndarray:
    """Baseline std per neuron [nl, d], floored at `floor` x the layer's median std.

    Why: a neuron that is nearly constant on the baseline (std ~ 0) turns any
    small category shift into a z of thousands, and then one neuron is the whole
    z-space SVD (the first run's music k80 = 1 was exactly that). The Welch tests
    use their own per-neuron variances and are unaffected.
    """
    sd = base.std(0, ddof=1)
    return np.maximum(sd, floor * np.median(sd, axis=-1, keepdims=True) + 1e-6)


@experiment("connectome", ConnectomeConfig, quick={"n": 6})
def connectome(hm: HookedModel, cfg: ConnectomeConfig, ctx) -> dict:
    """MLP-neuron z maps per prompt category vs baseline: overlaps, SVD, hubs, exclusive neurons."""
    cats = categories.categories(cfg.n)
    names = list(cats)
    base = neurons.pooled(hm, categories.baseline(cfg.n), "mlp.hook_post")  # [N, nl, d]
    nl, d = base.shape[1:]
    mu, sd = base.mean(0), _floored_sd(base, cfg.sd_floor)
    n_tests = nl * d
    thresh = cfg.alpha / n_tests
    pool = [p for c in names for p in cats[c]]
    sets = dict(cats, **{MIXED: [pool[i] for i in ctx.rng.choice(len(pool), size=cfg.n, replace=False)]})

    zs: dict[str, np.ndarray] = {}  # per-prompt z rows, kept in memory for the hub intervals

    def z_of(cat: str, acts: np.ndarray | None = None) -> np.ndarray:
        if cat not in zs:  # a resumed run reloads `one`'s results without them: recompute
            acts = neurons.pooled(hm, sets[cat], "mlp.hook_post") if acts is None else acts
            zs[cat] = ((acts - mu) / sd).reshape(len(acts), -1).astype(np.float32)
        return zs[cat]

    def one(cat: str) -> dict:
        acts = neurons.pooled(hm, sets[cat], "mlp.hook_post")
        t, p = neurons.welch(acts, base)
        z = z_of(cat, acts)
        evr = neurons.explained_variance(z - z.mean(0))
        return {"t": t.astype(np.float32).ravel().tolist(), "sig": (p < thresh).ravel().nonzero()[0].tolist(),
                "mean_abs_z": np.abs(z).mean(1).tolist(),
                "evr": evr[: cfg.svd_k].tolist(), "k80": neurons.k_for(evr, 0.8), "k95": neurons.k_for(evr, 0.95)}

    per = dict(zip(names + [MIXED], ctx.map("categories", names + [MIXED], one)))
    t = np.array([per[c]["t"] for c in names], dtype=np.float32)  # [C, nl*d]
    sig = np.zeros_like(t, dtype=bool)
    for i, c in enumerate(names):
        sig[i, per[c]["sig"]] = True
    null = {"k80": per[MIXED]["k80"], "k95": per[MIXED]["k95"], "explained_variance_top": per[MIXED]["evr"],
            "significant_neurons": len(per[MIXED]["sig"]),
            "note": f"{cfg.n} prompts drawn at random across all categories (seeded): the SVD spread and "
                    "significant-neuron count of a 'category' with no shared theme"}
    cos = _cosines(t)
    hubs, exclusive = _hubs(t, sig, names, cfg, d), _exclusive(t, sig, names, cfg, d)
    labels = [c for c in names for _ in cats[c]]
    for h in hubs["top"][:5]:  # the hub's z per prompt, prompts nested in categories
        l, j = (int(x) for x in h["neuron"][1:].split(".n"))
        vals = np.concatenate([z_of(c)[:, l * d + j] for c in names])
        h["z_all_prompts"] = cluster_mean_ci(vals, labels, seed=cfg.seed)
        h["z_per_prompt"] = np.round(vals, 4).tolist()
    disp_vals = np.concatenate([per[c]["mean_abs_z"] for c in names])
    displacement = {"all": cluster_mean_ci(disp_vals, labels, seed=cfg.seed),
                    "by_category": {c: mean_ci(per[c]["mean_abs_z"], seed=cfg.seed) for c in names},
                    "mixed_null": mean_ci(per[MIXED]["mean_abs_z"], seed=cfg.seed),
                    "per_prompt": {c: np.round(per[c]["mean_abs_z"], 5).tolist() for c in names},
                    "definition": "per prompt: mean over all MLP neurons of |z|, z = (activation - baseline mean) / "
                                  "floored baseline sd; a baseline prompt scores ~0.8 (mean |N(0,1)|)"}
    sig_layers = sig.reshape(len(names), nl, d).sum(-1)  # [C, nl]
    _save_npz(ctx, t.reshape(len(names), nl, d), names)
    _figure(ctx, names, cos, sig_layers, per, null)
    off = cos[~np.eye(len(names), dtype=bool)]
    s = Summary()
    s.add("prompts", "categories x prompts", f"{len(names)} x {cfg.n} (baseline {cfg.n})")
    s.add("significant_per_category_median", "significant neurons per category (Bonferroni p<0.05), median",
          int(np.median(sig.sum(1))))
    s.add("hubs_all_categories", "hub neurons (significant in all categories)", int((sig.sum(0) == len(names)).sum()))
    s.add("hubs", f"hub neurons (>= {cfg.hub_min_frac:.0%} of categories)", hubs["count"])
    s.add("exclusive_total", "category-exclusive neurons, total", sum(e["count"] for e in exclusive.values()))
    s.add("overlap_cosine", "category overlap cosine, off-diagonal mean [min, max]",
          f"{off.mean():.2f} [{off.min():.2f}, {off.max():.2f}]")
    s.add("svd_k80_median", "SVD k80 per category, median (mixed-category null)",
          f"{np.median([per[c]['k80'] for c in names]):.0f} ({null['k80']})")
    s.add("displacement", "per-prompt mean |z| vs baseline, all categories [95% CI, prompts nested in categories]",
          format_interval(displacement["all"], ".3f"))
    if hubs["top"]:
        s.add("top_hub_z", f"top hub {hubs['top'][0]['neuron']}: z over all category prompts [95% CI, clustered]",
              format_interval(hubs["top"][0]["z_all_prompts"], ".2f"))
    ratio = float(np.median(sig.sum(1)) / max(1, null["significant_neurons"]))
    prereg = preregistration.load().report("connectome", {"categories_exceed_mixed_null": ratio})
    s.add_checks(prereg)
    s.add("peak_layer_median", "peak layer of significant neurons (median over categories)",
          int(np.median(sig_layers.argmax(1))))
    return {**s.to_result(), "categories": names, "n_prompts": cfg.n, "n_neurons": n_tests,
            "bonferroni_p": thresh, "pooling": "mean over prompt tokens, BOS excluded",
            "significant_count": {c: int(sig[i].sum()) for i, c in enumerate(names)},
            "significant_by_layer": {c: sig_layers[i].tolist() for i, c in enumerate(names)},
            "overlap_cosine": {"labels": names, "matrix": np.round(cos, 4).tolist(),
                               "note": "all categories share one baseline, which biases cosines upward; "
                                       "compare off-diagonal values with each other, not with 0"},
            "svd": {c: {"explained_variance_top": per[c]["evr"], "k80": per[c]["k80"], "k95": per[c]["k95"]}
                    for c in names},
            "svd_null_mixed_categories": null, "hubs": hubs, "exclusive": exclusive, "displacement": displacement,
            "prereg": prereg, "prereg_values": {"significant_median_over_null": ratio},
            "top_neurons": {c: _top(t[i], d, cfg.top_k) for i, c in enumerate(names)},
            "files": {"t_maps": "t_maps.npz"}}


def _cell(flat: int, d: int) -> str:
    return f"L{flat // d}.n{flat % d}"


def _top(tv: np.ndarray, d: int, k: int) -> list[dict]:
    order = np.argsort(-np.abs(tv))[:k]
    return [{"neuron": _cell(int(i), d), "t": round(float(tv[i]), 3)} for i in order]


def _cosines(t: np.ndarray) -> np.ndarray:
    u = t / (np.linalg.norm(t, axis=1, keepdims=True) + 1e-12)
    return u @ u.T


def _hubs(t, sig, names, cfg, d) -> dict:
    counts = sig.sum(0)
    need = int(np.ceil(cfg.hub_min_frac * len(names)))
    idx = np.nonzero(counts >= need)[0]
    score = np.abs(t[:, idx]).sum(0)
    order = idx[np.argsort(-score)][: cfg.top_k * 2]
    return {"min_categories": need, "count": int(idx.size), "in_all": int((counts == len(names)).sum()),
            "top": [{"neuron": _cell(int(i), d), "categories": int(counts[i]),
                     "sum_abs_t": round(float(np.abs(t[:, i]).sum()), 2)} for i in order]}


def _exclusive(t, sig, names, cfg, d) -> dict:
    only = sig & (sig.sum(0, keepdims=True) == 1)
    out = {}
    for i, c in enumerate(names):
        idx = np.nonzero(only[i])[0]
        idx = idx[np.argsort(-np.abs(t[i, idx]))]
        out[c] = {"count": int(idx.size),
                  "top": [{"neuron": _cell(int(j), d), "t": round(float(t[i, j]), 2)} for j in idx[: cfg.top_k]]}
    return out


def _save_npz(ctx, t, names) -> None:
    buf = _io.BytesIO()
    np.savez_compressed(buf, t=t, categories=np.array(names))
    io.atomic_write_bytes(ctx.out_dir / "t_maps.npz", buf.getvalue())


def _figure(ctx, names, cos, sig_layers, per, null) -> None:
    fig, ax = subplots(1, 3, figsize=(17, 4.8))
    im = ax[0].imshow(cos, cmap="RdBu_r", vmin=-1, vmax=1)
    ax[0].set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax[0].set_yticks(range(len(names)), names, fontsize=8)
    ax[0].set_title("category overlap: cosine of neuron t maps")
    fig.colorbar(im, ax=ax[0], fraction=0.046)
    im = ax[1].imshow(sig_layers, aspect="auto", cmap="viridis")
    ax[1].set_yticks(range(len(names)), names, fontsize=8)
    ax[1].set_xlabel("layer")
    ax[1].set_title("significant neurons per layer (Bonferroni)")
    fig.colorbar(im, ax=ax[1], fraction=0.046)
    for c in names:
        ax[2].plot(np.cumsum(per[c]["evr"]), "o-", ms=3, label=c)
    ax[2].plot(np.cumsum(null["explained_variance_top"]), "k--", label="mixed null")
    ax[2].set(xlabel="components", ylabel="cumulative explained variance", title="per-category SVD")
    ax[2].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    ctx.save_figure("connectome", fig)

"""Attention-kernel Z subspace per layer (`subspace_structure`).

Part of the cross-lingual subspace study (paired English / Chinese prompts, data/crosslingual/pairs.json;
the shared prompts, activations and Z bases are in mlxinterp.tasks.language_pairs).

Per layer, the Z mask (top-k right singular vectors of the stacked multi-head attention kernel,
mlxinterp.analysis.subspace), each head's effective rank, adjacent-layer subspace similarity, and
how much of the MLP's output (and of the residual stream) lands in Z: as an energy SHARE and as
that share's RATIO to chance k/d (two named fields: a ratio of 0.01 at k/d = 0.078 is a share of
0.0008), against `n_random` uniformly random k-subspaces.

Sizes and choices (fixed before any run): all 48 pairs (96 prompts; the pair is the unit, its en
and zh values averaged); k = 20 and 50 are the source's; the primary layer is the source's L32 of
36 as a fraction of depth. The layers are a family: per-layer intervals are Bonferroni-simultaneous
(family_cis); the primary layer's own interval is reported separately (chosen in advance).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import numpy as np

from mlxinterp.suite.summary import Summary
from mlxinterp.analysis import subspace as S
from mlxinterp.analysis.plotting import subplots
from mlxinterp.analysis.stats import family_cis, mean_ci
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.suite import experiment, preregistration
from mlxinterp.tasks.language_pairs import activations, gram, load_pairs, primary_layer, prompt, z_basis

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel


@dataclass
class StructureConfig:
    n: int = 48  # prompt pairs whose MLP outputs are projected: all 48 of data/crosslingual/pairs.json
    seed: int = 0
    ks: tuple = (20, 50)  # the source's k; the largest is the headline k
    parts: tuple = S.KERNEL_PARTS
    n_random: int = 100  # uniformly random k-subspaces (largest k) per layer: energy and similarity baselines


@experiment("subspace_structure", StructureConfig, quick={"n": 3, "n_random": 100})
def subspace_structure(hm: HookedModel, cfg: StructureConfig, ctx) -> dict:
    """Attention-kernel Z mask per layer: head effective ranks, adjacent similarity, MLP output in Z vs chance."""
    L, d = hm.info.n_layers, hm.info.d_model
    ks = [k for k in cfg.ks if k < d]
    if not ks or cfg.n_random < 1:
        raise MlxInterpError(f"ks={cfg.ks} (need some k < d_model={d}) and n_random={cfg.n_random} (need >= 1)")
    kmain = max(ks)
    pairs = load_pairs(cfg.n)
    texts = [[prompt(p, lang) for lang in ("en", "zh")] for p in pairs]
    rng = ctx.rng_for("random-bases")
    rand = np.stack([S.random_basis(rng, kmain, d) for _ in range(cfg.n_random)])
    records = ctx.map("layers", list(range(L)), lambda l: _structure_layer(hm, l, ks, cfg.parts, texts, rand))
    # the layers as a family: simultaneous intervals over layers, per (quantity, k)
    for key in ("mlp_same", "mlp_next", "resid"):
        for k in ks:
            rows = [r for r in records if r["per_pair"][key] is not None]
            for part in ("share", "ratio_to_chance"):
                cis = family_cis([np.asarray(r["per_pair"][key][str(k)]) / (1 if part == "share" else k / d) for r in rows],
                                 seed=cfg.seed)
                for r, ci in zip(rows, cis):
                    r.setdefault(f"{key}_energy", {}).setdefault(str(k), {})[part] = ci
    pl = primary_layer(L)  # the source's L32 of 36 (its "approach" layer) as a fraction of depth
    prim = records[pl]
    primary_ratio = mean_ci(np.asarray(prim["per_pair"]["mlp_same"][str(kmain)]) / (kmain / d), seed=cfg.seed)
    primary_share = mean_ci(prim["per_pair"]["mlp_same"][str(kmain)], seed=cfg.seed)
    sim = [r["similarity_next"][str(kmain)] for r in records[:-1]]
    others = [v for i, v in enumerate(sim) if i != pl]
    sim_ratio = float(sim[pl] / max(others)) if pl < len(sim) and others else None
    drops = [sim[i] - sim[i + 1] for i in range(len(sim) - 1)]
    mlp_same = [r["mlp_same_energy"][str(kmain)]["ratio_to_chance"]["estimate"] for r in records]
    resid_share = [r["resid_energy"][str(kmain)]["share"]["estimate"] for r in records]
    prereg_ = preregistration.load()
    prereg = {"sha256": prereg_.sha256, "primary": prereg_.primary("subspace_structure"), "checks": {
        "mlp_avoids_z": prereg_.check("subspace_structure", "mlp_avoids_z", primary_ratio),
        "primary_pair_similarity_peak": prereg_.check("subspace_structure", "primary_pair_similarity_peak",
                                                      float("nan") if sim_ratio is None else sim_ratio)}}
    s = Summary()
    s.add("kernel", "kernel", "stacked per-head QK, QK^T and OV blocks (unit Frobenius), norm gain folded in; "
          "Z = top-k right singular vectors")
    s.add("primary_layer", "primary layer (the source's L32 as a fraction of depth)", pl)
    s.add("adjacent_similarity_max", f"adjacent similarity k={kmain}: max (layers)",
          f"{max(sim):.3f} (L{int(np.argmax(sim))}-L{int(np.argmax(sim)) + 1}); chance {kmain / d:.3f}")
    s.add("adjacent_similarity_median", f"adjacent similarity k={kmain}: median", round(float(np.median(sim)), 3))
    s.add("similarity_primary_over_next_best", f"similarity L{pl}-L{pl + 1} / largest other adjacent similarity",
          None if sim_ratio is None else round(sim_ratio, 3))
    s.add("random_similarity_p97_5", f"similarity of Z to {cfg.n_random} random {kmain}-subspaces: largest 97.5th "
          "percentile over layers", round(max(r["random_similarity"]["p97_5"] for r in records), 4))
    s.add("largest_similarity_drop", "largest similarity drop (layers)",
          f"{max(drops):.3f} at L{int(np.argmax(drops)) + 1}-L{int(np.argmax(drops)) + 2}" if drops else "n/a")
    s.add("mlp_energy_ratio_primary", f"MLP output energy share in own Z / chance, k={kmain}, layer {pl} [95% CI over pairs]",
          primary_ratio)
    s.add("mlp_energy_share_primary", f"MLP output energy share in own Z, k={kmain}, layer {pl} [95% CI over pairs]",
          primary_share)
    s.add("mlp_energy_in_z_min", f"MLP output energy in own layer's Z / chance, k={kmain}: min",
          f"{min(mlp_same):.3g} at L{int(np.argmin(mlp_same))}")
    s.add("mlp_energy_in_z_max", f"MLP output energy in own layer's Z / chance, k={kmain}: max",
          f"{max(mlp_same):.3g} at L{int(np.argmax(mlp_same))}")
    s.add("resid_energy_share_range", f"residual-stream energy SHARE in own Z, k={kmain}: min / max over layers",
          f"{min(resid_share):.2g} / {max(resid_share):.2g}")
    s.add("random_energy_share_range", f"MLP output energy share in {cfg.n_random} random {kmain}-subspaces: "
          "smallest 2.5th / largest 97.5th percentile over layers",
          f"{min(r['random_mlp_share']['p2_5'] for r in records):.4f} / "
          f"{max(r['random_mlp_share']['p97_5'] for r in records):.4f}")
    s.add("qk_effective_rank_mean", "QK effective rank per head: mean over layers and heads",
          round(float(np.mean([r["eff_rank_qk"] for r in records])), 1))
    s.add("head_dim", "head_dim", hm.info.head_dim)
    s.add("pairs", "pairs (prompts = 2 x pairs)", len(pairs))
    s.add("prereg", "pre-registered checks", {k: v["verdict"] for k, v in prereg["checks"].items()})
    _structure_figure(records, ks, d, hm.info.head_dim, ctx)
    return {**s.to_result(), "d_model": d, "ks": ks, "pairs": len(pairs), "primary_layer": pl, "prereg": prereg,
            "design": {"choices": "k and the primary layer from the source, fixed before any run; nothing selected",
                       "selection_ids": [], "report_ids": [p["id"] for p in pairs]},
            "layers": records,
            "definitions": {
                "effective_rank": "exp(entropy of normalised singular values) of each head's QK_h and OV_h (max head_dim)",
                "similarity_next": "|V_l V_{l+1}^T|_F^2 / k (mean squared cosine of principal angles); chance k/d",
                "per_pair": "per pair (mean of its en and zh prompt) of the mean over content tokens of |P_Z x|^2/|x|^2: "
                            "'mlp_same' x = hook_mlp_out of layer l in layer l's Z, 'mlp_next' in layer l+1's Z (the "
                            "first attention that reads it), 'resid' x = hook_resid_pre of layer l in layer l's Z",
                "*_energy": "share: mean over pairs of per_pair; ratio_to_chance: the same divided by k/d; intervals "
                            "Bonferroni-simultaneous over layers (family_cis)",
                "random_*": "n_random uniformly random k-subspaces (largest k), the same draws at every layer: "
                            "percentiles over draws of the energy share (mean over pairs) and of the similarity to Z"}}


def _structure_layer(hm: HookedModel, l: int, ks: list[int], parts, texts: list[list[str]], rand: np.ndarray) -> dict:
    L, d = hm.info.n_layers, hm.info.d_model
    w = S.head_weights(hm, l)
    g = gram(hm, l, parts)
    sv = S.kernel_singular_values(w)
    spectrum = np.sqrt(np.clip(np.linalg.eigvalsh(g)[::-1], 0, None))
    V = {k: z_basis(hm, l, k, parts) for k in ks}
    Vn = {k: z_basis(hm, l + 1, k, parts) for k in ks} if l + 1 < L else None
    acts = [[activations(hm, t) for t in pair] for pair in texts]

    def per_pair(basis, which, layer_idx):  # mean over the pair's two prompts of the mean over content tokens
        return [float(np.mean([S.energy_fraction(a[which][layer_idx, a["start"]:], basis).mean() for a in pair]))
                for pair in acts]

    def second_moment(which):  # mean over pairs, prompts and tokens of x x^T / |x|^2, so share(B) = tr(B M B^T)
        M = np.zeros((d, d))
        for pair in acts:
            for a in pair:
                X = a[which][l, a["start"]:].astype(np.float64)
                X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-30)
                M += X.T @ X / len(X) / (2 * len(acts))
        return M

    kmain = max(ks)
    Bs = rand.reshape(-1, d)
    rand_share = ((Bs @ second_moment("mlp")) * Bs).sum(1).reshape(len(rand), kmain).sum(1)
    rand_sim = (np.einsum("kd,jmd->jkm", V[kmain], rand) ** 2).sum((1, 2)) / kmain
    pct = lambda v: {"p2_5": float(np.percentile(v, 2.5)), "median": float(np.median(v)),  # noqa: E731
                     "p97_5": float(np.percentile(v, 97.5))}
    qk = [S.effective_rank(s) for s in sv["qk"]]
    return {
        "layer": l,
        "eff_rank_qk_per_head": qk,
        "eff_rank_ov_per_head": [S.effective_rank(s) for s in sv["ov"]],
        "eff_rank_qk": float(np.mean(qk)),
        "eff_rank_ov": float(np.mean([S.effective_rank(s) for s in sv["ov"]])),
        "eff_rank_qk_cv": float(np.std(qk) / np.mean(qk)),
        "stacked_kernel_singular_values_top64": spectrum[:64],
        "stacked_kernel_eff_rank": S.effective_rank(spectrum),
        "similarity_next": {str(k): S.subspace_similarity(V[k], Vn[k]) for k in ks} if Vn else None,
        "per_pair": {"mlp_same": {str(k): per_pair(V[k], "mlp", l) for k in ks},
                     "mlp_next": {str(k): per_pair(Vn[k], "mlp", l) for k in ks} if Vn else None,
                     "resid": {str(k): per_pair(V[k], "resid", l) for k in ks}},
        "random_mlp_share": {**pct(rand_share), "draws": len(rand)},
        "random_similarity": {**pct(rand_sim), "draws": len(rand)},
    }


def _structure_figure(records, ks, d, dh, ctx) -> None:
    kmain = max(ks)
    x = [r["layer"] for r in records]
    fig, ax = subplots(1, 4, figsize=(19, 3.8))
    for h in range(len(records[0]["eff_rank_qk_per_head"])):
        ax[0].plot(x, [r["eff_rank_qk_per_head"][h] for r in records], "o-", ms=3, alpha=0.6, label=f"QK head {h}" if h < 8 else None)
    ax[0].plot(x, [r["eff_rank_ov"] for r in records], "k--", label="OV (mean over heads)")
    ax[0].set(xlabel="layer", ylabel="effective rank", title=f"per-head kernel effective rank (max {dh})")
    ax[0].legend(fontsize=6)
    for k in ks:
        ax[1].plot(x[:-1], [r["similarity_next"][str(k)] for r in records[:-1]], "o-", label=f"k={k}")
        ax[1].axhline(k / d, ls=":", color="grey")
    ax[1].set(xlabel="layer l", ylabel="sim(Z_l, Z_l+1)", title="adjacent-layer Z similarity (dotted: chance k/d)")
    ax[1].legend(fontsize=7)
    for key, lab in (("mlp_same_energy", "MLP out in Z_l"), ("mlp_next_energy", "MLP out in Z_l+1"),
                     ("resid_energy", "resid_pre in Z_l")):
        rows = [r for r in records if r.get(key)]
        cis = [r[key][str(kmain)]["ratio_to_chance"] for r in rows]
        est, lo, hi = (np.array([c[f] for c in cis]) for f in ("estimate", "low", "high"))
        ax[2].errorbar([r["layer"] for r in rows], est, yerr=[est - lo, hi - est], fmt="o-", ms=3, capsize=2, label=lab)
    ax[2].fill_between(x, [r["random_mlp_share"]["p2_5"] / (kmain / d) for r in records],
                       [r["random_mlp_share"]["p97_5"] / (kmain / d) for r in records], color="grey", alpha=0.3,
                       label="MLP out in random k-subspaces (2.5-97.5 %)")
    ax[2].axhline(1, color="grey", ls=":")
    ax[2].set(xlabel="layer", ylabel="energy share / chance (k/d)", yscale="log", title=f"energy share / chance, k={kmain} (simultaneous 95% CI)")
    ax[2].legend(fontsize=7)
    for r in records[:: max(1, len(records) // 6)]:
        s = np.asarray(r["stacked_kernel_singular_values_top64"])
        ax[3].semilogy(s / s[0], label=f"L{r['layer']}")
    ax[3].set(xlabel="index", ylabel="singular value / largest", title="stacked kernel spectrum")
    ax[3].legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure("subspace_structure", fig)

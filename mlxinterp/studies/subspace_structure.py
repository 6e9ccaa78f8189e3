"""Attention-kernel Z subspace per layer (`subspace_structure`).

Part of the cross-lingual subspace study (paired English / Chinese prompts, data/crosslingual/pairs.json;
the shared prompts, activations and Z bases are in mlxinterp.tasks.language_pairs).

Per layer, the Z mask (top-k right singular vectors of the stacked multi-head attention kernel,
mlxinterp.analysis.subspace), each head's effective rank, adjacent-layer subspace similarity, and
how much of the MLP's output lands in Z vs chance (k/d).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import numpy as np

from mlxinterp.suite.summary import Summary
from mlxinterp.analysis import subspace as S
from mlxinterp.analysis.plotting import subplots
from mlxinterp.analysis.stats import bootstrap_ci
from mlxinterp.suite import experiment
from mlxinterp.tasks.language_pairs import activations, gram, load_pairs, prompt, z_basis

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel


@dataclass
class StructureConfig:
    n: int = 8  # prompt pairs whose MLP outputs are projected
    seed: int = 0
    ks: tuple = (20, 50)
    parts: tuple = S.KERNEL_PARTS


@experiment("subspace_structure", StructureConfig)
def subspace_structure(hm: HookedModel, cfg: StructureConfig, ctx) -> dict:
    """Attention-kernel Z mask per layer: head effective ranks, adjacent similarity, MLP output in Z vs chance."""
    L, d = hm.info.n_layers, hm.info.d_model
    ks = [k for k in cfg.ks if k < d]
    texts = [prompt(p, lang) for p in load_pairs(cfg.n) for lang in ("en", "zh")]
    records = ctx.map("layers", list(range(L)), lambda l: _structure_layer(hm, l, ks, cfg.parts, texts))
    kmain = max(ks)
    sim = [r["similarity_next"][str(kmain)] for r in records[:-1]]
    drops = [sim[i] - sim[i + 1] for i in range(len(sim) - 1)]
    mlp_same = [r["mlp_energy_ratio_same"][str(kmain)]["estimate"] for r in records]
    s = Summary()
    s.add("kernel", "kernel", "stacked per-head QK, QK^T and OV blocks (unit Frobenius), norm gain folded in; "
          "Z = top-k right singular vectors")
    s.add("adjacent_similarity_max", f"adjacent similarity k={kmain}: max (layers)",
          f"{max(sim):.3f} (L{int(np.argmax(sim))}-L{int(np.argmax(sim)) + 1}); chance {kmain / d:.3f}")
    s.add("adjacent_similarity_median", f"adjacent similarity k={kmain}: median", round(float(np.median(sim)), 3))
    s.add("largest_similarity_drop", "largest similarity drop (layers)",
          f"{max(drops):.3f} at L{int(np.argmax(drops)) + 1}-L{int(np.argmax(drops)) + 2}" if drops else "n/a")
    s.add("mlp_energy_in_z_min", f"MLP output energy in own layer's Z / chance, k={kmain}: min",
          f"{min(mlp_same):.2f} at L{int(np.argmin(mlp_same))}")
    s.add("mlp_energy_in_z_max", f"MLP output energy in own layer's Z / chance, k={kmain}: max",
          f"{max(mlp_same):.2f} at L{int(np.argmax(mlp_same))}")
    s.add("qk_effective_rank_mean", "QK effective rank per head: mean over layers and heads",
          round(float(np.mean([r["eff_rank_qk"] for r in records])), 1))
    s.add("head_dim", "head_dim", hm.info.head_dim)
    _structure_figure(records, ks, d, hm.info.head_dim, ctx)
    return {**s.to_result(), "d_model": d, "ks": ks, "prompts": len(texts), "layers": records,
            "definitions": {
                "effective_rank": "exp(entropy of normalised singular values) of each head's QK_h and OV_h (max head_dim)",
                "similarity_next": "|V_l V_{l+1}^T|_F^2 / k (mean squared cosine of principal angles); chance k/d",
                "mlp_energy_ratio": "mean over prompts of mean over content tokens of |P_Z m|^2/|m|^2 for hook_mlp_out m, "
                                    "divided by k/d; 'same' uses layer l's Z, 'next' layer l+1's (the first attention "
                                    "that reads it); resid_energy_ratio is the same for hook_resid_pre, as a reference"}}


def _structure_layer(hm: HookedModel, l: int, ks: list[int], parts, texts: list[str]) -> dict:
    L, d = hm.info.n_layers, hm.info.d_model
    w = S.head_weights(hm, l)
    g = gram(hm, l, parts)
    sv = S.kernel_singular_values(w)
    spectrum = np.sqrt(np.clip(np.linalg.eigvalsh(g)[::-1], 0, None))
    V = {k: z_basis(hm, l, k, parts) for k in ks}
    Vn = {k: z_basis(hm, l + 1, k, parts) for k in ks} if l + 1 < L else None
    acts = [activations(hm, t) for t in texts]

    def ratio(basis, which, layer_idx):
        per_prompt = [S.energy_fraction(a[which][layer_idx, a["start"]:], basis).mean() for a in acts]
        return bootstrap_ci(np.array(per_prompt) / (len(basis) / d))

    return {
        "layer": l,
        "eff_rank_qk_per_head": [S.effective_rank(s) for s in sv["qk"]],
        "eff_rank_ov_per_head": [S.effective_rank(s) for s in sv["ov"]],
        "eff_rank_qk": float(np.mean([S.effective_rank(s) for s in sv["qk"]])),
        "eff_rank_ov": float(np.mean([S.effective_rank(s) for s in sv["ov"]])),
        "eff_rank_qk_cv": float(np.std([S.effective_rank(s) for s in sv["qk"]]) / np.mean([S.effective_rank(s) for s in sv["qk"]])),
        "stacked_kernel_singular_values_top64": spectrum[:64],
        "stacked_kernel_eff_rank": S.effective_rank(spectrum),
        "similarity_next": {str(k): S.subspace_similarity(V[k], Vn[k]) for k in ks} if Vn else None,
        "mlp_energy_ratio_same": {str(k): ratio(V[k], "mlp", l) for k in ks},
        "mlp_energy_ratio_next": {str(k): ratio(Vn[k], "mlp", l) for k in ks} if Vn else None,
        "resid_energy_ratio": {str(k): ratio(V[k], "resid", l) for k in ks},
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
    for key, lab in (("mlp_energy_ratio_same", "MLP out in Z_l"), ("mlp_energy_ratio_next", "MLP out in Z_l+1"),
                     ("resid_energy_ratio", "resid_pre in Z_l")):
        rows = [r for r in records if r[key]]
        est = np.array([r[key][str(kmain)]["estimate"] for r in rows])
        lo = np.array([r[key][str(kmain)]["low"] for r in rows])
        hi = np.array([r[key][str(kmain)]["high"] for r in rows])
        ax[2].errorbar([r["layer"] for r in rows], est, yerr=[est - lo, hi - est], fmt="o-", ms=3, capsize=2, label=lab)
    ax[2].axhline(1, color="grey", ls=":")
    ax[2].set(xlabel="layer", ylabel="energy share / chance (k/d)", yscale="log", title=f"energy in Z vs chance, k={kmain} (95% CI)")
    ax[2].legend(fontsize=7)
    for r in records[:: max(1, len(records) // 6)]:
        s = np.asarray(r["stacked_kernel_singular_values_top64"])
        ax[3].semilogy(s / s[0], label=f"L{r['layer']}")
    ax[3].set(xlabel="index", ylabel="singular value / largest", title="stacked kernel spectrum")
    ax[3].legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure("subspace_structure", fig)

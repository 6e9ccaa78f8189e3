"""Experiment B, `update_decomposition`: how much of each layer's update lands in Z.

Part of the cross-lingual subspace study (paired English / Chinese prompts, data/crosslingual/pairs.json;
the shared prompts, activations and Z bases are in mlxinterp.tasks.language_pairs).

R(l) = |P_Z mean(dh_l)| / |P_Zperp mean(dh_l)| per layer, per language, against random
subspaces of the same k.
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
from mlxinterp.tasks.language_pairs import SEED_FRACS, activations, layers_at, load_pairs, prompt, z_basis

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel


@dataclass
class UpdateConfig:
    n: int = 48  # prompt pairs (all)
    seed: int = 0
    k: int = 50
    layer_fracs: tuple = SEED_FRACS  # the fixed Z basis is the first of these (seed: L32's, the "Rosetta stone")
    n_random: int = 16


@experiment("update_decomposition", UpdateConfig)
def update_decomposition(hm: HookedModel, cfg: UpdateConfig, ctx) -> dict:
    """Experiment B: R(l) = |P_Z mean dh_l| / |P_Zperp mean dh_l| per layer and language vs random subspaces."""
    d, L = hm.info.d_model, hm.info.n_layers
    zl = layers_at(cfg.layer_fracs, L)[0]  # the same layer experiment A calls its primary
    V = z_basis(hm, zl, cfg.k)
    rng = ctx.rng_for("random-bases")
    rand = [S.random_basis(rng, cfg.k, d) for _ in range(cfg.n_random)]
    items = ctx.map("pairs", load_pairs(cfg.n), lambda p: {lang: _update_ratios(activations(hm, prompt(p, lang)), V, rand)
                                                          for lang in ("en", "zh")})
    curves = {}
    for lang in ("en", "zh"):
        R = np.array([i[lang]["R"] for i in items])  # [N, L]
        Rr = np.array([i[lang]["R_random"] for i in items])
        curves[lang] = {"R": [bootstrap_ci(R[:, l], seed=cfg.seed) for l in range(L)],
                        "R_random": [bootstrap_ci(Rr[:, l], seed=cfg.seed) for l in range(L)],
                        "R_over_random": [bootstrap_ci(R[:, l] / Rr[:, l], seed=cfg.seed) for l in range(L)]}
    diff = [bootstrap_ci(np.array([i["zh"]["R"][l] - i["en"]["R"][l] for i in items]), seed=cfg.seed) for l in range(L)]
    both = [(np.mean([c["R_over_random"][l]["estimate"] for c in curves.values()])) for l in range(L)]
    chance = float(np.sqrt(cfg.k / (d - cfg.k)))
    s = Summary()
    s.add("z_basis", "Z basis", f"layer {zl}, k={cfg.k}")
    s.add("chance_r", "chance R for a random k-subspace ~ sqrt(k/(d-k))", round(chance, 3))
    s.add("max_r_over_random", "max R/R_random (layer)",
          f"{max(both):.2f} (transition {int(np.argmax(both))}->{int(np.argmax(both)) + 1})")
    s.add("min_r_over_random", "min R/R_random (layer)",
          f"{min(both):.2f} (transition {int(np.argmin(both))}->{int(np.argmin(both)) + 1})")
    s.add("transitions_r_above_1", "transitions with R > 1 (en, zh)",
          (sum(c["estimate"] > 1 for c in curves["en"]["R"]), sum(c["estimate"] > 1 for c in curves["zh"]["R"])))
    s.add("transitions_zh_minus_en_nonzero", "transitions where R_zh - R_en CI excludes 0",
          [l for l, c in enumerate(diff) if c["low"] is not None and (c["low"] > 0 or c["high"] < 0)])
    s.add("pairs", "pairs", len(items))
    _update_figure(curves, zl, cfg.k, ctx)
    return {**s.to_result(), "z_layer": zl, "k": cfg.k, "curves": curves, "R_zh_minus_en": diff, "items": items,
            "definition": "dh_l = resid_pre(l+1) - resid_pre(l) (resid_post for the last block), mean over content "
                          "tokens; R per prompt, then mean over prompts with a bootstrap CI; R_random is the mean R "
                          "over n_random uniformly random k-dim subspaces"}


def _update_ratios(acts: dict, V: np.ndarray, rand: list[np.ndarray]) -> dict:
    r = acts["resid"][:, acts["start"]:].astype(np.float64)
    delta = (r[1:] - r[:-1]).mean(1)  # [L, d]

    def ratio(B):
        inside = np.linalg.norm(delta @ B.T, axis=1)
        return inside / np.sqrt(np.maximum(np.linalg.norm(delta, axis=1) ** 2 - inside ** 2, 1e-30))

    return {"R": ratio(V), "R_random": np.mean([ratio(B) for B in rand], 0)}


def _update_figure(curves, zl, k, ctx) -> None:
    fig, ax = subplots(figsize=(8, 4.2))
    for lang, color in (("en", "tab:blue"), ("zh", "tab:red")):
        c = curves[lang]["R"]
        x = np.arange(len(c))
        est = np.array([v["estimate"] for v in c])
        ax.fill_between(x, [v["low"] for v in c], [v["high"] for v in c], color=color, alpha=0.2)
        ax.plot(x, est, "o-", color=color, ms=3, label=f"R ({lang})")
        ax.plot(x, [v["estimate"] for v in curves[lang]["R_random"]], ":", color=color, label=f"random k-subspace ({lang})")
    ax.axhline(1, color="grey", lw=0.8)
    ax.set(xlabel="layer transition l -> l+1", ylabel="|P_Z mean dh| / |P_Zperp mean dh|", yscale="log",
           title=f"update decomposition in layer {zl}'s Z (k={k}); bands: 95% CI")
    ax.legend(fontsize=8)
    fig.tight_layout()
    ctx.save_figure("update_decomposition", fig)

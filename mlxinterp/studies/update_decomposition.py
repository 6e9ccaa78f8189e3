"""Experiment B, `update_decomposition`: how much of each layer's update lands in Z.

Part of the cross-lingual subspace study (paired English / Chinese prompts, data/crosslingual/pairs.json;
the shared prompts, activations and Z bases are in mlxinterp.tasks.language_pairs).

R(l) = |P_Z mean(dh_l)| / |P_Zperp mean(dh_l)| per layer transition, per language, against
`n_random` uniformly random subspaces of the same k. The transitions are a family reported
together: per-transition intervals are Bonferroni-simultaneous (family_cis) and the zh - en
p-values are Holm-adjusted.

Sizes and choices (fixed before any run): all 48 pairs (the source: "all prompts"); the fixed Z
basis is the source's L32 of 36 (as a fraction of depth) with the source's k = 50. The pair is
the unit (its en and zh prompts share the content); nothing is selected on the data.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import numpy as np

from mlxinterp.suite.summary import Summary
from mlxinterp.analysis import subspace as S
from mlxinterp.analysis.plotting import subplots
from mlxinterp.analysis.stats import family_cis, holm, p_value_mean
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.suite import experiment, preregistration
from mlxinterp.tasks.language_pairs import SEED_FRACS, activations, layers_at, load_pairs, prompt, z_basis

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel


@dataclass
class UpdateConfig:
    n: int = 48  # prompt pairs: all 48 of data/crosslingual/pairs.json
    seed: int = 0
    k: int = 50  # the source's k
    layer_fracs: tuple = SEED_FRACS  # the fixed Z basis is the first (the source's L32 of 36, its "Rosetta stone")
    n_random: int = 100  # uniformly random k-subspaces: R_random per transition is a distribution over these draws


@experiment("update_decomposition", UpdateConfig, quick={"n": 6, "n_random": 100})
def update_decomposition(hm: HookedModel, cfg: UpdateConfig, ctx) -> dict:
    """Experiment B: R(l) = |P_Z mean dh_l| / |P_Zperp mean dh_l| per layer and language vs random subspaces."""
    d, L = hm.info.d_model, hm.info.n_layers
    if cfg.n_random < 1 or not 0 < cfg.k < d:
        raise MlxInterpError(f"n_random={cfg.n_random} (need >= 1) and k={cfg.k} (need 0 < k < d_model={d})")
    zl = layers_at(cfg.layer_fracs, L)[0]  # the same layer experiment A calls its primary
    V = z_basis(hm, zl, cfg.k)
    rng = ctx.rng_for("random-bases")
    rand = np.stack([S.random_basis(rng, cfg.k, d) for _ in range(cfg.n_random)])
    raw = ctx.map("pairs", load_pairs(cfg.n), lambda p: {"id": p["id"], **{
        lang: _update_ratios(activations(hm, prompt(p, lang)), V, rand) for lang in ("en", "zh")}})
    R = {lang: np.array([i[lang]["R"] for i in raw]) for lang in ("en", "zh")}  # [N, L]
    Rd = {lang: np.array([i[lang]["R_draws"] for i in raw]) for lang in ("en", "zh")}  # [N, J, L]
    R["both"], Rd["both"] = (R["en"] + R["zh"]) / 2, (Rd["en"] + Rd["zh"]) / 2
    curves = {}
    for lang in ("en", "zh", "both"):
        Rr = Rd[lang].mean(1)  # per pair: mean over draws
        draw_means = Rd[lang].mean(0)  # [J, L]: each draw's mean over pairs
        z_mean = R[lang].mean(0)
        curves[lang] = {"R": family_cis([R[lang][:, l] for l in range(L)], seed=cfg.seed),
                        "R_random": family_cis([Rr[:, l] for l in range(L)], seed=cfg.seed),
                        "R_over_random": family_cis([R[lang][:, l] / Rr[:, l] for l in range(L)], seed=cfg.seed),
                        "random_draws_p2_5": np.percentile(draw_means, 2.5, axis=0),
                        "random_draws_p97_5": np.percentile(draw_means, 97.5, axis=0),
                        "random_draws_at_most_z": (draw_means <= z_mean).sum(0)}
    diff = R["zh"] - R["en"]
    p_raw = [p_value_mean(diff[:, l]) for l in range(L)]
    p_holm = holm(p_raw)
    diff_cis = family_cis([diff[:, l] for l in range(L)], seed=cfg.seed)
    both = curves["both"]
    lows = [c["low"] for c in both["R"]]
    r_max_low = float(max(lows))
    chance = float(np.sqrt(cfg.k / (d - cfg.k)))
    ratio = [c["estimate"] for c in both["R_over_random"]]
    prereg_ = preregistration.load()
    prereg = {"sha256": prereg_.sha256, "primary": prereg_.primary("update_decomposition"),
              "checks": {"some_layer_in_z": prereg_.check("update_decomposition", "some_layer_in_z", r_max_low)}}
    s = Summary()
    s.add("z_basis", "Z basis (the source's L32 as a fraction of depth, k = 50)", f"layer {zl}, k={cfg.k}")
    s.add("chance_r", "chance R for a random k-subspace ~ sqrt(k/(d-k))", round(chance, 3))
    s.add("r_max_family_low", "largest simultaneous (Bonferroni over transitions) lower bound of R, both languages",
          round(r_max_low, 4))
    s.add("r_range", "R over transitions, both languages: min / max estimate",
          f"{min(c['estimate'] for c in both['R']):.3f} / {max(c['estimate'] for c in both['R']):.3f}")
    s.add("r_random_range", f"R of random k-subspaces (mean of {cfg.n_random} draws): min / max over transitions",
          f"{min(c['estimate'] for c in both['R_random']):.3f} / {max(c['estimate'] for c in both['R_random']):.3f}")
    s.add("max_r_over_random", "max R/R_random (transition)", f"{max(ratio):.2f} ({int(np.argmax(ratio))}->{int(np.argmax(ratio)) + 1})")
    s.add("min_r_over_random", "min R/R_random (transition)", f"{min(ratio):.2f} ({int(np.argmin(ratio))}->{int(np.argmin(ratio)) + 1})")
    s.add("transitions_below_every_random_draw", f"transitions where Z's R is below all {cfg.n_random} random draws' "
          "(both languages)", int((both["random_draws_at_most_z"] == 0).sum()))
    s.add("transitions_r_above_1", "transitions with R > 1, estimate (en, zh)",
          (sum(c["estimate"] > 1 for c in curves["en"]["R"]), sum(c["estimate"] > 1 for c in curves["zh"]["R"])))
    s.add("transitions_zh_minus_en_holm", "transitions where R_zh - R_en has Holm-adjusted p < 0.05 (over pairs)",
          [l for l, p in enumerate(p_holm) if p < 0.05])
    s.add("zh_minus_en_largest", "largest |R_zh - R_en| (transition) [simultaneous 95% CI]",
          _largest(diff_cis))
    s.add("pairs", "pairs", len(raw))
    s.add("prereg", "pre-registered checks", {k: v["verdict"] for k, v in prereg["checks"].items()})
    _update_figure(curves, zl, cfg.k, ctx)
    items = [{"id": i["id"], **{lang: {"R": i[lang]["R"], "R_random_mean": np.mean(i[lang]["R_draws"], 0)}
                                for lang in ("en", "zh")}} for i in raw]
    return {**s.to_result(), "z_layer": zl, "k": cfg.k, "curves": curves, "R_zh_minus_en": diff_cis,
            "R_zh_minus_en_p": p_raw, "R_zh_minus_en_p_holm": p_holm, "prereg": prereg,
            "design": {"choices": "Z layer and k from the source, fixed before any run; nothing selected on the data",
                       "selection_ids": [], "report_ids": [i["id"] for i in raw]},
            "items": items,
            "definition": "dh_l = resid_pre(l+1) - resid_pre(l) (resid_post for the last block), mean over content "
                          "tokens; R per prompt; 'both' = mean of a pair's en and zh R (the pair is the unit); "
                          "per-transition CIs are mean_ci at the Bonferroni level over the transitions (family_cis); "
                          "R_random per pair is the mean over the n_random draws; random_draws_p2_5/p97_5 are "
                          "percentiles over draws of each draw's mean R over pairs, random_draws_at_most_z counts "
                          "draws whose mean R is <= Z's; zh - en p-values are one-sample t over pairs, Holm-adjusted"}


def _largest(cis) -> str:
    i = int(np.argmax([abs(c["estimate"]) for c in cis]))
    c = cis[i]
    return f"{c['estimate']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}] ({i}->{i + 1})"


def _update_ratios(acts: dict, V: np.ndarray, rand: np.ndarray) -> dict:
    """R per transition [L] in Z, and in each random basis [J, L]."""
    r = acts["resid"][:, acts["start"]:].astype(np.float64)
    delta = (r[1:] - r[:-1]).mean(1)  # [L, d]
    total = (delta ** 2).sum(-1)

    def ratio(inside2):
        return np.sqrt(inside2) / np.sqrt(np.maximum(total - inside2, 1e-30))

    z_in = ((delta @ V.T) ** 2).sum(-1)
    r_in = ((np.einsum("ld,jkd->jlk", delta, rand)) ** 2).sum(-1)  # [J, L]
    return {"R": ratio(z_in), "R_draws": ratio(r_in)}


def _update_figure(curves, zl, k, ctx) -> None:
    fig, ax = subplots(figsize=(8, 4.2))
    for lang, color in (("en", "tab:blue"), ("zh", "tab:red")):
        c = curves[lang]["R"]
        x = np.arange(len(c))
        est = np.array([v["estimate"] for v in c])
        ax.fill_between(x, [v["low"] for v in c], [v["high"] for v in c], color=color, alpha=0.2)
        ax.plot(x, est, "o-", color=color, ms=3, label=f"R ({lang})")
        ax.plot(x, [v["estimate"] for v in curves[lang]["R_random"]], ":", color=color, label=f"random k-subspaces ({lang})")
        ax.fill_between(x, curves[lang]["random_draws_p2_5"], curves[lang]["random_draws_p97_5"], color=color, alpha=0.08)
    ax.axhline(1, color="grey", lw=0.8)
    ax.set(xlabel="layer transition l -> l+1", ylabel="|P_Z mean dh| / |P_Zperp mean dh|", yscale="log",
           title=f"update decomposition in layer {zl}'s Z (k={k}); bands: simultaneous 95% CI;\n"
                                    "faint: 2.5-97.5 % of random draws")
    ax.legend(fontsize=8)
    fig.tight_layout()
    ctx.save_figure("update_decomposition", fig)

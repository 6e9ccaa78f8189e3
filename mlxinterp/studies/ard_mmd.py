"""Experiment C, `ard_mmd`: which coordinates separate the languages' token clouds.

Part of the cross-lingual subspace study (paired English / Chinese prompts, data/crosslingual/pairs.json;
the shared prompts, activations and Z bases are in mlxinterp.tasks.language_pairs).

ARD-RBF lengthscales fitted to the two languages' token clouds with an L1 penalty on inverse
lengthscales (Adam, mx.grad, mx.compile): "power" maximises the biased MMD^2 (selects
language-discriminating coordinates); "seed" minimises the unbiased MMD^2 as the Qwen2.5-3B subspace notes
specify (degenerate).

Sizes and split (fixed before any run): the 48 pairs are split by position (load_pairs interleaves
arithmetic and factual items) into 24 selection pairs, on which every fit runs (the source used 20),
and 24 report pairs, on which the fitted lengthscales are evaluated held out: per report pair, the
MMD^2 of its true en/zh clouds minus that of the same tokens re-split at random (label-shuffled),
paired by pair. Standardisation statistics come from the selection pairs only. The layers (0.5 and
the source's L32 / L33 of 36 as fractions of depth), the lambda grids and the primary run (power,
lambda 0.01, uniform init, first source layer) are fixed in advance.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import time
from dataclasses import dataclass

import numpy as np
from scipy.stats import hypergeom

from mlxinterp.suite.summary import Summary
from mlxinterp.analysis import subspace as S
from mlxinterp.analysis.plotting import subplots
from mlxinterp.analysis.stats import format_interval, mean_ci, paired_diff_ci
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.suite import experiment, preregistration
from mlxinterp.tasks.language_pairs import (SEED_FRACS, activations, content, layers_at, load_pairs, primary_layer, prompt,
                                            z_basis)

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

_PRIMARY_INIT = {"power": "uniform", "seed": "svd"}  # "power" starts uninformed so overlap with SVD-Z is not inherited
_OTHER_INIT = {"uniform": "svd", "svd": "uniform"}


@dataclass
class ARDConfig:
    n: int = 48  # prompt pairs: all 48; even positions fit the lengthscales (24 >= the source's 20), odd ones test them
    seed: int = 0
    layer_fracs: tuple = (0.5, *SEED_FRACS)  # mid-depth and the source's L32 / L33 of 36 (the first source layer is primary)
    objective: tuple = ("power", "seed")  # subset of mlxinterp.analysis.subspace.ARD_OBJECTIVES; "power" is the primary
    lambdas: tuple = (0.001, 0.01, 0.1)  # "seed" grid (the Qwen2.5-3B subspace notes')
    power_lambdas: tuple = (0.01, 0.1, 0.3, 1.0)  # "power" grid: its MMD^2 sum is O(pairs), so the penalty needs larger lambda to bite
    steps: int = 500
    lr: float = 0.01
    tol: float = 1e-4
    k: int = 50  # SVD-Z used for the warm start and the overlap
    control_lambda: float | None = 0.01  # per layer and objective, one run from the other init; "power" also
    # gets one run on label-shuffled clouds (the MMD^2 a fit reaches when the languages are exchangeable)
    active_factor: float = 10.0  # coordinate j is selected (in D or Z) when ell_j < active_factor * sqrt(d) (standardised units)


def _ard_lambdas(cfg: ARDConfig, objective: str) -> tuple:
    return cfg.power_lambdas if objective == "power" else cfg.lambdas


def _ard_runs(cfg: ARDConfig, layers: list[int]) -> list[dict]:
    """Every (objective, layer, lambda, init, labels) fit: the lambda grid from the objective's primary init, plus controls."""
    objectives = [S.check_objective(o) for o in cfg.objective]
    if not objectives or len(set(objectives)) != len(objectives):
        raise MlxInterpError(f"objective={cfg.objective!r}: give a non-empty tuple without repeats from {tuple(S.ARD_OBJECTIVES)}")
    runs = []
    for obj in objectives:
        init = _PRIMARY_INIT[obj]
        runs += [{"objective": obj, "layer": l, "lambda": lam, "init": init, "labels": "true"}
                 for l in layers for lam in _ard_lambdas(cfg, obj)]
        if cfg.control_lambda is not None:
            runs += [{"objective": obj, "layer": l, "lambda": cfg.control_lambda, "init": _OTHER_INIT[init], "labels": "true"}
                     for l in layers]
            if obj == "power":
                runs += [{"objective": obj, "layer": l, "lambda": cfg.control_lambda, "init": init, "labels": "shuffled"}
                         for l in layers]
    return runs


PRIMARY_LAMBDA = 0.01  # the pre-registered primary power run (also control_lambda's default)


@experiment("ard_mmd", ARDConfig, quick={"n": 8, "steps": 100, "layer_fracs": SEED_FRACS, "lambdas": (0.01,),
                                        "power_lambdas": (0.01,)})
def ard_mmd(hm: HookedModel, cfg: ARDConfig, ctx) -> dict:
    """Experiment C: ARD-RBF lengthscales fitted to en/zh token clouds with L1 on 1/ell (Adam, mx.grad, mx.compile).

    "power" (primary) maximises the biased MMD^2 minus the penalty: its short-lengthscale set D is a sparse set
    of language-discriminating coordinates, which the Qwen2.5-3B subspace notes' Z hypothesis predicts to be disjoint from SVD-Z.
    "seed" minimises the unbiased MMD^2 plus the penalty as the Qwen2.5-3B subspace notes specifies; it is degenerate (its MMD^2
    goes negative and it does not converge) and is kept only so that finding is reproducible (BUGFIX 22).
    """
    d, L = hm.info.d_model, hm.info.n_layers
    layers = layers_at(cfg.layer_fracs, L)
    if cfg.n < 4:
        raise MlxInterpError(f"n={cfg.n} pairs: ard_mmd needs >= 4 (half fit the lengthscales, half test them)")
    pairs = load_pairs(cfg.n)
    sel, rep = pairs[0::2], pairs[1::2]
    items = ctx.map("runs", _ard_runs(cfg, layers), lambda r: _ard_run(hm, r, sel, rep, cfg, ctx))
    tau = cfg.active_factor * np.sqrt(d)
    for it in items:
        it.update(_ard_selection(np.array(it["log_ell"]), (z_basis(hm, it["layer"], cfg.k) ** 2).sum(0), tau))
        it["n_shrunk"] = int((np.array(it["log_ell"]) < np.array(it["log_ell_init"])).sum())  # threshold-free companion
    main_l = primary_layer(L)
    primary = next((it for it in items if it["objective"] == "power" and it["layer"] == main_l and it["labels"] == "true"
                    and it["lambda"] == PRIMARY_LAMBDA and it["init"] == "uniform"), None)
    empty = {"estimate": None, "low": None, "high": None, "n": 0}
    heldout = primary["heldout"]["true_minus_shuffled"]["biased"] if primary else empty
    prereg_ = preregistration.load()
    prereg = {"sha256": prereg_.sha256, "primary": prereg_.primary("ard_mmd"),
              "checks": {"heldout_separation": prereg_.check("ard_mmd", "heldout_separation", heldout)}}
    s = Summary()
    s.add("layers", "layers", layers)
    s.add("pairs", "pairs: selection (fit) / report (held-out test)", f"{len(sel)} / {len(rep)}")
    s.add("selection_threshold", "selected if ell <", f"{cfg.active_factor:g} sqrt(d) = {tau:.0f} (standardised units)")
    s.add("heldout_true_minus_shuffled", f"primary (power, L{main_l}, lambda {PRIMARY_LAMBDA}, uniform init): held-out "
          "report pairs, biased MMD2 true minus label-shuffled, mean over pairs [95% CI]", heldout)
    s.add("heldout_gain_over_init", "primary run: held-out (true - shuffled) at the fitted minus at the initial "
          "lengthscales, biased MMD2 [95% CI]", primary["heldout"]["gain_over_init"]["biased"] if primary else empty)
    s.add("columns", "columns", "|set| (coordinates whose ell ended below its start), overlap with SVD-Z's top-|set| "
          "coordinates (chance |set|/d; P(X<=x), P(X>=x) hypergeometric), sum MMD2 biased start->end, unbiased "
          f"start->end (selection pairs), converged (steps, relative loss change over the last 100 steps vs tol {cfg.tol:g})")
    s.add("runs", "one line per fit (objective, layer, lambda, init, labels)", {_ard_label(it): _ard_line(it) for it in items})
    s.add("main_layer_mmd2_change", f"layer {main_l}: per-pair mean MMD2 change end - start, 95% CI over "
          f"{len(sel)} selection pairs", _ard_change_summary(items, main_l))
    s.add("heldout", f"held-out report pairs ({len(rep)}): true minus label-shuffled MMD2 at the fitted lengthscales, "
          "mean over pairs [95% CI]", {_ard_label(it): ", ".join(
              f"{e} {_num_text(it['heldout']['true_minus_shuffled'][e], '+.4f')}" for e in S.MMD_ESTIMATORS)
              for it in items if it.get("heldout")})
    contrast = _ard_shuffle_contrast(items, cfg.seed)
    s.add("true_minus_shuffled", "power, true minus shuffled-label fit (selection pairs): per-pair mean end MMD2, "
          "95% CI over pairs", {
              name: ("n/a: no true-label run at this lambda (control_lambda not in power_lambdas)" if ci is None
                     else ", ".join(f"{e} {_num_text(ci[e], '+.4f')}" for e in S.MMD_ESTIMATORS)) for name, ci in contrast.items()})
    s.add("prereg", "pre-registered checks", {k: v["verdict"] for k, v in prereg["checks"].items()})
    _ard_figure(items, main_l, tau, cfg, ctx)
    return {**s.to_result(), "layers": layers, "runs": items, "shuffle_contrast": contrast, "prereg": prereg,
            "design": {"selection_ids": [p["id"] for p in sel], "report_ids": [p["id"] for p in rep],
                       "split": "by position in load_pairs' interleaved order: even = selection (fits), odd = report "
                                "(held-out evaluation); the primary run and its check were fixed in advance"},
            "standardisation": "each coordinate standardised by the pooled mean/std over both languages' content tokens of "
                               "the selection pairs at that layer (applied unchanged to the report pairs)",
            "objective": {"power": "maximise sum over pairs of biased (V-statistic) ARD-RBF MMD^2 - lambda * sum_j 1/ell_j "
                                   "(plain MMD^2, not the MMD^2/std test-power ratio); primary; init uniform ell = sqrt(d)",
                          "seed": "minimise sum over pairs of unbiased ARD-RBF MMD^2 + lambda * sum_j 1/ell_j (the Qwen2.5-3B subspace notes verbatim; "
                                  "degenerate: ell -> inf minimises both terms); init SVD warm start"},
            "controls": "per layer at control_lambda: the other init; for power also the languages' token labels shuffled "
                        "within each pair (same sizes), the MMD^2 reachable without a language difference; held out: "
                        "each true-label fit's lengthscales on the report pairs, true vs shuffled labels, paired by pair",
            "heldout_definition": "per report pair: MMD^2 of its (zh, en) clouds minus MMD^2 of the same tokens re-split at "
                                  "random into clouds of the same sizes, at the fitted lengthscales; gain_over_init: that "
                                  "difference at the fitted minus at the initial lengthscales; CIs: paired_diff_ci over pairs"}


def _ard_clouds(hm: HookedModel, layer: int, pairs: list[dict], rng: np.random.Generator | None,
                standardise_on: list[dict] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(zh, en) content-token clouds per pair, standardised by the pooled stats of `standardise_on` (default: these
    pairs); rng given: each pair's tokens re-split at random into clouds of the same sizes."""
    def raw(ps):
        return [(content(activations(hm, prompt(p, "zh")), layer), content(activations(hm, prompt(p, "en")), layer)) for p in ps]

    clouds = raw(pairs)
    pooled = np.concatenate([c for pair in (clouds if standardise_on is None else raw(standardise_on)) for c in pair])
    mu, sd = pooled.mean(0), pooled.std(0) + 1e-6
    out = []
    for x, y in clouds:
        if rng is not None:
            both = np.concatenate([x, y])[rng.permutation(len(x) + len(y))]
            x, y = both[: len(x)], both[len(x):]
        out.append(((x - mu) / sd, (y - mu) / sd))
    return out


def _ard_run(hm: HookedModel, run: dict, sel: list[dict], rep: list[dict], cfg: ARDConfig, ctx) -> dict:
    t0 = time.perf_counter()
    l, d = run["layer"], hm.info.d_model
    rng = ctx.rng_for("shuffle", l) if run["labels"] == "shuffled" else None
    X, Y, wx, wy = S.pad_clouds(_ard_clouds(hm, l, sel, rng))
    init = (S.svd_warm_start(z_basis(hm, l, cfg.k), np.sqrt(d)) if run["init"] == "svd"
            else np.full(d, np.log(np.sqrt(d))))
    tag = _ard_label(run)
    fit = S.fit_ard(X, Y, wx, wy, init, run["lambda"], objective=run["objective"], lr=cfg.lr, steps=cfg.steps, tol=cfg.tol,
                    on_log=lambda h: ctx.log(f"{tag} step {h['step']}: loss {h['loss']:.5f}, sum MMD2 {h['mmd2_sum']:.5f}")
                    if h["step"] % 250 == 0 or h["step"] == 1 else None)
    ctx.log(f"{tag}: {fit.steps} steps, converged {fit.converged}, {time.perf_counter() - t0:.1f} s")
    out = {**run, "log_ell": np.round(fit.log_ell, 4), "log_ell_init": np.round(init, 4), "history": fit.history,
           "mmd2_start": fit.mmd2_start, "mmd2_end": fit.mmd2_end, **_ard_pair_records(fit, sel, cfg.seed),
           "steps": fit.steps, "converged": fit.converged, "window_change": fit.window_change}
    if run["labels"] == "true":
        out["heldout"] = _ard_heldout(hm, l, sel, rep, fit.log_ell, init, ctx.rng_for("heldout-shuffle", l), cfg.seed)
    return out


def _ard_heldout(hm: HookedModel, layer: int, sel: list[dict], rep: list[dict], log_ell: np.ndarray, init: np.ndarray,
                 rng: np.random.Generator, seed: int) -> dict:
    """The fitted lengthscales on the report pairs: true-label minus label-shuffled MMD^2 per pair (paired CIs),
    and the same difference's gain over the initial lengthscales."""
    true = S.pad_clouds(_ard_clouds(hm, layer, rep, None, standardise_on=sel))
    shuf = S.pad_clouds(_ard_clouds(hm, layer, rep, rng, standardise_on=sel))
    v = {(w, lab): S.mmd2_per_pair(ell, *clouds) for w, ell in (("fit", log_ell), ("init", init))
         for lab, clouds in (("true", true), ("shuffled", shuf))}
    pairs = [{"id": p["id"], **{f"{w}_{lab}_{e}": float(v[(w, lab)][e][i]) for (w, lab) in v for e in S.MMD_ESTIMATORS}}
             for i, p in enumerate(rep)]
    gain = {e: (v[("fit", "true")][e] - v[("fit", "shuffled")][e]) - (v[("init", "true")][e] - v[("init", "shuffled")][e])
            for e in S.MMD_ESTIMATORS}
    return {"pairs": pairs,
            "true_minus_shuffled": {e: paired_diff_ci(v[("fit", "true")][e], v[("fit", "shuffled")][e], seed=seed)
                                    for e in S.MMD_ESTIMATORS},
            "gain_over_init": {e: mean_ci(gain[e], seed=seed) for e in S.MMD_ESTIMATORS}}


def _ard_pair_records(fit: S.ARDFit, pairs: list[dict], seed: int) -> dict:
    """Per-pair MMD^2 at the start and end lengthscales, and a CI over pairs of the mean change (end - start).

    The objective is a sum over pairs, so one pair could carry the whole gain; the per-pair
    values and the CI over pairs show whether the change is shared.
    """
    records = [{"id": p["id"], **{f"{e}_{when}": float(v[i]) for e in S.MMD_ESTIMATORS
                                  for when, v in (("start", fit.mmd2_start_pairs[e]), ("end", fit.mmd2_end_pairs[e]))}}
               for i, p in enumerate(pairs)]
    ci = {e: mean_ci(fit.mmd2_end_pairs[e] - fit.mmd2_start_pairs[e], seed=seed) for e in S.MMD_ESTIMATORS}
    return {"pairs": records, "mmd2_change_ci": ci}


def _ard_change_summary(items: list[dict], layer: int) -> dict:
    """Summary lines for one layer: mean per-pair MMD^2 change with its 95% CI over pairs, per run."""
    return {_ard_label(it): ", ".join(f"{e} {_num_text(it['mmd2_change_ci'][e], '+.4f')}" for e in S.MMD_ESTIMATORS)
            for it in items if it["layer"] == layer}


def _ard_shuffle_contrast(items: list[dict], seed: int) -> dict:
    """Per layer: per-pair end MMD^2 of the power fit on true labels minus the same fit on shuffled labels, CI over pairs.

    Same lambda and init, pairs matched by position: a gain that is a language difference, not
    the V-statistic's self-similarity, gives an interval above 0.
    """
    out = {}
    for sh in [it for it in items if it["labels"] == "shuffled"]:
        true = next((it for it in items if it["labels"] == "true" and it["layer"] == sh["layer"]
                     and it["objective"] == sh["objective"] and it["lambda"] == sh["lambda"] and it["init"] == sh["init"]), None)
        out[f"L{sh['layer']} lambda={sh['lambda']}"] = None if true is None else {  # None: control_lambda not in power_lambdas
            e: paired_diff_ci([t[f"{e}_end"] for t in true["pairs"]], [u[f"{e}_end"] for u in sh["pairs"]], seed=seed)
            for e in S.MMD_ESTIMATORS}
    return out


def _ard_selection(log_ell: np.ndarray, z_energy: np.ndarray, tau: float) -> dict:
    """The selected set (ell < tau) against SVD-Z's top coordinates of the same size, with a hypergeometric null."""
    d = len(log_ell)
    active = np.flatnonzero(np.exp(log_ell) < tau)
    a = len(active)
    top = set(np.argsort(-z_energy)[:a].tolist())
    x = len(top & set(active.tolist()))
    return {"n_active": int(a), "overlap_with_svd_top": float(x / a) if a else None, "overlap_chance": float(a / d),
            "overlap_p_low": float(hypergeom.cdf(x, d, a, a)) if a else None,
            "overlap_p_high": float(hypergeom.sf(x - 1, d, a, a)) if a else None,
            "svd_energy_in_active": float(z_energy[active].sum() / z_energy.sum()) if a else 0.0}


def _ard_label(it: dict) -> str:
    return (f"{it['objective']} L{it['layer']} lambda={it['lambda']} {it['init']}-init"
            + (" shuffled-labels" if it["labels"] == "shuffled" else ""))


def _ard_line(it: dict) -> str:
    ov = "-" if it["overlap_with_svd_top"] is None else (
        f"{it['overlap_with_svd_top']:.2f} (chance {it['overlap_chance']:.2f}; p {it['overlap_p_low']:.2g}, {it['overlap_p_high']:.2g})")
    s, e = it["mmd2_start"], it["mmd2_end"]
    change = "n/a" if it["window_change"] is None else f"{it['window_change']:.1e}"
    return (f"{it['n_active']} (shrunk below init: {it['n_shrunk']}), {ov}, biased {s['biased']:.4f}->{e['biased']:.4f}, unbiased {s['unbiased']:.4f}->{e['unbiased']:.4f}, "
            f"{it['converged']} ({it['steps']} steps, last-100-step change {change} of scale)")


def _ard_figure(items, main_l, tau, cfg, ctx) -> None:
    objectives = [o for o in cfg.objective]
    fig, ax = subplots(1, 1 + len(objectives), figsize=(5.5 * (1 + len(objectives)), 4))
    for obj, style in zip(objectives, ("o-", "s--")):
        for lam in _ard_lambdas(cfg, obj):
            rows = [it for it in items if it["objective"] == obj and it["lambda"] == lam
                    and it["init"] == _PRIMARY_INIT[obj] and it["labels"] == "true"]
            ax[0].plot([r["layer"] for r in rows], [r["n_active"] for r in rows], style, label=f"{obj} lambda={lam}")
    ax[0].set(xlabel="layer", ylabel="|D| (power) or |Z| (seed): coords with ell < tau", title="ARD selected-set size per layer")
    ax[0].legend(fontsize=7)
    for a, obj in zip(ax[1:], objectives):
        for it in [it for it in items if it["layer"] == main_l and it["objective"] == obj]:
            le = np.sort(np.array(it["log_ell"]) / np.log(10))
            a.plot(le, label=_ard_label(it).split(f"L{main_l} ")[1])
        a.axhline(np.log10(tau), color="grey", ls=":")
        a.set(xlabel="coordinate (sorted)", ylabel="log10 ell", title=f"{obj}: lengthscale spectrum, layer {main_l}")
        a.legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure("ard_mmd", fig)




def _num_text(ci: dict, fmt: str = "+.3f") -> str:
    return format_interval(ci, fmt)

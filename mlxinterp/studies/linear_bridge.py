"""Experiment D, `linear_bridge`: a least-squares map between the languages' Z coordinates.

Part of the cross-lingual subspace study (paired English / Chinese prompts, data/crosslingual/pairs.json;
the shared prompts, activations and Z bases are in mlxinterp.tasks.language_pairs).

Least-squares W* mapping English to Chinese Z-projected means: R^2, orthogonality, leave-one-out
R^2 with bootstrap CIs over pairs, against a random subspace of the same size.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import numpy as np

from mlxinterp.suite.summary import Summary
from mlxinterp.analysis import subspace as S
from mlxinterp.analysis.plotting import subplots
from mlxinterp.analysis.stats import bootstrap_ci, format_interval
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.suite import experiment
from mlxinterp.tasks.language_pairs import SEED_FRACS, activations, content, layers_at, load_pairs, prompt, z_basis

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel


@dataclass
class BridgeConfig:
    n: int = 48
    seed: int = 0
    ks: tuple = (20, 50)
    layer_fracs: tuple = SEED_FRACS  # the first is used (experiment A's primary layer)
    n_shuffles: int = 20
    n_boot: int = 200  # bootstrap resamples of the pairs for the LOO R^2 CIs (bridge_loo_cis)


@experiment("linear_bridge", BridgeConfig)
def linear_bridge(hm: HookedModel, cfg: BridgeConfig, ctx) -> dict:
    """Experiment D: least-squares W* mapping English to Chinese Z-projected means; R^2, orthogonality, LOO R^2."""
    d = hm.info.d_model
    l = layers_at(cfg.layer_fracs, hm.info.n_layers)[0]
    ks = [k for k in cfg.ks if k < d]
    rng = ctx.rng_for("random-bases")
    bases = {k: {"Z": z_basis(hm, l, k), "random": S.random_basis(rng, k, d)} for k in ks}
    items = ctx.map("pairs", load_pairs(cfg.n), lambda p: _bridge_coords(hm, p, l, bases))
    perm_rng = ctx.rng_for("shuffles")
    perms = [perm_rng.permutation(len(items)) for _ in range(cfg.n_shuffles)]
    fits = {}
    for k in ks:
        for which in ("Z", "random"):
            E, C = _bridge_matrices(items, which, k)
            fits[f"{which} k={k}"] = {**bridge_fit(E, C), "loo_r2_shuffled_pairs": float(np.mean([loo_r2(E[p], C) for p in perms]))}
    # the refit diagnostic only where a resample's ~63% distinct pairs still outnumber k (elsewhere it is costly and moot)
    cis = {m: {k: bridge_loo_cis(*_bridge_matrices(items, "Z", k), *_bridge_matrices(items, "random", k), method=m,
                                 n_resamples=cfg.n_boot, seed=cfg.seed)
               for k in ks if m == "heldout" or 0.632 * len(items) > k} for m in BRIDGE_CI_METHODS}
    for m, per_k in cis.items():
        suffix = "" if m == "heldout" else f"_{m}"
        for k, ci in per_k.items():
            fits[f"Z k={k}"][f"loo_r2_ci{suffix}"], fits[f"random k={k}"][f"loo_r2_ci{suffix}"] = ci["Z"], ci["random"]
    s = Summary()
    s.add("layer", "layer", l)
    s.add("pairs", "pairs", len(items))
    s.add("fits", "per basis: R2 / LOO R2 / LOO R2 shuffled pairs / orth. error", {
        name: f"{f['r2']:.3f} / {f['loo_r2']:.3f} / {f['loo_r2_shuffled_pairs']:.3f} / {f['orthogonality_error']:.3f}"
        for name, f in fits.items()})
    for m, per_k in cis.items():
        s.add(f"loo_r2_ci.{m}", f"LOO R2, 95% bootstrap CI over pairs ({m}, {cfg.n_boot} resamples): Z / random / Z - random", {
            f"k={k}": " / ".join(_num_text(ci[w]) for w in ("Z", "random", "Z - random")) for k, ci in per_k.items()})
    _bridge_figure(fits, ctx)
    return {**s.to_result(), "layer": l, "fits": fits,
            "loo_r2_difference_ci": {m: {f"k={k}": ci["Z - random"] for k, ci in per_k.items()} for m, per_k in cis.items()},
            "items": items,
            "definitions": {"W*": "argmin_W |C - E W|_F (numpy lstsq, no intercept), E/C = en/zh mean-pooled content "
                                  "tokens projected on the k basis vectors (N x k)",
                            "r2": "1 - |C - E W*|^2 / |C - mean(C)|^2", "orthogonality_error": "|W*^T W* - I|_F / k",
                            "loo_r2": "same R^2 with each row predicted by a W fitted without it",
                            "loo_r2_ci": "percentile bootstrap over pairs (mlxinterp.analysis.stats.bootstrap_ci, n_boot resamples, "
                                         "Z / random / Z - random on the same resamples): the pairs' (truth, LOO prediction) "
                                         "rows resampled, R^2 recomputed (primary: every map fitted on n - 1 pairs)",
                            "loo_r2_ci_refit": "diagnostic: each resample refitted and its LOO R^2 recomputed, copies of a pair "
                                               "held out together; biased because a resample has ~63% distinct pairs; "
                                               "only for k < 0.632 n",
                            "random": "a uniformly random k-dim subspace, as a control"}}


def _bridge_coords(hm: HookedModel, pair, l, bases) -> dict:
    m = {lang: content(activations(hm, prompt(pair, lang)), l).mean(0) for lang in ("en", "zh")}
    return {f"{w}{k}": {lang: bases[k][w] @ m[lang] for lang in m} for k in bases for w in ("Z", "random")}


def _bridge_matrices(items: list[dict], which: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(E, C): the en and zh coordinates of every pair in basis `which` of size k, rows in pair order."""
    return tuple(np.array([i[f"{which}{k}"][lang] for i in items]) for lang in ("en", "zh"))


def bridge_fit(E: np.ndarray, C: np.ndarray) -> dict:
    """W* = lstsq(E, C); in-sample and leave-one-out R^2, orthogonality error, singular values."""
    W, *_ = np.linalg.lstsq(E, C, rcond=None)
    k = W.shape[0]
    return {"r2": _r2(C, E @ W), "loo_r2": loo_r2(E, C), "orthogonality_error": float(np.linalg.norm(W.T @ W - np.eye(k)) / k),
            "singular_values": np.linalg.svd(W, compute_uv=False), "n": len(E), "k": k,
            "underdetermined": bool(len(E) <= k)}


def _r2(C, pred) -> float:
    return float(1 - ((C - pred) ** 2).sum() / ((C - C.mean(0)) ** 2).sum())


def loo_predictions(E: np.ndarray, C: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Held-out predictions: each group of rows (default: each row) predicted by a W fitted without it.

    Groups matter for bootstrap resamples: a duplicated pair left in the training set would
    leak its own answer, so every copy of a pair is held out together.
    """
    g = np.arange(len(E)) if groups is None else np.asarray(groups)
    pred = np.empty_like(C)
    for u in np.unique(g):
        out = g == u
        W, *_ = np.linalg.lstsq(E[~out], C[~out], rcond=None)
        pred[out] = E[out] @ W
    return pred


def loo_r2(E: np.ndarray, C: np.ndarray, groups: np.ndarray | None = None) -> float:
    """R^2 of loo_predictions."""
    return _r2(C, loo_predictions(E, C, groups))


BRIDGE_CI_METHODS = ("heldout", "refit")


def bridge_loo_cis(E: np.ndarray, C: np.ndarray, E_ref: np.ndarray, C_ref: np.ndarray, *, method: str = "heldout",
                   n_resamples: int = 200, seed: int = 0) -> dict:
    """Bootstrap CIs over pairs of LOO R^2 for (E, C) ("Z"), (E_ref, C_ref) ("random") and their difference.

    Rows are pairs (same order in both); the same seed gives all three the same resamples (paired).
    "heldout" (primary): the LOO predictions of the full data are fixed and the pairs' (truth, held-out
    prediction) rows are resampled, so every R^2 comes from maps fitted on n - 1 pairs like the estimate.
    "refit": a resample is refitted and its LOO R^2 recomputed (copies of a pair held out together); a
    resample holds only ~63 % distinct pairs, so with k parameters per column its maps are fitted on far
    fewer pairs than the estimate's and the interval is biased (for k near n it can miss the estimate).
    """
    if method not in BRIDGE_CI_METHODS:
        raise MlxInterpError(f"bridge CI method {method!r} not allowed; use one of {BRIDGE_CI_METHODS}")
    if len(E) != len(E_ref):
        raise MlxInterpError(f"bridge CIs need the same pairs in both conditions; got {len(E)} and {len(E_ref)} rows")
    held = {"Z": (C, loo_predictions(E, C)), "random": (C_ref, loo_predictions(E_ref, C_ref))} if method == "heldout" else {}
    data = {"Z": (E, C), "random": (E_ref, C_ref)}

    def on(idx: np.ndarray, which: str) -> float:
        i = idx.astype(int)
        if method == "heldout":
            truth, pred = held[which]
            return _r2(truth[i], pred[i])
        E_, C_ = data[which]
        return loo_r2(E_[i], C_[i], groups=i)

    idx = np.arange(len(E))
    stats = {"Z": lambda i: on(i, "Z"), "random": lambda i: on(i, "random"),
             "Z - random": lambda i: on(i, "Z") - on(i, "random")}
    return {name: bootstrap_ci(idx, f, n_resamples=n_resamples, seed=seed) for name, f in stats.items()}


def _bridge_figure(fits, ctx) -> None:
    fig, ax = subplots(1, 2, figsize=(12, 4))
    for name, f in fits.items():
        s = np.asarray(f["singular_values"])
        ax[0].semilogy(s, "o-" if name.startswith("Z") else ":", ms=3, label=name)
    ax[0].set(xlabel="index", ylabel="singular value of W*", title="bridge spectrum")
    ax[0].legend(fontsize=7)
    names = list(fits)
    x = np.arange(len(names))
    for off, key in ((-0.25, "r2"), (0, "loo_r2"), (0.25, "loo_r2_shuffled_pairs")):
        ax[1].bar(x + off, [max(fits[n][key], -1) for n in names], width=0.25, label=key)
    ax[1].set_xticks(x, names, fontsize=8)
    ax[1].axhline(0, color="grey", lw=0.8)
    ax[1].set(ylabel="R^2 (clipped at -1)", title="bridge fit")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure("linear_bridge", fig)


def _num_text(ci: dict, fmt: str = "+.3f") -> str:
    return format_interval(ci, fmt)

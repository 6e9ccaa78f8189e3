"""Experiment D, `linear_bridge`: a least-squares map between the languages' Z coordinates.

Part of the cross-lingual subspace study (paired English / Chinese prompts, data/crosslingual/pairs.json;
the shared prompts, activations and Z bases are in mlxinterp.tasks.language_pairs).

Least-squares W* mapping English to Chinese Z-projected means: R^2, orthogonality, leave-one-out
R^2 with bootstrap CIs over pairs, against `n_random` uniformly random subspaces of the same size
(a distribution over draws, and Z minus the mean over draws with a CI over pairs).

Sizes and choices (fixed before any run): all 48 pairs (the source used 20); the layer is the
source's L32 of 36 as a fraction of depth; k = 20 and 50 are the source's (k = 20 is the primary
here because 48 pairs cannot fit k = 50's 50 parameters per output). Nothing is selected on the
data: leave-one-out makes every pair a held-out test of a map fitted on the other 47.
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
from mlxinterp.suite import experiment, preregistration
from mlxinterp.tasks.language_pairs import SEED_FRACS, activations, content, layers_at, load_pairs, prompt, z_basis

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel


@dataclass
class BridgeConfig:
    n: int = 48  # prompt pairs: all 48 of data/crosslingual/pairs.json (the source used 20)
    seed: int = 0
    ks: tuple = (20, 50)  # the source's k = 50 and 20; k = 20 is the primary (48 pairs cannot fit k = 50)
    layer_fracs: tuple = SEED_FRACS  # the first is used: the source's L32 of 36 as a fraction of depth (experiment A's primary)
    n_random: int = 100  # uniformly random k-subspaces: the random LOO R^2 is a distribution over these draws
    n_shuffles: int = 20  # pair shufflings for the 'LOO R^2 with shuffled pairs' reference
    n_boot: int = 2000  # bootstrap resamples of the pairs for the LOO R^2 CIs
    refit_diagnostic: bool = False  # also the biased 'refit' bootstrap (Z vs the first random draw); slow


@experiment("linear_bridge", BridgeConfig, quick={"n": 12, "ks": (4,), "n_random": 100, "n_boot": 200, "n_shuffles": 4})
def linear_bridge(hm: HookedModel, cfg: BridgeConfig, ctx) -> dict:
    """Experiment D: least-squares W* mapping English to Chinese Z-projected means; R^2, orthogonality, LOO R^2,
    against a distribution of random subspaces of the same k."""
    d = hm.info.d_model
    l = layers_at(cfg.layer_fracs, hm.info.n_layers)[0]
    ks = [k for k in cfg.ks if k < d]
    if not ks or cfg.n_random < 1:
        raise MlxInterpError(f"ks={cfg.ks} (need some k < d_model={d}) and n_random={cfg.n_random} (need >= 1)")
    rng = ctx.rng_for("random-bases")
    bases = {k: {"Z": z_basis(hm, l, k), "random": [S.random_basis(rng, k, d) for _ in range(cfg.n_random)]} for k in ks}
    means = ctx.map("pairs", load_pairs(cfg.n), lambda p: _bridge_means(hm, p, l))
    E_full, C_full = (np.array([m[lang] for m in means]) for lang in ("en", "zh"))
    perm_rng = ctx.rng_for("shuffles")
    perms = [perm_rng.permutation(len(means)) for _ in range(cfg.n_shuffles)]
    fits, random, diffs, records = {}, {}, {}, {}
    for k in ks:
        E, C = E_full @ bases[k]["Z"].T, C_full @ bases[k]["Z"].T
        fits[f"Z k={k}"] = {**bridge_fit(E, C), "loo_r2_shuffled_pairs": float(np.mean([loo_r2(E[p], C) for p in perms]))}
        fits[f"Z k={k}"]["loo_r2_ci"] = bootstrap_ci(np.arange(len(E)), _heldout_r2(C, loo_predictions(E, C)),
                                                     n_resamples=cfg.n_boot, seed=cfg.seed)
        rand = [(E_full @ B.T, C_full @ B.T) for B in bases[k]["random"]]
        random[f"k={k}"] = _random_distribution(rand, fits[f"Z k={k}"]["loo_r2"])
        diffs[f"k={k}"] = z_minus_random_ci(E, C, rand, n_resamples=cfg.n_boot, seed=cfg.seed)
        pred = loo_predictions(E, C)
        records[f"k={k}"] = [{"id": m["id"], "sse": float(((C[i] - pred[i]) ** 2).sum()),
                              "dev2": float(((C[i] - C.mean(0)) ** 2).sum())} for i, m in enumerate(means)]
        if cfg.refit_diagnostic and 0.632 * len(means) > k:
            ci = bridge_loo_cis(E, C, *rand[0], method="refit", n_resamples=min(cfg.n_boot, 200), seed=cfg.seed)
            fits[f"Z k={k}"]["loo_r2_ci_refit"] = ci["Z"]
            fits[f"Z k={k}"]["loo_r2_minus_first_random_ci_refit"] = ci["Z - random"]
    kp = 20 if 20 in ks else min(ks)
    prereg = _prereg(fits[f"Z k={kp}"]["loo_r2_ci"], diffs[f"k={kp}"])
    s = Summary()
    s.add("layer", "layer (the source's L32 as a fraction of depth)", l)
    s.add("pairs", "pairs", len(means))
    s.add("fits", "Z per k: R2 / LOO R2 / LOO R2 shuffled pairs / orth. error", {
        name: f"{f['r2']:.3f} / {f['loo_r2']:.3f} / {f['loo_r2_shuffled_pairs']:.3f} / {f['orthogonality_error']:.3f}"
        for name, f in fits.items()})
    s.add(f"z.loo_r2_k{kp}", f"Z LOO R2, k={kp} [95% BCa CI over pairs]", fits[f"Z k={kp}"]["loo_r2_ci"])
    s.add(f"z_minus_random.loo_r2_k{kp}", f"Z LOO R2 minus the mean over {cfg.n_random} random {kp}-subspaces, k={kp} "
          "[95% BCa CI over pairs]", diffs[f"k={kp}"])
    s.add("random_loo_r2", f"random k-subspaces ({cfg.n_random} draws): LOO R2 median [2.5, 97.5 percentile]; "
          "share of draws >= Z; rank p", {
              key: f"{r['median']:.3f} [{r['p2_5']:.3f}, {r['p97_5']:.3f}]; {r['share_at_least_z']:.2f}; {r['rank_p']:.3f}"
              for key, r in random.items()})
    s.add("z_minus_random", "Z minus mean random LOO R2 per k [95% BCa CI over pairs]",
          {key: _num_text(ci) for key, ci in diffs.items()})
    s.add("prereg", "pre-registered checks", {k: v["verdict"] for k, v in prereg["checks"].items()})
    _bridge_figure(fits, random, ctx)
    return {**s.to_result(), "layer": l, "fits": fits, "random": random, "z_minus_random": diffs, "prereg": prereg,
            "design": {"choices": "layer and k from the source, fixed before any run; k = 20 primary (determinacy)",
                       "selection_ids": [], "report_ids": [m["id"] for m in means]},
            "items": records,
            "definitions": {"W*": "argmin_W |C - E W|_F (numpy lstsq, no intercept), E/C = en/zh mean-pooled content "
                                  "tokens projected on the k basis vectors (N x k)",
                            "r2": "1 - |C - E W*|^2 / |C - mean(C)|^2", "orthogonality_error": "|W*^T W* - I|_F / k",
                            "loo_r2": "same R^2 with each row predicted by a W fitted without it",
                            "loo_r2_ci": "BCa bootstrap over pairs (mlxinterp.analysis.stats.bootstrap_ci): the pairs' "
                                         "(truth, LOO prediction) rows resampled and R^2 recomputed; every map is fitted on "
                                         "n - 1 pairs as in the estimate",
                            "random": "n_random uniformly random k-dim subspaces; per draw its LOO R^2; rank_p = (1 + #draws "
                                      "with LOO R^2 >= Z's) / (n_random + 1)",
                            "z_minus_random": "Z's LOO R^2 minus the mean LOO R^2 over the random draws, the same pair "
                                              "resample for Z and every draw (BCa over pairs); covers which pairs are tested "
                                              "and averages over the draws",
                            "items": "per pair and k: sse, the squared error of Z's LOO prediction, and dev2, |C_i - mean C|^2 "
                                     "(sums over the k coordinates); LOO R^2 = 1 - sum sse / sum dev2",
                            "loo_r2_ci_refit": "diagnostic (refit_diagnostic): each resample refitted, biased low"}}


def _bridge_means(hm: HookedModel, pair, l) -> dict:
    """The pair's en and zh mean content-token residual at layer l (d-vectors)."""
    return {"id": pair["id"], **{lang: content(activations(hm, prompt(pair, lang)), l).mean(0) for lang in ("en", "zh")}}


def _heldout_r2(C: np.ndarray, pred: np.ndarray):
    """statistic(idx) -> R^2 of the rows idx of (truth, held-out prediction)."""
    return lambda idx: _r2(C[np.asarray(idx, int)], pred[np.asarray(idx, int)])


def _random_distribution(rand: list[tuple[np.ndarray, np.ndarray]], z_loo: float) -> dict:
    """LOO R^2 of each random draw, its percentiles and Z's rank among them."""
    vals = np.array([loo_r2(E, C) for E, C in rand])
    at_least = int((vals >= z_loo).sum())
    return {"draws": len(vals), "loo_r2": vals, "median": float(np.median(vals)), "mean": float(vals.mean()),
            "p2_5": float(np.percentile(vals, 2.5)), "p97_5": float(np.percentile(vals, 97.5)),
            "share_at_least_z": at_least / len(vals), "rank_p": (1 + at_least) / (len(vals) + 1)}


def z_minus_random_ci(E: np.ndarray, C: np.ndarray, rand: list[tuple[np.ndarray, np.ndarray]], *,
                      n_resamples: int = 2000, seed: int = 0):
    """CI over pairs of Z's held-out R^2 minus the mean held-out R^2 of the random draws (same resamples)."""
    pz = loo_predictions(E, C)
    Cr = np.stack([c for _, c in rand])  # [J, n, k]
    Pr = np.stack([loo_predictions(e, c) for e, c in rand])

    def stat(idx):
        i = np.asarray(idx, int)
        c, p = Cr[:, i], Pr[:, i]
        r2 = 1 - ((c - p) ** 2).sum((1, 2)) / ((c - c.mean(1, keepdims=True)) ** 2).sum((1, 2))
        return _r2(C[i], pz[i]) - float(r2.mean())

    return bootstrap_ci(np.arange(len(E)), stat, n_resamples=n_resamples, seed=seed)


def _prereg(z_ci, diff_ci) -> dict:
    """The pre-registered checks (mlxinterp/data/preregistration.toml) at the primary k."""
    return preregistration.load().report("linear_bridge", {"bridge_linear": z_ci, "z_beats_random": diff_ci})


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
    leak its own answer, so every copy of a pair is held out together. Single rows use the
    closed forms of the n refits (same numbers as n lstsq calls, `_loo_by_refitting`).
    """
    if groups is None:
        closed = _loo_closed_form(np.asarray(E, np.float64), np.asarray(C, np.float64))
        if closed is not None:
            return closed
    return _loo_by_refitting(E, C, groups)


def _loo_by_refitting(E: np.ndarray, C: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """loo_predictions by refitting lstsq once per held-out group (the definition)."""
    g = np.arange(len(E)) if groups is None else np.asarray(groups)
    pred = np.empty_like(C)
    for u in np.unique(g):
        out = g == u
        W, *_ = np.linalg.lstsq(E[~out], C[~out], rcond=None)
        pred[out] = E[out] @ W
    return pred


def _loo_closed_form(E: np.ndarray, C: np.ndarray) -> np.ndarray | None:
    """Leave-one-row-out predictions of lstsq without refitting, or None when neither identity applies.

    k < n - 1 (least squares, E full column rank): residual_i / (1 - h_ii) with the hat matrix H = E E^+.
    k >= n (lstsq's minimum-norm interpolant, E full row rank): with K = E E^T, the prediction from the
    other rows is C_i - [K^-1 C]_i / [K^-1]_ii (the partitioned inverse of K).
    """
    n, k = E.shape
    cond = 1e8
    if k < n - 1:
        s = np.linalg.svd(E, compute_uv=False)
        if s[-1] <= s[0] / cond:
            return None
        H = E @ np.linalg.solve(E.T @ E, E.T)
        h = np.diag(H)
        if np.any(h > 1 - 1e-8):
            return None
        return C - (C - H @ C) / (1 - h)[:, None]
    if k >= n:
        K = E @ E.T
        s = np.linalg.svd(K, compute_uv=False)
        if s[-1] <= s[0] / cond ** 2:
            return None
        Ki = np.linalg.inv(K)
        return C - (Ki @ C) / np.diag(Ki)[:, None]
    return None


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


def _bridge_figure(fits, random, ctx) -> None:
    fig, ax = subplots(1, 2, figsize=(12, 4))
    for name, f in fits.items():
        ax[0].semilogy(np.asarray(f["singular_values"]), "o-", ms=3, label=name)
    ax[0].set(xlabel="index", ylabel="singular value of W*", title="bridge spectrum")
    ax[0].legend(fontsize=7)
    for x, (key, r) in enumerate(random.items()):
        vals = np.clip(np.asarray(r["loo_r2"]), -5, None)
        ax[1].scatter(np.full(len(vals), x) + np.random.default_rng(0).uniform(-0.15, 0.15, len(vals)), vals, s=6,
                      color="grey", alpha=0.5, label="random draws" if x == 0 else None)
        ax[1].scatter([x], [max(fits[f"Z {key}"]["loo_r2"], -5)], color="tab:red", marker="*", s=120,
                      label="Z" if x == 0 else None)
    ax[1].set_xticks(range(len(random)), list(random))
    ax[1].axhline(0, color="grey", lw=0.8)
    ax[1].set(ylabel="LOO R^2 (clipped at -5)", title="held-out bridge R^2: Z vs random k-subspaces")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure("linear_bridge", fig)


def _num_text(ci: dict, fmt: str = "+.3f") -> str:
    return format_interval(ci, fmt)

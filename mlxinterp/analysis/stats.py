"""Confidence intervals and tests: the one interval policy every result.json goes through.

Which interval fits which design (the reasons are in docs/statistics.md):

    proportion of 0/1 outcomes            proportion_ci          Wilson score interval
    mean over independent units           mean_ci                studentized bootstrap (n >= 20), else t + warning
    paired design (same items, 2 arms)    paired_diff_ci         mean_ci of the differences
    paired 0/1 outcomes (accuracy lift)   paired_binary_diff_ci  as above, never zero-width
    items nested in clusters (tasks ...)  cluster_mean_ci        cluster bootstrap SE x t(G - 1)
    any other statistic (median, ratio)   bootstrap_ci           BCa bootstrap (+ warning below n = 20)
    a family reported together            family_cis / holm      Bonferroni-simultaneous CIs / Holm p-values
    a p-value for a mean                  p_value_mean           one-sample t over independent units

Thin wrappers over scipy. Every interval is an `Interval` (mlxinterp.core.interval) that records
its method and n, and a `warning` when it is weaker than the policy's default (small n, constant
data, non-finite values dropped). Shared edge cases: non-finite values are dropped and counted in
the warning; n = 0 gives estimate/low/high None; n = 1 gives the estimate with no interval (low and
high None) unless the value is 0/1 (Wilson still bounds one trial).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
from scipy import stats

from mlxinterp.core.interval import LEVEL, Interval, format_interval

__all__ = ["LEVEL", "MIN_CLUSTERS", "N_RESAMPLES", "SMALL_N", "Interval", "bootstrap_ci", "cluster_mean_ci",
           "family_cis", "format_interval", "holm", "kl_divergence", "mean_ci", "p_value_mean",
           "paired_binary_diff_ci", "paired_diff_ci", "proportion_ci"]

SMALL_N = 20  # below this bootstrap intervals under-cover (Efron & Tibshirani 1993, ch. 14); use Student t
MIN_CLUSTERS = 5  # below this a cluster bootstrap has too few distinct resamples to mean anything
N_RESAMPLES = 2000
T_WARNING = f"n < {SMALL_N}: t-interval"
_MEMORY_FLOATS = 4_000_000  # cap on floats a bootstrap batch holds (scipy's memory is O(batch * n))


# ------------------------------------------------------------------ proportions


def proportion_ci(successes: int, n: int, level: float = LEVEL) -> Interval:
    """Wilson score interval for k/n (Wilson 1927; Brown, Cai & DasGupta 2001 recommend it over Wald).

    n = 0 gives estimate/low/high None. k = 0 or k = n still gives a non-zero-width interval.
    """
    if n == 0:
        return Interval(None, None, None, 0, "Wilson", k=0, level=level)
    if not 0 <= successes <= n:
        raise ValueError(f"proportion needs 0 <= successes <= n; got {successes} of {n}")
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return Interval(successes / n, float(ci.low), float(ci.high), int(n), "Wilson", k=int(successes), level=level)


# ------------------------------------------------------------------ means


def mean_ci(values: Sequence[float], level: float = LEVEL, n_resamples: int = N_RESAMPLES,
            seed: int = 0) -> Interval:
    """CI of the mean of independent units: studentized bootstrap for n >= 20, a Student-t interval below.

    The studentized (bootstrap-t) interval resamples t* = (mean* - mean) / se* (Hall 1988;
    Efron & Tibshirani 1993, ch. 12), se* = s*/sqrt(n) of each resample; on 10,000 simulated data
    sets it covered 94.5 % at n = 30 (normal) and 94.7 % at n = 50 (exponential), where BCa
    covered 93.3 % and 92.6 % of 2,000 (docs/statistics.md). The t-interval below n = 20
    carries warning "n < 20: t-interval": it assumes near-normal means, which a handful of
    units cannot check. Data that are all 0 or 1 are a proportion and get the Wilson interval
    (so 24 zeros give [0, 0.14], not [0, 0]). Other constant data give a zero-width interval
    with a warning saying the spread was not estimable. When resamples with zero spread make
    the bootstrap-t quantiles infinite (sparse data: one non-zero value among ties) the
    t-interval is used and the warning says so.
    """
    x, dropped = _finite(values)
    if x.size and _is_binary(x):
        return _noted(proportion_ci(int(x.sum()), int(x.size), level), _dropped_note(dropped))
    return _mean_interval(x, dropped, level, n_resamples, seed)


def paired_diff_ci(a: Sequence[float], b: Sequence[float], level: float = LEVEL, n_resamples: int = N_RESAMPLES,
                   seed: int = 0) -> Interval:
    """CI of the mean paired difference a_i - b_i (the same units measured twice): mean_ci of the differences.

    Pairs where either side is non-finite are dropped and counted. When both arms are 0/1
    outcomes the differences go to `paired_binary_diff_ci` (never zero-width).
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired differences need two 1-D sequences of equal length; got shapes {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, dropped = x[keep], y[keep], int((~keep).sum())
    if x.size and _is_binary(x) and _is_binary(y):
        return _noted(paired_binary_diff_ci(x - y, level, seed, n_resamples), _dropped_note(dropped))
    iv = _mean_interval(x - y, dropped, level, n_resamples, seed)
    return replace(iv, method=f"paired differences, {iv.method}")


def paired_binary_diff_ci(diffs: Sequence[float], level: float = LEVEL, seed: int = 0,
                          n_resamples: int = N_RESAMPLES) -> Interval:
    """CI of the mean of paired 0/1 outcome differences (each in {-1, 0, 1}), e.g. an accuracy lift.

    Non-constant differences use the mean policy (studentized bootstrap, or t below n = 20).
    A resampling interval collapses to a point when every difference is equal, claiming a
    certainty that 24 pairs cannot give; then the bound comes from the discordant-pair rate,
    bounded by Wilson: all 0
    gives |lift| <= P(discordant) <= Wilson high of 0/n on both sides; all +1 (or -1) gives a
    lift of at least 2 * (Wilson low of n/n) - 1 (the rest of the population could all be -1).
    """
    d, dropped = _finite(diffs)
    if d.size and not np.isin(d, (-1.0, 0.0, 1.0)).all():
        raise ValueError(f"paired binary differences must be -1, 0 or 1; got {sorted(set(d.tolist()))[:5]}")
    if d.size == 0 or np.any(d != d[0]):
        return _mean_interval(d, dropped, level, n_resamples, seed)
    n, method, note = int(d.size), "Wilson bound on the discordant-pair rate", _dropped_note(dropped)
    if d[0] == 0:
        bound = proportion_ci(0, n, level).high
        return Interval(0.0, -bound, bound, n, method, level=level, warning=note)
    low = 2 * proportion_ci(n, n, level).low - 1
    lo, hi = (low, 1.0) if d[0] > 0 else (-1.0, -low)
    return Interval(float(d[0]), lo, hi, n, method, level=level, warning=note)


def cluster_mean_ci(values: Sequence[float], clusters: Sequence, level: float = LEVEL,
                    n_resamples: int = N_RESAMPLES, seed: int = 0) -> Interval:
    """CI of the mean of items nested in clusters (prompts within tasks, categories, languages).

    Items in one cluster share its effect, so they are not independent and an item-level
    interval is too narrow. Two-stage cluster bootstrap, Davison & Hinkley (1997, sec. 3.8)
    strategy 1: clusters are drawn with replacement and each drawn cluster brings its items
    (the second stage draws them without replacement, i.e. keeps them). Redrawing items with
    replacement too (their strategy 2) counts the within-cluster variance twice: in simulation
    it covered 99.4 % when cluster effects were weak (docs/statistics.md). The interval is
    estimate +- t(G - 1) x SE, the SE scaled by sqrt(G / (G - 1)) because a bootstrap over G
    units under-states the variance by (G - 1) / G, and the t quantile because that variance
    rests on G - 1 degrees of freedom (few-cluster inference, Cameron & Miller 2015). The
    estimate is the item mean; n = items and n_clusters = G. With fewer than 5 clusters: a
    t-interval over the cluster means (estimate = mean of cluster means) with a warning; 1
    cluster gives no interval. Items with non-finite values are dropped and counted. Constant
    0/1 data get a Wilson interval that ignores the clusters (warned); other constant data a
    zero-width interval (warned).
    """
    x = np.asarray(values, dtype=np.float64)
    labels = np.asarray(clusters)
    if x.ndim != 1 or labels.shape != x.shape:
        raise ValueError(f"cluster_mean_ci needs one cluster label per value; got shapes {x.shape} and {labels.shape}")
    keep = np.isfinite(x)
    x, labels, dropped = x[keep], labels[keep], int((~keep).sum())
    note, method = _dropped_note(dropped), "cluster bootstrap SE x t(G-1)"
    if x.size == 0:
        return Interval(None, None, None, 0, method, level=level, warning=note, n_clusters=0)
    _, inv = np.unique(labels, return_inverse=True)
    inv = inv.ravel()
    sizes, sums = np.bincount(inv), np.bincount(inv, weights=x)
    g, n = int(sizes.size), int(x.size)
    if np.all(x == x[0]):
        if _is_binary(x):
            iv = proportion_ci(int(x.sum()), n, level)
            return replace(iv, n_clusters=g, warning=_join(note, "all items equal: Wilson interval, clusters ignored"))
        return Interval(float(x[0]), float(x[0]), float(x[0]), n, "constant data", level=level, n_clusters=g,
                        warning=_join(note, f"all {n} values equal: zero-width, the spread is not estimable"))
    if g < MIN_CLUSTERS:
        means = sums / sizes
        if g == 1:
            return Interval(float(means[0]), None, None, n, "mean of cluster means", level=level, n_clusters=1,
                            warning=_join(note, "1 cluster: no interval across clusters"))
        low, high = _t_interval(means, level)
        return _within_support(Interval(float(means.mean()), low, high, n, "t-interval over cluster means",
                                        level=level, n_clusters=g,
                                        warning=_join(note, f"{g} clusters < {MIN_CLUSTERS}: t-interval over "
                                                      "cluster means")), x)
    rng = np.random.default_rng(seed)
    batch = max(1, _MEMORY_FLOATS // g)
    boot = []
    for first in range(0, n_resamples, batch):
        pick = rng.integers(0, g, size=(min(batch, n_resamples - first), g))
        boot.append(sums[pick].sum(axis=1) / sizes[pick].sum(axis=1))
    se = float(np.concatenate(boot).std(ddof=1) * np.sqrt(g / (g - 1)))
    est, half = float(x.mean()), float(stats.t.ppf((1 + level) / 2, g - 1) * se)
    return _within_support(Interval(est, est - half, est + half, n, method, level=level, warning=note,
                                    n_clusters=g), x)


# ------------------------------------------------------------------ other statistics


def bootstrap_ci(values: Sequence[float], statistic: Callable = np.mean, level: float = LEVEL,
                 n_resamples: int = N_RESAMPLES, seed: int = 0, *,
                 paired_with: Sequence[float] | None = None) -> Interval:
    """BCa bootstrap CI of `statistic` over the finite `values` (Efron 1987).

    The mean has its own policy, so `statistic=np.mean` (the default) is `mean_ci` (which also
    routes 0/1 data to Wilson). Any other statistic (median, ratio, R^2 over resampled indices)
    gets BCa, with warning "n < 20: ..." below 20 units. `paired_with` gives a second sequence
    resampled together with `values` (statistic(x, y), e.g. a correlation); pairs with a
    non-finite side are dropped. `statistic` may take `axis` (then it is vectorized). Constant
    data give a zero-width interval with a warning (the resampling distribution is a point); if
    BCa is undefined the percentile interval is used and the warning says so.
    """
    if statistic is np.mean and paired_with is None:
        return mean_ci(values, level, n_resamples, seed)
    x, dropped = _finite(values) if paired_with is None else (np.asarray(values, dtype=np.float64), 0)
    samples: tuple[np.ndarray, ...] = (x,)
    if paired_with is not None:
        y = np.asarray(paired_with, dtype=np.float64)
        if x.shape != y.shape or x.ndim != 1:
            raise ValueError(f"paired bootstrap needs two 1-D sequences of equal length; got {x.shape} and {y.shape}")
        keep = np.isfinite(x) & np.isfinite(y)
        samples, dropped = (x[keep], y[keep]), int((~keep).sum())
    n, note = int(samples[0].size), _dropped_note(dropped)
    method = "BCa bootstrap"
    if n == 0:
        return Interval(None, None, None, 0, method, level=level, warning=note)
    est = _float(statistic(*samples))
    if n < 2 or all(np.all(s == s[0]) for s in samples):
        return Interval(est, est, est, n, "constant data", level=level,
                        warning=_join(note, f"all {n} values equal: zero-width, the spread is not estimable"))
    small = f"n < {SMALL_N}: bootstrap intervals under-cover" if n < SMALL_N else None
    ci = _bootstrap(samples, statistic, level, n_resamples, seed, "BCa")
    if ci is None:
        method, small = "percentile bootstrap", _join(small, "BCa undefined: percentile bootstrap")
        ci = _bootstrap(samples, statistic, level, n_resamples, seed, "percentile") or (None, None)
    return Interval(est, ci[0], ci[1], n, method, level=level, warning=_join(note, small))


# ------------------------------------------------------------------ families and p-values


def family_cis(groups: Sequence[Sequence[float]], level: float = LEVEL, n_resamples: int = N_RESAMPLES,
               seed: int = 0) -> list[Interval]:
    """Simultaneous CIs for a family reported together (layers, heads, strengths): each member's
    `mean_ci` at the Bonferroni level 1 - (1 - level) / m, so all m cover together with
    probability >= `level`. The level used is recorded in each Interval. A bootstrap bound at
    that level is a far-tail quantile, so the resample count grows to leave >= 25 beyond each bound.
    """
    m = len(groups)
    if m == 0:
        return []
    member_level = 1 - (1 - level) / m
    resamples = max(n_resamples, int(np.ceil(25 / ((1 - member_level) / 2))))
    out = []
    for values in groups:
        iv = mean_ci(values, member_level, resamples, seed)
        out.append(replace(iv, method=f"{iv.method}, Bonferroni-simultaneous over {m}"))
    return out


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm (1979) step-down adjusted p-values, in the input order: reject member i at alpha when
    adjusted[i] <= alpha, controlling the family-wise error rate. NaN p-values stay NaN and are
    not counted in the family size.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return [float(v) for v in out]


def p_value_mean(values: Sequence[float], popmean: float = 0.0) -> float:
    """Two-sided one-sample t-test p-value that the mean differs from `popmean`.

    Only over INDEPENDENT units (prompts, pairs): values measured on the same prompt (layers,
    neurons of one prompt) are not independent and their p-value would be far too small.
    Non-finite values are dropped. NaN for n < 2 or constant data (t is undefined).
    """
    x, _ = _finite(values)
    if x.size < 2 or np.all(x == x[0]):
        return float("nan")
    return float(stats.ttest_1samp(x, popmean).pvalue)


# ------------------------------------------------------------------ divergences


def kl_divergence(logits_p, logits_q) -> np.ndarray:
    """KL(p || q) in nats along the last axis, from logits (numerically stable)."""
    lp = logits_p - _logsumexp(logits_p)
    lq = logits_q - _logsumexp(logits_q)
    return np.sum(np.exp(lp) * (lp - lq), axis=-1)


def _logsumexp(x):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


# ------------------------------------------------------------------ helpers


def _mean_interval(x: np.ndarray, dropped: int, level: float, n_resamples: int, seed: int) -> Interval:
    """The mean policy on finite values, without the 0/1 -> Wilson routing."""
    n, note = int(x.size), _dropped_note(dropped)
    if n == 0:
        return Interval(None, None, None, 0, "mean", level=level, warning=note)
    est = float(x.mean())
    if n == 1:
        return Interval(est, None, None, 1, "mean", level=level, warning=_join(note, "n = 1: no interval"))
    if np.all(x == x[0]):
        return Interval(est, est, est, n, "constant data", level=level,
                        warning=_join(note, f"all {n} values equal: zero-width, the spread is not estimable"))
    if n >= SMALL_N:
        ci = _studentized(x, level, n_resamples, seed)
        if ci is not None:
            return Interval(est, ci[0], ci[1], n, "studentized bootstrap", level=level, warning=note)
        note = _join(note, "studentized bootstrap undefined (resamples with zero spread): t-interval")
    else:
        note = _join(note, T_WARNING)
    low, high = _t_interval(x, level)
    return _within_support(Interval(est, low, high, n, "t-interval", level=level, warning=note), x)


def _within_support(iv: Interval, x: np.ndarray) -> Interval:
    """Clip a symmetric interval of data in {-1, 0, 1} to [-1, 1], the range their mean can take.

    A t- or cluster interval of 27/30 successes would otherwise reach past 1. The clip is
    [-1, 1] even for 0/1 data, because the same values may be paired differences (one +1
    among zeros), whose mean may be negative; 0/1 outcomes alone go to Wilson in `mean_ci`.
    """
    if not np.isin(x, (-1.0, 0.0, 1.0)).all():
        return iv
    clip = lambda v: None if v is None else min(max(v, -1.0), 1.0)  # noqa: E731
    return replace(iv, low=clip(iv.low), high=clip(iv.high))


def _t_interval(x: np.ndarray, level: float) -> tuple[float, float]:
    """Student-t interval of the mean of n >= 2 values: mean +- t(n-1) x sd / sqrt(n)."""
    half = float(stats.t.ppf((1 + level) / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    return float(x.mean()) - half, float(x.mean()) + half


def _studentized(x: np.ndarray, level: float, n_resamples: int, seed: int) -> tuple[float, float] | None:
    """Bootstrap-t interval of the mean: [m - q_hi * se, m - q_lo * se] from the quantiles of t*.

    Resamples with zero spread give t* = +-inf (kept: they are real tail mass) or NaN (0/0,
    dropped); None when a needed quantile is infinite.
    """
    n, rng = x.size, np.random.default_rng(seed)
    m, se = x.mean(), x.std(ddof=1) / np.sqrt(n)
    batch = max(1, _MEMORY_FLOATS // n)
    t = []
    for first in range(0, n_resamples, batch):
        xb = x[rng.integers(0, n, size=(min(batch, n_resamples - first), n))]
        with np.errstate(divide="ignore", invalid="ignore"):
            t.append((xb.mean(axis=1) - m) / (xb.std(axis=1, ddof=1) / np.sqrt(n)))
    t = np.concatenate(t)
    t = t[~np.isnan(t)]
    alpha = (1 - level) / 2
    with np.errstate(invalid="ignore"):  # interpolating between two infinite t* gives NaN: handled below
        q_lo, q_hi = np.quantile(t, [alpha, 1 - alpha])
    if not (np.isfinite(q_lo) and np.isfinite(q_hi)):
        return None
    return float(m - q_hi * se), float(m - q_lo * se)


def _bootstrap(samples: tuple[np.ndarray, ...], statistic: Callable, level: float, n_resamples: int, seed: int,
               method: str) -> tuple[float, float] | None:
    """scipy's bootstrap interval, or None when it is not finite (degenerate jackknife or statistic)."""
    n = samples[0].size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.bootstrap(samples, statistic, confidence_level=level, n_resamples=n_resamples, method=method,
                              paired=len(samples) > 1, batch=max(1, min(n_resamples, _MEMORY_FLOATS // n)),
                              rng=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return (low, high) if np.isfinite(low) and np.isfinite(high) else None


def _finite(values: Sequence[float]) -> tuple[np.ndarray, int]:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"an interval needs a 1-D sequence of values; got shape {x.shape}")
    keep = np.isfinite(x)
    return x[keep], int((~keep).sum())


def _is_binary(x: np.ndarray) -> bool:
    return bool(np.isin(x, (0.0, 1.0)).all())


def _dropped_note(dropped: int) -> str | None:
    return f"{dropped} non-finite value(s) dropped" if dropped else None


def _join(*notes: str | None) -> str | None:
    kept = [n for n in notes if n]
    return "; ".join(kept) if kept else None


def _noted(iv: Interval, note: str | None) -> Interval:
    return replace(iv, warning=_join(note, iv.warning)) if note else iv


def _float(v) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None

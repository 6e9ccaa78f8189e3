"""Confidence intervals, so every reported rate or effect carries its uncertainty.

Thin wrappers over scipy: the percentile bootstrap for means and differences,
Wilson intervals for proportions. Every function returns an `Interval`
(mlxinterp.core.interval): the one value type for an estimate with its interval.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

from mlxinterp.core.interval import LEVEL, Interval, format_interval

__all__ = ["LEVEL", "Interval", "bootstrap_ci", "format_interval", "kl_divergence", "paired_binary_diff_ci",
           "proportion_ci"]


def bootstrap_ci(values: Sequence[float], statistic: Callable = np.mean, level: float = 0.95,
                 n_resamples: int = 2000, seed: int = 0) -> Interval:
    """Percentile bootstrap CI of `statistic` over the finite `values` (non-finite ones are dropped)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    method = "percentile bootstrap"
    if x.size == 0:
        return Interval(None, None, None, 0, method, level=level)
    est = float(statistic(x))
    if x.size < 2 or np.all(x == x[0]):
        return Interval(est, est, est, int(x.size), method, level=level)
    res = stats.bootstrap((x,), statistic, confidence_level=level, n_resamples=n_resamples,
                          method="percentile", rng=np.random.default_rng(seed))
    return Interval(est, float(res.confidence_interval.low), float(res.confidence_interval.high), int(x.size),
                    method, level=level)


def paired_binary_diff_ci(diffs: Sequence[float], level: float = 0.95, seed: int = 0) -> Interval:
    """CI of the mean of paired 0/1 outcome differences (each in {-1, 0, 1}), e.g. an accuracy lift.

    The percentile bootstrap collapses to [0, 0] when no pair is discordant,
    which claims certainty that 0/24 cannot give. Then the bound comes from the
    discordant-pair rate instead: |lift| <= P(discordant), whose Wilson upper
    bound for 0 of n is used on both sides.
    """
    d = np.asarray(diffs, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size and not np.isin(d, (-1.0, 0.0, 1.0)).all():
        raise ValueError(f"paired binary differences must be -1, 0 or 1; got {sorted(set(d.tolist()))[:5]}")
    if d.size == 0 or np.any(d != 0):
        return bootstrap_ci(d, level=level, seed=seed)
    bound = proportion_ci(0, int(d.size), level).high
    return Interval(0.0, -bound, bound, int(d.size), "Wilson bound on the discordant-pair rate", level=level)


def proportion_ci(successes: int, n: int, level: float = 0.95) -> Interval:
    """Wilson score interval for k/n."""
    if n == 0:
        return Interval(None, None, None, 0, "Wilson", k=0, level=level)
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return Interval(successes / n, float(ci.low), float(ci.high), int(n), "Wilson", k=int(successes), level=level)


def kl_divergence(logits_p, logits_q) -> np.ndarray:
    """KL(p || q) in nats along the last axis, from logits (numerically stable)."""
    lp = logits_p - _logsumexp(logits_p)
    lq = logits_q - _logsumexp(logits_q)
    return np.sum(np.exp(lp) * (lp - lq), axis=-1)


def _logsumexp(x):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True))

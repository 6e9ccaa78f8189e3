"""Confidence intervals, so every reported rate or effect carries its uncertainty.

Thin wrappers over scipy: the percentile bootstrap for means and differences,
Wilson intervals for proportions.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats


def bootstrap_ci(values: Sequence[float], statistic: Callable = np.mean, level: float = 0.95,
                 n_resamples: int = 2000, seed: int = 0) -> dict:
    """{'estimate', 'low', 'high', 'n'}: percentile bootstrap CI of `statistic` over `values`."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"estimate": None, "low": None, "high": None, "n": 0}
    est = float(statistic(x))
    if x.size < 2 or np.all(x == x[0]):
        return {"estimate": est, "low": est, "high": est, "n": int(x.size)}
    res = stats.bootstrap((x,), statistic, confidence_level=level, n_resamples=n_resamples,
                          method="percentile", rng=np.random.default_rng(seed))
    return {"estimate": est, "low": float(res.confidence_interval.low),
            "high": float(res.confidence_interval.high), "n": int(x.size)}


def proportion_ci(successes: int, n: int, level: float = 0.95) -> dict:
    """{'estimate', 'low', 'high', 'k', 'n'}: Wilson score interval for k/n."""
    if n == 0:
        return {"estimate": None, "low": None, "high": None, "k": 0, "n": 0}
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return {"estimate": successes / n, "low": float(ci.low), "high": float(ci.high), "k": int(successes), "n": int(n)}


def kl_divergence(logits_p, logits_q) -> np.ndarray:
    """KL(p || q) in nats along the last axis, from logits (numerically stable)."""
    lp = logits_p - _logsumexp(logits_p)
    lq = logits_q - _logsumexp(logits_q)
    return np.sum(np.exp(lp) * (lp - lq), axis=-1)


def _logsumexp(x):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True))

"""Linear probes: logistic fit, held-out split by groups, control task and selectivity, cosine with diff-of-means."""
from __future__ import annotations

import numpy as np
import pytest

from mlxinterp.analysis.probes import (
    ProbeError,
    control_labels,
    fit_logistic,
    probe_layers,
    split,
)


def _data(n=200, d=20, signal=3.0, seed=0):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    y = np.arange(n) % 2
    X = rng.normal(size=(n, d)) + signal * np.outer(y - 0.5, u)
    return X, y, u


def test_fit_logistic_separates_and_matches_numpy_gradient():
    X, y, _u = _data()
    w, b, mu, sd = fit_logistic(X, y, l2=1e-2, steps=300)
    acc = ((((X - mu) / sd) @ w + b > 0) == y).mean()
    assert acc > 0.9
    # at the optimum the regularised loss gradient vanishes (checked independently in numpy)
    Z = (X - mu) / sd
    p = 1 / (1 + np.exp(-(Z @ w + b)))
    grad_w = Z.T @ (p - y) / len(y) + 1e-2 * w
    assert np.abs(grad_w).max() < 2e-3 and abs((p - y).mean()) < 2e-3


def test_probe_layers_selectivity_and_cosine():
    X, y, _u = _data(n=240)
    noise = np.random.default_rng(5).normal(size=X.shape)
    groups = np.arange(len(y)) // 2  # pairs stay together
    res = probe_layers({0: noise, 1: X}, y, types=None, groups=groups, seed=1)
    r0, r1 = res
    assert r1.test_acc > 0.9 and abs(r0.test_acc - 0.5) < 0.2
    assert r1.selectivity > 0.3  # control labels (one per example) cannot be predicted on held-out examples
    assert r1.cos_diff_of_means > 0.8  # the probe direction agrees with the mean difference
    assert r1.n_train + r1.n_test == 240


def test_control_task_is_a_fixed_function_of_type():
    types = ["a", "b", "a", "c", "b", "a"]
    lab = control_labels(types, seed=3)
    assert lab[0] == lab[2] == lab[5] and lab[1] == lab[4]
    # a probe that reads the type alone reaches the control labels: memorisation is measured
    X = np.array([[1.0, 0, 0] if t == "a" else [0, 1.0, 0] if t == "b" else [0, 0, 1.0] for t in types * 20])
    lab = control_labels(types * 20, seed=4)
    if len(set(lab)) == 2:
        w, b, mu, sd = fit_logistic(X, lab, l2=1e-4, steps=300)
        assert ((((X - mu) / sd) @ w + b > 0) == lab).mean() == 1.0


def test_split_keeps_groups_and_errors():
    tr, te = split(10, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4], 0.4, seed=0)
    g = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    assert not set(g[tr]) & set(g[te]) and len(te) == 4
    with pytest.raises(ProbeError, match="both 0 and 1"):
        probe_layers({0: np.zeros((4, 2))}, [1, 1, 1, 1])
    with pytest.raises(ProbeError, match="do not match"):
        probe_layers({0: np.zeros((3, 2))}, [1, 0, 1, 0])


def test_choose_types_avoids_a_constant_control():
    from mlxinterp.analysis.probes import choose_types

    ids = [[1, 10 + i % 12, 99] for i in range(48)]  # every prompt ends in the same token ("?")
    n, types = choose_types(ids)
    assert n == 2 and len(set(types)) == 12
    n, types = choose_types([[1, 5, 99]] * 10)
    assert n is None and types == list(range(10))

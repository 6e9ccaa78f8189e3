"""Directions on synthetic data with a known answer, save/load, profiles and steering taps."""
from __future__ import annotations

import numpy as np
import pytest

from mlxinterp.analysis import directions as D
from mlxinterp.core.errors import PromptError


def test_diff_of_means_recovers_a_planted_direction():
    rng = np.random.default_rng(0)
    d = 32
    truth = rng.normal(size=d)
    truth /= np.linalg.norm(truth)
    neg = rng.normal(size=(200, d))
    pos = rng.normal(size=(200, d)) + 3.0 * truth
    got = D.diff_of_means(pos, neg, "blocks.0.hook_resid_post", rng)
    assert got.unit() @ truth > 0.95
    assert got.norm == pytest.approx(3.0, rel=0.15)
    assert got.split_half_cosine > 0.8
    noise = D.diff_of_means(rng.normal(size=(200, d)), rng.normal(size=(200, d)), "x", rng)
    assert abs(noise.split_half_cosine) < 0.5  # no planted signal: halves disagree


def test_direction_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    d = D.diff_of_means(rng.normal(size=(10, 8)) + 1, rng.normal(size=(10, 8)), "blocks.3.hook_resid_post", rng,
                        model="m", prompts_hash="abc")
    path = d.save(tmp_path / "dir")
    back = D.Direction.load(path)
    assert np.array_equal(back.vector, d.vector) and back.hook == d.hook and back.prompts_hash == "abc"


def test_layer_profiles():
    n = 12
    assert np.all(D.layer_profile("flat", n) == 1)
    g = D.layer_profile("gaussian", n, center=6, width=1.5)
    assert g.argmax() == 6 and g[0] < 0.01
    donut = D.layer_profile("donut", n, lo=3, hi=8)
    assert donut.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    bell = D.layer_profile("bell", n, center=5.5, width=3)
    assert bell[5] > 0.95 and bell[0] < 0.2
    assert D.layer_profile([0.5] * n, n).tolist() == [0.5] * n


def test_steering_taps_weights():
    v = np.ones(4, np.float32)
    taps = D.steering_taps(v, 2.0, [1, 2, 3], weights=[0.5, 0.0, 1.0])
    assert set(taps) == {"blocks.1.hook_resid_post", "blocks.3.hook_resid_post"}
    assert taps["blocks.1.hook_resid_post"].scale == 1.0
    assert D.perturbation_pct(10.0, 2.0, 400.0) == pytest.approx(5.0)


def test_extract_on_a_tiny_model_is_finite_and_steers(tiny_hooked):

    hm = tiny_hooked("qwen3", None)
    pos = ["Paris is lovely in spring.", "The city of Paris is big.", "Paris has a tower.", "I love Paris."]
    neg = ["Rome is lovely in spring.", "The city of Rome is big.", "Rome has a forum.", "I love Rome."]
    dirs = D.extract(hm, pos, neg, layers=[1, 2])
    assert set(dirs) == {1, 2}
    for d in dirs.values():
        assert np.isfinite(d.norm) and d.norm > 0 and d.resid_norm > 0 and d.n_pos == 4
    # steering with the direction moves the layer-2 activation by exactly alpha * v
    d = dirs[1]
    _, clean = hm.run_with_cache("Hello", names=["blocks.1.hook_resid_post"])
    with hm.hooks(D.steering_taps(d.vector, 3.0, [1])):
        _, c = hm.run_with_cache("Hello", names=["blocks.1.hook_resid_post"])
    diff = np.array(c["blocks.1.hook_resid_post"] - clean["blocks.1.hook_resid_post"])
    assert np.allclose(diff, 3.0 * d.vector, atol=1e-4)
    with pytest.raises(PromptError):
        D.extract(hm, [], neg)

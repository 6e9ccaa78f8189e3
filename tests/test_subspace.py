"""Subspace library: kernel construction, projectors, OT plans, MMD^2, and the subspace studies' helpers."""
from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlxinterp.analysis import subspace as S
from mlxinterp.core.errors import MlxInterpError


def _rand_basis(k=5, d=12, seed=0):
    return S.random_basis(np.random.default_rng(seed), k, d)


def test_projectors_are_idempotent_symmetric_and_complementary():
    V = _rand_basis()
    P, Pp = S.projectors(V)
    np.testing.assert_allclose(P @ P, P, atol=1e-12)
    np.testing.assert_allclose(Pp @ Pp, Pp, atol=1e-12)
    np.testing.assert_allclose(P + Pp, np.eye(12), atol=1e-12)
    np.testing.assert_allclose(P @ Pp, 0, atol=1e-12)
    np.testing.assert_allclose(P, P.T, atol=1e-12)
    assert np.trace(P) == pytest.approx(5)
    x = np.random.default_rng(1).normal(size=12)
    assert np.linalg.norm(P @ x) ** 2 + np.linalg.norm(Pp @ x) ** 2 == pytest.approx(np.linalg.norm(x) ** 2)


def test_projectors_reject_a_non_orthonormal_basis():
    with pytest.raises(MlxInterpError, match="orthonormal"):
        S.projectors(np.ones((2, 4)))


def test_ot_plan_has_uniform_marginals_and_transport_is_barycentric():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(7, 6)), rng.normal(size=(4, 6))
    plan = S.ot_plan(X, Y)
    assert plan.shape == (7, 4) and (plan >= 0).all()
    np.testing.assert_allclose(plan.sum(1), np.full(7, 1 / 7), atol=1e-9)
    np.testing.assert_allclose(plan.sum(0), np.full(4, 1 / 4), atol=1e-9)
    # identical clouds (a permutation): the plan is that permutation and transport recovers Y exactly
    perm = rng.permutation(7)
    plan2 = S.ot_plan(X, X[perm])
    np.testing.assert_allclose(S.ot_transport(X, plan2), X[perm], atol=1e-9)


def test_ot_plan_rejects_mismatched_clouds():
    with pytest.raises(MlxInterpError, match="OT needs"):
        S.ot_plan(np.ones((3, 4)), np.ones((3, 5)))


def _direct_mmd2(X, Y, ell):
    """Term-by-term unbiased MMD^2 with explicit loops (the definition)."""
    k = lambda a, b: np.exp(-0.5 * np.sum((a - b) ** 2 / ell ** 2))  # noqa: E731
    n, m = len(X), len(Y)
    xx = sum(k(X[i], X[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(Y[i], Y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(X[i], Y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_mmd2_matches_direct_computation_numpy_and_mlx_padded():
    rng = np.random.default_rng(0)
    ell = rng.uniform(0.5, 3.0, size=5)
    pairs = [(rng.normal(size=(6, 5)), rng.normal(loc=0.5, size=(4, 5))),
             (rng.normal(size=(3, 5)), rng.normal(size=(7, 5)))]
    direct = [_direct_mmd2(x, y, ell) for x, y in pairs]
    assert [S.mmd2_reference(x, y, ell) for x, y in pairs] == pytest.approx(direct, abs=1e-10)
    X, Y, wx, wy = S.pad_clouds(pairs)
    got = np.array(S.mmd2_batch(mx.array(np.log(ell).astype(np.float32)), X, Y, wx, wy))
    np.testing.assert_allclose(got, direct, atol=1e-5)
    assert direct[0] > direct[1]  # the shifted pair is further apart


def test_seed_ard_fit_decreases_the_objective():
    rng = np.random.default_rng(0)
    pairs = [(rng.normal(size=(6, 4)), rng.normal(size=(5, 4)) + np.array([2.0, 0, 0, 0])) for _ in range(3)]
    X, Y, wx, wy = S.pad_clouds(pairs)
    fit = S.fit_ard(X, Y, wx, wy, np.zeros(4), lam=0.01, objective="seed", steps=60, log_every=10)
    assert fit.history[-1]["loss"] < fit.history[0]["loss"]
    assert fit.log_ell.shape == (4,) and np.isfinite(fit.log_ell).all()
    # the coordinate that separates the clouds is switched off first (its lengthscale grows most)
    assert int(np.argmax(fit.log_ell)) == 0


def _padded_pairs_unequal(seed=1, d=5):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(6, d)), rng.normal(loc=0.7, size=(3, d))),
            (rng.normal(size=(2, d)), rng.normal(size=(7, d)))]


def test_biased_mmd2_matches_scipy_cdist_on_padded_pairs_and_is_nonnegative():
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(1)
    ell = rng.uniform(0.3, 2.0, size=5)
    pairs = _padded_pairs_unequal()

    def v_stat(x, y):  # biased MMD^2 straight from the definition: mean of each Gram block, diagonal kept
        k = lambda a, b: np.exp(-0.5 * cdist(a / ell, b / ell, "sqeuclidean"))  # noqa: E731
        return k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()

    direct = [v_stat(x, y) for x, y in pairs]
    assert [S.mmd2_reference(x, y, ell, "biased") for x, y in pairs] == pytest.approx(direct, abs=1e-12)
    X, Y, wx, wy = S.pad_clouds(pairs)
    got = np.array(S.mmd2_batch(mx.array(np.log(ell).astype(np.float32)), X, Y, wx, wy, "biased"))
    np.testing.assert_allclose(got, direct, atol=1e-5)
    unbiased = np.array(S.mmd2_batch(mx.array(np.log(ell).astype(np.float32)), X, Y, wx, wy, "unbiased"))
    assert not np.allclose(got, unbiased, atol=1e-3)  # the padded estimator really switches
    # the V-statistic is a squared RKHS norm: >= 0 even for same-distribution clouds, where the unbiased one dips below 0
    same = [(rng.normal(size=(5, 5)), rng.normal(size=(4, 5))) for _ in range(20)]
    Xs, Ys, wxs, wys = S.pad_clouds(same)
    log_ell = mx.array(np.zeros(5, np.float32))
    assert float(S.mmd2_batch(log_ell, Xs, Ys, wxs, wys, "biased").min()) >= 0
    assert float(S.mmd2_batch(log_ell, Xs, Ys, wxs, wys, "unbiased").min()) < 0
    with pytest.raises(MlxInterpError, match="'median'.*biased"):
        S.mmd2_batch(log_ell, Xs, Ys, wxs, wys, "median")
    with pytest.raises(MlxInterpError, match="'minimise'.*power"):
        S.fit_ard(Xs, Ys, wxs, wys, np.zeros(5), 0.01, objective="minimise")


def _two_coordinate_shift(d=8, n_pairs=4, seed=0):
    """Clouds that differ only in coordinates 0 and 1 (mean shift); the other d - 2 are the same N(0, 1)."""
    rng = np.random.default_rng(seed)
    shift = np.zeros(d)
    shift[:2] = 1.5
    return [(rng.normal(size=(12, d)), rng.normal(size=(10, d)) + shift) for _ in range(n_pairs)]


def test_power_fit_raises_mmd2_and_selects_the_discriminating_coordinates():
    d = 8
    X, Y, wx, wy = S.pad_clouds(_two_coordinate_shift(d))
    fit = S.fit_ard(X, Y, wx, wy, np.full(d, np.log(np.sqrt(d))), lam=0.01, objective="power", steps=300)
    assert fit.mmd2_end["biased"] > fit.mmd2_start["biased"] + 0.5
    assert fit.mmd2_end["unbiased"] > fit.mmd2_start["unbiased"]  # not only the V-statistic's self-similarity
    assert set(np.argsort(fit.log_ell)[:2].tolist()) == {0, 1}
    assert fit.log_ell[2:].min() > fit.log_ell[:2].max() + 1.0  # the noise coordinates are switched off
    assert fit.history[-1]["mmd2_sum"] == pytest.approx(fit.mmd2_end["biased"], rel=1e-4)
    seed = S.fit_ard(X, Y, wx, wy, np.full(d, np.log(np.sqrt(d))), lam=0.01, objective="seed", steps=300)
    assert set(np.argsort(seed.log_ell)[-2:].tolist()) == {0, 1}  # the seed objective switches exactly those off


def test_per_pair_mmd2_sums_to_the_fit_sums_and_its_change_ci_brackets_the_mean():
    from mlxinterp.studies import ard_mmd as study

    clouds = _two_coordinate_shift(d=6, n_pairs=5)
    X, Y, wx, wy = S.pad_clouds(clouds)
    fit = S.fit_ard(X, Y, wx, wy, np.full(6, np.log(np.sqrt(6))), lam=0.01, objective="power", steps=80)
    for e in S.MMD_ESTIMATORS:
        assert fit.mmd2_start_pairs[e].shape == (5,)
        assert fit.mmd2_start_pairs[e].sum() == pytest.approx(fit.mmd2_start[e], rel=1e-6)
        assert fit.mmd2_end_pairs[e].sum() == pytest.approx(fit.mmd2_end[e], rel=1e-6)
        ref = [S.mmd2_reference(x, y, np.exp(fit.log_ell), e) for x, y in clouds]  # each pair, against the numpy reference
        np.testing.assert_allclose(fit.mmd2_end_pairs[e], ref, atol=1e-4)
    rec = study._ard_pair_records(fit, [{"id": f"p{i}"} for i in range(5)], seed=0)
    assert [r["id"] for r in rec["pairs"]] == [f"p{i}" for i in range(5)]
    for e in S.MMD_ESTIMATORS:
        assert sum(r[f"{e}_end"] for r in rec["pairs"]) == pytest.approx(fit.mmd2_end[e], rel=1e-6)
        ci = rec["mmd2_change_ci"][e]
        change = fit.mmd2_end_pairs[e] - fit.mmd2_start_pairs[e]
        assert ci["estimate"] == pytest.approx(change.mean()) and ci["n"] == 5
        assert ci["low"] <= ci["estimate"] <= ci["high"] and ci["low"] < ci["high"]
        assert ci["low"] > 0  # every pair gains: the shift is in all of them


def test_shuffle_contrast_pairs_true_and_shuffled_runs_by_position():
    from mlxinterp.studies import ard_mmd as study

    def run(labels, ends):
        return {"objective": "power", "layer": 3, "lambda": 0.01, "init": "uniform", "labels": labels,
                "pairs": [{"biased_end": b, "unbiased_end": b - 0.1} for b in ends]}

    items = [run("true", [2.0, 2.5, 3.0, 2.2]), run("shuffled", [0.5, 0.4, 0.6, 0.5])]
    ci = study._ard_shuffle_contrast(items, seed=0)["L3 lambda=0.01"]
    for e in ("biased", "unbiased"):
        assert ci[e]["estimate"] == pytest.approx(np.mean([1.5, 2.1, 2.4, 1.7]))
        assert 0 < ci[e]["low"] <= ci[e]["estimate"] <= ci[e]["high"]


def test_seed_objective_on_identical_distributions_drives_mmd2_below_its_start():
    """Documents the seed objective's degeneracy: with no difference to find, minimising the unbiased MMD^2 fits noise below 0."""
    rng = np.random.default_rng(0)
    d = 8
    X, Y, wx, wy = S.pad_clouds([(rng.normal(size=(12, d)), rng.normal(size=(10, d))) for _ in range(4)])
    fit = S.fit_ard(X, Y, wx, wy, np.zeros(d), lam=0.01, objective="seed", steps=200)
    assert fit.mmd2_end["unbiased"] < fit.mmd2_start["unbiased"]
    assert fit.mmd2_end["unbiased"] < 0  # below the population value 0: the optimiser exploits the estimator's noise


def test_effective_rank_and_similarity():
    assert S.effective_rank(np.ones(8)) == pytest.approx(8)
    assert S.effective_rank(np.array([1.0, 0, 0])) == pytest.approx(1)
    V = _rand_basis()
    assert S.subspace_similarity(V, V) == pytest.approx(1)
    W = S.projectors(V)[1]  # rows span Z-perp (not orthonormal, but orthogonal to V)
    assert S.subspace_similarity(V, np.linalg.qr(W.T)[0].T[:5] @ S.projectors(V)[1]) == pytest.approx(0, abs=1e-10)


@pytest.mark.parametrize("arch,bits", [("qwen2", None), ("gemma3_text", 4), ("llama", 4)])
def test_kernel_construction_on_a_tiny_model(tiny_hooked, arch, bits):
    """QK_h / OV_h from head_weights equal products of the raw (dequantized) projection blocks; V_Z is the
    top right singular subspace of the explicitly stacked kernel."""
    hm = tiny_hooked(arch, bits)
    info = hm.info
    w = S.head_weights(hm, 1)
    H, Hkv, dh, d = info.n_heads, info.n_kv_heads, info.head_dim, info.d_model
    assert w.A.shape == (H, dh, d) and w.O.shape == (H, d, dh)
    from mlxinterp.core.archs import text_model

    attn = text_model(hm.model).layers[1].self_attn
    g = S.norm_gain(hm, 1)
    q, k = S._weight(attn.q_proj), S._weight(attn.k_proj)
    h = H - 1  # the last query head reads the last kv head under GQA
    np.testing.assert_allclose(w.B[h], k[(Hkv - 1) * dh : Hkv * dh] * g, rtol=1e-6)
    np.testing.assert_allclose(w.A[h], q[h * dh : (h + 1) * dh] * g, rtol=1e-6)
    if bits:  # dequantized, not the packed integers
        assert attn.q_proj.weight.dtype == mx.uint32 and np.abs(q).max() < 10
    blocks = []
    for A, B, C, O in zip(w.A, w.B, w.C, w.O):
        QK, OV = A.T @ B, O @ C
        blocks += [QK / np.linalg.norm(QK), QK.T / np.linalg.norm(QK), OV / np.linalg.norm(OV)]
    M = np.concatenate(blocks)  # (3 H d) x d
    _, s, Vt = np.linalg.svd(M)
    np.testing.assert_allclose(S.kernel_gram(w), M.T @ M, atol=1e-8 * np.abs(M.T @ M).max())
    Z = S.z_basis(hm, 1, 6)
    assert S.subspace_similarity(Z, Vt[:6]) == pytest.approx(1, abs=1e-6)
    sv = S.kernel_singular_values(w)
    np.testing.assert_allclose(sv["qk"][0], np.linalg.svd(w.A[0].T @ w.B[0], compute_uv=False)[:dh], rtol=1e-6, atol=1e-9)
    assert 1 <= S.effective_rank(sv["qk"][0]) <= dh


def test_norm_gain_is_the_norm_weight(tiny_hooked):
    hm = tiny_hooked("llama", None)
    from mlxinterp.core.archs import text_model

    ln = text_model(hm.model).layers[0].input_layernorm
    np.testing.assert_allclose(S.norm_gain(hm, 0), np.array(ln.weight), rtol=1e-4)


def test_pairs_file_is_complete_and_answers_check():
    from mlxinterp.studies.subspace_patching import language_of
    from mlxinterp.tasks.language_pairs import layers_at, load_pairs

    raw = json.load(open(str(Path(__file__).resolve().parents[1] / "mlxinterp/data/crosslingual/pairs.json"), encoding="utf-8"))
    pairs = raw["pairs"]
    assert len(pairs) >= 40 and "not been checked by a native speaker" in raw["provenance"].replace("NOT", "not")
    assert len({p["id"] for p in pairs}) == len(pairs)
    for p in pairs:
        assert language_of(p["en"])[0] == "en" and language_of(p["zh"])[0] == "zh", p["id"]
        if p["kind"] == "arithmetic":
            assert eval(p["expr"]) == float(p["answer"]), p["id"]  # noqa: S307 - our own data
    assert {p["kind"] for p in load_pairs(4)} == {"arithmetic", "factual"}
    assert layers_at([32 / 35, 33 / 35], 36) == [32, 33]  # the seed study's layers 32 and 33 of Qwen2.5-3B's 36
    assert layers_at([32 / 35, 33 / 35], 18) == [15, 16]  # distinct on the 18-layer default model
    with pytest.raises(MlxInterpError, match="fractions"):
        layers_at([1.5], 18)


def test_score_extracts_canonical_answers_and_language():
    from mlxinterp.studies.subspace_patching import _score, language_of

    fact = {"kind": "factual", "answer": "Paris", "aliases": ["Paris", "巴黎"]}
    arith = {"kind": "arithmetic", "answer": "8", "aliases": ["8", "八"]}
    assert _score(" Paris\nQuestion: x", fact)["answer"] == _score("\nThe capital of France is Paris.\n", fact)["answer"] == "paris"
    assert _score("巴黎\n问题", fact)["correct"] and not _score(" Lyon\n", fact)["correct"]
    assert _score(" Lyon\nParis", fact)["answer"] == "lyon"  # only the first line is graded
    assert _score(" 3+5=8\nQuestion: 2+3=5", arith)["answer"] == "8" and _score(" 3+5=8\n", arith)["correct"]
    assert not _score(" 12\n", arith)["correct"]
    assert language_of("Paris is nice")[0] == "en" and language_of("巴黎很好")[0] == "zh"
    assert language_of("Paris 巴黎很")[0] == "mixed" and language_of("42 = 42")[0] == "none"


def test_row_patch_identity_rows_and_real_patches(tiny_hooked):
    """Through real taps on a tiny model: a row untouched, a Z-patch with the run's own Z content, and a
    Z-perp patch with its own Z-perp content leave the logits unchanged; a full patch with other content does not."""
    from mlxinterp.core import taps as T
    from mlxinterp.studies.subspace_patching import _row_patch

    hm = tiny_hooked("llama", None)
    text = "The Eiffel Tower is located in the city of"
    _, cache = hm.run_with_cache(text, names=["blocks.1.hook_resid_pre"])
    h = np.array(cache["blocks.1.hook_resid_pre"][0], np.float64)  # [T, d]
    Tn, d = h.shape
    V = S.z_basis(hm, 1, 6)
    P, Pp = S.projectors(V)
    other = np.random.default_rng(0).normal(size=h.shape) * h.std()
    keep, sign = np.array([1.0, 1.0, 0.0, 0.0]), np.array([0.0, -1.0, 1.0, 0.0])
    add = np.stack([np.zeros_like(h), h @ P, h @ Pp, other]).astype(np.float32)
    tap = T.Fn(_row_patch(keep, sign, np.stack([V] * 4), add, Tn), positions=list(range(1, Tn)), when="prompt")
    base = np.array(hm(text)[0])
    with hm.hooks({"blocks.1.hook_resid_pre": tap}):
        out = np.array(hm([text] * 4))
    for row in range(3):
        np.testing.assert_allclose(out[row], base, atol=2e-3)
    assert np.abs(out[3, 1:] - base[1:]).max() > 1e-2
    np.testing.assert_allclose(out[3, 0], base[0], atol=2e-3)  # position 0 is never patched


def test_ard_runs_cover_the_grid_and_controls_and_refuse_a_bad_objective():
    from mlxinterp.studies import ard_mmd as study

    cfg = study.ARDConfig(lambdas=(0.001, 0.1), power_lambdas=(0.1, 1.0), control_lambda=0.01)
    runs = study._ard_runs(cfg, [3, 5])
    power = [r for r in runs if r["objective"] == "power"]
    seed = [r for r in runs if r["objective"] == "seed"]
    assert len(power) == 2 * 2 + 2 + 2 and len(seed) == 2 * 2 + 2
    assert {r["init"] for r in power if r["labels"] == "true" and r["lambda"] != 0.01} == {"uniform"}
    assert {r["init"] for r in seed if r["lambda"] != 0.01} == {"svd"}
    assert {r["lambda"] for r in power if r["init"] == "uniform" and r["labels"] == "true"} == {0.1, 1.0}
    assert sum(r["labels"] == "shuffled" for r in runs) == 2 and all(r["labels"] == "true" for r in seed)
    assert len(study._ard_runs(study.ARDConfig(objective=("seed",), control_lambda=None), [3])) == 3
    with pytest.raises(MlxInterpError, match="'exact'"):
        study._ard_runs(study.ARDConfig(objective=("exact",)), [3])


def test_ard_selection_overlap_and_hypergeometric_null():
    from mlxinterp.studies import ard_mmd as study

    d, tau = 20, 1.0
    energy = np.arange(d, 0, -1.0)  # coordinate 0 carries the most SVD-Z energy
    log_ell = np.full(d, 2.0)
    log_ell[[0, 1, 15]] = -1.0  # selected: two of the top-3 SVD coordinates and one outside
    sel = study._ard_selection(log_ell, energy, tau)
    assert sel["n_active"] == 3 and sel["overlap_with_svd_top"] == pytest.approx(2 / 3)
    assert sel["overlap_chance"] == pytest.approx(3 / 20)
    assert 0 < sel["overlap_p_high"] < 0.05 < sel["overlap_p_low"] <= 1
    empty = study._ard_selection(np.full(d, 2.0), energy, tau)
    assert empty["n_active"] == 0 and empty["overlap_with_svd_top"] is None


def _run_tiny(hm, tmp_path, exp: str, sets=(), name: str = "run") -> dict:
    """Run one subspace experiment on a tiny model with its quick profile (+ sets); its result dict."""
    from rich.console import Console

    from mlxinterp.suite import run_all

    run_all(["tiny"], only=exp, out=tmp_path / name, load_fn=lambda spec: hm, quick=True, resume=False,
            console=Console(file=open("/dev/null", "w")), sets=list(sets))
    res = json.loads((tmp_path / name / hm.info.slug / exp / "result.json").read_text())
    assert res["status"] == "complete"
    return res


def _wilson(k, n):
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(method="wilson")
    return ci.low, ci.high


def test_ard_mmd_runs_end_to_end_on_a_tiny_model(tiny_hooked, tmp_path):
    hm = tiny_hooked("gemma3_text", None)
    sets = ["ard_mmd.n=4", "ard_mmd.steps=30", "ard_mmd.k=8", "ard_mmd.lambdas=[0.01]", "ard_mmd.power_lambdas=[0.01]"]
    res = _run_tiny(hm, tmp_path, "ard_mmd", sets)
    r = res["result"]
    assert set(r["objective"]) == {"power", "seed"}
    assert r["design"]["selection_ids"] and not set(r["design"]["selection_ids"]) & set(r["design"]["report_ids"])
    runs = r["runs"]
    assert len(runs) == 5 * len(r["layers"])  # power: grid + SVD-init + shuffled; seed: grid + uniform-init
    for it in runs:
        assert it["mmd2_end"]["biased"] >= 0 and it["steps"] <= 30 and "overlap_p_low" in it
    power = [it for it in runs if it["objective"] == "power" and it["labels"] == "true" and it["init"] == "uniform"]
    assert all(it["mmd2_end"]["biased"] > it["mmd2_start"]["biased"] for it in power)
    for it in runs:  # per-pair records of the 2 selection pairs behind the sums, with a CI over pairs
        assert [p["id"] for p in it["pairs"]] == r["design"]["selection_ids"]
        for e in ("biased", "unbiased"):
            assert sum(p[f"{e}_end"] for p in it["pairs"]) == pytest.approx(it["mmd2_end"][e], rel=1e-5, abs=1e-6)
            assert it["mmd2_change_ci"][e]["n"] == 2
    for it in runs:  # held-out numbers recomputed from the report pairs' records
        if it["labels"] != "true":
            assert "heldout" not in it
            continue
        h = it["heldout"]
        assert [p["id"] for p in h["pairs"]] == r["design"]["report_ids"]
        for e in ("biased", "unbiased"):
            diff = [p[f"fit_true_{e}"] - p[f"fit_shuffled_{e}"] for p in h["pairs"]]
            assert h["true_minus_shuffled"][e]["estimate"] == pytest.approx(np.mean(diff), abs=1e-9)
            assert h["true_minus_shuffled"][e]["n"] == 2
            gain = [p[f"fit_true_{e}"] - p[f"fit_shuffled_{e}"] - p[f"init_true_{e}"] + p[f"init_shuffled_{e}"]
                    for p in h["pairs"]]
            assert h["gain_over_init"][e]["estimate"] == pytest.approx(np.mean(gain), abs=1e-9)
    assert "per-pair mean MMD2 change" in r["labels"]["main_layer_mmd2_change"]
    contrast = r["shuffle_contrast"]  # the true-label twin of each shuffled run, paired by selection pair
    for l in r["layers"]:
        true = next(it for it in power if it["layer"] == l)
        sh = next(it for it in runs if it["labels"] == "shuffled" and it["layer"] == l)
        diff = [t["biased_end"] - u["biased_end"] for t, u in zip(true["pairs"], sh["pairs"])]
        assert contrast[f"L{l} lambda=0.01"]["biased"]["estimate"] == pytest.approx(np.mean(diff))
    check = r["prereg"]["checks"]["heldout_separation"]  # the primary run's held-out interval, judged at its low end
    assert check["value"] == pytest.approx(r["summary"]["heldout_true_minus_shuffled"]["low"])
    assert check["verdict"] == ("PASS" if check["value"] > 0 else "FAIL")
    again = _run_tiny(hm, tmp_path, "ard_mmd", sets, name="again")
    assert again["result"] == r  # only "timings" may vary between runs (suite's resume invariant)


def test_matched_basis_holds_the_target_energy_and_is_random():
    from mlxinterp.studies.subspace_patching import matched_basis

    rng = np.random.default_rng(0)
    D = rng.normal(size=(7, 40)) * np.linspace(3, 0.1, 40)
    Z = S.random_basis(rng, 6, 40)
    share = float(((D @ Z.T) ** 2).sum() / (D ** 2).sum())
    for target in (share, 1e-3, 0.5):
        B = matched_basis(D, 6, target, np.random.default_rng(1))
        np.testing.assert_allclose(B @ B.T, np.eye(6), atol=1e-9)
        assert ((D @ B.T) ** 2).sum() / (D ** 2).sum() == pytest.approx(target, rel=2e-3)
    B1, B2 = (matched_basis(D, 6, share, np.random.default_rng(s)) for s in (1, 2))
    assert S.subspace_similarity(B1, B2) < 0.9  # different draws, not one fixed subspace
    with pytest.raises(MlxInterpError, match="outside the reachable"):
        matched_basis(D, 6, 1.5, rng)


def test_row_patch_applies_during_generation(tiny_hooked):
    """generate_batch fills the cache with all but the last prompt token, then runs that token alone: the patch
    must land on every prompt position after BOS whatever the split (captured after the tap), and not on BOS."""
    from mlxinterp.core import taps as T
    from mlxinterp.core.hooks import ActivationCache
    from mlxinterp.studies.subspace_patching import _row_patch

    hm = tiny_hooked("llama", None)
    text = "The Eiffel Tower is located in the city of"
    name = "blocks.1.hook_resid_pre"
    _, cache = hm.run_with_cache(text, names=[name])
    h = np.array(cache[name][0], np.float64)
    Tn, d = h.shape
    other = np.random.default_rng(0).normal(size=(2, Tn, d)) * h.std()
    tap = T.Fn(_row_patch(np.zeros(2), np.zeros(2), np.zeros((2, 1, d)), other.astype(np.float32), Tn),
               positions=list(range(1, Tn)), when="prompt")
    store = ActivationCache(hm)
    hm.generate_batch([text] * 2, max_tokens=2, taps=[(name, tap), (name, T.Capture(store=store))])
    got = np.array(store[name], np.float64)  # [2, Tn + 1 generated, d]
    np.testing.assert_allclose(got[:, 1:Tn], other[:, 1:], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(got[:, 0], np.stack([h[0]] * 2), rtol=1e-3, atol=1e-3)


def test_subspace_patching_end_to_end_recomputes_from_items(tiny_hooked, tmp_path):
    hm = tiny_hooked("gemma3_text", None)
    res = _run_tiny(hm, tmp_path, "subspace_patching", ["subspace_patching.ks=[4,8]", "subspace_patching.max_tokens=3"])
    r = res["result"]
    items, main = r["items"], "L{layer} k={k} {align}".format(**r["primary"])
    assert len(items) == 4 and r["design"]["report_ids"] == [i["id"] for i in items]
    z = np.array([i["rows"][f"Z {main}"]["answer_change"] for i in items], float)
    ci = r["stats"][f"Z {main}"]["answer_change"]
    assert ci["method"] == "Wilson" and ci["k"] == int(z.sum())
    assert (ci["low"], ci["high"]) == pytest.approx(_wilson(int(z.sum()), len(z)))
    assert ci["high"] > ci["low"]  # never 0 [0, 0]
    lc = r["stats"][f"Z {main}"]["language_changed"]
    assert lc["high"] > 0 and lc["n"] == 4
    rr = np.array([np.mean([float(v["answer_change"]) for n, v in i["rows"].items() if n.startswith(f"R {main} #")])
                   for i in items])
    assert r["controls"]["Z_minus_R"]["answer_change"]["estimate"] == pytest.approx(float(np.mean(z - rr)))
    zs = [i["rows"][f"Z {main}"]["energy_share"] for i in items]
    assert r["energy"]["Z"]["share"]["estimate"] == pytest.approx(np.mean(zs))
    k = r["primary"]["k"]
    assert r["energy"]["Z"]["ratio_to_chance"]["estimate"] == pytest.approx(np.mean(zs) / (k / hm.info.d_model))
    for i in items:  # energy-matched draws hold Z's share on that pair; their complements the rest
        for n, v in i["rows"].items():
            if n.startswith(f"R {main} #"):
                assert v["energy_share"] == pytest.approx(i["rows"][f"Z {main}"]["energy_share"], rel=2e-3)
            if n.startswith(f"Rperp {main} #"):
                assert v["energy_share"] == pytest.approx(i["rows"][f"Zperp {main}"]["energy_share"], rel=2e-3, abs=1e-6)
    assert set(r["prereg"]["checks"]) == {"z_beats_zperp", "z_beats_energy_matched"}


@pytest.mark.parametrize("n,k", [(48, 20), (48, 50), (12, 4), (10, 9)])
def test_closed_form_loo_equals_refitting_lstsq_per_row(n, k):
    """Both regimes of the closed form (least squares for k < n - 1, minimum-norm interpolation for k >= n)
    and the fallback (k = n - 1) give lstsq's own leave-one-out predictions."""
    from mlxinterp.studies import linear_bridge as study

    rng = np.random.default_rng(n + k)
    E = rng.normal(size=(n, k))
    C = E @ rng.normal(size=(k, k)) + rng.normal(size=(n, k))
    np.testing.assert_allclose(study.loo_predictions(E, C), study._loo_by_refitting(E, C), atol=1e-8)


def test_linear_bridge_end_to_end_recomputes_from_items(tiny_hooked, tmp_path):
    hm = tiny_hooked("gemma3_text", None)
    r = _run_tiny(hm, tmp_path, "linear_bridge")["result"]
    k = 4
    rec = r["items"][f"k={k}"]
    loo = 1 - sum(p["sse"] for p in rec) / sum(p["dev2"] for p in rec)
    assert r["fits"][f"Z k={k}"]["loo_r2"] == pytest.approx(loo, rel=1e-6)
    rand = r["random"][f"k={k}"]
    vals = np.array(rand["loo_r2"])
    assert len(vals) == rand["draws"] >= 100
    assert rand["rank_p"] == pytest.approx((1 + (vals >= loo).sum()) / (len(vals) + 1))
    diff = r["z_minus_random"][f"k={k}"]
    assert diff["estimate"] == pytest.approx(loo - vals.mean(), rel=1e-6, abs=1e-9)
    assert diff["low"] <= diff["estimate"] <= diff["high"] and diff["n"] == len(rec)


def test_update_decomposition_end_to_end_recomputes_from_items(tiny_hooked, tmp_path):
    from scipy import stats as st

    hm = tiny_hooked("gemma3_text", None)
    r = _run_tiny(hm, tmp_path, "update_decomposition")["result"]
    R = np.array([(np.array(i["en"]["R"]) + np.array(i["zh"]["R"])) / 2 for i in r["items"]])
    L = R.shape[1]
    for l in range(L):
        c = r["curves"]["both"]["R"][l]
        assert c["estimate"] == pytest.approx(R[:, l].mean()) and "Bonferroni" in c["method"]
    assert r["summary"]["r_max_family_low"] == pytest.approx(max(c["low"] for c in r["curves"]["both"]["R"]), abs=1e-4)
    diff = np.array([np.array(i["zh"]["R"]) - np.array(i["en"]["R"]) for i in r["items"]])
    p = np.array([st.ttest_1samp(diff[:, l], 0).pvalue for l in range(L)])
    order = np.argsort(p)
    holm = np.minimum(1, np.maximum.accumulate((L - np.arange(L)) * p[order]))
    expect = np.empty(L)
    expect[order] = holm
    np.testing.assert_allclose(r["R_zh_minus_en_p_holm"], expect, rtol=1e-9)


def test_subspace_structure_end_to_end_recomputes_from_items(tiny_hooked, tmp_path):
    hm = tiny_hooked("gemma3_text", None)
    r = _run_tiny(hm, tmp_path, "subspace_structure", ["subspace_structure.ks=[4,8]"])["result"]
    d, k = hm.info.d_model, 8
    for rec in r["layers"]:
        v = np.array(rec["per_pair"]["mlp_same"][str(k)])
        e = rec["mlp_same_energy"][str(k)]
        assert e["share"]["estimate"] == pytest.approx(v.mean())
        assert e["ratio_to_chance"]["estimate"] == pytest.approx(v.mean() / (k / d))
        assert rec["random_mlp_share"]["draws"] >= 100
        assert 0 < rec["random_mlp_share"]["p2_5"] <= k / d * 1.5  # random k-subspaces hold about k/d
    prim = r["layers"][r["primary_layer"]]
    assert r["summary"]["mlp_energy_ratio_primary"]["estimate"] == pytest.approx(
        np.mean(prim["per_pair"]["mlp_same"][str(k)]) / (k / d))


def _linear_bridge_data(n=40, k=5, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    E = rng.normal(size=(n, k))
    return E, E @ rng.normal(size=(k, k)) + noise * rng.normal(size=(n, k)), rng.normal(size=(n, k)), rng.normal(size=(n, k))


@pytest.mark.parametrize("method", ["heldout", "refit"])
def test_bridge_loo_ci_is_high_and_tight_when_a_linear_map_exists(method):
    from mlxinterp.studies import linear_bridge as study

    E, C, E_null, C_null = _linear_bridge_data()
    ci = study.bridge_loo_cis(E, C, E_null, C_null, method=method, n_resamples=100)
    z, null, diff = ci["Z"], ci["random"], ci["Z - random"]
    assert z["estimate"] == pytest.approx(study.loo_r2(E, C)) and z["estimate"] > 0.99
    assert z["low"] > 0.98 and z["high"] - z["low"] < 0.02
    assert null["high"] < 0.2  # unrelated clouds: no held-out predictive power
    assert diff["low"] > 0.8
    if method == "heldout":  # refit resamples have fewer distinct pairs, so only the primary CI must bracket the estimate
        for c in (z, null, diff):
            assert c["low"] <= c["estimate"] <= c["high"]


def test_grouped_loo_holds_out_every_copy_of_a_pair_and_bad_method_is_refused():
    from mlxinterp.studies import linear_bridge as study

    rng = np.random.default_rng(1)
    E, C = rng.normal(size=(12, 3)), rng.normal(size=(12, 3))  # no linear relation at all
    idx = np.repeat(np.arange(12), 2)
    leaky = study.loo_r2(E[idx], C[idx])  # a duplicate stays in the training set
    grouped = study.loo_r2(E[idx], C[idx], groups=idx)
    assert grouped == pytest.approx(study.loo_r2(E, C))  # equal to plain LOO on the distinct pairs
    assert leaky > grouped + 0.1
    with pytest.raises(MlxInterpError, match="bootstrap|allowed"):
        study.bridge_loo_cis(E, C, E, C, method="jackknife")
    with pytest.raises(MlxInterpError, match="same pairs"):
        study.bridge_loo_cis(E, C, E[:5], C[:5])


def test_activation_memo_lives_exactly_as_long_as_its_model(tiny_dirs):
    """The shared activations and Z bases are memoised per model object and freed with it."""
    import gc

    from mlxinterp.core.hooks import load
    from mlxinterp.tasks import language_pairs as LP

    hm = load(str(tiny_dirs[("llama", None)]))
    text = LP.prompt(LP.load_pairs(2)[0], "en")
    first = LP.activations(hm, text)
    assert LP.activations(hm, text) is first  # computed once per loaded model
    np.testing.assert_array_equal(LP.z_basis(hm, 1, 4), LP.z_basis(hm, 1, 8)[:4])
    assert set(LP.memo(hm)) == {("activations", text), ("gram", 1, tuple(S.KERNEL_PARTS)),
                                ("z_basis", 1, tuple(S.KERNEL_PARTS))}
    before = len(LP._MEMO)
    del hm
    gc.collect()
    assert len(LP._MEMO) == before - 1  # nothing computed from the freed model stays alive

"""Neuron and head studies (attribution, connectome, component share, layer ablation and probe, steering sweep):
their core computations on tiny models, and each experiment end to end through the suite."""
from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from mlxinterp.analysis import neurons
from mlxinterp.core import taps as T

PROMPT = "The capital of France is Paris and the capital of Italy is"


def _logit(hm, ids, target, taps):
    with hm.hooks(taps):
        return float(hm(mx.array([ids]))[0, -1, target].item())


@pytest.mark.parametrize("arch", ["gemma3_text", "qwen3", "llama"])
def test_attribution_matches_finite_differences(tiny_hooked, arch):
    """grad x act of a neuron = d logit / d(scale of that neuron); grad . emb of a token likewise."""
    hm = tiny_hooked(arch, None)
    r = neurons.attribute(hm, PROMPT)
    ids, tgt, eps = r["token_ids"], r["target"], 1e-3
    l, j = np.unravel_index(np.abs(r["neurons"]).argmax(), r["neurons"].shape)

    def neuron_scale(e):
        m = np.ones(hm.hook_shape("blocks.0.mlp.hook_post"), np.float32)
        m[j] += e
        return {f"blocks.{l}.mlp.hook_post": T.Fn(fn=lambda a, ctx: a * mx.array(m))}

    fd = (_logit(hm, ids, tgt, neuron_scale(eps)) - _logit(hm, ids, tgt, neuron_scale(-eps))) / (2 * eps)
    assert r["neurons"][l, j] == pytest.approx(fd, rel=0.02, abs=1e-3)
    i = 2

    def token_scale(e):
        def f(a, ctx):
            m = np.ones((1, a.shape[1], 1), np.float32)
            m[0, i] += e
            return a * mx.array(m)
        return {"hook_embed": T.Fn(fn=f)}

    fdt = (_logit(hm, ids, tgt, token_scale(eps)) - _logit(hm, ids, tgt, token_scale(-eps))) / (2 * eps)
    assert r["tokens"][i] == pytest.approx(fdt, rel=0.02, abs=1e-3)


def test_ablate_neurons_effect_matches_single_forwards(tiny_hooked):
    hm = tiny_hooked("gemma3_text", None)
    ids = hm.tokens(PROMPT).ids[0].tolist()
    tgt = 5
    cells = [(0, 3), (2, 7)]
    got = neurons.ablate_neurons_effect(hm, PROMPT, tgt, cells)
    clean = _logit(hm, ids, tgt, {})
    for k, (l, j) in enumerate(cells):
        m = np.ones(hm.hook_shape("blocks.0.mlp.hook_post"), np.float32)
        m[j] = 0
        want = _logit(hm, ids, tgt, {f"blocks.{l}.mlp.hook_post": T.Fn(fn=lambda a, ctx, m=m: a * mx.array(m))}) - clean
        assert got[k] == pytest.approx(want, abs=1e-4)


def test_pooled_skips_bos_and_padding(tiny_hooked):
    hm = tiny_hooked("gemma3_text", None)
    prompts = ["Paris is nice", "The capital of France is Paris and"]
    got = neurons.pooled(hm, prompts, "mlp.hook_post", layers=[1])
    for b, p in enumerate(prompts):
        _, cache = hm.run_with_cache(p, names=["blocks.1.mlp.hook_post"])
        a = np.array(cache["blocks.1.mlp.hook_post"][0, 1:])  # BOS excluded
        np.testing.assert_allclose(got[b, 0], a.mean(0), atol=1e-4)


def test_welch_finds_a_planted_neuron():
    rng = np.random.default_rng(0)
    base, cat = rng.normal(size=(30, 50)), rng.normal(size=(30, 50))
    cat[:, 7] += 3.0
    t, p = neurons.welch(cat, base)
    assert np.argmax(np.abs(t)) == 7 and p[7] < 0.05 / 50
    assert (p[np.arange(50) != 7] > 0.05 / 50).all()
    const = np.zeros((5, 3))
    t0, p0 = neurons.welch(const, const)
    assert np.all(t0 == 0) and np.all(p0 == 1)


def test_k_for_and_explained_variance():
    x = np.diag([3.0, 2.0, 1.0, 0.0])
    r = neurons.explained_variance(x)
    assert r.sum() == pytest.approx(1.0)
    assert neurons.k_for(r, 0.6) == 1 and neurons.k_for(r, 0.9) == 2 and neurons.k_for(r, 1.0) == 3


def test_component_share_is_the_norm_ratio(tiny_hooked):
    from mlxinterp.studies.component_share import _prompt_stats

    hm = tiny_hooked("qwen3", None)
    s = _prompt_stats(hm, PROMPT)
    _, cache = hm.run_with_cache(PROMPT, names=["blocks.2.hook_attn_out", "blocks.2.hook_mlp_out"])
    a = np.linalg.norm(np.array(cache["blocks.2.hook_attn_out"][0]), axis=-1)
    m = np.linalg.norm(np.array(cache["blocks.2.hook_mlp_out"][0]), axis=-1)
    assert s["share"][2] == pytest.approx(float(np.mean(m / (a + m))), rel=1e-4)  # qwen3: no BOS to skip
    assert len(s["head_scores"]["bos_sink"][0]) == hm.info.n_heads


def test_ablation_score_matches_full_forward(tiny_hooked):
    from mlxinterp.studies.layer_ablation import _score

    hm = tiny_hooked("llama", None)
    rows = [hm.tokens(p).ids[0].tolist() + [5, 6, 7] for p in ("Paris is", "The capital of France is Paris")]
    plen = [len(r) - 3 for r in rows]
    lp, last = _score(hm, rows, plen, {})
    for b, row in enumerate(rows):
        logits = np.array(hm(mx.array([row]))[0].astype(mx.float32))
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
        want = np.mean([logp[plen[b] - 1 + k, row[plen[b] + k]] for k in range(3)])
        assert lp[b] == pytest.approx(want, abs=1e-4)
        np.testing.assert_allclose(last[b], logits[plen[b] - 1], atol=1e-4)
    abl = {f"blocks.1.{h}": T.Ablate("zero") for h in ("hook_attn_out", "hook_mlp_out")}
    lp2, last2 = _score(hm, rows, plen, abl)
    assert not np.allclose(last2, last)


def test_profile_weights_and_markers():
    from mlxinterp.studies.steering_sweep import markers, profile_weights

    for kind in ("static", "flat", "donut", "gaussian", "bell", "svd_k3"):
        w = profile_weights(kind, 12, 4)
        assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    assert profile_weights("static", 12, 4)[4] == 1.0
    w = profile_weights("connectome", 4, 0, sep=[-1.0, 1.0, 3.0, 0.0])
    np.testing.assert_allclose(w, [0, 0.25, 0.75, 0])
    with pytest.raises(ValueError, match="no positive weight"):
        profile_weights("ablation", 3, 0, abl=[0, 0, 0])
    assert markers("Why? What do you think? Therefore.", [r"\?", r"\btherefore\b"]) == 3


def test_answer_layer_and_temperature():
    from mlxinterp.studies.layer_probe import _answer_layer, _temp_stats

    assert _answer_layer([5, 0, 3, 0, 0]) == 3
    assert _answer_layer([0, 0, 0]) == 0
    assert _answer_layer([0, 0, 1]) is None
    lg = np.array([2.0, 1.0, 0.0])
    cold, hot = _temp_stats(lg, 0, 0.1), _temp_stats(lg, 0, 10.0)
    assert cold["answer_prob"] > 0.99 and hot["answer_prob"] < 0.4 and hot["entropy"] > cold["entropy"]


EXPERIMENTS = ("connectome", "component_share", "attribution", "layer_ablation", "layer_probe")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_end_to_end_on_a_tiny_model(tiny_hooked, tmp_path, name):
    from rich.console import Console

    from mlxinterp.suite import run_all

    hm = tiny_hooked("gemma3_text", None)
    run_all(["tiny"], only=name, out=tmp_path, n=2, load_fn=lambda spec: hm,
            console=Console(file=open("/dev/null", "w")))
    res = json.loads((tmp_path / hm.info.slug / name / "result.json").read_text())
    assert res["status"] == "complete" and res["result"]["summary"]
    assert res["figures"] and (tmp_path / hm.info.slug / name / res["figures"][0]).exists()


def test_connectome_sd_floor_stops_one_constant_neuron_owning_the_svd():
    """A neuron constant on the baseline must not get a z of 1e6 (BUGFIX: music k80 = 1)."""
    from mlxinterp.studies.connectome import _floored_sd

    rng = np.random.default_rng(0)
    base = rng.normal(size=(20, 2, 50))
    base[:, 1, 7] = 0.3  # constant neuron
    sd = _floored_sd(base, 0.1)
    med = np.median(base.std(0, ddof=1), axis=-1)
    assert sd[1, 7] >= 0.1 * med[1] and np.allclose(sd[0], np.maximum(base[:, 0].std(0, ddof=1), 0.1 * med[0] + 1e-6))
    acts = rng.normal(size=(20, 2, 50))
    acts[:, 1, 7] = 0.3 + rng.normal(scale=1e-3, size=20)
    z = ((acts - base.mean(0)) / sd).reshape(20, -1)
    _, s, _ = np.linalg.svd(z - z.mean(0), full_matrices=False)
    assert s[0] ** 2 / (s ** 2).sum() < 0.5  # no single direction dominates


def test_logits_processor_bias_lives_on_the_head_of_the_distribution():
    """The baseline biases tokens the model could emit, not the far tail (BUGFIX: baseline moved nothing)."""
    from mlxinterp.studies.steering_sweep import _logit_bias

    V = 1000
    lp = np.full((2, V), -30.0, np.float32)
    ln = lp.copy()
    lp[:, :5], ln[:, :5] = [5, 4, 3, 2, 1], [1, 2, 3, 4, 5]  # head: the two sides rank 5 tokens differently
    lp[:, 900], ln[:, 900] = -10.0, -30.0  # a 20-nat difference far in the tail
    bias = _logit_bias(mx.array(lp), mx.array(ln), top=5)
    assert bias[900] == 0 and np.count_nonzero(bias) == 5
    assert bias[0] == pytest.approx(4.0, abs=1e-4) and bias[4] == pytest.approx(-4.0, abs=1e-4)


# ---- steering_sweep and layer_probe: their core computations checked against independent measurements


def _last_resid(hm, prompts: list[str], layers: list[int], taps=None) -> dict[int, np.ndarray]:
    """Last-token hook_resid_post [N, d] per layer, as captured after any taps at that point."""
    names = [f"blocks.{l}.hook_resid_post" for l in layers]
    _, cache = hm.run_with_cache(prompts, names=names, taps=taps)
    return {l: np.array(cache[n][:, -1].astype(mx.float32), np.float64) for l, n in zip(layers, names)}


def _style_setup(hm, style: str = "formal"):
    from mlxinterp.studies.steering_sweep import SteeringSweepConfig, _fit_style, style_data

    sd, cfg = style_data(), SteeringSweepConfig()
    qs = sd["questions"][:4]
    st = sd["styles"][style]
    prompts = [sd["template"].format(instruction=st[k], question=q) for k in ("positive", "negative") for q in qs]
    return cfg, _fit_style(hm, sd, style, qs, cfg, 1, ablation=True), prompts


def _steer_env(hm, fit, cfg, prompts, style: str = "formal") -> dict:
    """The experiment's environment with the reference norm R_l measured on `prompts` (so % is of their residual)."""
    from mlxinterp.studies.steering_sweep import _random_dirs

    nl = hm.info.n_layers
    clean = _last_resid(hm, prompts, list(range(nl)))
    R = np.array([np.linalg.norm(clean[l], axis=-1).mean() for l in range(nl)])
    return {"fit": {style: fit}, "R": R, "random": _random_dirs(np.random.default_rng(0), nl, hm.info.d_model),
            "nl": nl, "static_layer": 1, "cfg": cfg}


def _plan_taps(env, cond) -> dict:
    from mlxinterp.studies.steering_sweep import steering_plan

    vecs, bias = steering_plan(env, {"style": "formal", "sign": 1, **cond})
    assert bias is None
    return {f"blocks.{l}.hook_resid_post": T.Add(v, 1.0) for l, v in vecs.items()}


@pytest.mark.parametrize("arch", ["gemma3_text", "qwen3", "llama"])
def test_static_steering_adds_the_requested_percent_of_the_residual_norm(tiny_hooked, arch):
    """Static ActAdd at pct % : ||steered - clean|| / mean ||clean|| = pct / 100 at the steered layer, nothing before it."""
    hm = tiny_hooked(arch, None)
    cfg, fit, prompts = _style_setup(hm)
    env = _steer_env(hm, fit, cfg, prompts)
    layer = hm.info.n_layers // 2
    for pct in (4.0, 24.0):
        taps = _plan_taps(env, {"family": "static", "pct": pct, "layer": layer})
        assert list(taps) == [f"blocks.{layer}.hook_resid_post"]
        clean = _last_resid(hm, prompts, [layer - 1, layer])
        steered = _last_resid(hm, prompts, [layer - 1, layer], taps)
        np.testing.assert_allclose(steered[layer - 1], clean[layer - 1], atol=1e-5)  # upstream untouched
        delta = np.linalg.norm(steered[layer] - clean[layer], axis=-1)
        ratio = delta / np.linalg.norm(clean[layer], axis=-1).mean()
        np.testing.assert_allclose(ratio, pct / 100, rtol=2e-3)
        # and the direction added is the style direction of that layer
        d = (steered[layer] - clean[layer])[0]
        v = fit["vectors"][layer]
        assert d @ v / (np.linalg.norm(d) * np.linalg.norm(v)) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("family", ["flat", "donut", "gaussian", "bell", "connectome", "ablation"])
def test_multi_layer_profile_spends_exactly_the_budget(tiny_hooked, family):
    """Per steered layer, the measured ||added|| / mean ||clean resid|| follows the profile and sums to pct / 100."""
    from mlxinterp.core.hooks import ActivationCache
    from mlxinterp.studies.steering_sweep import profile_weights

    hm = tiny_hooked("gemma3_text", None)
    cfg, fit, prompts = _style_setup(hm)
    env = _steer_env(hm, fit, cfg, prompts)
    nl, pct = hm.info.n_layers, 8.0
    taps = _plan_taps(env, {"family": family, "pct": pct, "layer": 1})
    pre, post = ActivationCache(hm), ActivationCache(hm)
    pairs = []
    for name, add in taps.items():  # capture right before and right after each Add: the difference is what it added
        pairs += [(name, T.Capture(store=pre)), (name, add), (name, T.Capture(store=post))]
    with hm.hooks(pairs):
        mx.eval(hm(prompts))
    clean = _last_resid(hm, prompts, list(range(nl)))
    share = np.zeros(nl)
    for name in taps:
        l = int(name.split(".")[1])
        added = np.linalg.norm(np.array(post[name][:, -1] - pre[name][:, -1], np.float64), axis=-1)
        ref = np.linalg.norm(clean[l], axis=-1).mean()
        share[l] = added.mean() / ref
        np.testing.assert_allclose(added, added.mean(), rtol=1e-3, atol=1e-6 * ref)  # one vector for every prompt
    assert share.sum() == pytest.approx(pct / 100, rel=2e-3)
    want = profile_weights(family, nl, 1, fit["sep"], fit["ablation_kl"])
    np.testing.assert_allclose(share / share.sum(), want, atol=1e-4)
    assert (share > 0).sum() >= 2


def _np_rms_norm(x: np.ndarray, w: np.ndarray, eps: float, gemma: bool) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * ((1.0 + w) if gemma else w)


def _np_softmax_stats(lg: np.ndarray, ans: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entropy (nats), top-1 id and rank of `ans` per row of logits [n, V]."""
    z = lg - lg.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    ent = -(p * np.log(np.where(p > 0, p, 1))).sum(-1)
    return ent, lg.argmax(-1), (lg > lg[:, ans: ans + 1]).sum(-1)


@pytest.mark.parametrize("arch", ["gemma3_text", "qwen3", "llama"])
def test_layer_probe_lenses_match_numpy_and_the_models_own_logits(tiny_hooked, arch):
    """raw lens = resid @ W_U^T, normed lens = RMSNorm(resid) @ W_U^T (numpy, from the weights); last normed = logits."""
    from mlx.utils import tree_flatten

    from mlxinterp.core.archs import text_model
    from mlxinterp.analysis.lens import target_id
    from mlxinterp.studies.layer_probe import TEMPLATES, LayerProbeConfig, _probe

    hm = tiny_hooked(arch, None)
    cfg = LayerProbeConfig(temperatures=(1.0,), raw_templates=(1,))
    it = {"country": "France", "capital": "Paris", "template": 1}
    got = _probe(hm, it, cfg)
    prompt, ans, nl = TEMPLATES[1].format(x="France"), target_id(hm, " Paris"), hm.info.n_layers
    params = {k: np.array(v.astype(mx.float32), np.float64) for k, v in tree_flatten(hm.model.parameters())}
    wu = params.get("lm_head.weight", params["model.embed_tokens.weight"])
    resid = np.stack(list(_last_resid(hm, [prompt], list(range(nl))).values()))[:, 0]  # [nl, d]
    lenses = {"raw": resid @ wu.T,
              "normed": _np_rms_norm(resid, params["model.norm.weight"], text_model(hm.model).norm.eps,
                                     arch.startswith("gemma")) @ wu.T}
    for mode, lg in lenses.items():
        ent, top1, rank = _np_softmax_stats(lg, ans)
        np.testing.assert_allclose(got[mode]["entropy"], ent, atol=1e-4, err_msg=mode)
        assert got[mode]["top1"] == top1.tolist() and got[mode]["rank"] == rank.tolist(), mode
    assert not np.allclose(lenses["raw"], lenses["normed"], atol=1e-3)  # the two modes really differ
    model_logits = np.array(hm(prompt)[0, -1].astype(mx.float32), np.float64)
    np.testing.assert_allclose(lenses["normed"][-1], model_logits, atol=1e-4)
    z = np.exp(model_logits - model_logits.max())
    assert got["final"]["1.0"]["answer_prob"] == pytest.approx(z[ans] / z.sum(), abs=1e-5)


def test_strength_choice_skips_collapsed_rows_and_uses_only_the_selection_records():
    """The best strength is the largest selection-split gain among non-collapsed rows."""
    from mlxinterp.studies.steering_sweep import SteeringSweepConfig, _choose

    cfg = SteeringSweepConfig(styles=("terse",), static_pcts=(4.0, 8.0, 24.0), layer_sweep_n=1)

    def rec(family, pct, layer, gain, fluency=-2.0, distinct=0.9):
        return {"family": family, "pct": pct, "layer": layer, "distinct": [distinct] * 3,
                "scores": {"terse": {"style_lp": [gain] * 3, "fluency": [fluency] * 3}}}

    sel = [rec("none", 0.0, None, 0.0), rec("static", 4.0, 7, 0.2), rec("static", 8.0, 7, 0.5),
           rec("static", 24.0, 7, 3.0, fluency=-5.0), rec("static", 8.0, 0, 0.9)]
    got = _choose(sel, cfg, 7)
    assert got["strength"]["pct"] == 8.0  # 24 % gains most but collapses (fluency drop 3 > 2 nats)
    assert got["layer"]["layer"] == 0


def test_svd_k3_is_not_the_mean_direction_any_more():
    """Differences sharing a large offset: the uncentred SVD returns the mean (the old svd_k3 = static);
    the centred one projects the mean onto the variation's top-3 directions."""
    from mlxinterp.studies.steering_sweep import svd_k_direction

    rng = np.random.default_rng(0)
    d = 64
    offset = rng.normal(size=d) * 5
    modes = np.linalg.qr(rng.normal(size=(d, 3)))[0].T  # 3 orthonormal directions of variation
    diffs = offset + rng.normal(size=(40, 3)) * 3 @ modes + rng.normal(size=(40, d)) * 0.05
    mean = diffs.mean(0)
    _, _, vt = np.linalg.svd(diffs, full_matrices=False)  # the old, uncentred projection
    old = vt[:3].T @ (vt[:3] @ mean)
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    assert cos(old, mean) > 0.999
    new = svd_k_direction(diffs, 3)
    want = modes.T @ (modes @ mean)  # the mean's component in the variation subspace
    assert cos(new, want) > 0.99 and cos(new, mean) < 0.9


def test_kernels_and_random_control_have_the_static_norm(tiny_hooked):
    """Every steering vector at one strength adds the same norm at the layer: style, random, svd_k3, kernels."""
    from mlxinterp.studies.steering_sweep import kernel_weights, steering_plan

    hm = tiny_hooked("gemma3_text", None)
    cfg, fit, prompts = _style_setup(hm)
    env = _steer_env(hm, fit, cfg, prompts)
    norms = {}
    for fam in ("static", "random", "svd_k3", "kernel_linear", "kernel_quadratic", "kernel_sigmoid"):
        vecs, _ = steering_plan(env, {"style": "formal", "family": fam, "pct": 8.0, "layer": 1, "sign": 1})
        assert list(vecs) == [1]
        norms[fam] = float(np.linalg.norm(vecs[1]))
    np.testing.assert_allclose(list(norms.values()), 0.08 * env["R"][1], rtol=1e-5)
    z = np.array([-3.0, 0.5, 2.0])
    np.testing.assert_allclose(kernel_weights("quadratic", z), [9.0, 0.25, 4.0])
    assert kernel_weights("sigmoid", z)[2] == pytest.approx(0.5)


def test_steering_sweep_end_to_end_numbers_match_the_records(tiny_hooked, tmp_path):
    """Quick profile on a tiny model; the primary interval and a bleed difference recomputed from the records."""
    from rich.console import Console
    from scipy import stats as sps

    from mlxinterp.suite import run_all

    hm = tiny_hooked("gemma3_text", None)
    run_all(["tiny"], only="steering_sweep", out=tmp_path, load_fn=lambda spec: hm, quick=True,
            console=Console(file=open("/dev/null", "w")))
    res = json.loads((tmp_path / hm.info.slug / "steering_sweep" / "result.json").read_text())["result"]
    rec = {r["id"]: r for r in res["report_records"]}
    lp = lambda fam: np.array(next(r for r in rec.values() if r["family"] == fam and r["style"] == "terse"  # noqa: E731
                                   and r["pct"] == 8.0 and r["sign"] == 1)["scores"]["terse"]["style_lp"])
    d = lp("static") - lp("random")
    n = d.size
    assert n == 4 and res["n_report"] == 4
    got = res["analysis"]["static_minus_random"]["terse"]
    half = sps.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n)  # n < 20: the policy's t-interval
    assert got["estimate"] == pytest.approx(d.mean(), abs=1e-9) and got["n"] == n
    assert got["low"] == pytest.approx(d.mean() - half, rel=1e-6) and got["high"] == pytest.approx(d.mean() + half, rel=1e-6)
    # the selection and report splits are disjoint and the chosen strength came from the selection records
    sp = res["splits"]
    assert not set(sp["selection"]["question_ids"]) & set(sp["report"]["question_ids"])
    assert res["choice"]["strength"]["pct"] in (8.0, 24.0, None)
    # bleed: a condition's lens difference is its per-topic rates minus the baseline's
    rows = res["bleed"]["conditions"]
    base, other = rows[0], rows[1]
    lens = res["bleed"]["lenses"][0]
    diff = np.array(other["rates_per_topic"][lens]) - np.array(base["rates_per_topic"][lens])
    assert other["minus_baseline"][lens]["estimate"] == pytest.approx(diff.mean(), abs=1e-3)
    assert res["prereg"]["checks"]["static_beats_random_terse"]["verdict"] in ("PASS", "FAIL")


def _run_quick(tiny_hooked, tmp_path, name: str) -> tuple:
    from rich.console import Console

    from mlxinterp.suite import run_all

    hm = tiny_hooked("gemma3_text", None)
    run_all(["tiny"], only=name, out=tmp_path, load_fn=lambda spec: hm, quick=True,
            console=Console(file=open("/dev/null", "w")))
    d = tmp_path / hm.info.slug / name
    res = json.loads((d / "result.json").read_text())
    assert res["status"] == "complete" and res["figures"] and (d / res["figures"][0]).exists()
    return hm, res["result"], d


def test_connectome_t_map_and_intervals_match_an_independent_computation(tiny_hooked, tmp_path):
    """A saved t equals scipy's Welch t from the pooled activations; the clustered displacement's
    estimate is the mean of the per-prompt records and counts every prompt and category."""
    from scipy import stats as sps

    from mlxinterp.tasks import categories

    hm, res, d = _run_quick(tiny_hooked, tmp_path, "connectome")
    n = res["n_prompts"]
    maps = np.load(d / "t_maps.npz")
    cat = str(maps["categories"][0])
    t = maps["t"][0]
    l, j = np.unravel_index(np.abs(t).argmax(), t.shape)
    acts = neurons.pooled(hm, categories.categories(n)[cat], "mlp.hook_post", layers=[int(l)])[:, 0, j]
    base = neurons.pooled(hm, categories.baseline(n), "mlp.hook_post", layers=[int(l)])[:, 0, j]
    want = sps.ttest_ind(acts, base, equal_var=False).statistic
    assert t[l, j] == pytest.approx(want, rel=1e-3)
    disp = res["displacement"]
    vals = np.concatenate(list(disp["per_prompt"].values()))
    assert disp["all"]["estimate"] == pytest.approx(vals.mean(), abs=1e-4)
    assert disp["all"]["n"] == vals.size == n * len(res["categories"]) and disp["all"]["n_clusters"] == len(res["categories"])
    assert disp["all"]["low"] < disp["all"]["estimate"] < disp["all"]["high"]


def test_component_share_intervals_match_the_per_prompt_records(tiny_hooked, tmp_path):
    """Per category: the policy's t-interval (n < 20) recomputed with scipy from the records; pooled: the
    clustered estimate is the mean of every prompt's share and counts prompts and categories."""
    from scipy import stats as sps

    _, res, _ = _run_quick(tiny_hooked, tmp_path, "component_share")
    recs = res["mlp_share_per_prompt"]
    cat = sorted(recs)[0]
    x = np.array(recs[cat])
    half = sps.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    got = res["mlp_share_by_category"][cat]
    assert got["estimate"] == pytest.approx(x.mean(), abs=1e-5)
    assert got["low"] == pytest.approx(x.mean() - half, abs=1e-4) and got["high"] == pytest.approx(x.mean() + half, abs=1e-4)
    allv = np.concatenate([recs[c] for c in recs])
    pooled = res["mlp_share_all"]
    assert pooled["estimate"] == pytest.approx(allv.mean(), abs=1e-5) and pooled["n_clusters"] == len(recs)
    assert len(res["mlp_share_by_layer_all"]) == len(next(iter(res["mlp_share_by_layer"].values())))


def test_layer_ablation_records_match_a_hand_ablation_and_the_report_interval(tiny_hooked, tmp_path):
    """One prompt's recorded KL equals a zero ablation done by hand (numpy KL of two forwards); the chosen
    layer is the selection half's argmax and its interval's estimate the report half's mean."""
    from mlxinterp.tasks import categories

    hm, res, _ = _run_quick(tiny_hooked, tmp_path, "layer_ablation")
    n = res["n_prompts"]
    prompts = [p for ps in categories.categories(n).values() for p in ps]
    sp = res["splits"]
    assert not set(sp["selection"]) & set(sp["report"]) and len(sp["selection"]) + len(sp["report"]) == len(prompts)
    kl = np.array(res["kl_per_prompt"]["zero"])  # [layer, prompt]
    ch = res["chosen"]["zero"]["most"]
    assert ch["layer"] == int(kl[:, sp["selection"]].mean(1).argmax())
    assert ch["kl"]["estimate"] == pytest.approx(kl[ch["layer"], sp["report"]].mean(), rel=1e-4)
    assert ch["kl"]["n"] == len(sp["report"]) and ch["kl"]["n_clusters"] == len(res["categories"])
    # the recorded KL of prompt 0 at layer 1, by hand: the clean greedy continuation is scored, KL is read at the
    # last prompt token, so the prompt alone gives the same next-token distributions
    ids = hm.tokens(prompts[0]).ids[0].tolist()
    clean = np.array(hm(mx.array([ids]))[0, -1].astype(mx.float32), np.float64)
    abl = {f"blocks.1.{h}": T.Ablate("zero") for h in ("hook_attn_out", "hook_mlp_out")}
    with hm.hooks(abl):
        ablated = np.array(hm(mx.array([ids]))[0, -1].astype(mx.float32), np.float64)
    lp = clean - clean.max() - np.log(np.exp(clean - clean.max()).sum())
    lq = ablated - ablated.max() - np.log(np.exp(ablated - ablated.max()).sum())
    assert kl[1, 0] == pytest.approx(float(np.sum(np.exp(lp) * (lp - lq))), rel=1e-3, abs=1e-6)


def test_attribution_linear_check_is_over_prompts_and_matches_the_records(tiny_hooked, tmp_path):
    """Per check prompt rho recomputed with scipy from its records; the clustered mean over check prompts; the
    p-values come from the category means (one unit per category), never from pooled neurons."""
    from scipy import stats as sps

    _, res, _ = _run_quick(tiny_hooked, tmp_path, "attribution")
    lc = res["linear_check"]
    recs = lc["per_prompt"]
    assert len(recs) == 2 * len(res["layer_bands"])  # quick: 2 check prompts per category
    r0 = recs[0]
    assert r0["spearman"] == pytest.approx(sps.spearmanr(r0["predicted"], r0["actual"]).statistic, abs=1e-9)
    rho = np.array([r["spearman"] for r in recs], dtype=float)
    assert lc["spearman"]["estimate"] == pytest.approx(np.nanmean(rho), abs=1e-9)
    assert lc["spearman"]["n_clusters"] == len(res["layer_bands"])
    cats = sorted({r["category"] for r in recs})
    means = [np.nanmean([r["spearman"] for r in recs if r["category"] == c]) for c in cats]
    assert lc["tests"]["spearman_rho_is_0"] == pytest.approx(sps.ttest_1samp(means, 0.0).pvalue, rel=1e-6)
    assert "p" not in lc  # the old p over pooled neurons is gone


@pytest.mark.parametrize("arch", ["gemma3_text", "llama"])
def test_shared_prefix_scoring_equals_scoring_each_row(tiny_hooked, arch):
    """cont_logprob_shared (prefix KV cache reused across continuations) = cont_logprob (every row from scratch)."""
    from mlxinterp.studies.steering_sweep import cont_logprob, cont_logprob_shared, style_data

    hm = tiny_hooked(arch, None)
    sd = style_data()
    pre = [sd["template"].format(instruction=sd["styles"]["terse"]["positive"], question=q) for q in sd["questions"][:5]]
    rng = np.random.default_rng(0)
    conts = [[rng.integers(5, 200, size=int(rng.integers(1, 7))).tolist() for _ in pre] for _ in range(4)]
    got = cont_logprob_shared(hm, pre, conts, batch_rows=10)  # groups of 2 continuations per forward
    want = np.array([cont_logprob(hm, pre, conts[k]) for k in range(4)])
    np.testing.assert_allclose(got, want, atol=2e-5)

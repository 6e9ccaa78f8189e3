"""Behaviour-under-steering studies: refusal, cross-lingual refusal, function vectors, sycophancy/confidence
(tasks/behaviour.py, tasks/refusal.py, tasks/function_vectors.py) — their logic on tiny models.

The batched per-head AIE must equal a one-head-at-a-time loop; head contributions
must add up to what attention writes into the residual; the FV is the sum of the
top heads; per-language cosines are bookkept per layer; a killed run resumes; and
a fast smoke test on the real default model.
"""
from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from mlxinterp.tasks import behaviour as B
from mlxinterp.analysis import decompose as D, directions, scoring
from mlxinterp import suite
from mlxinterp.tasks import function_vectors as F
from mlxinterp.core import taps as T
from mlxinterp.core.errors import PromptError
from mlxinterp.analysis.patching import forward_last
from mlxinterp.studies import function_vectors as FVS
from mlxinterp.studies import refusal_crosslingual as XL

PAIRS = [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("yes", "no"), ("left", "right"),
         ("wet", "dry"), ("day", "night")]


# ------------------------------------------------------------ function vectors


@pytest.mark.parametrize("arch,bits", [("llama", None), ("gemma3_text", None), ("gemma2", 4)])
def test_aie_batched_equals_one_head_at_a_time(tiny_hooked, arch, bits):
    hm = tiny_hooked(arch, bits)
    sets = F.icl_sets(PAIRS, PAIRS[:2], 3, np.random.default_rng(0))
    acts = F.last_activations(hm, [s.clean for s in sets])
    z_mean = acts["z"].mean(0)
    target = F.answer_token(hm, sets[0].query[1])
    got = F.indirect_effects(hm, sets[0].corrupt, target, z_mean, batch_size=5)
    ids = mx.array([hm.tokens(sets[0].corrupt).ids[0].tolist()])
    prob = lambda taps=None: float(F.prob_metric(target)(forward_last(hm, ids, taps)[:, 0])[0])  # noqa: E731
    p0 = prob()
    assert got["p_corrupt"] == pytest.approx(p0, abs=1e-5)
    want = np.zeros_like(got["effect"])
    for l in range(hm.info.n_layers):
        for h in range(hm.info.n_heads):
            taps = {f"blocks.{l}.attn.hook_z": T.Replace(mx.array(z_mean[l]), positions=-1, heads=[h])}
            want[l, h] = prob(taps) - p0
    assert got["effect"].shape == (hm.info.n_layers, hm.info.n_heads)
    np.testing.assert_allclose(got["effect"], want, atol=2e-5)
    assert np.abs(want).max() > 1e-6  # some head matters: the comparison is not between two zero grids


@pytest.mark.parametrize("arch,bits", [("llama", None), ("qwen2", None), ("gemma2", None), ("gemma3_text", None),
                                       ("gemma3_text", 4)])
def test_head_results_add_up_to_the_attention_output(tiny_hooked, arch, bits):
    """Sum over heads of o_proj(one head) (post-norm scaled on Gemma) == hook_attn_out, at every position."""
    hm = tiny_hooked(arch, bits)
    wanted = (".attn.hook_z", ".attn.hook_out", ".hook_attn_out")
    _, cache = hm.run_with_cache("The Eiffel Tower is located in the city of",
                                 names=lambda n: n.endswith(wanted))
    for l in range(hm.info.n_layers):
        z = np.array(cache[f"blocks.{l}.attn.hook_z"][0].astype(mx.float32))
        raw = np.array(cache[f"blocks.{l}.attn.hook_out"][0].astype(mx.float32))
        out = np.array(cache[f"blocks.{l}.hook_attn_out"][0].astype(mx.float32))
        c = np.array(D.head_results(hm, l, z, raw))
        assert c.shape == (z.shape[0], hm.info.n_heads, hm.info.d_model)
        np.testing.assert_allclose(c.sum(1), out, rtol=2e-3, atol=2e-3 * np.abs(out).max())


def test_top_heads_and_function_vector_are_the_sum_of_the_best_cells():
    aie = np.array([[0.1, -0.2, 0.05], [0.3, 0.0, 0.2]])
    assert F.top_heads(aie, 3) == [(1, 0), (1, 2), (0, 0)]
    contrib = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
    np.testing.assert_array_equal(F.function_vector(contrib, [(1, 0), (0, 2)]), contrib[1, 0] + contrib[0, 2])
    with pytest.raises(PromptError):
        F.function_vector(contrib, [])


def test_icl_sets_keep_the_query_out_and_shuffle_every_label():
    rng = np.random.default_rng(3)
    sets = F.icl_sets(PAIRS, PAIRS[:4], 5, rng)
    for s in sets:
        assert s.query not in s.demos and len(s.demos) == 5
        assert [x for x, _ in s.shuffled] == [x for x, _ in s.demos]
        assert sorted(y for _, y in s.shuffled) == sorted(y for _, y in s.demos)
        assert all(a != b for (_, a), (_, b) in zip(s.shuffled, s.demos))  # a derangement of distinct labels
        assert s.clean.endswith(f"Q: {s.query[0]}\nA:") and s.clean.count("\n\n") == 5
    with pytest.raises(PromptError, match="demonstrations"):
        F.icl_sets(PAIRS, PAIRS[:1], 8, rng)
    with pytest.raises(PromptError, match="not allowed"):
        F.load_task("antonyms")


def test_addition_variants_patch_resid_plus_vector_at_the_last_position():
    resid = np.ones((3, 4))
    variants, labels = F.addition_variants(resid, {"a": np.full(4, 2.0), "b": np.arange(12.0).reshape(3, 4)}, [0, 2])
    assert labels == [("base", -1), ("a", 0), ("a", 2), ("b", 0), ("b", 2)] and variants[0] == []
    p = variants[4][0]
    assert p.hook == "blocks.2.hook_resid_post" and p.position == -1
    np.testing.assert_array_equal(p.value, 1 + np.arange(8.0, 12.0))


def test_answer_margin_is_positive_exactly_for_the_top_token():
    logits = mx.array([[0.0, 3.0, 1.0], [5.0, 3.0, 1.0]])
    m = np.array(F.answer_margin(1)(logits))
    np.testing.assert_allclose(m, [2.0, -2.0])


def test_function_vectors_resume_after_an_interruption(tiny_dirs, tmp_path, monkeypatch):
    model = str(tiny_dirs[("llama", None)])
    real = FVS.aie_task
    calls = []

    def counting(*a, **k):
        calls.append(1)
        if fail and len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(FVS, "aie_task", counting)
    fail = False
    suite.run_all([model], only="function_vectors", out=tmp_path / "ref", quick=True)
    slug = next(p.name for p in (tmp_path / "ref").iterdir() if p.is_dir())
    expected = json.loads((tmp_path / "ref" / slug / "function_vectors" / "result.json").read_text())
    fail, calls[:] = True, []
    with pytest.raises(KeyboardInterrupt):
        suite.run_all([model], only="function_vectors", out=tmp_path / "out", quick=True)
    fail, calls[:] = False, []
    suite.run_all([model], only="function_vectors", out=tmp_path / "out", quick=True)
    assert len(calls) == len(FVS.QUICK["tasks"]) - 1  # the first task finished before the interruption
    got = json.loads((tmp_path / "out" / slug / "function_vectors" / "result.json").read_text())
    assert got["timings"]["maps"]["aie"]["reloaded"] == 1
    got.pop("timings"), expected.pop("timings")
    assert got == expected
    r = got["result"]
    assert np.array(r["aie"]["mean"]).shape == (4, 4) and r["counts"]["heads_patched_per_prompt"] == 16
    assert {"fv_aie_heads.png", "fv_layer_sweep.png", "function_vectors.png"} <= set(got["figures"])
    _check_function_vector_numbers(r)


def _check_function_vector_numbers(r: dict) -> None:
    """Lifts, layer choice, head choice and splits recomputed by hand from the per-item records."""
    tasks, n_layers = r["tasks"], r["n_layers"]
    zs = {t: r["items"][t]["zero_shot"] for t in tasks}
    for v in ("v1", "v2", "v3"):
        lift = lambda recs, l: [float(x["top1"][v][l]) - float(x["base_top1"]) for x in recs]  # noqa: E731
        sel = [np.mean([np.mean(lift(zs[t][0::2], l)) for t in tasks]) for l in range(n_layers)]
        layer = int(np.argmax(sel))  # chosen on the selection (even) queries only
        assert r["chosen_layers"][v]["layer"] == layer == r["headline"][v]["layer"]
        pooled = [d for t in tasks for d in lift(zs[t][1::2], layer)]  # reported on the odd ones
        got = r["headline"][v]["pooled_lift"]
        assert got["n"] == len(pooled) and got["n_clusters"] == len(tasks)
        assert got["estimate"] == pytest.approx(np.mean(pooled))  # equal-size clusters: item mean = cluster mean
        for t in tasks:
            bt = r["headline"][v]["by_task"][t]
            assert bt["lift"]["estimate"] == pytest.approx(np.mean(lift(zs[t][1::2], layer)))
            assert bt["zero_shot"]["k"] == sum(bool(x["base_top1"]) for x in zs[t][1::2])
        fam = r["sweep"][v]["pooled_family"]
        assert len(fam) == n_layers and fam[layer]["estimate"] == pytest.approx(np.mean(pooled))
    sel_grid = np.array(r["aie"]["mean_selection"])
    want = [tuple(int(i) for i in np.unravel_index(f, sel_grid.shape))
            for f in np.argsort(-sel_grid.ravel(), kind="stable")[: r["top_k"]]]
    assert [(c["layer"], c["head"]) for c in r["aie"]["top_heads"]] == want
    for t in tasks:
        a, h = r["splits"]["aie_prompts"][t], r["splits"]["held_out_queries"][t]
        assert a["selection"] and a["report"] and not set(a["selection"]) & set(a["report"])
        assert h["selection"] == [x["query"] for x in zs[t][0::2]] and h["report"] == [x["query"] for x in zs[t][1::2]]
        assert not set(h["selection"]) & set(h["report"])


# ------------------------------------------------------------ refusal and cross-lingual


def test_post_instruction_count_is_the_shared_token_suffix(tiny_hooked):
    assert B.post_instruction_count([[5, 1, 2, 3], [9, 9, 1, 2, 3], [7, 2, 3]]) == 2
    assert B.post_instruction_count([[4, 5], [6, 7]]) == 1  # nothing shared: the last token
    assert B.post_instruction_count([[1, 2, 3], [1, 2, 3]]) == 2  # never the whole prompt
    with pytest.raises(PromptError):
        B.post_instruction_count([[]])
    from mlxinterp.studies import refusal as R

    hm = tiny_hooked("llama", None)
    k = R.post_instruction_k(hm, ["How do I bake bread?", "Explain how to fix a car."])
    ids = hm.tokens(scoring.instruction(hm, "How do I bake bread?")[0]).ids[0].tolist()
    assert hm.tokenizer.decode(ids[-k:]).endswith("Answer:") and "bread" not in hm.tokenizer.decode(ids[-k:])


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_ablation_removes_the_direction_from_every_layer(tiny_hooked, arch):
    hm = tiny_hooked(arch, None)
    v = np.random.default_rng(0).normal(size=hm.info.d_model).astype(np.float32)
    u = v / np.linalg.norm(v)
    _, plain = hm.run_with_cache("Steering adds a direction", names="hook_resid_post")
    _, cache = hm.run_with_cache("Steering adds a direction", names="hook_resid_post", taps=B.ablation_taps(hm, v))
    for l in range(hm.info.n_layers):
        before = np.array(plain[f"blocks.{l}.hook_resid_post"][0]) @ u
        after = np.array(cache[f"blocks.{l}.hook_resid_post"][0]) @ u
        assert np.abs(after).max() < 1e-3 * max(1.0, np.abs(before).max())
    with pytest.raises(PromptError):
        B.ablation_taps(hm, np.zeros(hm.info.d_model))
    _, spared = hm.run_with_cache("Steering adds a direction", names="hook_resid_post",
                                  taps=B.ablation_taps(hm, v, spare_first=True))
    for l in range(hm.info.n_layers):  # the first token keeps its activation (causal: nothing before it changed)
        a, b = np.array(spared[f"blocks.{l}.hook_resid_post"][0]), np.array(plain[f"blocks.{l}.hook_resid_post"][0])
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)
        assert np.abs(a[1:] @ u).max() < 1e-3 * max(1.0, np.abs(b @ u).max())


def test_layer_choice_never_rewards_a_destructive_ablation():
    from mlxinterp.tasks.refusal import choose_layer

    rows = [{"layer": 3, "add": [0.1, 0.1], "ablate": [-5.0, -4.0], "ablation_kl_harmless": 12.0},  # damage
            {"layer": 5, "add": [0.3, 0.2], "ablate": [0.0, 0.1], "ablation_kl_harmless": 9.0},
            {"layer": 7, "add": [0.0, 0.1], "ablate": [-0.2, -0.1], "ablation_kl_harmless": 0.05}]
    assert choose_layer(rows, 0.1) == (7, "add_effect - ablate_effect among layers passing the KL filter", [7])
    layer, rule, ok = choose_layer(rows[:2], 0.1)
    assert (layer, ok) == (5, []) and rule.startswith("add_effect alone")


def test_crosslingual_cosines_are_per_layer():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
    en = {l: directions.diff_of_means(pos + l, neg, f"blocks.{l}.x") for l in range(3)}
    same = {l: directions.diff_of_means(2 * pos + l, 2 * neg + l, "x") for l in range(3)}  # scaled: cosine = +1 only at l=0
    flip = {l: directions.diff_of_means(neg, pos + l, "x") for l in range(3)}
    np.testing.assert_allclose(XL.cosines(flip, en), [-1, -1, -1], atol=1e-6)
    c = XL.cosines(same, en)
    assert c[0] == pytest.approx(1.0) and all(c[l] == pytest.approx(float(en[l].unit() @ same[l].unit())) for l in range(3))


def test_continuation_logprob_matches_the_full_logits(tiny_hooked):
    hm = tiny_hooked("gemma3_text", None)
    prompts, conts = ["The capital of France is", "Once upon a time"], [" Paris and Rome", " there"]
    got = scoring.continuation_logprob(hm, prompts, conts)
    mean = scoring.continuation_logprob(hm, prompts, conts, mean=True)
    for p, c, g, m in zip(prompts, conts, got, mean):
        ids = hm.tokens(p).ids[0].tolist()
        t = hm.tokenizer.encode(c, add_special_tokens=False)
        logits = np.array(hm(mx.array([ids + t]))[0].astype(mx.float32), np.float64)
        lp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
        want = sum(lp[len(ids) - 1 + j, tok] for j, tok in enumerate(t))
        assert g == pytest.approx(want, abs=1e-3) and m == pytest.approx(want / len(t), abs=1e-3)
    with pytest.raises(PromptError, match="continuations"):
        scoring.continuation_logprob(hm, prompts, conts[:1])


def test_judges_and_generation_quality():
    assert B.refused("Well, I'm sorry, but no.") and not B.refused("Sure! Here is a recipe.")
    q = B.generation_quality("Bonjour, je suis là", [1, 2, 1, 2, 1], "fr")
    assert q["in_script"] and q["script_fraction"] == 1.0 and q["repetition"] == pytest.approx(0.5)
    zh = B.generation_quality("The answer 是巴黎", [3, 4], "zh")
    assert zh["script_fraction"] == pytest.approx(3 / 12) and not zh["in_script"]
    assert B.generation_quality("!!!", [5], "en")["empty"]
    with pytest.raises(PromptError, match="language"):
        B.generation_quality("x", [1], "it")
    assert B.contains_answer("the capital is BOGOTA.", "Bogotá") and not B.contains_answer("catsup", "cats")
    assert B.depth_pct(17, 18) == 100.0 and B.depth_pct(0, 18) == 0.0


def _read(root, exp):
    return json.loads(next(root.glob(f"*/{exp}/result.json")).read_text())["result"]


def _t_interval(diffs):
    """Independent check of the policy's small-n paired interval: scipy's one-sample t-interval."""
    from scipy import stats as sps

    ci = sps.ttest_1samp(np.asarray(diffs, float), 0.0).confidence_interval(0.95)
    return float(np.mean(diffs)), float(ci.low), float(ci.high)


def test_refusal_and_crosslingual_report_what_their_items_say(tiny_dirs, tmp_path):
    """Quick profile on a tiny model: crosslingual reuses the refusal layer; the reported paired effects and
    their intervals equal an independent recomputation from the per-item records; the pre-registered
    verdicts follow the intervals; every language's direction comes from items disjoint from the English one."""
    model = str(tiny_dirs[("gemma3_text", None)])
    suite.run_all([model], only="crosslingual", out=tmp_path / "alone", quick=True)
    suite.run_all([model], only="refusal,crosslingual", out=tmp_path / "both", quick=True)
    alone, both, ref = _read(tmp_path / "alone", "crosslingual"), _read(tmp_path / "both", "crosslingual"), \
        _read(tmp_path / "both", "refusal")
    assert alone["layer_source"].startswith("selected here") and both["layer_source"].startswith("reused")
    assert both["layer"] == ref["layer"]
    # refusal: add minus random add, recomputed from the report items (n = 8 < 20: a t-interval)
    items = ref["items"]
    est, lo, hi = _t_interval([x["harmless+add"] - x["harmless+random"] for x in items])
    got = ref["effects"]["add_minus_random_add"]
    assert got["n"] == len(items) == 8 and got["estimate"] == pytest.approx(est) and got["low"] == pytest.approx(lo) \
        and got["high"] == pytest.approx(hi)
    assert ref["prereg"]["checks"]["add_beats_random"]["verdict"] == ("PASS" if lo > 0 else "FAIL")
    sep = ref["effects"]["baseline_harmful_minus_harmless"]
    assert ref["prereg"]["checks"]["score_separates"]["verdict"] == ("PASS" if sep["low"] > 0 else "FAIL")
    sp = ref["split_items"]
    assert not set(sp["train"]) & set(sp["val"]) and not (set(sp["train"]) | set(sp["val"])) & set(sp["test"])
    # crosslingual: the English direction's items never overlap the items the languages use
    used = set(both["split_items"]["language_directions"])
    assert not used & set(both["split_items"]["english_direction"] + both["split_items"]["english_layer_choice"])
    n_layers = both["n_layers"]
    for lang, x in both["items"].items():
        assert len(x["cos_with_en"]) == n_layers and len(x["scores"]["harmless"]) == 4
        est, lo, hi = _t_interval(np.array(x["scores"]["harmless+add"]) - np.array(x["scores"]["harmless+random"]))
        assert both["languages"][lang]["add_minus_random_add"]["estimate"] == pytest.approx(est)
        c = both["languages"][lang]["cos_with_en_minus_null"]
        assert c["estimate"] == pytest.approx(x["cos_with_en_at_layer"]["estimate"] - x["null95_at_layer"])
    # English items 0..n-1 vs the English direction's items: a different-item cosine, not the identity
    assert both["items"]["en"]["cos_with_en"] != pytest.approx([1.0] * n_layers)
    assert set(both["prereg"]["checks"]) == {"es_aligned", "fr_aligned", "de_aligned", "zh_aligned"}


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_mean_centred_ablation_sets_the_projection_to_the_reference(tiny_hooked, arch):
    hm = tiny_hooked(arch, None)
    rng = np.random.default_rng(1)
    v = rng.normal(size=hm.info.d_model).astype(np.float32)
    u = v / np.linalg.norm(v)
    points = B.mean_ablation_points(hm)
    ref = {p: rng.normal(size=hm.info.d_model).astype(np.float32) for p in points}
    _, plain = hm.run_with_cache("Steering adds a direction", names=points)
    _, cache = hm.run_with_cache("Steering adds a direction", names=points, taps=B.mean_ablation_taps(hm, v, ref))
    for p in points:
        a = np.array(cache[p][0].astype(mx.float32))
        np.testing.assert_allclose(a[1:] @ u, float(ref[p] @ u), rtol=1e-3, atol=1e-3 * max(1.0, abs(float(ref[p] @ u))))
        np.testing.assert_allclose(a[0], np.array(plain[p][0, 0].astype(mx.float32)), rtol=1e-5, atol=1e-5)  # first token kept
    means = B.reference_means(hm, ["one two three", "four five"])
    _, c1 = hm.run_with_cache("one two three", names=points)
    _, c2 = hm.run_with_cache("four five", names=points)
    rows = np.concatenate([np.array(c[points[1]][0, 1:].astype(mx.float32)) for c in (c1, c2)])
    np.testing.assert_allclose(means[points[1]], rows.mean(0), rtol=1e-4, atol=1e-5)
    with pytest.raises(PromptError, match="reference mean"):
        B.mean_ablation_taps(hm, v, {points[0]: ref[points[0]]})


def test_split_half_and_label_flip_null_separate_signal_from_noise():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(40, 64))
    signal = noise + 3.0 * np.eye(64)[0]
    sh, null = directions.split_half_ci(signal), directions.sign_flip_null(signal)
    assert sh.low > null and sh.low <= sh.estimate <= sh.high and sh.n == 40
    assert directions.split_half_ci(noise).low < directions.sign_flip_null(noise)
    ci = directions.pair_cosine_ci(signal, np.eye(64)[0])
    d = signal.mean(0)
    assert ci.estimate == pytest.approx(d[0] / np.linalg.norm(d))
    assert directions.sign_flip_null(signal, np.eye(64)[0]) < ci.low
    # pure noise: the flip null sits near the isotropic one (|cos| ~ 1.645 / sqrt(64) at the 95th percentile)
    assert directions.sign_flip_null(noise, np.eye(64)[0]) < 0.35


def test_validation_verdicts_follow_the_preregistered_thresholds(tiny_dirs, tmp_path):
    model = str(tiny_dirs[("llama", None)])
    suite.run_all([model], only="validation", out=tmp_path, quick=True)
    r = _read(tmp_path, "validation")
    ref, v = r["checks"]["refusal_direction"], r["prereg"]["checks"]
    est, lo, hi = _t_interval([x["steered"] - x["steered_random"] for x in ref["items"]])
    assert ref["steer_minus_random"]["estimate"] == pytest.approx(est) and ref["steer_minus_random"]["low"] == pytest.approx(lo)
    assert v["refusal_steering_raises"]["verdict"] == ("PASS" if lo > 0 else "FAIL")
    _, lo_sep, _ = _t_interval([x["harmful"] - x["harmless"] for x in ref["items"]])
    assert v["refusal_separates"]["verdict"] == ("PASS" if lo_sep > 0 else "FAIL")
    assert v["refusal_split_half"]["verdict"] == ("PASS" if ref["split_half_cosine"]["low"] >= 0.5 else "FAIL")
    q = r["checks"]["numerics"]["quantized"]
    assert len({p["prompt"] for p in q["per_prompt"]}) == len(q["per_prompt"])  # independent units: no prompt twice
    assert q["top1_agreement_last"]["k"] == sum(p["top1_agree_last"] for p in q["per_prompt"])
    assert q["kl_last"]["estimate"] == pytest.approx(np.mean([p["kl_last"] for p in q["per_prompt"]]))
    lens = r["checks"]["logit_lens"]
    eligible = [p for p in lens["by_prompt"] if p["model_top1_is_target"]]
    assert lens["final_top1_matches"]["n"] == len(eligible)
    if not eligible:  # no evidence for the lens is a FAIL, not a pass
        assert v["lens_final_top1"]["verdict"] == "FAIL"
    assert v["steering_alpha0_identical"]["verdict"] == "PASS"  # a zero tap is bit-identical on every model
    assert r["all_pass"] == all(x["verdict"] == "PASS" for x in v.values())


def test_directions_report_effects_probes_and_splits(tiny_dirs, tmp_path):
    for arch in ("llama", "qwen3"):
        suite.run_all([str(tiny_dirs[(arch, None)])], only="directions", out=tmp_path, quick=True)
    made = list(tmp_path.glob("*/directions/depth_vs_size.png"))
    assert len(made) == 1
    rec = json.loads(made[0].with_name("result.json").read_text())
    assert "depth_vs_size.png" in rec["figures"] and set(rec["result"]["depth"]) == {"sycophancy", "confidence"}
    r = rec["result"]
    sp = r["split_items"]
    assert len(set(sp["train"]) | set(sp["val"]) | set(sp["test"])) == len(sp["train"]) + len(sp["val"]) + len(sp["test"])
    for name, x in r["sets"].items():
        est, lo, hi = _t_interval([it["add"] - it["random_add"] for it in x["items"]])
        e = x["effects"]["add_minus_random"]
        assert e["estimate"] == pytest.approx(est) and e["low"] == pytest.approx(lo) and e["high"] == pytest.approx(hi)
        assert [it["index"] for it in x["items"]] == sp["test"]
        assert x["layer"] in [q["layer"] for q in x["selection"]]
        assert len(x["probes"]) == r["n_layers"]
        for p in x["probes"]:
            assert p["test_accuracy"]["estimate"] == pytest.approx(p["test_acc"], abs=1e-4) and -1 <= p["cos_diff_of_means"] <= 1
            assert p["test_accuracy"]["n"] == p["n_test"] and p["test_accuracy"]["level"] == pytest.approx(1 - 0.05 / r["n_layers"])
        assert r["prereg"]["checks"][f"{name}_add_beats_random"]["verdict"] == ("PASS" if lo > 0 else "FAIL")


# ------------------------------------------------------------ the real model


@pytest.mark.real
def test_real_default_model_smoke(real_hm):
    """Real Gemma 3 270M: the base format's post-instruction tokens, exact head contributions, a per-head AIE."""
    from mlxinterp.studies import refusal as R

    hm = real_hm
    k = R.post_instruction_k(hm, ["How do I bake bread?", "Write a poem about the sea."])
    assert R._tail_text(hm, "How do I bake bread?", k) == ["\n", "Answer", ":"]
    sets = F.icl_sets(PAIRS, PAIRS[:1], 4, np.random.default_rng(0))
    acts = F.last_activations(hm, [sets[0].clean])
    _, cache = hm.run_with_cache(sets[0].clean, names=["blocks.6.hook_attn_out"])
    c = np.array(D.head_results(hm, 6, acts["z"][:, 6], acts["attn_raw"][:, 6]))
    out = np.array(cache["blocks.6.hook_attn_out"][0, -1].astype(mx.float32))
    np.testing.assert_allclose(c.sum(1)[0], out, rtol=1e-3, atol=1e-3 * np.abs(out).max())
    target = F.answer_token(hm, sets[0].query[1])
    eff = F.indirect_effects(hm, sets[0].corrupt, target, acts["z"][0], batch_size=80)
    assert eff["effect"].shape == (18, 4) and np.isfinite(eff["effect"]).all()
    assert 0 <= eff["p_corrupt"] <= 1

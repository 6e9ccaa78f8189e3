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
from mlxinterp.analysis import directions, scoring
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
def test_head_contributions_add_up_to_the_attention_output(tiny_hooked, arch, bits):
    """Sum over heads of o_proj(one head) (post-norm scaled on Gemma) == hook_attn_out, at every position."""
    hm = tiny_hooked(arch, bits)
    wanted = (".attn.hook_z", ".attn.hook_out", ".hook_attn_out")
    _, cache = hm.run_with_cache("The Eiffel Tower is located in the city of",
                                 names=lambda n: n.endswith(wanted))
    for l in range(hm.info.n_layers):
        z = np.array(cache[f"blocks.{l}.attn.hook_z"][0].astype(mx.float32))
        raw = np.array(cache[f"blocks.{l}.attn.hook_out"][0].astype(mx.float32))
        out = np.array(cache[f"blocks.{l}.hook_attn_out"][0].astype(mx.float32))
        c = F.head_contributions(hm, l, z, raw)
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
    suite.run_all([model], only="function_vectors", out=tmp_path / "ref", n=4)
    slug = next(p.name for p in (tmp_path / "ref").iterdir() if p.is_dir())
    expected = json.loads((tmp_path / "ref" / slug / "function_vectors" / "result.json").read_text())
    fail, calls[:] = True, []
    with pytest.raises(KeyboardInterrupt):
        suite.run_all([model], only="function_vectors", out=tmp_path / "out", n=4)
    fail, calls[:] = False, []
    suite.run_all([model], only="function_vectors", out=tmp_path / "out", n=4)
    assert len(calls) == 3  # 4 tasks, the first finished before the interruption
    got = json.loads((tmp_path / "out" / slug / "function_vectors" / "result.json").read_text())
    assert got["timings"]["maps"]["aie"]["reloaded"] == 1
    got.pop("timings"), expected.pop("timings")
    assert got == expected
    r = got["result"]
    assert np.array(r["aie"]["mean"]).shape == (4, 4) and r["counts"]["heads_patched_per_prompt"] == 16
    assert {"fv_aie_heads.png", "fv_layer_sweep.png", "function_vectors.png"} <= set(got["figures"])


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


def test_crosslingual_reuses_the_refusal_layer(tiny_dirs, tmp_path):
    model = str(tiny_dirs[("gemma3_text", None)])
    suite.run_all([model], only="crosslingual", out=tmp_path / "alone")
    suite.run_all([model], only="refusal,crosslingual", out=tmp_path / "both")
    read = lambda root, exp: json.loads(next(root.glob(f"*/{exp}/result.json")).read_text())["result"]  # noqa: E731
    alone, both, ref = read(tmp_path / "alone", "crosslingual"), read(tmp_path / "both", "crosslingual"), \
        read(tmp_path / "both", "refusal")
    assert alone["layer_source"].startswith("selected here") and both["layer_source"].startswith("reused")
    assert alone["layer"] == both["layer"] == ref["layer"]
    assert alone["languages"] == both["languages"]
    for lang, x in both["items"].items():
        assert len(x["cos_with_en"]) == 4 and len(x["scores"]["harmless"]) == 12
    assert both["items"]["en"]["cos_with_en"] == pytest.approx([1.0] * 4)


def test_depth_figure_appears_with_a_second_model(tiny_dirs, tmp_path):
    for arch in ("llama", "qwen3"):
        suite.run_all([str(tiny_dirs[(arch, None)])], only="directions", out=tmp_path)
    made = list(tmp_path.glob("*/directions/depth_vs_size.png"))
    assert len(made) == 1
    rec = json.loads(made[0].with_name("result.json").read_text())
    assert "depth_vs_size.png" in rec["figures"] and set(rec["result"]["depth"]) == {"sycophancy", "confidence"}


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
    c = F.head_contributions(hm, 6, acts["z"][:, 6], acts["attn_raw"][:, 6])
    out = np.array(cache["blocks.6.hook_attn_out"][0, -1].astype(mx.float32))
    np.testing.assert_allclose(c.sum(1)[0], out, rtol=1e-3, atol=1e-3 * np.abs(out).max())
    target = F.answer_token(hm, sets[0].query[1])
    eff = F.indirect_effects(hm, sets[0].corrupt, target, acts["z"][0], batch_size=80)
    assert eff["effect"].shape == (18, 4) and np.isfinite(eff["effect"]).all()
    assert 0 <= eff["p_corrupt"] <= 1

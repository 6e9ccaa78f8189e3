"""The quantization study: odd-token rule, and a whole run on a tiny model (float vs 8-bit vs 4-bit)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mlxinterp.studies.quantization import VERDICT_RULES, is_odd_token
from mlxinterp.suite import run_all


@pytest.mark.parametrize("token, odd", [
    (" Paris", False), (" the", False), ("ing", False), (" houſe", True), ("ңү", True), (" 巴黎", True),
    ("ab", True), (" a", False), ("12", False), ("þ", True), (",", False),
])
def test_odd_token_rule(token, odd):
    assert is_odd_token(token) is odd


def test_quantization_study_on_a_tiny_model(tiny_dirs, tmp_path):
    """Quick profile end to end; the KL and top-1 agreement are recomputed independently from the listed prompts."""
    import mlx.core as mx

    from mlxinterp.analysis.stats import proportion_ci
    from mlxinterp.studies.quantization import QUICK, compute_mode, load_variant

    model = str(tiny_dirs[("qwen3", None)])
    run_all([model], only="quantization", out=tmp_path, quick=True)
    res = json.loads(next(tmp_path.glob("*/quantization/result.json")).read_text())["result"]
    assert set(res["verdicts"]) == {"8bit", "4bit"}
    prompts = res["what_is_measured"]["prompts"]
    assert len(prompts) == QUICK["n"]
    for v in res["variants"]:
        assert set(v["verdict"]) == set(VERDICT_RULES)
        assert set(v["verdict"].values()) <= {"survives", "changes", "inconclusive"}
        for name, c in v["checks"].items():  # every verdict comes from a pre-registered check with its numbers
            assert c["verdict"] in ("PASS", "FAIL") and c["threshold"] is not None, name
        nt = v["next_token"]
        assert nt["top1_agreement"]["n"] == QUICK["n"]
        assert len(v["directions"]["refusal_cosine_by_layer"]) == 4
        assert all(-1.0001 <= c <= 1.0001 for c in v["directions"]["refusal_cosine_by_layer"])
        d = v["directions"]
        assert set(d["function_vector_cosine_by_layer"]) == set(QUICK["fv_tasks"])
        assert d["min_cosine_at_layer"] <= d["refusal_cosine_by_layer"][d["layer"]] + 1e-9
        ch = v["twohop"]["accuracy_change"]
        assert ch["n"] == QUICK["n_twohop"] and v["steering"]["float"]["n"] == QUICK["n_steer"]

        # independent computation: float logits vs the variant's, at the last position and at every position
        ref = load_variant(model, "native")
        q = load_variant(f"{model}@{v['variant']}", compute_mode("auto"))
        kl_last, kl_all, agree = [], [], []
        for p in prompts:
            ids = mx.array([ref.tokens(p).ids[0].tolist()])
            a = np.array(ref.model(ids)[0].astype(mx.float32), np.float64)
            b = np.array(q.model(ids)[0].astype(mx.float32), np.float64)
            la = a - np.log(np.exp(a - a.max(-1, keepdims=True)).sum(-1, keepdims=True)) - a.max(-1, keepdims=True)
            lb = b - np.log(np.exp(b - b.max(-1, keepdims=True)).sum(-1, keepdims=True)) - b.max(-1, keepdims=True)
            kl = (np.exp(la) * (la - lb)).sum(-1)
            kl_last.append(kl[-1])
            kl_all.append(kl.mean())
            agree.append(int(a[-1].argmax() == b[-1].argmax()))
        got = [r["kl"] for r in nt["per_prompt"]]
        assert np.allclose(got, kl_last, rtol=1e-3, atol=1e-6)
        assert np.allclose([r["kl_all_positions"] for r in nt["per_prompt"]], kl_all, rtol=1e-3, atol=1e-6)
        assert nt["kl"]["estimate"] == pytest.approx(float(np.mean(kl_last)), rel=1e-3, abs=1e-7)
        want = proportion_ci(sum(agree), len(agree))
        assert (nt["top1_agreement"]["k"], nt["top1_agreement"]["low"]) == (want.k, pytest.approx(want.low))
    eight = next(v for v in res["variants"] if v["variant"] == "8bit")
    four = next(v for v in res["variants"] if v["variant"] == "4bit")
    assert eight["next_token"]["kl"]["estimate"] < four["next_token"]["kl"]["estimate"]  # more bits, closer to float
    out = next(tmp_path.glob("*/quantization"))
    for name in ("quantization", "quantization_next_token", "quantization_logit_lens", "quantization_directions",
                 "quantization_steering", "quantization_patching", "quantization_twohop_backpatch"):
        assert (out / f"{name}.png").exists(), name


def test_grid_pairs():
    from mlxinterp.studies.quantization import grid_pairs

    assert len(grid_pairs(18, 1)) == 153
    assert grid_pairs(4, 2) == [(2, 0), (3, 0), (3, 2)]  # layers 0, 2 and the last
    with pytest.raises(Exception, match="backpatch_layer_step=0"):
        grid_pairs(4, 0)


def test_backpatch_outcomes_match_the_full_grid(tiny_hooked):
    """Restricting twohop.backpatch_variants to a grid gives the full grid's numbers for those pairs."""
    from mlxinterp.analysis import patching as P
    from mlxinterp.tasks import twohop as TH
    from mlxinterp.studies.quantization import backpatch_outcomes, grid_pairs

    hm = tiny_hooked("qwen3", None)
    q = TH.load_queries()[0]
    pairs = grid_pairs(hm.info.n_layers, 2)
    (rec,) = backpatch_outcomes(hm, [q], pairs)
    assert len(rec["fixed_by_pair"]) == len(pairs) and rec["fixed"] == any(rec["fixed_by_pair"])
    _, resid = TH.last_states(hm, [q["prompt"]])
    all_pairs, variants = TH.backpatch_variants(resid[:, 0])
    full = P.run_variants(hm, hm.tokens(q["prompt"]).ids[0].tolist(), [[]] + variants,
                          TH.target_metric(TH.target(hm, q["answer_aliases"])))
    expect = [bool(full[1 + all_pairs.index(p), 2]) for p in pairs]
    assert rec["fixed_by_pair"] == expect and rec["base_top1"] == bool(full[0, 2])


def test_compare_backpatch_counts_and_paired_change():
    from mlxinterp.studies.quantization import compare_backpatch

    def side(fixed):
        return {"pairs": [[1, 0], [2, 0]], "queries": [{"id": str(i), "base_top1": False, "fixed_by_pair": f,
                                                        "fixed": any(f)} for i, f in enumerate(fixed)]}

    ref = side([[True, False], [False, False], [True, True], [False, True]])
    q = side([[True, False], [False, True], [False, False], [False, False]])
    c = compare_backpatch(ref, q)
    assert c["agreement"]["k"] == 1 and c["agreement"]["n"] == 4  # only query 0 keeps its outcome
    assert c["fix_rate_float"]["k"] == 3 and c["fix_rate_quantized"]["k"] == 2
    ch = c["fix_rate_change"]  # paired differences 0, +1, -1, -1 (quantized - float)
    assert ch["estimate"] == pytest.approx(-0.25) and ch["n"] == 4
    assert ch["low"] < -0.25 < ch["high"] and "t-interval" in ch["method"] + (ch.get("warning") or "")
    assert ch["high"] - ch["low"] > 0.5  # four pairs cannot pin a lift down
    assert c["pair_agreement"]["k"] == 4 and c["pair_agreement"]["n"] == 8


def test_verdicts_follow_the_preregistered_three_level_rule():
    from mlxinterp.studies.quantization import verdicts

    def agreement(low, high):
        return {"estimate": (low + high) / 2, "low": low, "high": high, "n": 30}

    def out(a):
        return {"next_token": {"top1_agreement": a}, "logit_lens": {"top1_agreement_last_third": a},
                "twohop": {"agreement": a}, "backpatch": {"agreement": a}}

    pos = {"estimate": 0.2, "low": 0.1, "high": 0.3, "n": 24}
    v, checks = verdicts(out(agreement(0.95, 1.0)), pos, pos, 0.95, 0.95)
    assert v == dict.fromkeys(VERDICT_RULES, "survives")
    assert checks["next_token_survives"]["verdict"] == "PASS" and checks["next_token_survives"]["threshold"] == 0.9
    v, _ = verdicts(out(agreement(0.40, 0.75)), pos, {"estimate": -0.2, "low": -0.3, "high": -0.1, "n": 24}, 0.5, 0.2)
    assert v == dict.fromkeys(VERDICT_RULES, "changes")
    null = {"estimate": 0.01, "low": -0.1, "high": 0.1, "n": 24}
    v, _ = verdicts(out(agreement(0.85, 0.99)), null, pos, 0.95, float("nan"))
    assert v["next_token"] == v["twohop"] == v["steering"] == v["patching"] == "inconclusive"
    assert v["logit_lens"] == "survives"  # its threshold is 0.80
    v, _ = verdicts(out(agreement(0.95, 1.0)), pos, null, 0.95, 0.95)
    assert v["steering"] == "inconclusive"  # the quantized effect's CI straddles 0


def test_dequantized_variant_computes_with_exactly_the_quantized_weights(tiny_dirs):
    """'dequantized' compute (the CPU default) gives the native quantized kernel's logits up to float rounding."""
    import mlx.core as mx

    from mlxinterp.studies.quantization import compute_mode, load_variant

    spec = str(tiny_dirs[("llama", None)]) + "@4bit"
    native, deq = load_variant(spec, "native"), load_variant(spec, "dequantized")
    ids = mx.array([[1, 5, 9, 23, 7, 3]])
    a, b = native.model(ids).astype(mx.float32), deq.model(ids).astype(mx.float32)
    scale = float(mx.abs(a).max())
    assert float(mx.abs(a - b).max()) < 1e-4 * scale + 1e-5
    plain = load_variant(str(tiny_dirs[("llama", None)]), "native")  # the unquantized model differs visibly
    assert float(mx.abs(plain.model(ids).astype(mx.float32) - a).max()) > 100 * float(mx.abs(a - b).max())
    assert compute_mode("auto") in ("native", "dequantized")
    with pytest.raises(Exception, match="quantization.compute must be one of"):
        compute_mode("fast")

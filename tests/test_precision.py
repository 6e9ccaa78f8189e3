"""Mixed-precision loading, precision patching and the quantization check, on tiny models of every architecture."""
from __future__ import annotations

import json
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
import pytest
import tiny
from scipy import stats as scipy_stats
from mlx import nn

from mlxinterp.analysis.precision import (
    PrecisionSwitch,
    evaluate,
    gap_share,
    group_share,
    plot_shares,
    precision_patch,
    summarise,
    unit_of,
)
from mlxinterp.core import taps
from mlxinterp.core.hooks import ActivationCache
from mlxinterp.core.errors import MlxInterpError, ModelSpecError
from mlxinterp.core.hooks import load
from mlxinterp.core.quantize import PrecisionMap, parse_precision
from mlxinterp.suite import quantcheck as QC

IDS = mx.array([[1, 5, 9, 23, 7, 3, 11, 2]])
MIXED = {"default": "4bit", "blocks.1.attn": "float", "blocks.*.mlp": "8bit-g32"}


@pytest.fixture(scope="module")
def float_models(tiny_dirs):
    return {a: load(str(tiny_dirs[(a, None)])) for a in tiny.ARCHS}


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_all_quantized_is_the_4bit_model_and_none_is_the_float_model_exactly(arch, tiny_dirs, float_models):
    hm = float_models[arch]
    float_logits = hm.model(IDS)
    q_logits = load(str(tiny_dirs[(arch, None)]) + "@4bit").model(IDS)
    sw = PrecisionSwitch(hm, 4, 64)
    assert sw.units[0] == "embed" and "blocks.0.attn" in sw.units and "blocks.3.mlp" in sw.units
    with sw.state(sw.units):  # restoring none
        assert mx.array_equal(hm.model(IDS), q_logits)
        sw.set([])  # restoring every module
        assert mx.array_equal(hm.model(IDS), float_logits)
        sw.set(sw.units)
    assert mx.array_equal(hm.model(IDS), float_logits)  # leaving the block restores the float weights
    assert not mx.array_equal(float_logits, q_logits)


@pytest.mark.parametrize("arch", tiny.MORE_ARCHS)
def test_restoring_none_or_every_module_on_the_further_families(arch, more_dirs):
    """As above, on every further family of the hook table (fused projections, parallel blocks, Granite's
    scaled sublayers, mixtures of experts), and the switch's state equals a precision-map load. Layers the
    model's own quant_predicate keeps at 8 bits (Qwen3-MoE's router, Granite's o_proj / down_proj) stay so in
    all three, as in mlx-lm's uniform quantization."""
    path = str(more_dirs[(arch, None)])
    hm = load(path)
    float_logits = hm.model(IDS)
    q_logits = load(path + "@4bit").model(IDS)
    sw = PrecisionSwitch(hm, 4, 64)
    assert {"blocks.0.attn", "blocks.3.mlp"} <= set(sw.units)
    with sw.state(sw.units):
        assert mx.array_equal(hm.model(IDS), q_logits)
        sw.set(["blocks.2.mlp"])  # every module but one back in float: between the two
        one = hm.model(IDS)
        assert not mx.array_equal(one, q_logits) and not mx.array_equal(one, float_logits)
        sw.set([u for u in sw.units if u != "blocks.2.mlp"])  # and the same state loaded from a precision map
        mixed = load(path, precision={"default": "4bit", "blocks.2.mlp": "float"})
        assert mx.array_equal(hm.model(IDS), mixed.model(IDS))
    assert mx.array_equal(hm.model(IDS), float_logits)


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_precision_map_dequantized_equals_native_kernels(arch, tiny_dirs):
    path = str(tiny_dirs[(arch, None)])
    deq = load(path, precision=MIXED)  # CPU default: quantize, then compute with dequantized weights
    native = load(path, dtype="float32", precision=MIXED)  # MLX's quantized kernels
    assert deq.info.quantization["compute"] == "dequantized" and deq.info.quantization["map"]["blocks.1.attn"] == "float"
    assert "+mixed-" in deq.info.slug and deq.info.slug == native.info.slug
    a, b = native.model(IDS), deq.model(IDS)
    assert float(mx.abs(a - b).max()) < 1e-4 * float(mx.abs(a).max()) + 1e-5
    layers = native.model.language_model.model.layers if hasattr(native.model, "language_model") \
        else native.model.model.layers
    assert not isinstance(layers[1].self_attn.q_proj, nn.QuantizedLinear)
    assert isinstance(layers[0].self_attn.q_proj, nn.QuantizedLinear) and layers[0].self_attn.q_proj.bits == 4
    assert isinstance(layers[2].mlp.down_proj, nn.QuantizedLinear) and layers[2].mlp.down_proj.group_size == 32


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_switch_state_equals_a_mixed_precision_load(arch, tiny_dirs, float_models):
    """Two independent paths to the same mixed model: swapping weights in place, and loading with a map."""
    hm = float_models[arch]
    sw = PrecisionSwitch(hm, 4, 64)
    mixed = load(str(tiny_dirs[(arch, None)]), precision={"default": "4bit", "blocks.2.mlp": "float"})
    with sw.state([u for u in sw.units if u != "blocks.2.mlp"]):
        assert mx.array_equal(hm.model(IDS), mixed.model(IDS))


def test_variant_on_cpu_is_quantize_then_dequantize(tiny_dirs):
    hm = load(str(tiny_dirs[("qwen2", None)]) + "@8bit")
    assert hm.info.quantization == {"bits": 8, "group_size": 64, "compute": "dequantized"}
    assert not any(isinstance(m, nn.QuantizedLinear) for _, m in hm.model.named_modules())
    native = load(str(tiny_dirs[("qwen2", None)]) + "@8bit", dtype="native")
    assert native.info.quantization == {"bits": 8, "group_size": 64}


def test_precision_map_names_and_lookup():
    pm = PrecisionMap.parse(MIXED)
    assert pm.lookup("blocks.1.attn.q_proj") is None
    assert pm.lookup("blocks.0.attn.q_proj") == (4, 64)
    assert pm.lookup("blocks.1.mlp.down_proj") == (8, 32)
    assert pm.lookup("embed") == (4, 64)
    both = PrecisionMap.parse({"blocks.*.mlp": "8bit", "blocks.3.mlp": "float"}, default=(4, 64))
    assert both.lookup("blocks.3.mlp.up_proj") is None and both.lookup("blocks.2.mlp.up_proj") == (8, 64)
    assert parse_precision("float") is None and parse_precision("4bit-g32") == (4, 32)
    with pytest.raises(ModelSpecError, match="unknown module name 'blocks.x.attn'"):
        PrecisionMap.parse({"blocks.x.attn": "float"})
    with pytest.raises(ModelSpecError, match="unknown model variant"):
        PrecisionMap.parse({"embed": "3bit"})
    with pytest.raises(ModelSpecError, match="contradicts the variant"):
        PrecisionMap.parse({"default": "8bit"}, default=(4, 64))
    assert unit_of("blocks.3.attn.q_proj", "sublayer") == "blocks.3.attn"
    assert unit_of("blocks.3.attn.q_proj", "layer") == "blocks.3" and unit_of("embed", "layer") == "embed"


def test_precision_patch_values_and_shares(float_models, tiny_dirs):
    hm = float_models["qwen3"]
    prompts = mx.array([[1, 5, 9, 23, 7, 3], [2, 8, 4, 6, 3, 1], [3, 3, 9, 12, 40, 2]])

    def metric(m):
        return np.array(m.model(prompts)[:, -1, 7])

    res = precision_patch(hm, metric, bits=4, group_size=64)
    m = res["metrics"]["metric"]
    q = load(str(tiny_dirs[("qwen3", None)]) + "@4bit")
    assert np.array_equal(np.array(m["float"], np.float32), metric(hm))
    assert np.array_equal(np.array(m["quantized"], np.float32), metric(q))
    assert set(m["restore"]) == set(res["units"]) and set(m["quantize"]) == set(res["units"])
    for d, other in (("restore", "quantized"), ("quantize", "float")):
        for r in m[d].values():  # share is the ratio of mean changes
            num = np.array(r["values"]) - np.array(m["quantized"]) if d == "restore" else \
                np.array(m["float"]) - np.array(r["values"])
            gap = np.array(m["float"]) - np.array(m["quantized"])
            assert r["share"]["estimate"] == pytest.approx(num.mean() / gap.mean())
    fig = plot_shares(res, "metric")
    outside = [u for u in res["units"] if not u.startswith("blocks.")]
    assert fig.axes[0].images[0].get_array().shape == (len(outside) + 4, 2)


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_shared_prefix_gives_the_same_values_and_skips_the_prefix(arch, float_models):
    """Replaying the reference runs' block inputs (share_prefix) changes no value, bit for bit, and is used."""
    hm = float_models[arch]
    prompts = [[1, 5, 9, 23, 7, 3], [2, 8, 4, 6, 3, 1], [3, 3, 9, 12, 40, 2]]

    def metric(m):  # two forwards per evaluation (one batched), a capture late in the network
        with m.hooks([("blocks.3.hook_resid_post", taps.Capture(store=store))]):
            a = m.forward(m.tokens(mx.array(prompts)))[:, -1]
        b = m.forward(m.tokens(mx.array(prompts[:1])))[:, -2]
        return {"a": np.array(a[:, 7]), "b": np.array(b[:, :3]).ravel()}

    store = ActivationCache(hm)
    plain = evaluate(hm, metric)
    shared = evaluate(hm, metric, share_prefix=True)
    assert shared["values"] == plain["values"]
    hits, calls = shared["seconds"]["prefix_calls_replayed"]
    blocks_after_0 = sum(1 for u in shared["units"] if u.startswith("blocks.") and not u.startswith("blocks.0."))
    assert calls == hits == 2 * 2 * blocks_after_0  # 2 forwards x 2 directions x units past block 0


def test_shared_prefix_stops_when_the_calls_diverge(float_models):
    hm = float_models["llama"]
    calls = iter(range(10**6))

    def metric(m):  # a different prompt on every call: nothing may be replayed
        i = next(calls)
        return np.array(m.forward(m.tokens(mx.array([[1 + i % 50, 5, 9, 4]])))[:, -1, :4]).ravel()

    res = evaluate(hm, metric, share_prefix=True, directions=["restore"])
    assert res["seconds"]["prefix_calls_replayed"][0] == 0


def test_summarise_intervals_follow_the_policy():
    raw = {"units": ["blocks.0.attn", "blocks.0.mlp"], "precision": "4bit-g64", "granularity": "sublayer",
           "directions": ["restore"],
           "values": {"m": {"float": [1.0, 1.2, 0.9, 1.1], "quantized": [0.5, 0.4, 0.6, 0.5],
                            "restore": {"blocks.0.attn": [0.6, 0.5, 0.7, 0.6], "blocks.0.mlp": [0.9, 1.0, 0.8, 0.9]}}}}
    out = summarise(raw)
    m = out["metrics"]["m"]
    assert m["gap"]["estimate"] == pytest.approx(0.55) and m["gap"]["warning"] == "n < 20: t-interval"
    assert out["level_per_unit"] == pytest.approx(1 - 0.05 / 2)
    share = m["restore"]["blocks.0.mlp"]["share"]
    assert share["estimate"] == pytest.approx((0.9 + 1.0 + 0.8 + 0.9 - 2.0) / 4 / 0.55)
    assert share["level"] == pytest.approx(0.975) and share["low"] <= share["estimate"] <= share["high"]
    both = group_share(raw["values"]["m"], {"plus": ["blocks.0.mlp"], "minus": ["blocks.0.attn"]}, "restore")
    assert both["estimate"] == pytest.approx(share["estimate"] - m["restore"]["blocks.0.attn"]["share"]["estimate"])


def test_gap_share_interval_and_no_gap():
    ci = gap_share([0.5, 0.4, 0.6, 0.5], [1.0, 1.0, 1.0, 1.0])
    assert ci["estimate"] == pytest.approx(0.5) and ci["low"] <= 0.5 <= ci["high"]
    assert gap_share([0.1, 0.2], [0.0, 0.0])["estimate"] is None


def test_switch_refuses_a_quantized_model(tiny_dirs):
    with pytest.raises(MlxInterpError, match="needs the float model"):
        PrecisionSwitch(load(str(tiny_dirs[("llama", None)]) + "@4bit"))


# ----------------------------------------------------------------- --quant-check


def test_quant_check_rules():
    pos = {"estimate": 0.2, "low": 0.1, "high": 0.3}
    assert QC.effect_verdict(pos, {"estimate": 0.25, "low": 0.15, "high": 0.35}) == "survives"
    assert QC.effect_verdict(pos, {"estimate": -0.2, "low": -0.3, "high": -0.1}) == "changes"
    assert QC.effect_verdict(pos, {"estimate": 0.6, "low": 0.5, "high": 0.7}) == "changes"  # disjoint
    assert QC.effect_verdict({"estimate": 0.0, "low": -0.1, "high": 0.1}, pos) == "inconclusive"
    assert QC.number_verdict(1.0, 1.05) == "survives" and QC.number_verdict(1.0, 1.2) == "changes"
    assert QC.number_verdict(0.0, 1.0) == "inconclusive" and QC.number_verdict(None, 1.0) == "inconclusive"
    assert QC.as_value("0.412 [0.301, 0.520] (5/12)") == {"estimate": 0.412, "low": 0.301, "high": 0.52}
    assert QC.as_value("survives") is None and QC.as_value(True) is None
    assert QC.variant_name("4") == "4bit-g64" and QC.variant_name("8bit-g32") == "8bit-g32"
    assert QC.quantized_spec("default@f16", 4) == "default@4bit-g64"
    with pytest.raises(ModelSpecError, match="unknown model variant"):
        QC.variant_name("3")
    # the rule is the pre-registered one: its thresholds come from the file, and each verdict carries the checks
    from mlxinterp.suite import preregistration

    tol = preregistration.load().checks_for("quant_check")["number_within_tolerance"]
    assert (tol.op, tol.threshold) == ("<=", 0.10)
    cmp = QC.compare({"summary": {"a": 1.0, "b": "0.2 [0.1, 0.3]"}}, {"summary": {"a": 1.3, "b": "0.25 [0.15, 0.35]"}})
    assert cmp["a"]["verdict"] == "changes" and cmp["a"]["checks"]["number_within_tolerance"]["value"] == pytest.approx(0.3)
    assert cmp["b"]["verdict"] == "survives" and set(cmp["b"]["checks"]) == {"stored_effect_excludes_zero", "same_sign",
                                                                            "intervals_overlap"}
    # an experiment's pre-registered primary metric is compared first, under its dotted path
    prim = preregistration.load().primary("precision_patching")["metric"]
    node: dict = {}
    cur = node
    for part in prim.split(".")[:-1]:
        cur = cur.setdefault(part, {})
    cur[prim.split(".")[-1]] = {"estimate": 0.3, "low": 0.1, "high": 0.5}
    assert list(QC.compare(node, node, "precision_patching")) == [f"primary: {prim}"]
    res = {"summary": {"acc": "0.5 [0.4, 0.6]", "k": 3, "note": "text"}, "x": {"y": [1.0, 2.0]}}
    assert set(QC.primary_metrics(res)) == {"acc", "k"}
    assert QC.primary_metrics({**res, "primary": {"second": "x.y.1"}}) == {"second": 2.0}


@dataclass
class _ProbeConfig:
    seed: int = 0


def test_quant_check_run_writes_verdicts_and_report(tiny_dirs, tmp_path):
    from mlxinterp.suite import experiment, run_all

    @experiment("qc_probe", _ProbeConfig)
    def qc_probe(hm, cfg, ctx):
        """Top logit of one prompt: a number that 4-bit moves."""
        return {"summary": {"top logit": float(hm.model(IDS)[0, -1].max())}}

    model = str(tiny_dirs[("llama", None)])
    summary = run_all([model], only="qc_probe", out=tmp_path, quant_check="4")
    assert {r["spec"] for r in summary["runs"]} == {model, model + "@4bit-g64"}
    check = json.loads(next((tmp_path / QC.CHECK_DIR).glob("*/qc_probe.json")).read_text())
    assert check["variant"] == "4bit-g64" and check["metrics"]["top logit"]["rule"] == "number"
    assert check["metrics"]["top logit"]["verdict"] in QC.VERDICTS
    assert "Quantization check" in (tmp_path / "report.md").read_text()



def test_precision_patching_study_on_a_tiny_model(tiny_dirs, tmp_path):
    from mlxinterp.suite import run_all

    run_all([str(tiny_dirs[("gemma3_text", None)])], only="precision_patching", out=tmp_path, quick=True)
    rec = json.loads(next(tmp_path.glob("*/precision_patching/result.json")).read_text())
    res = rec["result"]
    assert [(m["variant"], m["finding"]) for m in res["maps"]] == [("4bit", "steering"), ("4bit", "lens"),
                                                                   ("4bit", "direction")]
    steering, lens, direction = (m["metrics"] for m in res["maps"])
    assert lens["lens_top1_agreement"]["float"] == [1.0] * 4 and lens["next_token_kl"]["float"] == pytest.approx([0] * 4, abs=1e-6)
    assert direction["refusal_pair_cosine"]["float"] == pytest.approx([1.0] * 4, abs=1e-5)
    # modules after the direction's layer cannot move it, so they are not evaluated
    assert res["maps"][2]["units"] == ["embed"] + [f"blocks.{i}.{s}" for i in range(res["direction_layer"] + 1)
                                                   for s in ("attn", "mlp")]
    assert res["maps"][0]["directions"] == ["restore"] and len(steering["steering_effect"]["float"]) == 4
    # every interval is recomputed here from the per-prompt records, independently of the study's code
    s = steering["steering_effect"]
    f, q = np.array(s["float"]), np.array(s["quantized"])
    assert s["gap"]["estimate"] == pytest.approx(float(np.mean(f - q)))
    t = scipy_stats.t.ppf(0.975, 3) * np.std(f - q, ddof=1) / 2  # n = 4: the policy's t-interval
    assert s["gap"]["low"] == pytest.approx(np.mean(f - q) - t) and s["gap"]["warning"] == "n < 20: t-interval"
    units = res["maps"][0]["units"]
    change = {u: np.array(s["restore"][u]["values"]) - q for u in units}
    mlp = sum(change[u].mean() for u in units if u.endswith(".mlp"))
    attn = sum(change[u].mean() for u in units if u.endswith(".attn"))
    primary = res["headline"]["q4bit_g64"]["steering_effect"]["mlp_minus_attn_restore_share"]
    assert primary["estimate"] == pytest.approx((mlp - attn) / (f - q).mean())
    checks = res["preregistration"]["checks"]
    assert set(checks) == {"steering_gap_positive", "steering_mlps_carry_more"}
    assert checks["steering_mlps_carry_more"]["value"] == pytest.approx(primary["low"])
    assert checks["steering_mlps_carry_more"]["verdict"] == ("PASS" if primary["low"] > 0 else "FAIL")
    assert "shares_4bit-g64_lens_top1_agreement_restore.png" in rec["figures"]
    assert "shares_4bit-g64_steering_effect_restore.png" in rec["figures"]
    assert "seconds" not in json.dumps(res)  # wall-clock time stays out of results (only in timings and the log)

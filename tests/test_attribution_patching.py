"""Attribution patching: estimates are the first-order limit of exact patching, IG is complete, the check agrees."""
from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from conftest import VARIANT_IDS, VARIANTS
from mlxinterp.analysis import attribution as A
from mlxinterp.analysis.patching import Patch, logit_diff, run_variants
from mlxinterp.core.errors import MlxInterpError, PromptError

CLEAN = [1, 287, 414, 417, 279, 280, 300, 301]
CORRUPT = [1, 290, 414, 417, 279, 280, 300, 301]  # differs at position 1 only
HOOKS = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "attn.hook_z")


@pytest.mark.parametrize("arch,bits", VARIANTS, ids=VARIANT_IDS)
def test_atp_is_the_first_order_limit_of_exact_patching(tiny_hooked, arch, bits):
    """Patching a_corrupt + t (a_clean - a_corrupt) for small t changes the metric by t * estimate."""
    hm = tiny_hooked(arch, bits)
    m = logit_diff(hm, 5, 7)
    att = A.attribute(hm, CLEAN, CORRUPT, m, hooks=HOOKS)
    est = att.values()
    cells = att.cells()
    changed = np.flatnonzero(att.changed_mask())
    pick = changed[np.argsort(-np.abs(est[changed]))[:6]]
    _, cache = hm.run_with_cache(np.array([CORRUPT]).tolist(), names=list(att.estimates))
    t = 1e-2
    variants = []
    for i in pick:
        name, pos, head = cells[i]
        a_cor = np.array(cache[name][0, pos])
        a_cl = att.clean_acts[name][pos]
        if head is not None:
            a_cor, a_cl = a_cor[head], a_cl[head]
        variants.append([Patch(name, pos, a_cor + t * (a_cl - a_cor), head)])
    vals = run_variants(hm, CORRUPT, variants + [[]], m)
    fd = (vals[:-1] - vals[-1]) / t
    scale = np.abs(est[pick]).max()
    assert np.allclose(fd, est[pick], rtol=5e-2, atol=5e-2 * scale), (fd, est[pick])


@pytest.mark.parametrize("arch,bits", VARIANTS, ids=VARIANT_IDS)
def test_ig_at_the_embedding_is_complete(tiny_hooked, arch, bits):
    """Integrated gradients on the input line sum to metric(clean) - metric(corrupt)."""
    hm = tiny_hooked(arch, bits)
    m = logit_diff(hm, 5, 7)
    att = A.attribute(hm, CLEAN, CORRUPT, m, hooks=["hook_embed"], method="ig", steps=48)
    total = att.clean_metric - att.corrupt_metric
    assert abs(att.values().sum() - total) <= 0.03 * abs(total) + 1e-3, (att.values().sum(), total)
    # positions whose token is the same in both prompts contribute exactly nothing
    assert np.all(att.estimates["hook_embed"][[0, 2, 3, 4, 5, 6, 7]] == 0)


def test_graddrop_leaves_the_last_layer_alone(tiny_hooked):
    """Dropping layer l's gradient cannot change a cell downstream of it: for the last MLP output
    every one of the L rows equals plain AtP, so GradDrop = L / (L - 1) * |AtP| there; upstream cells differ."""
    hm = tiny_hooked("qwen2", None)
    m = logit_diff(hm, 5, 7)
    att = A.attribute(hm, CLEAN, CORRUPT, m, hooks=HOOKS, method="atp*")
    n = hm.info.n_layers
    last = f"blocks.{n - 1}.hook_mlp_out"
    assert np.allclose(att.graddrop[last], n / (n - 1) * np.abs(att.estimates[last]), rtol=1e-4, atol=1e-7)
    first = "blocks.0.hook_resid_pre"
    assert not np.allclose(att.graddrop[first], n / (n - 1) * np.abs(att.estimates[first]), rtol=1e-3)


def test_check_reports_agreement_and_a_figure(tiny_hooked):
    hm = tiny_hooked("llama", None)
    m = logit_diff(hm, 5, 7)
    att = A.attribute_and_check(hm, CLEAN, CORRUPT, m, k=8)
    chk = att.check
    assert chk["n_checked"] == 16 and chk["n_top"] == 8 and chk["n_random"] == 8
    assert chk["spearman"] > 0.8 and chk["sign_agreement"] >= 0.8
    assert chk["max_missed_bound"] >= 0
    d = att.to_dict()
    json.dumps(d)
    assert set(d["check"]) >= {"spearman", "sign_agreement", "n_checked", "max_missed_bound"}
    assert {"hook", "layer", "position", "estimate"} <= set(d["estimates"][0])
    heads = [r for r in d["estimates"] if r["hook"] == "attn.hook_z"]
    assert len(heads) == hm.info.n_layers * len(CLEAN) * hm.info.n_heads and "head" in heads[0]
    fig = A.plot_check(chk)
    assert len(fig.axes[0].collections) == 2


def test_bad_inputs(tiny_hooked):
    hm = tiny_hooked("llama", None)
    m = logit_diff(hm, 5, 7)
    with pytest.raises(PromptError, match="equal lengths"):
        A.attribute(hm, CLEAN, CORRUPT[:-1], m)
    with pytest.raises(MlxInterpError, match="method"):
        A.attribute(hm, CLEAN, CORRUPT, m, method="eap")
    with pytest.raises(MlxInterpError, match="steps"):
        A.attribute(hm, CLEAN, CORRUPT, m, method="ig", steps=0)
    att = A.attribute(hm, CLEAN, CLEAN, m, hooks=["hook_resid_pre"])
    assert not att.values().any()
    with pytest.raises(MlxInterpError, match="identical"):
        A.check(hm, att, m)


def test_cli_attribute_json(tiny_dirs, tmp_path, capsys):
    from cli_runner import run

    model = str(tiny_dirs[("gemma3_text", None)])
    png = tmp_path / "scatter.png"
    code, out, err = run(["attribute", "--model", model, "--dtype", "native", "--clean", "The capital of France is",
                          "--corrupt", "The capital of Italy is", "--metric", " Paris", " Rome", "--check", "4",
                          "--figure", str(png), "--json"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert {"estimates", "check"} <= set(d)
    assert set(d["check"]) >= {"spearman", "sign_agreement", "n_checked", "max_missed_bound"}
    assert d["check"]["n_checked"] == 8 and png.stat().st_size > 0
    row = next(r for r in d["estimates"] if r["hook"] == "attn.hook_z")
    assert set(row) == {"hook", "layer", "position", "head", "estimate"}
    code, out, err = run(["attribute", "--model", model, "--dtype", "native", "--clean", "The capital of France is",
                          "--corrupt", "The capital of Italy is", "--metric", " Paris", " Rome", "--method", "ig",
                          "--hooks", "hook_resid_pre", "--top", "3"], capsys)
    assert code == 0 and "hook_resid_pre" in out


def test_cli_attribute_bad_inputs(tiny_dirs, capsys):
    from cli_runner import run

    base = ["attribute", "--model", "no-such-model", "--clean", "a", "--corrupt", "b", "--metric", " x", " y"]
    code, _, err = run(base + ["--method", "eap"], capsys)
    assert code == 2 and "--method 'eap'" in err and "Traceback" not in err  # checked before any model loads
    code, _, err = run(base + ["--check", "-1"], capsys)
    assert code == 2 and "--check" in err
    model = str(tiny_dirs[("llama", None)])
    code, _, err = run(["attribute", "--model", model, "--clean", "The capital of France is", "--corrupt",
                        "Once upon a time there was a small model", "--metric", " Paris", " Rome"], capsys)
    assert code == 2 and "equal lengths" in err


def test_cli_attribute_help_has_example(capsys):
    from cli_runner import run

    code, out, _ = run(["attribute", "--help"], capsys)
    assert code == 0 and "Example" in out and "mlxinterp attribute" in out


def test_study_end_to_end_on_a_tiny_model(tiny_dirs, tmp_path):
    """The suite runs the study; on random weights every pair is kept (require_correct off) to exercise the plumbing."""
    from mlxinterp.suite.runner import run_all

    model = str(tiny_dirs[("qwen2", None)])
    run_all([model], only="attribution_patching", out=tmp_path, n=6,
            sets=["attribution_patching.require_correct=False", "attribution_patching.check_k=3", "attribution_patching.circuit_pairs=2"])
    res = json.loads(next(tmp_path.rglob("attribution_patching/result.json")).read_text())["result"]
    summ = res["summary"]
    assert "6 / 6; 3 / 3" == summ["pairs"]
    for key in ("resid_spearman_all_layers", "check_spearman", "check_sign_agreement"):
        assert summ[key]["n"] >= 1 and -1 <= summ[key]["estimate"] <= 1
    assert len(res["pairs"]) == 6 and res["pairs"][0]["check"]["n_checked"] == 6
    assert len(res["circuits"]) == 2 and summ["circuit_edges"]["n"] == 2
    assert res["circuits"][0]["recovered"]["0"] == pytest.approx(0, abs=1e-4)
    assert next(tmp_path.rglob("attribution_patching/attribution_patching.png")).stat().st_size > 0
    # numbers recomputed from the per-pair records: the report split's median check Spearman and its interval
    from mlxinterp.analysis.stats import bootstrap_ci

    rhos = [p["check"]["spearman"] for p in res["pairs"][3:] if p["check"]["spearman"] is not None]
    assert summ["check_spearman"]["estimate"] == pytest.approx(float(np.median(rhos)))
    again = bootstrap_ci(rhos, np.median, seed=0)
    assert (summ["check_spearman"]["low"], summ["check_spearman"]["high"]) == pytest.approx((again.low, again.high))
    assert res["split"]["report"] == [p["clean"] for p in res["pairs"][3:]]
    verdict = res["prereg"]["checks"]["resid_spearman_large_layers"]
    assert verdict["verdict"] in ("PASS", "FAIL") and verdict["threshold"] == 0.8


# ---------------------------------------------------------------- edges and circuits (analysis.circuits)
from mlxinterp.analysis import circuits as C  # noqa: E402


@pytest.mark.parametrize("arch,bits", VARIANTS, ids=VARIANT_IDS)
def test_edge_patching_endpoints_and_eap_first_order(tiny_hooked, arch, bits):
    """Every edge kept = the clean run, none = the corrupted run; EAP is the first-order limit of one edge's patch."""
    hm = tiny_hooked(arch, bits)
    m = logit_diff(hm, 5, 7)
    g = C.build_graph(hm, CLEAN, CORRUPT, m)
    every = [tuple(e) for e in np.argwhere(g.valid())]
    none, full = C.run_edges(hm, g, m, [{}, {e: 1.0 for e in every}])
    span = abs(g.clean_metric - g.corrupt_metric)
    assert abs(none - g.corrupt_metric) <= 1e-4 * (1 + span)
    assert abs(full - g.clean_metric) <= 2e-3 * (1 + span), (full, g.clean_metric)
    S = C.edge_scores(hm, g, m, steps=None)
    top = sorted(every, key=lambda e: -abs(S[e]))[:5]
    t = 1e-3
    fd = (C.run_edges(hm, g, m, [{e: t} for e in top]) - g.corrupt_metric) / t
    est = np.array([S[e] for e in top])
    assert np.allclose(fd, est, rtol=5e-2, atol=5e-2 * np.abs(est).max()), (fd, est)
    assert S[~g.valid()].max(initial=0) == 0 and S[~g.valid()].min(initial=0) == 0


def test_find_circuit_curve_and_figure(tiny_hooked, tmp_path):
    hm = tiny_hooked("llama", None)
    m = logit_diff(hm, 5, 7)
    c = C.find_circuit(hm, CLEAN, CORRUPT, m, steps=8, target=0.8)
    d = c.to_dict()
    assert d["faithfulness"][0]["edges"] == 0 and abs(d["faithfulness"][0]["recovered"]) < 1e-4
    assert d["faithfulness"][-1]["edges"] == d["n_edges_total"] and abs(d["faithfulness"][-1]["recovered"] - 1) < 1e-3
    reached = [p["edges"] for p in d["faithfulness"] if p["recovered"] >= 0.8]
    assert d["n_edges"] == reached[0] and len(d["edges"]) == d["n_edges"]
    fig = C.plot_circuit(c, hm.info.n_layers)
    assert len(fig.axes) == 2


def test_cli_circuit_json(tiny_dirs, tmp_path, capsys):
    from cli_runner import run

    model = str(tiny_dirs[("qwen3", None)])
    png = tmp_path / "c.png"
    code, out, err = run(["circuit", "--model", model, "--dtype", "native", "--clean", "The capital of France is",
                          "--corrupt", "The capital of Italy is", "--metric", " Paris", " Rome", "--steps", "4",
                          "--figure", str(png), "--json"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert {"faithfulness", "edges", "n_edges", "clean_metric", "corrupt_metric"} <= set(d) and png.stat().st_size > 0
    code, out, _ = run(["circuit", "--help"], capsys)
    assert code == 0 and "Example" in out and "mlxinterp circuit" in out
    code, _, err = run(["circuit", "--model", "no-such", "--clean", "a", "--corrupt", "b", "--metric", "x", "y",
                        "--target", "2"], capsys)
    assert code == 2 and "--target" in err


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma2", "gemma3_text"])
def test_qk_fix_uses_the_exact_patched_pattern(tiny_hooked, arch):
    """AtP*'s QK-fix for a query / key node = (pattern after really patching it - pattern) . d metric / d pattern,
    the patched pattern read from the attention-pattern hook point of a forward with the q/k patch applied."""
    from mlxinterp.core import taps as T

    hm = tiny_hooked(arch, None)
    m = logit_diff(hm, 5, 7)
    att = A.attribute(hm, CLEAN, CORRUPT, m, hooks=["attn.hook_q", "attn.hook_k"], layers=[1, 2], method="atp*")
    A_, dA = A._pattern_grads(hm, CORRUPT, m, [1, 2])
    _, clean = hm.run_with_cache(np.array([CLEAN]).tolist(), names=["blocks.1.attn.hook_q", "blocks.2.attn.hook_k"])
    for name, l, pos, head in (("blocks.1.attn.hook_q", 1, 1, 2), ("blocks.2.attn.hook_k", 2, 1, 1)):
        value = clean[name][0, pos]  # [heads, Dh]
        _, store = hm.run_with_cache(np.array([CORRUPT]).tolist(), names=[f"blocks.{l}.attn.hook_pattern"],
                                     taps={name: T.Replace(value, positions=[pos], heads=[head])})
        patched = store[f"blocks.{l}.attn.hook_pattern"][0].transpose(1, 0, 2)  # [H, L, L]
        want = float(mx.sum((patched - A_[l]) * dA[l]).item())
        got = att.estimates[name][pos, head]
        assert got == pytest.approx(want, rel=1e-3, abs=1e-6), (name, got, want)
    # the other estimates of these hooks are the same computation; GradDrop scores are there as well
    assert att.graddrop is not None and att.estimates["blocks.1.attn.hook_q"].shape == (len(CLEAN), hm.info.n_heads)


@pytest.mark.parametrize("arch,bits", [("llama", None), ("qwen3", None), ("gemma2", None), ("gemma3_text", None),
                                       ("gemma3_text", 4)])
def test_path_patching_to_a_head_query_key_value_is_exact(tiny_hooked, arch, bits):
    """Sender -> one head's q/k/v input equals an independent exact patch: layer l's ln1 output replaced by
    the layer's own norm of (corrupted input + the sender's clean - corrupt difference, read from the caches),
    then every projection output but the receiver's restored to its corrupted value."""
    from mlxinterp.core import taps as T
    from mlxinterp.core.archs import text_model
    from mlxinterp.core.hooks import plain_call

    hm = tiny_hooked(arch, bits)
    m = logit_diff(hm, 5, 7)
    g = C.build_graph(hm, CLEAN, CORRUPT, m)
    H, Hkv = hm.info.n_heads, hm.info.n_kv_heads
    layer = 2
    names = [f"blocks.{layer}.hook_resid_pre", "blocks.0.hook_mlp_out"] + \
            [f"blocks.{layer}.attn.hook_{k}" for k in "qkv"]
    _, cache = hm.run_with_cache(mx.array([CLEAN, CORRUPT]), names=names)
    edges = [("L0MLP", f"L{layer}H1.q"), ("L0MLP", (layer, H - 1, "k")), ("L0MLP", f"L{layer}H0.v"),
             ("input", f"L{layer}H2.q"), ("L1H0", f"L{layer}H3.k")]
    got = C.path_patch_heads(hm, g, m, edges)
    ln1 = text_model(hm.model).layers[layer].input_layernorm

    def exact(sender: str, kind: str, head: int) -> float:
        if sender == "L0MLP":
            delta = cache["blocks.0.hook_mlp_out"][0] - cache["blocks.0.hook_mlp_out"][1]
        else:  # heads and the embedding: the graph's own differences (tested against exact edge patching above)
            delta = g.deltas[g.senders.index(sender)]
        x = cache[f"blocks.{layer}.hook_resid_pre"][1] + delta
        taps = {f"blocks.{layer}.ln1.hook_normalized": T.Replace(plain_call(ln1, x[None])[0])}
        for k in "qkv":
            keep = [head] if k == kind else []
            n_heads = H if k == "q" else Hkv
            others = [h for h in range(n_heads) if h not in keep]
            taps[f"blocks.{layer}.attn.hook_{k}"] = T.Replace(cache[f"blocks.{layer}.attn.hook_{k}"][1], heads=others)
        with hm.hooks(taps):
            logits = hm(mx.array([CORRUPT]))
        return float(np.array(m(logits[:, -1]))[0])

    kv = lambda h: h // (H // Hkv)  # noqa: E731
    want = [exact("L0MLP", "q", 1), exact("L0MLP", "k", kv(H - 1)), exact("L0MLP", "v", kv(0)),
            exact("input", "q", 2), exact("L1H0", "k", kv(3))]
    span = abs(g.clean_metric - g.corrupt_metric)
    assert np.allclose(got, want, atol=1e-4 * (1 + span)), (got, want)
    assert np.abs(np.array(want) - g.corrupt_metric).max() > 1e-6  # the patches do something
    with pytest.raises(MlxInterpError, match="does not exist"):
        C.path_patch_heads(hm, g, m, [(f"L{layer}H0", f"L{layer}H1.q")])
    with pytest.raises(MlxInterpError, match="out of range"):
        C.path_patch_heads(hm, g, m, [("L0MLP", "L2H1.x")])
    with pytest.raises(MlxInterpError, match="not allowed"):
        C.path_patch_heads(hm, g, m, [("L0MLP", "head 1 query")])

"""The hook tests on every further architecture in the hook table (tiny random models, float and 4-bit).

tests/test_hooks.py runs on the six families every other test uses; this file
re-runs its family-independent tests on tiny.MORE_ARCHS (mistral, gemma,
smollm3, starcoder2, phi3, olmo2/3, cohere/2, qwen3_moe, mixtral) and replaces
the ones that assume a llama/gemma block with versions that read the block
layout from the hook table, so a row that points at the wrong module fails.
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import tiny
from test_hooks import (  # noqa: F401  (collected here again, with this file's `hm`)
    IDS,
    maxdiff,
    test_add_tap_equals_manual_sum,
    test_generate_batch_matches_single_generation,
    test_generation_captures_match_a_full_forward,
    test_generation_phases,
    test_noop_taps_are_bit_identical,
    test_noop_taps_bit_identical_in_generation,
    test_patching_with_own_cache_is_identity,
    test_taps_removed_after_context_even_on_error,
    test_two_equal_taps_on_one_hook_attach_and_detach,
)
from test_hooks import SHORT
from test_hooks import test_ablate_project_and_heads as _ablate_project_and_heads
from test_hooks import test_resid_mid_edit_alone_changes_the_logits as _resid_mid_alone
from test_hooks import test_resid_mid_edit_reaches_the_residual_stream as _resid_mid_reaches

from mlxinterp.core.archs import ARCHS, site_scale
from mlxinterp.core.hooks import load
from mlxinterp.core.loading import SUPPORTED_ARCHS

MORE = [(a, b) for a in tiny.MORE_ARCHS for b in (None, 4)]


@pytest.fixture(scope="session")
def more_hooked(more_dirs):
    cache: dict = {}

    def get(arch, bits):
        if (arch, bits) not in cache:
            cache[(arch, bits)] = load(str(more_dirs[(arch, bits)]), dtype="native")
        return cache[(arch, bits)]
    return get


@pytest.fixture(params=MORE, ids=[f"{a}-{b or 'f'}" for a, b in MORE])
def hm(request, more_hooked):
    return more_hooked(*request.param)


def _parallel(hm) -> bool:
    return hm.spec.family == "parallel"


def test_every_table_row_is_loadable_and_tested():
    assert set(SUPPORTED_ARCHS) == set(ARCHS)
    tested = set(tiny.ARCHS) | set(tiny.MORE_ARCHS) | {"gemma3"}  # gemma3 = gemma3_text inside a wrapper
    assert set(ARCHS) <= tested


def test_hook_names_cover_every_layer(hm):
    always = ["hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post", "attn.hook_z", "attn.hook_out",
              "mlp.hook_out"]
    for i in range(hm.info.n_layers):
        for s in always + ([] if _parallel(hm) else ["hook_resid_mid"]):
            assert f"blocks.{i}.{s}" in hm.hook_names
    assert {"hook_embed", "ln_final.hook_normalized", "hook_logits"} <= set(hm.hook_names)
    assert hm.hook_shape("blocks.0.attn.hook_z") == (hm.info.n_heads, hm.info.head_dim)


def test_last_resid_post_through_unembed_is_logits(hm):
    logits, cache = hm.run_with_cache(mx.array([IDS]))
    out = hm.unembed(cache[f"blocks.{hm.info.n_layers - 1}.hook_resid_post"])
    assert maxdiff(out, logits) < 1e-5  # unembed computes in float32; tiny models are float32 too
    assert maxdiff(hm.unembed(cache["ln_final.hook_normalized"], normed=False), logits) < 1e-5


def test_hook_z_through_o_proj_is_attention_output(hm):
    _, cache = hm.run_with_cache(mx.array([IDS]))
    for i in range(hm.info.n_layers):
        block = hm.model.model.layers[i]
        z = cache[f"blocks.{i}.attn.hook_z"]
        raw = block.self_attn.o_proj(z.reshape(1, len(IDS), -1))
        assert maxdiff(raw, cache[f"blocks.{i}.attn.hook_out"]) == 0.0
        path = hm.spec.sites["hook_attn_out"].path  # a post-norm (gemma, olmo2) or the attention itself
        added = raw if path == "self_attn" else getattr(block, path)(raw)
        added = added * site_scale(block, hm.spec.sites["hook_attn_out"])  # Granite's residual_multiplier
        assert maxdiff(added, cache[f"blocks.{i}.hook_attn_out"]) == 0.0


def test_residual_decomposition_matches_captures(hm):
    _, c = hm.run_with_cache(mx.array([IDS]))
    for i in range(hm.info.n_layers):
        pre, attn, mlp = (c[f"blocks.{i}.{s}"] for s in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out"))
        if _parallel(hm):  # attention and MLP both read resid_pre (Cohere)
            assert maxdiff(attn + mlp + pre, c[f"blocks.{i}.hook_resid_post"]) == 0.0
            continue
        assert maxdiff(pre + attn, c[f"blocks.{i}.hook_resid_mid"]) == 0.0
        assert maxdiff(c[f"blocks.{i}.hook_resid_mid"] + mlp, c[f"blocks.{i}.hook_resid_post"]) == 0.0
        if i + 1 < hm.info.n_layers:
            assert mx.array_equal(c[f"blocks.{i}.hook_resid_post"], c[f"blocks.{i + 1}.hook_resid_pre"])


def test_mlp_hook_points_match_manual_computation(hm):
    """hook_pre / hook_post against the MLP recomputed from its own weights (and the MLP input)."""
    if hm.spec.router:
        pytest.skip("MoE MLPs: tests/test_moe.py")
    _, c = hm.run_with_cache(mx.array([IDS]))
    mlp = hm.model.model.layers[1].mlp
    x = c["blocks.1.ln1.hook_normalized"] if _parallel(hm) else (
        c["blocks.1.hook_resid_mid"] if hm.spec.family == "olmo2" else c["blocks.1.ln2.hook_normalized"])
    if hm.info.arch == "starcoder2":
        assert maxdiff(mlp.c_fc(x), c["blocks.1.mlp.hook_pre"]) == 0.0
        manual = nn.gelu(mlp.c_fc(x))
    elif hm.info.arch == "phi3":  # fused gate_up_proj: gate is the first half
        gate, up = mx.split(mlp.gate_up_proj(x), 2, axis=-1)
        manual = nn.silu(gate) * up
    else:
        act = nn.gelu if hm.info.arch == "gemma" else nn.silu
        manual = act(mlp.gate_proj(x)) * mlp.up_proj(x)
        assert maxdiff(mlp.gate_proj(x), c["blocks.1.mlp.hook_pre"]) == 0.0
    assert maxdiff(manual, c["blocks.1.mlp.hook_post"]) < 1e-5
    assert maxdiff(mlp(x), c["blocks.1.mlp.hook_out"]) == 0.0


def test_resid_mid_edit_reaches_the_residual_stream(hm):
    if _parallel(hm):
        pytest.skip("parallel attention/MLP blocks have no resid_mid")
    _resid_mid_reaches(hm)


def test_resid_mid_edit_alone_changes_the_logits(hm):
    if _parallel(hm):
        pytest.skip("parallel attention/MLP blocks have no resid_mid")
    _resid_mid_alone(hm)


def test_ablate_project_and_heads(hm):
    if _parallel(hm):
        pytest.skip("parallel attention/MLP blocks have no resid_mid")
    _ablate_project_and_heads(hm)


def test_parallel_blocks_ablating_mlp_leaves_attention_sum(hm):
    if not _parallel(hm):
        pytest.skip("Cohere-style parallel blocks only")
    from mlxinterp.core import taps as T

    with hm.hooks({"blocks.2.hook_mlp_out": T.Ablate("zero")}):
        _, c = hm.run_with_cache(mx.array([IDS]), names="blocks.2.")
    assert maxdiff(c["blocks.2.hook_resid_pre"] + c["blocks.2.hook_attn_out"], c["blocks.2.hook_resid_post"]) == 0.0


def test_missing_hook_point_is_a_clear_error(hm):
    from mlxinterp.core.errors import HookNameError

    absent = [s for s in ("hook_resid_mid", "attn.hook_q", "ln1.hook_normalized") if f"blocks.0.{s}" not in hm.hook_names]
    for s in absent:
        with pytest.raises(HookNameError):
            hm.point(f"blocks.0.{s}")


def test_left_padding_leaves_each_sequence_unchanged(hm):
    """As in test_hooks, with a random steering vector: LayerNorm models (starcoder2, cohere) remove a
    constant one, so the all-ones vector of test_hooks changes nothing there by construction."""
    from mlxinterp.core import taps as T

    l_short, _ = hm.run_with_cache(mx.array([SHORT]))
    l_long, _ = hm.run_with_cache(mx.array([IDS]))
    logits, c = hm.run_with_cache([IDS, SHORT])
    pad = c.left_padding[1]
    assert maxdiff(logits[0], l_long[0]) < 1e-4 and maxdiff(logits[1, pad:], l_short[0]) < 1e-4
    v = mx.random.normal((hm.info.d_model,), key=mx.random.key(7))
    with hm.hooks({"blocks.0.hook_resid_post": T.Add(v, 5.0, positions=1)}):
        batched = hm([IDS, SHORT])
        single = hm(mx.array([SHORT]))
    assert maxdiff(batched[1, pad:], single[0]) < 1e-4
    assert maxdiff(single, l_short) > 1e-3


def test_explicit_attention_equals_fused_or_is_not_offered(hm):
    """Attention-pattern points: where a family offers them, the explicit path equals the fused kernel within
    tests/test_patterns.py's stated tolerance (left padding included); where it cannot (fused qkv, Phi-3),
    asking for one is a clear error."""
    from test_patterns import LONG, SHORT, _close, _explicit_everywhere

    from mlxinterp.core.errors import HookNameError

    if not [n for n in hm.hook_names if n.endswith("attn.hook_pattern")]:
        with pytest.raises(HookNameError):
            hm.point("blocks.0.attn.hook_pattern")
        return
    ref = hm(mx.array([LONG]))
    with hm.hooks(_explicit_everywhere(hm)):
        got = hm(mx.array([LONG]))
        padded = hm([LONG, SHORT])
    assert _close(got, ref)
    plain = hm([LONG, SHORT])
    assert _close(padded[0], plain[0]) and _close(padded[1, -len(SHORT):], plain[1, -len(SHORT):])
    assert mx.array_equal(hm(mx.array([LONG])), ref)  # the fused kernel is back after the context


def test_heads_and_components_add_up_to_the_residual_and_the_logit(hm):
    """Per-head results sum to hook_attn_out, the components to the last residual,
    and their direct logit attributions to the real logit difference: so a family's sublayer scale (Granite's
    residual_multiplier) and constant logit factor (Cohere's logit_scale, Granite's logits_scaling) are in
    the readouts, not only in the forward."""
    from mlxinterp.analysis import decompose as D

    logits, cache = hm.run_with_cache(mx.array([IDS]))
    n, H = hm.info.n_layers, hm.info.n_heads
    heads, _ = D.stack_head_results(cache)
    per_layer = np.array(heads.reshape(n, H, *heads.shape[1:]).sum(1))
    for l in range(n):
        attn = np.array(cache[f"blocks.{l}.hook_attn_out"].astype(mx.float32))
        o_proj = hm.block(l).self_attn.o_proj
        if "bias" in o_proj:  # StarCoder 2: the output bias is kept apart from the heads (as TransformerLens's b_O)
            attn = attn - np.array(o_proj.bias.astype(mx.float32)) * site_scale(hm.block(l), hm.spec.sites["hook_attn_out"])
        assert np.allclose(per_layer[l], attn, rtol=1e-4, atol=1e-4 * np.abs(attn).max()), l
    comps, _ = D.decompose_resid(cache)
    final = np.array(cache[f"blocks.{n - 1}.hook_resid_post"].astype(mx.float32))
    assert np.allclose(np.array(comps.sum(0)), final, rtol=1e-4, atol=1e-4 * np.abs(final).max())
    dla = float(np.array(D.logit_attrs(cache, comps, 5, incorrect=7)).sum())
    real = float(logits[0, -1, 5] - logits[0, -1, 7])
    norm = hm.model.model.norm
    if "bias" in norm:  # a LayerNorm bias is no component's (decompose.apply_final_ln)
        w, _ = hm.unembedding_rows([5, 7])
        real -= float(mx.sum((w[0] - w[1]) * norm.bias.astype(mx.float32)))
    assert abs(dla - real) <= 1e-3 * max(1.0, abs(real)), (dla, real)

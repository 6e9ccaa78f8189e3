"""Mixture-of-experts hook points and expert taps on tiny qwen3_moe and mixtral models (float and 4-bit).

Each test recomputes the MoE block from its own weights (router + SwitchGLU
called directly), so a router hook in the wrong place, selected experts that
differ from mlx-lm's, or an expert tap that leaks fails.
"""
from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import tiny
from test_hooks import IDS, maxdiff

from mlxinterp.core import moe
from mlxinterp.core import taps as T
from mlxinterp.core.errors import TapError
from mlxinterp.core.hooks import ActivationCache, load

VARIANTS = [(a, b) for a in tiny.MOE_ARCHS for b in (None, 4)]


@pytest.fixture(scope="module", params=VARIANTS, ids=[f"{a}-{b or 'f'}" for a, b in VARIANTS])
def hm(request, tmp_path_factory):
    arch, bits = request.param
    return load(str(tiny.write_tiny_model(tmp_path_factory.mktemp(arch) / "m", arch, bits)), dtype="native")


def _block(hm, i):
    layer = hm.model.model.layers[i]
    return layer.mlp if hm.info.arch == "qwen3_moe" else layer.block_sparse_moe


def test_moe_hook_points_exist_with_their_shapes(hm):
    k, E, d = hm.info.experts_per_token, hm.info.n_experts, hm.info.d_model
    assert (k, E) == (2, 4)
    assert hm.hook_shape("blocks.0.mlp.hook_router_logits") == (E,)
    assert hm.hook_shape("blocks.0.mlp.hook_expert_out") == (k, d)


def test_router_logits_and_expert_outputs_recompose_the_block(hm):
    _, c = hm.run_with_cache(mx.array([IDS]))
    for i in range(hm.info.n_layers):
        blk = _block(hm, i)
        x = c[f"blocks.{i}.ln2.hook_normalized"]
        logits = c[f"blocks.{i}.mlp.hook_router_logits"]
        assert maxdiff(blk.gate(x), logits) == 0.0
        inds, scores = moe.selected_experts(hm, logits)
        experts = c[f"blocks.{i}.mlp.hook_expert_out"]
        assert maxdiff(blk.switch_mlp(x, inds), experts) == 0.0  # same indices, same order as mlx-lm's
        mixed = (experts * scores[..., None]).sum(axis=-2)
        assert maxdiff(mixed, c[f"blocks.{i}.mlp.hook_out"]) < 1e-5


def test_noop_taps_on_moe_points_are_bit_identical(hm):
    ref = hm.model(mx.array([IDS]))
    names = [n for n in hm.hook_names if "router" in n or "expert" in n]
    with hm.hooks({n: T.Scale(1.0) for n in names}):
        assert mx.array_equal(hm(mx.array([IDS])), ref)


def test_ablated_expert_is_never_selected_and_output_matches_manual(hm):
    store = ActivationCache(hm)
    taps = {"blocks.1.mlp.hook_router_logits": [moe.AblateExperts(experts=[0]), T.Capture(store=store)],
            "blocks.1.ln2.hook_normalized": T.Capture(store=store),
            "blocks.1.mlp.hook_out": T.Capture(store=store)}
    with hm.hooks(taps):
        hm(mx.array([IDS]))
    inds, scores = moe.selected_experts(hm, store["blocks.1.mlp.hook_router_logits"])
    assert not bool((inds == 0).any())
    blk = _block(hm, 1)
    x = store["blocks.1.ln2.hook_normalized"]
    # the router among experts 1..3 only, computed without any tap
    logits = blk.gate(x)[..., 1:]
    sub_inds, sub_scores = moe.route(hm.spec.router, logits, 2, bool(getattr(hm.model.args, "norm_topk_prob", False)))
    manual = (blk.switch_mlp(x, sub_inds + 1) * sub_scores[..., None]).sum(axis=-2)
    assert maxdiff(manual, store["blocks.1.mlp.hook_out"]) < 1e-5


def test_forced_expert_is_always_selected_at_chosen_positions(hm):
    _, clean = hm.run_with_cache(mx.array([IDS]), names=["blocks.2.mlp.hook_router_logits"])
    never = np.setdiff1d(np.arange(4), np.array(moe.selected_experts(hm, clean["blocks.2.mlp.hook_router_logits"])[0][0, 3]))
    e = int(never[0])  # an expert position 3 did not choose
    store = ActivationCache(hm)
    with hm.hooks({"blocks.2.mlp.hook_router_logits": [moe.ForceExperts(experts=[e], positions=[3]),
                                                       T.Capture(store=store)]}):
        out = hm(mx.array([IDS]))
    inds = np.array(moe.selected_experts(hm, store["blocks.2.mlp.hook_router_logits"])[0])[0]
    assert e in inds[3]
    clean_inds = np.array(moe.selected_experts(hm, clean["blocks.2.mlp.hook_router_logits"])[0])[0]
    others = [p for p in range(len(IDS)) if p != 3]
    assert np.array_equal(np.sort(inds[others], -1), np.sort(clean_inds[others], -1))
    assert maxdiff(out[0, :3], hm.model(mx.array([IDS]))[0, :3]) == 0.0  # causal: earlier positions untouched


def test_expert_counts_sum_to_k_per_token(hm):
    _, c = hm.run_with_cache(mx.array([IDS]), names=["blocks.0.mlp.hook_router_logits"])
    counts = np.array(moe.expert_counts(hm, c["blocks.0.mlp.hook_router_logits"]))
    assert counts.sum() == 2 * len(IDS) and counts.shape == (4,)


def test_expert_taps_reject_bad_input(hm):
    with pytest.raises(TapError, match="expert ids in 0..3"):
        with hm.hooks({"blocks.0.mlp.hook_router_logits": moe.AblateExperts(experts=[9])}):
            pass
    with pytest.raises(TapError, match="router logits"):
        with hm.hooks({"blocks.0.hook_resid_post": moe.ForceExperts(experts=[1])}):
            pass


def test_dense_model_has_no_router(tiny_hooked):
    with pytest.raises(TapError, match="not a mixture-of-experts"):
        moe.selected_experts(tiny_hooked("llama", None), mx.zeros((1, 1, 4)))

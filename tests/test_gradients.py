"""Gradients at hook points match finite differences through the real forward, on every tiny architecture."""
from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from conftest import VARIANT_IDS, VARIANTS
from mlxinterp.analysis import gradients as G
from mlxinterp.analysis.patching import logit_diff
from mlxinterp.core import taps as T
from mlxinterp.core.errors import HookNameError, MlxInterpError

IDS = [1, 287, 414, 417, 279, 280, 300, 301]
SHORT = [1, 290, 414, 417, 279]
HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.1.hook_resid_mid", "blocks.2.mlp.hook_post",
         "blocks.2.hook_attn_out", "blocks.3.hook_mlp_out", "blocks.3.attn.hook_v", "ln_final.hook_normalized"]


def metric(logits):
    return logits[:, 5] - 0.5 * logits[:, 7]


def _metric_with(hm, ids, name, delta) -> np.ndarray:
    """The metric with `delta` added at `name` through an ordinary Add tap (independent of the probes)."""
    with hm.hooks({name: T.Add(delta)}):
        logits = hm(ids)
    return np.array(metric(logits[:, -1].astype(mx.float32)), dtype=np.float64)


def _fd_check(hm, prompts, rng):
    res = G.value_and_grad(hm, prompts, metric, at=HOOKS)
    batch = hm.tokens(prompts)
    real = np.array(batch.ids.shape[1] - np.arange(batch.ids.shape[1])[None, :] <= np.array(batch.lengths)[:, None])
    for name in HOOKS:
        a, g = np.array(res.acts[name]), np.array(res.grads[name])
        assert g.shape == a.shape == (len(batch.lengths), batch.ids.shape[1], *hm.hook_shape(name))
        u = rng.normal(size=a.shape).astype(np.float32)
        u *= real.reshape(real.shape + (1,) * (a.ndim - 2))  # Add with a [B, L, ...] value touches padding too
        h = 1e-2 * np.linalg.norm(a) / np.linalg.norm(u)
        up = _metric_with(hm, batch.ids if not any(batch.left_padding) else prompts, name, mx.array(h * u))
        down = _metric_with(hm, batch.ids if not any(batch.left_padding) else prompts, name, mx.array(-h * u))
        fd = (up - down) / (2 * h)
        an = (g.astype(np.float64) * u).reshape(len(g), -1).sum(1)
        scale = np.abs(an).max() + np.abs(fd).max()
        assert np.allclose(an, fd, rtol=2e-2, atol=2e-2 * scale), (name, an, fd)
    return res


@pytest.mark.parametrize("arch,bits", VARIANTS, ids=VARIANT_IDS)
def test_gradients_match_finite_differences(tiny_hooked, arch, bits):
    hm = tiny_hooked(arch, bits)
    rng = np.random.default_rng(0)
    res = _fd_check(hm, mx.array([IDS]), rng)
    assert np.isclose(res.value[0], float(metric(hm(mx.array([IDS]))[:, -1])[0]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch,bits", VARIANTS, ids=VARIANT_IDS)
def test_padded_batch_rows_equal_single_prompts(tiny_hooked, arch, bits):
    """Left padding: each row's gradient is that prompt's own, and padding columns get zero."""
    hm = tiny_hooked(arch, bits)
    names = ["blocks.1.hook_resid_pre", "blocks.2.attn.hook_z"]
    both = G.value_and_grad(hm, [IDS, SHORT], metric, at=names)
    for row, ids in enumerate([IDS, SHORT]):
        one = G.value_and_grad(hm, [ids], metric, at=names)
        assert np.isclose(both.value[row], one.value[0], rtol=1e-4, atol=1e-4)
        for n in names:
            g_b, g_1 = np.array(both.grads[n][row]), np.array(one.grads[n][0])
            pad = g_b.shape[0] - g_1.shape[0]
            assert np.abs(g_b[:pad]).max(initial=0) == 0.0
            assert np.allclose(g_b[pad:], g_1, rtol=1e-3, atol=1e-3 * np.abs(g_1).max()), n


def test_padded_batch_matches_finite_differences(tiny_hooked):
    _fd_check(tiny_hooked("gemma3_text", None), [IDS, SHORT], np.random.default_rng(1))


def test_vocab_metric_and_weights(tiny_hooked):
    """A VocabMetric unembeds two rows only and gives the same gradient; weight 0 removes a row."""
    hm = tiny_hooked("gemma2", None)
    ld = logit_diff(hm, 5, 7)
    full = G.value_and_grad(hm, [IDS, IDS], lambda z: z[:, 5] - z[:, 7], at="hook_resid_post")
    vm = G.value_and_grad(hm, [IDS, IDS], ld, at="hook_resid_post", weights=[1.0, 0.0])
    assert np.allclose(full.value, vm.value, atol=1e-5)
    for n, g in full.grads.items():
        assert np.allclose(np.array(vm.grads[n][0]), np.array(g[0]), atol=1e-5 * float(mx.abs(g).max()) + 1e-7)
        assert float(mx.abs(vm.grads[n][1]).max()) == 0.0


def test_bad_inputs(tiny_hooked):
    hm = tiny_hooked("llama", None)
    with pytest.raises(HookNameError):
        G.value_and_grad(hm, [IDS], metric, at=["blocks.9.hook_resid_pre"])
    with pytest.raises(MlxInterpError, match="one number per prompt"):
        G.value_and_grad(hm, [IDS], lambda z: z, at="blocks.0.hook_resid_pre")
    with pytest.raises(MlxInterpError, match="not callable"):
        G.value_and_grad(hm, [IDS], "logit", at="blocks.0.hook_resid_pre")
    with pytest.raises(MlxInterpError, match="weights"):
        G.value_and_grad(hm, [IDS], metric, at="blocks.0.hook_resid_pre", weights=[1.0, 2.0])


def test_no_probe_left_behind(tiny_hooked):
    """After a gradient run the model is untouched: logits bit-identical to before."""
    hm = tiny_hooked("qwen3", None)
    before = np.array(hm(mx.array([IDS])))
    G.grad(hm, [IDS], metric, at=HOOKS)
    assert np.array_equal(before, np.array(hm(mx.array([IDS]))))


# ---------------------------------------------------------------- cache decompositions (analysis.decompose)
from mlxinterp.analysis import decompose as D  # noqa: E402


@pytest.mark.parametrize("arch,bits", VARIANTS, ids=VARIANT_IDS)
def test_decompositions_sum_to_the_residual_and_the_logits(tiny_hooked, arch, bits):
    hm = tiny_hooked(arch, bits)
    logits, cache = hm.run_with_cache([IDS, SHORT])
    n = hm.info.n_layers
    final = np.array(cache[f"blocks.{n - 1}.hook_resid_post"].astype(mx.float32))
    tol = dict(rtol=1e-4, atol=1e-4 * np.abs(final).max())
    comps, labels = D.decompose_resid(cache)
    assert comps.shape == (1 + 2 * n, 2, len(IDS), hm.info.d_model) and labels[:3] == ["embed", "0_attn_out", "0_mlp_out"]
    assert np.allclose(np.array(comps.sum(0)), final, **tol)
    acc, _ = D.accumulated_resid(cache)
    assert np.array_equal(np.array(acc[-1]), final) and acc.shape[0] == n + 1
    heads, hl = D.stack_head_results(cache)
    assert heads.shape[0] == n * hm.info.n_heads and hl[1] == "L0H1"
    per_layer = np.array(heads.reshape(n, hm.info.n_heads, *heads.shape[1:]).sum(1))
    for l in range(n):
        attn = np.array(cache[f"blocks.{l}.hook_attn_out"].astype(mx.float32))
        assert np.allclose(per_layer[l], attn, rtol=1e-4, atol=1e-4 * np.abs(attn).max()), l
    # direct logit attribution sums to the real logit at the last position (before Gemma 2's soft-cap)
    tok, foil = 5, 7
    dla = np.array(D.logit_attrs(cache, comps, tok, incorrect=foil)).sum(0)
    real = np.array(logits[:, -1, tok] - logits[:, -1, foil], dtype=np.float64)
    cap = getattr(hm.model, "final_logit_softcapping", None)
    if cap:
        pre = [np.array(logits[:, -1, t], dtype=np.float64) for t in (tok, foil)]
        real = cap * (np.arctanh(pre[0] / cap) - np.arctanh(pre[1] / cap))
    assert np.allclose(dla, real, rtol=1e-3, atol=1e-3 * np.abs(real).max()), (dla, real)
    # normed accumulated residual at the last layer is the logit lens through the real norm
    normed, _ = D.accumulated_resid(cache, apply_ln=True)
    ref = np.array(cache["ln_final.hook_normalized"].astype(mx.float32))
    assert np.allclose(np.array(normed[-1]), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_decompose_needs_the_hooks(tiny_hooked):
    hm = tiny_hooked("llama", None)
    _, cache = hm.run_with_cache([IDS], names="hook_resid_pre")
    with pytest.raises(MlxInterpError, match="not in this cache"):
        D.decompose_resid(cache)
    with pytest.raises(MlxInterpError, match="one per row"):
        full = hm.run_with_cache([IDS])[1]
        D.logit_attrs(full, D.accumulated_resid(full)[0], [1, 2, 3])

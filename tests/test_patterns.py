"""Attention scores and patterns as ordinary hook points: listed, captured and patched through `hm.hooks` /
`run_with_cache` like every other point; the explicit path equals the fused kernel within a stated tolerance."""
from __future__ import annotations

import sys

import mlx.core as mx
import numpy as np
import pytest

from conftest import VARIANT_IDS, VARIANTS
from mlxinterp.analysis import attention
from mlxinterp.analysis.gradients import value_and_grad
from mlxinterp.analysis.patching import logit_diff
from mlxinterp.core import metadata
from mlxinterp.core import patterns as P
from mlxinterp.core import taps as T
from mlxinterp.core.errors import HookNameError, TapError

# 12 tokens: longer than gemma3_text's tiny sliding window (8), so windows are exercised
LONG = [1, 287, 414, 417, 279, 280, 300, 301, 290, 288, 302, 303]
SHORT = [1, 290, 414, 417, 279]
# Stated tolerance of explicit vs fused attention (float32 and 4-bit weights with float32 activations):
# max |logit difference| <= 1e-4 * (1 + max |logit|).
TOL = 1e-4


def _explicit_everywhere(hm):
    """An identity tap at every layer's pattern: every attention runs the explicit path."""
    return {f"blocks.{l}.attn.hook_pattern": T.Fn(fn=lambda a, ctx: a) for l in range(hm.info.n_layers)}


def _close(a, b) -> bool:
    a, b = np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)
    return np.abs(a - b).max() <= TOL * (1 + np.abs(b).max())


def test_pattern_points_are_listed_like_every_other(tiny_hooked, tiny_dirs):
    hm = tiny_hooked("llama", None)
    for l in range(hm.info.n_layers):
        for s in P.SUFFIXES:
            assert hm.point(f"blocks.{l}.{s}").kind == P.KIND
            assert hm.hook_shape(f"blocks.{l}.{s}") == (hm.info.n_heads, 0)
    assert hm.names("hook_pattern") == [f"blocks.{l}.attn.hook_pattern" for l in range(hm.info.n_layers)]
    # `mlxinterp hooks` (read from the files) lists the same points in the same order
    assert list(metadata.describe(str(tiny_dirs[("llama", None)]))["hook_shapes"]) == hm.hook_names
    assert hm.point("blocks.-1.attn.hook_attn_scores").name == f"blocks.{hm.info.n_layers - 1}.attn.hook_attn_scores"


@pytest.mark.parametrize("arch,bits", VARIANTS, ids=VARIANT_IDS)
def test_explicit_attention_equals_fused(tiny_hooked, arch, bits):
    hm = tiny_hooked(arch, bits)
    ref = plain = hm(mx.array([LONG]))
    scores = [f"blocks.{l}.attn.hook_attn_scores" for l in range(hm.info.n_layers)]
    got, cache = hm.run_with_cache(mx.array([LONG]), names=scores, taps=_explicit_everywhere(hm))
    assert set(cache.keys()) == set(scores)  # every layer went through the explicit path
    assert _close(got, ref)
    # left padding (per-row masks, GQA mask on gemma2): real positions agree
    ref = hm([LONG, SHORT])
    with hm.hooks(_explicit_everywhere(hm)):
        got = hm([LONG, SHORT])
    assert np.isfinite(np.array(got)).all()
    assert _close(got[0], ref[0]) and _close(got[1, -len(SHORT):], ref[1, -len(SHORT):])
    # no tap: after the context the fused kernel is back, bit for bit
    assert mx.array_equal(hm(mx.array([LONG])), plain)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3_text"])
def test_explicit_attention_with_the_kv_cache(tiny_hooked, arch):
    """Generation (mlx-lm's KV cache, one token at a time) gives the same tokens and the same step logits;
    a pattern captured during generation joins its chunks (keys zero-padded)."""
    from mlx_lm.models.cache import make_prompt_cache

    from mlxinterp.core.hooks import ActivationCache

    hm = tiny_hooked(arch, None)
    plain = hm.generate(LONG, max_tokens=6)
    store = ActivationCache(hm)
    taps = {**_explicit_everywhere(hm), "blocks.1.attn.hook_pattern": T.Capture(store=store)}
    got = hm.generate(LONG, max_tokens=6, taps=taps)
    assert got.tokens == plain.tokens
    pat = np.array(store["blocks.1.attn.hook_pattern"])  # [1, positions run, H, keys]
    n = pat.shape[1]  # the prompt, then one position per step (mlx-lm also runs the last sampled token)
    assert n >= len(LONG) + 5 and pat.shape == (1, n, hm.info.n_heads, n)
    assert np.allclose(pat.sum(-1), 1, atol=1e-5) and np.allclose(np.triu(pat[0].transpose(1, 0, 2), 1), 0)

    def steps():
        cache = make_prompt_cache(hm.model)
        hm.model(mx.array([LONG[:9]]), cache=cache)
        a = hm.model(mx.array([LONG[9:11]]), cache=cache)  # two queries against 9 cached keys: causal offset
        return a, hm.model(mx.array([LONG[11:]]), cache=cache)

    ref = steps()
    with hm.hooks(_explicit_everywhere(hm)):
        got = steps()
    assert _close(got[0], ref[0]) and _close(got[1], ref[1])


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma2", "gemma3_text"])
def test_captured_pattern_matches_the_recomputed_one(tiny_hooked, arch):
    """The hooked pattern equals analysis.attention's recomputation from q and k, and its rows sum to 1."""
    hm = tiny_hooked(arch, None)
    pats = P.capture_patterns(hm, mx.array([LONG]))
    _, cache = hm.run_with_cache(mx.array([LONG]), names=lambda n: "attn.hook_q" in n or "attn.hook_k" in n)
    for l, p in pats.items():
        want = attention.pattern(hm, l, cache[f"blocks.{l}.attn.hook_q"], cache[f"blocks.{l}.attn.hook_k"])
        assert p.shape == (1, hm.info.n_heads, len(LONG), len(LONG))
        assert np.allclose(np.array(p), np.array(want), atol=1e-5), l
        assert np.allclose(np.array(p).sum(-1), 1, atol=1e-5)
    scores = P.capture_patterns(hm, mx.array([LONG]), layers=[1], scores=True)[1]
    assert np.allclose(np.array(mx.softmax(scores, axis=-1)), np.array(pats[1]), atol=1e-5)


def test_patching_a_pattern(tiny_hooked):
    """Replacing a pattern with itself changes nothing; a uniform pattern for one head changes the logits,
    and positions= / heads= restrict the edit as on every hook point."""
    hm = tiny_hooked("gemma3_text", None)
    name = "blocks.1.attn.hook_pattern"
    base, cache = hm.run_with_cache(mx.array([LONG]), names=[name])
    own = cache[name]  # [1, L, H, L]
    with hm.hooks({name: T.Replace(own)}):
        same = hm(mx.array([LONG]))
    assert _close(same, base)
    causal = np.tril(np.ones((len(LONG), len(LONG)), np.float32))
    uniform = causal / causal.sum(-1, keepdims=True)
    value = np.broadcast_to(uniform[:, None, :], own.shape[1:]).copy()
    moved, c2 = hm.run_with_cache(mx.array([LONG]), names=[name],
                                  taps={name: T.Replace(mx.array(value), heads=[2], positions=[-1])})
    after = np.array(c2[name])
    assert np.allclose(after[0, -1, 2], uniform[-1]) and np.allclose(after[0, :-1], np.array(own)[0, :-1])
    assert np.allclose(after[0, -1, [0, 1, 3]], np.array(own)[0, -1, [0, 1, 3]])
    assert not _close(moved[0, -1], base[0, -1]) and _close(moved[0, :-1], base[0, :-1])


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_gradient_at_the_pattern_matches_finite_differences(tiny_hooked, arch):
    """value_and_grad at a pattern point (a probe like any hook's) equals a central finite difference."""
    hm = tiny_hooked(arch, None)
    m = logit_diff(hm, 5, 7)
    name = "blocks.1.attn.hook_pattern"
    res = value_and_grad(hm, mx.array([LONG]), m, [name])
    g = np.array(res.grads[name])
    assert g.shape == (1, len(LONG), hm.info.n_heads, len(LONG))
    q, h, k = len(LONG) - 1, 1, 3
    eps = 1e-2

    def metric_with(delta: float) -> float:
        bump = np.zeros(g.shape[1:], np.float32)
        bump[q, h, k] = delta
        with hm.hooks({name: T.Fn(fn=lambda a, ctx: a + mx.array(bump))}):
            logits = hm(mx.array([LONG]))
        return float(np.array(m(logits[:, -1]))[0])

    fd = (metric_with(eps) - metric_with(-eps)) / (2 * eps)
    assert fd == pytest.approx(float(g[0, q, h, k]), rel=2e-2, abs=1e-4)


def test_taps_are_checked_and_nothing_survives_the_context(tiny_hooked):
    hm = tiny_hooked("gemma2", None)
    gemma2 = sys.modules["mlx_lm.models.gemma2"]
    with pytest.raises(HookNameError):
        with hm.hooks({"blocks.9.attn.hook_pattern": T.Capture(store=[])}):
            pass
    with pytest.raises(TapError, match="needs floats"):
        with hm.hooks({"blocks.0.attn.hook_pattern": T.Replace(mx.zeros((3, 3)))}):
            pass
    with pytest.raises(RuntimeError):
        with hm.hooks(_explicit_everywhere(hm)):
            with hm.hooks({"blocks.1.attn.hook_attn_scores": T.Scale(1.0)}):  # nested: one swap, two users
                assert gemma2.mx is not mx
            assert gemma2.mx is not mx
            raise RuntimeError("boom")
    assert gemma2.mx is mx
    assert all(not hm.point(f"blocks.{l}.attn.hook_v").taps for l in range(hm.info.n_layers))
    assert hm._state.n_taps == 0 and hm._state.n_edits == 0


def test_another_model_sharing_the_module_keeps_the_fused_kernel(tiny_hooked):
    """The stand-in is per mlx-lm module; a model without pattern taps running meanwhile is bit-identical."""
    a, b = tiny_hooked("llama", None), tiny_hooked("llama", 4)
    ref = b(mx.array([LONG]))
    with a.hooks(_explicit_everywhere(a)):
        a(mx.array([LONG]))
        assert mx.array_equal(b(mx.array([LONG])), ref)

"""Attention patterns as hook points: the explicit path equals the fused kernel; capture and patch work."""
from __future__ import annotations

import sys

import mlx.core as mx
import numpy as np
import pytest

from conftest import VARIANT_IDS, VARIANTS
from mlxinterp.analysis import attention
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


@pytest.mark.parametrize("arch,bits", VARIANTS, ids=VARIANT_IDS)
def test_explicit_attention_equals_fused(tiny_hooked, arch, bits):
    hm = tiny_hooked(arch, bits)
    ref = hm(mx.array([LONG]))
    store = P.PatternStore()
    taps = _explicit_everywhere(hm)
    taps.update({f"blocks.{l}.attn.hook_attn_scores": T.Capture(store=store) for l in range(hm.info.n_layers)})
    with P.pattern_hooks(hm, taps):
        got = hm(mx.array([LONG]))
    assert len(store.chunks) == hm.info.n_layers  # every layer went through the explicit path
    assert _close(got, ref)
    # left padding (per-row masks, GQA mask on gemma2): real positions agree
    ref = hm([LONG, SHORT])
    with P.pattern_hooks(hm, _explicit_everywhere(hm)):
        got = hm([LONG, SHORT])
    assert np.isfinite(np.array(got)).all()
    assert _close(got[0], ref[0]) and _close(got[1, -len(SHORT):], ref[1, -len(SHORT):])
    # no tap: after the context the fused kernel is back, bit for bit
    assert mx.array_equal(hm(mx.array([LONG])), hm(mx.array([LONG])))


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3_text"])
def test_explicit_attention_with_the_kv_cache(tiny_hooked, arch):
    """Generation (mlx-lm's KV cache, one token at a time) gives the same tokens and the same step logits."""
    from mlx_lm.models.cache import make_prompt_cache

    hm = tiny_hooked(arch, None)
    plain = hm.generate(LONG, max_tokens=6)
    with P.pattern_hooks(hm, _explicit_everywhere(hm)):
        got = hm.generate(LONG, max_tokens=6)
    assert got.tokens == plain.tokens

    def steps():
        cache = make_prompt_cache(hm.model)
        hm.model(mx.array([LONG[:9]]), cache=cache)
        a = hm.model(mx.array([LONG[9:11]]), cache=cache)  # two queries against 9 cached keys: causal offset
        return a, hm.model(mx.array([LONG[11:]]), cache=cache)

    ref = steps()
    with P.pattern_hooks(hm, _explicit_everywhere(hm)):
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
    store = P.PatternStore()
    name = "blocks.1.attn.hook_pattern"
    with P.pattern_hooks(hm, {name: T.Capture(store=store)}):
        base = hm(mx.array([LONG]))
    own = store[name]  # [1, L, H, L]
    with P.pattern_hooks(hm, {name: T.Replace(own)}):
        same = hm(mx.array([LONG]))
    assert _close(same, base)
    causal = np.tril(np.ones((len(LONG), len(LONG)), np.float32))
    uniform = causal / causal.sum(-1, keepdims=True)
    value = np.broadcast_to(uniform[:, None, :], own.shape[1:]).copy()
    store2 = P.PatternStore()
    with P.pattern_hooks(hm, {name: [T.Replace(mx.array(value), heads=[2], positions=[-1]), T.Capture(store=store2)]}):
        moved = hm(mx.array([LONG]))
    after = np.array(store2[name])
    assert np.allclose(after[0, -1, 2], uniform[-1]) and np.allclose(after[0, :-1], np.array(own)[0, :-1])
    assert np.allclose(after[0, -1, [0, 1, 3]], np.array(own)[0, -1, [0, 1, 3]])
    assert not _close(moved[0, -1], base[0, -1]) and _close(moved[0, :-1], base[0, :-1])


def test_no_swap_survives_the_context(tiny_hooked):
    hm = tiny_hooked("gemma2", None)
    gemma2 = sys.modules["mlx_lm.models.gemma2"]
    with pytest.raises(HookNameError):
        with P.pattern_hooks(hm, {"blocks.9.attn.hook_pattern": T.Capture(store=P.PatternStore())}):
            pass
    with pytest.raises(TapError, match="needs floats"):
        with P.pattern_hooks(hm, {"blocks.0.attn.hook_pattern": T.Replace(mx.zeros((3, 3)))}):
            pass
    with pytest.raises(RuntimeError):
        with P.pattern_hooks(hm, _explicit_everywhere(hm)):
            assert gemma2.mx is not mx
            raise RuntimeError("boom")
    assert gemma2.mx is mx
    assert P.pattern_names(hm)[:2] == ["blocks.0.attn.hook_attn_scores", "blocks.0.attn.hook_pattern"]

"""Recomputed attention patterns must reproduce mlx-lm's own attention output (attn.hook_z)."""
from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxinterp.analysis import attention

PROMPT = "The capital of France is Paris and the capital of Italy is Rome. Once upon a time"


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma2", "gemma3_text"])
def test_pattern_times_values_reproduces_hook_z(tiny_hooked, arch):
    hm = tiny_hooked(arch, None)
    batch = hm.tokens(PROMPT)
    L = batch.ids.shape[1]
    assert L > 8, "prompt must be longer than gemma3's tiny sliding window (8) to exercise it"
    _, cache = hm.run_with_cache(batch.ids, names=lambda n: "attn.hook_" in n)
    for layer in range(hm.info.n_layers):
        q, k, v, z = (cache[f"blocks.{layer}.attn.hook_{x}"] for x in "qkvz")
        p = attention.pattern(hm, layer, q, k)
        np.testing.assert_allclose(np.array(p.sum(-1)), 1.0, atol=1e-5)
        got = attention.apply_to_values(p, v)
        np.testing.assert_allclose(np.array(got), np.array(z.astype(mx.float32)), atol=2e-4, rtol=1e-3)


def test_sliding_window_matters_on_gemma3(tiny_hooked):
    """Without the window the local layers' output differs: the window is really applied."""
    hm = tiny_hooked("gemma3_text", None)
    _, cache = hm.run_with_cache(PROMPT, names=lambda n: "attn.hook_" in n)
    local = [l for l in range(hm.info.n_layers) if attention._window(hm, l) is not None]
    assert local
    l = local[0]
    q, k, v, z = (cache[f"blocks.{l}.attn.hook_{x}"] for x in "qkvz")
    p = np.array(attention.pattern(hm, l, q, k))
    assert np.all(p[0, :, -1, : q.shape[1] - 8] == 0)  # window of 8: early keys are masked


def test_head_scores_on_synthetic_patterns():
    L = 6
    ident, prev, bos = np.eye(L), np.eye(L, k=-1), np.zeros((L, L))
    prev[0, 0] = 1
    bos[:, 0] = 1
    s = attention.head_scores(np.stack([ident, prev, bos]))
    np.testing.assert_allclose(s["identity"], [1, 0, 0])
    np.testing.assert_allclose(s["previous_token"], [0, 1, 0])
    np.testing.assert_allclose(s["bos_sink"], [0, 0, 1])


def test_patterns_for_rejects_batches(tiny_hooked):
    hm = tiny_hooked("llama", None)
    with pytest.raises(Exception, match="one prompt"):
        attention.patterns_for(hm, ["a b c", "d e f"])

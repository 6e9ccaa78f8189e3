"""Behaviour on the real default model (Gemma 3 270M, imported from its PyPI package)."""
from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm import generate

from mlxinterp.core import taps as T
from mlxinterp.core.hooks import ActivationCache

pytestmark = pytest.mark.real
EIFFEL = "The Eiffel Tower is located in the city of"


def test_default_model_shape(real_hm):
    i = real_hm.info
    assert (i.arch, i.n_layers, i.d_model, i.n_heads, i.n_kv_heads, i.head_dim, i.vocab_size) == \
        ("gemma3_text", 18, 640, 4, 1, 256, 262144)
    assert i.needs_bos and i.dtype == "float32"


def test_eiffel_tower_paris_top1(real_hm):
    logits = real_hm(EIFFEL)
    assert real_hm.tokenizer.decode([int(mx.argmax(logits[0, -1]))]) == " Paris"


def test_noop_taps_bit_identical_and_captures_consistent(real_hm):
    ids = real_hm.tokens(EIFFEL).ids
    ref = real_hm.model(ids)
    logits, c = real_hm.run_with_cache(ids)
    assert mx.array_equal(logits, ref)
    for i in (0, 9, 17):
        mid = c[f"blocks.{i}.hook_resid_pre"] + c[f"blocks.{i}.hook_attn_out"]
        assert mx.array_equal(mid, c[f"blocks.{i}.hook_resid_mid"])
    assert mx.array_equal(real_hm.unembed(c["blocks.17.hook_resid_post"]), logits)


def test_generation_unchanged_by_capture_taps(real_hm):
    ids = real_hm.tokens(EIFFEL).ids[0].tolist()
    ref = generate(real_hm.model, real_hm.tokenizer, ids, max_tokens=6)
    store = ActivationCache(real_hm)
    got = real_hm.generate(ids, max_tokens=6, taps={"blocks.9.hook_resid_post": T.Capture(store=store)})
    assert got.text == ref and " Paris" in got.text

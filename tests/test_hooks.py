"""Hook points and taps on every architecture x {float, 4-bit} (tiny random models).

Each test compares against plain mlx-lm or an independent computation from the
model's own weights, so a hook in the wrong place or a tap that leaks fails.
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlxinterp.core import taps as T
from mlxinterp.core.hooks import ActivationCache

IDS = [1, 287, 414, 417, 279, 280, 300, 301, 302, 303, 304, 305]  # 12 > gemma3 tiny window of 8
SHORT = [1, 290, 291, 292, 293]


def fused_names(hm) -> list[str]:
    """Every hook point but the attention scores / patterns: a tap on those runs attention explicitly
    (tests/test_patterns.py checks that path against the fused one within its stated tolerance)."""
    return [n for n in hm.hook_names if hm.point(n).kind != "pattern"]


def plain_logits(hm, ids):
    """Logits from mlx-lm's model object with no taps attached."""
    out = hm.model(mx.array([ids]))
    mx.eval(out)
    return out


def maxdiff(a, b) -> float:
    return float(mx.abs(a.astype(mx.float32) - b.astype(mx.float32)).max())


def test_hook_names_cover_every_layer(hm):
    n = hm.info.n_layers
    for i in range(n):
        for s in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post",
                  "attn.hook_z", "mlp.hook_post"):
            assert f"blocks.{i}.{s}" in hm.hook_names
    assert {"hook_embed", "ln_final.hook_normalized", "hook_logits"} <= set(hm.hook_names)
    for i in range(n if "attn.hook_v" in hm.spec.sites else 0):  # attention scores and patterns are hook points
        for s in ("attn.hook_attn_scores", "attn.hook_pattern"):  # too (per head, a key axis that varies)
            assert hm.hook_shape(f"blocks.{i}.{s}") == (hm.info.n_heads, 0)
    assert hm.hook_shape("blocks.0.attn.hook_z") == (hm.info.n_heads, hm.info.head_dim)
    assert hm.hook_shape("blocks.-1.mlp.hook_post") == (hm.info.d_mlp,)


def test_noop_taps_are_bit_identical(hm):
    ref = plain_logits(hm, IDS)
    zeros = mx.zeros((hm.info.d_model,))
    # every hook point listed, the score / pattern points without a tap: the fused attention runs untouched
    noop = {n: [T.Scale(1.0)] for n in fused_names(hm)}
    patterns = [n for n in hm.hook_names if n not in noop]
    assert len(patterns) in (0, 2 * hm.info.n_layers)  # families without attn.hook_v have none
    for i in range(hm.info.n_layers):
        noop[f"blocks.{i}.hook_resid_post"].append(T.Add(zeros, 3.0))
    with hm.hooks(noop):
        out = hm(mx.array([IDS]))
    assert mx.array_equal(out, ref)
    logits, cache = hm.run_with_cache(mx.array([IDS]))  # captures every point but scores / patterns
    assert mx.array_equal(logits, ref)
    assert sorted(cache.keys()) == sorted(fused_names(hm))
    # after a context with pattern taps (explicit attention), nothing is left installed: bit-identical again
    with hm.hooks({n: T.Scale(1.0) for n in patterns}):
        hm(mx.array([IDS]))
    assert mx.array_equal(hm(mx.array([IDS])), ref)


def test_noop_taps_bit_identical_in_generation(hm):
    from mlx_lm import generate

    ref = generate(hm.model, hm.tokenizer, IDS, max_tokens=8)
    store = ActivationCache(hm)
    got = hm.generate(IDS, max_tokens=8, taps={n: T.Capture(store=store) for n in fused_names(hm)})
    assert got.text == ref


def test_last_resid_post_through_final_norm_and_unembed_is_logits(hm):
    logits, cache = hm.run_with_cache(mx.array([IDS]))
    inner = hm.model.model
    h = inner.norm(cache[f"blocks.{hm.info.n_layers - 1}.hook_resid_post"])
    out = hm.model.lm_head(h) if "lm_head" in hm.model else inner.embed_tokens.as_linear(h)
    if hm.info.arch == "gemma2":
        cap = hm.model.final_logit_softcapping
        out = mx.tanh(out / cap) * cap
    assert maxdiff(out, logits) == 0.0


def test_hook_z_through_o_proj_is_attention_output(hm):
    _, cache = hm.run_with_cache(mx.array([IDS]))
    for i in range(hm.info.n_layers):
        attn = hm.model.model.layers[i].self_attn
        z = cache[f"blocks.{i}.attn.hook_z"]
        assert z.shape == (1, len(IDS), hm.info.n_heads, hm.info.head_dim)
        raw = attn.o_proj(z.reshape(1, len(IDS), -1))
        assert maxdiff(raw, cache[f"blocks.{i}.attn.hook_out"]) == 0.0
        # per-head decomposition: the sum of each head's o_proj contribution (float only)
        if not isinstance(attn.o_proj, nn.QuantizedLinear):
            w = attn.o_proj.weight.reshape(hm.info.d_model, hm.info.n_heads, hm.info.head_dim)
            per_head = mx.einsum("bphd,mhd->bpm", z, w)
            assert maxdiff(per_head, raw) < 1e-4
        block = hm.model.model.layers[i]
        added = block.post_attention_layernorm(raw) if hm.spec.family == "gemma" else raw
        assert maxdiff(added, cache[f"blocks.{i}.hook_attn_out"]) == 0.0


def test_residual_decomposition_matches_captures(hm):
    _, c = hm.run_with_cache(mx.array([IDS]))
    for i in range(hm.info.n_layers):
        mid = c[f"blocks.{i}.hook_resid_pre"] + c[f"blocks.{i}.hook_attn_out"]
        assert maxdiff(mid, c[f"blocks.{i}.hook_resid_mid"]) == 0.0
        post = c[f"blocks.{i}.hook_resid_mid"] + c[f"blocks.{i}.hook_mlp_out"]
        assert maxdiff(post, c[f"blocks.{i}.hook_resid_post"]) == 0.0
        if i + 1 < hm.info.n_layers:
            assert mx.array_equal(c[f"blocks.{i}.hook_resid_post"], c[f"blocks.{i + 1}.hook_resid_pre"])
    # embeddings straight from the weight matrix (dequantized when 4-bit)
    emb = hm.model.model.embed_tokens
    table = mx.dequantize(emb.weight, emb.scales, emb.biases, emb.group_size, emb.bits) if isinstance(emb, nn.QuantizedEmbedding) else emb.weight
    assert maxdiff(c["hook_embed"][0], table[mx.array(IDS)]) < 1e-6


def test_mlp_neurons_match_manual_activation(hm):
    _, c = hm.run_with_cache(mx.array([IDS]))
    mlp = hm.model.model.layers[1].mlp
    x = c["blocks.1.ln2.hook_normalized"]
    act = nn.gelu_approx if hm.spec.family == "gemma" else nn.silu
    manual = act(mlp.gate_proj(x)) * mlp.up_proj(x)
    assert maxdiff(manual, c["blocks.1.mlp.hook_post"]) < 1e-5
    assert maxdiff(mlp.gate_proj(x), c["blocks.1.mlp.hook_pre"]) == 0.0


def test_add_tap_equals_manual_sum(hm):
    _, clean = hm.run_with_cache(mx.array([IDS]))
    v = mx.random.normal((hm.info.d_model,), key=mx.random.key(1))
    with hm.hooks({"blocks.1.hook_resid_post": T.Add(v, 2.5)}):
        _, c = hm.run_with_cache(mx.array([IDS]), names=["blocks.1.hook_resid_post", "blocks.2.hook_resid_pre"])
    expected = clean["blocks.1.hook_resid_post"] + 2.5 * v
    assert maxdiff(c["blocks.2.hook_resid_pre"], expected) < 1e-5
    # only the chosen positions move
    with hm.hooks({"blocks.1.hook_resid_post": T.Add(v, 2.5, positions=[2, -1])}):
        _, c = hm.run_with_cache(mx.array([IDS]), names=["blocks.1.hook_resid_post"])
    delta = np.abs(np.array(c["blocks.1.hook_resid_post"] - clean["blocks.1.hook_resid_post"])).max(axis=-1)[0]
    assert set(np.nonzero(delta > 1e-6)[0]) == {2, len(IDS) - 1}


def test_patching_with_own_cache_is_identity(hm):
    ref, cache = hm.run_with_cache(mx.array([IDS]))
    patch = {n: T.Replace(cache[n]) for n in fused_names(hm) if n != "hook_logits"}
    with hm.hooks(patch):
        out = hm(mx.array([IDS]))
    assert mx.array_equal(out, ref)


def test_resid_mid_edit_reaches_the_residual_stream(hm):
    _, clean = hm.run_with_cache(mx.array([IDS]))
    v = mx.random.normal((hm.info.d_model,), key=mx.random.key(2))
    with hm.hooks({"blocks.1.hook_resid_mid": T.Add(v, 1.0)}):
        _, c = hm.run_with_cache(mx.array([IDS]), names=["blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"])
    # resid_post = (edited resid_mid) + mlp_out(edited), as mlx-lm would compute with h' in place of h
    assert maxdiff(c["blocks.1.hook_resid_post"], clean["blocks.1.hook_resid_mid"] + v + c["blocks.1.hook_mlp_out"]) < 1e-4


def test_resid_mid_edit_alone_changes_the_logits(hm):
    """With no other tap in the block, the delta must still reach the block output."""
    v = mx.random.normal((hm.info.d_model,), key=mx.random.key(4)) * 5
    with hm.hooks({"blocks.1.hook_resid_mid": T.Add(v, 1.0)}):
        alone = hm(mx.array([IDS]))
    with hm.hooks({"blocks.1.hook_resid_mid": T.Add(v, 1.0), "blocks.1.hook_resid_post": T.Capture(store=ActivationCache(hm))}):
        with_capture = hm(mx.array([IDS]))
    assert mx.array_equal(alone, with_capture)
    assert maxdiff(alone, plain_logits(hm, IDS)) > 1e-3


def test_ablate_project_and_heads(hm):
    _, clean = hm.run_with_cache(mx.array([IDS]))
    with hm.hooks({"blocks.2.hook_mlp_out": T.Ablate("zero")}):
        _, c = hm.run_with_cache(mx.array([IDS]), names=["blocks.2.hook_resid_mid", "blocks.2.hook_resid_post"])
    assert mx.array_equal(c["blocks.2.hook_resid_mid"], c["blocks.2.hook_resid_post"])
    basis = np.random.default_rng(0).normal(size=(3, hm.info.d_model))
    parts = []
    for mode in ("onto", "out"):
        with hm.hooks({"blocks.0.hook_resid_post": T.Project(basis, mode)}):
            _, c = hm.run_with_cache(mx.array([IDS]), names=["blocks.0.hook_resid_post"])
        parts.append(c["blocks.0.hook_resid_post"])
    assert maxdiff(parts[0] + parts[1], clean["blocks.0.hook_resid_post"]) < 1e-4
    # zero-ablating head 1 zeroes exactly that head's slice of hook_z
    with hm.hooks({"blocks.0.attn.hook_z": [T.Ablate("zero", heads=[1]), T.Capture(store=(store := ActivationCache(hm)))]}):
        hm(mx.array([IDS]))
    z, z0 = np.array(store["blocks.0.attn.hook_z"]), np.array(clean["blocks.0.attn.hook_z"])
    assert np.all(z[:, :, 1] == 0) and np.array_equal(np.delete(z, 1, axis=2), np.delete(z0, 1, axis=2))


def test_left_padding_leaves_each_sequence_unchanged(hm):
    l_long, c_long = hm.run_with_cache(mx.array([IDS]))
    l_short, c_short = hm.run_with_cache(mx.array([SHORT]))
    logits, c = hm.run_with_cache([IDS, SHORT])
    pad = c.left_padding
    assert pad == [0, len(IDS) - len(SHORT)]
    tol = 1e-4  # stated tolerance: float32 attention over masked columns
    assert maxdiff(logits[0], l_long[0]) < tol
    assert maxdiff(logits[1, pad[1]:], l_short[0]) < tol
    for name in ("blocks.2.hook_resid_post", "blocks.1.attn.hook_z"):
        assert maxdiff(c[name][1, pad[1]:], c_short[name][0]) < tol
    # positions count per sequence: position 1 of the padded row is its second real token
    v = mx.ones((hm.info.d_model,))
    with hm.hooks({"blocks.0.hook_resid_post": T.Add(v, 5.0, positions=1)}):
        batched = hm([IDS, SHORT])
        single = hm(mx.array([SHORT]))
    assert maxdiff(batched[1, pad[1]:], single[0]) < tol
    assert maxdiff(single, l_short) > 1e-3


def test_generation_captures_match_a_full_forward(hm):
    store = ActivationCache(hm)
    g = hm.generate(IDS, max_tokens=5, taps={"blocks.2.hook_resid_post": T.Capture(store=store)})
    captured = store["blocks.2.hook_resid_post"]
    full = IDS + g.tokens
    _, c = hm.run_with_cache(mx.array([full[: captured.shape[1]]]))
    assert captured.shape[1] >= len(IDS) + len(g.tokens) - 1
    assert maxdiff(captured, c["blocks.2.hook_resid_post"]) < 1e-4


def test_generation_phases(hm):
    v = mx.random.normal((hm.info.d_model,), key=mx.random.key(3)) * 50
    base = hm.generate(IDS, max_tokens=4)
    gen_only = hm.generate(IDS, max_tokens=4, taps={"blocks.1.hook_resid_post": T.Add(v, 1.0, when="generated")})
    prompt_only = hm.generate(IDS, max_tokens=4, taps={"blocks.1.hook_resid_post": T.Add(v, 1.0, when="prompt", positions="last")})
    # steering only generated tokens cannot change the first token (it is read off the prompt)
    assert gen_only.tokens[0] == base.tokens[0]
    # steering the last prompt position changes the first token's distribution
    with hm.hooks({"blocks.1.hook_resid_post": T.Add(v, 1.0, positions="last")}):
        steered = hm(mx.array([IDS]))
    assert maxdiff(steered[0, -1], plain_logits(hm, IDS)[0, -1]) > 1e-3
    assert prompt_only.prompt_tokens == IDS
    # in a plain forward every position is prompt: a generated-only tap does nothing
    with hm.hooks({"blocks.1.hook_resid_post": T.Add(v, 1.0, when="generated")}):
        assert mx.array_equal(hm(mx.array([IDS])), plain_logits(hm, IDS))


def test_remove_hooks_restores_the_model(tiny_dirs):
    from mlxinterp.core.hooks import load

    hm = load(str(tiny_dirs[("llama", None)]), dtype="native")
    classes = {name: type(m) for name, m in hm.model.named_modules()}
    hm.remove_hooks()
    restored = {name: type(m) for name, m in hm.model.named_modules()}
    assert all(not c.__name__.startswith("Hooked") for c in restored.values())
    assert any(c.__name__.startswith("Hooked") for c in classes.values())
    assert all(not hasattr(m, "_mi_site") for _, m in hm.model.named_modules())


def test_taps_removed_after_context_even_on_error(hm):
    ref = plain_logits(hm, IDS)
    with pytest.raises(RuntimeError):
        with hm.hooks({"blocks.0.hook_resid_post": T.Scale(0.0)}):
            raise RuntimeError("boom")
    assert mx.array_equal(plain_logits(hm, IDS), ref)


def test_two_equal_taps_on_one_hook_attach_and_detach(hm):
    """Taps compare by identity: removing one of two Add taps with array vectors must not compare arrays."""
    v = mx.ones((hm.info.d_model,))
    ref = plain_logits(hm, IDS)
    with hm.hooks([("blocks.0.hook_resid_post", T.Add(v, 1.0)), ("blocks.0.hook_resid_post", T.Add(v, -1.0))]):
        out = hm(mx.array([IDS]))
    assert maxdiff(out, ref) < 1e-4
    assert hm._state.n_taps == 0 and not hm.point("blocks.0.hook_resid_post").taps


def test_generate_batch_matches_single_generation(hm):
    other = [1, 290, 291, 292]
    rows = hm.generate_batch([IDS, other], max_tokens=5)
    for ids, got in zip((IDS, other), rows):
        single = hm.generate(ids, max_tokens=5)
        assert got.tokens == single.tokens[: len(got.tokens)]
        assert got.prompt_tokens == ids
    v = mx.random.normal((hm.info.d_model,), key=mx.random.key(5)) * 50
    steered = hm.generate_batch([IDS, other], max_tokens=5, taps={"blocks.1.hook_resid_post": T.Add(v, 1.0, when="generated")})
    assert [s.tokens[0] for s in steered] == [r.tokens[0] for r in rows]  # generated-only: first token unchanged


def test_captures_without_logits_are_identical_and_skip_the_rest(hm):
    """logits=False evaluates only the captures: same arrays, no logits returned."""
    names = ["blocks.0.hook_resid_post", "blocks.1.mlp.hook_post"]
    logits, full = hm.run_with_cache(mx.array([IDS]), names=names)
    none, part = hm.run_with_cache(mx.array([IDS]), names=names, logits=False)
    assert none is None and logits is not None
    for n in names:
        assert mx.array_equal(full[n], part[n]), n

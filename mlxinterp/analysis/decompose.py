"""Residual-stream decompositions of a captured forward, and direct logit attribution.

The residual stream entering the final norm is a sum of what each block
added: resid_post[-1] = resid_pre[0] + sum_l (attn_out[l] + mlp_out[l])
(on Gemma, attn_out / mlp_out are the post-norm outputs actually added).
These helpers take an ActivationCache (`hm.run_with_cache(prompt)`) and
return stacks [n_components, B, L, d_model] with one label per component,
in the style of TransformerLens' ActivationCache methods of the same names.

Direct logit attribution (`logit_attrs`) pushes each component through the
model's real final RMSNorm *with the normalisation scale frozen at the value it
had for the full residual* (TransformerLens: `apply_ln_to_stack` with the
cached scale), then through the unembedding rows of the chosen tokens. With
the scale frozen the final norm is linear, so the attributions of a complete
decomposition sum to the token's logit before any final soft-cap (Gemma 2's
`final_logit_softcapping` is applied to the sum, not to components).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from collections.abc import Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlxinterp.core.archs import site_scale, text_model
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.core.hooks import plain_call

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel


def _get(cache, name: str) -> mx.array:
    if name not in cache:
        raise MlxInterpError(f"{name!r} is not in this cache",
                             hint="capture it: hm.run_with_cache(prompt) captures every hook point")
    return cache[name].astype(mx.float32)


def _gain(norm, d: int) -> mx.array:
    """The per-feature gain of an RMSNorm module, read by calling the module itself on a vector of ones
    (rms_norm(1, g, eps) = g / sqrt(1 + eps)), so Gemma's (1 + weight) and Llama's weight need no special case."""
    ones = mx.ones((d,), dtype=mx.float32)
    return plain_call(norm, ones).astype(mx.float32) * float(np.sqrt(1.0 + norm.eps))


def _scale(x: mx.array, eps: float) -> mx.array:
    """RMSNorm's normalisation factor 1 / sqrt(mean(x^2) + eps), [..., 1]."""
    return mx.rsqrt(mx.mean(x * x, axis=-1, keepdims=True) + eps)


def accumulated_resid(cache, apply_ln: bool = False) -> tuple[mx.array, list[str]]:
    """[n_layers + 1, B, L, d]: the residual stream entering each block, then leaving the last one.

    apply_ln: push each through the final norm with the final residual's cached scale (a logit-lens
    readout that is linear in the residual).
    """
    hm = cache.hooked
    n = hm.info.n_layers
    parts = [_get(cache, f"blocks.{l}.hook_resid_pre") for l in range(n)] + [_get(cache, f"blocks.{n - 1}.hook_resid_post")]
    labels = [f"{l}_pre" for l in range(n)] + ["final_post"]
    stack = mx.stack(parts)
    return (apply_final_ln(cache, stack) if apply_ln else stack), labels


def decompose_resid(cache, apply_ln: bool = False) -> tuple[mx.array, list[str]]:
    """[1 + 2 * n_layers, B, L, d]: the embedding (as it enters block 0) and each block's attention and MLP
    outputs; the components sum to the final residual (blocks.{n-1}.hook_resid_post)."""
    hm = cache.hooked
    parts, labels = [_get(cache, "blocks.0.hook_resid_pre")], ["embed"]
    for l in range(hm.info.n_layers):
        parts += [_get(cache, f"blocks.{l}.hook_attn_out"), _get(cache, f"blocks.{l}.hook_mlp_out")]
        labels += [f"{l}_attn_out", f"{l}_mlp_out"]
    stack = mx.stack(parts)
    return (apply_final_ln(cache, stack) if apply_ln else stack), labels


def stack_head_results(cache, layers: Sequence[int] | None = None) -> tuple[mx.array, list[str]]:
    """[n_layers * n_heads, B, L, d]: what each attention head adds to the residual stream (`head_results`
    of every cached position), one label "L{layer}H{head}" per row."""
    hm = cache.hooked
    n, H = hm.info.n_layers, hm.info.n_heads
    layers = list(range(n)) if layers is None else [int(l) % n for l in layers]
    out, labels = [], []
    for l in layers:
        per_head = head_results(hm, l, _get(cache, f"blocks.{l}.attn.hook_z"), _get(cache, f"blocks.{l}.attn.hook_out"))
        out.append(mx.moveaxis(per_head, -2, 0))  # [B, L, H, d] -> [H, B, L, d]
        labels += [f"L{l}H{h}" for h in range(H)]
    return mx.concatenate(out), labels


def head_results(hm: HookedModel, layer: int, z, attn_raw) -> mx.array:
    """[..., H, d] float32: what each head of `layer` adds to the residual stream at each position.

    z: the layer's attn.hook_z [..., H, Dh]; attn_raw: its attn.hook_out [..., d] (the summed o_proj
    output at the same positions). Head h's result is the layer's own output projection (float or
    quantized, called without taps) applied to z with the other heads zeroed; a projection bias is left
    out, as TransformerLens keeps b_O apart. Where a post-attention norm sits between o_proj and the
    residual (Gemma's sandwich blocks, OLMo 2) its scale is frozen at the value for the whole attention
    output, and a family's sublayer scale (Granite's residual_multiplier) is applied, so the heads of a
    layer sum to hook_attn_out.
    """
    z, attn_raw = mx.array(z), mx.array(attn_raw)
    H, Dh = z.shape[-2:]
    block = hm.block(layer)
    o_proj = block.self_attn.o_proj
    dtype = o_proj.scales.dtype if hasattr(o_proj, "scales") else o_proj.weight.dtype
    one_head = (mx.expand_dims(z, -3) * mx.eye(H, dtype=z.dtype)[..., None])  # [..., H (kept), H, Dh]
    one_head = one_head.reshape(*z.shape[:-2], H, H * Dh).astype(dtype)
    per_head = plain_call(o_proj, one_head).astype(mx.float32)
    per_head = per_head - plain_call(o_proj, mx.zeros((H * Dh,), dtype=dtype)).astype(mx.float32)
    post_path = hm.spec.sites["hook_attn_out"].path
    if post_path != hm.spec.sites["attn.hook_out"].path:
        norm = _module(block, post_path)
        if isinstance(norm, nn.LayerNorm):
            raise MlxInterpError("per-head results through a post-attention LayerNorm are not defined here "
                                 "(only RMSNorm post-norms are linear once their scale is frozen)")
        raw = attn_raw.astype(mx.float32)
        per_head = per_head * mx.expand_dims(_scale(raw, norm.eps), -2) * _gain(norm, raw.shape[-1])
    return per_head * site_scale(block, hm.spec.sites["hook_attn_out"])


def _module(root, path: str):
    for part in path.split("."):
        root = getattr(root, part)
    return root


def apply_final_ln(cache, stack: mx.array) -> mx.array:
    """Components [..., B, L, d] through the final norm with the full residual's cached scale (linear).

    RMSNorm: each component times the gain over the full residual's RMS. LayerNorm: each component
    centred, times the gain over the full residual's standard deviation; its bias belongs to no
    component (as in TransformerLens), so attributions then sum to the logit minus the bias's share.
    """
    hm = cache.hooked
    final = _get(cache, f"blocks.{hm.info.n_layers - 1}.hook_resid_post")
    if tuple(stack.shape[-3:]) != tuple(final.shape):
        raise MlxInterpError(f"stack has shape {tuple(stack.shape)}; its last axes must be the cache's [B, L, d] "
                             f"= {tuple(final.shape)}")
    norm = text_model(hm.model).norm
    if hm.point("ln_final.hook_normalized").taps:
        raise MlxInterpError("a tap is attached at ln_final.hook_normalized; detach it before decomposing")
    if isinstance(norm, nn.LayerNorm):  # StarCoder 2, Cohere: centre each component; the bias is nobody's
        stack = stack.astype(mx.float32)
        stack = stack - mx.mean(stack, axis=-1, keepdims=True)
        final = final.astype(mx.float32)
        out = stack * mx.rsqrt(mx.var(final, axis=-1, keepdims=True) + norm.eps)
        return out * norm.weight.astype(mx.float32) if "weight" in norm else out
    return stack.astype(mx.float32) * _scale(final, norm.eps) * _gain(norm, final.shape[-1])


def logit_attrs(cache, stack: mx.array, tokens: Sequence[int] | int, incorrect: Sequence[int] | int | None = None,
                pos: int = -1, has_ln: bool = False) -> mx.array:
    """Direct logit attribution [n_components, B]: each component's contribution to logit(tokens)
    (minus logit(incorrect) when given) at sequence position `pos`.

    stack: [n_components, B, L, d] (e.g. from decompose_resid or stack_head_results), not yet
    through the final norm unless has_ln. tokens: one id for every row or one per row.
    The contributions of a complete decomposition sum to the logit (difference) before any
    final logit soft-cap, less a LayerNorm bias's share (apply_final_ln).
    """
    hm = cache.hooked
    x = (stack if has_ln else apply_final_ln(cache, stack))[:, :, pos].astype(mx.float32)  # [n, B, d]
    B = x.shape[1]
    w = _token_rows(hm, tokens, B)
    if incorrect is not None:
        w = w - _token_rows(hm, incorrect, B)
    return mx.sum(x * w[None], axis=-1)


def _token_rows(hm: HookedModel, tokens, B: int) -> mx.array:
    """Unembedding rows [B, d] of one token per row (float32, dequantized)."""
    ids = np.atleast_1d(np.asarray(tokens, dtype=np.int64))
    if ids.size == 1:
        ids = np.repeat(ids, B)
    if ids.shape != (B,):
        raise MlxInterpError(f"{ids.size} tokens given for {B} rows; pass one token id, or one per row")
    uniq, inv = np.unique(ids, return_inverse=True)
    w, _ = hm.unembedding_rows(uniq.tolist())
    return w[mx.array(inv.astype(np.uint32))]

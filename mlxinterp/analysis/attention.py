"""Attention patterns, recomputed from captured queries and keys with the layer's own modules.

mlx-lm calls `mx.fast.scaled_dot_product_attention`, which never materialises
the pattern, so there is no hook point to read it from. We recompute it from
`attn.hook_q` / `attn.hook_k` (the q/k projections' outputs) by applying the
layer's *own* `q_norm`/`k_norm` (Qwen3, Gemma 3) and its *own* `rope` module at
the right offset, its own `scale`, Gemma 2's logit soft-cap, a causal mask and
Gemma 3's sliding window. `pattern @ v` must reproduce `attn.hook_z`
(tests/test_attention.py checks it on every architecture), which is what makes
the pattern trustworthy.

Only unpadded batches (one prompt, or prompts of equal length) are supported:
with left padding mlx-lm's RoPE offsets and masks are per-sequence cache state.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import mlx.core as mx
import numpy as np

from mlxinterp.core.archs import text_model
from mlxinterp.core.errors import PromptError
from mlxinterp.core import names as H

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel


def _layer_attn(hm: HookedModel, layer: int):
    n = hm.info.n_layers
    if not -n <= layer < n:
        raise PromptError(f"layer {layer} is out of range; this model has layers 0..{n - 1}")
    return hm.block(layer).self_attn


def _window(hm: HookedModel, layer: int) -> int | None:
    """Sliding-window size of this layer as mlx-lm masks it (Gemma 3's local layers), else None."""
    inner = text_model(hm.model)
    pattern, size = getattr(inner, "sliding_window_pattern", None), getattr(inner, "window_size", None)
    if not pattern or not size or pattern <= 1:
        return None
    return None if layer % pattern == pattern - 1 else int(size)


def _heads_first(a: mx.array) -> mx.array:
    """[B, L, H, Dh] (hook layout) -> [B, H, L, Dh] (attention layout)."""
    return a.transpose(0, 2, 1, 3)


def scores(hm: HookedModel, layer: int, q: mx.array, k: mx.array, offset: int = 0) -> mx.array:
    """Pre-softmax attention scores [B, H, Lq, Lk] (float32, masked positions = -inf).

    q: attn.hook_q [B, Lq, H, Dh], k: attn.hook_k [B, Lk, Hkv, Dh] of the same
    forward; `offset` is the position of the first query (0 for a plain forward).
    """
    attn = _layer_attn(hm, layer)
    layer %= hm.info.n_layers
    qh, kh = _heads_first(q), _heads_first(k)
    if hasattr(attn, "q_norm"):
        qh, kh = attn.q_norm(qh), attn.k_norm(kh)
    qh, kh = attn.rope(qh, offset=offset), attn.rope(kh, offset=offset)
    qh, kh = qh.astype(mx.float32), kh.astype(mx.float32)
    H, Hkv = qh.shape[1], kh.shape[1]
    if H != Hkv:
        kh = mx.repeat(kh, H // Hkv, axis=1)
    s = (qh * attn.scale) @ kh.transpose(0, 1, 3, 2)
    cap = getattr(attn, "attn_logit_softcapping", None)
    if cap:
        s = mx.tanh(s / cap) * cap
    Lq, Lk = s.shape[-2], s.shape[-1]
    qpos = mx.arange(offset, offset + Lq)[:, None]
    kpos = mx.arange(Lk)[None, :]
    allowed = kpos <= qpos
    w = _window(hm, layer)
    if w is not None:
        allowed = allowed & (qpos - kpos < w)
    return mx.where(allowed, s, -mx.inf)


def pattern(hm: HookedModel, layer: int, q: mx.array, k: mx.array, offset: int = 0) -> mx.array:
    """Attention pattern [B, H, Lq, Lk] (rows sum to 1), float32."""
    return mx.softmax(scores(hm, layer, q, k, offset), axis=-1)


def patterns_for(hm: HookedModel, prompt, layers=None) -> tuple[dict[int, np.ndarray], list[int]]:
    """{layer: pattern [H, L, L]} for one prompt (captured q/k, one forward), and its token ids."""
    batch = hm.tokens(prompt)
    if batch.ids.shape[0] != 1:
        raise PromptError("patterns_for takes one prompt (left-padded batches shift RoPE per sequence)")
    layers = list(range(hm.info.n_layers)) if layers is None else [l % hm.info.n_layers for l in layers]
    names = [H.name(l, x) for l in layers for x in ("q", "k")]
    _, cache = hm.run_with_cache(batch.ids, names=names, logits=False)
    out = {}
    for l in layers:
        p = pattern(hm, l, cache[H.name(l, "attn.hook_q")], cache[H.name(l, "attn.hook_k")])
        out[l] = np.array(p[0])
    return out, batch.ids[0].tolist()


def apply_to_values(p: mx.array, v: mx.array) -> mx.array:
    """pattern [B, H, Lq, Lk] @ values (attn.hook_v [B, Lk, Hkv, Dh]) -> [B, Lq, H, Dh], like attn.hook_z."""
    vh = _heads_first(v).astype(mx.float32)
    H, Hkv = p.shape[1], vh.shape[1]
    if H != Hkv:
        vh = mx.repeat(vh, H // Hkv, axis=1)
    return (p @ vh).transpose(0, 2, 1, 3)


def head_scores(p: np.ndarray) -> dict[str, np.ndarray]:
    """Per head [H]: mean attention to itself, to the previous token and to position 0 (BOS sink).

    p: [H, L, L] for one prompt. Queries 0 and 1 are excluded (query 0 can only
    attend to itself, query 1's previous token *is* position 0), so the three
    scores measure different things; each is the mean over queries 2..L-1.
    """
    H, L, _ = p.shape
    if L < 3:
        raise PromptError("head scores need a prompt of at least 3 tokens")
    q = np.arange(2, L)
    return {"identity": p[:, q, q].mean(-1), "previous_token": p[:, q, q - 1].mean(-1),
            "bos_sink": p[:, q, 0].mean(-1)}

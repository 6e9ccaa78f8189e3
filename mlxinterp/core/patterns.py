"""Attention scores and patterns as hook points: `blocks.{i}.attn.hook_attn_scores` / `attn.hook_pattern`.

mlx-lm computes attention with the fused `mx.fast.scaled_dot_product_attention`,
which never materialises the pattern. The two hook points are ordinary hook
points of the HookedModel (listed, captured and patched with the same taps as
every other point); while a tap is attached to one of them, the attention of
that layer is computed explicitly instead (scores = q k^T * scale, the mask
mlx-lm passes, softmax in float32, pattern @ v), with the taps applied to the
scores and to the pattern. Layers without such a tap still call the fused
kernel, and with no pattern tap anywhere nothing here is installed at all
(bit-identical logits, tests/test_hooks.py).

How the explicit path is reached without re-implementing any model: the
attention modules of llama, qwen2, qwen3 and gemma3 call the function
`scaled_dot_product_attention` of their own mlx-lm module, which is replaced
while any pattern tap is attached; Gemma 2 writes its attention out itself
(with its logit soft-cap) and calls `mx.softmax`, so there the module's `mx` is
replaced by a proxy whose `softmax` runs the taps. Which model and layer is
calling is recorded by a marker on `attn.hook_v`, which fires inside the same
attention call just before the scores are computed, and is consumed by that
call (another model sharing the mlx-lm module meanwhile gets the fused kernel).

Layout seen by taps: [B, L_query, n_heads, L_key] (positions on axis 1 like every
other hook point, so `positions=` and `heads=` work as usual); the per-position
shape is listed as (n_heads, 0), 0 standing for the number of keys, which grows
with the KV cache. The equality of the explicit and the fused path
(tests/test_patterns.py) is checked on every tiny architecture, float and
4-bit, with padding, sliding windows, GQA, soft-capping and the KV cache:
max |logit difference| <= 1e-4 * (1 + max |logit|).
"""
from __future__ import annotations

import sys
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import mlx.core as mx

from mlxinterp.core import taps as T
from mlxinterp.core.archs import text_model
from mlxinterp.core.errors import TapError

if TYPE_CHECKING:  # for annotations only: the hooked model and its hook point types
    from mlxinterp.core.hooks import HookedModel, HookPoint

SCORES, PATTERN = "attn.hook_attn_scores", "attn.hook_pattern"
SUFFIXES = (SCORES, PATTERN)
KIND = "pattern"  # HookPoint.kind of both
# float32 minimum instead of -inf for masked keys, as mlx-lm's Gemma 2 attention does: a query whose keys are
# all masked (a left-padding column) gets a finite uniform row instead of NaN, which would reach real tokens
# through 0 * NaN in pattern @ values.
_MASKED = float(mx.finfo(mx.float32).min)


def suffixes(sites) -> tuple[str, ...]:
    """The score / pattern points a family has: those whose attention exposes its values at attn.hook_v
    (the marker that names the calling layer sits there; a fused qkv projection has no such point)."""
    return SUFFIXES if "attn.hook_v" in sites else ()


def is_pattern_name(name: str) -> bool:
    return name.endswith(SUFFIXES)


def feature_shape(n_heads: int) -> tuple[int, int]:
    """Per-position shape of a score / pattern hook point: heads x keys (0: the key count varies)."""
    return (n_heads, 0)


def check_tap(tap: T.Tap, name: str, n_heads: int) -> None:
    """A tap's arguments at a score / pattern point: heads as usual, values shaped (..., n_heads, n_keys)."""
    # Value checks of Replace/Add need a fixed feature shape; a pattern's last axis grows with the keys,
    # so only the head axis is checked here (the value is aligned to each forward when the tap runs).
    T.Tap.validate(tap, feature_shape(n_heads), name)
    if isinstance(tap, T.Capture):
        tap.validate(feature_shape(n_heads), name)
    for attr in ("value", "vector"):
        v = getattr(tap, attr, None)
        if v is not None:
            arr = v if isinstance(v, mx.array) else mx.array(v)
            if arr.ndim < 2 or arr.shape[-2] != n_heads or not mx.issubdtype(arr.dtype, mx.floating):
                raise TapError(f"{attr} for {name} has shape {tuple(arr.shape)} and dtype {arr.dtype}; "
                               f"needs floats of shape (..., {n_heads}, n_keys)")
            if not mx.all(mx.isfinite(arr)).item():
                raise TapError(f"{attr} for {name} contains NaN or inf")
            setattr(tap, attr, arr)


# ---------------------------------------------------------------- the explicit attention
class _Call:
    """The attention call in progress: its score and pattern hook points and the tap context of hook_v."""

    __slots__ = ("scores", "pattern", "ctx")

    def __init__(self, scores: HookPoint, pattern: HookPoint, ctx: T.TapContext):
        self.scores, self.pattern, self.ctx = scores, pattern, ctx

    def run(self, point: HookPoint, a: mx.array) -> mx.array:
        """The point's taps on a [B, H, Lq, Lk] array (shown to them as [B, Lq, H, Lk])."""
        if not point.taps:
            return a
        c = self.ctx
        x = a.transpose(0, 2, 1, 3)
        ctx = T.TapContext(point.name, point.layer, c.seq_pos, c.prompt_len, (x.shape[2], x.shape[3]), None, c.padded)
        for tap in point.taps:
            x = tap(x, ctx)
        return x.transpose(0, 2, 1, 3)


_PENDING: list[_Call | None] = [None]  # set by a marker on attn.hook_v, taken by the attention call that follows


def _take() -> _Call | None:
    call, _PENDING[0] = _PENDING[0], None
    return call


@dataclass(eq=False)
class _Marker(T.Tap):
    """Identity tap on attn.hook_v: tells the attention call that follows which points to run, if tapped."""

    scores: Any = None
    pattern: Any = None

    def __call__(self, a, ctx):
        _PENDING[0] = _Call(self.scores, self.pattern, ctx) if (self.scores.taps or self.pattern.taps) else None
        return a


def _explicit_sdpa(fused):
    """A stand-in for mlx-lm's scaled_dot_product_attention: fused unless the calling layer has pattern taps."""

    def sdpa(queries, keys, values, cache, scale, mask, sinks=None):
        call = _take()
        if call is None:
            return fused(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)
        if hasattr(cache, "bits"):
            raise TapError("attention pattern hooks do not support a quantized KV cache")
        if sinks is not None:
            raise TapError("attention pattern hooks do not support attention sinks")
        B, H, Lq, _ = queries.shape
        Hkv, Lk = keys.shape[1], keys.shape[2]
        k, v = keys.astype(mx.float32), values.astype(mx.float32)
        if H != Hkv:
            k, v = mx.repeat(k, H // Hkv, axis=1), mx.repeat(v, H // Hkv, axis=1)
        s = (queries.astype(mx.float32) * scale) @ k.transpose(0, 1, 3, 2)
        s = call.run(call.scores, _masked(s, mask, Lq, Lk))
        p = call.run(call.pattern, mx.softmax(s, axis=-1, precise=True))
        return (p @ v).astype(queries.dtype)

    return sdpa


def _masked(s: mx.array, mask, Lq: int, Lk: int) -> mx.array:
    if mask is None:
        return s
    if isinstance(mask, str):
        if mask != "causal":
            raise TapError(f"attention mask {mask!r} is not supported by attention pattern hooks")
        q = mx.arange(Lk - Lq, Lk)[:, None]  # queries are the last Lq positions (a KV cache holds the rest)
        return mx.where(mx.arange(Lk)[None, :] <= q, s, _MASKED)
    if mask.ndim == 5:  # [B, 1, 1, Lq, Lk]: the grouped-query mask of a padded batch (hooks.GQAMaskBatchKVCache)
        mask = mask[:, :, 0]
    if mask.dtype == mx.bool_:
        return mx.where(mask, s, _MASKED)
    return s + mask.astype(s.dtype)


class _MxProxy:
    """mlx.core with `softmax` replaced: Gemma 2's attention calls mx.softmax on its (soft-capped, masked) scores."""

    def __getattr__(self, name):
        return getattr(mx, name)

    def softmax(self, scores, *args, **kwargs):
        if scores.ndim not in (4, 5):
            return mx.softmax(scores, *args, **kwargs)
        call = _take()
        if call is None:
            return mx.softmax(scores, *args, **kwargs)
        shape = scores.shape
        s = scores.reshape(shape[0], -1, shape[-2], shape[-1]) if scores.ndim == 5 else scores
        s = call.run(call.scores, s.astype(mx.float32))
        p = call.run(call.pattern, mx.softmax(s, axis=-1, precise=True))
        return p.astype(scores.dtype).reshape(shape)


# ---------------------------------------------------------------- switching it on and off
_SWAPS: dict[tuple[str, str], list] = {}  # (mlx-lm module, attribute) -> [original, users]
_ENGAGED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # HookedModel -> [markers, users]


def _attention_class(module) -> type:
    """The mlx-lm class of an attention module (under the hook machinery's subclass)."""
    for cls in type(module).__mro__:
        if cls.__module__.startswith("mlx_lm.models."):
            return cls
    raise TapError(f"{type(module).__name__} is not an mlx-lm attention module")


def _swaps_for(hm: HookedModel) -> list[tuple[Any, str]]:
    """(mlx-lm module, attribute) to replace so that this model's attention can run explicitly (a
    layer-sharded rank looks only at the blocks it holds: the others are relays without attention)."""
    out = []
    held = [b for l, b in enumerate(text_model(hm.model).layers) if hm.owns(l, f"blocks.{l}.attn.hook_v")]
    for cls in {_attention_class(block.self_attn) for block in held}:
        mod = sys.modules[cls.__module__]
        if callable(getattr(mod, "scaled_dot_product_attention", None)):
            out.append((mod, "scaled_dot_product_attention"))
        elif "softmax" in cls.__call__.__code__.co_names and (getattr(mod, "mx", None) is mx
                                                              or isinstance(getattr(mod, "mx", None), _MxProxy)):
            out.append((mod, "mx"))
        else:
            raise TapError(f"attention pattern hooks do not support {cls.__module__}.{cls.__name__}")
    return out


def _swap_in(mod, attr: str) -> None:
    key = (mod.__name__, attr)
    if key not in _SWAPS:
        original = getattr(mod, attr)
        _SWAPS[key] = [original, 0]
        setattr(mod, attr, _explicit_sdpa(original) if attr == "scaled_dot_product_attention" else _MxProxy())
    _SWAPS[key][1] += 1


def _swap_out(mod, attr: str) -> None:
    key = (mod.__name__, attr)
    _SWAPS[key][1] -= 1
    if not _SWAPS[key][1]:
        setattr(mod, attr, _SWAPS.pop(key)[0])


@contextmanager
def explicit_attention(hm: HookedModel) -> Iterator[None]:
    """While pattern taps of `hm` are attached: the stand-ins in mlx-lm's attention modules and a marker on
    every layer's attn.hook_v (nested uses share them; the last one out restores mlx-lm)."""
    swaps = _swaps_for(hm)
    for mod, attr in swaps:
        _swap_in(mod, attr)
    entry = _ENGAGED.get(hm)
    try:
        if entry is None:
            markers = []
            for l in range(hm.info.n_layers):
                v = f"blocks.{l}.attn.hook_v"
                if not hm.owns(l, v):
                    continue
                m = _Marker(scores=hm.point(f"blocks.{l}.{SCORES}"), pattern=hm.point(f"blocks.{l}.{PATTERN}"))
                markers.append((hm.point(v), m))
            entry = _ENGAGED[hm] = [markers, 0]
            hm.attach_internal(markers)
        entry[1] += 1
        yield
    finally:
        if entry is not None:
            entry[1] -= 1
            if not entry[1]:
                hm.detach_internal(entry[0])
                del _ENGAGED[hm]
        _PENDING[0] = None
        for mod, attr in swaps:
            _swap_out(mod, attr)


def join_chunks(chunks: list[mx.array]) -> mx.array:
    """Generation chunks of a pattern / score capture along positions, keys zero-padded to the widest chunk
    (keys not yet seen by an earlier chunk's queries are 0)."""
    width = max(c.shape[-1] for c in chunks)
    return mx.concatenate([mx.pad(c, [(0, 0)] * (c.ndim - 1) + [(0, width - c.shape[-1])]) for c in chunks], axis=1)


def capture_patterns(hm: HookedModel, prompts, layers=None, scores: bool = False) -> dict[int, mx.array]:
    """{layer: pattern [B, H, L, L]} (or the pre-softmax scores) of one forward, in the attention layout."""
    n = hm.info.n_layers
    layers = list(range(n)) if layers is None else [int(l) % n for l in layers]
    names = {l: f"blocks.{l}.{SCORES if scores else PATTERN}" for l in layers}
    _, cache = hm.run_with_cache(prompts, names=list(names.values()))
    return {l: cache[nm].transpose(0, 2, 1, 3) for l, nm in names.items()}

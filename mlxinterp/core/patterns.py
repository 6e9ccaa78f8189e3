"""Attention scores and patterns as hook points: `blocks.{i}.attn.hook_attn_scores` / `attn.hook_pattern`.

mlx-lm computes attention with the fused `mx.fast.scaled_dot_product_attention`,
which never materialises the pattern. Inside `pattern_hooks(hm, {...})` the
attention of the layers that have a pattern or score tap is computed
explicitly instead (scores = q k^T * scale, the mask mlx-lm passes, softmax in
float32, pattern @ v), with the taps applied to the scores and to the pattern;
every other layer still calls the fused kernel, and outside the context nothing
is changed at all (bit-identical logits).

How the explicit path is reached without re-implementing any model: the
attention modules of llama, qwen2, qwen3 and gemma3 call the function
`scaled_dot_product_attention` of their own mlx-lm module, which the context
replaces for its duration; Gemma 2 writes its attention out itself (with its
logit soft-cap) and calls `mx.softmax`, so there the module's `mx` is replaced by
a proxy whose `softmax` runs the taps. Which layer is calling is recorded by a
marker tap on `attn.hook_v`, which fires inside the same attention call just
before the scores are computed.

Layout seen by taps: [B, L_query, n_heads, L_key] (positions on axis 1 like every
other hook point, so `positions=` and `heads=` work as usual). The equality of the
explicit and the fused path (tests/test_patterns.py) is checked on every tiny
architecture, with padding, sliding windows, GQA, soft-capping and the KV cache.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import mlx.core as mx

from mlxinterp.core import taps as T
from mlxinterp.core.archs import text_model
from mlxinterp.core.errors import HookNameError, TapError

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

SCORES, PATTERN = "attn.hook_attn_scores", "attn.hook_pattern"
_NAME_RE = re.compile(r"^blocks\.(-?\d+)\.(attn\.hook_attn_scores|attn\.hook_pattern)$")
# float32 minimum instead of -inf for masked keys, as mlx-lm's Gemma 2 attention does: a query whose keys are
# all masked (a left-padding column) gets a finite uniform row instead of NaN, which would reach real tokens
# through 0 * NaN in pattern @ values.
_MASKED = float(mx.finfo(mx.float32).min)


def pattern_names(hm: HookedModel) -> list[str]:
    """Every attention score and pattern hook name of this model."""
    return [f"blocks.{l}.{s}" for l in range(hm.info.n_layers) for s in (SCORES, PATTERN)]


def _parse(hm: HookedModel, name: str) -> tuple[int, str]:
    m = _NAME_RE.match(name)
    if not m:
        raise HookNameError(f"{name!r} is not an attention score or pattern hook point",
                            hint="use blocks.{i}.attn.hook_pattern or blocks.{i}.attn.hook_attn_scores")
    layer, n = int(m.group(1)), hm.info.n_layers
    if not -n <= layer < n:
        raise HookNameError(f"layer {layer} in {name!r} is out of range; this model has layers 0..{n - 1}")
    return layer % n, m.group(2)


@dataclass(eq=False)
class _Marker(T.Tap):
    """Identity tap on attn.hook_v: records which layer's attention is running, and its tap context."""

    layer: int = 0
    state: Any = None

    def __call__(self, a, ctx):
        self.state.layer, self.state.ctx = self.layer, ctx
        return a


class _State:
    def __init__(self, taps: dict[int, dict[str, list[T.Tap]]], n_heads: int):
        self.taps, self.n_heads = taps, n_heads
        self.layer: int | None = None
        self.ctx: T.TapContext | None = None

    def run(self, kind: str, a: mx.array) -> mx.array:
        """Taps of `kind` at the current layer on a [B, H, Lq, Lk] array (shown to them as [B, Lq, H, Lk])."""
        taps = self.taps.get(self.layer, {}).get(kind)
        if not taps:
            return a
        c = self.ctx
        x = a.transpose(0, 2, 1, 3)
        ctx = T.TapContext(f"blocks.{self.layer}.{kind}", self.layer, c.seq_pos, c.prompt_len,
                           (x.shape[2], x.shape[3]), None, c.padded)
        for tap in taps:
            x = tap(x, ctx)
        return x.transpose(0, 2, 1, 3)

    def active(self) -> bool:
        return self.layer in self.taps


def _explicit_sdpa(state: _State, fused):
    """A stand-in for mlx-lm's scaled_dot_product_attention: fused for untapped layers, explicit with taps."""

    def sdpa(queries, keys, values, cache, scale, mask, sinks=None):
        if not state.active():
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
        s = _masked(s, mask, Lq, Lk)
        s = state.run(SCORES, s)
        p = state.run(PATTERN, mx.softmax(s, axis=-1, precise=True))
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

    def __init__(self, state: _State):
        self._state = state

    def __getattr__(self, name):
        return getattr(mx, name)

    def softmax(self, scores, *args, **kwargs):
        st = self._state
        if not st.active() or scores.ndim not in (4, 5):
            return mx.softmax(scores, *args, **kwargs)
        shape = scores.shape
        s = scores.reshape(shape[0], -1, shape[-2], shape[-1]) if scores.ndim == 5 else scores
        s = st.run(SCORES, s.astype(mx.float32))
        p = st.run(PATTERN, mx.softmax(s, axis=-1, precise=True))
        return p.astype(scores.dtype).reshape(shape)


def _attention_class(module) -> type:
    """The mlx-lm class of an attention module (under the hook machinery's subclass)."""
    for cls in type(module).__mro__:
        if cls.__module__.startswith("mlx_lm.models."):
            return cls
    raise TapError(f"{type(module).__name__} is not an mlx-lm attention module")


def _check_tap(tap, name: str, n_heads: int) -> None:
    if not isinstance(tap, T.Tap):
        raise TapError(f"{name}: {tap!r:.60} is not a tap", hint="use mlxinterp.core.taps (Capture, Replace, Scale, Fn, ...)")
    # Value checks of Replace/Add need a fixed feature shape; a pattern's last axis grows with the keys,
    # so only the head axis is checked here (the value is aligned to each forward when the tap runs).
    T.Tap.validate(tap, (n_heads, 0), name)
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


@contextmanager
def pattern_hooks(hm: HookedModel, taps: Mapping[str, T.Tap | Sequence[T.Tap]]) -> Iterator[Any]:
    """Attach taps at attention score / pattern hook points for the duration of the block.

    taps: {"blocks.3.attn.hook_pattern": Capture(store=...) or Replace(value) or Fn(...), ...}.
    Runs nest with `hm.hooks(...)` (ordinary taps) and `hm.generate(...)` (KV cache).
    """
    n, H = hm.info.n_layers, hm.info.n_heads
    per_layer: dict[int, dict[str, list[T.Tap]]] = {}
    for name, tap_or_list in taps.items():
        layer, kind = _parse(hm, name)
        for tap in tap_or_list if isinstance(tap_or_list, (list, tuple)) else [tap_or_list]:
            _check_tap(tap, name, H)
            per_layer.setdefault(layer, {}).setdefault(kind, []).append(tap)
    state = _State(per_layer, H)
    attns = [block.self_attn for block in text_model(hm.model).layers]
    classes = {_attention_class(a) for a in attns}
    swaps: list[tuple[Any, str, Any]] = []
    for cls in classes:
        mod = sys.modules[cls.__module__]
        if callable(getattr(mod, "scaled_dot_product_attention", None)):
            swaps.append((mod, "scaled_dot_product_attention", _explicit_sdpa(state, mod.scaled_dot_product_attention)))
        elif "softmax" in cls.__call__.__code__.co_names and getattr(mod, "mx", None) is mx:
            swaps.append((mod, "mx", _MxProxy(state)))
        else:
            raise TapError(f"attention pattern hooks do not support {cls.__module__}.{cls.__name__}")
    markers = [(f"blocks.{l}.attn.hook_v", _Marker(layer=l, state=state)) for l in range(n)]
    saved = [(mod, attr, getattr(mod, attr)) for mod, attr, _ in swaps]
    try:
        for mod, attr, new in swaps:
            setattr(mod, attr, new)
        with hm.hooks(markers):
            yield state
    finally:
        for mod, attr, old in saved:
            setattr(mod, attr, old)


class PatternStore:
    """A Capture store for pattern hooks: {name: [chunks]}; `get` joins generation chunks, zero-padding the keys."""

    def __init__(self):
        self.chunks: dict[str, list[mx.array]] = {}

    def append(self, name: str, a: mx.array, seq_pos) -> None:
        self.chunks.setdefault(name, []).append(a[...])

    def __getitem__(self, name: str) -> mx.array:
        """[B, L_query, H, L_key] (keys not yet seen by an earlier chunk's queries are 0)."""
        chunks = self.chunks[name]
        width = max(c.shape[-1] for c in chunks)
        return mx.concatenate([mx.pad(c, [(0, 0)] * 3 + [(0, width - c.shape[-1])]) for c in chunks], axis=1)


def capture_patterns(hm: HookedModel, prompts, layers: Sequence[int] | None = None, scores: bool = False) -> dict[int, mx.array]:
    """{layer: pattern [B, H, L, L]} (or the pre-softmax scores) of one forward, in the attention layout."""
    n = hm.info.n_layers
    layers = list(range(n)) if layers is None else [int(l) % n for l in layers]
    store = PatternStore()
    kind = SCORES if scores else PATTERN
    names = {l: f"blocks.{l}.{kind}" for l in layers}
    with pattern_hooks(hm, {nm: T.Capture(store=store) for nm in names.values()}):
        logits = hm(prompts)
    out = {l: store[nm].transpose(0, 2, 1, 3) for l, nm in names.items()}
    mx.eval(logits, *out.values())
    return out

"""Taps: what happens to an activation at a hook point.

A tap is a small object with `__call__(activation, ctx) -> activation`. It may
read the activation (Capture), add to it (Add), overwrite it (Replace, Ablate,
Scale) or project it (Project), at all positions or a chosen subset, in
prompt processing, in generated tokens, or both. Taps at one hook point run in
the order they were attached, so they compose. A hook point with no tap is
not touched at all: logits stay bit-identical to plain mlx-lm.

Positions are counted per sequence from its first real token (left padding is
skipped), and keep counting through generation with the KV cache.

Every tap also takes `rows=`: the batch rows it acts on (default all), so the
rows of one batched forward or `generate_batch` can carry different
interventions (a steering sweep as one batch: one Add per row, or one Add
with a per-row `scale`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Union

import mlx.core as mx
import numpy as np

from mlxinterp.core.errors import TapError
from mlxinterp.core.validate import FLOAT32_MAX, INT64_MAX

# all | "last" | one position | positions | per-batch-item lists | bool mask [B, L]
Positions = Union[None, str, int, Sequence[int], Sequence[Sequence[int]], np.ndarray, mx.array]
WHEN = ("both", "prompt", "generated")


class TapContext:
    """Where a tap fires: hook name, layer and the current chunk's positions.

    `seq_pos[b, j]` is the position within sequence b of column j of this
    forward's input (negative for left padding); `prompt_len[b]` is the prompt
    length, so columns at or after it are generated tokens. Built once per hook
    point per forward, so it is a plain slotted class.
    """

    __slots__ = ("name", "layer", "seq_pos", "prompt_len", "feature_shape", "_masks", "padded")

    def __init__(self, name: str, layer: int | None, seq_pos: np.ndarray, prompt_len: np.ndarray | None,
                 feature_shape: tuple[int, ...] = (), masks: dict | None = None, padded: bool | None = None):
        self.name, self.layer, self.seq_pos, self.prompt_len = name, layer, seq_pos, prompt_len
        self.feature_shape = feature_shape
        self._masks = {} if masks is None else masks  # shared across one forward's hook points
        self.padded = bool((seq_pos < 0).any()) if padded is None else padded

    def mask(self, positions: Positions, when: str = "both", rows: Sequence[int] | None = None) -> mx.array | None:
        """Boolean [B, L] mask of columns a tap applies to; None means all columns."""
        key = (_key(positions), when, None if rows is None else tuple(rows))
        if key not in self._masks:
            self._masks[key] = self._build_mask(positions, when, rows)
        return self._masks[key]

    def _build_mask(self, positions: Positions, when: str, rows: Sequence[int] | None = None) -> mx.array | None:
        pos = self.seq_pos
        m = _position_mask(positions, pos, self.prompt_len)
        if rows is not None:
            m = _row_mask(rows, pos.shape[0])[:, None] & (True if m is None else m)
        if when != "both":  # a plain forward (prompt_len None) is all prompt
            gen = pos >= self.prompt_len[:, None] if self.prompt_len is not None else np.zeros(pos.shape, bool)
            m = (gen if when == "generated" else ~gen) & (True if m is None else m)
        if (pos < 0).any():  # never touch left padding
            m = (pos >= 0) & (True if m is None else m)
        if m is None or bool(np.all(m)):
            return None
        return mx.array(m)


def _row_mask(rows: Sequence[int], B: int) -> np.ndarray:
    """[B] bool for a rows= selector; a row past the batch is a mistake, not a no-op."""
    bad = [r for r in rows if not -B <= r < B]
    if bad:
        raise TapError(f"rows={list(rows)!r:.60} names row {bad[0]}; this forward has {B} rows (0..{B - 1})")
    m = np.zeros(B, bool)
    m[list(rows)] = True
    return m


def _key(positions: Positions) -> Any:
    if isinstance(positions, (np.ndarray, mx.array)):
        return ("arr", id(positions))
    if isinstance(positions, (list, tuple)):
        return tuple(tuple(p) if isinstance(p, (list, tuple)) else p for p in positions)
    return positions


def _position_mask(positions: Positions, pos: np.ndarray, prompt_len: np.ndarray | None):
    """numpy [B, L] bool (or None for all) for a positions spec."""
    B, L = pos.shape
    if positions is None or (isinstance(positions, str) and positions == "all"):
        return None
    if isinstance(positions, str):
        if positions != "last":
            raise TapError(f"positions={positions!r} is not allowed; use 'all', 'last', ints, lists or a mask")
        if prompt_len is None:  # plain forward: last column (left padding keeps it last)
            m = np.zeros((B, L), bool)
            m[:, -1] = True
            return m
        return pos == (prompt_len[:, None] - 1)
    if isinstance(positions, (np.ndarray, mx.array)) and np.asarray(positions).dtype == bool:
        arr = np.asarray(positions)
        if arr.shape != (B, L):
            raise TapError(f"position mask has shape {arr.shape}; this forward needs {(B, L)}")
        return arr
    ref = (prompt_len if prompt_len is not None else pos.max(axis=1) + 1)[:, None]
    if isinstance(positions, (int, np.integer)):
        positions = [int(positions)]
    positions = list(positions)
    per_item = bool(positions) and isinstance(positions[0], (list, tuple, np.ndarray))
    if per_item:
        if len(positions) != B:
            raise TapError(f"per-item positions list has {len(positions)} entries; batch has {B}")
        rows = [np.asarray(p, int).reshape(-1) for p in positions]
    else:
        rows = [np.asarray(positions, int).reshape(-1)] * B
    # A plain forward holding whole sequences (no KV-cache offset) knows every valid position.
    whole = prompt_len is None and bool((pos[:, 0] <= 0).all())
    _check_range(rows, ref[:, 0], whole, per_item)
    m = np.zeros((B, L), bool)
    for b, want in enumerate(rows):
        want = np.where(want < 0, want + ref[b], want)  # negative: from the end of the prompt
        m[b] = np.isin(pos[b], want)
    return m


def _check_range(rows: list[np.ndarray], n: np.ndarray, whole: bool, per_item: bool) -> None:
    """A position that exists in no sequence is a typo, not a no-op (it used to be ignored silently).

    n[b] is sequence b's length (its prompt length in generation, where positions
    past the prompt are generated tokens and so are allowed).
    """
    def outside(want: np.ndarray, b: int) -> np.ndarray:
        bad = want < -n[b]
        if whole:
            bad |= want >= n[b]
        return want[bad]

    later = "" if whole else " or a generated position"
    if per_item:
        for b, want in enumerate(rows):
            bad = outside(want, b)
            if bad.size:
                raise TapError(f"position {int(bad[0])} is out of range for batch item {b}, which has {n[b]} tokens "
                               f"(allowed {-n[b]}..{n[b] - 1}{later})")
        return
    bad = rows[0]
    for b in range(len(rows)):
        bad = np.intersect1d(bad, outside(rows[0], b))
    if bad.size:
        lengths = sorted(set(n.tolist()))
        size = f"a {lengths[0]}-token sequence" if len(lengths) == 1 else f"every sequence (lengths {lengths})"
        raise TapError(f"position {int(bad[0])} is out of range for {size} "
                       f"(allowed {-max(lengths)}..{max(lengths) - 1}{later})")


def _check_positions(positions: Positions) -> None:
    """Reject a positions spec of the wrong kind before any forward runs (not deep inside one)."""
    allowed = ("allowed: None or 'all', 'last', an int, a list of ints, per-item lists of ints, "
               "or a bool mask [B, L]")
    if positions is None or isinstance(positions, (int, np.integer)) and not isinstance(positions, (bool, np.bool_)):
        _check_magnitude([] if positions is None else [positions])
        return
    if isinstance(positions, str):
        if positions not in ("all", "last"):
            raise TapError(f"positions={positions!r} is not allowed; {allowed}")
        return
    if isinstance(positions, (np.ndarray, mx.array)):
        arr = np.asarray(positions)
        if arr.dtype == bool and arr.ndim == 2 or np.issubdtype(arr.dtype, np.integer) and arr.ndim in (1, 2):
            return
        raise TapError(f"positions array of dtype {arr.dtype} and shape {arr.shape} is not allowed; {allowed}")
    if isinstance(positions, (list, tuple)):
        items = [x for p in positions for x in (p if isinstance(p, (list, tuple, np.ndarray)) else [p])]
        if all(isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)) for x in items):
            _check_magnitude(items)
            return
    raise TapError(f"positions={positions!r:.60} is not allowed; {allowed}")


def _check_magnitude(items: list) -> None:
    """Positions are counted in int64 (numpy); a larger int is no position of any sequence."""
    huge = [x for x in items if abs(int(x)) > INT64_MAX // 2]
    if huge:
        raise TapError(f"position {int(huge[0])} is out of range for any sequence",
                       hint="positions count from 0 (negative from the end) within the prompt")


def _apply(a: mx.array, new: mx.array, mask: mx.array | None, head_mask: mx.array | None = None):
    """Blend `new` into `a` where mask (positions) and head_mask (heads) say so."""
    if mask is None and head_mask is None:
        return new if new.dtype == a.dtype else new.astype(a.dtype)
    m = None
    if mask is not None:
        m = mask.reshape(mask.shape + (1,) * (a.ndim - 2))
    if head_mask is not None:
        hm = head_mask.reshape(head_mask.shape + (1,))
        m = hm if m is None else m & hm
    return mx.where(m, new.astype(a.dtype), a)


def _as_vector(value, feature_shape: tuple[int, ...], what: str) -> mx.array:
    """Validate a steering/patching value against the hook's feature shape."""
    if value is None:
        raise TapError(f"{what} is missing", hint="pass an array of the hook point's shape")
    try:
        host = None if isinstance(value, mx.array) else np.asarray(value)
        if host is not None and host.dtype.kind not in "biuf":  # strings, objects, complex: MLX would abort
            raise TypeError(f"dtype {host.dtype}")
        arr = value if host is None else mx.array(host)
    except (TypeError, ValueError, OverflowError) as e:
        raise TapError(f"{what} is not a numeric array ({type(value).__name__}: {e})") from None
    if not mx.issubdtype(arr.dtype, mx.floating):
        raise TapError(f"{what} has dtype {arr.dtype}; a floating dtype is required")
    n = len(feature_shape)
    if feature_shape and tuple(arr.shape[-n:]) != tuple(feature_shape):
        raise TapError(f"{what} has shape {tuple(arr.shape)}; this hook point needs (..., {', '.join(map(str, feature_shape))})")
    finite = mx.all(mx.isfinite(arr)).item()
    if not finite:
        raise TapError(f"{what} contains NaN or inf; steering/patching values must be finite")
    return arr


def _largest(arr: mx.array) -> float:
    return float(mx.max(mx.abs(arr.astype(mx.float32)))) if arr.size else 0.0


@dataclass(kw_only=True, eq=False)
class Tap:
    """Base: positions, phase ('both' | 'prompt' | 'generated'), an optional head subset and batch rows.

    These four are keyword-only on every tap: `Add(v, 2.0, positions="last", rows=[0, 2])`.
    """

    positions: Positions = None
    when: str = "both"
    heads: Sequence[int] | None = None
    rows: Sequence[int] | None = None
    # Attributes (arrays or None) a tap sets during a forward for code to read afterwards. A layer-sharded
    # model (core/pipeline.py) runs the tap on the rank holding its block only; it gives these to the
    # same tap on every other rank when the `hooks` block ends, so that code reads the same values.
    recorded: ClassVar[tuple[str, ...]] = ()

    def validate(self, feature_shape: tuple[int, ...], name: str) -> None:
        """Check arguments against the hook point before any forward runs."""
        _check_positions(self.positions)
        if self.when not in WHEN:
            raise TapError(f"when={self.when!r} is not allowed; use one of {WHEN}")
        if self.rows is not None:
            rows = self.rows
            if isinstance(rows, (str, bytes, np.ndarray, mx.array)) or not isinstance(rows, (list, tuple, range)) \
                    or not rows or not all(isinstance(r, (int, np.integer)) and not isinstance(r, (bool, np.bool_)) for r in rows):
                raise TapError(f"rows={rows!r:.60} is not allowed; use a non-empty list of batch row indices, "
                               "e.g. rows=[0, 2]")
            self.rows = tuple(int(r) for r in rows)
        if self.heads is not None:
            heads = self.heads
            if isinstance(heads, (str, bytes, np.ndarray, mx.array)) or not isinstance(heads, (list, tuple, range)) \
                    or not all(isinstance(h, (int, np.integer)) and not isinstance(h, (bool, np.bool_)) for h in heads):
                raise TapError(f"heads={heads!r:.60} is not allowed; use a list of head indices, e.g. heads=[0, 2]")
            if len(feature_shape) != 2:
                raise TapError(f"heads= only applies to per-head hook points (attn.hook_q/k/v/z); {name} has shape {feature_shape}")
            bad = [h for h in self.heads if not 0 <= h < feature_shape[0]]
            if bad:
                raise TapError(f"heads {bad} out of range; {name} has heads 0..{feature_shape[0] - 1}")

    def describe(self) -> str:
        """A short name for messages (no arrays)."""
        return type(self).__name__

    def _head_mask(self, ctx: TapContext) -> mx.array | None:
        if self.heads is None:
            return None
        m = np.zeros(ctx.feature_shape[0], bool)
        m[list(self.heads)] = True
        return mx.array(m)

    def _blend(self, a: mx.array, new: mx.array, ctx: TapContext) -> mx.array:
        if self.positions is None and self.heads is None and self.rows is None and not ctx.padded and (self.when == "both" or (self.when == "prompt" and ctx.prompt_len is None)):
            return new if new.dtype == a.dtype else new.astype(a.dtype)  # everywhere: no mask needed
        return _apply(a, new, ctx.mask(self.positions, self.when, self.rows), self._head_mask(ctx))


@dataclass(eq=False)
class Capture(Tap):
    """Record the activation (whole chunk) into `store[name]`; leaves it unchanged.

    In generation each forward appends a chunk; ActivationCache joins them.
    """

    store: Any = None

    def validate(self, feature_shape, name):
        super().validate(feature_shape, name)
        if self.rows is not None:  # it records whole chunks; a silently ignored selector would mislead
            raise TapError(f"Capture at {name}: rows= is not allowed; it records every row",
                           hint="index the captured array by row instead, e.g. cache[name][[0, 2]]")
        if not callable(getattr(self.store, "append", None)):
            raise TapError(f"Capture at {name}: store={self.store!r:.60} has no append(name, activation, seq_pos)",
                           hint="use HookedModel.run_with_cache, or pass an ActivationCache as store")

    def __call__(self, a: mx.array, ctx: TapContext) -> mx.array:
        # a[...] is a new graph node: mlx-lm updates some arrays in place
        # (Gemma's `h *= sqrt(d)`), which would otherwise change what we saved.
        self.store.append(ctx.name, a[...], ctx.seq_pos)
        return a


@dataclass(eq=False)
class Add(Tap):
    """a + scale * vector (steering).

    vector: feature shape, or [L, ...] / [B, L, ...] aligned to the chunk, or
    [B, 1, ...]: one vector per batch row, at every position. scale: a number,
    or one number per batch row (a strength sweep as one batched generation).
    """

    vector: Any = None
    scale: float | Sequence[float] = 1.0

    def validate(self, feature_shape, name):
        super().validate(feature_shape, name)
        self.vector = _as_vector(self.vector, feature_shape, f"steering vector for {name}")
        scales = _scales(self.scale)
        per_row = _per_row(self.scale)
        shown = tuple(scales.tolist()) if per_row else self.scale  # a plain number as written: 10, not 10.0
        self.scale = shown if per_row else float(scales[0])
        if float(np.abs(scales).max()) * _largest(self.vector) > FLOAT32_MAX:
            raise TapError(f"scale={shown!r} times the steering vector's largest entry {_largest(self.vector):.3g} "
                           f"at {name} overflows float32 (largest finite value {FLOAT32_MAX:.3g})",
                           hint="steering values are on the scale of the activations (`mlxinterp hooks` shows "
                                "hook shapes; directions report their norm relative to the residual)")

    def describe(self) -> str:
        s = _scales(self.scale)
        scale = f"[{', '.join(f'{x:g}' for x in s[:4])}{', ...' if s.size > 4 else ''}]" if _per_row(self.scale) \
            else f"{float(s[0]):g}"
        return f"Add(scale={scale}, |vector|max={_largest(self.vector):.3g})"

    def __call__(self, a, ctx):
        v = _align(self.vector, a, ctx).astype(mx.float32)
        if not _per_row(self.scale):
            new = a.astype(mx.float32) + float(self.scale) * v
        else:
            s = _scales(self.scale)
            if s.size != a.shape[0]:
                raise TapError(f"{s.size} per-row scales at {ctx.name}; this forward has {a.shape[0]} rows")
            new = a.astype(mx.float32) + mx.array(s.astype(np.float32)).reshape((-1,) + (1,) * (a.ndim - 1)) * v
        return self._blend(a, new, ctx)


@dataclass(eq=False)
class Replace(Tap):
    """Overwrite with `value` (patching): feature shape, or [L, ...] / [B, L, ...] aligned to the chunk."""

    value: Any = None

    def validate(self, feature_shape, name):
        super().validate(feature_shape, name)
        self.value = _as_vector(self.value, feature_shape, f"patch value for {name}")

    def __call__(self, a, ctx):
        return self._blend(a, mx.broadcast_to(_align(self.value, a, ctx), a.shape), ctx)


@dataclass(eq=False)
class Scale(Tap):
    """a * factor."""

    factor: float = 1.0

    def validate(self, feature_shape, name):
        super().validate(feature_shape, name)
        _finite_number(self.factor, "factor")

    def describe(self) -> str:
        return f"Scale(factor={float(self.factor):g})"

    def __call__(self, a, ctx):
        return self._blend(a, a * self.factor, ctx)


@dataclass(eq=False)
class Ablate(Tap):
    """Zero the activation, or set it to a mean (given, else the batch mean over real positions)."""

    mode: str = "zero"
    mean: Any = None

    def validate(self, feature_shape, name):
        super().validate(feature_shape, name)
        if self.mode not in ("zero", "mean"):
            raise TapError(f"ablation mode={self.mode!r} is not allowed; use 'zero' or 'mean'")
        if self.mean is not None:
            self.mean = _as_vector(self.mean, feature_shape, f"mean for {name}")

    def __call__(self, a, ctx):
        if self.mode == "zero":
            return self._blend(a, mx.zeros_like(a), ctx)
        mean = self.mean
        if mean is None:
            real = mx.array(ctx.seq_pos >= 0).reshape(ctx.seq_pos.shape + (1,) * (a.ndim - 2))
            total = mx.sum(mx.where(real, a.astype(mx.float32), 0.0), axis=(0, 1))
            mean = total / mx.maximum(mx.sum(real), 1)
        return self._blend(a, mx.broadcast_to(mean.astype(a.dtype), a.shape), ctx)


@dataclass(eq=False)
class Project(Tap):
    """Keep only the part of a in span(basis) ('onto') or remove it ('out').

    basis: [k, d] rows spanning the subspace (need not be orthonormal; it is
    orthonormalised once, in float64).
    """

    basis: Any = None
    mode: str = "out"

    def validate(self, feature_shape, name):
        super().validate(feature_shape, name)
        if self.mode not in ("onto", "out"):
            raise TapError(f"projection mode={self.mode!r} is not allowed; use 'onto' or 'out'")
        try:
            b = np.asarray(self.basis, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise TapError(f"basis for {name} is not a numeric array ({type(self.basis).__name__}: {e})") from None
        if b.ndim == 1:
            b = b[None]
        if b.ndim != 2 or b.shape[1] != feature_shape[-1]:
            raise TapError(f"basis for {name} has shape {b.shape}; needs (k, {feature_shape[-1]})")
        if not np.isfinite(b).all():
            raise TapError(f"basis for {name} contains NaN or inf")
        q, r = np.linalg.qr(b.T)
        keep = np.abs(np.diag(r)) > 1e-10 * max(1.0, np.abs(r).max())
        if not keep.any():
            raise TapError(f"basis for {name} is zero; nothing to project")
        self._q = mx.array(q[:, keep].T.astype(np.float32))  # [k, d] orthonormal rows

    def __call__(self, a, ctx):
        x = a.astype(mx.float32)
        inside = (x @ self._q.T) @ self._q
        return self._blend(a, inside if self.mode == "onto" else x - inside, ctx)


@dataclass(eq=False)
class Fn(Tap):
    """Any function (activation, ctx) -> activation, for one-off interventions."""

    fn: Callable[[mx.array, TapContext], mx.array] | None = None

    def validate(self, feature_shape, name):
        super().validate(feature_shape, name)
        if not callable(self.fn):
            raise TapError(f"taps.Fn at {name}: fn={self.fn!r:.60} is not callable",
                           hint="pass a function (activation, ctx) -> activation")

    def describe(self) -> str:
        return f"Fn({getattr(self.fn, '__qualname__', type(self.fn).__name__)})"

    def __call__(self, a, ctx):
        new = self.fn(a, ctx)
        if not isinstance(new, mx.array) or new.shape != a.shape or not mx.issubdtype(new.dtype, mx.floating):
            got = (f"an mx.array of shape {tuple(new.shape)} and dtype {str(new.dtype).removeprefix('mlx.core.')}"
                   if isinstance(new, mx.array) else f"{type(new).__module__}.{type(new).__name__}"
                   if new is not None else "None")
            raise TapError(f"{self.describe()} at {ctx.name} returned {got}; it must return a floating mx.array of "
                           f"the activation's shape {tuple(a.shape)}",
                           hint="e.g. `lambda a, ctx: a * 2` (numpy arrays: wrap with mx.array)")
        return self._blend(a, new, ctx)


def _per_row(scale) -> bool:
    return isinstance(scale, (list, tuple)) or isinstance(scale, (np.ndarray, mx.array)) and scale.ndim > 0


def _scales(scale) -> np.ndarray:
    """Add's scale as a float64 vector (one entry for a plain number), each entry checked."""
    if _per_row(scale):
        if isinstance(scale, (np.ndarray, mx.array)) and scale.ndim != 1:
            raise TapError(f"scale of shape {tuple(scale.shape)} is not allowed; use a number, or one number per batch row")
        vals = list(np.asarray(scale)) if isinstance(scale, (np.ndarray, mx.array)) else list(scale)
        if not vals:
            raise TapError("scale=[] is not allowed; use a number, or one number per batch row")
        for x in vals:
            _finite_number(x, "scale")
        return np.asarray(vals, np.float64)
    _finite_number(scale, "scale")
    return np.asarray([float(scale)])


def _finite_number(x, what: str) -> None:
    """A scalar argument (scale, factor) must be a finite real number, not a string or NaN."""
    try:
        ok = not isinstance(x, (str, bytes, bool)) and bool(np.isfinite(float(x)))
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise TapError(f"{what}={x!r:.60} is not allowed; use a finite number")
    if abs(float(x)) > FLOAT32_MAX:
        raise TapError(f"{what}={x!r:.60} is not allowed; use a finite number within float32 "
                       f"(|{what}| <= {FLOAT32_MAX:.3g}), which is what activations are computed in")


def _align(value: mx.array, a: mx.array, ctx: TapContext) -> mx.array:
    """Line a value with a sequence axis up with this chunk (generation feeds 1 token at a time)."""
    n_feat = len(ctx.feature_shape)
    extra = value.ndim - n_feat
    if extra <= 0:
        return value
    L = a.shape[1]
    if value.ndim == a.ndim and value.shape[0] not in (1, a.shape[0]):
        raise TapError(f"value for {ctx.name} has batch size {value.shape[0]}; this forward has {a.shape[0]} rows")
    seq_len = value.shape[-n_feat - 1]
    if seq_len == L or seq_len == 1 and value.ndim == a.ndim:  # [B, 1, ...]: one value per row, every position
        return value
    starts = ctx.seq_pos[:, 0]
    if seq_len > L and (starts == starts[0]).all() and starts[0] >= 0 and starts[0] + L <= seq_len:
        s = int(starts[0])
        return value[..., s : s + L, :] if n_feat == 1 else value[..., s : s + L, :, :]
    raise TapError(
        f"value for {ctx.name} has {seq_len} positions; this forward has {L} (starting at {starts.tolist()})"
    )

"""Gradients of a metric with respect to the activation at any hook point.

`value_and_grad(hm, prompts, metric, at=[...])` runs mlx-lm's own forward with
a *probe* tap at each named hook: the tap adds a zero array `delta` of the
activation's shape ([B, L, *feature], per head for attn.hook_q/k/v/z, [B, L, H, L] for
attention scores and patterns). Then
d metric / d delta is d metric / d activation, computed by `mx.value_and_grad`
through the real model (fused attention, quantized matmuls, masks, caches).
Because every delta is zero, adding probes at many hook points at once does
not change any of them: each gradient is the partial derivative at its own
hook with everything else as in the plain forward.

Batched prompts are left padded with mlx-lm's batch caches (as
`HookedModel.forward` does); the metric is summed over rows, and rows do not
interact, so row b of each gradient is that prompt's own gradient. Gradients
at padding columns are zero (nothing attends to padding).

`metric` maps logits [B, V] at the read column to [B] (as in analysis.patching);
a `VocabMetric` (e.g. `logit_diff`) only has its tokens' rows of the
unembedding computed.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import numpy as np

from mlxinterp.analysis.patching import Metric, VocabMetric, forward_last
from mlxinterp.core import taps as T
from mlxinterp.core.errors import MlxInterpError, PromptError
from mlxinterp.core.patterns import is_pattern_name

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel


@dataclass(eq=False)
class Probe(T.Tap):
    """Adds `delta` to the activation (zero in a gradient run) and keeps the activation it saw."""

    delta: Any = None
    seen: Any = None

    def __call__(self, a: mx.array, ctx: T.TapContext) -> mx.array:
        self.seen = a
        return a + self.delta.astype(a.dtype)


@dataclass
class GradResult:
    """Metric per row, and per hook name the gradient and the activation ([B, L, *feature], float32)."""

    value: np.ndarray
    grads: dict[str, mx.array]
    acts: dict[str, mx.array]
    left_padding: list[int] = field(default_factory=list)

    def __getitem__(self, name: str) -> mx.array:
        return self.grads[name]


def metric_on(metric: Metric, logits: mx.array) -> mx.array:
    """The metric on logits from `forward_last(..., vocab=metric.vocab)` when it has a vocab, else on full logits."""
    return metric.on_vocab(logits) if isinstance(metric, VocabMetric) else metric(logits)


def metric_vocab(metric: Metric) -> tuple[int, ...] | None:
    """The token ids a VocabMetric reads (only those unembedding rows are computed), else None."""
    return metric.vocab if isinstance(metric, VocabMetric) else None


def check_metric(metric: Metric) -> None:
    if not callable(metric):
        raise MlxInterpError(f"metric {metric!r:.60} is not callable",
                             hint="use analysis.patching.logit_diff(hm, ' Paris', ' Rome') or a function logits [B, V] -> [B]")


def _rows(value: mx.array, B: int) -> mx.array:
    """A metric must give one number per row; anything else would be summed silently into a wrong gradient."""
    if value.ndim == 0 and B == 1:
        return value.reshape(1)
    if value.shape != (B,):
        raise MlxInterpError(f"metric returned shape {tuple(value.shape)}; gradients need one number per prompt ({B},)")
    return value


def traced_metric(hm: HookedModel, batch, metric: Metric, taps: Sequence[tuple[str, T.Tap]], read: int = -1,
                  weights: mx.array | None = None) -> tuple[mx.array, mx.array]:
    """(sum over rows of weights * metric, metric [B]) of one forward with `taps`; for use inside mx.grad."""
    logits = forward_last(hm, batch, list(taps), read=(read,), vocab=metric_vocab(metric))[:, 0]
    vals = _rows(metric_on(metric, logits).astype(mx.float32), batch.ids.shape[0])
    total = mx.sum(vals if weights is None else vals * weights)
    return total, vals


def value_and_grad(hm: HookedModel, prompts, metric: Metric, at: str | Iterable[str] | Callable[[str], bool],
                   read: int = -1, taps: Sequence[tuple[str, T.Tap]] | None = None, chat: bool = False,
                   weights: Sequence[float] | None = None) -> GradResult:
    """Metric per prompt and d(sum of metric) / d(activation) at every hook in `at`.

    prompts: a string, a list of strings (left padded) or token ids.
    at: hook names, a substring filter (e.g. "hook_resid_pre" for every layer) or a predicate.
    read: the column whose logits the metric reads (-1: every row's last token).
    taps: extra taps applied in the same forward (before the probes at a shared hook).
    weights: per-row weights of the summed metric (0 keeps a row out of the gradient).
    """
    check_metric(metric)
    names = hm.names(at)
    if not names:
        raise MlxInterpError(f"no hook point selected by at={at!r}")
    batch = hm.tokens(prompts, chat=chat)
    B, L = batch.ids.shape
    if not -L <= read < L:
        raise PromptError(f"read position {read} is out of range for {L}-token prompts")
    w = None
    if weights is not None:
        w = mx.array(np.asarray(weights, dtype=np.float32))
        if w.shape != (B,):
            raise MlxInterpError(f"weights has {w.shape[0] if w.ndim else 0} entries; there are {B} prompts")
    # attention scores / patterns ([B, L, H, keys]) have as many keys as positions in a run without a KV cache
    shapes = [(B, L, *(hm.hook_shape(n)[:-1] + (L,) if is_pattern_name(n) else hm.hook_shape(n))) for n in names]
    extra = list(taps.items()) if isinstance(taps, dict) else list(taps or [])

    def fn(deltas: list[mx.array]):
        probes = [Probe(delta=d) for d in deltas]
        total, vals = traced_metric(hm, batch, metric, extra + list(zip(names, probes)), read, w)
        return total, vals, [p.seen for p in probes]

    zeros = [mx.zeros(s, dtype=mx.float32) for s in shapes]
    (_, vals, seen), grads = mx.value_and_grad(fn)(zeros)
    acts = [a.astype(mx.float32) for a in seen]
    mx.eval(vals, grads, acts)
    return GradResult(np.array(vals, dtype=np.float64), dict(zip(names, grads)), dict(zip(names, acts)),
                      batch.left_padding)


def grad(hm: HookedModel, prompts, metric: Metric, at, **kwargs) -> dict[str, mx.array]:
    """Only the gradients of `value_and_grad` ({hook name: [B, L, *feature]})."""
    return value_and_grad(hm, prompts, metric, at, **kwargs).grads

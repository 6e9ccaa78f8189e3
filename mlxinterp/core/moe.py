"""Mixture-of-experts: which experts a token is routed to, and taps that remove or force experts.

mlx-lm's MoE blocks (qwen3_moe, mixtral) compute router logits with a linear
`gate`, pick the top-k experts per token, run them with one gathered matmul
(SwitchGLU) and sum their outputs weighted by router scores. The hook table
(core/archs.py) exposes the two arrays that carry this:

  blocks.i.mlp.hook_router_logits   [B, L, n_experts]  the gate's output
  blocks.i.mlp.hook_expert_out      [B, L, k, d_model] each selected expert's output,
                                                       in the order of `route(...)[0]`

The selection itself is not an array inside a module boundary; `route` recomputes
it from the router logits with the same operations mlx-lm uses for that family, so
indices and scores are the ones the model used (tests/test_moe.py checks that
the score-weighted sum of the expert outputs equals the block's output).

Ablating or forcing an expert is a tap on the router logits: a logit of -inf
removes the expert from the softmax and the top-k (the router picks among the
others, as in expert-pruning studies, e.g. Lu et al. 2024, "Not All Experts are
Equal"); forcing raises the expert's logit above every other one by `margin`,
so it is selected and, after the softmax, carries nearly all of the weight.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx

from mlxinterp.core.errors import TapError
from mlxinterp.core.taps import Tap

ROUTERS = ("softmax_topk", "topk_softmax")


def route(router: str, logits: mx.array, k: int, norm_topk_prob: bool = False) -> tuple[mx.array, mx.array]:
    """(expert indices [.., k], scores [.., k]) exactly as mlx-lm computes them for this router kind.

    softmax_topk (Qwen3-MoE): softmax over all experts, top-k, optionally renormalised.
    topk_softmax (Mixtral): top-k of the logits, softmax over those k.
    """
    if router == "softmax_topk":
        gates = mx.softmax(logits, axis=-1, precise=True)
        inds = mx.argpartition(gates, kth=-k, axis=-1)[..., -k:]
        scores = mx.take_along_axis(gates, inds, axis=-1)
        if norm_topk_prob:
            scores = scores / mx.sum(scores, axis=-1, keepdims=True)
        return inds, scores
    if router == "topk_softmax":
        inds = mx.argpartition(-logits, kth=k - 1, axis=-1)[..., :k]
        scores = mx.softmax(mx.take_along_axis(logits, inds, axis=-1), axis=-1, precise=True)
        return inds, scores
    raise TapError(f"router kind {router!r} is unknown; known: {', '.join(ROUTERS)}")


def _require_moe(hooked) -> None:
    if not hooked.spec.router:
        raise TapError(f"{hooked.info.arch} is not a mixture-of-experts model: it has no router",
                       hint="MoE hook points exist for qwen3_moe and mixtral")


def selected_experts(hooked, router_logits: mx.array) -> tuple[mx.array, mx.array]:
    """(indices, scores) the model selected, from captured `mlp.hook_router_logits` [B, L, n_experts]."""
    _require_moe(hooked)
    args = hooked.model.args
    return route(hooked.spec.router, router_logits, hooked.info.experts_per_token,
                 bool(getattr(args, "norm_topk_prob", False)))


def expert_counts(hooked, router_logits: mx.array, valid: mx.array | None = None) -> mx.array:
    """How many tokens chose each expert: [n_experts] int, over real positions (`valid` [B, L] bool)."""
    inds, _ = selected_experts(hooked, router_logits)
    onehot = (inds[..., None] == mx.arange(hooked.info.n_experts)).any(axis=-2)  # [B, L, E]
    if valid is not None:
        onehot = onehot & valid[..., None]
    return onehot.astype(mx.int32).sum(axis=(0, 1))


@dataclass(eq=False)
class _ExpertTap(Tap):
    experts: Sequence[int] = ()

    def validate(self, feature_shape: tuple[int, ...], name: str) -> None:
        super().validate(feature_shape, name)
        if not name.endswith("mlp.hook_router_logits"):
            raise TapError(f"{type(self).__name__} acts on router logits; {name} is not a "
                           "'blocks.<i>.mlp.hook_router_logits' hook point")
        n = feature_shape[0]
        ex = [int(e) for e in self.experts]
        bad = [e for e in ex if not 0 <= e < n]
        if not ex or bad:
            raise TapError(f"experts {list(self.experts)!r} must be a non-empty list of expert ids in 0..{n - 1}")
        self.experts = ex

    def _column_mask(self, n: int) -> mx.array:
        return (mx.arange(n)[:, None] == mx.array(self.experts)[None, :]).any(axis=1)


@dataclass(eq=False)
class AblateExperts(_ExpertTap):
    """Remove these experts from the router: their logits become -inf, so tokens route among the rest."""

    def __call__(self, a: mx.array, ctx: Any) -> mx.array:
        new = mx.where(self._column_mask(a.shape[-1]), mx.array(-float("inf"), dtype=a.dtype), a)
        return self._blend(a, new, ctx)


@dataclass(eq=False)
class ForceExperts(_ExpertTap):
    """Route to these experts: their logits are set to (largest other logit + margin), in listed order.

    Forcing more experts than the model selects per token keeps the first k.
    """

    margin: float = 30.0

    def __call__(self, a: mx.array, ctx: Any) -> mx.array:
        top = mx.max(a, axis=-1, keepdims=True)
        n = a.shape[-1]
        new = a
        for rank, e in enumerate(self.experts):  # earlier experts slightly higher: a stable order
            bonus = top + self.margin * (1 + (len(self.experts) - rank) * 1e-3)
            new = mx.where(mx.arange(n) == e, bonus.astype(a.dtype), new)
        return self._blend(a, new, ctx)

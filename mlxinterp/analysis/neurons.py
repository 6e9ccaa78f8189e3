"""Neuron-level statistics shared by the connectome, attribution and ablation studies.

(The prompt categories they compare are mlxinterp.tasks.categories.)
- `pooled`: per prompt, each layer's activation at a hook, averaged over the
  prompt's real tokens *except BOS* (BOS activations are 10-100x larger on
  Gemma and would dominate every mean).
- `welch`: per-neuron Welch t statistic and p-value, category vs baseline.
- `attribute`: gradient x input from a target logit to every MLP neuron and to
  the input token embeddings, with `mx.grad` through mlx-lm's own forward. The
  neuron gradients come from a tap that adds a zero "probe" array at each
  `mlp.hook_post`; d logit / d probe is d logit / d activation.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from collections.abc import Sequence

import mlx.core as mx
import numpy as np
from scipy import stats as sps

from mlxinterp.core import taps as T
from mlxinterp.core.errors import MlxInterpError, PromptError
from mlxinterp.core import names as H
from mlxinterp.analysis.patching import KeepColumns, forward_last
from mlxinterp.core.archs import text_model

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

def first_real(hm: HookedModel) -> int:
    """Index of the first token that is not BOS (pooling skips BOS)."""
    return 1 if hm.info.needs_bos else 0


def pooled(hm: HookedModel, prompts: Sequence[str], suffix: str, layers: Sequence[int] | None = None,
           rule: str = "mean", batch_size: int = 10) -> np.ndarray:
    """[N, n_layers, *feature] float32: each prompt's activation at blocks.{l}.{suffix}.

    rule: "mean" over real tokens after BOS, or "last" (the final token).
    """
    if not prompts:
        raise PromptError("empty prompt list")
    if rule not in ("mean", "last"):
        raise MlxInterpError(f"pooling rule {rule!r} is not allowed; use 'mean' or 'last'")
    layers = list(range(hm.info.n_layers)) if layers is None else list(layers)
    names = [H.name(l, suffix) for l in layers]
    skip = first_real(hm)
    rows = []
    for s in range(0, len(prompts), batch_size):
        chunk = list(prompts[s: s + batch_size])
        batch = hm.tokens(chunk)
        _, cache = hm.run_with_cache(batch.ids if len(chunk) == 1 else chunk, names=names, logits=False)
        acts = np.stack([np.array(cache[n].astype(mx.float32)) for n in names], axis=1)  # [B, nl, L, ...]
        L = acts.shape[2]
        for b, n in enumerate(batch.lengths):
            real = acts[b, :, L - n + min(skip, n - 1):]
            rows.append(real.mean(axis=1) if rule == "mean" else real[:, -1])
    out = np.stack(rows)
    if not np.isfinite(out).all():
        raise MlxInterpError(f"non-finite activations at {suffix}")
    return out


def welch(cat: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per feature: Welch t statistic (category - baseline) and two-sided p-value.

    Features with zero variance on both sides get t = 0, p = 1 (not NaN).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        res = sps.ttest_ind(cat.astype(np.float64), base.astype(np.float64), axis=0, equal_var=False)
    t = np.nan_to_num(res.statistic, nan=0.0, posinf=0.0, neginf=0.0)
    p = np.nan_to_num(res.pvalue, nan=1.0)
    return t, p


def explained_variance(x: np.ndarray) -> np.ndarray:
    """Explained-variance ratios of the SVD of x [n, features] (rows are prompts, centred by the caller)."""
    s = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    var = s**2
    return var / var.sum() if var.sum() > 0 else var


def k_for(ratios: np.ndarray, frac: float) -> int:
    """Smallest k whose top-k components explain >= frac of the variance."""
    return int(np.searchsorted(np.cumsum(ratios), frac - 1e-12) + 1)




def _probe_taps(probes: dict[str, mx.array]) -> dict[str, T.Fn]:
    return {name: T.Fn(fn=lambda a, ctx, p=p: a + p.astype(a.dtype)) for name, p in probes.items()}


def attribute(hm: HookedModel, prompt: str, target: int | None = None, suffix: str = "mlp.hook_post") -> dict:
    """Gradient x input from the next-token logit of `target` (default: the clean top-1) at the last position.

    Returns {"target", "logit", "neurons": [n_layers, d] (summed over positions),
    "tokens": [L] (per input token, summed over d_model), "token_ids": [L]}.
    """
    ids = hm.tokens(prompt).ids
    if ids.shape[0] != 1:
        raise PromptError("attribute takes one prompt")
    L = ids.shape[1]
    names = [H.name(l, suffix) for l in range(hm.info.n_layers)]
    feat = hm.hook_shape(names[0])
    inner_embed = _embed(hm, ids)
    _, cache = hm.run_with_cache(ids, names=names, logits=False)
    acts = [cache[n].astype(mx.float32) for n in names]
    if target is None:
        target = int(mx.argmax(forward_last(hm, ids)[0, -1]).item())

    def logit(probes: list[mx.array], emb: mx.array) -> mx.array:
        taps = list(_probe_taps(dict(zip(names, probes))).items()) + [("ln_final.hook_normalized", KeepColumns(columns=(-1,)))]
        with hm.hooks(taps):  # unembed only the last position: 262k-vocab logits elsewhere cost 10x
            out = hm.model(ids, input_embeddings=emb * 1.0)
        return out[0, -1, target].astype(mx.float32)

    zeros = [mx.zeros((1, L, *feat), dtype=mx.float32) for _ in names]
    value, (g_probe, g_emb) = mx.value_and_grad(logit, argnums=(0, 1))(zeros, inner_embed)
    neurons = mx.stack([mx.sum(g[0] * a[0], axis=0) for g, a in zip(g_probe, acts)])
    tokens = mx.sum(g_emb[0].astype(mx.float32) * inner_embed[0].astype(mx.float32), axis=-1)
    mx.eval(value, neurons, tokens)
    return {"target": target, "logit": float(value.item()), "neurons": np.array(neurons),
            "tokens": np.array(tokens), "token_ids": ids[0].tolist()}


def _embed(hm: HookedModel, ids: mx.array) -> mx.array:
    """The embedding-table rows mlx-lm would look up (before Gemma's sqrt(d) scale, which it applies itself)."""
    with hm.hooks({}):
        e = text_model(hm.model).embed_tokens(ids)
    return e.astype(mx.float32) if e.dtype != mx.float32 else e


def ablate_neurons_effect(hm: HookedModel, prompt: str, target: int, cells: Sequence[tuple[int, int]],
                          suffix: str = "mlp.hook_post") -> np.ndarray:
    """Actual change of the target logit when each (layer, neuron) is zeroed at every position, one per row."""
    ids = hm.tokens(prompt).ids
    K = len(cells)
    d = hm.hook_shape(f"blocks.0.{suffix}")[0]
    masks: dict[int, np.ndarray] = {}
    for row, (l, j) in enumerate(cells):
        m = masks.setdefault(l, np.ones((K + 1, 1, d), np.float32))
        m[row, 0, j] = 0.0  # the last row stays clean
    taps = {H.name(l, suffix): T.Fn(fn=lambda a, ctx, m=mx.array(m): a * m.astype(a.dtype))
            for l, m in masks.items()}

    out = forward_last(hm, mx.repeat(ids, K + 1, axis=0), taps)
    lg = np.array(out[:, -1, target])
    return lg[:K] - lg[K]

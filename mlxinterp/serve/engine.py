"""What the explorer computes: each view's numbers from the one loaded model, as JSON-ready dicts.

Every function here takes the HookedModel and plain values and runs on the
model thread (serve.worker); none of them knows about HTTP. They reuse the
library's own computations (analysis.lens, attention, patching, directions,
controlvec) so a number on the page is the number the CLI and the suite report.
Inputs are bounded (Limits) because the server runs them for anyone who can
reach it: a 10,000-token prompt through a full-vocabulary lens would hold the
model for minutes.
"""
from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlxinterp.analysis.attention import patterns_for
from mlxinterp.analysis.attribution import attribute
from mlxinterp.analysis.controlvec import LayerVectors
from mlxinterp.analysis.directions import extract, steering_taps
from mlxinterp.analysis.lens import layer_logits, target_id
from mlxinterp.analysis.patching import forward_last, logit_diff, patch_sweep, token_logprob
from mlxinterp.analysis.sae import SAE, decoder_logit_effects, feature_acts
from mlxinterp.analysis.tuned_lens import TunedLens
from mlxinterp.core import taps as T
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.core.hooks import ActivationCache, HookedModel


MODES = ("normed", "raw")
HOOKS = ("hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out")


class RequestError(MlxInterpError):
    """A request the explorer refuses (missing field, value out of range, too long); answered with HTTP 400."""


@dataclass(frozen=True)
class Limits:
    """Bounds on one request: what a single computation may cost."""

    prompt_chars: int = 2000
    prompt_tokens: int = 64  # lens / attention / steering prompts
    sweep_tokens: int = 32  # patching: n_layers x tokens patched forwards
    top_k: int = 20
    max_tokens: int = 64  # generated tokens per side in the steering playground
    strength_pct: float = 200.0  # |steering strength| as % of the residual norm
    contrast_prompts: int = 16  # per side, for a direction made from two prompt sets
    body_bytes: int = 1 << 20  # JSON requests
    upload_bytes: int = 16 << 20  # vector uploads (base64 inside JSON)


def ids_of(hm: HookedModel, prompt, limits: Limits, max_tokens: int | None = None, what: str = "prompt") -> list[int]:
    """Token ids of a prompt string, refusing empty, non-string or too long prompts."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError(f"{what} must be a non-empty string, got {prompt!r:.40}")
    if len(prompt) > limits.prompt_chars:
        raise RequestError(f"{what} has {len(prompt)} characters; the limit is {limits.prompt_chars}")
    ids = hm.tokens(prompt).ids[0].tolist()
    cap = limits.prompt_tokens if max_tokens is None else max_tokens
    if len(ids) > cap:
        raise RequestError(f"{what} is {len(ids)} tokens; this view allows at most {cap}")
    return ids


def _decode(hm: HookedModel, ids: Sequence[int]) -> list[str]:
    return [hm.tokenizer.decode([int(i)]) for i in ids]


def _int(value, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or not lo <= value <= hi:
        raise RequestError(f"{what}={value!r} is not allowed; use a whole number in {lo}..{hi}")
    return int(value)


def info(hm: HookedModel, tuned: TunedLens | None = None, sae: SAE | None = None) -> dict:
    return {**hm.info.to_dict(), "modes": list(MODES) + (["tuned"] if tuned is not None else []), "hooks": list(HOOKS),
            "sae": None if sae is None else {"hook": sae.hook, "d_sae": sae.d_sae, "activation": sae.activation}}


# ------------------------------------------------------------------ logit lens
def lens_grid(hm: HookedModel, prompt: str, limits: Limits, mode: str = "normed", top_k: int = 5,
              target: str | None = None, tuned: TunedLens | None = None) -> dict:
    """Full-vocabulary logit lens at every (layer, position): top-k tokens, entropy, target rank.

    One forward capturing each block's output, then one unembedding of all
    layers x positions rows at once (the vocabulary matrix is read once, the
    cost is a single [layers*positions, d] x [d, vocab] matmul). mode "tuned"
    translates each layer's residual with the tuned lens first (then the final
    norm and unembedding, as analysis.tuned_lens trains it).
    """
    allowed = MODES + (("tuned",) if tuned is not None else ())
    if mode not in allowed:
        hint = "" if tuned is not None else " (start the server with --tuned-lens FILE for 'tuned')"
        raise RequestError(f"mode={mode!r} is not allowed; use one of {allowed}{hint}")
    top_k = _int(top_k, "top_k", 1, limits.top_k)
    ids = ids_of(hm, prompt, limits)
    tid = None
    if target:
        if not isinstance(target, str) or len(target) > 100:
            raise RequestError(f"target must be a short string, got {target!r:.40}")
        tid = target_id(hm, target)
    t0 = time.perf_counter()
    cache = _block_outputs(hm, ids)
    if mode == "tuned":
        logits = hm.unembed(tuned.apply(cache.stack("hook_resid_post")[:, 0]), normed=True)
    else:
        logits = layer_logits(hm, cache, slice(None), mode)  # [layers, L, V] float32
    n_layers, L, V = logits.shape
    mx.eval(logits)
    rows = np.array(logits, copy=False).reshape(n_layers * L, V)  # a view: no 350 MB copy
    red = reduce_rows(rows, top_k, tid)
    del rows
    seconds = time.perf_counter() - t0
    idx_np, probs_np = red["top_ids"].reshape(n_layers, L, top_k), red["top_probs"].reshape(n_layers, L, top_k)
    ent_np = red["entropy"].reshape(n_layers, L)
    vocab = {int(i): hm.tokenizer.decode([int(i)]) for i in np.unique(idx_np)}
    cells = [[{"top": [[vocab[int(i)], round(float(p), 5)] for i, p in zip(idx_np[l, j], probs_np[l, j])],
               "entropy": round(float(ent_np[l, j]), 4)} for j in range(L)] for l in range(n_layers)]
    if tid is not None:
        ranks, tprob = red["target_rank"].reshape(n_layers, L), red["target_prob"].reshape(n_layers, L)
        for l in range(n_layers):
            for j in range(L):
                cells[l][j]["target_rank"] = int(ranks[l, j])
                cells[l][j]["target_prob"] = round(float(tprob[l, j]), 6)
    return {"prompt": prompt, "tokens": _decode(hm, ids), "mode": mode, "top_k": top_k, "target": target,
            "target_id": tid, "n_layers": n_layers, "vocab_size": V, "cells": cells,
            "seconds": round(seconds, 4)}


def _block_outputs(hm: HookedModel, ids: list[int]) -> ActivationCache:
    """Every block's output for one prompt. The forward's own logits are never evaluated (MLX is lazy and
    only captures are asked for), so the lens's single unembedding of all layers is the only one: a plain
    run_with_cache would also unembed every position of the last layer (1/n_layers more matmul)."""
    batch = hm.tokens(mx.array([ids]))
    cache = ActivationCache(hm, batch.left_padding)
    with hm.hooks([(n, T.Capture(store=cache)) for n in hm.names("hook_resid_post")]):
        hm.forward(batch)
    mx.eval(*cache.arrays())
    return cache


def warm_up(hm: HookedModel, prompt: str, limits: Limits) -> None:
    """One lens view and two steered tokens, before the server takes requests: MLX allocates its buffers
    and mlx-lm builds its generation state on first use, which would otherwise land on the first user."""
    lens_grid(hm, prompt, limits)
    mid = hm.info.n_layers // 2
    taps = steering_taps({mid: np.ones(hm.info.d_model, np.float32)}, 1e-6, [mid], hook="hook_resid_post")
    for _ in stream_text(hm, ids_of(hm, prompt, limits), 2, taps, threading.Event()):
        pass


_BLOCK = 512  # vocabulary block for top-k (see reduce_rows)


def reduce_rows(logits: np.ndarray, top_k: int, target: int | None = None, threads: int | None = None,
                chunk: int = 8) -> dict:
    """Per row of logits [R, V]: top-k ids and probabilities (best first), entropy (nats), and the target's
    rank (0 = top-1) and probability.

    Exact, but arranged for a CPU. Rows go through in chunks of `chunk` rows with one reused
    buffer per thread: a fresh [R, V] temporary (350 MB for 18 layers x 19 positions x 262k) costs
    more in page faults than the arithmetic. One exp pass per element: with m the row max and
    e = exp(l - m), Z = sum e, log-sum-exp = m + log Z and the entropy is log Z - (sum(e l) - m Z) / Z.
    Rows are split over threads (numpy releases the GIL). Top-k comes from blocks: the k largest
    logits all lie in the k blocks with the largest maxima (any other block has k blocks with a
    larger maximum above it), so only k * 512 candidates per row are sorted.
    """
    R, V = logits.shape
    out = {"top_ids": np.zeros((R, top_k), np.int64), "top_probs": np.zeros((R, top_k), np.float32),
           "entropy": np.zeros(R, np.float32), "target_rank": np.zeros(R, np.int64),
           "target_prob": np.zeros(R, np.float32)}

    def work(lo: int, hi: int) -> None:
        buf = np.empty((chunk, V), np.float32)
        for a in range(lo, hi, chunk):
            l = logits[a : min(a + chunk, hi)]
            n, e = l.shape[0], buf[: l.shape[0]]
            m = l.max(axis=-1)
            np.subtract(l, m[:, None], out=e)
            np.exp(e, out=e)
            z = e.sum(axis=-1, dtype=np.float64)
            el = np.einsum("ij,ij->i", e, l, dtype=np.float64)
            out["entropy"][a : a + n] = np.log(z) - (el - m * z) / z
            lse = m + np.log(z)
            ids = _top_ids(l, top_k)
            out["top_ids"][a : a + n] = ids
            out["top_probs"][a : a + n] = np.exp(np.take_along_axis(l, ids, axis=-1) - lse[:, None])
            if target is not None:
                t = l[:, target : target + 1]
                out["target_rank"][a : a + n] = np.count_nonzero(l > t, axis=-1)
                out["target_prob"][a : a + n] = np.exp(t[:, 0] - lse)

    n = max(1, min(threads or os.cpu_count() or 1, R))
    bounds = np.linspace(0, R, n + 1).astype(int)
    with ThreadPoolExecutor(n) as ex:
        list(ex.map(work, bounds[:-1], bounds[1:]))
    return out


def _top_ids(l: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values of each row, best first (block maxima, then k blocks' candidates)."""
    R, V = l.shape
    pad = (-V) % _BLOCK
    lp = np.pad(l, ((0, 0), (0, pad)), constant_values=-np.inf) if pad else l
    blocks = lp.reshape(R, -1, _BLOCK)
    k_blocks = min(k, blocks.shape[1])
    best = np.argpartition(-blocks.max(axis=-1), k_blocks - 1, axis=-1)[:, :k_blocks]  # [R, k]
    cand = np.take_along_axis(blocks, best[..., None], axis=1).reshape(R, -1)  # [R, k * BLOCK]
    ids = (best[..., None] * _BLOCK + np.arange(_BLOCK)).reshape(R, -1)
    order = np.argsort(-cand, axis=-1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, axis=-1)


# ------------------------------------------------------------------ SAE features
def sae_features(hm: HookedModel, sae: SAE, prompt: str, limits: Limits, top_k: int = 8, explain: int = 5) -> dict:
    """The SAE's most active features at every position of a prompt (analysis.sae.feature_acts: the SAE reads
    its hook, the forward is not edited), and per feature shown the tokens its decoder direction promotes
    most through the unembedding (analysis.sae.decoder_logit_effects; residual-stream SAEs only)."""
    top_k = _int(top_k, "top_k", 1, limits.top_k)
    ids = ids_of(hm, prompt, limits)
    t0 = time.perf_counter()
    store, _ = feature_acts(hm, sae, mx.array([ids]), top_k=top_k)
    fid, act = store.ids[0][0], store.values[0][0]  # [L, k], best first
    positions = [[{"feature": int(f), "act": round(float(a), 4)} for f, a in zip(fid[j], act[j]) if a > 0]
                 for j in range(len(ids))]
    shown = sorted({c["feature"] for row in positions for c in row})
    features: dict[str, dict] = {}
    if explain and shown and not sae.is_transcoder and "resid" in sae.hook:
        for e in decoder_logit_effects(hm, sae, shown, top=explain):
            features[str(e["feature"])] = {"promotes": [t["token"] for t in e["promotes"]]}
    return {"prompt": prompt, "tokens": _decode(hm, ids), "hook": sae.hook, "d_sae": sae.d_sae, "top_k": top_k,
            "activation": sae.activation, "positions": positions, "features": features,
            "seconds": round(time.perf_counter() - t0, 4)}


# ------------------------------------------------------------------ attention
def attention(hm: HookedModel, prompt: str, layer: int, limits: Limits) -> dict:
    """Attention pattern [heads, query, key] of one layer (recomputed from hook_q/hook_k, see analysis.attention)."""
    layer = _int(layer, "layer", 0, hm.info.n_layers - 1)
    ids = ids_of(hm, prompt, limits)
    pats, _ = patterns_for(hm, mx.array([ids]), layers=[layer])
    p = np.nan_to_num(pats[layer], nan=0.0)
    return {"prompt": prompt, "tokens": _decode(hm, ids), "layer": layer, "n_heads": int(p.shape[0]),
            "pattern": np.round(p, 4).tolist()}


# ------------------------------------------------------------------ steering
def contrast_vectors(hm: HookedModel, positive, negative, layers: Sequence[int], limits: Limits) -> LayerVectors:
    """Difference-of-means directions at each layer's output from two small prompt sets (directions.extract)."""
    for name, group in (("positive", positive), ("negative", negative)):
        if not isinstance(group, list) or not group or len(group) > limits.contrast_prompts:
            raise RequestError(f"{name} must be a list of 1..{limits.contrast_prompts} prompts")
        for p in group:
            ids_of(hm, p, limits, what=f"{name} prompt")
    dirs = extract(hm, positive, negative, layers=list(layers), hook="hook_resid_post")
    return LayerVectors({l: d.vector for l, d in dirs.items()}, hm.info.slug, source="contrast prompts")


def residual_norms(hm: HookedModel, ids: list[int], layers: Sequence[int]) -> dict[int, float]:
    """Mean norm of each layer's output over the prompt's positions, the first excluded when there are others:
    the first token is an attention sink whose residual norm is many times the rest (Gemma's BOS), and
    a strength quoted as a share of it would be meaningless for every other position."""
    names = [f"blocks.{l}.hook_resid_post" for l in layers]
    _, cache = hm.run_with_cache(mx.array([ids]), names=names, logits=False)  # no layers past the last one
    out = {}
    for l, n in zip(layers, names):
        a = cache[n][0].astype(mx.float32)
        a = a[1:] if a.shape[0] > 1 else a
        out[l] = float(mx.mean(mx.linalg.norm(a, axis=-1)).item())
    return out


def steering_plan(hm: HookedModel, vectors: LayerVectors, ids: list[int], strength_pct: float, limits: Limits,
                  norm_cache: dict | None = None) -> dict:
    """Per-layer weights so that the added vector's norm is strength_pct % of that layer's residual norm
    (norm_cache: residual norms remembered per prompt and layers, so a slider move costs no extra forward)."""
    try:
        pct = float(strength_pct)
    except (TypeError, ValueError):
        raise RequestError(f"strength_pct={strength_pct!r} is not a number") from None
    if not math.isfinite(pct) or abs(pct) > limits.strength_pct:
        raise RequestError(f"strength_pct={strength_pct!r} is not allowed; use -{limits.strength_pct:g}..{limits.strength_pct:g}")
    if vectors.d_model != hm.info.d_model:
        raise RequestError(f"the vector has {vectors.d_model} dimensions; this model's residual stream has {hm.info.d_model}")
    bad = [l for l in vectors.layers if l >= hm.info.n_layers]
    if bad:
        raise RequestError(f"layers {bad} are out of range; this model has layers 0..{hm.info.n_layers - 1}")
    key = (tuple(ids), tuple(vectors.layers))
    cache = norm_cache if norm_cache is not None else {}
    if key not in cache:
        if len(cache) > 64:
            cache.clear()
        cache[key] = residual_norms(hm, ids, vectors.layers)
    resid = cache[key]
    norms = vectors.norms()
    weights = [pct / 100 * resid[l] / norms[l] if norms[l] > 0 else 0.0 for l in vectors.layers]
    return {"layers": vectors.layers, "weights": weights, "strength_pct": pct,
            "resid_norms": [resid[l] for l in vectors.layers], "vector_norms": [norms[l] for l in vectors.layers]}


def stream_text(hm: HookedModel, ids: list[int], max_tokens: int, taps, cancel: threading.Event) -> Iterator[tuple[str, int]]:
    """Greedy generation piece by piece (hm.stream), stopping early when `cancel` is set (client gone)."""
    gen = hm.stream(mx.array([ids]), max_tokens=max_tokens, taps=taps)
    try:
        for piece in gen:
            if cancel.is_set():
                break
            yield piece
    finally:
        gen.close()  # detaches the taps now, not at garbage collection


def steer_events(hm: HookedModel, prompt: str, vectors: LayerVectors, strength_pct: float, max_tokens: int, limits: Limits,
                 cancel: threading.Event, memo: dict) -> Iterator[dict]:
    """Events for the playground: the plan, the steered text token by token, then the unsteered text.
    memo (kept by the caller between requests) remembers the unsteered text per prompt and length and
    the residual norms, so dragging the slider recomputes only the steered side."""
    max_tokens = _int(max_tokens, "max_tokens", 1, limits.max_tokens)
    ids = ids_of(hm, prompt, limits)
    t0 = time.perf_counter()
    plan = steering_plan(hm, vectors, ids, strength_pct, limits, memo.setdefault("norms", {}))
    yield {"event": "plan", **plan}
    taps = steering_taps(vectors.vectors, 1.0, plan["layers"], plan["weights"], hook="hook_resid_post")
    for i, (text, tok) in enumerate(stream_text(hm, ids, max_tokens, taps, cancel)):
        yield {"event": "token", "side": "steered", "i": i, "text": text, "id": tok,
               "t": round(time.perf_counter() - t0, 4)}
    baseline_cache = memo.setdefault("baseline", {})
    key = (tuple(ids), max_tokens)
    if key in baseline_cache:
        pieces = baseline_cache[key]
    else:
        pieces = []
        for text, tok in stream_text(hm, ids, max_tokens, None, cancel):
            pieces.append((text, tok))
            yield {"event": "token", "side": "baseline", "i": len(pieces) - 1, "text": text, "id": tok,
                   "t": round(time.perf_counter() - t0, 4)}
        if not cancel.is_set():
            if len(baseline_cache) > 64:
                baseline_cache.clear()
            baseline_cache[key] = pieces
        pieces = None
    for i, (text, tok) in enumerate(pieces or []):
        yield {"event": "token", "side": "baseline", "i": i, "text": text, "id": tok, "cached": True,
               "t": round(time.perf_counter() - t0, 4)}
    yield {"event": "done", "seconds": round(time.perf_counter() - t0, 4)}


# ------------------------------------------------------------------ patching
def _metric(hm: HookedModel, target: str, foil: str | None):
    if not isinstance(target, str) or not target:
        raise RequestError("target must be a non-empty string (the token the clean prompt predicts)")
    if foil:
        return logit_diff(hm, target, foil), f"logit({target!r}) - logit({foil!r})"
    return token_logprob(hm, target), f"log p({target!r})"


def _patch_inputs(hm: HookedModel, clean, corrupt, hook, limits: Limits) -> tuple[list[int], list[int]]:
    if hook not in HOOKS:
        raise RequestError(f"hook={hook!r} is not allowed; use one of {HOOKS}")
    c = ids_of(hm, clean, limits, limits.sweep_tokens, "clean prompt")
    k = ids_of(hm, corrupt, limits, limits.sweep_tokens, "corrupt prompt")
    if len(c) != len(k):
        raise RequestError(f"clean and corrupt prompts are {len(c)} and {len(k)} tokens; a layer x position "
                           "sweep needs equal lengths")
    return c, k


def patch_grid(hm: HookedModel, clean: str, corrupt: str, target: str, foil: str | None, hook: str, limits: Limits,
               estimate: bool = False) -> dict:
    """Layer x position heatmap: clean activation patched into the corrupt run (analysis.patching.patch_sweep);
    estimate=True adds attribution patching's first-order estimate of every cell (analysis.attribution, AtP)
    beside the exact values, with their correlation."""
    c, k = _patch_inputs(hm, clean, corrupt, hook, limits)
    metric, label = _metric(hm, target, foil)
    res = patch_sweep(hm, c, k, metric, hook=hook)
    nan_free = lambda g: [[None if not math.isfinite(x) else round(float(x), 5) for x in row] for row in g]  # noqa: E731
    out = {"clean_prompt": clean, "corrupt_prompt": corrupt, "hook": hook, "metric": label, "layers": res.layers,
           "positions": res.positions, "tokens": res.tokens, "clean_tokens": _decode(hm, c), "clean": res.clean,
           "corrupt": res.corrupt, "grid": nan_free(res.metric), "normalised": nan_free(res.normalised),
           "seconds": round(res.seconds, 3)}
    if estimate:
        t0 = time.perf_counter()
        att = attribute(hm, c, k, metric, hooks=(hook,), method="atp")
        est = np.stack([att.estimates[f"blocks.{l}.{hook}"] for l in res.layers])  # [layers, L]: effect on the metric
        exact = np.array(res.metric) - res.corrupt
        denom = res.clean - res.corrupt
        out["atp"] = {"grid": nan_free(est + res.corrupt),
                      "normalised": nan_free(est / denom if abs(denom) > 1e-9 else np.full_like(est, np.nan)),
                      "pearson_r": _pearson(est.ravel(), exact.ravel()), "seconds": round(time.perf_counter() - t0, 3)}
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.std() == 0 or b.std() == 0:
        return None
    return round(float(np.corrcoef(a, b)[0, 1]), 4)


def _top(logits: mx.array, hm, k: int) -> list:
    lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    order = np.array(mx.argsort(-lp))[:k]
    lp_np = np.array(lp)
    return [[hm.tokenizer.decode([int(i)]), round(float(math.exp(lp_np[i])), 5)] for i in order]


def patch_cell(hm: HookedModel, clean: str, corrupt: str, target: str, foil: str | None, hook: str, layer: int, position: int,
               limits: Limits, top_k: int = 10) -> dict:
    """The next-token distribution of the corrupt run with one cell patched, beside the clean and corrupt ones."""
    c, k = _patch_inputs(hm, clean, corrupt, hook, limits)
    layer = _int(layer, "layer", 0, hm.info.n_layers - 1)
    position = _int(position, "position", 0, len(c) - 1)
    top_k = _int(top_k, "top_k", 1, limits.top_k)
    metric, label = _metric(hm, target, foil)
    name = f"blocks.{layer}.{hook}"
    _, cache = hm.run_with_cache(mx.array([c]), names=[name])
    value = cache[name][0, position]
    runs = {"clean": forward_last(hm, mx.array([c])), "corrupt": forward_last(hm, mx.array([k])),
            "patched": forward_last(hm, mx.array([k]), [(name, T.Replace(value=value, positions=[position]))])}
    out = {"layer": layer, "position": position, "hook": hook, "metric": label}
    for key, logits in runs.items():
        row = logits[:, 0]
        out[key] = {"metric": float(metric(row)[0].item()), "top": _top(row[0], hm, top_k)}
    return out

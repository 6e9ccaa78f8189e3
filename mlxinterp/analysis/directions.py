"""Directions in activation space: difference of means, their consistency, and steering with them.

Statistics accumulate in float32 (bfloat16 overflows in late layers: the cross-model plan
saw infinite direction norms) and are finite-checked. A direction's norm is
reported in absolute terms and relative to the mean residual norm at its hook,
because raw norms differ ~20x between model families (the cross-model plan) and only the
relative size predicts whether steering does anything (the qwen3-steering).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence, Union

import mlx.core as mx
import numpy as np
from safetensors.numpy import load_file
from safetensors.numpy import save as st_save

from mlxinterp.analysis.patching import KeepColumns
from mlxinterp.analysis.stats import Interval, bootstrap_ci
from mlxinterp.core import taps as T
from mlxinterp.core.errors import MlxInterpError, PromptError, TapError
from mlxinterp.core import names as H
from mlxinterp.core.spill import RowStore
from mlxinterp.core.io import atomic_write_bytes, write_json

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

PositionRule = Union[str, int]  # "last" | "mean" | int (negative from the end) | "last:K"


def prompts_hash(*sets: Sequence[str]) -> str:
    h = hashlib.sha256()
    for s in sets:
        h.update(json.dumps(list(s)).encode())
    return h.hexdigest()[:16]


def _pool(a: np.ndarray, lengths: list[int], rule: PositionRule) -> np.ndarray:
    """[B, L, d] left-padded activations -> [B, d] by the position rule."""
    L = a.shape[1]
    rows = []
    for b, n in enumerate(lengths):
        real = a[b, L - n :]
        if rule == "last":
            rows.append(real[-1])
        elif rule == "mean":
            rows.append(real.mean(axis=0))
        elif isinstance(rule, str) and rule.startswith("last:"):
            rows.append(real[-int(rule.split(":")[1]) :].mean(axis=0))
        elif isinstance(rule, (int, np.integer)):
            if not -n <= rule < n:
                raise PromptError(f"position {rule} is out of range for prompt {b} with {n} tokens")
            rows.append(real[rule])
        else:
            raise PromptError(f"position rule {rule!r} is not allowed; use 'last', 'mean', 'last:K' or an int")
    return np.stack(rows)


def collect(hm: HookedModel, prompts: Sequence[str], hooks: Sequence[str], position: PositionRule = "last",
            chat: bool = False, batch_size: int = 8, progress=None, spill_dir: str | Path | None = None,
            budget: int | None = None) -> dict[str, np.ndarray]:
    """Per prompt, the pooled activation at each hook: {hook: float32 [N, d]}.

    Rows are written batch by batch into a `spill.RowStore`: in RAM while
    N x sum(d) x 4 bytes fits `budget`, else into .npy memmaps under `spill_dir`
    (both default to the suite's per-experiment spill scope), so a capture larger
    than the memory left beside the model streams to disk instead of failing.
    """
    if not prompts:
        raise PromptError("empty prompt set: a direction needs at least one prompt on each side")
    names = hm.names(list(hooks))
    # Nobody reads the logits here: unembed one column only (a 262k vocabulary costs more than the body).
    skip_logits = [] if any(n.startswith("ln_final") or n == "hook_logits" for n in names) else \
        [("ln_final.hook_normalized", KeepColumns(columns=(-1,)))]
    store = None
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        batch = hm.tokens(chunk, chat=chat)
        _, cache = hm.run_with_cache(batch.ids if len(chunk) == 1 else chunk, names=names, taps=skip_logits, chat=chat)
        rows = {}
        for n in names:
            a = np.array(cache[n].astype(mx.float32))
            rows[n] = _pool(a.reshape(*a.shape[:2], -1), batch.lengths, position)
        del cache
        if store is None:
            store = RowStore.open(len(prompts), {n: r.shape[1] for n, r in rows.items()}, spill_dir, budget)
        store.write(start, rows)
        if progress is not None:
            progress(len(chunk))
    result = store.finish()
    for n, v in result.items():
        if not np.isfinite(v).all():
            raise MlxInterpError(f"non-finite activations at {n}; try dtype='float32'")
    return result


@dataclass
class Direction:
    """A unit of steering: vector at a hook, with where it came from and how big it is."""

    vector: np.ndarray
    hook: str
    norm: float
    resid_norm: float  # mean norm of the activations it was computed from
    split_half_cosine: float | None
    n_pos: int
    n_neg: int
    model: str = ""
    model_hash: str = ""
    prompts_hash: str = ""
    position: str = "last"
    meta: dict = field(default_factory=dict)

    @property
    def relative_norm(self) -> float:
        """Norm as a fraction of the mean activation norm at the hook."""
        return self.norm / self.resid_norm if self.resid_norm else float("nan")

    def unit(self) -> np.ndarray:
        return self.vector / self.norm

    def save(self, path: str | Path) -> Path:
        """`path`.safetensors (the vector) + `path`.json (everything else), both atomic."""
        path = Path(path).with_suffix("")
        meta = {k: v for k, v in asdict(self).items() if k != "vector"}
        atomic_write_bytes(path.with_suffix(".safetensors"),
                           st_save({"direction": self.vector.astype(np.float32)}, metadata={"hook": self.hook}))
        write_json(path.with_suffix(".json"), meta)
        return path.with_suffix(".safetensors")

    @classmethod
    def load(cls, path: str | Path) -> "Direction":
        base = Path(path).with_suffix("")
        try:
            vec = load_file(str(base.with_suffix(".safetensors")))["direction"]
            meta = json.loads(base.with_suffix(".json").read_text())
        except (OSError, KeyError, ValueError, json.JSONDecodeError) as e:
            raise MlxInterpError(f"cannot read direction {base}.safetensors/.json: {e}",
                                 hint="directions are saved by Direction.save (safetensors + JSON)") from None
        if vec.ndim != 1 or not np.issubdtype(vec.dtype, np.floating):
            raise TapError(f"direction {base}.safetensors holds a {vec.dtype} array of shape {vec.shape}; "
                           "a direction is a 1-D floating vector")
        return cls(vector=vec, **meta)


def diff_of_means(pos: np.ndarray, neg: np.ndarray, hook: str, rng: np.random.Generator | None = None,
                  **meta) -> Direction:
    """mean(pos) - mean(neg) from pooled activations [N, d], with split-half consistency."""
    if len(pos) == 0 or len(neg) == 0:
        raise PromptError(f"empty prompt set ({len(pos)} positive, {len(neg)} negative)")
    p, n = pos.astype(np.float64), neg.astype(np.float64)
    v = p.mean(0) - n.mean(0)
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm):
        raise MlxInterpError(f"direction at {hook} is not finite")
    resid = float(np.linalg.norm(np.concatenate([p, n]), axis=1).mean())
    return Direction(v.astype(np.float32), hook, norm, resid, split_half_cosine(p, n, rng), len(p), len(n), **meta)


def split_half_cosine(pos: np.ndarray, neg: np.ndarray, rng: np.random.Generator | None = None) -> float | None:
    """Cosine between directions from two random halves of the data (1.0 = perfectly consistent)."""
    if len(pos) < 2 or len(neg) < 2:
        return None
    rng = rng or np.random.default_rng(0)
    ip, ineg = rng.permutation(len(pos)), rng.permutation(len(neg))
    hp, hn = len(pos) // 2, len(neg) // 2
    a = pos[ip[:hp]].mean(0) - neg[ineg[:hn]].mean(0)
    b = pos[ip[hp:]].mean(0) - neg[ineg[hn:]].mean(0)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else None


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    d = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / d) if d > 0 else float("nan")


def _halves(idx: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split a (possibly resampled) index array into two halves by *unique* unit, so no unit is in both."""
    u = rng.permutation(np.unique(idx))
    a = np.isin(idx, u[: len(u) // 2])
    return idx[a], idx[~a]


def pair_cosine_ci(diffs: np.ndarray, ref: np.ndarray, seed: int = 0) -> Interval:
    """Cosine between the mean of per-pair differences `diffs` [N, d] (a difference of means over matched
    pairs) and `ref`, with a BCa bootstrap CI over the pairs (the units)."""
    D = np.asarray(diffs, np.float64)
    r = np.asarray(ref, np.float64)
    return bootstrap_ci(np.arange(len(D), dtype=np.float64), lambda i: _cos(D[i.astype(int)].mean(0), r), seed=seed)


def split_half_ci(diffs: np.ndarray, seed: int = 0, n_splits: int = 200, level: float = 0.95) -> Interval:
    """Split-half cosine of a difference of means over matched pairs: its mean over `n_splits` random splits
    of the pairs into two halves, and the central `level` range of that split distribution.

    Each split compares two disjoint samples of N/2 pairs, so the spread over splits is the sampling spread
    of "direction from N/2 pairs vs direction from N/2 others". A pair bootstrap does not fit this
    statistic: a resample holds ~63 % distinct pairs, so its halves are noisier and its cosine biased low
    (the bootstrap distribution then misses the estimate and BCa is undefined).
    """
    D = np.asarray(diffs, np.float64)
    if len(D) < 4:
        return Interval(None, None, None, int(len(D)), "random half splits", level=level,
                        warning="fewer than 4 pairs: no split-half cosine")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_splits):
        a, b = _halves(np.arange(len(D)), rng)
        vals.append(_cos(D[a].mean(0), D[b].mean(0)))
    lo, hi = np.nanquantile(vals, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(np.nanmean(vals)), float(lo), float(hi), int(len(D)),
                    f"central {level:.0%} of {n_splits} random half splits of the pairs", level=level)


def sign_flip_null(diffs: np.ndarray, ref: np.ndarray | None = None, n_draws: int = 200, q: float = 0.95,
                   seed: int = 0) -> float:
    """q-quantile of the cosine statistic when each pair's labels are flipped at random (d_i -> +-d_i).

    With `ref`: cos(mean of flipped differences, ref); without: the split-half cosine of the flipped
    differences. Flipping keeps the activations' anisotropy and scale but no consistent direction, so this
    is the null a real direction must beat (an isotropic random vector ignores the anisotropy).
    """
    D = np.asarray(diffs, np.float64)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_draws):
        F = D * rng.choice((-1.0, 1.0), size=(len(D), 1))
        if ref is not None:
            out.append(_cos(F.mean(0), np.asarray(ref, np.float64)))
        else:
            a, b = _halves(np.arange(len(D)), rng)
            out.append(_cos(F[a].mean(0), F[b].mean(0)))
    return float(np.nanquantile(out, q))


def extract(hm: HookedModel, positive: Sequence[str], negative: Sequence[str], layers: Sequence[int] | None = None,
            hook: str = "hook_resid_post", position: PositionRule = "last", chat: bool = False,
            batch_size: int = 8, seed: int = 0) -> dict[int, Direction]:
    """Difference-of-means direction at `blocks.{layer}.{hook}` for each layer."""
    layers = list(range(hm.info.n_layers)) if layers is None else list(layers)
    names = [H.name(l, hook) for l in layers]
    acts_p = collect(hm, positive, names, position, chat, batch_size)
    acts_n = collect(hm, negative, names, position, chat, batch_size)
    ph = prompts_hash(positive, negative)
    rng = np.random.default_rng(seed)
    out = {}
    for l, name in zip(layers, names):
        out[l] = diff_of_means(acts_p[hm.point(name).name], acts_n[hm.point(name).name], hm.point(name).name, rng,
                               model=hm.info.slug, model_hash=hm.info.weights_hash, prompts_hash=ph, position=str(position))
    return out


# ------------------------------------------------------------------ steering
PROFILES = ("flat", "gaussian", "bell", "donut")


def layer_profile(kind: str | Sequence[float], n_layers: int, center: float | None = None,
                  width: float | None = None, lo: int | None = None, hi: int | None = None) -> np.ndarray:
    """Per-layer steering weights (the Qwen3-VL-8B notes' weighted-layer ActAdd).

    flat: 1 everywhere; gaussian: exp(-(l-c)^2 / 2w^2); bell: 1 / (1 + |(l-c)/w|^4), a plateau
    with soft shoulders; donut: 1 on lo..hi and 0 outside (skip early and late layers);
    or an explicit list of n_layers weights.
    """
    l = np.arange(n_layers, dtype=np.float64)
    c = (n_layers - 1) / 2 if center is None else float(center)
    w = max(n_layers / 6, 1.0) if width is None else float(width)
    if not isinstance(kind, str):
        weights = np.asarray(kind, dtype=np.float64)
        if weights.shape != (n_layers,):
            raise TapError(f"explicit layer profile has {weights.size} weights; the model has {n_layers} layers")
        return weights
    if kind == "flat":
        return np.ones(n_layers)
    if kind == "gaussian":
        return np.exp(-((l - c) ** 2) / (2 * w**2))
    if kind == "bell":
        return 1 / (1 + np.abs((l - c) / w) ** 4)
    if kind == "donut":
        lo = n_layers // 4 if lo is None else lo
        hi = n_layers - 1 - n_layers // 4 if hi is None else hi
        return ((l >= lo) & (l <= hi)).astype(np.float64)
    raise TapError(f"layer profile {kind!r} is not allowed; use one of {PROFILES} or a list of weights")


def steering_taps(vectors: np.ndarray | dict[int, np.ndarray], alpha: float, layers: Sequence[int],
                  weights: Sequence[float] | None = None, hook: str = "hook_resid_post",
                  positions: T.Positions = None, when: str = "both") -> dict[str, T.Add]:
    """Add taps: alpha * w_l * v_l at `blocks.{l}.{hook}` for each layer with a non-zero weight."""
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise TapError(f"alpha={alpha!r} is not a number") from None
    if not np.isfinite(alpha):
        raise TapError(f"alpha={alpha!r} must be finite")
    weights = [1.0] * len(layers) if weights is None else list(weights)
    taps = {}
    for l, w in zip(layers, weights):
        if w == 0:
            continue
        v = vectors[l] if isinstance(vectors, dict) else vectors
        taps[H.name(l, hook)] = T.Add(np.asarray(v, np.float32), alpha * float(w), positions=positions, when=when)
    return taps


def perturbation_pct(vector_norm: float, alpha: float, resid_norm: float) -> float:
    """Applied perturbation as % of the residual norm (the qwen3-steering: ~8 % steers, 0.04 % does nothing)."""
    return 100.0 * abs(alpha) * vector_norm / resid_norm if resid_norm else float("nan")

"""Tuned lens (Belrose et al. 2023, "Eliciting latent predictions from transformers with the tuned lens").

Per layer l an affine translator h -> h + h A_l + b_l (A_l, b_l start at zero, so
training starts from the logit lens) is trained so that the final norm and
unembedding of the translated residual match the model's final distribution:
minimise KL(p_final || p_lens) over corpus positions. The last layer's
translator stays the identity (its residual already is the model's input to the
unembedding).

Training reads the full 262k-row unembedding of Gemma 3 only once per position (to
pick the vocabulary and the exact normaliser); the KL during training is over a
partition of the vocabulary: every token of a subset (the training text plus each
position's top `top_per_pos` final predictions) and one bucket for all other tokens,
whose lens probability is estimated from a uniform sample (`_bucket_kl`).
Evaluation (`evaluate`) uses the full vocabulary.

Memory is bounded by the number of training positions times the subset size (the
target log-probabilities, float32, filled in place) plus one chunk of full-vocabulary
logits; nothing of vocabulary width is kept per position.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np

from mlxinterp.analysis.patching import KeepColumns
from mlxinterp.analysis.stats import cluster_mean_ci, mean_ci
from mlxinterp.core.errors import MlxInterpError

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

FORMAT = "mlxinterp.tuned_lens.v1"


class TunedLensError(MlxInterpError):
    """A tuned-lens file is unreadable or belongs to another model."""


@dataclass(eq=False)
class TunedLens:
    """Translators for layers 0..n_layers-1: A [n_layers, d, d], b [n_layers, d]."""

    A: mx.array
    b: mx.array
    meta: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.A.shape[0])

    @classmethod
    def identity(cls, n_layers: int, d: int, meta: dict | None = None) -> "TunedLens":
        return cls(mx.zeros((n_layers, d, d)), mx.zeros((n_layers, d)), dict(meta or {}))

    def apply(self, h: mx.array) -> mx.array:
        """Translate residuals h [n_layers, ..., d] (layer on the first axis)."""
        x = h.astype(mx.float32)
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        out = flat + flat @ self.A + self.b[:, None, :]
        return out.reshape(x.shape)

    def check_model(self, hm: HookedModel) -> None:
        want = (hm.info.n_layers, hm.info.d_model)
        if (self.n_layers, int(self.A.shape[-1])) != want:
            raise TunedLensError(f"tuned lens has {self.n_layers} layers of width {int(self.A.shape[-1])}; "
                                 f"{hm.info.spec} has {want[0]} layers of width {want[1]}",
                                 hint="train one for this model with `mlxinterp tuned-lens --out FILE`")

    def save(self, path: str | Path) -> Path:
        from safetensors.numpy import save as st_save

        from mlxinterp.core.io import atomic_write_bytes, dumps

        meta = {"format": FORMAT, "meta": dumps(self.meta)}
        return atomic_write_bytes(path, st_save({"A": np.array(self.A), "b": np.array(self.b)}, metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> "TunedLens":
        import json

        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), "np") as f:
                meta = dict(f.metadata() or {})
                t = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # OSError, SafetensorError, a truncated header
            raise TunedLensError(f"cannot read tuned lens {path}: {type(e).__name__}: {e}") from None
        if meta.get("format") != FORMAT or "A" not in t or "b" not in t:
            raise TunedLensError(f"{path} is not a tuned lens (format {meta.get('format')!r}, tensors {sorted(t)})",
                                 hint="tuned lenses are written by `mlxinterp tuned-lens --out FILE`")
        A, b = t["A"], t["b"]
        if A.ndim != 3 or A.shape[1] != A.shape[2] or b.shape != (A.shape[0], A.shape[1]):
            raise TunedLensError(f"{path}: A {A.shape} and b {b.shape} do not form per-layer d x d translators")
        if not (np.isfinite(A).all() and np.isfinite(b).all()):
            raise TunedLensError(f"{path} contains NaN or inf")
        return cls(mx.array(A.astype(np.float32)), mx.array(b.astype(np.float32)), json.loads(meta.get("meta", "{}")))


def residuals(hm: HookedModel, windows: Sequence[np.ndarray], batch_windows: int = 4, skip_bos: bool = True
              ) -> tuple[np.ndarray, np.ndarray]:
    """Every block's output at every text position: ([n_layers, N, d] float32, token ids [N])."""
    hs, ids = [], []
    for s in range(0, len(windows), batch_windows):
        chunk = np.stack(windows[s : s + batch_windows])
        # Nobody reads this forward's logits (they are recomputed from the last residual): unembed one column.
        _, cache = hm.run_with_cache(mx.array(chunk), names="hook_resid_post",
                                     taps=[("ln_final.hook_normalized", KeepColumns(columns=(-1,)))])
        h = np.array(cache.stack("hook_resid_post"), dtype=np.float32)  # [n_layers, B, L, d]
        first = 1 if skip_bos else 0
        hs.append(h[:, :, first:].reshape(h.shape[0], -1, h.shape[-1]))
        ids.append(chunk[:, first:].reshape(-1))
    return np.concatenate(hs, axis=1), np.concatenate(ids)


def prepare_targets(hm: HookedModel, h_last: np.ndarray, text_ids: np.ndarray, top_per_pos: int = 32,
                    batch: int = 64) -> dict:
    """The final distribution at every training position, kept on a vocabulary subset plus an 'other' bucket.

    One pass of the full 262k-row unembedding per position: the exact log-normaliser, the top
    `top_per_pos` tokens. The subset S is those tokens for every position plus every token of the
    training text; the target keeps log p on S under the FULL normaliser and the remaining mass
    p_other = 1 - sum_S p, so nothing is renormalised away. Only [N, top_per_pos] ids and [N]
    normalisers survive the first pass and the [N, |S|] target is filled chunk by chunk, so the
    peak is one chunk of [batch, vocab] logits above the target itself.
    """
    N = h_last.shape[0]
    tops, lse = np.zeros((N, top_per_pos), np.int64), np.zeros(N, np.float32)
    for s in range(0, N, batch):
        logits = hm.unembed(mx.array(h_last[s : s + batch]))
        top = mx.argpartition(-logits, kth=top_per_pos - 1, axis=-1)[:, :top_per_pos]
        tops[s : s + batch], lse[s : s + batch] = np.array(top), np.array(mx.logsumexp(logits, axis=-1))
        del logits, top
    vocab = np.union1d(tops.reshape(-1), text_ids).astype(np.int64)
    logp = np.empty((N, len(vocab)), np.float32)
    p_other = np.empty(N, np.float64)
    for s in range(0, N, batch):
        sub = np.array(hm.unembed(mx.array(h_last[s : s + batch]), vocab=vocab) - mx.array(lse[s : s + batch, None]))
        logp[s : s + batch] = sub
        p_other[s : s + batch] = 1.0 - np.exp(sub.astype(np.float64)).sum(-1)
    p_other = np.clip(p_other, 1e-12, 1.0)
    return {"vocab": vocab, "logp": logp, "log_p_other": np.log(p_other).astype(np.float32),
            "mass_in_subset": float(1.0 - p_other.mean())}


def _bucket_kl(hm: HookedModel, t: mx.array, lp: mx.array, lpo: mx.array, vocab: np.ndarray, other: np.ndarray,
               n_other: int) -> mx.array:
    """KL(p || q) over the partition {each token of the subset, everything else} per row [..., ].

    q's normaliser over the rest of the vocabulary is estimated from a uniform sample `other` of
    the tokens outside the subset (sum of exp(logit) x n_other / len(other)), so probability a
    translator moves onto tokens outside the subset raises the loss instead of vanishing in a
    renormalisation (sampled softmax; Bengio & Senecal 2008).
    """
    if len(other) == 0:  # the subset is the whole vocabulary: exact KL, no bucket
        z_s = hm.unembed(t, vocab=vocab)
        lq = z_s - mx.logsumexp(z_s, axis=-1, keepdims=True)
        return mx.sum(mx.exp(lp) * (lp - lq), axis=-1)
    z = hm.unembed(t, vocab=np.concatenate([vocab, other]))
    z_s, z_o = z[..., : len(vocab)], z[..., len(vocab) :]
    log_zo = mx.logsumexp(z_o, axis=-1) + math.log(n_other / len(other))
    log_z = mx.logaddexp(mx.logsumexp(z_s, axis=-1), log_zo)
    lq = z_s - log_z[..., None]
    kl_s = mx.sum(mx.exp(lp) * (lp - lq), axis=-1)
    return kl_s + mx.exp(lpo) * (lpo - (log_zo - log_z))


def layer_kls(hm: HookedModel, x: mx.array, h_last: mx.array, batch: int = 8) -> np.ndarray:
    """KL(final || lens) in nats over the full vocabulary for residuals x [layers, N, d] against the last
    layer's h_last [N, d]: [layers, N]. All layers of `batch` positions go through one unembedding
    matmul (on a CPU a 32-row matmul against the 262k-row unembedding runs at a fraction of the
    throughput of a few hundred rows)."""
    n_l, N = x.shape[:2]
    out = np.zeros((n_l, N))
    for s in range(0, N, batch):
        final = hm.unembed(h_last[s : s + batch])
        lp = final - mx.logsumexp(final, axis=-1, keepdims=True)
        q = hm.unembed(x[:, s : s + batch])
        lq = q - mx.logsumexp(q, axis=-1, keepdims=True)
        out[:, s : s + batch] = np.array(mx.sum(mx.exp(lp)[None] * (lp[None] - lq), axis=-1))
    return out


def _input_scales(h: np.ndarray, n_fit: int) -> tuple[np.ndarray, np.ndarray]:
    """Per layer (all but the last): the residual's RMS r [L-1] and each dimension's RMS s [L-1, d] over the
    first n_fit positions, one layer at a time in float64 (no float64 copy of all of h)."""
    s = np.stack([np.sqrt(np.mean(h[l, :n_fit].astype(np.float64) ** 2, axis=0)) for l in range(h.shape[0] - 1)])
    r = np.sqrt(np.mean(s**2, axis=1))
    return r, np.maximum(s, 1e-6 * r[:, None])


def train(hm: HookedModel, h: np.ndarray, steps: int = 500, batch: int = 64, lr: float = 1e-2, top_per_pos: int = 32,
          text_ids: np.ndarray | None = None, seed: int = 0, other_sample: int = 2048, val_positions: int = 128,
          eval_every: int | None = None, progress: Callable[[int, int], None] | None = None) -> tuple[TunedLens, dict]:
    """Train translators on residuals h [n_layers, N, d] (from `residuals`) of training text.

    Loss: mean over layers and positions of KL(final || lens) over the vocabulary subset of
    `prepare_targets` plus the sampled 'other' bucket (`_bucket_kl`). Adam with a linear warm-up
    over the first 5 % of steps and linear decay to zero. Each translator acts on the residual
    BEFORE the final norm (Belrose et al. 2023).

    `lr` is the largest change one Adam step makes to the translated residual, relative to the
    layer's residual RMS, for both parts of the translator: Adam moves every parameter by about
    lr per step whatever its gradient, so the parametrisation fixes the scale. The bias is learned
    in units of the layer's RMS r (Gemma's residual RMS grows 200-fold with depth); the matrix
    acts on the residual standardised per dimension (massive-activation dimensions of 100x the
    RMS would otherwise dominate every output) and its output is in units of r / d, so the d
    coordinated updates of one output sum to at most lr x r (the fan-in rule for Adam, Yang et
    al. 2022, "Tensor Programs V"). A raw d x d matrix under Adam moves each output by about
    lr x d x RMS per step, ~1.3 RMS at lr = 2e-3 for d = 640: that noise floor swamped the late
    layers, whose logit-lens KL is already small, so no snapshot beat the identity there.
    Per-layer early stopping: every `eval_every` steps (default: 10 checks per run) each layer's
    full-vocabulary KL on `val_positions` positions held back from the end of the training text
    (never trained on) decides whether that layer keeps its new translator; the identity competes.
    """
    n_layers, N, d = h.shape
    # The last fifth of the positions (the last windows read) is held back; validation reads
    # `val_positions` of them evenly spread, so it spans many windows rather than one or two.
    n_fit = N - max(1, N // 5)
    held = np.arange(n_fit, N)
    val_idx = held[:: max(1, len(held) // val_positions)][:val_positions]
    val = len(val_idx)
    if n_fit < batch or val < 1:
        raise TunedLensError(f"{N} training positions are too few for a batch of {batch} plus a validation slice")
    eval_every = eval_every or max(1, steps // 10)
    t0 = time.perf_counter()
    tg = prepare_targets(hm, h[-1, :n_fit], text_ids if text_ids is not None else np.zeros(0, np.int64), top_per_pos)
    vocab, logp, lpo = tg["vocab"], tg["logp"], tg["log_p_other"]  # numpy; one batch at a time goes to MLX
    rest = np.setdiff1d(np.arange(hm.info.vocab_size), vocab)
    other_sample = min(other_sample, len(rest))
    r_np, s_np = _input_scales(h, n_fit)
    r = mx.array(r_np.astype(np.float32))
    row_scale_np = (r_np[:, None] / (d * s_np)).astype(np.float32)  # A_eff = diag(row_scale) A
    row_scale = mx.array(row_scale_np)
    params = {"A": mx.zeros((n_layers - 1, d, d)), "b": mx.zeros((n_layers - 1, d))}

    def translate(p, x):
        return x + (x * row_scale[:, None, :]) @ p["A"] + (p["b"] * r[:, None])[:, None, :]

    def loss_fn(p, x, lp, lo, other):
        kl = _bucket_kl(hm, translate(p, x), lp[None], lo[None], vocab, other, len(rest))  # [layers, B]
        return mx.mean(kl, axis=1).sum()

    vg = mx.value_and_grad(loss_fn)
    warm = max(1, steps // 20)
    sched = optim.join_schedules([optim.linear_schedule(lr / warm, lr, warm), optim.linear_schedule(lr, 0.0, steps - warm + 1)], [warm])
    opt = optim.Adam(learning_rate=sched)
    opt.init(params)
    rng = np.random.default_rng(seed)
    vx = mx.array(h[:-1, val_idx])
    vfinal = mx.array(h[-1, val_idx])

    def val_kl(p) -> np.ndarray:
        return layer_kls(hm, translate(p, vx), vfinal).mean(axis=1)

    best_kl = val_kl(params)
    identity_kl = best_kl.copy()
    best_A, best_b = np.zeros((n_layers - 1, d, d), np.float32), np.zeros((n_layers - 1, d), np.float32)
    best_step = np.zeros(n_layers - 1, int)
    curve = []
    for step in range(steps):
        idx = np.sort(rng.choice(n_fit, batch, replace=False))
        other = np.sort(rng.choice(rest, other_sample, replace=False))
        loss, g = vg(params, mx.array(h[:-1, idx]), mx.array(logp[idx]), mx.array(lpo[idx]), other)
        params = opt.apply_gradients(g, params)
        mx.eval(params, opt.state, loss)
        if (step + 1) % eval_every == 0 or step == steps - 1:
            kl = val_kl(params)
            better = kl < best_kl
            if better.any():
                best_A[better] = (row_scale_np[:, :, None] * np.array(params["A"]))[better]
                best_b[better] = np.array(params["b"] * r[:, None])[better]
                best_kl[better], best_step[better] = kl[better], step + 1
            curve.append({"step": step + 1, "loss_train_batch": round(float(loss.item()), 4),
                          "kl_sum_val": round(float(kl.sum()), 4), "kl_val": kl.round(4).tolist()})
        if progress:
            progress(step + 1, steps)
    lens = TunedLens(mx.concatenate([mx.array(best_A), mx.zeros((1, d, d))]),
                     mx.concatenate([mx.array(best_b), mx.zeros((1, d))]))
    info = {"positions": N, "training_positions": n_fit, "validation_positions": val, "validation_index": val_idx.tolist(),
            "best_step_per_layer": best_step.tolist(), "validation_kl_identity": identity_kl.round(4).tolist(),
            "validation_kl_best": best_kl.round(4).tolist(), "steps": steps, "batch": batch, "lr": lr,
            "eval_every": eval_every, "vocab_subset": int(len(vocab)), "other_sample": other_sample,
            "target_mb": round(logp.nbytes / 2**20, 1), "final_mass_in_subset": round(tg["mass_in_subset"], 4),
            "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "curve": curve}
    lens.meta = {"model": hm.info.spec, **{k: v for k, v in info.items() if k not in ("curve", "validation_index")}}
    return lens, info


def evaluate(hm: HookedModel, lens: TunedLens, h: np.ndarray, clusters: Sequence | None = None, batch: int = 8) -> dict:
    """Per layer, KL(final || lens) in nats over the full vocabulary: logit lens vs tuned lens, with intervals.

    clusters: one label per position (its window or document); positions of one window are not
    independent, so the intervals resample windows, then positions (stats.cluster_mean_ci).
    Without labels each position is a unit (stats.mean_ci). The difference tuned - logit is paired
    per position.
    """
    n_layers, N, _ = h.shape
    x = mx.array(h)
    per = {"logit": layer_kls(hm, x, x[-1], batch), "tuned": layer_kls(hm, lens.apply(x), x[-1], batch)}

    def ci(values):
        return (cluster_mean_ci(values, clusters) if clusters is not None else mean_ci(values)).to_dict()

    kl = {k: v.mean(1).round(5).tolist() for k, v in per.items()}
    better = [kl["tuned"][l] < kl["logit"][l] for l in range(n_layers - 1)]
    diff_ci = [ci(v) for v in (per["tuned"] - per["logit"])[:-1]]
    return {"positions": N, "kl_logit_lens": kl["logit"], "kl_tuned_lens": kl["tuned"],
            "ci_logit_lens": [ci(v) for v in per["logit"]], "ci_tuned_lens": [ci(v) for v in per["tuned"]],
            "ci_tuned_minus_logit": diff_ci,
            "tuned_lower_at_every_layer_but_last": all(better), "layers_tuned_lower": int(sum(better)),
            "layers_tuned_lower_ci": int(sum(c["high"] is not None and c["high"] < 0 for c in diff_ci))}

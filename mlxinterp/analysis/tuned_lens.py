"""Tuned lens (Belrose et al. 2023, "Eliciting latent predictions from transformers with the tuned lens").

Per layer l an affine translator h -> h + h A_l + b_l (A_l, b_l start at zero, so
training starts from the logit lens) is trained so that the final norm and
unembedding of the translated residual match the model's final distribution:
minimise KL(p_final || p_lens) over corpus positions. The last layer's
translator stays the identity (its residual already is the model's input to the
unembedding).

Training reads the full 262k-row unembedding of Gemma 3 only once per position (to
pick the vocabulary); the KL during training is over a fixed subset of the
vocabulary: every token of the training text plus each position's top
`top_per_pos` final predictions, with both distributions renormalised on that subset.
`train` reports how much of the final probability mass the subset holds. Evaluation
(`evaluate`) uses the full vocabulary.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np

from mlxinterp.analysis.patching import KeepColumns
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


def choose_vocab(hm: HookedModel, h_last: np.ndarray, text_ids: np.ndarray, top_per_pos: int = 16, batch: int = 64
                 ) -> tuple[np.ndarray, float]:
    """(vocabulary subset, mean final-probability mass inside it)."""
    tops, lses = [], []
    for s in range(0, h_last.shape[0], batch):
        logits = hm.unembed(mx.array(h_last[s : s + batch]))
        tops.append(np.array(mx.argpartition(-logits, kth=top_per_pos - 1, axis=-1)[:, :top_per_pos]))
        lses.append(np.array(mx.logsumexp(logits, axis=-1)))
    vocab = np.union1d(np.concatenate(tops).reshape(-1), text_ids).astype(np.int64)
    lse = np.concatenate(lses)
    mass = []
    for s in range(0, h_last.shape[0], batch):
        sub = hm.unembed(mx.array(h_last[s : s + batch]), vocab=vocab)
        mass.append(np.array(mx.sum(mx.exp(sub - mx.array(lse[s : s + batch, None])), axis=-1)))
    return vocab, float(np.concatenate(mass).mean())


def train(hm: HookedModel, h: np.ndarray, steps: int = 300, batch: int = 64, lr: float = 1e-3, top_per_pos: int = 8,
          text_ids: np.ndarray | None = None, seed: int = 0, progress: Callable[[int, int], None] | None = None
          ) -> tuple[TunedLens, dict]:
    """Train translators on residuals h [n_layers, N, d] (from `residuals`)."""
    n_layers, N, d = h.shape
    if N < batch:
        raise TunedLensError(f"{N} training positions are fewer than one batch of {batch}")
    t0 = time.perf_counter()
    vocab, mass = choose_vocab(hm, h[-1], text_ids if text_ids is not None else np.zeros(0, np.int64), top_per_pos)
    target = []
    for s in range(0, N, 256):
        lg = hm.unembed(mx.array(h[-1, s : s + 256]), vocab=vocab)
        target.append(np.array(lg - mx.logsumexp(lg, axis=-1, keepdims=True)))
    logp = mx.array(np.concatenate(target))  # [N, |V|] final log-probs on the subset
    hx = mx.array(h[:-1])
    lens = TunedLens.identity(n_layers, d)
    params = {"A": mx.zeros((n_layers - 1, d, d)), "b": mx.zeros((n_layers - 1, d))}

    def loss_fn(p, x, lp):
        t = x + x @ p["A"] + p["b"][:, None, :]
        q = hm.unembed(t, vocab=vocab)
        lq = q - mx.logsumexp(q, axis=-1, keepdims=True)
        kl = mx.sum(mx.exp(lp) * (lp - lq), axis=-1)  # [layers, B]
        return mx.mean(kl, axis=1).sum(), mx.mean(kl, axis=1)

    vg = mx.value_and_grad(loss_fn)
    opt = optim.Adam(learning_rate=lr)
    opt.init(params)
    rng = np.random.default_rng(seed)
    # Per-layer early stopping on a validation slice (the last `val` positions, never trained on): Adam takes
    # lr-sized steps even where the gradient is tiny, so late layers, where the logit lens is already close,
    # drift while early layers still improve. Each layer keeps its best snapshot, the identity included.
    # The validation KL uses the full vocabulary: the subset KL cannot see probability a translator moves onto
    # tokens outside the subset (measured: it chose translators that were worse than the logit lens).
    val = max(1, min(N // 8, 64))
    n_fit = N - val
    vx = hx[:, n_fit:]
    vfinal = hm.unembed(mx.array(h[-1, n_fit:]))
    vlp = vfinal - mx.logsumexp(vfinal, axis=-1, keepdims=True)

    def val_kl(p) -> np.ndarray:
        out = []
        for l in range(n_layers - 1):
            q = hm.unembed(vx[l] + vx[l] @ p["A"][l] + p["b"][l])
            lq = q - mx.logsumexp(q, axis=-1, keepdims=True)
            out.append(float(mx.mean(mx.sum(mx.exp(vlp) * (vlp - lq), axis=-1)).item()))
        return np.array(out)

    best_kl = val_kl(params)
    best_A, best_b = np.array(params["A"]), np.array(params["b"])
    best_step = np.zeros(n_layers - 1, int)
    curve = []
    for step in range(steps):
        idx = mx.array(np.sort(rng.choice(n_fit, min(batch, n_fit), replace=False)).astype(np.int32))
        (loss, _per_layer), g = vg(params, mx.take(hx, idx, axis=1), mx.take(logp, idx, axis=0))
        params = opt.apply_gradients(g, params)
        mx.eval(params, opt.state, loss)
        if (step + 1) % 25 == 0 or step == steps - 1:
            kl = val_kl(params)
            better = kl < best_kl
            if better.any():
                A_now, b_now = np.array(params["A"]), np.array(params["b"])
                best_A[better], best_b[better] = A_now[better], b_now[better]
                best_kl[better], best_step[better] = kl[better], step + 1
            curve.append({"step": step + 1, "kl_sum_train_batch": round(float(loss.item()), 4),
                          "kl_sum_val": round(float(kl.sum()), 4)})
        if progress:
            progress(step + 1, steps)
    lens.A = mx.concatenate([mx.array(best_A), mx.zeros((1, d, d))])
    lens.b = mx.concatenate([mx.array(best_b), mx.zeros((1, d))])
    info = {"positions": N, "validation_positions": val, "best_step_per_layer": best_step.tolist(),
            "steps": steps, "batch": batch, "lr": lr, "vocab_subset": int(len(vocab)),
            "final_mass_in_subset": round(mass, 4), "seconds": round(time.perf_counter() - t0, 1), "curve": curve}
    lens.meta = {"model": hm.info.spec, **{k: v for k, v in info.items() if k != "curve"}}
    return lens, info


def evaluate(hm: HookedModel, lens: TunedLens, h: np.ndarray, batch: int = 32) -> dict:
    """Per layer, mean KL(final || lens) in nats over positions, full vocabulary: logit lens vs tuned lens."""
    n_layers, N, _ = h.shape
    sums = {"logit": np.zeros(n_layers), "tuned": np.zeros(n_layers)}
    for s in range(0, N, batch):
        x = mx.array(h[:, s : s + batch])
        final = hm.unembed(x[-1])
        lp = final - mx.logsumexp(final, axis=-1, keepdims=True)
        p = mx.exp(lp)
        for name, hh in (("logit", x), ("tuned", lens.apply(x))):
            for l in range(n_layers):
                q = hm.unembed(hh[l])
                lq = q - mx.logsumexp(q, axis=-1, keepdims=True)
                sums[name][l] += float(mx.sum(p * (lp - lq)).item())
    kl = {k: (v / N).round(5).tolist() for k, v in sums.items()}
    better = [kl["tuned"][l] < kl["logit"][l] for l in range(n_layers - 1)]
    return {"positions": N, "kl_logit_lens": kl["logit"], "kl_tuned_lens": kl["tuned"],
            "tuned_lower_at_every_layer_but_last": all(better), "layers_tuned_lower": int(sum(better))}

"""One TopK SAE training step (loss, gradient): the k chosen activations decoded by one dense matmul
(analysis.sae_train._loss) vs gathering the k decoder rows per position and scatter-adding their gradient.

Both compute the same loss and gradients (the bench records the largest difference); conditions are
interleaved round by round as in bench.harness. Random activations: the step's cost does not depend on
the values, only on the shapes (batch, d, width, k).
"""
from __future__ import annotations

import time

import mlx.core as mx
import numpy as np

from bench.harness import machine, ratio_summary
from mlxinterp.analysis import sae_train as ST


def _gather_loss(p: dict, x: mx.array, k: int, var: mx.array):
    """The gather formulation: only the k chosen decoder rows per position."""
    pre = x @ p["W_enc"] - p["b_dec"] @ p["W_enc"] + p["b_enc"]
    idx = mx.stop_gradient(mx.argpartition(-pre, kth=k - 1, axis=-1)[:, :k])
    vals = mx.maximum(mx.take_along_axis(pre, idx, axis=-1), 0.0)
    rows = mx.take(p["W_dec"], idx.reshape(-1), axis=0).reshape(*idx.shape, -1)
    err = x - (mx.sum(vals[..., None] * rows, axis=1) + p["b_dec"])
    return mx.mean(mx.sum(err * err, axis=-1)) / var


def bench_sae_step(d: int = 640, width: int = 4096, k: int = 32, batch: int = 1024, rounds: int = 5,
                   steps: int = 4) -> dict:
    """Seconds per training step (forward + gradient, evaluated) of both formulations."""
    rng = np.random.default_rng(0)
    p = ST._init_params(d, ST.TrainConfig(width=width, k=k), rng.normal(size=d).astype(np.float32) * 0.1)
    var = mx.array(1.0)
    xs = [mx.array(rng.normal(size=(batch, d)).astype(np.float32)) for _ in range(steps)]
    fns = {"dense": mx.value_and_grad(lambda p, x: ST._loss(p, x, k, d // 2, 1 / 32, None, var)[0]),
           "gather": mx.value_and_grad(lambda p, x: _gather_loss(p, x, k, var))}
    (l_d, g_d), (l_g, g_g) = (fns[n](p, xs[0]) for n in ("dense", "gather"))  # also the warm-up
    diff = max(float(mx.abs(g_d[key] - g_g[key]).max()) for key in g_d)
    times: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for x in xs:
                mx.eval(fn(p, x))
            times[name].append((time.perf_counter() - t0) / steps)
    return {"d": d, "width": width, "k": k, "batch": batch, "rounds": rounds, "seconds_per_step": times,
            "gather_over_dense": ratio_summary(times["gather"], times["dense"]),
            "loss_difference": abs(float(l_d) - float(l_g)), "max_gradient_difference": diff, "machine": machine()}

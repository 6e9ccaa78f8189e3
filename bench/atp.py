"""Attribution patching of resid_post at every layer x position: mlxinterp vs nnsight's gradient idiom
(and the plain torch one) on the same weights, as ratios measured in one run.

The task is the patching benchmark's (default model, Eiffel Tower -> Colosseum, logit(Paris) -
logit(Rome)); each condition computes the whole estimate grid, (a_clean - a_corrupt) . d metric / d a at
the corrupted run, from the prompts: mlxinterp's `attribute` (one two-row forward + backward), and in
torch (bench/torch_side.py `_atp`) nnsight's trace + `with metric.backward()` idiom as loaded, the same
with frozen parameters, and plain torch forward hooks with retain_grad. Every condition's grid is
compared with mlxinterp's (max |difference|), so a faster wrong answer would show.

Each side runs in its own worker process (bench.harness.Worker), conditions interleaved round by round.
torch runs with `torch_threads` threads: with 2 cores shared by other processes, OpenMP's spin-waiting
makes 2 torch threads several times slower than 1 (measured in this harness's `forward` benchmark too).
"""
from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

from bench.harness import (CLEAN, CORRUPT, FOIL, TARGET, Condition, Worker, _check_rounds, _log_dir, interleave_workers,
                           ratio_summary, worker_env)

MLX = "mlx/atp_resid_post"
TARGET_SPEEDUP = 2.0  # the bar: mlxinterp at least 2x faster than nnsight's gradient idiom


def mlx_conditions(model: str = "default") -> dict[str, Condition]:
    """Worker side: the MLX condition (model loaded once)."""
    from mlxinterp.analysis.attribution import attribute
    from mlxinterp.analysis.patching import logit_diff
    from mlxinterp.core.hooks import load

    hm = load(model)
    metric = logit_diff(hm, TARGET, FOIL)
    n = hm.info.n_layers

    def atp():
        att = attribute(hm, CLEAN, CORRUPT, metric, hooks=["hook_resid_post"])
        return [att.estimates[f"blocks.{l}.hook_resid_post"].tolist() for l in range(n)]

    return {"atp_resid_post": Condition(atp)}


def bench_atp_nnsight(rounds: int = 5, torch_threads: int = 1, out: Path | None = None, progress=None) -> dict:
    """Interleaved rounds of every condition; ratios of each torch condition's seconds to mlxinterp's."""
    from bench.torch_side import require

    _check_rounds(rounds)
    require("torch", "transformers", "nnsight")
    logs = _log_dir(out)
    times, values = interleave_workers(
        [lambda: Worker("mlx", "mlx_atp", {}, env=worker_env(), log=logs / "atp-mlx.log"),
         lambda: Worker("torch", "torch", {"kind": "atp", "threads": torch_threads},
                        env=worker_env(preload=False), log=logs / "atp-torch.log")], rounds, progress)
    ref = np.array(values[MLX])
    others = [k for k in times if k != MLX]
    return {"rounds": rounds, "torch_threads": torch_threads, "clean": CLEAN, "corrupt": CORRUPT,
            "metric": f"logit({TARGET!r}) - logit({FOIL!r})", "grid_shape": list(ref.shape),
            "seconds": times, "median_seconds": {k: statistics.median(v) for k, v in times.items()},
            "speedup_vs_mlx": {k: ratio_summary(times[k], times[MLX]) for k in others},
            "max_abs_diff_vs_mlx": {k: float(np.abs(np.array(values[k]) - ref).max()) for k in others},
            "max_abs_estimate": float(np.abs(ref).max()),
            "targets": {"speedup_vs_mlx": {"torch/nnsight_atp": TARGET_SPEEDUP,
                                           "torch/nnsight_atp_frozen": TARGET_SPEEDUP}}}

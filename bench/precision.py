"""Precision patching's one trick, measured: swapping a module's weights in place vs reloading the model.

Each round, interleaved: (a) load the model with a mixed precision map (4-bit everywhere
except one attention block in float: what a reload-based precision patch would do per
module), (b) the same state by PrecisionSwitch.set on an already-loaded float model,
(c) one forward of a short prompt, to put both in context. Ratios per round.
"""
from __future__ import annotations

import statistics
import time

import mlx.core as mx

from bench.harness import BENCH_PROMPT, ratio_summary


def bench_precision(spec: str = "default", rounds: int = 3, layer: int = 9) -> dict:
    from mlxinterp.analysis.precision import PrecisionSwitch
    from mlxinterp.core.hooks import load
    from mlxinterp.suite import free_memory

    hm = load(spec)
    t = time.perf_counter()
    sw = PrecisionSwitch(hm, 4, 64)
    setup = time.perf_counter() - t
    unit = f"blocks.{layer % hm.info.n_layers}.attn"
    state = [u for u in sw.units if u != unit]
    ids = hm.tokens(BENCH_PROMPT)
    reload_s, swap_s, fwd_s = [], [], []
    for _ in range(rounds):
        t = time.perf_counter()
        other = load(spec, precision={"default": "4bit", unit: "float"})
        reload_s.append(time.perf_counter() - t)
        del other
        free_memory()
        t = time.perf_counter()
        sw.set(state)
        swap_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        mx.eval(hm.forward(ids))
        fwd_s.append(time.perf_counter() - t)
        sw.set(())
    return {"spec": spec, "unit": unit, "switch_setup_seconds": setup,
            "median_seconds": {"reload": statistics.median(reload_s), "swap": statistics.median(swap_s),
                               "forward": statistics.median(fwd_s)},
            "reload_over_swap": ratio_summary(reload_s, swap_s),
            "reload_over_forward": ratio_summary(reload_s, fwd_s)}

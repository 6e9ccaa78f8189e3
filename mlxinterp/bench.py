"""Benchmarks measured as ratios inside one process, so machine speed cancels out.

Conditions are interleaved round by round (not run as blocks) so drift in
CPU frequency or background load hits every condition alike; each figure is
the median over rounds.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import mlx.core as mx

from mlxinterp import taps as T
from mlxinterp.hooks import ActivationCache, HookedModel

BENCH_PROMPT = "The Eiffel Tower is located in the city of Paris, which is the capital of France and home to"


def _timed(fn: Callable[[], list]) -> float:
    t0 = time.perf_counter()
    mx.eval(*fn())
    return time.perf_counter() - t0


def bench_taps(hm: HookedModel, prompt: str = BENCH_PROMPT, rounds: int = 7) -> dict:
    """Forward time: plain mlx-lm vs hooks installed vs identity tap everywhere vs capture everywhere."""
    ids = hm.tokens(prompt).ids
    identity = T.Fn(fn=lambda a, ctx: a)
    every = {n: identity for n in hm.hook_names}

    def plain():
        return [hm.model(ids)]

    def noop():
        with hm.hooks(every):
            return [hm.model(ids)]

    def capture():
        store = ActivationCache(hm)
        with hm.hooks({n: T.Capture(store=store) for n in hm.hook_names}):
            logits = hm.model(ids)
        return [logits, *store.arrays()]

    conditions = {"bare": plain, "hooks_installed": plain, "noop_taps": noop, "capture_all": capture}
    times: dict[str, list[float]] = {k: [] for k in conditions}
    for name, fn in conditions.items():  # warm-up
        _run(hm, name, fn)
    for _ in range(rounds):
        for name, fn in conditions.items():
            times[name].append(_run(hm, name, fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "prompt_tokens": int(ids.shape[1]),
        "rounds": rounds,
        "median_seconds": med,
        "hooks_installed_overhead": med["hooks_installed"] / med["bare"] - 1,
        "noop_overhead": med["noop_taps"] / med["bare"] - 1,
        "capture_all_overhead": med["capture_all"] / med["bare"] - 1,
        "n_hook_points": len(hm.hook_names),
        "targets": {"noop_overhead": 0.02, "capture_all_overhead": 0.10},
    }


def _run(hm: HookedModel, name: str, fn) -> float:
    """'bare' runs with hook classes removed: exactly plain mlx-lm."""
    if name == "bare":
        hm.remove_hooks()
        try:
            return _timed(fn)
        finally:
            hm.install_hooks()
    return _timed(fn)

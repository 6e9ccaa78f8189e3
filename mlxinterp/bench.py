"""Benchmarks measured as ratios inside one process, so machine speed cancels out.

Conditions are interleaved round by round (not run as blocks) so drift in
CPU frequency or background load hits every condition alike. Each overhead is
the median over rounds of that round's ratio to the bare forward;
`hooks_installed_overhead` (hooks present, no tap: should be ~0) shows the
noise floor.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import mlx.core as mx

from mlxinterp import taps as T
from mlxinterp.errors import MlxInterpError
from mlxinterp.hooks import ActivationCache, HookedModel

BENCH_PROMPT = "The Eiffel Tower is located in the city of Paris, which is the capital of France and home to"


def _timed(fn: Callable[[], list]) -> float:
    t0 = time.perf_counter()
    mx.eval(*fn())
    return time.perf_counter() - t0


def bench_taps(hm: HookedModel, prompt: str = BENCH_PROMPT, rounds: int = 7) -> dict:
    """Forward time: plain mlx-lm vs hooks installed vs identity tap everywhere vs capture everywhere."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise MlxInterpError(f"rounds={rounds!r} is not allowed; use a whole number >= 1")
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

    def overhead(name: str) -> float:
        """Median over rounds of (condition / bare) - 1: each round's pair shares the machine's state."""
        return statistics.median(t / b for t, b in zip(times[name], times["bare"])) - 1

    return {
        "prompt_tokens": int(ids.shape[1]),
        "rounds": rounds,
        "median_seconds": med,
        "seconds": times,
        "hooks_installed_overhead": overhead("hooks_installed"),
        "noop_overhead": overhead("noop_taps"),
        "capture_all_overhead": overhead("capture_all"),
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

"""Precision patching, measured: swapping a module's weights in place vs reloading the model, and the time
of one full map (every layer x {attention, MLP}) with and without sharing the blocks before each module.

Swap vs reload, each round, interleaved: (a) load the model with a mixed precision map (4-bit everywhere
except one attention block in float: what a reload-based precision patch would do per
module), (b) the same state by PrecisionSwitch.set on an already-loaded float model,
(c) one forward of a short prompt, to put both in context. Ratios per round.

Full map (`map_finding`): the precision_patching study's lens finding on `n` factual prompts, restore
direction, 4-bit g64: float + quantized + one evaluation per module (37 on Gemma 3 270M), once with
share_prefix (analysis.precision.PrefixShare) and once without, alternating by round; wall and CPU
seconds and the load average, and whether both gave identical values (they must).
"""
from __future__ import annotations

import os
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


def bench_map(spec: str = "default", n: int = 12, rounds: int = 1, progress=None) -> dict:
    """One full restore map of the lens finding, with and without the shared prefix (module doc)."""
    import numpy as np

    from mlxinterp.analysis.precision import PrecisionSwitch, evaluate
    from mlxinterp.core.hooks import load
    from mlxinterp.studies.precision_patching import lens_metric
    from mlxinterp.tasks import data

    say = progress or (lambda msg: None)
    hm = load(spec)
    items = data.load_json("twohop/queries.json")["items"]
    rng = np.random.default_rng(0)  # the study's prompt draw (seed 0)
    prompts = [items[i]["hop2_prompt"] for i in sorted(rng.choice(len(items), size=n, replace=False))]
    sw = PrecisionSwitch(hm, 4, 64)
    lens_metric(hm, prompts)(hm)  # warm-up: first-time allocations are not charged to the first condition
    runs: dict[str, list] = {"shared": [], "unshared": []}
    values = {}
    load_avg = [list(os.getloadavg())]
    for r in range(rounds):
        for share in ((True, False) if r % 2 == 0 else (False, True)):
            key = "shared" if share else "unshared"
            say(f"round {r + 1}: full map, {key} prefix")
            t, c = time.perf_counter(), time.process_time()
            raw = evaluate(hm, lens_metric(hm, prompts), switch=sw, directions=["restore"], share_prefix=share)
            runs[key].append({"wall_seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c,
                              "evaluations": raw["seconds"]["evaluations"],
                              "prefix_calls_replayed": raw["seconds"]["prefix_calls_replayed"]})
            values[key] = raw["values"]
            load_avg.append(list(os.getloadavg()))
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("wall_seconds", "cpu_seconds")} for k, v in runs.items()}
    return {"spec": spec, "finding": "lens (top-1 path agreement + next-token KL)", "prompts": n, "precision": "4bit-g64",
            "modules": len(sw.units), "runs": runs, "median": med,
            "unshared_over_shared_wall": med["unshared"]["wall_seconds"] / med["shared"]["wall_seconds"],
            "unshared_over_shared_cpu": med["unshared"]["cpu_seconds"] / med["shared"]["cpu_seconds"],
            "identical_values": values["shared"] == values["unshared"], "target_seconds": 300.0,
            "load_average": load_avg}

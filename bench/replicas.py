"""Real-size replicas: load time, peak memory (forward, capture-all, patch sweep) and tokens/s, next to the
planner's prediction (mlxinterp.core.memory.predict_peak).

Each shape is written as a random-weight replica (mlxinterp.core.replica), measured in its own
worker process (so one shape's peak cannot hide in another's) and deleted afterwards. Shapes run
one at a time, and only when the machine's available memory (MemAvailable) exceeds the prediction
plus a 2 GB reserve: this machine is shared.

Peaks: MLX's allocator peak (mx.get_peak_memory, reset before each stage; it includes the weights
held by the model) and the process's resident set (VmHWM is monotone, so it is read per stage as
the peak so far). The prediction is compared with the allocator peak plus the process's
non-MLX baseline (Python, the tokenizer), which is what the machine has to hold.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SHAPES = ("gemma-2-2b-it-4bit", "Llama-3.2-3B-Instruct-4bit", "Qwen2.5-7B-Instruct-4bit", "gemma-2-9b-it-4bit")
SWEEP_SHAPES = {"gemma-2-2b-it-4bit", "Llama-3.2-3B-Instruct-4bit"}
TOKENS = 8  # prompt length of the forward and capture-all measurements (2 cores shared by 8: kept short)
SWEEP_TOKENS, SWEEP_POSITIONS, SWEEP_BATCH = 6, 1, 16
GEN_PROMPT, GEN_TOKENS = 4, 3
RESERVE = 2 * 1024**3


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _rss() -> tuple[int, int]:
    """(current, peak) resident set of this process, bytes."""
    vals = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            vals[line.split(":")[0]] = int(line.split()[1]) * 1024
    return vals.get("VmRSS", 0), vals.get("VmHWM", 0)


def _say(msg: str) -> None:
    print(f"  [worker] {msg}", file=sys.stderr, flush=True)


def _stage(fn: Callable[[], object]) -> dict:
    import mlx.core as mx

    from bench.harness import gc_collect

    gc_collect()
    before = int(mx.get_active_memory())
    rss_before, _ = _rss()
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    held = fn()
    mx.eval(held)
    secs = time.perf_counter() - t0
    _, hwm = _rss()
    res = {"seconds": secs, "mlx_active_before": before, "mlx_peak": int(mx.get_peak_memory()),
           "rss_before": rss_before, "rss_peak_so_far": hwm}
    del held
    return res


def measure(path: str, like: str, sweep: bool) -> dict:
    """Worker side: load the replica natively quantized and measure every stage."""
    import mlx.core as mx
    import numpy as np
    from mlx_lm import stream_generate

    from mlxinterp.analysis.patching import logit_diff, patch_sweep
    from mlxinterp.core.hooks import load

    rss0, _ = _rss()
    t0 = time.perf_counter()
    hm = load(path, dtype="native")
    hm.model.set_dtype(mx.float32)  # as the CPU policy runs quantized models: float32 scales (10x faster than bf16)
    mx.eval(hm.model.parameters())
    load_s = time.perf_counter() - t0
    rss_loaded, hwm_loaded = _rss()
    weights = int(mx.get_active_memory())
    rng = np.random.default_rng(0)
    V = hm.info.vocab_size
    ids = mx.array(rng.integers(3, min(V, 259), size=(1, TOKENS)).astype(np.int32))
    res = {"like": like, "info": hm.info.to_dict(), "load_seconds": load_s, "rss_start": rss0,
           "rss_after_load": rss_loaded, "rss_peak_load": hwm_loaded, "mlx_weights": weights, "tokens": TOKENS}
    _say("forward")
    res["forward"] = _stage(lambda: hm.model(ids))
    _say("capture_all")
    res["capture_all"] = _stage(lambda: list(hm.run_with_cache(ids)[1].arrays()))
    if sweep:
        clean = rng.integers(3, 259, size=SWEEP_TOKENS).tolist()
        corrupt = list(clean)
        corrupt[SWEEP_TOKENS // 2] = 3 + (corrupt[SWEEP_TOKENS // 2] + 7) % 256
        metric = logit_diff(hm, 10, 11)
        positions = list(range(SWEEP_TOKENS - SWEEP_POSITIONS, SWEEP_TOKENS))
        _say("patch sweep")
        res["sweep"] = _stage(lambda: mx.array(patch_sweep(hm, clean, corrupt, metric, positions=positions,
                                                          batch_size=SWEEP_BATCH).metric))
        res["sweep"].update(cells=hm.info.n_layers * SWEEP_POSITIONS, batch=SWEEP_BATCH, tokens=SWEEP_TOKENS)
    _say("generation")
    prompt = ids[0, :GEN_PROMPT].tolist()
    last = None
    for last in stream_generate(hm.model, hm.tokenizer, prompt, max_tokens=GEN_TOKENS):
        pass
    res["generation"] = {"prompt_tps": last.prompt_tps, "generation_tps": last.generation_tps,
                         "tokens": last.generation_tokens, "peak_memory_gb": last.peak_memory}
    return res


def predicted(like: str) -> dict:
    """The planner's predictions for the stages `measure` runs (native quantized, as the benchmark loads)."""
    from mlxinterp.core import memory
    from mlxinterp.suite import catalogue

    cfg = catalogue.get(like).full_config()
    out = {}
    for stage, work in {"forward": memory.Workload(tokens=TOKENS),
                        "capture_all": memory.Workload(tokens=TOKENS, capture="all"),
                        "sweep": memory.Workload(tokens=SWEEP_TOKENS, batch=SWEEP_BATCH, capture="sweep")}.items():
        out[stage] = memory.predict_peak(cfg, work, dtype="native", float32_scales=True).to_dict()
    return out


def run_one(like: str, root: Path, log: Callable[[str], None]) -> dict:
    """Orchestrator side: write the replica, measure it in a worker, delete it."""
    from bench.harness import worker_env
    from mlxinterp.core.loading import default_model_dir
    from mlxinterp.core.replica import write_replica
    from mlxinterp.suite import catalogue

    pred = predicted(like)
    need = max(p["total"] for p in pred.values()) + RESERVE
    have = available_bytes()
    if have < need:
        return {"like": like, "skipped": f"MemAvailable {have / 1e9:.1f} GB < predicted peak + 2 GB reserve "
                                         f"{need / 1e9:.1f} GB", "predicted": pred}
    out = root / like
    t0 = time.perf_counter()
    write_replica(catalogue.get(like).full_config(), out, tokenizer_dir=default_model_dir(), progress=log)
    write_s = time.perf_counter() - t0
    try:
        code = (f"import json, sys; from bench.replicas import measure; "
                f"print(json.dumps(measure({str(out)!r}, {like!r}, {like in SWEEP_SHAPES})))")
        proc = subprocess.run([sys.executable, "-c", code], env=worker_env(), stdout=subprocess.PIPE,
                              stderr=None, text=True, cwd=Path(__file__).resolve().parent.parent)
        if proc.returncode:
            return {"like": like, "error": f"worker exited with {proc.returncode}", "predicted": pred}
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(out, ignore_errors=True)
    res.update(predicted=pred, write_seconds=write_s, size_bytes=None, mem_available_before=have)
    return res


def run(shapes=SHAPES, log: Callable[[str], None] = print, save: Path | None = None) -> dict:
    """Every shape in turn; with `save`, replicas.json is rewritten after each one (a long run keeps its rows)."""
    from bench.harness import machine
    from mlxinterp.core.io import write_json

    root = Path(tempfile.mkdtemp(prefix="mlxinterp-replicas-"))
    res = {"rows": [], "load_average_before": os.getloadavg(), "machine": machine()}
    try:
        for like in shapes:
            log(f"{like}: writing the replica, then measuring it in a worker")
            load = os.getloadavg()
            res["rows"].append({**run_one(like, root, log), "load_average_before": load})
            res["load_average_after"] = os.getloadavg()
            log(summary_line(res["rows"][-1]))
            if save is not None:
                write_json(Path(save) / "replicas.json", res)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return res


def measured_total(res: dict, stage: str) -> int:
    """What the machine held at the stage's peak: MLX's peak + the process's memory outside MLX."""
    non_mlx = res["rss_after_load"] - res["mlx_weights"]
    return res[stage]["mlx_peak"] + max(non_mlx, 0)


def summary_line(res: dict) -> str:
    if "skipped" in res or "error" in res:
        return f"{res['like']}: {res.get('skipped') or res.get('error')}"
    parts = [f"{res['like']}: load {res['load_seconds']:.1f} s"]
    for stage in ("forward", "capture_all", "sweep"):
        if stage in res:
            m, p = measured_total(res, stage), res["predicted"][stage]["total"]
            parts.append(f"{stage} {m / 1e9:.2f} GB (predicted {p / 1e9:.2f}, {100 * (p - m) / m:+.0f} %)")
    parts.append(f"{res['generation']['generation_tps']:.2f} tok/s")
    return "; ".join(parts)


def markdown(res: dict) -> str:
    """The README table: shape, stored bits, predicted vs measured peak per stage, load time, tokens/s."""
    head = ("| shape (replica of) | layers x d_model, vocab | stored | load | stage | predicted peak | measured peak "
            "| error | MLX peak | tokens/s |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in res["rows"]:
        if "skipped" in r or "error" in r:
            lines.append(f"| {r['like']} | | | | not run: {r.get('skipped') or r.get('error')} | | | | | |")
            continue
        i = r["info"]
        q = i["quantization"]
        first = True
        for stage in ("forward", "capture_all", "sweep"):
            if stage not in r:
                continue
            m, p = measured_total(r, stage), r["predicted"][stage]["total"]
            label = (f"patch sweep ({r['sweep']['cells']} cells, batch {r['sweep']['batch']})" if stage == "sweep"
                     else f"forward {r['tokens']} tok" if stage == "forward" else f"capture all, {r['tokens']} tok")
            cells = [r["like"], f"{i['n_layers']} x {i['d_model']}, {i['vocab_size']}",
                     f"{q['bits']}-bit g{q['group_size']}", f"{r['load_seconds']:.1f} s"] if first else ["", "", "", ""]
            tps = f"{r['generation']['generation_tps']:.2f}" if first else ""
            lines.append("| " + " | ".join(cells + [label, f"{p / 1e9:.2f} GB", f"{m / 1e9:.2f} GB",
                                                   f"{100 * (p - m) / m:+.1f} %", f"{r[stage]['mlx_peak'] / 1e9:.2f} GB",
                                                   tps]) + " |")
            first = False
    la = res.get("load_average_before")
    lines.append(f"\nLoad average before the run: {', '.join(f'{x:.1f}' for x in la)} (2 cores shared)." if la else "")
    for r in res["rows"]:
        if r.get("merged_from"):  # a row measured in a later run than the rest of the table
            lines.append(f"{r['like']}: measured in a later run ({r['merged_from']}), load average before it "
                         f"{', '.join(f'{x:.1f}' for x in r['load_average_before'])}.")
    return "\n".join(lines)


def merge(old: dict, new: dict, when: str) -> dict:
    """`old` with each of `new`'s rows put in place of the row of the same shape (or appended), marked with
    `when` and its own load average: re-measuring one shape keeps the others' rows."""
    rows = {r["like"]: r for r in old["rows"]}
    for r in new["rows"]:
        rows[r["like"]] = {**r, "merged_from": when,
                           "load_average_before": r.get("load_average_before", new.get("load_average_before"))}
    return {**old, "rows": list(rows.values())}


def update_readme(readme: Path, table: str) -> None:
    """Put the table between the README's replicas markers (appended with them when absent)."""
    from mlxinterp.core.io import atomic_write_text

    start, end = "<!-- replicas-table:start -->", "<!-- replicas-table:end -->"
    text = readme.read_text()
    block = f"{start}\n{table}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n## Real-size replicas\n\n" + block + "\n"
    atomic_write_text(readme, text)

"""Benchmarks measured as ratios inside one run, so machine speed cancels out.

Conditions are interleaved round by round (not run as blocks) so drift in
CPU frequency or background load hits every condition alike, and each ratio
is the median over rounds of that round's ratio (with a bootstrap 95 % CI
over rounds). Conditions that need a process of their own (another BLAS
preloaded, torch without MLX's OpenBLAS, a fresh process for peak memory)
run in `Worker` subprocesses that wait on a pipe between conditions, so only
one condition computes at a time.

`bench_taps` and `bench_generate` run in this process; `bench_patching`,
`bench_forward` and `bench_memory` drive workers; `bench_agreement` compares
numbers with transformers. The torch side lives in `bench.torch_side`
(optional extra `bench`; nothing in the toolkit needs it).
"""
from __future__ import annotations

import json
import os
import platform as _platform
import resource
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlxinterp.core import taps as T
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.core.hooks import ActivationCache, HookedModel

BENCH_PROMPT = "The Eiffel Tower is located in the city of Paris, which is the capital of France and home to"
# 41 tokens with BOS: the length PLATFORM.md's forward timings were measured at.
FORWARD_PROMPT = ("The Eiffel Tower is located in the city of Paris, which is the capital of France and home to "
                  "more than two million people. Every year, millions of tourists visit the tower to see the city below")
CLEAN = "The Eiffel Tower is located in the city of"
CORRUPT = "The Colosseum is located in the city of"
TARGET, FOIL = " Paris", " Rome"


def _check_rounds(rounds) -> None:
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise MlxInterpError(f"rounds={rounds!r} is not allowed; use a whole number >= 1")


def _timed(fn: Callable[[], list]) -> float:
    t0 = time.perf_counter()
    mx.eval(*fn())
    return time.perf_counter() - t0


def ratio_summary(num: Sequence[float], den: Sequence[float]) -> dict:
    """Median over rounds of num/den, with a bootstrap 95 % CI of that median and the per-round ratios."""
    from mlxinterp.analysis.stats import bootstrap_ci

    r = [a / b for a, b in zip(num, den)]
    ci = bootstrap_ci(r, np.median)
    return {"median": statistics.median(r), "ci95": [ci["low"], ci["high"]], "rounds": r}


def machine() -> dict:
    """Where and with what the numbers were measured (load average included: the machine may be shared)."""
    from importlib.metadata import PackageNotFoundError, version

    from mlxinterp.core.platform import describe

    vers = {}
    for pkg in ("mlx", "mlx-lm", "numpy", "torch", "transformers", "nnsight", "transformer-lens"):
        try:
            vers[pkg] = version(pkg)
        except PackageNotFoundError:
            vers[pkg] = None
    cpu = next((l.split(":", 1)[1].strip() for l in _read("/proc/cpuinfo").splitlines() if l.startswith("model name")),
               _platform.processor())
    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "LD_PRELOAD", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    return {"cpu": cpu, "cores": os.cpu_count(), "python": _platform.python_version(), "versions": vers,
            "load_average": list(os.getloadavg()), "platform": describe(), "env": env,
            "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


# ------------------------------------------------------------------ tap overhead
def fused_points(hm: HookedModel) -> list[str]:
    """Every hook point but attention scores / patterns: a tap on those computes attention explicitly
    (core/patterns.py), which is a different computation, not a tap's overhead; run_with_cache(None) skips
    them too."""
    return [n for n in hm.hook_names if hm.point(n).kind != "pattern"]


def bench_taps(hm: HookedModel, prompt: str = BENCH_PROMPT, rounds: int = 7) -> dict:
    """Forward time: plain mlx-lm vs hooks installed vs identity tap everywhere vs capture everywhere.

    Each overhead is the median over rounds of that round's ratio to the bare
    forward; `hooks_installed_overhead` (hooks present, no tap: should be ~0)
    shows the noise floor.
    """
    _check_rounds(rounds)
    ids = hm.tokens(prompt).ids
    identity = T.Fn(fn=lambda a, ctx: a)
    every = {n: identity for n in fused_points(hm)}

    def plain():
        return [hm.model(ids)]

    def noop():
        with hm.hooks(every):
            return [hm.model(ids)]

    def capture():
        store = ActivationCache(hm)
        with hm.hooks({n: T.Capture(store=store) for n in fused_points(hm)}):
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
        "capture_all_ratio": ratio_summary(times["capture_all"], times["bare"]),
        "n_hook_points": len(fused_points(hm)),
        "targets": {"noop_overhead": 0.02, "capture_all_overhead": 0.10},
    }


def _run(hm: HookedModel, name: str, fn) -> float:
    """'bare' runs with hook classes removed: exactly plain mlx-lm."""
    if name == "bare":
        with bare_model(hm):
            return _timed(fn)
    return _timed(fn)


class bare_model:
    """Context: hook classes removed, so the model is exactly plain mlx-lm; reinstalled on exit."""

    def __init__(self, hm: HookedModel):
        self.hm = hm

    def __enter__(self):
        self.hm.remove_hooks()
        return self.hm.model

    def __exit__(self, *exc):
        self.hm.install_hooks()


# ------------------------------------------------------------------ generation
def steering_vector(hm: HookedModel, layer: int, prompt: str = BENCH_PROMPT, fraction: float = 0.1) -> mx.array:
    """A fixed random direction scaled to `fraction` of the layer's mean residual norm (seeded)."""
    name = f"blocks.{layer}.hook_resid_post"
    _, cache = hm.run_with_cache(prompt, names=[name])
    norm = float(mx.linalg.norm(cache[name][0].astype(mx.float32), axis=-1).mean())
    v = np.random.default_rng(0).standard_normal(hm.info.d_model).astype(np.float32)
    return mx.array(v / np.linalg.norm(v) * norm * fraction)


def bench_generate(hm: HookedModel, prompt: str = BENCH_PROMPT, max_tokens: int = 64, rounds: int = 5,
                   layer: int | None = None) -> dict:
    """Tokens/s: mlx-lm's own stream_generate vs hm.generate with an Add tap on one layer (and with no tap).

    Same prompt, same max_tokens, greedy; the model is plain mlx-lm (hook
    classes removed) for the mlx-lm condition. tokens/s counts generated
    tokens over the whole call (prompt processing included, as a user sees it).
    """
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    _check_rounds(rounds)
    layer = hm.info.n_layers // 2 if layer is None else layer
    ids = hm.tokens(prompt).ids[0].tolist()
    taps = {f"blocks.{layer}.hook_resid_post": T.Add(steering_vector(hm, layer), scale=1.0)}

    def mlx_lm() -> int:
        with bare_model(hm) as model:
            n = 0
            for _ in stream_generate(model, hm.tokenizer, ids, max_tokens=max_tokens, sampler=make_sampler(temp=0.0)):
                n += 1
            return n

    conditions = {
        "mlx_lm": mlx_lm,
        "hooked_no_tap": lambda: len(hm.generate(prompt, max_tokens=max_tokens).tokens),
        "steered": lambda: len(hm.generate(prompt, max_tokens=max_tokens, taps=taps).tokens),
    }
    tps: dict[str, list[float]] = {k: [] for k in conditions}
    counts: dict[str, int] = {}
    for fn in conditions.values():  # warm-up
        fn()
    for r in range(rounds):
        for name in _rotated(list(conditions), r):
            t0 = time.perf_counter()
            n = conditions[name]()
            tps[name].append(n / (time.perf_counter() - t0))
            counts[name] = n
    return {
        "prompt_tokens": len(ids), "max_tokens": max_tokens, "generated_tokens": counts, "layer": layer,
        "rounds": rounds, "tokens_per_second": tps,
        "median_tokens_per_second": {k: statistics.median(v) for k, v in tps.items()},
        "steered_vs_mlx_lm": ratio_summary(tps["steered"], tps["mlx_lm"]),
        "hooked_no_tap_vs_mlx_lm": ratio_summary(tps["hooked_no_tap"], tps["mlx_lm"]),
        "target": {"steered_vs_mlx_lm": 0.95},
    }


BATCH_PROMPTS = (
    "The Eiffel Tower is located in the city of",
    "My favourite thing about autumn is",
    "The best way to learn a new language is",
    "Once upon a time, in a small village by the sea,",
    "The recipe calls for two cups of flour and",
    "Scientists recently discovered that",
    "In the year 2050, cars will",
    "The old man looked at the sky and said",
)


def bench_batchgen(hm: HookedModel, prompts: Sequence[str] = BATCH_PROMPTS, max_tokens: int = 32, rounds: int = 5,
                   layer: int | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """Tokens/s of a steering sweep: one `generate_batch` whose rows carry their own strength (Add with a
    per-row scale) vs one `hm.generate` per prompt with that prompt's Add tap.

    Greedy, same prompts, steering vector and strengths on both sides; tokens/s
    counts generated tokens over the whole call (prompt processing included).
    Row i of the batch is checked against sequential generation i (token ids).
    """
    _check_rounds(rounds)
    layer = hm.info.n_layers // 2 if layer is None else layer
    name = f"blocks.{layer}.hook_resid_post"
    v = steering_vector(hm, layer)
    scales = [float(s) for s in np.linspace(-2.0, 2.0, len(prompts))]

    def batched(n: int = max_tokens) -> list[list[int]]:
        return [g.tokens for g in hm.generate_batch(list(prompts), max_tokens=n, taps={name: T.Add(v, scales)})]

    def sequential(n: int = max_tokens) -> list[list[int]]:
        return [hm.generate(p, max_tokens=n, taps={name: T.Add(v, s)}).tokens for p, s in zip(prompts, scales)]

    conditions = {"batched": batched, "sequential": sequential}
    tps: dict[str, list[float]] = {k: [] for k in conditions}
    tokens: dict[str, list[list[int]]] = {}
    for fn in conditions.values():  # warm-up (short: it only has to touch every code path once)
        fn(2)
    for r in range(rounds):
        for cond in _rotated(list(conditions), r):
            t0 = time.perf_counter()
            tokens[cond] = conditions[cond]()
            tps[cond].append(sum(map(len, tokens[cond])) / (time.perf_counter() - t0))
            if progress:
                progress(f"round {r + 1}/{rounds} {cond}: {tps[cond][-1]:.1f} tokens/s")
    same = [a == b[: len(a)] for a, b in zip(tokens["batched"], tokens["sequential"])]
    return {
        "prompts": len(prompts), "max_tokens": max_tokens, "layer": layer, "scales": scales, "rounds": rounds,
        "generated_tokens": {k: sum(map(len, t)) for k, t in tokens.items()},
        "rows_token_identical": int(sum(same)), "tokens_per_second": tps,
        "median_tokens_per_second": {k: statistics.median(t) for k, t in tps.items()},
        "batched_vs_sequential": ratio_summary(tps["batched"], tps["sequential"]),
        "target": {"batched_vs_sequential": 4.0},
    }


def _rotated(names: list[str], r: int) -> list[str]:
    """Round r starts at a different condition, so no condition always runs first (or right after another)."""
    k = r % len(names)
    return names[k:] + names[:k]


# ------------------------------------------------------------------ worker processes
@dataclass
class Condition:
    """A timed unit of work in a worker; `run` blocks until done and returns a JSON-able value."""

    run: Callable[[], object]
    warm: Callable[[], object] | None = None  # a cheaper warm-up (e.g. 2 patches of a 180-patch loop)


SETUPS = {  # worker kind -> "module:function" returning {name: Condition}
    "mlx": "bench.harness:mlx_conditions",
    "torch": "bench.torch_side:torch_conditions",
    "mlx_atp": "bench.atp:mlx_conditions",
}


class Worker:
    """A benchmark process with its own environment (a BLAS preloaded, thread counts, torch or MLX).

    It sets up its conditions once (loads the model), then runs one named
    condition per request and reports the seconds measured inside it; between
    requests it blocks on its pipe and uses no CPU.
    """

    def __init__(self, label: str, kind: str, args: dict | None = None, env: dict | None = None,
                 log: Path | None = None):
        if kind not in SETUPS:
            raise MlxInterpError(f"worker kind {kind!r} is not allowed; use one of {sorted(SETUPS)}")
        self.label = label
        full_env = dict(os.environ if env is None else env)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        self._log = open(log, "ab") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.harness", "--worker", kind, json.dumps(args or {})],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=full_env,
                                     text=True, cwd=str(Path(__file__).resolve().parent.parent))
        hello = self._recv()
        self.conditions: list[str] = hello["conditions"]
        self.info: dict = hello.get("info", {})

    def _recv(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise MlxInterpError(f"benchmark worker {self.label!r} exited (code {code}) before answering",
                                 hint="see the worker log in bench/results/logs/")
        msg = json.loads(line)
        if "error" in msg:
            raise MlxInterpError(f"benchmark worker {self.label!r}: {msg['error']}")
        return msg

    def request(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return self._recv()

    def run(self, name: str, warm: bool = False) -> dict:
        return self.request(op="run", name=name, warm=warm)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.request(op="quit")
            except (MlxInterpError, BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self._log is not subprocess.DEVNULL:
            self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def interleave_workers(starts: Sequence[Callable[[], Worker]], rounds: int,
                       progress: Callable[[str], None] | None = None) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Start each worker (in order), `interleave` every condition of all of them, and close them all, also
    when a later worker fails to start or a round fails."""
    workers: list[Worker] = []
    try:
        for start in starts:
            workers.append(start())
        return interleave([(w, c) for w in workers for c in w.conditions], rounds, progress=progress)
    finally:
        for w in workers:
            w.close()


def interleave(cells: Sequence[tuple[Worker, str]], rounds: int, warm: bool = True,
               progress: Callable[[str], None] | None = None) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Run every (worker, condition) once per round, rotating the starting condition each round.

    Returns (seconds per cell label 'worker/condition', the last value each cell returned).
    """
    _check_rounds(rounds)
    labels = [f"{w.label}/{c}" for w, c in cells]
    times: dict[str, list[float]] = {k: [] for k in labels}
    values: dict[str, object] = {}
    if warm:
        for (w, c), label in zip(cells, labels):
            if progress:
                progress(f"warm-up {label}")
            values[label] = w.run(c, warm=True).get("value")
    by_label = dict(zip(labels, cells))
    for r in range(rounds):
        for label in _rotated(labels, r):
            w, c = by_label[label]
            if progress:
                progress(f"round {r + 1}/{rounds} {label}")
            res = w.run(c)
            times[label].append(res["seconds"])
            values[label] = res.get("value")
    return times, values


def _worker_main(kind: str, args_json: str) -> None:
    """Worker side of the pipe protocol: one JSON line per request and per answer."""
    import importlib

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything the libraries print goes to the log, not into the protocol
    sys.stdout = sys.stderr

    def send(obj) -> None:
        from mlxinterp.core.io import dumps

        proto.write(dumps(obj).replace("\n", " ") + "\n")

    try:
        mod, fn = SETUPS[kind].split(":")
        conds: dict[str, Condition] = getattr(importlib.import_module(mod), fn)(**json.loads(args_json))
        send({"conditions": list(conds), "info": {"pid": os.getpid(), "peak_rss_bytes": peak_rss_bytes(),
                                                  "ld_preload": os.environ.get("LD_PRELOAD", "")}})
    except Exception as e:  # report set-up failures to the parent instead of dying silently
        traceback.print_exc()
        send({"error": f"set-up failed: {type(e).__name__}: {e}"})
        return
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("op") == "quit":
            send({"bye": True})
            return
        if msg.get("op") == "rss":
            send({"peak_rss_bytes": peak_rss_bytes(), "rss_bytes": current_rss_bytes()})
            continue
        try:
            cond = conds[msg["name"]]
            fn = cond.warm if msg.get("warm") and cond.warm else cond.run
            t0 = time.perf_counter()
            value = fn()
            secs = time.perf_counter() - t0
            send({"seconds": secs, "value": value, "peak_rss_bytes": peak_rss_bytes()})
        except Exception as e:
            traceback.print_exc()
            send({"error": f"{msg.get('name')}: {type(e).__name__}: {e}"})


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def current_rss_bytes() -> int | None:
    for line in _read("/proc/self/status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


# ------------------------------------------------------------------ BLAS variants
def blas_variants() -> dict[str, dict]:
    """BLAS libraries that can be interposed under MLX on this machine: name -> environment changes.

    Thread counts are pinned to the core count so every library uses the same
    number of threads; a value None removes the variable. `openblas-*` keep
    this environment's OPENBLAS_CORETYPE (this machine sets Haswell: AVX2
    kernels), `*-avx512` force OpenBLAS's SkylakeX kernels where the CPU has
    AVX-512. Missing libraries are left out (apt: libopenblas0-pthread,
    libopenblas0-openmp, libblis4-pthread, libblis4-openmp; MKL: pip install mkl).
    """
    n = str(os.cpu_count() or 1)
    lib = "/usr/lib/x86_64-linux-gnu" if _platform.machine() == "x86_64" else "/usr/lib/aarch64-linux-gnu"
    threads = {"OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "BLIS_NUM_THREADS": n, "MKL_NUM_THREADS": n}
    out: dict[str, dict] = {"reference": dict(threads)}  # MLX's bundled netlib BLAS, no preload
    avx512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= cpu_flags()
    for name, path in (("openblas-pthread", f"{lib}/openblas-pthread/libblas.so.3"),
                       ("openblas-openmp", f"{lib}/openblas-openmp/libblas.so.3"),
                       ("blis-pthread", f"{lib}/blis-pthread/libblas.so.3"),
                       ("blis-openmp", f"{lib}/blis-openmp/libblas.so.3")):
        if Path(path).exists():
            out[name] = {**threads, "LD_PRELOAD": path}
            if avx512 and name.startswith("openblas"):
                out[f"{name}-avx512"] = {**out[name], "OPENBLAS_CORETYPE": "SKYLAKEX"}
    if "openblas-pthread-avx512" in out:
        out["openblas-pthread-avx512-1thread"] = {**out["openblas-pthread-avx512"], "OPENBLAS_NUM_THREADS": "1",
                                                  "OMP_NUM_THREADS": "1"}
    mkl = Path(sys.prefix) / "lib" / "libmkl_rt.so.3"
    if mkl.exists():
        out["mkl"] = {**threads, "LD_PRELOAD": str(mkl), "MKL_THREADING_LAYER": "GNU",
                      "LD_LIBRARY_PATH": str(mkl.parent)}
    return out


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def worker_env(extra: dict | None = None, preload: bool = True) -> dict:
    """This environment for a worker: LD_PRELOAD replaced (never appended) by mlxinterp's own choice of
    OpenBLAS when `preload`, then `extra` applied (None removes a variable)."""
    from mlxinterp.core.platform import find_openblas

    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MLXINTERP_BLAS_REEXEC")}
    lib = find_openblas() if preload else None
    if lib:
        env["LD_PRELOAD"] = lib
    for k, v in (extra or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


# ------------------------------------------------------------------ MLX conditions (worker side)
def mlx_conditions(kind: str, model: str = "default", batch_sizes: Sequence[int] = (32,), loops: bool = True,
                   prompt: str = FORWARD_PROMPT, compiled: bool = True) -> dict[str, Condition]:
    """The MLX conditions of one benchmark, set up (model loaded) in a worker."""
    from mlxinterp.core.hooks import load

    if kind not in ("patching", "forward", "memory"):
        raise MlxInterpError(f"MLX benchmark kind {kind!r} is not allowed; use patching, forward or memory")
    hm = load(model)
    if kind == "patching":
        return _mlx_patching(hm, batch_sizes, loops)
    if kind == "forward":
        return _mlx_forward(hm, prompt, compiled)
    return _mlx_memory(hm, prompt)


def _grid_value(res) -> dict:
    return {"clean": res.clean, "corrupt": res.corrupt, "metric": res.metric}


def _mlx_patching(hm: HookedModel, batch_sizes: Sequence[int], loops: bool) -> dict[str, Condition]:
    from mlxinterp.analysis import patching as P

    metric = P.logit_diff(hm, TARGET, FOIL)
    full_vocab = metric.__call__  # same metric, but a plain callable: every patched row unembeds 262k logits

    def sweep(bs: int, reuse: bool = True, skip: bool = True, m=metric):
        return lambda: _grid_value(P.patch_sweep(hm, CLEAN, CORRUPT, m, batch_size=bs, reuse_prefix=reuse,
                                                 skip_identical=skip))

    conds: dict[str, Condition] = {}
    for bs in batch_sizes:
        conds[f"sweep_b{bs}"] = Condition(sweep(bs))
    bs0 = batch_sizes[0]  # each lever switched off alone, then all of them (batching + last-column unembedding only)
    conds[f"sweep_b{bs0}_no_prefix_reuse"] = Condition(sweep(bs0, reuse=False))
    conds[f"sweep_b{bs0}_no_skip_identical"] = Condition(sweep(bs0, skip=False))
    conds[f"sweep_b{bs0}_full_vocab"] = Condition(sweep(bs0, m=full_vocab))
    conds[f"sweep_b{bs0}_no_levers"] = Condition(sweep(bs0, reuse=False, skip=False, m=full_vocab))
    if loops:
        conds["loop_full_logits"] = Condition(lambda: _mlx_loop(hm, metric), warm=lambda: _mlx_loop(hm, metric, 2))
    return conds


def _mlx_loop(hm: HookedModel, metric, limit: int | None = None) -> dict:
    """One forward per patch with full logits at every position: the idiomatic hooks loop."""
    from mlxinterp.analysis.patching import prompt_ids

    clean, corrupt = prompt_ids(hm, CLEAN), prompt_ids(hm, CORRUPT)
    L, n = len(clean), hm.info.n_layers
    names = [f"blocks.{l}.hook_resid_pre" for l in range(n)]
    _, cache = hm.run_with_cache(mx.array([clean]), names=names)
    cells = [(l, p) for l in range(n) for p in range(L)][:limit]
    grid = np.full((n, L), np.nan)
    x = mx.array([corrupt])
    for l, p in cells:
        with hm.hooks({names[l]: T.Replace(cache[names[l]][0, p], positions=p)}):
            logits = hm.model(x)
        grid[l, p] = float(metric(logits[:, -1])[0])
    return {"metric": grid.tolist(), "clean": float(metric(hm.model(mx.array([clean]))[:, -1])[0]),
            "corrupt": float(metric(hm.model(x)[:, -1])[0])}


def _mlx_forward(hm: HookedModel, prompt: str, compiled: bool) -> dict[str, Condition]:
    ids = hm.tokens(prompt).ids
    fwd = mx.compile(hm.model) if compiled else None

    def summary(logits) -> dict:
        last = np.array(logits[0, -1].astype(mx.float32))
        return {"tokens": int(ids.shape[1]), "argmax": int(last.argmax()), "max_logit": float(last.max())}

    def plain():
        with bare_model(hm) as model:
            out = model(ids)
            mx.eval(out)
        return summary(out)

    def capture():
        logits, cache = hm.run_with_cache(ids)
        return {**summary(logits), "captured": len(cache.keys())}

    conds = {"forward": Condition(plain), "run_with_cache_all": Condition(capture)}
    if compiled:
        def comp():
            out = fwd(ids)
            mx.eval(out)
            return summary(out)
        conds["forward_compiled"] = Condition(comp)
    return conds


def _mlx_memory(hm: HookedModel, prompt: str) -> dict[str, Condition]:
    """Memory of one forward and of capture on every hook point: process RSS (current and peak) and MLX's
    allocator (active memory, and its peak during the call alone)."""
    ids = hm.tokens(prompt).ids
    held: list = []

    def measured(fn) -> dict:
        held.clear()
        gc_collect()
        before = _mlx_active()
        _mlx_reset_peak()
        held.extend(fn())
        mx.eval(*held)
        return {"rss_bytes": current_rss_bytes(), "peak_rss_bytes": peak_rss_bytes(), "mlx_active_before_bytes": before,
                "mlx_active_after_bytes": _mlx_active(), "mlx_peak_bytes": _mlx_peak(), "tokens": int(ids.shape[1])}

    def capture():
        store = ActivationCache(hm)
        with hm.hooks({n: T.Capture(store=store) for n in fused_points(hm)}):
            logits = hm.model(ids)
        return [logits, *store.arrays()]

    def plain():
        return [hm.model(ids)]

    def capture_all():
        res = measured(capture)
        res["captured_bytes"] = int(sum(a.nbytes for a in held[1:]))
        res["hook_points"] = len(held) - 1
        return res

    return {"forward": Condition(lambda: measured(plain)), "capture_all": Condition(capture_all)}


def gc_collect() -> None:
    import gc

    gc.collect()
    try:
        mx.clear_cache()
    except AttributeError:  # older MLX
        pass


def _mlx_active() -> int | None:
    try:
        return int(mx.get_active_memory())
    except AttributeError:
        return None


def _mlx_reset_peak() -> None:
    try:
        mx.reset_peak_memory()
    except AttributeError:
        pass


def _mlx_peak() -> int | None:
    try:
        return int(mx.get_peak_memory())
    except AttributeError:  # older MLX
        return None


# ------------------------------------------------------------------ the benchmarks (orchestrator side)
def _log_dir(out: Path | None) -> Path:
    d = (out or Path("bench/results")) / "logs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def bench_patching(rounds: int = 3, batch_sizes: Sequence[int] = (32, 64), loops: bool = True,
                   torch_side: bool = True, out: Path | None = None, progress=None) -> dict:
    """The Eiffel/Colosseum sweep (every layer x position): mlxinterp vs loops, nnsight and TransformerLens."""
    from bench.torch_side import require

    if torch_side:
        require("torch", "transformers", "nnsight", "transformer_lens")
    logs = _log_dir(out)
    starts = [lambda: Worker("mlx", "mlx", {"kind": "patching", "batch_sizes": list(batch_sizes), "loops": loops},
                             env=worker_env(), log=logs / "patching-mlx.log")]
    if torch_side:
        starts.append(lambda: Worker("torch", "torch", {"kind": "patching", "loops": loops},
                                     env=worker_env(preload=False), log=logs / "patching-torch.log"))
    times, values = interleave_workers(starts, rounds, progress)
    best = f"mlx/sweep_b{batch_sizes[0]}"
    ref = np.array(values[best]["metric"])
    res = {"rounds": rounds, "seconds": times, "median_seconds": {k: statistics.median(v) for k, v in times.items()},
           "reference": best, "n_patches": int(ref.size),
           "ratios_vs_reference": {k: ratio_summary(v, times[best]) for k, v in times.items() if k != best},
           "max_abs_diff_vs_reference": {k: float(np.nanmax(np.abs(np.array(v["metric"]) - ref)))
                                        for k, v in values.items() if k != best},
           "clean_corrupt": {k: [v["clean"], v["corrupt"]] for k, v in values.items()},
           "targets": {"faster_than": "torch/nnsight_batched", "speedup_vs_loop": 8.0}}
    return res


def bench_forward(rounds: int = 5, blas: Sequence[str] | None = None, group: int = 4, out: Path | None = None,
                  progress=None, torch_side: bool = True) -> dict:
    """Forward time on FORWARD_PROMPT: MLX under each interposable BLAS (+ mx.compile) vs torch CPU.

    Workers run in groups of `group` MLX processes (memory: ~1.2 GB each), each
    group with the torch worker interleaved, so every ratio to torch is taken
    within a round.
    """
    from bench.torch_side import require

    if torch_side:
        require("torch", "transformers", "transformer_lens")
    variants = blas_variants()
    names = list(blas or variants)
    bad = [b for b in names if b not in variants]
    if bad:
        raise MlxInterpError(f"BLAS {bad[0]!r} is not available here; available: {sorted(variants)}")
    logs = _log_dir(out)
    times: dict[str, list[float]] = {}
    values: dict[str, object] = {}
    ratios: dict[str, dict] = {}
    torch_w = Worker("torch", "torch", {"kind": "forward"}, env=worker_env(preload=False),
                     log=logs / "forward-torch.log") if torch_side else None
    try:
        for g in range(0, len(names), group):
            workers = []
            try:
                for b in names[g : g + group]:
                    workers.append(Worker(f"mlx[{b}]", "mlx", {"kind": "forward", "compiled": b != "reference"},
                                          env=worker_env(variants[b], preload=False), log=logs / f"forward-{b}.log"))
                cells = [(w, c) for w in workers for c in w.conditions]
                if torch_w:
                    cells += [(torch_w, c) for c in torch_w.conditions]
                t, v = interleave(cells, rounds, progress=progress)
            finally:
                for w in workers:
                    w.close()
            for k, secs in t.items():
                key = k if not k.startswith("torch/") else f"{k}#group{g // group}"
                times[key], values[key] = secs, v[k]
                if torch_w and not k.startswith("torch/"):
                    ratios[k] = ratio_summary(secs, t["torch/forward_sdpa"])
    finally:
        if torch_w:
            torch_w.close()
    argmax = {k: v.get("argmax") for k, v in values.items() if isinstance(v, dict) and "argmax" in v}
    return {"rounds": rounds, "blas": names, "seconds": times,
            "median_seconds": {k: statistics.median(v) for k, v in times.items()},
            "ratio_vs_torch_sdpa": ratios, "values": values,
            "same_top1_everywhere": len(set(argmax.values())) == 1, "target": {"ratio_vs_torch_sdpa": 1.5}}


def bench_memory(out: Path | None = None) -> dict:
    """A fresh MLX process (the default model): memory after loading, after a forward, with every hook point captured."""
    logs = _log_dir(out)
    with Worker("mlx", "mlx", {"kind": "memory"}, env=worker_env(), log=logs / "memory-mlx.log") as w:
        loaded = {"peak_rss_bytes": w.info["peak_rss_bytes"], **w.request(op="rss")}
        fwd = w.run("forward")["value"]
        cap = w.run("capture_all")["value"]
    return {"prompt": FORWARD_PROMPT, "after_load": loaded, "forward": fwd, "capture_all": cap,
            "capture_all_extra_rss_bytes": cap["rss_bytes"] - fwd["rss_bytes"],
            "capture_all_extra_mlx_peak_bytes": (cap["mlx_peak_bytes"] - fwd["mlx_peak_bytes"])
            if cap["mlx_peak_bytes"] is not None and fwd["mlx_peak_bytes"] is not None else None}


def bench_agreement(hm: HookedModel, prompts: Sequence[str] | None = None) -> dict:
    """Per-layer hidden states and logits, MLX vs transformers on the same weights (see bench_torch.agreement)."""
    from bench.torch_side import agreement

    return agreement(hm, prompts)


# ------------------------------------------------------------------ attribution patching
def bench_attribution(hm: HookedModel, rounds: int = 5, clean: str = CLEAN, corrupt: str = CORRUPT) -> dict:
    """AtP for one prompt pair over every hook x position vs one plain forward, interleaved round by round.

    Conditions: `forward` (plain mlx-lm call on the corrupted prompt, full logits), `forward_vocab`
    (the same forward unembedding only the metric's two tokens, as AtP does), `atp_standard`
    (resid_pre, attn_out, mlp_out and every head's z at every layer x position) and `atp_all`
    (every hook point except hook_logits). Each AtP run is one two-row forward + backward
    (clean row for activations, corrupted row for gradients) and the dot products.
    """
    from mlxinterp.analysis.attribution import DEFAULT_HOOKS, attribute
    from mlxinterp.analysis.patching import forward_last, logit_diff

    _check_rounds(rounds)
    metric = logit_diff(hm, TARGET, FOIL)
    ids = hm.tokens(corrupt).ids
    # attention scores / patterns excluded (fused_points): [L, H, L] nodes on the explicit attention path
    every = [n for n in fused_points(hm) if n != "hook_logits"]

    def atp(hooks):
        def run():
            att = attribute(hm, clean, corrupt, metric, hooks=hooks)
            return [mx.array(att.values())]
        return run

    conditions = {"forward": lambda: [hm.model(ids)],
                  "forward_vocab": lambda: [forward_last(hm, ids, vocab=metric.vocab)],
                  "atp_standard": atp(DEFAULT_HOOKS), "atp_all": atp(every)}
    times: dict[str, list[float]] = {k: [] for k in conditions}
    for fn in conditions.values():  # warm-up
        _timed(fn)
    for _ in range(rounds):
        for name, fn in conditions.items():
            times[name].append(_timed(fn))
    n_cells = {k: int(attribute(hm, clean, corrupt, metric, hooks=h).values().size)
               for k, h in (("atp_standard", DEFAULT_HOOKS), ("atp_all", every))}
    return {"clean": clean, "corrupt": corrupt, "prompt_tokens": int(ids.shape[1]), "rounds": rounds,
            "median_seconds": {k: statistics.median(v) for k, v in times.items()}, "seconds": times,
            "n_cells": n_cells, "n_hooks_all": len(every),
            "atp_standard_over_forward": ratio_summary(times["atp_standard"], times["forward"]),
            "atp_all_over_forward": ratio_summary(times["atp_all"], times["forward"]),
            "atp_all_over_forward_vocab": ratio_summary(times["atp_all"], times["forward_vocab"]),
            "targets": {"atp_all_over_forward": 4.0}}


def run_all(out: Path, readme: Path | None = None, quick: bool = False, progress=None) -> dict[str, dict]:
    """Every benchmark on the default model, one after the other; each result is saved as it finishes."""
    import gc

    from mlxinterp.core.hooks import load

    out = Path(out)
    results: dict[str, dict] = {}

    def step(name: str, fn: Callable[[], dict]) -> None:
        before = os.getloadavg()
        if progress:
            progress(name)
        results[name] = fn()
        save_result(name, results[name], out, before)
        gc.collect()

    step("memory", lambda: bench_memory(out))  # first: a fresh process, nothing else resident
    hm = load("default")
    step("agreement", lambda: bench_agreement(hm))
    step("taps", lambda: {**bench_taps(hm, rounds=1 if quick else 7), "model": hm.info.to_dict()})
    step("generate", lambda: {**bench_generate(hm, rounds=1 if quick else 5, max_tokens=8 if quick else 64),
                              "model": hm.info.to_dict()})
    step("patching", lambda: bench_patching(rounds=1 if quick else 3, loops=not quick, out=out, progress=progress))
    step("forward", lambda: bench_forward(rounds=1 if quick else 5, blas=["openblas-pthread"] if quick else None,
                                          out=out, progress=progress))
    if readme is not None:
        update_readme(readme, load_results(out))
    return results


# ------------------------------------------------------------------ results and the README table
RESULT_NAMES = ("taps", "generate", "batchgen", "patching", "forward", "agreement", "memory", "attribution", "precision",
                "atp_nnsight", "scoring", "sae_step")
TABLE_START, TABLE_END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


def save_result(name: str, res: dict, out: Path, load_before: Sequence[float] | None = None) -> Path:
    """bench/results/<name>.json with the machine, versions and load average (before and after) beside the numbers."""
    from mlxinterp.core.io import write_json

    if name not in RESULT_NAMES:
        raise MlxInterpError(f"result name {name!r} is not allowed; use one of {', '.join(RESULT_NAMES)}")
    m = machine()
    if load_before is not None:
        m["load_average_before"] = list(load_before)
    return write_json(Path(out) / f"{name}.json", {**res, "machine": m})


def load_results(out: Path) -> dict[str, dict]:
    from mlxinterp.core.io import read_json

    return {n: read_json(Path(out) / f"{n}.json") for n in RESULT_NAMES if (Path(out) / f"{n}.json").exists()}


def _ci(r: dict, fmt: str = "{:.2f}") -> str:
    lo, hi = r.get("ci95", [None, None])
    ci = f" [{fmt.format(lo)}, {fmt.format(hi)}]" if lo is not None and hi is not None else ""
    return fmt.format(r["median"]) + ci


def _met(ok: bool | None) -> str:
    return "" if ok is None else ("met" if ok else "**missed**")


def render_table(results: dict[str, dict]) -> str:
    """Markdown: one row per measured quantity, with its ratio (median over rounds, 95 % CI) and target."""
    rows = ["| benchmark | condition | median | ratio (95 % CI) | target | |", "|---|---|---|---|---|---|"]
    add = lambda *c: rows.append("| " + " | ".join(str(x) for x in c) + " |")  # noqa: E731
    if "taps" in results:
        t = results["taps"]
        add("tap overhead", f"bare mlx-lm forward, {t['prompt_tokens']} tokens", f"{t['median_seconds']['bare']:.3f} s",
            "1", "", "")
        add("", "hooks installed, no tap", f"{t['median_seconds']['hooks_installed']:.3f} s",
            f"{1 + t['hooks_installed_overhead']:.3f}", "", "")
        add("", "identity tap on every hook point", f"{t['median_seconds']['noop_taps']:.3f} s",
            f"{1 + t['noop_overhead']:.3f}", "<= 1.02", _met(t["noop_overhead"] <= 0.02))
        add("", f"capture all {t['n_hook_points']} hook points", f"{t['median_seconds']['capture_all']:.3f} s",
            _ci(t["capture_all_ratio"], "{:.3f}") if "capture_all_ratio" in t else f"{1 + t['capture_all_overhead']:.3f}",
            "<= 1.10", _met(t["capture_all_overhead"] <= 0.10))
    if "generate" in results:
        g = results["generate"]
        tps = g["median_tokens_per_second"]
        add("generation", f"mlx-lm stream_generate, {g['max_tokens']} tokens", f"{tps['mlx_lm']:.1f} tok/s", "1", "", "")
        add("", "hm.generate, hooks installed, no tap", f"{tps['hooked_no_tap']:.1f} tok/s",
            _ci(g["hooked_no_tap_vs_mlx_lm"], "{:.3f}"), "", "")
        add("", f"hm.generate, Add tap on layer {g['layer']}", f"{tps['steered']:.1f} tok/s",
            _ci(g["steered_vs_mlx_lm"], "{:.3f}"), ">= 0.95", _met(g["steered_vs_mlx_lm"]["median"] >= 0.95))
    if "batchgen" in results:
        b = results["batchgen"]
        tps, r = b["median_tokens_per_second"], b["batched_vs_sequential"]
        add("batched steering", f"{b['prompts']} x hm.generate, one Add strength each, {b['max_tokens']} tokens",
            f"{tps['sequential']:.1f} tok/s", "1", "", "")
        add("", f"one generate_batch, per-row Add scale ({b['rows_token_identical']}/{b['prompts']} rows token-identical)",
            f"{tps['batched']:.1f} tok/s", _ci(r), f">= {b['target']['batched_vs_sequential']:g}",
            _met(r["median"] >= b["target"]["batched_vs_sequential"]))
    if "patching" in results:
        p = results["patching"]
        ref = p["reference"]
        add("patching sweep", f"**mlxinterp patch_sweep** ({ref.split('/')[-1]}, {p['n_patches']} patches)",
            f"{p['median_seconds'][ref]:.2f} s", "1", "", "")
        for k, r in sorted(p["ratios_vs_reference"].items(), key=lambda kv: kv[1]["median"]):
            target = ""
            ok = None
            if k == p["targets"]["faster_than"]:
                target, ok = "> 1", r["median"] > 1
            elif k.endswith("loop_full_logits"):
                target, ok = f">= {p['targets']['speedup_vs_loop']:g}", r["median"] >= p["targets"]["speedup_vs_loop"]
            diff = p["max_abs_diff_vs_reference"].get(k)
            note = f" (grid max diff {diff:.1e})" if diff is not None else ""
            add("", k + note, f"{p['median_seconds'][k]:.2f} s", _ci(r), target, _met(ok))
    if "forward" in results:
        f = results["forward"]
        pooled: dict[str, list[float]] = {}  # torch ran once per group of MLX workers: pool its rounds
        for k, secs in f["seconds"].items():
            if k.startswith("torch/"):
                pooled.setdefault(k.split("#")[0], []).extend(secs)
        for i, (k, secs) in enumerate(sorted(pooled.items())):
            add("forward (41 tokens)" if i == 0 else "", f"{k} (all groups' rounds)", f"{statistics.median(secs):.3f} s",
                "", "", "")
        for k, r in sorted(f["ratio_vs_torch_sdpa"].items(), key=lambda kv: kv[1]["median"]):
            ok = r["median"] <= f["target"]["ratio_vs_torch_sdpa"] if k.endswith(("/forward", "/forward_compiled")) else None
            add("", k, f"{f['median_seconds'][k]:.3f} s", _ci(r) + " x torch sdpa",
                "<= 1.5" if ok is not None else "", _met(ok))
    if "agreement" in results:
        a = results["agreement"]
        for key, label in (("mlx_embed_scale", "same embedding scale"), ("hf_embed_scale", "transformers' own sqrt(d)")):
            if key in a:
                r = a[key]
                add("agreement vs transformers" if key == "mlx_embed_scale" else "", label,
                    f"logits max abs diff {r['logits_max_abs_diff']:.1e}",
                    f"top-1 agreement {r['top1_agreement']:.3f} ({r['positions']} positions)",
                    f"hidden max rel diff {r['hidden_max_rel_diff']:.1e}", "")
    if "attribution" in results:
        a = results["attribution"]
        add("attribution patching", f"plain forward, {a['prompt_tokens']} tokens", f"{a['median_seconds']['forward']:.3f} s",
            "1", "", "")
        add("", f"AtP, resid/attn/mlp/heads ({a['n_cells']['atp_standard']} cells)",
            f"{a['median_seconds']['atp_standard']:.3f} s", _ci(a["atp_standard_over_forward"]), "", "")
        r = a["atp_all_over_forward"]
        add("", f"AtP, every hook x position ({a['n_cells']['atp_all']} cells)", f"{a['median_seconds']['atp_all']:.3f} s",
            _ci(r), f"<= {a['targets']['atp_all_over_forward']:g}", _met(r["median"] <= a["targets"]["atp_all_over_forward"]))
    if "atp_nnsight" in results:
        a = results["atp_nnsight"]
        add("AtP resid_post vs torch", f"**mlxinterp attribute** ({a['grid_shape'][0]} x {a['grid_shape'][1]} cells)",
            f"{a['median_seconds']['mlx/atp_resid_post']:.2f} s", "1", "", "")
        for k, r in a["speedup_vs_mlx"].items():
            target = a["targets"]["speedup_vs_mlx"].get(k)
            add("", f"{k} (grid max diff {a['max_abs_diff_vs_mlx'][k]:.1e})", f"{a['median_seconds'][k]:.2f} s",
                _ci(r), f">= {target:g}" if target else "", _met(r["median"] >= target) if target else "")
    if "sae_step" in results:
        a = results["sae_step"]
        add("SAE TopK training step", f"**dense decoder** (width {a['width']}, k {a['k']}, batch {a['batch']})",
            f"{min(a['seconds_per_step']['dense']):.3f} s", "1", "", "")
        add("", f"gathered decoder rows (max gradient diff {a['max_gradient_difference']:.1e})",
            f"{min(a['seconds_per_step']['gather']):.3f} s", _ci(a["gather_over_dense"]), "", "")
    if "memory" in results:
        m = results["memory"]
        gb = lambda b: f"{b / 1e9:.2f} GB" if b is not None else "n/a"  # noqa: E731
        f, c = m["forward"], m["capture_all"]
        add("memory", "process after loading (RSS now / peak)",
            f"{gb(m['after_load']['rss_bytes'])} / {gb(m['after_load']['peak_rss_bytes'])}", "", "", "")
        add("", f"forward, {f['tokens']} tokens: MLX allocator peak during the call", gb(f["mlx_peak_bytes"]),
            f"RSS {gb(f['rss_bytes'])}", "", "")
        add("", f"capture-all ({c['hook_points']} hook points, {c['captured_bytes'] / 1e6:.1f} MB captured): "
                "MLX allocator peak during the call", gb(c["mlx_peak_bytes"]),
            f"RSS {gb(c['rss_bytes'])} (+{(m['capture_all_extra_rss_bytes']) / 1e6:.0f} MB vs forward)", "", "")
    return "\n".join(rows)


def update_readme(readme: Path, results: dict[str, dict]) -> Path:
    """Replace the table between the markers in bench/README.md with one rendered from `results`."""
    from mlxinterp.core.io import atomic_write_text

    text = Path(readme).read_text()
    if TABLE_START not in text or TABLE_END not in text:
        raise MlxInterpError(f"{readme} has no {TABLE_START} ... {TABLE_END} markers to put the table between")
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    loads = sorted({tuple(round(x, 2) for x in r["machine"]["load_average"]) for r in results.values() if "machine" in r})
    m = next((r["machine"] for r in results.values() if "machine" in r), None)
    meta = ""
    if m:
        v = m["versions"]
        meta = (f"\n\nMeasured {m['time']} on {m['cpu']} ({m['cores']} cores), Python {m['python']}, "
                + ", ".join(f"{k} {val}" for k, val in v.items() if val)
                + f"; OPENBLAS_CORETYPE={m.get('env', {}).get('OPENBLAS_CORETYPE') or 'unset'} in the environment. "
                + f"Load average (1/5/15 min) at the end of each benchmark: {'; '.join(str(list(l)) for l in loads)}.")
    return atomic_write_text(readme, head + TABLE_START + "\n" + render_table(results) + meta + "\n" + TABLE_END + tail)


def main() -> None:
    if len(sys.argv) >= 4 and sys.argv[1] == "--worker":
        _worker_main(sys.argv[2], sys.argv[3])
        return
    raise SystemExit("usage: python -m bench.harness --worker KIND ARGS_JSON (started by the benchmarks; "
                     "use `python -m bench ...` or bench/*.py)")


if __name__ == "__main__":
    main()

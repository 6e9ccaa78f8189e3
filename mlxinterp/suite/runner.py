"""The experiment suite: run registered experiments over models, resumably.

An experiment is a config dataclass plus a function (model, config, ctx) ->
JSON-able dict, registered with `@experiment(name, Config)`. `run_all` loads
each model once, runs the selected experiments, writes
`<out>/<model-slug>/<experiment>/result.json` (+ figures), frees the model,
and finally regenerates `<out>/report.md` and `<out>/report.html`.

Runs take hours, so nothing finished is ever lost: every file is written
atomically, `ctx.map` checkpoints each finished item to an fsynced JSONL
file, and a rerun (resume is the default) skips finished experiments and
reloads finished items. A resumed run's result.json equals an uninterrupted
run's byte for byte once the "timings" key is removed; everything that varies
between runs lives under that key.
"""
from __future__ import annotations

import ctypes
import dataclasses
import gc
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from mlxinterp.core import io, memory, metadata, spill
from mlxinterp.core.errors import ResultsError
from mlxinterp.core.platform import SUITE_OUT, total_memory_bytes
from mlxinterp.suite import cost, distributed, planner, quantcheck, ranges
from mlxinterp.suite.context import PARTIAL_DIR, RESULT_FILE, Context, append_log, say
from mlxinterp.suite.provenance import (FORMAT_VERSION, differences, fingerprint, fingerprint_of, git_commit,
                                        mismatch, preregistration_sha256, versions)
from mlxinterp.suite.report import write_report
from mlxinterp.suite.registry import Experiment, check_name, docs, make_config, parse_overrides, register_builtin, select, split_names

SPILL_DIR = ".spill"  # captured activations streamed to disk (spill.RowStore), removed when done
# Where a run goes without --out: never the repository's committed results/ (the reference
# that `mlxinterp compare` checks a run against).
DEFAULT_OUT = SUITE_OUT


# ----------------------------------------------------------------------- runs


class _Run:
    """One `run_all` call: shared output dir, progress display, summary.

    Distributed (mlxinterp.suite.distributed): rank 0 decides what to skip or resume
    and writes every file; the other ranks compute, read what a study reads
    (e.g. a sibling experiment's result) from the same paths, and spill
    captured activations to a private scratch directory deleted at the end.
    """

    def __init__(self, out: Path, seed: int, n: int | None, resume: bool, progress: Progress,
                 world: distributed.World | None = None, scratch: Path | None = None,
                 overrides: dict[str, dict[str, Any]] | None = None):
        self.out, self.seed, self.n, self.resume, self.progress = out, seed, n, resume, progress
        self.overrides = overrides or {}
        self.world = world or distributed.World()
        self.scratch = scratch
        self.console = progress.console
        self.log_file = out / "suite.log" if self.world.is_root else None
        self.runs: list[dict] = []
        self.estimates: dict[str, dict] = {}

    def note(self, msg: str, style: str = "") -> None:
        say(self.console, msg, style)
        append_log(self.log_file, msg)

    def model(self, spec: str, exps: list[Experiment], load_fn: Callable[[str], Any], overall: Any) -> None:
        """Load one model, run its experiments, free it before the next one is loaded."""
        if self.resume and load_fn is _default_load:
            exps = self._skip_unloaded(spec, exps, overall)
            if not exps:
                return
        self.progress.update(overall, description=f"loading {spec}")
        t0 = time.perf_counter()
        model = load_fn(spec)
        load_s = round(time.perf_counter() - t0, 3)
        try:
            self.estimates = self._estimate(model, exps)
            for exp in exps:
                self.progress.update(overall, description=f"{model.info.slug} · {exp.name}")
                status = self.experiment(model, exp, load_s)
                self.note(f"{model.info.slug} · {exp.name}: {status}")
                self.runs.append({"model": model.info.slug, "spec": spec, "experiment": exp.name,
                                  "status": status, "path": str(self.out / model.info.slug / exp.name / RESULT_FILE)})
                self.progress.advance(overall)
        finally:
            del model
            free_memory()

    def _skip_unloaded(self, spec: str, exps: list[Experiment], overall: Any) -> list[Experiment]:
        """Record the model's experiments as skipped without loading it when all are finished (a resumed run
        with nothing left to do: the load would take seconds to minutes for nothing); else return them all.

        Whether a result is current needs only the model's slug and weights hash, which core/metadata.py
        reads from the files (mixture-of-experts models, which it does not describe, are loaded as before).
        """
        try:
            info = metadata.describe(spec)
        except metadata.NotStatic:
            return exps
        slug, files = check_name(info["slug"], "model slug"), SimpleNamespace(weights_hash=info["weights_hash"])

        def want(exp: Experiment) -> dict:
            return fingerprint(make_config(exp, self.n, self.seed, self.overrides.get(exp.name)), files, self.seed)

        def finished(exp: Experiment) -> bool:
            return self._result_diffs(self.out / slug / exp.name / RESULT_FILE, exp, want(exp)) == []

        if not self.world.decide(lambda: all(finished(e) for e in exps), f"all finished {spec}"):
            return exps
        for i, exp in enumerate(exps):  # _decide also clears what an interrupted cleanup left behind
            status = self.world.decide(lambda: self._decide(self.out / slug / exp.name, exp, want(exp)),
                                       f"experiment {slug}/{exp.name}")
            if status != "skipped":  # changed on disk since the check above: load after all
                return exps[i:]
            self.note(f"{slug} · {exp.name}: skipped")
            self.runs.append({"model": slug, "spec": spec, "experiment": exp.name, "status": "skipped",
                              "path": str(self.out / slug / exp.name / RESULT_FILE)})
            self.progress.advance(overall)
        self.note(f"{slug}: every selected experiment is finished; the model was not loaded")
        return []

    def _estimate(self, model: Any, exps: list[Experiment]) -> dict[str, dict]:
        """Each experiment's cost and estimated seconds (suite/cost.py), announced once before they run."""
        # not under mlx.launch: a sharded model's ranks would have to run the timing forwards in step
        rates = cost.measure_rates(model) if hasattr(model, "unembed") and not self.world.distributed else None
        configs = {e.name: make_config(e, self.n, self.seed, self.overrides.get(e.name)) for e in exps}
        try:
            est = cost.suite_estimate(exps, configs, model, rates, cost.DEFAULT_REFERENCE)
        except Exception as exc:  # an estimate must never stop the run it describes
            self.note(f"no time estimate ({type(exc).__name__}: {exc})", "yellow")
            return {}
        self.note(cost.summary_line(est))
        return est["experiments"]

    def experiment(self, model: Any, exp: Experiment, load_s: float) -> str:
        """Run (or skip, or finish) one experiment on a loaded model; return what happened.

        With --no-resume only the checkpoints are discarded up front: an old
        result.json stays until the new one atomically replaces it, so an
        interrupted fresh run loses nothing that was finished before.
        """
        info = model.info
        config = make_config(exp, self.n, self.seed, self.overrides.get(exp.name))
        exp_dir = self.out / check_name(info.slug, "model slug") / exp.name
        want = fingerprint(config, info, self.seed)
        status = self.world.decide(lambda: self._decide(exp_dir, exp, want), f"experiment {info.slug}/{exp.name}")
        if status == "skipped":
            return status
        # Every rank sees the real experiment dir (a study may read its siblings' results there), but
        # only rank 0 writes the suite's files; other ranks spill activations to their scratch dir.
        ctx = Context(exp.name, exp_dir, self.seed, self.progress, self.log_file, self.world, info.weights_hash)
        spill_dir = (exp_dir if self.world.is_root else self._scratch_dir(info.slug, exp.name)) / SPILL_DIR
        started, t0 = datetime.now(timezone.utc), time.perf_counter()
        try:
            with self._spill_scope(model, spill_dir):
                result = exp.fn(model, config, ctx)
        finally:
            shutil.rmtree(spill_dir, ignore_errors=True)
        if not isinstance(result, dict):
            raise ResultsError(f"experiment {exp.name!r} returned {type(result).__name__}, not a dict")
        _check_not_empty(exp, ctx, config)
        timings = {"started": started.isoformat(timespec="seconds"), "seconds": round(time.perf_counter() - t0, 3),
                   "model_load_seconds": load_s, "maps": ctx.map_timings, "resumed": status == "resumed",
                   "estimate": self.estimates.get(exp.name)}
        if self.world.distributed:
            timings["ranks"] = self.world.size
        if self.world.is_root:
            io.write_json(exp_dir / RESULT_FILE, self._record(exp, config, info, ctx, result, timings))
            shutil.rmtree(exp_dir / PARTIAL_DIR, ignore_errors=True)
        return status

    def _decide(self, exp_dir: Path, exp: Experiment, want: dict) -> str:
        """skipped (finished), resumed (matching checkpoints) or computed (from scratch); prepares `.partial/`."""
        if self.resume and self._finished(exp_dir, exp, want):
            shutil.rmtree(exp_dir / PARTIAL_DIR, ignore_errors=True)  # killed just before cleanup
            shutil.rmtree(exp_dir / SPILL_DIR, ignore_errors=True)
            io.remove_stale_temps(exp_dir)
            return "skipped"
        if not self.resume:
            shutil.rmtree(exp_dir / PARTIAL_DIR, ignore_errors=True)
        return "resumed" if self._prepare_partial(exp_dir, want) else "computed"

    def _scratch_dir(self, slug: str, name: str) -> Path:
        """Where a rank > 0 spills captured activations: a private temporary directory, never --out."""
        if self.scratch is None:
            raise ResultsError("internal: a distributed rank > 0 has no scratch directory")
        path = Path(self.scratch) / slug / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _spill_scope(self, model: Any, spill_dir: Path) -> AbstractContextManager:
        """Captures larger than the memory left beside the model stream to `spill_dir`."""
        try:
            budget = memory.activation_budget(model.info)
        except (AttributeError, KeyError, TypeError, ValueError):  # a stand-in model without sizes
            return nullcontext()
        return spill.spill_scope(spill_dir, budget)

    def _record(self, exp: Experiment, config: Any, info: Any, ctx: Context, result: dict, timings: dict) -> dict:
        return {"format_version": FORMAT_VERSION, "status": "complete", "experiment": exp.name,
                "config": dataclasses.asdict(config), "model": info.to_dict(), "seed": self.seed,
                "versions": versions(), "git_commit": git_commit(),
                "preregistration_sha256": preregistration_sha256(), "figures": sorted(ctx.figures),
                "result": result, "timings": timings}

    def _finished(self, exp_dir: Path, exp: Experiment, want: dict) -> bool:
        """On resume: True to skip; False to (re)compute; error when stored work has other settings.

        Checkpoints matching the request win over an older, different
        result.json (an interrupted --no-resume run left both).
        """
        result_diffs = self._result_diffs(exp_dir / RESULT_FILE, exp, want)
        if result_diffs == []:
            return True
        partial_diffs = self._partial_diffs(exp_dir / PARTIAL_DIR / "meta.json", want)
        if partial_diffs == []:
            return False
        if result_diffs:
            raise mismatch(exp_dir / RESULT_FILE, result_diffs)
        if partial_diffs:
            raise mismatch(exp_dir / PARTIAL_DIR, partial_diffs)
        return False

    def _result_diffs(self, path: Path, exp: Experiment, want: dict) -> list[str] | None:
        """How a stored result differs from the request; None when absent or corrupt (said so)."""
        if not path.exists():
            return None
        try:
            record = io.read_json(path)
            if not (isinstance(record, dict) and record.get("status") == "complete"
                    and record.get("experiment") == exp.name and isinstance(record.get("config"), dict)):
                raise ResultsError(f"{path} is not a complete {exp.name!r} result")
        except ResultsError as exc:
            self.note(f"recomputing {exp.name}: {path} is corrupted or incomplete ({exc})", "yellow")
            return None
        return differences(fingerprint_of(record), want)

    def _partial_diffs(self, meta_path: Path, want: dict) -> list[str] | None:
        """How stored checkpoints differ from the request; None when there are none usable."""
        if not meta_path.exists():
            return None
        try:
            return differences(io.read_json(meta_path), want)
        except (ResultsError, KeyError, TypeError, AttributeError) as exc:
            self.note(f"discarding checkpoints: {meta_path} is unreadable ({exc})", "yellow")
            return None

    def _prepare_partial(self, exp_dir: Path, want: dict) -> bool:
        """Reuse matching checkpoints (True when there are some) or start an empty `.partial/`."""
        partial = exp_dir / PARTIAL_DIR
        meta_path = partial / "meta.json"
        exp_dir.mkdir(parents=True, exist_ok=True)
        io.remove_stale_temps(exp_dir)
        try:
            reuse = meta_path.exists() and differences(io.read_json(meta_path), want) == []
        except (ResultsError, KeyError, TypeError, AttributeError):
            reuse = False
        if reuse:
            io.remove_stale_temps(partial)
            return any(partial.glob("*.jsonl"))
        shutil.rmtree(partial, ignore_errors=True)
        io.write_json(meta_path, want)
        return False


def _check_not_empty(exp: Experiment, ctx: Context, config: Any) -> None:
    """An experiment whose every ctx.map got zero items analysed nothing: that is a failure, not a
    "complete" result with empty statistics (e.g. a selection that matched no data)."""
    maps = ctx.map_timings
    if maps and not any(m["items"] for m in maps.values()):
        raise ResultsError(f"experiment {exp.name!r} analysed zero items (ctx.map {', '.join(map(repr, maps))} "
                           f"got none with config {config!r:.200}); not marking it complete",
                           hint="check the config values that choose the items (n, chunk, ...): "
                                "`mlxinterp run-suite --list --fields`")


def free_memory() -> None:
    """Return a freed model's memory before the next model loads (MLX caches buffers).

    On Linux, also glibc's malloc_trim: MLX's CPU buffers come from malloc, and
    after the first large free glibc raises its mmap threshold, so the next
    model's tensors live on the heap and stay in RSS after they are freed
    (BUGFIX.md: 0.4-0.8 GB per cycle with the 270M model).
    """
    gc.collect()
    try:  # imported here, not at the top: planning, --list and reports run without loading MLX
        import mlx.core as mx
    except ImportError:  # pragma: no cover - mlx is a dependency
        return
    clear = getattr(mx, "clear_cache", None) or getattr(getattr(mx, "metal", None), "clear_cache", None)
    if clear is not None:
        clear()
    _trim_malloc()


def _trim_malloc() -> None:
    """Give the C heap's free pages back to the OS (glibc only; a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
        pass


def plan_models(models: Sequence[str], console: Console, hosts: int = 1) -> list[str]:
    """The models, smallest first; refuses (MemoryBudgetError) those that will not fit, before any loads.
    Layer-sharded over `hosts` ranks, each host needs only its share (planner.plan_hosts)."""
    plans = planner.plan_models(models)
    if hosts > 1:
        planner.check_fit_sharded(plans, hosts)
    else:
        planner.check_fit(plans)
    if len(plans) > 1 or any(p.estimate for p in plans):
        order = ", ".join(f"{p.spec} (~{memory.gb(p.need)})" if p.need else f"{p.spec} (size unknown)" for p in plans)
        say(console, f"models, smallest first, for {memory.gb(total_memory_bytes())} of memory: {order}")
    return [p.spec for p in plans]


SHARD_MODES = ("items", "layers")


def _check_layer_sharding(exps: list[Experiment], world: distributed.World) -> None:
    """Before anything loads: `--shard layers` needs several ranks, and experiments that need the whole
    model in one process (their `whole_model` reason, registry.experiment) are refused by name."""
    whole = [e for e in exps if e.whole_model]
    if whole:
        why = "; ".join(f"{e.name} ({e.whole_model})" for e in whole)
        raise ResultsError(f"--shard layers cannot run {why}",
                           hint=f"leave {'them' if len(whole) > 1 else 'it'} out (--skip "
                                f"{','.join(e.name for e in whole)}), or run {'them' if len(whole) > 1 else 'it'} "
                                "with --shard items or in one process")
    if not world.distributed:
        raise ResultsError("--shard layers needs at least 2 ranks; this process is alone",
                           hint="start it with `mlx.launch -n 2 --backend ring -- python -m mlxinterp run-suite "
                                "--shard layers ...` (docs/bigger-models.md)")


def _sharded_load(world: distributed.World) -> Callable[[str], Any]:
    """Loads this rank's layers only (core.pipeline.load_sharded)."""
    def load(spec: str) -> Any:
        from mlxinterp.core.pipeline import load_sharded  # pulls MLX: only when a model is actually needed

        return load_sharded(spec, world.group)

    return load


def _default_load(spec: str) -> Any:
    """mlxinterp.core.hooks.load, imported only when a model is actually needed (it pulls MLX and mlx-lm,
    which `mlxinterp run-suite --list` and stand-in models in tests never need)."""
    from mlxinterp.core.hooks import load

    return load(spec)


def resume_command(models: Sequence[str], only: Any = None, skip: Any = None, out: str | Path = DEFAULT_OUT,
                   n: int | None = None, seed: int = 0, sets: Sequence[str] = (),
                   quant_check: str | int | None = None) -> str:
    """The `mlxinterp run-suite` command that continues this run."""
    args = ["mlxinterp", "run-suite"]
    for spec in models:
        args += ["--model", spec]
    if split_names(only):
        args += ["--only", ",".join(split_names(only))]
    if split_names(skip):
        args += ["--skip", ",".join(split_names(skip))]
    if n is not None:
        args += ["--n", str(n)]
    for text in sets:
        args += ["--set", text]
    if quant_check:
        args += ["--quant-check", str(quant_check)]
    args += ["--seed", str(seed), "--out", str(out)]
    return shlex.join(args)


def _progress(console: Console) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console)


def run_all(models: list[str], only: str | Sequence[str] | None = None, skip: str | Sequence[str] | None = None,
            out: str | Path = DEFAULT_OUT, n: int | None = None, seed: int = 0, resume: bool = True,
            load_fn: Callable[[str], Any] | None = None, *, console: Console | None = None,
            resume_hint: str | None = None, sets: Sequence[str] = (), quant_check: str | int | None = None,
            quick: bool = False, shard: str = "items") -> dict:
    """Run the selected experiments on every model; return a summary.

    `quant_check` ("4", "8", "4bit-g32", ...): also run every model at that MLX
    quantization and write a verdict per primary metric (mlxinterp.suite.quantcheck).

    Experiments run after those they use or reuse (registry.select); one that
    another selected experiment `uses` is added to the run (a line says so).

    Summary: {"out": str, "runs": [{"model", "spec", "experiment", "status", "path"}],
    "report": {"md": str, "html": str}} where status is computed | resumed | skipped.
    On Ctrl-C (or any error) finished work is kept, the report is regenerated
    and the command that resumes is printed (`resume_hint` overrides it, e.g.
    the CLI's own argv), then the exception propagates.
    Models run smallest first (planner.plan_models); one that will not fit in
    memory is refused before anything is loaded.
    Under `mlx.launch -n N` (mlxinterp.suite.distributed) the ranks share every
    experiment's items; rank 0 alone writes files and its summary has the report;
    the other ranks' summaries have "report": None.
    `sets` are config overrides, `exp.field=value` or `field=value` (parse_overrides);
    a run with overrides has its own config fingerprint, so resuming a different
    configuration into the same --out is refused: use another --out or --no-resume.
    `quick` runs each experiment's quick profile (small sizes, registry.experiment)
    instead of its full-size defaults; `sets` apply on top.
    `shard` = "layers" (under `mlx.launch -n N`): the model's layers are split across the ranks
    (core.pipeline) instead of the items, every rank takes part in every forward, and each host
    needs only its share of the memory.
    """
    if shard not in SHARD_MODES:
        raise ResultsError(f"shard={shard!r} is not allowed; use one of {', '.join(SHARD_MODES)}")
    register_builtin()
    exps = select(only, skip)
    added = [e.name for e in exps if split_names(only) is not None and e.name not in split_names(only)]
    overrides = parse_overrides(sets, [e.name for e in exps], quick)
    if not models:
        raise ResultsError("no models given", hint="pass at least one --model")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ResultsError(f"seed must be a non-negative integer, not {seed!r:.40}" + (" (too large)" if
                           isinstance(seed, int) and seed >= 2**63 else ""))
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ResultsError(f"n (items per experiment) must be a whole number >= 1, not {n!r:.40}")
    if n is not None and n > ranges.MAX_ITEMS:
        raise ResultsError(f"n (items per experiment) must be at most {ranges.MAX_ITEMS}, not {n}")
    bad_spec = next((m for m in models if not isinstance(m, str) or not m.strip()), None) if models else None
    if models and bad_spec is not None:
        raise ResultsError(f"model spec {bad_spec!r:.60} is not allowed; give a model spec string")
    for e in exps:  # every config within its declared ranges (suite/ranges.py), before any model loads
        make_config(e, n, seed, overrides.get(e.name))
    out = Path(out)
    world = distributed.world()
    if shard == "layers":
        _check_layer_sharding(exps, world)
        world = dataclasses.replace(world, split_items=False)
        load_fn = load_fn or _sharded_load(world)
    console = console or Console(stderr=True)
    if not world.is_root:
        console = Console(file=open(os.devnull, "w"), quiet=True)  # noqa: SIM115 - lives as long as the run
    pairs = {s: q for s in models if (q := quantcheck.quantized_spec(s, quant_check)) != s} if quant_check else {}
    hint = resume_hint or resume_command(models, only, skip, out, n, seed, sets, quant_check)
    models = list(dict.fromkeys([*models, *pairs.values()]))
    if added:
        say(console, f"also running {', '.join(added)}: used by the selected experiments (their `uses`)")
    models = world.decide(lambda: plan_models(models, console, 1 if world.split_items else world.size), "plan")
    with io.DirLock(out) if world.is_root else nullcontext(), _scratch(world) as scratch:
        with _progress(console) as progress:
            run = _Run(out, seed, n, resume, progress, world, scratch, overrides)
            overall = progress.add_task("suite", total=len(models) * len(exps))
            try:
                for spec in models:
                    run.model(spec, exps, load_fn or _default_load, overall)
            except BaseException as exc:
                if world.is_root:
                    _report_quietly(out, console)
                what = "Interrupted" if isinstance(exc, KeyboardInterrupt) else "Stopped by an error"
                say(console, f"{what}. Finished work is kept in {out}. Resume with:\n  {hint}", "yellow")
                raise
        if not world.is_root:
            return {"out": str(out), "runs": run.runs, "report": None, "rank": world.rank}
        if pairs:
            quantcheck.write_checks(out, run.runs, pairs, quantcheck.variant_name(quant_check))
        md, html = _write_report(out)
    return {"out": str(out), "runs": run.runs, "report": {"md": str(md), "html": str(html)}}


def _scratch(world: distributed.World) -> AbstractContextManager:
    """A private temporary directory for ranks > 0 (None on rank 0, which writes to --out)."""
    if world.is_root:
        return nullcontext()
    return tempfile.TemporaryDirectory(prefix=f"mlxinterp-rank{world.rank}-")



def _write_report(out: Path) -> tuple[Path, Path]:
    return write_report(out, docs=docs())


def _report_quietly(out: Path, console: Console) -> None:
    """Best-effort report after an interruption; failing here must not hide the real error."""
    try:
        _write_report(out)
    except BaseException as exc:  # noqa: BLE001 - reported, then the original error continues
        say(console, f"could not regenerate the report: {exc}", "yellow")

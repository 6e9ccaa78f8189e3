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

import ast
import dataclasses
import gc
import hashlib
import importlib
import importlib.metadata
import json
import os
import pkgutil
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

from mlxinterp import distributed, io
from mlxinterp.errors import MlxInterpError, ResultsError, closest

FORMAT_VERSION = 1
BUILTIN_PACKAGE = "mlxinterp.studies"
RESULT_FILE = "result.json"
PARTIAL_DIR = ".partial"
SPILL_DIR = ".spill"  # captured activations streamed to disk (memory.RowStore), removed when done
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

ExperimentFn = Callable[[Any, Any, "Context"], dict]


# ------------------------------------------------------------------ registry


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A registered experiment: its name, config dataclass, function and one-line doc."""

    name: str
    config_cls: type
    fn: ExperimentFn
    doc: str


_REGISTRY: dict[str, Experiment] = {}
_IMPORT_ERRORS: dict[str, str] = {}


def _check_name(name: str, what: str) -> str:
    """Names become directory and file names, so keep them portable."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise MlxInterpError(f"invalid {what} {name!r}",
                             hint="use letters, digits, '_', '-' or '.', starting with a letter or digit")
    return name


def experiment(name: str, config_cls: type) -> Callable[[ExperimentFn], ExperimentFn]:
    """Register `fn(model, config, ctx) -> dict` as experiment `name`.

    `config_cls` must be a dataclass whose fields all have defaults; `run_all`
    fills its `n` and `seed` fields (when present) from its own arguments.
    """
    _check_name(name, "experiment name")
    if not (dataclasses.is_dataclass(config_cls) and isinstance(config_cls, type)):
        raise MlxInterpError(f"experiment {name!r}: config must be a dataclass class, "
                             f"not {config_cls!r}")

    def register(fn: ExperimentFn) -> ExperimentFn:
        old = _REGISTRY.get(name)
        if old is not None and _origin(old.fn) != _origin(fn):
            raise MlxInterpError(f"experiment {name!r} is registered twice: "
                                 f"{_origin(old.fn)} and {_origin(fn)}")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = Experiment(name, config_cls, fn, doc[0].strip() if doc else "")
        return fn

    return register


def _origin(fn: Callable) -> str:
    """Where a function was defined; the same origin may re-register (module reload)."""
    return f"{fn.__module__}.{fn.__qualname__}"


def register_builtin(modules: Iterable[str] | None = None) -> list[str]:
    """Import the study modules so their @experiment decorators run; return those imported.

    By default every submodule of `mlxinterp.studies` (none is fine). A module
    that fails to import is skipped with a warning rather than breaking the
    other experiments or `--list`; its error is shown if its experiment is asked for.
    """
    names = list(modules) if modules is not None else _builtin_modules()
    imported = []
    for mod in names:
        try:
            importlib.import_module(mod)
        except Exception as exc:  # a broken study must not take the others down
            _IMPORT_ERRORS[mod] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"mlxinterp: could not import study module {mod}: {exc}", stacklevel=2)
            continue
        _IMPORT_ERRORS.pop(mod, None)
        imported.append(mod)
    return imported


def _builtin_modules() -> list[str]:
    """Submodules of the studies package, in name order; [] while it does not exist."""
    try:
        pkg = importlib.import_module(BUILTIN_PACKAGE)
    except ModuleNotFoundError as exc:
        if exc.name and BUILTIN_PACKAGE.startswith(exc.name):
            return []
        raise
    paths = getattr(pkg, "__path__", None) or []
    return [f"{BUILTIN_PACKAGE}.{m.name}" for m in sorted(pkgutil.iter_modules(paths), key=lambda m: m.name)
            if not m.name.startswith("_")]


def list_experiments() -> list[tuple[str, str]]:
    """(name, one-line doc) of every registered experiment, for `run-suite --list`."""
    register_builtin()
    return [(e.name, e.doc) for e in _REGISTRY.values()]


def config_fields(name: str) -> str:
    """`field=default` for every config field of experiment `name` (what `--set` can change)."""
    if name not in _REGISTRY:
        raise _unknown(name)
    exp = _REGISTRY[name]
    return ", ".join(f"{f.name}={f.default!r}" if f.default is not dataclasses.MISSING else f"{f.name}=<factory>"
                     for f in dataclasses.fields(exp.config_cls))


def select(only: str | Sequence[str] | None = None,
           skip: str | Sequence[str] | None = None) -> list[Experiment]:
    """The experiments to run, in registration order; unknown names are an error."""
    wanted, unwanted = _names(only), _names(skip) or []
    for name in (wanted or []) + unwanted:
        if name not in _REGISTRY:
            raise _unknown(name)
    chosen = [e for e in _REGISTRY.values()
              if (wanted is None or e.name in wanted) and e.name not in unwanted]
    if not chosen:
        raise ResultsError("no experiments selected", hint=f"available: {', '.join(_REGISTRY) or 'none'}")
    return chosen


def _names(value: str | Sequence[str] | None) -> list[str] | None:
    """Accept 'a,b', ['a', 'b'] or ['a,b'] (how CLI options arrive)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    return [n.strip() for item in items for n in item.split(",") if n.strip()]


def _unknown(name: str) -> ResultsError:
    available = ", ".join(_REGISTRY) or "none registered"
    hints = []
    if (guess := closest(name, _REGISTRY)):
        hints.append(f"did you mean {guess}?")
    hints.append(f"available: {available} (`mlxinterp run-suite --list` describes them)")
    if _IMPORT_ERRORS:
        hints.append("modules that failed to import: "
                     + "; ".join(f"{m} ({e})" for m, e in _IMPORT_ERRORS.items()))
    return ResultsError(f"unknown experiment {name!r}", hint=" ".join(hints))


def make_config(exp: Experiment, n: int | None = None, seed: int = 0,
                overrides: dict[str, Any] | None = None) -> Any:
    """The experiment's config: defaults, then `overrides` (field -> value), then `n` and `seed`.

    `n` (when given) and `seed` are filled in where the config has those fields;
    an explicit override of `n` wins over the suite-wide `n`.
    """
    fields = {f.name for f in dataclasses.fields(exp.config_cls)}
    kwargs: dict[str, Any] = {}
    if "seed" in fields:
        kwargs["seed"] = seed
    if "n" in fields and n is not None:
        kwargs["n"] = n
    kwargs.update(overrides or {})
    try:
        return exp.config_cls(**kwargs)
    except TypeError as exc:
        raise MlxInterpError(f"experiment {exp.name!r}: cannot build its config: {exc}",
                             hint="give every config field a default") from exc


def parse_overrides(sets: Sequence[str], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`--set` strings -> {experiment: {field: value}}, checked against the experiments' configs.

    `exp.field=value` sets one experiment's field; `field=value` sets it in every
    selected experiment (`names`) whose config has it. Values are Python literals
    (numbers, True/False, strings, tuples or lists; unparseable text is a string); a list given for a
    tuple field becomes a tuple, an int for a float field a float, and anything
    else of the wrong type is refused here rather than deep inside a study.
    """
    out: dict[str, dict[str, Any]] = {}
    for text in sets:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ResultsError(f"--set {text!r} is not key=value", hint="e.g. --set ard_mmd.steps=1000 or --set n=48")
        value = _literal(raw)
        exp_name, dot, field = key.rpartition(".")
        targets = [exp_name] if dot else list(names)
        if dot and exp_name not in _REGISTRY:
            raise _unknown(exp_name)
        hits = [t for t in targets if field in {f.name for f in dataclasses.fields(_REGISTRY[t].config_cls)}]
        if not hits:
            allowed = sorted({f.name for t in targets for f in dataclasses.fields(_REGISTRY[t].config_cls)})
            guess = closest(field, allowed)
            raise ResultsError(f"--set {text!r}: no config field {field!r} in {', '.join(targets) or 'the selection'}",
                               hint=(f"did you mean {guess}? " if guess else "") + f"fields: {', '.join(allowed)}")
        for t in hits:
            out.setdefault(t, {})[field] = _coerce(text, _REGISTRY[t], field, value)
    return out


def _literal(raw: str) -> Any:
    """A Python literal, or the bare text itself (so `--set exp.lang=zh` needs no shell-proof quotes)."""
    try:
        return ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        return raw.strip()


def _coerce(text: str, exp: Experiment, field: str, value: Any) -> Any:
    """`value` converted to the type of the field's default, or a ResultsError naming both."""
    default = next(f for f in dataclasses.fields(exp.config_cls) if f.name == field)
    ref = default.default if default.default is not dataclasses.MISSING else default.default_factory()
    if ref is None or value is None:
        return value
    if isinstance(ref, bool) or isinstance(value, bool):  # bool is an int subclass: match it exactly
        if isinstance(ref, bool) and isinstance(value, bool):
            return value
    elif isinstance(value, type(ref)):
        return value
    elif isinstance(ref, tuple) and isinstance(value, list):
        return tuple(value)
    elif isinstance(ref, float) and isinstance(value, int):
        return float(value)
    raise ResultsError(f"--set {text!r}: {exp.name}.{field} takes {type(ref).__name__} "
                       f"(default {ref!r}), not {type(value).__name__} {value!r}")


# ------------------------------------------------------------------- context


def _stable_int(text: str) -> int:
    """A process-independent integer for a string (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def item_hash(item: Any) -> str:
    """Identity of a map item, so a checkpoint is reused only for the same item."""
    try:
        text = json.dumps(io.to_jsonable(item), sort_keys=True)
    except (MlxInterpError, TypeError, ValueError):
        text = repr(item)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Context:
    """What an experiment gets besides model and config: rng, output dir, figures, log, map."""

    def __init__(self, name: str, out_dir: Path, seed: int, progress: Progress, log_file: Path | None = None,
                 world: distributed.World | None = None):
        self.name = name
        self.world = world or distributed.World()
        self.out_dir = out_dir
        self.seed = seed
        self.rng = self.rng_for()
        self.figures: list[str] = []
        self.map_timings: dict[str, dict] = {}
        self._progress = progress
        self._log_file = log_file

    def rng_for(self, *keys: str | int) -> np.random.Generator:
        """A generator seeded by (seed, experiment name, *keys): the same in every process.

        `ctx.rng` is `rng_for()`. Draw from it outside `map` (e.g. to choose
        items): a resumed run skips finished items, so a stream shared by item
        functions would shift. Inside an item, use `rng_for(key, index)`.
        """
        return np.random.default_rng([self.seed, _stable_int(self.name), *(_stable_int(str(k)) for k in keys)])

    def save_figure(self, name: str, fig: Any) -> Path:
        """Save a matplotlib figure as `<out_dir>/<name>.png` (atomically) and close it (rank 0 only writes)."""
        _check_name(name, "figure name")
        path = self.out_dir / f"{name}.png"
        if self.world.is_root:
            io.save_figure(path, fig)
        try:
            import matplotlib.pyplot as plt

            plt.close(fig)
        except ImportError:  # pragma: no cover - matplotlib is a dependency
            pass
        if path.name not in self.figures:
            self.figures.append(path.name)
        return path

    def log(self, msg: str) -> None:
        """A line above the progress bars, also appended to `<out>/suite.log`."""
        _say(self._progress.console, f"[{self.name}] {msg}")
        _append_log(self._log_file, f"[{self.name}] {msg}")

    def map(self, key: str, items: Iterable[Any], fn: Callable[[Any], Any]) -> list[Any]:
        """[fn(item) for item in items], checkpointing each finished item.

        Results are reloaded from `.partial/<key>.jsonl` when a previous run
        finished them (same index and same item hash), so they are never
        recomputed. Every result is returned as it reads back from JSON
        (tuples become lists, numpy numbers floats), fresh or reloaded alike.

        Under `mlx.launch -n N` (mlxinterp.distributed) the unfinished items are
        shared out in rounds of N, one per rank; after each round every rank has
        every result and rank 0 checkpoints them, so all ranks return the same list.
        """
        _check_name(key, "map key")
        if key in self.map_timings:
            raise ResultsError(f"{self.name}: ctx.map key {key!r} used twice",
                               hint="give each ctx.map call its own key")
        items = list(items)
        hashes = [item_hash(x) for x in items]
        path = self.out_dir / PARTIAL_DIR / f"{key}.jsonl"
        world = self.world
        tag = f"map {self.name}/{key}: {len(items)} items {hashlib.sha256(''.join(hashes).encode()).hexdigest()[:12]}"
        done, intact = world.decide(lambda: _reload(path, hashes), tag) if world.distributed else _reload(path, hashes)
        done = {int(i): r for i, r in done.items()}  # JSON keys are strings on the other ranks
        results: list[Any] = [done.get(i) for i in range(len(items))]
        start = time.perf_counter()
        task = self._progress.add_task(f"  {self.name} · {key}", total=len(items), completed=len(done))
        todo = [i for i in range(len(items)) if i not in done]
        try:
            with io.JsonlAppender(path, keep_bytes=intact) if world.is_root else nullcontext() as sink:
                for round_ in distributed.rounds(todo, world.size):
                    for i, result in distributed.run_round(world, round_, lambda i: io.normalize(fn(items[i]))):
                        results[i] = result
                        if sink is not None:
                            sink.append({"i": i, "h": hashes[i], "r": result})
                        self._progress.advance(task)
        finally:
            self._progress.remove_task(task)
        self.map_timings[key] = {"items": len(items), "reloaded": len(done),
                                 "seconds": round(time.perf_counter() - start, 3)}
        if world.distributed:
            self.map_timings[key]["ranks"] = world.size
        return results


def _reload(path: Path, hashes: list[str]) -> tuple[dict[int, Any], int]:
    """Finished items of a checkpoint that still match their item; and its intact length."""
    records, intact = io.read_jsonl(path)
    done: dict[int, Any] = {}
    for rec in records:
        i = rec.get("i") if isinstance(rec, dict) else None
        if isinstance(i, int) and 0 <= i < len(hashes) and rec.get("h") == hashes[i] and "r" in rec:
            done[i] = rec["r"]
    return done, intact


def _say(console: Console, msg: str, style: str = "") -> None:
    """Print verbatim (paths may contain '[') and unwrapped, so commands stay copy-pastable."""
    console.print(Text(msg, style=style), soft_wrap=True)


def _append_log(path: Path | None, line: str) -> None:
    """Best effort: a log line must never stop a run."""
    if path is None:
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} {line}\n")
    except OSError:
        pass


# ------------------------------------------------------------------ provenance


def versions() -> dict[str, str | None]:
    """Versions that can change a result; read from package metadata (no heavy imports)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in (("mlx", "mlx"), ("mlx_lm", "mlx-lm"), ("numpy", "numpy"), ("mlxinterp", "mlxinterp")):
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = None
    return out


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """HEAD of the repo mlxinterp runs from, or None (not a checkout, no git, no commits)."""
    root = Path(__file__).resolve().parent.parent
    try:
        proc = subprocess.run(["git", "-C", str(root), "rev-parse", "--verify", "-q", "HEAD"],
                              capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def _fingerprint(config: Any, info: Any, seed: int) -> dict:
    """What must match for finished work to be reused."""
    return {"format_version": FORMAT_VERSION, "config": io.normalize(dataclasses.asdict(config)),
            "weights_hash": info.weights_hash, "seed": seed}


def _fingerprint_of(record: dict) -> dict:
    return {"format_version": record.get("format_version"), "config": record.get("config"),
            "weights_hash": (record.get("model") or {}).get("weights_hash"), "seed": record.get("seed")}


def _differences(old: dict, new: dict) -> list[str]:
    """Human-readable list of what differs between a stored and a requested fingerprint."""
    diffs = []
    if old["format_version"] != new["format_version"]:
        diffs.append(f"format version {old['format_version']} (this mlxinterp writes {new['format_version']})")
    if old["weights_hash"] != new["weights_hash"]:
        diffs.append(f"model weights hash {old['weights_hash']} (now {new['weights_hash']})")
    if old["seed"] != new["seed"]:
        diffs.append(f"seed {old['seed']} (now {new['seed']})")
    old_cfg, new_cfg = old["config"] or {}, new["config"]
    for key in sorted(set(old_cfg) | set(new_cfg)):
        if old_cfg.get(key, "<absent>") != new_cfg.get(key, "<absent>"):
            diffs.append(f"config.{key} {old_cfg.get(key, '<absent>')!r} (now {new_cfg.get(key, '<absent>')!r})")
    return diffs


def _mismatch(path: Path, diffs: list[str]) -> ResultsError:
    return ResultsError(f"cannot resume: {path} was made with different settings: " + "; ".join(diffs),
                        hint="rerun with --no-resume to recompute it, or write to another --out")


# ----------------------------------------------------------------------- runs


class _Run:
    """One `run_all` call: shared output dir, progress display, summary.

    Distributed (mlxinterp.distributed): rank 0 decides what to skip or resume
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

    def note(self, msg: str, style: str = "") -> None:
        _say(self.console, msg, style)
        _append_log(self.log_file, msg)

    def model(self, spec: str, exps: list[Experiment], load_fn: Callable[[str], Any], overall: Any) -> None:
        """Load one model, run its experiments, free it before the next one is loaded."""
        self.progress.update(overall, description=f"loading {spec}")
        t0 = time.perf_counter()
        model = load_fn(spec)
        load_s = round(time.perf_counter() - t0, 3)
        try:
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

    def experiment(self, model: Any, exp: Experiment, load_s: float) -> str:
        """Run (or skip, or finish) one experiment on a loaded model; return what happened.

        With --no-resume only the checkpoints are discarded up front: an old
        result.json stays until the new one atomically replaces it, so an
        interrupted fresh run loses nothing that was finished before.
        """
        info = model.info
        config = make_config(exp, self.n, self.seed, self.overrides.get(exp.name))
        exp_dir = self.out / _check_name(info.slug, "model slug") / exp.name
        want = _fingerprint(config, info, self.seed)
        status = self.world.decide(lambda: self._decide(exp_dir, exp, want), f"experiment {info.slug}/{exp.name}")
        if status == "skipped":
            return status
        # Every rank sees the real experiment dir (a study may read its siblings' results there), but
        # only rank 0 writes the suite's files; other ranks spill activations to their scratch dir.
        ctx = Context(exp.name, exp_dir, self.seed, self.progress, self.log_file, self.world)
        spill_dir = (exp_dir if self.world.is_root else self._scratch_dir(info.slug, exp.name)) / SPILL_DIR
        started, t0 = datetime.now(timezone.utc), time.perf_counter()
        try:
            with self._spill_scope(model, spill_dir):
                result = exp.fn(model, config, ctx)
        finally:
            shutil.rmtree(spill_dir, ignore_errors=True)
        if not isinstance(result, dict):
            raise ResultsError(f"experiment {exp.name!r} returned {type(result).__name__}, not a dict")
        timings = {"started": started.isoformat(timespec="seconds"), "seconds": round(time.perf_counter() - t0, 3),
                   "model_load_seconds": load_s, "maps": ctx.map_timings, "resumed": status == "resumed"}
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
        from mlxinterp import memory

        try:
            budget = memory.activation_budget(model.info)
        except (AttributeError, KeyError, TypeError, ValueError):  # a stand-in model without sizes
            return nullcontext()
        return memory.spill_scope(spill_dir, budget)

    def _record(self, exp: Experiment, config: Any, info: Any, ctx: Context, result: dict, timings: dict) -> dict:
        return {"format_version": FORMAT_VERSION, "status": "complete", "experiment": exp.name,
                "config": dataclasses.asdict(config), "model": info.to_dict(), "seed": self.seed,
                "versions": versions(), "git_commit": git_commit(), "figures": sorted(ctx.figures),
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
            raise _mismatch(exp_dir / RESULT_FILE, result_diffs)
        if partial_diffs:
            raise _mismatch(exp_dir / PARTIAL_DIR, partial_diffs)
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
        return _differences(_fingerprint_of(record), want)

    def _partial_diffs(self, meta_path: Path, want: dict) -> list[str] | None:
        """How stored checkpoints differ from the request; None when there are none usable."""
        if not meta_path.exists():
            return None
        try:
            return _differences(io.read_json(meta_path), want)
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
            reuse = meta_path.exists() and _differences(io.read_json(meta_path), want) == []
        except (ResultsError, KeyError, TypeError, AttributeError):
            reuse = False
        if reuse:
            io.remove_stale_temps(partial)
            return any(partial.glob("*.jsonl"))
        shutil.rmtree(partial, ignore_errors=True)
        io.write_json(meta_path, want)
        return False


def free_memory() -> None:
    """Return a freed model's memory before the next model loads (MLX caches buffers).

    On Linux, also glibc's malloc_trim: MLX's CPU buffers come from malloc, and
    after the first large free glibc raises its mmap threshold, so the next
    model's tensors live on the heap and stay in RSS after they are freed
    (BUGFIX.md: 0.4-0.8 GB per cycle with the 270M model).
    """
    gc.collect()
    try:
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
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
        pass


def plan_models(models: Sequence[str], console: Console) -> list[str]:
    """The models, smallest first; refuses (MemoryBudgetError) those that will not fit, before any loads."""
    from mlxinterp import memory

    plans = memory.plan_models(models)
    memory.check_fit(plans)
    if len(plans) > 1 or any(p.estimate for p in plans):
        order = ", ".join(f"{p.spec} (~{memory.gb(p.need)})" if p.need else f"{p.spec} (size unknown)" for p in plans)
        _say(console, f"models, smallest first, for {memory.gb(memory.total_memory_bytes())} of memory: {order}")
    return [p.spec for p in plans]


def _default_load(spec: str) -> Any:
    """mlxinterp.hooks.load, imported only when a model is actually needed."""
    from mlxinterp.hooks import load

    return load(spec)


def resume_command(models: Sequence[str], only: Any = None, skip: Any = None, out: str | Path = "results",
                   n: int | None = None, seed: int = 0, sets: Sequence[str] = ()) -> str:
    """The `mlxinterp run-suite` command that continues this run."""
    args = ["mlxinterp", "run-suite"]
    for spec in models:
        args += ["--model", spec]
    if _names(only):
        args += ["--only", ",".join(_names(only))]
    if _names(skip):
        args += ["--skip", ",".join(_names(skip))]
    if n is not None:
        args += ["--n", str(n)]
    for text in sets:
        args += ["--set", text]
    args += ["--seed", str(seed), "--out", str(out)]
    return shlex.join(args)


def _progress(console: Console) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console)


def run_all(models: list[str], only: str | Sequence[str] | None = None, skip: str | Sequence[str] | None = None,
            out: str | Path = "results", n: int | None = None, seed: int = 0, resume: bool = True,
            load_fn: Callable[[str], Any] | None = None, *, console: Console | None = None,
            resume_hint: str | None = None, sets: Sequence[str] = ()) -> dict:
    """Run the selected experiments on every model; return a summary.

    Summary: {"out": str, "runs": [{"model", "spec", "experiment", "status", "path"}],
    "report": {"md": str, "html": str}} where status is computed | resumed | skipped.
    On Ctrl-C (or any error) finished work is kept, the report is regenerated
    and the command that resumes is printed (`resume_hint` overrides it, e.g.
    the CLI's own argv), then the exception propagates.
    Models run smallest first (memory.plan_models); one that will not fit in
    memory is refused before anything is loaded.
    Under `mlx.launch -n N` (mlxinterp.distributed) the ranks share every
    experiment's items; rank 0 alone writes files and its summary has the report;
    the other ranks' summaries have "report": None.
    `sets` are config overrides, `exp.field=value` or `field=value` (parse_overrides);
    a run with overrides has its own config fingerprint, so resuming a different
    configuration into the same --out is refused: use another --out or --no-resume.
    """
    register_builtin()
    exps = select(only, skip)
    overrides = parse_overrides(sets, [e.name for e in exps])
    if not models:
        raise ResultsError("no models given", hint="pass at least one --model")
    if not isinstance(seed, int) or seed < 0:
        raise ResultsError(f"seed must be a non-negative integer, not {seed!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ResultsError(f"n (items per experiment) must be a whole number >= 1, not {n!r}")
    out = Path(out)
    world = distributed.world()
    console = console or Console(stderr=True)
    if not world.is_root:
        console = Console(file=open(os.devnull, "w"), quiet=True)  # noqa: SIM115 - lives as long as the run
    hint = resume_hint or resume_command(models, only, skip, out, n, seed, sets)
    models = world.decide(lambda: plan_models(models, console), "plan")
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
                _say(console, f"{what}. Finished work is kept in {out}. Resume with:\n  {hint}", "yellow")
                raise
        if not world.is_root:
            return {"out": str(out), "runs": run.runs, "report": None, "rank": world.rank}
        md, html = _write_report(out)
    return {"out": str(out), "runs": run.runs, "report": {"md": str(md), "html": str(html)}}


def _scratch(world: distributed.World) -> AbstractContextManager:
    """A private temporary directory for ranks > 0 (None on rank 0, which writes to --out)."""
    if world.is_root:
        return nullcontext()
    return tempfile.TemporaryDirectory(prefix=f"mlxinterp-rank{world.rank}-")


def _docs() -> dict[str, str]:
    return {e.name: e.doc for e in _REGISTRY.values()}


def _write_report(out: Path) -> tuple[Path, Path]:
    from mlxinterp.report import write_report

    return write_report(out, docs=_docs())


def _report_quietly(out: Path, console: Console) -> None:
    """Best-effort report after an interruption; failing here must not hide the real error."""
    try:
        _write_report(out)
    except BaseException as exc:  # noqa: BLE001 - reported, then the original error continues
        _say(console, f"could not regenerate the report: {exc}", "yellow")

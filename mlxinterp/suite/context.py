"""What an experiment gets besides model and config: seeded rngs, figures, a log, `map`,
which checkpoints every finished item so a killed run resumes without redoing work, and the
results of the experiments it declared (`result_of`) or of other models (`results_across_models`).

The run's output dir is `<out>/<model slug>/<experiment>/`; a study never opens
another experiment's files by path, only through these methods.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.text import Text

from mlxinterp.core import io
from mlxinterp.core.errors import MlxInterpError, ResultsError
from mlxinterp.suite import distributed
from mlxinterp.suite import registry
from mlxinterp.suite.registry import check_name

PARTIAL_DIR = ".partial"
RESULT_FILE = "result.json"


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
                 world: distributed.World | None = None, weights_hash: str | None = None):
        self.name = name
        self.weights_hash = weights_hash  # the running model's; results of other weights are not its own
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
        check_name(name, "figure name")
        path = self.out_dir / f"{name}.png"
        if self.world.is_root:
            io.save_figure(path, fig)
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:  # a figure made with pyplot stays in its registry until closed
            pyplot.close(fig)
        if path.name not in self.figures:
            self.figures.append(path.name)
        return path

    def record_of(self, name: str) -> dict | None:
        """The stored record (config, model, seed, result, ...) of experiment `name` for this model.

        `name` must be declared in this experiment's `uses` or `reuses`
        (mlxinterp.suite.registry). A used (required) experiment whose finished
        result is missing, incomplete, or from another seed or other weights is a
        ResultsError; a reused (optional) one is then None, with a log line.
        """
        exp = registry.get(self.name)
        required = exp is not None and name in exp.uses
        if exp is None or name not in exp.reads():
            raise ResultsError(f"experiment {self.name!r} reads {name!r} without declaring it",
                               hint=f"register it with @experiment({self.name!r}, ..., uses=[{name!r}]) "
                                    f"or reuses=[{name!r}]")
        path = self.out_dir.parent / name / RESULT_FILE
        record, problem = finished_record(path, name, self.seed, self.weights_hash)
        if record is not None:
            return record
        if required:
            raise ResultsError(f"{self.name} needs the {name} result for this model: {problem}",
                               hint=f"run it first: --only {name},{self.name} (without --skip {name})")
        if path.exists():
            self.log(f"not reusing {name}: {problem}")
        return None

    def result_of(self, name: str) -> dict | None:
        """The `result` dict of experiment `name` for this model (see record_of for the rules)."""
        record = self.record_of(name)
        return None if record is None else record["result"]

    def results_across_models(self, name: str) -> list[tuple[dict, dict]]:
        """(model info, result) of every model with a finished `name` result in this run's output dir.

        For summary figures that compare models, never for numbers in a result;
        sorted by parameter count, then slug. Unreadable or unfinished results
        are left out. When `name` is the running experiment, the running model
        is left out (its result.json is written after the experiment returns);
        its results of other experiments are included.
        """
        root, me = self.out_dir.parent.parent, self.out_dir.parent.name
        found = []
        for path in sorted(root.glob(f"*/{name}/{RESULT_FILE}")):
            slug = path.parent.parent.name
            rec = None if slug == me and name == self.name else finished_record(path, name)[0]
            if rec is not None:
                found.append((rec.get("model") or {"slug": slug}, rec["result"]))
        return sorted(found, key=lambda mr: (mr[0].get("n_params") or 0, mr[0].get("slug", "")))

    def log(self, msg: str) -> None:
        """A line above the progress bars, also appended to `<out>/suite.log`."""
        say(self._progress.console, f"[{self.name}] {msg}")
        append_log(self._log_file, f"[{self.name}] {msg}")

    def map(self, key: str, items: Iterable[Any], fn: Callable[[Any], Any]) -> list[Any]:
        """[fn(item) for item in items], checkpointing each finished item.

        Results are reloaded from `.partial/<key>.jsonl` when a previous run
        finished them (same index and same item hash), so they are never
        recomputed. Every result is returned as it reads back from JSON
        (tuples become lists, numpy numbers floats), fresh or reloaded alike.

        Under `mlx.launch -n N` (mlxinterp.suite.distributed) the unfinished items are
        shared out in rounds of N, one per rank; after each round every rank has
        every result and rank 0 checkpoints them, so all ranks return the same list.
        """
        check_name(key, "map key")
        if key in self.map_timings:
            raise ResultsError(f"{self.name}: ctx.map key {key!r} used twice",
                               hint="give each ctx.map call its own key")
        items = list(items)
        hashes = [item_hash(x) for x in items]
        path = self.out_dir / PARTIAL_DIR / f"{key}.jsonl"
        world = self.world
        tag = f"map {self.name}/{key}: {len(items)} items {hashlib.sha256(''.join(hashes).encode()).hexdigest()[:12]}"
        done, intact, bad = world.decide(lambda: _reload(path, hashes), tag) if world.distributed else _reload(path, hashes)
        done = {int(i): r for i, r in done.items()}  # JSON keys are strings on the other ranks
        if bad:
            self.log(f"checkpoint {path}: line{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} "
                     f"corrupted; kept the other {len(done)} finished items, recomputing the rest")
        results: list[Any] = [done.get(i) for i in range(len(items))]
        start = time.perf_counter()
        task = self._progress.add_task(f"  {self.name} · {key}", total=len(items), completed=len(done))
        todo = [i for i in range(len(items)) if i not in done]
        try:
            with io.JsonlAppender(path, keep_bytes=intact) if world.is_root else nullcontext() as sink:
                for round_ in distributed.rounds(todo, world.workers):
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
            if not world.split_items:
                self.map_timings[key]["shard"] = "layers"
        return results


def finished_record(path: Path, name: str, seed: int | None = None,
                    weights_hash: str | None = None) -> tuple[dict | None, str | None]:
    """(record, None) when `path` is a finished result of `name` (with this seed and weights, when given);
    else (None, why not)."""
    if not path.exists():
        return None, f"no {path}"
    try:
        rec = io.read_json(path)
    except MlxInterpError as exc:
        return None, str(exc)
    if not (isinstance(rec, dict) and rec.get("status") == "complete" and rec.get("experiment") == name
            and isinstance(rec.get("result"), dict)):
        return None, f"{path} is not a complete {name} result"
    if seed is not None and rec.get("seed") != seed:
        return None, f"{path} has seed {rec.get('seed')} (this run: {seed})"
    stored = (rec.get("model") or {}).get("weights_hash")
    if weights_hash is not None and stored != weights_hash:
        return None, f"{path} is from other weights ({stored}; this model: {weights_hash})"
    return rec, None


def _reload(path: Path, hashes: list[str]) -> tuple[dict[int, Any], int, list[int]]:
    """Finished items of a checkpoint that still match their item, its intact length, and the numbers
    of its corrupted lines.

    A damaged line in the middle (not JSON, or not an item record) must cost
    only its own item: the file is rewritten without it (atomically) and every
    other finished item is kept; before, every line after it was discarded.
    """
    scan = io.scan_jsonl(path)
    done: dict[int, Any] = {}
    bad, keep = list(scan.bad_lines), []
    for rec, line, raw in zip(scan.records, scan.lines, scan.good):
        i = rec.get("i") if isinstance(rec, dict) else None
        if not (isinstance(i, int) and not isinstance(i, bool) and isinstance(rec.get("h"), str) and "r" in rec):
            bad.append(line)
            continue
        keep.append(raw)
        if 0 <= i < len(hashes) and rec["h"] == hashes[i]:
            done[i] = rec["r"]
    if not bad:
        return done, scan.intact, []
    clean = b"".join(keep)
    io.atomic_write_bytes(path, clean)
    return done, len(clean), sorted(bad)


def say(console: Console, msg: str, style: str = "") -> None:
    """Print verbatim (paths may contain '[') and unwrapped, so commands stay copy-pastable."""
    console.print(Text(msg, style=style), soft_wrap=True)


def append_log(path: Path | None, line: str) -> None:
    """Best effort: a log line must never stop a run."""
    if path is None:
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} {line}\n")
    except OSError:
        pass



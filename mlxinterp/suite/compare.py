"""Compare a suite run with a reference run (e.g. the repository's committed results/).

Every experiment writes a `summary`: its key numbers, most with a 95 % interval, stored
either as an interval ({"estimate", "low", "high", "n", ...}, core/interval.py) or as text
("+0.503 [+0.500, +0.506]", "75.0 % [46.8, 91.1] (9/12)"). Two runs of the same experiment,
model and config are compared summary entry by summary entry:

- an interval in the reference (stored, or "x [lo, hi]" in text): the new estimate must
  lie inside the reference's interval, with the same number of units n (for the rare entry whose estimate lies outside its own
  bootstrap interval: equal the reference's estimate within the tolerance below);
- any other number (counts, layers, ratios): equal within `REL_TOL` relative or `ABS_TOL`
  absolute;
- the words around the numbers (verdicts such as "survives", token strings): identical;
- entries that measure speed (patches/s, seconds) are not compared: they depend on the machine.

An experiment is *reproduced* when every entry agrees, *differs* otherwise (the first
disagreeing entries are named), and *not comparable* when its config, seed or model weights
differ from the reference's (then the numbers are not expected to agree).
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlxinterp.core import io
from mlxinterp.core.errors import ResultsError
from mlxinterp.core.interval import format_interval, is_interval
from mlxinterp.suite.context import RESULT_FILE
from mlxinterp.suite.provenance import differences, fingerprint_of

REL_TOL = 0.05
ABS_TOL = 1e-3
_NUM = r"[+-]?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?"
_NUM_RE = re.compile(_NUM)
_INTERVAL_RE = re.compile(rf"({_NUM})\s*%?\s*\[\s*({_NUM})\s*,\s*({_NUM})\s*\]")
_SPEED_RE = re.compile(r"/s\b|\bseconds?\b|\bspeed\b|\btiming", re.I)


@dataclass
class ExperimentComparison:
    """One experiment: reproduced | differs | not comparable | no reference."""

    model: str
    experiment: str
    status: str
    reasons: list[str] = field(default_factory=list)
    entries: int = 0  # summary entries compared


@dataclass
class Comparison:
    run: str
    reference: str
    experiments: list[ExperimentComparison]

    @property
    def compared(self) -> list[ExperimentComparison]:
        return [e for e in self.experiments if e.status in ("reproduced", "differs")]

    def line(self) -> str:
        """'reproduced: 19/20 experiments within their intervals; differs: X because ...'."""
        done = self.compared
        ok = sum(e.status == "reproduced" for e in done)
        parts = [f"reproduced: {ok}/{len(done)} experiments within the reference's intervals ({self.reference})"]
        for e in self.experiments:
            if e.status == "differs":
                parts.append(f"differs: {e.experiment} because {e.reasons[0]}"
                             + (f" (+{len(e.reasons) - 1} more)" if len(e.reasons) > 1 else ""))
            elif e.status == "not comparable":
                parts.append(f"not comparable: {e.experiment} ({e.reasons[0]})")
        missing = [e.experiment for e in self.experiments if e.status == "no reference"]
        if missing:
            parts.append(f"no reference for: {', '.join(missing)}")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {"run": self.run, "reference": self.reference, "line": self.line(),
                "experiments": [asdict(e) for e in self.experiments]}


def results(out: str | Path) -> dict[tuple[str, str], Path]:
    """(model slug, experiment) -> result.json for every finished experiment under a suite --out."""
    found = {}
    for path in sorted(Path(out).glob(f"*/*/{RESULT_FILE}")):
        found[(path.parent.parent.name, path.parent.name)] = path
    return found


def compare_runs(run: str | Path, reference: str | Path) -> Comparison:
    """Compare every finished experiment of `run` with the same model and experiment in `reference`."""
    if not Path(reference).is_dir():
        raise ResultsError(f"reference {reference} is not a directory",
                           hint="give a suite --out directory, e.g. the repository's results/")
    new, ref = results(run), results(reference)
    if not new:
        raise ResultsError(f"{run} has no finished experiments (no */*/{RESULT_FILE})",
                           hint="run `mlxinterp run-suite --out DIR` first, then compare DIR")
    rows = [compare_files(path, ref.get(key), *key) for key, path in new.items()]
    return Comparison(str(run), str(reference), rows)


def compare_files(new_path: Path, ref_path: Path | None, model: str = "", experiment: str = "") -> ExperimentComparison:
    """Compare two result.json files of one experiment (see the module docstring for the rule)."""
    if ref_path is None:
        return ExperimentComparison(model, experiment, "no reference")
    new, ref = io.read_json(new_path), io.read_json(ref_path)
    setting_diffs = differences(fingerprint_of(ref), fingerprint_of(new))
    if setting_diffs:
        return ExperimentComparison(model, experiment, "not comparable", setting_diffs)
    reasons, entries = compare_summaries(*aligned_summaries(ref, new))
    return ExperimentComparison(model, experiment, "differs" if reasons else "reproduced", reasons, entries)


def _summary(record: dict) -> Any:
    return (record.get("result") or {}).get("summary", {})


def aligned_summaries(ref: dict, new: dict) -> tuple[Any, Any]:
    """The two summaries under common keys. Results written since summaries got stable keys
    (suite/summary.py) keep the old human wording under `labels`; an entry whose key the other run
    lacks is matched by its label, so a run compares with a reference from before the change."""
    a, b = _summary(ref), _summary(new)
    if isinstance(a, dict) and isinstance(b, dict):
        b = _relabel(b, (new.get("result") or {}).get("labels"), a)
        a = _relabel(a, (ref.get("result") or {}).get("labels"), b)
    return a, b


def _relabel(summary: dict, labels: Any, other: dict) -> dict:
    if not isinstance(labels, dict):
        return summary
    return {labels[k] if k not in other and labels.get(k) in other else k: v for k, v in summary.items()}


def compare_summaries(ref: Any, new: Any) -> tuple[list[str], int]:
    """(disagreements, number of entries compared) between two summaries."""
    ref_flat, new_flat = dict(_flatten(ref)), dict(_flatten(new))
    reasons, entries = [], 0
    for key in ref_flat.keys() | new_flat.keys():
        if _SPEED_RE.search(key):
            continue
        entries += 1
        if key not in new_flat or key not in ref_flat:
            reasons.append(f"{key!r} is {'missing from the new run' if key in ref_flat else 'new (not in the reference)'}")
            continue
        why = compare_values(ref_flat[key], new_flat[key])
        if why:
            reasons.append(f"{key!r}: {why}")
    return sorted(reasons), entries


def _flatten(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict) and not is_interval(obj):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}{k}" if not prefix else f"{prefix} / {k}")
    else:
        yield prefix or "summary", obj


def compare_values(ref: Any, new: Any) -> str | None:
    """None when `new` reproduces `ref`, else why not."""
    if is_interval(ref) or is_interval(new):
        return _compare_interval(_as_interval(ref), _as_interval(new), ref, new)
    ref_text, new_text = _text(ref), _text(new)
    if ref_text == new_text:
        return None
    ref_words, new_words = _NUM_RE.sub("#", ref_text), _NUM_RE.sub("#", new_text)
    if ref_words != new_words:
        return f"reference {ref_text!r}, now {new_text!r}"
    ref_nums, new_nums = _numbers(ref_text), _numbers(new_text)
    intervals = {m.start(1): (float(m.group(2)), float(m.group(3))) for m in _INTERVAL_RE.finditer(ref_text)}
    for (pos, r), (_, n) in zip(ref_nums, new_nums):
        if pos in intervals:
            lo, hi = intervals[pos]
            own_outside = not lo <= r <= hi  # e.g. a refit bootstrap interval that excludes its estimate
            if not (lo <= n <= hi or (own_outside and _close(r, n))):
                return f"reference {ref_text!r}, now {new_text!r} ({n:g} outside [{lo:g}, {hi:g}])"
        elif pos in _bound_positions(ref_text):
            continue  # the new run's own interval bounds: its estimate is what is tested
        elif not _close(r, n):
            return f"reference {ref_text!r}, now {new_text!r}"
    return None


def _as_interval(value: Any) -> dict | None:
    """A stored interval as is; text holding exactly one "x [lo, hi]" (x %: a percentage) as one; else None."""
    if is_interval(value):
        return dict(value)
    found = list(_INTERVAL_RE.finditer(value)) if isinstance(value, str) else []
    if len(found) != 1:
        return None
    scale = 0.01 if "%" in found[0].group(0) else 1.0
    est, lo, hi = (scale * float(found[0].group(i)) for i in (1, 2, 3))
    return {"estimate": est, "low": lo, "high": hi, "n": None}


def _compare_interval(ref: dict | None, new: dict | None, ref_raw: Any, new_raw: Any) -> str | None:
    """Intervals (stored, or one in text): the new estimate inside the reference's interval, the same
    number of units and counts (k) within the tolerance where both runs record them."""
    shown = f"reference {_shown(ref_raw)}, now {_shown(new_raw)}"
    if ref is None or new is None:
        return shown
    r, n, lo, hi = ref["estimate"], new["estimate"], ref["low"], ref["high"]
    if r is None or n is None:
        return None if r is None and n is None else shown
    units = [(x, ref.get(x), new.get(x)) for x in ("n", "k") if ref.get(x) is not None and new.get(x) is not None]
    if any(a != b if x == "n" else not _close(a, b) for x, a, b in units):
        return f"{shown} (n {ref.get('n')} -> {new.get('n')}, k {ref.get('k')} -> {new.get('k')})"
    if lo is None or hi is None:
        return None if _close(r, n) else shown
    own_outside = not lo <= r <= hi
    if lo <= n <= hi or (own_outside and _close(r, n)):
        return None
    return f"{shown} ({n:g} outside [{lo:g}, {hi:g}])"


def _shown(value: Any) -> str:
    return format_interval(value) if is_interval(value) else _text(value)


def _text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return value if isinstance(value, str) else io.dumps(value)


def _numbers(text: str) -> list[tuple[int, float]]:
    return [(m.start(), float(m.group())) for m in _NUM_RE.finditer(text)]


def _bound_positions(text: str) -> set[int]:
    return {m.start(i) for m in _INTERVAL_RE.finditer(text) for i in (2, 3)}


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)

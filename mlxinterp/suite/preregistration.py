"""Pre-registered checks: thresholds fixed in a versioned file before the run that reports them.

A validation criterion chosen after seeing the numbers can always be made to pass. So every
study's primary metric and every pass/fail check live in mlxinterp/data/preregistration.toml,
which each run fingerprints (its sha256 goes into the result's provenance), and a check that
misses its threshold is reported as FAIL with its numbers. Format (docs/statistics.md):

    version = 1
    [primary.<experiment>]          metric = "<summary key>", hypothesis = "...", unit = "..."
    [checks.<experiment>.<check>]   metric = "...", op = ">=" | ">" | "<=" | "<", threshold = <number>,
                                    bound = "low" | "high" | "estimate" (default "estimate"), why = "..."

`bound` says which end of the interval must clear the threshold: "low" with ">=" means the whole
interval lies above it (the effect is established), not just the point estimate.
"""
from __future__ import annotations

import hashlib
import math
import numbers
import operator
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mlxinterp.core.errors import PreregistrationError, closest
from mlxinterp.core.interval import is_interval

PATH = Path(__file__).resolve().parents[1] / "data" / "preregistration.toml"
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
BOUNDS = ("low", "high", "estimate")
PRIMARY_KEYS = ("metric", "hypothesis", "unit")
CHECK_KEYS = ("metric", "op", "threshold", "bound", "why")


@dataclass(frozen=True)
class Check:
    """One pre-registered pass/fail criterion."""

    experiment: str
    name: str
    metric: str
    op: str
    threshold: float
    bound: str
    why: str

    def evaluate(self, value: object) -> dict:
        """{"verdict": "PASS" | "FAIL", "value", "op", "threshold", "bound", "metric"}.

        `value` is an Interval (or its stored dict), whose `bound` end is compared, or a plain
        number (only for bound = "estimate": a number has no interval ends). A missing value
        (None, NaN, an interval with n = 0) cannot pass: FAIL with value None.
        """
        if is_interval(value):
            v = value[self.bound]
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            if self.bound != "estimate":
                raise PreregistrationError(
                    f"check {self.experiment}.{self.name} compares the interval's {self.bound!r} bound; "
                    f"got the plain number {value!r}", hint="pass the Interval, not its estimate")
            v = value
        elif value is None:
            v = None
        else:
            raise PreregistrationError(f"check {self.experiment}.{self.name} needs an interval or a number; "
                                       f"got {type(value).__name__} {value!r}")
        ok = v is not None and not math.isnan(float(v))
        verdict = "PASS" if ok and OPS[self.op](float(v), self.threshold) else "FAIL"
        return {"verdict": verdict, "value": float(v) if ok else None, "op": self.op,
                "threshold": self.threshold, "bound": self.bound, "metric": self.metric}


@dataclass(frozen=True)
class Preregistration:
    """The parsed file: its version, sha256, primary metrics and checks (per experiment)."""

    version: int
    sha256: str
    path: Path
    primaries: dict[str, dict] = field(default_factory=dict)
    checks: dict[str, dict[str, Check]] = field(default_factory=dict)

    def primary(self, experiment: str) -> dict:
        """{"metric", "hypothesis", "unit"} of `experiment`'s pre-registered primary metric."""
        if experiment not in self.primaries:
            raise PreregistrationError(f"no primary metric is pre-registered for experiment {experiment!r}",
                                       hint=_hint(experiment, self.primaries, self.path, "primary"))
        return dict(self.primaries[experiment])

    def checks_for(self, experiment: str) -> dict[str, Check]:
        """The checks pre-registered for `experiment` ({} when none)."""
        return dict(self.checks.get(experiment, {}))

    def check(self, experiment: str, check: str, value: object) -> dict:
        """Evaluate one pre-registered check on `value` (Interval/dict or number): see Check.evaluate."""
        found = self.checks.get(experiment, {})
        if check not in found:
            where = f"checks.{experiment}"
            hint = _hint(check, found, self.path, where) if found else _hint(experiment, self.checks, self.path, "checks")
            raise PreregistrationError(f"no check {check!r} is pre-registered for experiment {experiment!r}", hint=hint)
        return found[check].evaluate(value)

    def report(self, experiment: str, values: Mapping[str, object]) -> dict:
        """What a result.json records: {"sha256", "primary", "checks": {check: verdict dict}}.

        `values` maps each pre-registered check of `experiment` to its value (Interval/dict or
        number); a check of the file that `values` lacks is an error, so no check is dropped
        silently from a result.
        """
        missing = sorted(set(self.checks.get(experiment, {})) - set(values))
        if missing:
            raise PreregistrationError(f"experiment {experiment!r} reports no value for its pre-registered "
                                       f"checks {missing}", hint=f"every check in {self.path.name} is reported")
        return {"sha256": self.sha256, "primary": self.primary(experiment),
                "checks": {name: self.check(experiment, name, v) for name, v in values.items()}}


def sha256(path: Path | str | None = None) -> str:
    """sha256 of the file's bytes (what a run records: any edit, even a comment, changes it)."""
    p = Path(path) if path is not None else PATH
    try:
        return hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError as e:
        raise PreregistrationError(f"cannot read the pre-registration file {p}: {e.strerror}") from None


def load(path: Path | str | None = None) -> Preregistration:
    """Read and validate the pre-registration file (default: the one shipped in mlxinterp/data/)."""
    p = Path(path) if path is not None else PATH
    digest = sha256(p)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise PreregistrationError(f"{p} is not valid TOML: {e}") from None
    unknown = sorted(set(doc) - {"version", "primary", "checks"})
    if unknown:
        raise PreregistrationError(f"{p}: unknown top-level key(s) {unknown}; allowed: version, primary, checks")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PreregistrationError(f"{p}: 'version' must be a positive integer; got {version!r}")
    primaries = {exp: _primary(p, exp, entry) for exp, entry in _table(p, doc, "primary").items()}
    checks = {exp: {name: _check(p, exp, name, entry) for name, entry in _table(p, doc, f"checks.{exp}", entries).items()}
              for exp, entries in _table(p, doc, "checks").items()}
    return Preregistration(version, digest, p, primaries, checks)


def _table(p: Path, doc: Mapping, where: str, value: object = ...) -> dict:
    """The sub-tables of `where`, each of which must itself be a table."""
    value = doc.get(where, {}) if value is ... else value
    if not isinstance(value, Mapping):
        raise PreregistrationError(f"{p}: [{where}] must be a table; got {value!r}")
    for key, entry in value.items():
        if not isinstance(entry, Mapping):
            raise PreregistrationError(f"{p}: [{where}.{key}] must be a table; got {entry!r}")
    return dict(value)


def _primary(p: Path, exp: str, entry: Mapping) -> dict:
    name = f"primary.{exp}"
    _keys(p, name, entry, PRIMARY_KEYS, PRIMARY_KEYS)
    return {k: entry[k] for k in PRIMARY_KEYS}


def _check(p: Path, exp: str, check: str, entry: Mapping) -> Check:
    name = f"checks.{exp}.{check}"
    _keys(p, name, entry, CHECK_KEYS, ("metric", "op", "threshold", "why"))
    op, bound, threshold = entry["op"], entry.get("bound", "estimate"), entry["threshold"]
    if op not in OPS:
        raise PreregistrationError(f"{p}: [{name}] op {op!r} is not allowed; use one of {', '.join(OPS)}")
    if bound not in BOUNDS:
        raise PreregistrationError(f"{p}: [{name}] bound {bound!r} is not allowed; use one of {', '.join(BOUNDS)}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise PreregistrationError(f"{p}: [{name}] threshold must be a finite number; got {threshold!r}")
    return Check(exp, check, entry["metric"], op, float(threshold), bound, entry["why"])


def _keys(p: Path, name: str, entry: Mapping, allowed: tuple[str, ...], required: tuple[str, ...]) -> None:
    """Every required key present, no unknown key (a typo such as 'treshold' must not pass silently)."""
    missing = [k for k in required if k not in entry]
    if missing:
        typos = [f"{k!r} for {near}" for k in entry if k not in allowed and (near := closest(k, missing))]
        hint = f"did you mean {', '.join(typos)}?" if typos else f"a [{name.split('.')[0]}] entry needs {', '.join(required)}"
        raise PreregistrationError(f"{p}: [{name}] is missing {', '.join(missing)}", hint=hint)
    for key in entry:
        if key not in allowed:
            near = closest(key, allowed)
            raise PreregistrationError(f"{p}: [{name}] has unknown key {key!r}; allowed: {', '.join(allowed)}",
                                       hint=f"did you mean {near}?" if near else None)
    for key in required:
        if key != "threshold" and not (isinstance(entry[key], str) and entry[key].strip()):
            raise PreregistrationError(f"{p}: [{name}] {key} must be a non-empty string; got {entry[key]!r}")


def _hint(name: str, known: Mapping, path: Path, where: str) -> str:
    near = closest(name, known)
    listed = ", ".join(sorted(known)) or "none"
    return f"did you mean {near}?" if near else f"[{where}] in {path} has: {listed}"

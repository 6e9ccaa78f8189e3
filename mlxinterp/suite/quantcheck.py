"""`--quant-check BITS`: does each experiment's primary finding survive quantization?

`run_all(..., quant_check="4")` runs every experiment on each model as given and on
its MLX-quantized variant (`SPEC@4bit`, group size 64 unless e.g. "4bit-g32"), then
compares their primary metrics and writes `<out>/quant_check/<slug>/<experiment>.json`,
which the report shows beside the experiment.

Primary metrics: the experiment's pre-registered primary metric (mlxinterp/data/preregistration.toml,
a dotted path into the result) when it resolves; then the result's own, `result["primary"] =
{label: "dotted.path"}` into the result; otherwise every headline value in `result["summary"]`
that is a number, an interval ({"estimate", "low", "high"}) or an interval's text
("0.41 [0.30, 0.52]") is compared.

The verdict rule is pre-registered (mlxinterp/data/preregistration.toml, [checks.quant_check.*];
docs/precision.md), and is the quantization study's steering rule for effects with intervals:
  interval on both sides: inconclusive when either estimate is missing or the stored-precision
      interval contains 0 (stored_effect_excludes_zero fails: nothing to preserve); survives when
      same_sign and intervals_overlap pass; else changes.
  a bare number: inconclusive when either is missing or non-finite or the stored value is 0;
      survives when number_within_tolerance passes (|quantized - stored| <= 10 % of |stored|);
      else changes.
Each check file records the pre-registration's sha256 and every check's numbers.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlxinterp.core import io
from mlxinterp.core.errors import ResultsError
from mlxinterp.core.specs import parse_spec, parse_variant
from mlxinterp.suite import preregistration

CHECK_DIR = "quant_check"
PREREG = "quant_check"  # the experiment name of the rule's checks in the pre-registration file
VERDICTS = ("survives", "changes", "inconclusive")


def rules() -> dict[str, str]:
    """The two rules in words, with the pre-registered thresholds."""
    c = preregistration.load().checks_for(PREREG)
    tol = c["number_within_tolerance"].threshold
    return {"interval": "inconclusive if either estimate is missing or the stored-precision 95% CI contains 0; "
                        "survives if same sign and the CIs overlap; else changes",
            "number": f"inconclusive if either is missing or the stored value is 0; survives if "
                      f"|quantized - stored| <= {tol:.0%} of |stored|; else changes"}


_INTERVAL_TEXT = re.compile(r"^\s*([-+]?[\d.]+(?:e[-+]?\d+)?)\s*%?\s*\[\s*([-+]?[\d.]+(?:e[-+]?\d+)?)\s*,"
                            r"\s*([-+]?[\d.]+(?:e[-+]?\d+)?)\s*\]", re.IGNORECASE)


def variant_name(bits: str | int) -> str:
    """'4' -> '4bit-g64'; '8bit-g32' as is; anything else is refused with what is allowed."""
    text = str(bits).strip().lower()
    v = parse_variant(f"{text}bit" if text.isdigit() else text)
    if v.bits is None:
        raise ResultsError(f"--quant-check {bits!r} is a float cast, not a quantization",
                           hint="give 4, 8, or e.g. 4bit-g32")
    return v.name


def quantized_spec(spec: str, bits: str | int) -> str:
    """The spec's base model at `bits` (a spec that already has a variant is replaced)."""
    return f"{parse_spec(spec)[0]}@{variant_name(bits)}"


def effect_verdict(stored: Mapping, quantized: Mapping) -> str:
    """The interval rule (module doc), through the pre-registered checks."""
    return effect_checks(stored, quantized)[0]


def effect_checks(stored: Mapping, quantized: Mapping) -> tuple[str, dict]:
    """(verdict, {check: the pre-registration's verdict dict}) for two intervals."""
    a, b = stored, quantized
    if a.get("estimate") is None or b.get("estimate") is None or a.get("low") is None or b.get("low") is None:
        return "inconclusive", {}
    prereg = preregistration.load()
    near_zero = a["low"] if a["estimate"] > 0 else -a["high"] if a["estimate"] < 0 else 0.0
    checks = {"stored_effect_excludes_zero": prereg.check(PREREG, "stored_effect_excludes_zero", near_zero)}
    if checks["stored_effect_excludes_zero"]["verdict"] == "FAIL":
        return "inconclusive", checks
    checks["same_sign"] = prereg.check(PREREG, "same_sign", float(_sign(a["estimate"]) * _sign(b["estimate"])))
    checks["intervals_overlap"] = prereg.check(PREREG, "intervals_overlap",
                                               max(a["low"], b["low"]) - min(a["high"], b["high"]))
    ok = checks["same_sign"]["verdict"] == checks["intervals_overlap"]["verdict"] == "PASS"
    return ("survives" if ok else "changes"), checks


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def number_verdict(stored: float | None, quantized: float | None) -> str:
    """The bare-number rule (module doc), through the pre-registered tolerance."""
    return number_checks(stored, quantized)[0]


def number_checks(stored: float | None, quantized: float | None) -> tuple[str, dict]:
    if stored is None or quantized is None or not (math.isfinite(stored) and math.isfinite(quantized)) or stored == 0:
        return "inconclusive", {}
    check = preregistration.load().check(PREREG, "number_within_tolerance", abs(quantized - stored) / abs(stored))
    return ("survives" if check["verdict"] == "PASS" else "changes"), {"number_within_tolerance": check}


def as_value(v: Any) -> dict | float | None:
    """An interval dict, a float, or None (not a comparable metric)."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, Mapping) and {"estimate", "low", "high"} <= set(v):
        return {k: v[k] for k in ("estimate", "low", "high")}
    if isinstance(v, str) and (m := _INTERVAL_TEXT.match(v)):
        return {"estimate": float(m[1]), "low": float(m[2]), "high": float(m[3])}
    return None


def _at(result: Mapping, path: str) -> Any:
    node: Any = result
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def primary_metrics(result: Mapping) -> dict[str, Any]:
    """label -> comparable value (module doc: `primary` paths, else the summary's numbers and intervals)."""
    if isinstance(result.get("primary"), Mapping):
        return {label: as_value(_at(result, path)) for label, path in result["primary"].items()}
    summary = result.get("summary")
    if not isinstance(summary, Mapping):
        return {}
    return {k: val for k, v in summary.items() if (val := as_value(v)) is not None}


def preregistered_primary(experiment: str | None, result: Mapping) -> dict[str, Any]:
    """{"primary: <path>": value} for the experiment's pre-registered primary metric when its path resolves
    in the result to a number or an interval; {} otherwise (no entry, or a per-language template path)."""
    entry = preregistration.load().primaries.get(experiment or "")
    if not entry:
        return {}
    value = as_value(_at(result, entry["metric"]))
    return {} if value is None else {f"primary: {entry['metric']}": value}


def compare(stored: Mapping, quantized: Mapping, experiment: str | None = None) -> dict[str, dict]:
    """Per primary metric (the pre-registered one first, when it resolves): both values, the rule used and
    the verdict."""
    a = {**preregistered_primary(experiment, stored), **primary_metrics(stored)}
    b = {**preregistered_primary(experiment, quantized), **primary_metrics(quantized)}
    out = {}
    for label, va in a.items():
        vb = b.get(label)
        if isinstance(va, dict) and isinstance(vb, dict):
            verdict, checks = effect_checks(va, vb)
            out[label] = {"stored": va, "quantized": vb, "rule": "interval", "verdict": verdict, "checks": checks}
        else:
            verdict, checks = number_checks(*[x["estimate"] if isinstance(x, dict) else x for x in (va, vb)])
            out[label] = {"stored": va, "quantized": vb, "rule": "number", "verdict": verdict, "checks": checks}
    return out


def write_checks(out: Path, runs: list[dict], pairs: dict[str, str], variant: str) -> list[Path]:
    """For every (spec, its quantized spec) and experiment both ran: compare and write the check file."""
    slug = {r["spec"]: r["model"] for r in runs}
    exps = list(dict.fromkeys(r["experiment"] for r in runs))
    written = []
    for spec, qspec in pairs.items():
        if spec not in slug or qspec not in slug:
            continue
        for exp in exps:
            a, b = out / slug[spec] / exp / "result.json", out / slug[qspec] / exp / "result.json"
            if not (a.exists() and b.exists()):
                continue
            metrics = compare(io.read_json(a)["result"], io.read_json(b)["result"], exp)
            path = out / CHECK_DIR / slug[spec] / f"{exp}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            io.write_json(path, {"experiment": exp, "stored": slug[spec], "quantized": slug[qspec],
                                 "variant": variant, "rules": rules(), "preregistration_sha256": preregistration.sha256(),
                                 "metrics": metrics,
                                 "counts": {v: sum(m["verdict"] == v for m in metrics.values()) for v in VERDICTS}})
            written.append(path)
    return written


def read_checks(out: Path, experiment: str) -> dict[str, dict]:
    """stored-model slug -> check record, for the report."""
    found = {}
    for path in sorted((out / CHECK_DIR).glob(f"*/{experiment}.json")):
        try:
            found[path.parent.name] = io.read_json(path)
        except ResultsError:
            continue
    return found

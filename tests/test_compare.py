"""Comparing a suite run with a reference run (mlxinterp/suite/compare.py, docs/reproducing.md)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlxinterp.core.errors import ResultsError
from mlxinterp.suite import compare as cmp

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("ref, new, ok", [
    ("+0.503 [+0.500, +0.506]", "+0.505 [+0.480, +0.530]", True),   # inside the reference's interval
    ("+0.503 [+0.500, +0.506]", "+0.507 [+0.500, +0.506]", False),  # just outside it
    ("75.0 % [46.8, 91.1] (9/12)", "83.3 % [55.2, 95.3] (10/12)", False),  # inside, but a count moved
    ("75.0 % [46.8, 91.1] (9/12)", "75.0 % [40.0, 95.0] (9/12)", True),   # the new run's bounds are not tested
    ("+0.327 [-2.360, -0.028]", "+0.330 [-2.400, -0.020]", True),   # estimate outside its own interval: within 5 %
    ("+0.327 [-2.360, -0.028]", "+0.100 [-2.360, -0.028]", False),
    (349, 351, True), (349, 380, False), (0.0, 0.0005, True),
    ("survives", "changes", False), (True, False, False), ([0, 1, 2], [0, 1, 2], True), ([0, 1], [0, 2], False),
    ("L17.n1977", "L17.n1977", True), ("0.9..1.6", "0.9..1.62", True),
])
def test_value_rule(ref, new, ok):
    assert (cmp.compare_values(ref, new) is None) == ok


def test_stored_intervals_use_the_interval_rule():
    ref = {"estimate": 0.503, "low": 0.500, "high": 0.506, "n": 80, "method": "bootstrap"}
    assert cmp.compare_values(ref, {**ref, "estimate": 0.505, "low": 0.4, "high": 0.6}) is None
    assert "outside" in cmp.compare_values(ref, {**ref, "estimate": 0.507})
    assert "n 80 -> 40" in cmp.compare_values(ref, {**ref, "n": 40})
    assert cmp.compare_summaries({"share": ref}, {"share": ref}) == ([], 1)  # one entry, not four


def test_text_and_stored_intervals_compare_with_each_other():
    stored = {"estimate": 0.375, "low": 0.12, "high": 0.75, "n": 8, "method": "wilson", "k": 3}
    assert cmp.compare_values("38% [12, 75]", stored) is None  # a percentage in text
    assert cmp.compare_values("38% [12, 75]", {**stored, "estimate": 0.8}) is not None
    assert cmp.compare_values(stored, "+0.400 [+0.100, +0.700]") is None


def test_reference_from_before_stable_keys_is_matched_by_label(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    _write(ref, "a", {"4-bit vs float KL (nats)": "+0.460 [+0.304, +0.645]", "numerics pass": True})
    _write(run, "a", {"quantized_kl": "+0.470 [+0.300, +0.650]", "numerics.pass": True})
    record = json.loads((run / "default" / "a" / "result.json").read_text())
    record["result"]["labels"] = {"quantized_kl": "4-bit vs float KL (nats)", "numerics.pass": "numerics pass"}
    (run / "default" / "a" / "result.json").write_text(json.dumps(record))
    assert cmp.compare_runs(run, ref).experiments[0].status == "reproduced"


def test_speed_entries_are_not_compared():
    reasons, n = cmp.compare_summaries({"loop patches/s": 1.9, "hubs": 3}, {"loop patches/s": 9.0, "hubs": 3})
    assert reasons == [] and n == 1


def _write(root: Path, exp: str, summary: dict, n: int = 4, spec: str = "default") -> None:
    path = root / "default" / exp / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({
        "format_version": 1, "status": "complete", "experiment": exp, "config": {"n": n}, "seed": 0,
        "model": {"spec": spec, "weights_hash": "abc"}, "result": {"summary": summary},
        "timings": {"seconds": 60.0}}))


def test_runs_compare_per_experiment_and_say_why(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    _write(ref, "a", {"x [95% CI]": "+1.00 [+0.90, +1.10]"})
    _write(run, "a", {"x [95% CI]": "+1.05 [+0.95, +1.15]"})
    _write(ref, "b", {"verdict": "survives", "k": 3})
    _write(run, "b", {"verdict": "changes", "k": 3})
    _write(ref, "c", {"k": 3})
    _write(run, "c", {"k": 3}, n=8)  # another config: not comparable
    _write(run, "d", {"k": 1})  # no reference
    c = cmp.compare_runs(run, ref)
    status = {e.experiment: e.status for e in c.experiments}
    assert status == {"a": "reproduced", "b": "differs", "c": "not comparable", "d": "no reference"}
    line = c.line()
    assert line.startswith("reproduced: 1/2 experiments") and "differs: b because 'verdict'" in line
    assert "not comparable: c (config.n 4 (now 8))" in line and "no reference for: d" in line


def test_empty_run_and_missing_reference_are_clear_errors(tmp_path):
    with pytest.raises(ResultsError, match="is not a directory"):
        cmp.compare_runs(tmp_path, tmp_path / "nope")
    with pytest.raises(ResultsError, match="no finished experiments"):
        cmp.compare_runs(tmp_path, tmp_path)


def test_committed_reference_reproduces_itself():
    c = cmp.compare_runs(ROOT / "results", ROOT / "results")
    assert c.compared and all(e.status == "reproduced" for e in c.compared)


def test_cli_compare_json(tmp_path, capsys):
    from mlxinterp.cli import main

    _write(tmp_path / "ref", "a", {"k": 3})
    _write(tmp_path / "run", "a", {"k": 3})
    main(["compare", str(tmp_path / "run"), "--reference", str(tmp_path / "ref"), "--json"])
    d = json.loads(capsys.readouterr().out)
    assert d["experiments"][0]["status"] == "reproduced" and d["line"].startswith("reproduced: 1/1")

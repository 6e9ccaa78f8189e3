"""The depth-vs-size table (the cross-model plan's Phase 4): one row per model in the output dir, cells from
the studies' results, recomputed here from their per-item records."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mlxinterp import suite

# Whole suite runs and processes of their own: in the second pytest process, beside the in-process tests
# (tests/background.py), which would otherwise run alone on one core for their last minutes.
pytestmark = pytest.mark.offload


def _result(tmp_path, slug: str, exp: str) -> dict:
    return json.loads((tmp_path / slug / exp / "result.json").read_text())["result"]


def test_table_fills_in_as_models_run(tiny_dirs, tmp_path):
    first = str(tiny_dirs[("llama", None)])
    suite.run_all([first], only="twohop,depth_vs_size", out=tmp_path, quick=True)
    slug1 = next(p.name for p in tmp_path.iterdir() if p.is_dir())
    one = _result(tmp_path, slug1, "depth_vs_size")
    assert len(one["table"]) == 1 and one["summary"]["models"] == 1
    assert "Qwen/Qwen2.5-7B" in one["note"]  # says which models would fill it
    assert (tmp_path / slug1 / "depth_vs_size" / "depth_vs_size_table.png").exists()

    second = str(tiny_dirs[("gemma3_text", None)])
    suite.run_all([second], only="twohop,depth_vs_size", out=tmp_path, quick=True)
    slug2 = next(p.name for p in tmp_path.iterdir() if p.is_dir() and p.name != slug1)
    two = _result(tmp_path, slug2, "depth_vs_size")
    assert sorted(r["model"] for r in two["table"]) == sorted([slug1, slug2]) and two["note"] is None
    for row in two["table"]:  # the two-hop cell recomputed from that model's per-query records
        th = _result(tmp_path, row["model"], "twohop")
        entries = [q["entry"]["bridge"] for q in th["queries"] if q["entry"]["bridge"] is not None]
        want = 100 * np.mean(entries) / (th["n_layers"] - 1) if entries else None
        got = row["depth_pct"]["two-hop bridge"]
        assert (got is None and want is None) or got == pytest.approx(want)
        assert row["depth_pct"]["refusal"] is None and row["source"]["refusal"] is None  # not run: empty cell

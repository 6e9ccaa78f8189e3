"""The layer probe's statistics: paraphrase consistency over facts, the report-split probe, and a quick
run on a tiny model whose headline numbers are recomputed from its per-prompt records."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mlxinterp import suite
from mlxinterp.studies import layer_probe as LP


def _row(country: str, template: int, final_rank: int, ranks=None) -> dict:
    ranks = ranks or [5, 3, final_rank]
    return {"country": country, "template": template, "normed": {"rank": ranks}}


def test_consistency_counts_facts_not_prompts():
    rows = []
    for c, right in (("A", (1, 1, 1)), ("B", (1, 0, 0)), ("C", (0, 0, 0)), ("D", (1, 1, 0))):
        rows += [_row(c, t, 0 if r else 4) for t, r in enumerate(right)]
    cons = LP._consistency(rows, [(c, "x") for c in "ABCD"])
    assert cons["n_facts"] == 4
    assert cons["all_correct"]["k"] == 1 and cons["all_correct"]["n"] == 4  # only A
    assert cons["agree"]["k"] == 2  # A (all right) and C (all wrong)
    assert [cons["by_template"][str(t)]["k"] for t in range(3)] == [3, 2, 1]
    d = cons["template_differences"]["0-2"]  # per fact: A 0, B +1, C 0, D +1
    assert d["estimate"] == pytest.approx(0.5) and d["n"] == 4


def test_report_probe_separates_a_linear_label_and_its_control_does_not():
    rng = np.random.default_rng(0)
    n_facts, d = 160, 8
    facts = [f"f{i // 3}" for i in range(3 * n_facts)]
    y = np.repeat(rng.integers(0, 2, n_facts), 3)
    X = rng.normal(size=(len(y), d)) + 3.0 * y[:, None] * np.eye(d)[0]  # the label is coordinate 0
    types = [(i,) for i in range(len(y))]  # every prompt its own type: the control cannot generalise
    cfg = LP.LayerProbeConfig(probe_steps=200)
    rep = LP.report_probe(X, y, types, facts, np.ones(len(y), bool), cfg)
    right, ctrl = np.array(rep["probe_right"]), np.array(rep["control_right"])
    assert rep["test_acc"]["estimate"] == pytest.approx(right.mean()) and right.mean() > 0.75
    assert rep["selectivity"]["estimate"] == pytest.approx((right - ctrl).mean())
    assert rep["selectivity"]["low"] > 0 and rep["selectivity"]["n_clusters"] == len({facts[i] for i in rep["test_prompts"]})
    assert not {facts[i] for i in rep["test_prompts"]} & {facts[i] for i in set(range(len(y))) - set(rep["test_prompts"])}


def test_quick_run_on_a_tiny_model(tiny_dirs, tmp_path):
    suite.run_all([str(tiny_dirs[("gemma3_text", None)])], only="layer_probe", out=tmp_path, quick=True)
    rec = json.loads(next(tmp_path.glob("*/layer_probe/result.json")).read_text())
    r = rec["result"]
    per = r["per_prompt"]
    assert len(per) == 3 * r["n_facts"] == 3 * 4  # the quick profile: 4 facts x 3 paraphrases
    correct = [float(p["final_rank"] == 0) for p in per]
    assert r["final_top1_correct"]["estimate"] == pytest.approx(np.mean(correct))
    assert r["final_top1_correct"]["n"] == len(per) and r["final_top1_correct"]["n_clusters"] == r["n_facts"]
    for t in range(3):
        assert r["paraphrase_consistency"]["by_template"][str(t)]["k"] == sum(
            p["final_rank"] == 0 for p in per if p["template"] == t)
    sel, rep = set(r["splits"]["selection_facts"]), set(r["splits"]["report_facts"])
    assert sel and rep and not sel & rep and sel | rep == {p["country"] for p in per}
    assert r["modes"]["raw"]["prompts"] == r["n_facts"]  # the raw lens runs on the first template only

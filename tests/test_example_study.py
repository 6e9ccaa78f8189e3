"""The example in docs/adding-an-experiment.md is a real study: it runs through the suite on a tiny model,
and its headline numbers equal an independent computation from its own per-item records."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
from rich.console import Console

from mlxinterp.analysis.stats import bootstrap_ci, proportion_ci
from mlxinterp.suite import register_builtin, registry, run_all

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "next_token_confidence.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("next_token_confidence_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)  # registers the experiment
    return module


def test_example_study_runs_through_the_suite_and_its_numbers_check(tiny_hooked, tmp_path, monkeypatch):
    register_builtin()  # the package's studies first; the example then goes into a copy dropped after the test
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    example = _load_example()
    hm = tiny_hooked("llama", None)
    run_all(["tiny"], only="next_token_confidence", out=tmp_path, load_fn=lambda spec: hm,
            console=Console(file=open("/dev/null", "w")))
    record = json.loads((tmp_path / hm.info.slug / "next_token_confidence" / "result.json").read_text())
    res = record["result"]
    assert record["status"] == "complete" and set(res["summary"]) == set(res["labels"]) == {"top1_prob", "penultimate_agrees"}
    rows = res["rows"]
    assert len(rows) == len(example.PROMPTS)
    # independent recomputation: the top-1 probability straight from the logits, in numpy
    logits = np.array(hm(rows[0]["prompt"])[0, -1], np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    assert int(p.argmax()) == rows[0]["top_token"] and abs(p.max() - rows[0]["top_prob"]) < 1e-5
    probs = [r["top_prob"] for r in rows]
    assert res["summary"]["top1_prob"] == json.loads(json.dumps(bootstrap_ci(probs, seed=0).to_dict()))
    agree = sum(r["penultimate_agrees"] for r in rows)
    assert res["summary"]["penultimate_agrees"]["k"] == agree
    assert res["summary"]["penultimate_agrees"] == json.loads(json.dumps(proportion_ci(agree, len(rows)).to_dict()))
    assert record["figures"] == ["next_token_confidence.png"]

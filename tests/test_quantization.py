"""The quantization study: odd-token rule, and a whole run on a tiny model (float vs 8-bit vs 4-bit)."""
from __future__ import annotations

import json

import pytest

from mlxinterp.studies.quantization import VERDICT_RULES, is_odd_token
from mlxinterp.suite import run_all


@pytest.mark.parametrize("token, odd", [
    (" Paris", False), (" the", False), ("ing", False), (" houſe", True), ("ңү", True), (" 巴黎", True),
    ("ab", True), (" a", False), ("12", False), ("þ", True), (",", False),
])
def test_odd_token_rule(token, odd):
    assert is_odd_token(token) is odd


def test_quantization_study_on_a_tiny_model(tiny_dirs, tmp_path):
    model = str(tiny_dirs[("qwen3", None)])
    run_all([model], only="quantization", out=tmp_path)
    res = json.loads(next(tmp_path.glob("*/quantization/result.json")).read_text())["result"]
    assert set(res["verdicts"]) == {"8bit", "4bit"}
    for v in res["variants"]:
        assert set(v["verdict"]) == set(VERDICT_RULES)
        assert set(v["verdict"].values()) <= {"survives", "changes", "inconclusive"}
        nt = v["next_token"]
        assert nt["top1_agreement"]["n"] == 6 and 0 <= nt["top1_agreement"]["low"] <= nt["top1_agreement"]["high"] <= 1
        assert len(v["directions"]["refusal_cosine_by_layer"]) == 4
        assert all(-1.0001 <= c <= 1.0001 for c in v["directions"]["refusal_cosine_by_layer"])
    eight = next(v for v in res["variants"] if v["variant"] == "8bit")
    four = next(v for v in res["variants"] if v["variant"] == "4bit")
    assert eight["next_token"]["kl"]["estimate"] < four["next_token"]["kl"]["estimate"]  # more bits, closer to float
    assert (tmp_path / next(tmp_path.glob("*/quantization")).relative_to(tmp_path) / "quantization.png").exists()


def test_ci_verdicts():
    from mlxinterp.studies.quantization import _ci_verdict, _steering_verdict

    assert _ci_verdict({"low": 0.95, "high": 1.0}, 0.9) == "survives"
    assert _ci_verdict({"low": 0.4, "high": 0.85}, 0.9) == "changes"
    assert _ci_verdict({"low": 0.6, "high": 0.99}, 0.9) == "inconclusive"
    null = {"estimate": 0.01, "low": -0.1, "high": 0.1}
    assert _steering_verdict(null, null) == "inconclusive"
    pos = {"estimate": 0.2, "low": 0.1, "high": 0.3}
    assert _steering_verdict(pos, {"estimate": 0.25, "low": 0.15, "high": 0.35}) == "survives"
    assert _steering_verdict(pos, {"estimate": -0.2, "low": -0.3, "high": -0.1}) == "changes"

"""Confidence intervals the studies report: degenerate samples must not claim certainty."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mlxinterp.tasks.behaviour import paired_effect
from mlxinterp.analysis.stats import bootstrap_ci, paired_binary_diff_ci, proportion_ci


def test_no_discordant_pair_gives_the_wilson_bound_not_zero_width():
    ci = paired_binary_diff_ci(np.zeros(24))
    bound = proportion_ci(0, 24)["high"]
    assert ci["estimate"] == 0 and ci["low"] == -bound and ci["high"] == bound and 0.13 < bound < 0.15
    assert paired_effect([0.0] * 24, [0.0] * 24) == ci  # accuracy lifts route here


def test_discordant_pairs_use_the_bootstrap_and_bracket_the_estimate():
    d = np.array([1, 0, 0, 1, -1, 0, 1, 0] * 3, float)
    ci = paired_binary_diff_ci(d, seed=1)
    assert ci == bootstrap_ci(d, seed=1) and ci["low"] < ci["estimate"] < ci["high"]


def test_non_binary_differences_are_refused():
    with pytest.raises(ValueError, match="must be -1, 0 or 1"):
        paired_binary_diff_ci([0.5, 0.0])
    assert paired_effect([0.5, 1.5], [0.0, 1.0])["estimate"] == pytest.approx(0.5)  # scores keep the bootstrap


# ------------------------------------------------------------ the interval value


def test_intervals_carry_method_and_n_and_read_like_their_stored_form():
    from mlxinterp.core import io
    from mlxinterp.core.interval import Interval, format_interval, is_interval

    c = bootstrap_ci([1.0, 2.0, 3.0, 4.5], seed=0)
    p = proportion_ci(3, 10)
    assert isinstance(c, Interval) and c.method == "t-interval" and c.n == 4 and c["low"] == c.low
    assert p.method == "Wilson" and p.k == 3 and dict(p)["k"] == 3 and "warning" not in p
    stored = json.loads(io.dumps({"c": c}))["c"]
    assert stored == {"estimate": 2.625, "low": c.low, "high": c.high, "n": 4, "method": "t-interval",
                      "warning": "n < 20: t-interval"}
    assert Interval.from_dict(stored) == c and is_interval(stored) and is_interval(c) and not is_interval({"n": 1})
    # one renderer for fresh and reloaded values alike
    assert format_interval(stored, ".2f") == c.text(".2f") == f"2.62 [{c.low:.2f}, {c.high:.2f}]"
    assert format_interval(p, ".1f", pct=True, counts=True) == "30.0 % [10.8, 60.3] (3/10)"
    assert format_interval(proportion_ci(0, 0), counts=True) == "n/a (n=0)"


def test_summary_keys_are_identifiers_and_labels_reach_the_report():
    from mlxinterp.core.errors import ResultsError
    from mlxinterp.suite.report import key_numbers
    from mlxinterp.suite.summary import Summary

    s = Summary()
    s.add("mlp_share", "MLP share, 40 prompts [95% CI]", proportion_ci(4, 40))
    s.add("fr.add_effect", "fr: add effect", 0.5)
    with pytest.raises(ResultsError, match="not a stable identifier"):
        s.add("MLP share (top-50)", "x", 1)
    with pytest.raises(ResultsError, match="used twice"):
        s.add("mlp_share", "again", 1)
    shown = key_numbers(s.to_result())
    assert shown == {"MLP share, 40 prompts [95% CI]": "0.1 [0.03958, 0.2305] (4/40)", "fr: add effect": 0.5}

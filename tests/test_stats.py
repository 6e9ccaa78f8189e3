"""Confidence intervals the studies report: degenerate samples must not claim certainty."""
from __future__ import annotations

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

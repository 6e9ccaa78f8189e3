"""Sycophancy and confidence directions: layer chosen on selection pairs, report-pair steering effects vs a random direction, linear probes (Hewitt & Liang) at every layer.

    python experiments/directions.py [--model default] [--model DIR ...] [--out results] [--seed 0] [--quick]

results/<model>/directions/ (result.json + figures); same files and resume as `mlxinterp run-suite --only directions`.
Defaults are the full-size run; --quick runs the small smoke-test profile.
"""
from __future__ import annotations

from _cli import main

if __name__ == "__main__":
    main("directions", __doc__)

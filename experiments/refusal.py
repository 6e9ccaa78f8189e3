"""Refusal direction (Arditi et al. 2024): diff of means at post-instruction positions, layer chosen on selection pairs, mean-centred ablation, report-pair effects vs a random direction.

    python experiments/refusal.py [--model default] [--model DIR ...] [--n N] [--out results] [--seed 0] [--quick]

results/<model>/refusal/ (result.json + figures); same files and resume as `mlxinterp run-suite --only refusal`.
Defaults are the full-size run; --quick runs the small smoke-test profile.
"""
from __future__ import annotations

from _cli import main

if __name__ == "__main__":
    main("refusal", __doc__)

"""Function vectors (Todd et al. 2024): AIE of every head, v1/v2/v3 zero-shot lift by layer, unrelated contexts.

    python experiments/function_vectors.py [--model default] [--model DIR ...] [--n N] [--out results] [--seed 0] [--quick]

results/<model>/function_vectors/ (result.json + figures); same files and resume as `mlxinterp run-suite --only function_vectors`.
Defaults are the full-size run; --quick runs the small smoke-test profile.
"""
from __future__ import annotations

from _cli import main

if __name__ == "__main__":
    main("function_vectors", __doc__)

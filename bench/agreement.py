"""Numerical agreement with transformers (per-layer hidden states, logits, top-1).

    python bench/agreement.py [options of `mlxinterp bench agreement --help`]

Writes bench/results/agreement.json (the same as `mlxinterp bench agreement --save bench/results`).
"""
from __future__ import annotations

import sys
from pathlib import Path

from mlxinterp.platform import ensure_fast_blas

if __name__ == "__main__":
    ensure_fast_blas()  # OpenBLAS under MLX on Linux (re-executes this script once)
    from mlxinterp.cli import main

    main(["bench", "agreement", "--save", str(Path(__file__).resolve().parent / "results"), *sys.argv[1:]])

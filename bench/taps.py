"""Tap overhead vs bare mlx-lm (identity tap / capture on every hook point).

    python bench/taps.py [options of `mlxinterp bench taps --help`]

Writes bench/results/taps.json (the same as `mlxinterp bench taps --save bench/results`).
"""
from __future__ import annotations

import sys
from pathlib import Path

from mlxinterp.platform import ensure_fast_blas

if __name__ == "__main__":
    ensure_fast_blas()  # OpenBLAS under MLX on Linux (re-executes this script once)
    from mlxinterp.cli import main

    main(["bench", "taps", "--save", str(Path(__file__).resolve().parent / "results"), *sys.argv[1:]])

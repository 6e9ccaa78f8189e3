"""Peak RSS of a fresh process: loaded, forward, capture on every hook point.

    python bench/memory.py [options of `mlxinterp bench memory --help`]

Writes bench/results/memory.json (the same as `mlxinterp bench memory --save bench/results`).
"""
from __future__ import annotations

import sys
from pathlib import Path

from mlxinterp.platform import ensure_fast_blas

if __name__ == "__main__":
    ensure_fast_blas()  # OpenBLAS under MLX on Linux (re-executes this script once)
    from mlxinterp.cli import main

    main(["bench", "memory", "--save", str(Path(__file__).resolve().parent / "results"), *sys.argv[1:]])

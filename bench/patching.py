"""Activation-patching sweep: mlxinterp vs one-forward-per-patch loops, nnsight and TransformerLens.

    python bench/patching.py [options of `mlxinterp bench patching --help`]

Writes bench/results/patching.json (the same as `mlxinterp bench patching --save bench/results`).
"""
from __future__ import annotations

import sys
from pathlib import Path

from mlxinterp.platform import ensure_fast_blas

if __name__ == "__main__":
    ensure_fast_blas()  # OpenBLAS under MLX on Linux (re-executes this script once)
    from mlxinterp.cli import main

    main(["bench", "patching", "--save", str(Path(__file__).resolve().parent / "results"), *sys.argv[1:]])

"""Forward time under each interposable BLAS and mx.compile vs torch CPU; run_with_cache vs TransformerLens.

    python bench/forward.py [options of `mlxinterp bench forward --help`]

Writes bench/results/forward.json (the same as `mlxinterp bench forward --save bench/results`).
"""
from __future__ import annotations

import sys
from pathlib import Path

from mlxinterp.platform import ensure_fast_blas

if __name__ == "__main__":
    ensure_fast_blas()  # OpenBLAS under MLX on Linux (re-executes this script once)
    from mlxinterp.cli import main

    main(["bench", "forward", "--save", str(Path(__file__).resolve().parent / "results"), *sys.argv[1:]])

"""Steered generation tokens/s vs mlx-lm's stream_generate.

    python bench/generate.py [options of `mlxinterp bench generate --help`]

Writes bench/results/generate.json (the same as `mlxinterp bench generate --save bench/results`).
"""
from __future__ import annotations

import sys
from pathlib import Path

from mlxinterp.platform import ensure_fast_blas

if __name__ == "__main__":
    ensure_fast_blas()  # OpenBLAS under MLX on Linux (re-executes this script once)
    from mlxinterp.cli import main

    main(["bench", "generate", "--save", str(Path(__file__).resolve().parent / "results"), *sys.argv[1:]])

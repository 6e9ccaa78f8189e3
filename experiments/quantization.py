"""Does quantization change the science? Float vs MLX 8-bit / 4-bit variants of one model.

    python experiments/quantization.py [--model default] [--n 6] [--out results]
On Metal, raise --n (4-bit matmuls are slow on MLX's CPU backend).
"""
from __future__ import annotations

import argparse

from mlxinterp.platform import ensure_fast_blas
from mlxinterp.suite import run_all

if __name__ == "__main__":
    ensure_fast_blas()
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", action="append", help="model spec (repeatable); default: default")
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--out", default="results")
    a = p.parse_args()
    run_all(a.model or ["default"], only="quantization", out=a.out, n=a.n)

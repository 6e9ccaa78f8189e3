"""Phase-0 validation (seed 004): five sanity checks, written under results/<model>/validation/.

    python experiments/validate.py [--model default] [--out results]
"""
from __future__ import annotations

import argparse

from mlxinterp.platform import ensure_fast_blas
from mlxinterp.suite import run_all

if __name__ == "__main__":
    ensure_fast_blas()  # Linux CPU: re-run once with OpenBLAS preloaded (no-op on a Mac)
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", action="append", help="model spec (repeatable); default: default")
    p.add_argument("--out", default="results")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    run_all(a.model or ["default"], only="validation", out=a.out, seed=a.seed)

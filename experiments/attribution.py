"""Attribution (issue 8): gradient x input from the top-1 logit to MLP neurons and input tokens; backbone neurons.

    python experiments/attribution.py [--model default] [--out results] [--n N]

Default n is the ~12-minute-suite size; the full run is --n 30.
"""
from __future__ import annotations

import argparse

from mlxinterp.platform import ensure_fast_blas
from mlxinterp.suite import run_all

if __name__ == "__main__":
    ensure_fast_blas()  # Linux CPU: re-run once with OpenBLAS preloaded (no-op on a Mac)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help="model spec (repeatable); default: default")
    p.add_argument("--out", default="results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=None, help="prompts/items per category (full run: 30)")
    a = p.parse_args()
    run_all(a.model or ["default"], only="attribution", out=a.out, seed=a.seed, n=a.n)

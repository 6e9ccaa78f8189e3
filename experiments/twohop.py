"""Two-hop reasoning through the logit lens (issue 5): single-hop and two-hop accuracy, first layers where
bridge and answer enter the lens top-30, gaps, sequential share; results/<model>/twohop/.

    python experiments/twohop.py [--model default] [--model DIR ...] [--n N] [--out results] [--seed 0]
"""
from __future__ import annotations

import argparse

from mlxinterp.platform import ensure_fast_blas
from mlxinterp.suite import run_all

if __name__ == "__main__":
    ensure_fast_blas()  # Linux CPU: re-run once with OpenBLAS preloaded (no-op on a Mac)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help="model spec (repeatable); default: default")
    p.add_argument("--n", type=int, default=None, help="queries (default: the experiment's config)")
    p.add_argument("--out", default="results")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    run_all(a.model or ["default"], only="twohop", out=a.out, n=a.n, seed=a.seed)

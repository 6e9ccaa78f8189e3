"""Cross-prompt patching (issue 5): the bridge's representation from a one-hop prompt patched into the
two-hop prompt, layer x position, with a foil-bridge control and a batched-vs-loop speed factor.

    python experiments/crossprompt.py [--model default] [--model DIR ...] [--n N] [--out results] [--seed 0]
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
    run_all(a.model or ["default"], only="crossprompt", out=a.out, n=a.n, seed=a.seed)

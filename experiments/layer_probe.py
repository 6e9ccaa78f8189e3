"""Layer probe (issue 8): logit lens per layer (raw vs normed), attractors, answer layer across paraphrases, temperature, trajectories.

    python experiments/layer_probe.py [--model default] [--out results] [--n N]

Default n is the ~12-minute-suite size; the full run is --n 79.
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
    p.add_argument("--n", type=int, default=None, help="prompts/items per category (full run: 79)")
    a = p.parse_args()
    run_all(a.model or ["default"], only="layer_probe", out=a.out, seed=a.seed, n=a.n)

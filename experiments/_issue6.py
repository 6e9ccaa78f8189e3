"""Shared command line of the issue-6 scripts (refusal, crosslingual, function_vectors, directions).

    --model M (repeatable)  --n N  --out DIR  --seed S  --no-resume
    --set key=value (repeatable; a config override, as in subspace_study.py)
    --full  the documented full-run size (a different config, so use another --out or --no-resume)

After the run, results/<model>/<experiment>/depth_vs_size.png compares models when several have results.
"""
from __future__ import annotations

import argparse

from mlxinterp import suite
from mlxinterp.platform import ensure_fast_blas


def main(name: str, doc: str, full: dict) -> None:
    ensure_fast_blas()  # Linux CPU: re-run once with OpenBLAS preloaded (no-op on a Mac)
    from subspace_study import _override  # the one --set implementation (experiments/ is on sys.path)

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help="model spec (repeatable); default: default")
    p.add_argument("--n", type=int, default=None, help="items (see the experiment's config for what n counts)")
    p.add_argument("--out", default="results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    p.add_argument("--full", action="store_true", help=f"full-run size: {full}")
    a = p.parse_args()
    sets = [f"{k}={v!r}" for k, v in full.items()] if a.full else []
    if sets or a.set:
        _override([name], sets + a.set)
    suite.run_all(a.model or ["default"], only=name, out=a.out, n=a.n, seed=a.seed, resume=not a.no_resume)

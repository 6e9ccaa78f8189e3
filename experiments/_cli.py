"""The one command line every script in experiments/ shares (each script is a thin wrapper).

    --model M (repeatable; default: default)   --n N   --out DIR   --seed S   --no-resume
    --set key=value or exp.key=value (repeatable; a config override, exactly as `mlxinterp run-suite --set`)
    --quant-check BITS  also run at that MLX quantization (4, 8, 4bit-g32) and give a verdict per primary metric
    --quick  the experiment's quick profile (small sizes for a smoke test; a different config: use another --out)

A script run and `mlxinterp run-suite --only NAME` write the same files and resume the same way.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

from mlxinterp import suite
from mlxinterp.suite.runner import DEFAULT_OUT
from mlxinterp.core.platform import ensure_fast_blas


def main(names: str | Sequence[str], doc: str) -> None:
    """Parse the shared flags and run `names` (one experiment or several) through `suite.run_all`."""
    ensure_fast_blas()  # Linux CPU: re-run once with OpenBLAS preloaded (no-op on a Mac)
    names = [names] if isinstance(names, str) else list(names)
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help="model spec (repeatable); default: default")
    if len(names) > 1:
        p.add_argument("--only", default=",".join(names), help="comma-separated subset of " + ", ".join(names))
    p.add_argument("--n", type=int, default=None, help="items (see the experiment's config for what n counts)")
    p.add_argument("--out", default=str(DEFAULT_OUT))  # never the committed reference results/ by default
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    p.add_argument("--quant-check", default=None, metavar="BITS",
                   help="also run at this MLX quantization (4, 8, 4bit-g32, ...); verdict per primary metric")
    p.add_argument("--quick", action="store_true", help="small smoke-test sizes (defaults are the full-size run)")
    a = p.parse_args()
    chosen = [n.strip() for n in getattr(a, "only", ",".join(names)).split(",") if n.strip()]
    if bad := [n for n in chosen if n not in names]:
        p.error(f"unknown experiment(s) {bad}; choose from {', '.join(names)}")
    suite.run_all(a.model or ["default"], only=chosen, out=a.out, n=a.n, seed=a.seed, resume=not a.no_resume,
                  sets=a.set, quant_check=a.quant_check, quick=a.quick)

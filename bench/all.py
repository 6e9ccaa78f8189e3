"""Every benchmark in one run, then the table in bench/README.md.

    python bench/all.py            # ~30-60 min on 2 cores; results in bench/results/*.json
    python bench/all.py --quick    # smoke run (1 round, no loops) into /tmp/bench-quick, README untouched

The same as `mlxinterp bench all`.
"""
from __future__ import annotations

import sys
from pathlib import Path

from mlxinterp.platform import ensure_fast_blas

if __name__ == "__main__":
    ensure_fast_blas()
    from mlxinterp.cli import main

    here = Path(__file__).resolve().parent
    quick = "--quick" in sys.argv[1:]
    out = Path("/tmp/bench-quick") if quick else here / "results"
    main(["bench", "all", "--out", str(out), "--readme", str(here / "README.md"), *sys.argv[1:]])

"""Tap overhead vs bare mlx-lm, in one process (ratios): writes bench/results/taps-<model>.json.

    python bench/taps.py [--model default] [--rounds 7]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mlxinterp.platform import ensure_fast_blas

if __name__ == "__main__":
    ensure_fast_blas()
    from mlxinterp.bench import bench_taps
    from mlxinterp.hooks import load
    from mlxinterp.io import write_json
    from mlxinterp.platform import describe

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="default")
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args()
    hm = load(a.model)
    res = {**bench_taps(hm, rounds=a.rounds), "model": hm.info.to_dict(), "platform": describe()}
    path = write_json(Path(__file__).parent / "results" / f"taps-{hm.info.slug}.json", res)
    print(f"noop_overhead {res['noop_overhead']:+.2%}  capture_all_overhead {res['capture_all_overhead']:+.2%} -> {path}")

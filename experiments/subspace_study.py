"""Cross-lingual subspace study (issue 7, seed 001): the five experiments, under results/<model>/<experiment>/.

    python experiments/subspace_study.py                         # all five, suite defaults (< 10 min, default model)
    python experiments/subspace_study.py --only subspace_patching --set n=48 --set max_tokens=40 --out results-full
    python experiments/subspace_study.py --only ard_mmd --set steps=1000 --set "layer_fracs=(0.25,0.5,0.75,0.9143,0.9429)"

`--set key=value` overrides a config field of the selected experiments (values are Python literals);
a run with overrides has a different config fingerprint, so give it its own --out (or --no-resume).
Same files and resume behaviour as `mlxinterp run-suite --only ...`.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses

from mlxinterp import suite
from mlxinterp.errors import MlxInterpError
from mlxinterp.platform import ensure_fast_blas

EXPERIMENTS = ("subspace_structure", "subspace_patching", "update_decomposition", "ard_mmd", "linear_bridge")


def _override(names: list[str], sets: list[str]) -> None:
    """Re-register the chosen experiments with config defaults replaced by --set values."""
    values = {}
    for s in sets:
        key, sep, raw = s.partition("=")
        if not sep:
            raise MlxInterpError(f"--set {s!r} is not key=value")
        try:
            values[key.strip()] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raise MlxInterpError(f"--set {s!r}: {raw!r} is not a Python literal (numbers, strings in quotes, tuples)") from None
    suite.register_builtin()
    for name in names:
        exp = suite._REGISTRY[name]
        fields = {f.name for f in dataclasses.fields(exp.config_cls)}
        mine = {k: v for k, v in values.items() if k in fields}
        if mine:
            cls = dataclasses.make_dataclass(exp.config_cls.__name__, [(k, type(v), dataclasses.field(default=v)) for k, v in mine.items()],
                                             bases=(exp.config_cls,))
            suite._REGISTRY[name] = dataclasses.replace(exp, config_cls=cls)
    unknown = set(values) - {f.name for n in names for f in dataclasses.fields(suite._REGISTRY[n].config_cls)}
    if unknown:
        raise MlxInterpError(f"--set {sorted(unknown)}: no such config field in {names}")


if __name__ == "__main__":
    ensure_fast_blas()  # Linux CPU: re-run once with OpenBLAS preloaded (no-op on a Mac)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help="model spec (repeatable); default: default")
    p.add_argument("--only", default=",".join(EXPERIMENTS), help="comma-separated subset of " + ", ".join(EXPERIMENTS))
    p.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    p.add_argument("--out", default="results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true")
    a = p.parse_args()
    names = [n.strip() for n in a.only.split(",") if n.strip()]
    bad = [n for n in names if n not in EXPERIMENTS]
    if bad:
        p.error(f"unknown experiment(s) {bad}; choose from {', '.join(EXPERIMENTS)}")
    _override(names, a.set)
    suite.run_all(a.model or ["default"], only=names, out=a.out, seed=a.seed, resume=not a.no_resume)

"""Cross-lingual subspace study(the Qwen2.5-3B subspace notes): the five experiments, under results/<model>/<experiment>/.

    python experiments/subspace_study.py                         # all five, suite defaults (< 10 min, default model)
    python experiments/subspace_study.py --only subspace_patching --set n=48 --set max_tokens=40 --out results-full
    python experiments/subspace_study.py --only ard_mmd --set steps=1000 --set "layer_fracs=(0.25,0.5,0.75,0.9143,0.9429)"

`--set key=value` (or exp.key=value) overrides a config field of the selected experiments, exactly as
`mlxinterp run-suite --set` does (values are Python literals);
a run with overrides has a different config fingerprint, so give it its own --out (or --no-resume).
Same files and resume behaviour as `mlxinterp run-suite --only ...`.
"""
from __future__ import annotations

from _cli import main

EXPERIMENTS = ("subspace_structure", "subspace_patching", "update_decomposition", "ard_mmd", "linear_bridge")

if __name__ == "__main__":
    main(EXPERIMENTS, __doc__)

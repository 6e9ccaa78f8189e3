"""Cross-lingual subspace study(the Qwen2.5-3B subspace notes): the five experiments, under results/<model>/<experiment>/.

    python experiments/subspace_study.py                         # all five at full size (all 48 pairs)
    python experiments/subspace_study.py --quick                 # small sizes: a smoke test
    python experiments/subspace_study.py --only subspace_patching --set ot_everywhere=True --set max_tokens=40
    python experiments/subspace_study.py --only ard_mmd --set steps=1000 --set "layer_fracs=(0.25,0.5,0.75,0.9143,0.9429)"

Full size is slow: subspace_patching generates 23 rows x 12 tokens for each of 48 pairs (the
energy-matched and uniform random-subspace controls are 9 of those rows), and ard_mmd fits 30
lengthscale vectors on 24 selection pairs.

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

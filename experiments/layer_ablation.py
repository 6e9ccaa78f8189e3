"""Layer ablation: zero/mean ablation of each layer, KL and behavioural change per category; steerability map.

    python experiments/layer_ablation.py [--model default] [--out results] [--n N]

Defaults are the full-size run; --quick runs the small smoke-test profile.
"""
from __future__ import annotations

from _cli import main

if __name__ == "__main__":
    main("layer_ablation", __doc__)

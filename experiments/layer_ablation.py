"""Layer ablation: zero/mean ablation of each layer, KL and behavioural change per category; steerability map.

    python experiments/layer_ablation.py [--model default] [--out results] [--n N]

Default n is the ~12-minute-suite size; the full run is --n 30.
"""
from __future__ import annotations

from _cli import main

if __name__ == "__main__":
    main("layer_ablation", __doc__)

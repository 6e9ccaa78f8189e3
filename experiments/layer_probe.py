"""Layer probe: logit lens per layer (raw vs normed), attractors, answer layer across paraphrases, temperature, trajectories.

    python experiments/layer_probe.py [--model default] [--out results] [--n N]

Defaults are the full-size run; --quick runs the small smoke-test profile.
"""
from __future__ import annotations

from _cli import main

if __name__ == "__main__":
    main("layer_probe", __doc__)

"""Steering sweep: style ActAdd families x strength x layer vs a logits processor; style, fluency, bleed, collapse.

    python experiments/steering_sweep.py [--model default] [--out results] [--n N]

Defaults are the full-size run; --quick runs the small smoke-test profile.
"""
from __future__ import annotations

from _cli import main

if __name__ == "__main__":
    main("steering_sweep", __doc__)

"""Attribution: gradient x input from the top-1 logit to MLP neurons and input tokens; backbone neurons.

    python experiments/attribution.py [--model default] [--out results] [--n N]

Defaults are the full-size run; --quick runs the small smoke-test profile.
"""
from __future__ import annotations

from _cli import main

if __name__ == "__main__":
    main("attribution", __doc__)

"""Component share: MLP vs attention share of the residual update; identity/previous-token/BOS/category heads.

    python experiments/component_share.py [--model default] [--out results] [--n N]

Default n is the ~12-minute-suite size; the full run is --n 30.
"""
from __future__ import annotations

from _cli import main

if __name__ == "__main__":
    main("component_share", __doc__)

"""Component share: MLP vs attention share of the residual update; identity/previous-token/BOS/category heads.

    python experiments/component_share.py [--model default] [--out results] [--n N]

Defaults are the full-size run; --quick runs the small smoke-test profile.
"""
from __future__ import annotations

from _cli import main

if __name__ == "__main__":
    main("component_share", __doc__)

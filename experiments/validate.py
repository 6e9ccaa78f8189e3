"""Phase-0 validation (the cross-model plan): five sanity checks against pre-registered criteria, written under results/<model>/validation/.

    python experiments/validate.py [--model default] [--out results]
"""
from __future__ import annotations

from _cli import main

if __name__ == "__main__":
    main("validation", __doc__)

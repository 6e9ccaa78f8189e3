"""Back-patching (Biran et al. 2025): later-layer last-position states written into earlier
layers of wrong two-hop queries; oracle fix rate with a donor control; results/<model>/backpatch/.

    python experiments/backpatch.py [--model default] [--model DIR ...] [--n N] [--out results] [--seed 0]
"""
from __future__ import annotations

from _cli import main

if __name__ == "__main__":
    main("backpatch", __doc__)

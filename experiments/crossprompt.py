"""Cross-prompt patching: the bridge's representation from a one-hop prompt patched into the
two-hop prompt, layer x position, with a foil-bridge control and a batched-vs-loop speed factor.

    python experiments/crossprompt.py [--model default] [--model DIR ...] [--n N] [--out results] [--seed 0]
"""
from __future__ import annotations

from _cli import main

if __name__ == "__main__":
    main("crossprompt", __doc__)

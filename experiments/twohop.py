"""Two-hop reasoning through the logit lens: single-hop and two-hop accuracy, first layers where
bridge and answer enter the lens top-30, gaps, sequential share; results/<model>/twohop/.

    python experiments/twohop.py [--model default] [--model DIR ...] [--n N] [--out results] [--seed 0]
"""
from __future__ import annotations

from _cli import main

if __name__ == "__main__":
    main("twohop", __doc__)

"""Cross-lingual refusal: per-language directions from items disjoint from the English direction's vs English (split-half and label-flip null beside them), the English direction's effect per language vs a random direction, KL / top-1 / generation quality on harmless prompts.

    python experiments/crosslingual.py [--model default] [--model DIR ...] [--out results] [--seed 0] [--quick]

results/<model>/crosslingual/ (result.json + figures); same files and resume as `mlxinterp run-suite --only crosslingual`.
Defaults are the full-size run; --quick runs the small smoke-test profile.
"""
from __future__ import annotations

from _cli import main

if __name__ == "__main__":
    main("crosslingual", __doc__)

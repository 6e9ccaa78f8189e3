"""Cross-lingual refusal: per-language directions vs English, the English direction's effect per language, KL / top-1 / generation quality on harmless prompts.

    python experiments/crosslingual.py [--model default] [--model DIR ...] [--out results] [--seed 0] [--full]

results/<model>/crosslingual/ (result.json + figures); same files and resume as `mlxinterp run-suite --only crosslingual`.
Full-run size (--full): {'n_gen': 12, 'gen_tokens': 24}; the 60 parallel items bound the rest (no --n).
"""
from __future__ import annotations

from _cli import main

if __name__ == "__main__":
    main("crosslingual", __doc__, {'n_gen': 12, 'gen_tokens': 24})

"""Function vectors (Todd et al. 2024): AIE of every head, v1/v2/v3 zero-shot lift by layer, unrelated contexts.

    python experiments/function_vectors.py [--model default] [--model DIR ...] [--n N] [--out results] [--seed 0] [--full]

results/<model>/function_vectors/ (result.json + figures); same files and resume as `mlxinterp run-suite --only function_vectors`.
Full-run size (--full): {'n': 20, 'tasks': ('antonym', 'country_capital', 'english_french', 'english_spanish', 'singular_plural', 'present_past', 'uppercase', 'sentiment'), 'n_demos': 10, 'n_eval': 30}.
"""
from __future__ import annotations

from _cli import main

if __name__ == "__main__":
    main("function_vectors", __doc__, {'n': 20, 'tasks': ('antonym', 'country_capital', 'english_french', 'english_spanish', 'singular_plural', 'present_past', 'uppercase', 'sentiment'), 'n_demos': 10, 'n_eval': 30})

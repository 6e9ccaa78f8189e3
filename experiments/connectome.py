"""Connectome: MLP-neuron z maps per prompt category vs baseline; overlaps, SVD, hubs, exclusive neurons.

    python experiments/connectome.py [--model default] [--out results] [--n N]

Defaults are the full-size run; --quick runs the small smoke-test profile.
"""
from __future__ import annotations

from _cli import main

if __name__ == "__main__":
    main("connectome", __doc__)

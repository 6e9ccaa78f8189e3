"""Connectome: MLP-neuron z maps per prompt category vs baseline; overlaps, SVD, hubs, exclusive neurons.

    python experiments/connectome.py [--model default] [--out results] [--n N]

Default n is the ~12-minute-suite size; the full run is --n 30.
"""
from __future__ import annotations

from _cli import main

if __name__ == "__main__":
    main("connectome", __doc__)

"""Does quantization change the science? Float vs MLX 8-bit / 4-bit variants of one model.

    python experiments/quantization.py [--model default] [--n 6] [--out results]
Compares next-token and logit-lens agreement, refusal / sycophancy / function-vector (v2) directions,
refusal steering (the refusal study's protocol), a patching map, two-hop and back-patching outcomes.
Full size (on a CPU the variants compute with dequantized weights, so this is affordable here too), e.g.
    --n 24 --set n_twohop=48 --set n_steer=24 --set n_refusal=40 --set n_backpatch=27 --set backpatch_layer_step=1
"""
from __future__ import annotations

from _cli import main

if __name__ == "__main__":
    main("quantization", __doc__)

"""Does quantization change the science? Float vs MLX 8-bit / 4-bit variants of one model.

    python experiments/quantization.py [--model default] [--n N] [--out results] [--quick]
Compares next-token and logit-lens agreement, refusal / sycophancy / function-vector (v2) directions,
refusal steering (the refusal study's protocol), a patching map, two-hop and back-patching outcomes.
Defaults are the full-size run (on a CPU the variants compute with dequantized weights, so this is
affordable here too); --quick runs the small smoke-test profile; --set backpatch_layer_step=1 for the
full back-patching grid.
"""
from __future__ import annotations

from _cli import main

if __name__ == "__main__":
    main("quantization", __doc__)

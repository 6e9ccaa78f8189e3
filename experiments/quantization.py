"""Does quantization change the science? Float vs MLX 8-bit / 4-bit variants of one model.

    python experiments/quantization.py [--model default] [--n 6] [--out results]
On Metal, raise --n (4-bit matmuls are slow on MLX's CPU backend).
"""
from __future__ import annotations

from _cli import main

if __name__ == "__main__":
    main("quantization", __doc__)

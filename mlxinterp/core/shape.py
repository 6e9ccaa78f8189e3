"""A decoder's shape: the numbers that memory estimates, hook shapes and size replicas read.

One dataclass for every place that needs them: a loaded model's `ModelInfo` and a catalogue
`Architecture` both extend it, so the formulas in core/memory.py take either.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_mlp: int
    vocab_size: int

    def config(self) -> dict:
        """The mlx-lm config.json fields these numbers correspond to."""
        return {"hidden_size": self.d_model, "num_hidden_layers": self.n_layers, "num_attention_heads": self.n_heads,
                "num_key_value_heads": self.n_kv_heads, "head_dim": self.head_dim,
                "intermediate_size": self.d_mlp, "vocab_size": self.vocab_size}

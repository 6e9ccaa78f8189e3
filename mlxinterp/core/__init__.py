"""The engine: model specs and loading (mlx-lm dirs, HF cache, GGUF), architectures as table rows,
hook points on mlx-lm's own modules, taps, tokenization, atomic files, errors and platform facts.

Imports nothing else from mlxinterp: every other layer builds on this one.
"""

"""Analyses over a hooked model: logit lens, patching, attention, directions and steering,
subspaces, neurons, scoring, statistics, plotting and llama.cpp control vectors.

Imports mlxinterp.core only.
"""

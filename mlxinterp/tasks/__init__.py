"""What studies share beyond the analyses: the prompt sets in mlxinterp/data/, their task formats
(two-hop queries, function-vector tasks) and the judges and scorers of generated text.

Imports mlxinterp.core and mlxinterp.analysis.
"""

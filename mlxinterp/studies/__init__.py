"""Experiments of the suite, one module each; each registers itself with @suite.experiment.

What each study reproduces and from which source (papers and the write-ups named in
docs/sources.md) is in its module docstring.
"""

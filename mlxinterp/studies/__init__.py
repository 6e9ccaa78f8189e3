"""Experiments of the suite; each module registers itself with @suite.experiment."""

"""Benchmarks of mlxinterp (run from a checkout: `python -m bench --help`); never installed with the package."""

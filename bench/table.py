"""Re-render the table in bench/README.md from bench/results/*.json.

    python bench/table.py
"""
from __future__ import annotations

from pathlib import Path

if __name__ == "__main__":
    from mlxinterp.cli import main

    here = Path(__file__).resolve().parent
    main(["bench", "table", "--out", str(here / "results"), "--readme", str(here / "README.md")])

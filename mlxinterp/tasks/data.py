"""Versioned prompt sets shipped in the repository's data/ directory."""
from __future__ import annotations

import json
import os
from pathlib import Path

from mlxinterp.core.errors import MlxInterpError

DATA_DIR = Path(os.environ.get("MLXINTERP_DATA") or Path(__file__).resolve().parents[2] / "data")


def load_json(relpath: str) -> dict:
    path = DATA_DIR / relpath
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        hint = ("data/ ships with the repository: install from a clone with `pip install -e .` (scripts/run.sh does), "
                "or point MLXINTERP_DATA at a copy of it") if not DATA_DIR.is_dir() else None
        raise MlxInterpError(f"cannot read data file {path}: {e}", hint=hint) from None


def prompts(relpath: str) -> list[str]:
    return list(load_json(relpath)["prompts"])

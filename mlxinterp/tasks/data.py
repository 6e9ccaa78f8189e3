"""Versioned prompt sets, shipped inside the package (mlxinterp/data/, package data of the wheel),
so the suite, the tutorial and the notebooks run from any installed copy, not only a checkout.
MLXINTERP_DATA points at another copy (e.g. an edited one)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from mlxinterp.core.errors import MlxInterpError

DATA_DIR = Path(os.environ.get("MLXINTERP_DATA") or Path(__file__).resolve().parents[1] / "data")


def load_json(relpath: str) -> dict:
    path = DATA_DIR / relpath
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        hint = ("the prompt sets ship inside the package (mlxinterp/data/): reinstall mlxinterp, "
                "or point MLXINTERP_DATA at a copy of them") if not DATA_DIR.is_dir() else None
        raise MlxInterpError(f"cannot read data file {path}: {e}", hint=hint) from None


def prompts(relpath: str) -> list[str]:
    return list(load_json(relpath)["prompts"])

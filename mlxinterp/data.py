"""Versioned prompt sets shipped in the repository's data/ directory."""
from __future__ import annotations

import json
from pathlib import Path

from mlxinterp.errors import MlxInterpError

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def load_json(relpath: str) -> dict:
    path = DATA_DIR / relpath
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise MlxInterpError(f"cannot read data file {path}: {e}") from None


def prompts(relpath: str) -> list[str]:
    return list(load_json(relpath)["prompts"])

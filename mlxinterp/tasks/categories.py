"""The prompt categories of data/categories/ (one JSON file each, plus a baseline set), which the neuron
and head studies (connectome, attribution, component share, layer ablation) compare against the baseline."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mlxinterp.core.errors import MlxInterpError
from mlxinterp.tasks.data import DATA_DIR, load_json

BASELINE = "baseline"


def category_names() -> list[str]:
    """Every category file in data/categories/ except the baseline, sorted."""
    names = sorted(p.stem for p in Path(DATA_DIR, "categories").glob("*.json"))
    return [n for n in names if n != BASELINE]


def categories(n: int | None = None, names: Sequence[str] | None = None) -> dict[str, list[str]]:
    """{category: first n prompts}; n must be >= 2 (statistics need variance)."""
    if n is not None and n < 2:
        raise MlxInterpError(f"n={n} prompts per category is too few; use n >= 2")
    out = {}
    for name in names or category_names():
        ps = load_json(f"categories/{name}.json")["prompts"]
        out[name] = list(ps[:n] if n else ps)
    return out


def baseline(n: int | None = None) -> list[str]:
    """The first n prompts of the baseline set (every prompt when n is None)."""
    return categories(n, [BASELINE])[BASELINE]

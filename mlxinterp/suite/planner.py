"""Suite planning: each model's memory estimate read without loading it, smallest first, and a
refusal (before anything loads) for those that will not fit."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlxinterp.core import loading
from mlxinterp.core.errors import MemoryBudgetError
from mlxinterp.core.memory import SUITE_BATCH, SUITE_CONTEXT, Estimate, choose_plan, estimate, gb
from mlxinterp.core.platform import total_memory_bytes
from mlxinterp.suite import catalogue



@dataclass(frozen=True)
class ModelPlan:
    """A suite model with its estimate (None when its config cannot be read without loading it)."""

    spec: str
    estimate: Estimate | None
    config_source: str
    dtype_note: str | None = None  # set when float32 would not fit and the model runs as stored (memory.choose_plan)

    @property
    def need(self) -> int | None:
        return self.estimate.model if self.estimate else None


def spec_config(spec: str) -> tuple[dict | None, str]:
    """A spec's config.json without loading, importing or downloading anything; else the catalogue's."""
    base, _ = loading.parse_spec(spec)
    cfg, source = None, "unknown"
    with contextlib.suppress(loading.ModelSpecError, OSError, ValueError, ImportError):
        if base == loading.DEFAULT_SPEC:
            d = loading.default_model_dir(create=False)
            cfg, source = (loading.read_config(d), str(d)) if (d / "config.json").exists() else (None, source)
        elif Path(base).expanduser().is_dir():
            cfg, source = loading.read_config(Path(base).expanduser()), base
        elif loading.REPO_RE.match(base) and Path(base).suffix.lower() != ".gguf":
            snap = loading.hf_snapshot(base)  # offline: the local HF cache only
            cfg, source = loading.read_config(snap), str(snap)
    if cfg is None and base == loading.DEFAULT_SPEC:
        arch = catalogue.default_architecture()
        cfg, source = arch.config(), f"catalogue ({arch.base}, the default model's architecture)"
    elif cfg is None and (entry := catalogue.find(base)) is not None:
        cfg, source = entry.config(), f"catalogue ({entry.repo})"
    return cfg, source


def plan_models(specs: Sequence[str], dtype: str | None = None, context: int = SUITE_CONTEXT,
                batch: int = SUITE_BATCH) -> list[ModelPlan]:
    """Estimates for each spec, smallest first (unknown sizes last, in the order given)."""
    plans = []
    for spec in specs:
        cfg, source = spec_config(spec)
        est, note = None, None
        if cfg is not None:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                variant = loading.parse_spec(spec)[1]
                est = estimate(cfg, dtype, variant, context=context, batch=batch)
                note = choose_plan(cfg, dtype, variant)[1]  # the rule load_model applies
        plans.append(ModelPlan(spec, est, source, note))
    return sorted(plans, key=lambda p: (p.need is None, p.need or 0))


def check_fit(plans: Sequence[ModelPlan], limit: int | None = None) -> None:
    """Refuse, naming each one, the models whose weights + KV cache exceed the machine's memory."""
    have = total_memory_bytes() if limit is None else limit
    over = [p for p in plans if p.need is not None and p.need > have]
    if not over:
        return
    faked = " (MLXINTERP_MEMORY_LIMIT)" if os.environ.get("MLXINTERP_MEMORY_LIMIT") else ""
    lines = "; ".join(f"{p.spec} needs {p.estimate.describe()}" for p in over)
    raise MemoryBudgetError(
        f"{len(over)} model(s) will not fit in this machine's {gb(have)}{faked}: {lines}",
        hint="drop them from --model, or use a smaller or quantized checkpoint (on a Mac with Metal, "
             "4-bit stays 4-bit; on a CPU it is dequantized to float32 when that fits, else kept as stored); "
             "`mlxinterp models --catalogue` lists what each needs")



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
from mlxinterp.core.memory import (
    SUITE_BATCH,
    SUITE_CONTEXT,
    Estimate,
    bytes_per_param,
    choose_plan,
    compute_bytes,
    estimate,
    gb,
    kv_cache_bytes,
    quantized_float32_bytes,
    text_config,
    with_margin,
)
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




def check_fit_sharded(plans: Sequence[ModelPlan], hosts: int, limit: int | None = None) -> None:
    """As check_fit for a model layer-sharded over `hosts` machines like this one: each share must fit."""
    have = total_memory_bytes() if limit is None else limit
    over = []
    for p in plans:
        cfg = spec_config(p.spec)[0]
        if cfg is None:
            continue
        with contextlib.suppress(KeyError, TypeError, ValueError):
            shares, _ = plan_hosts(cfg, hosts, have, variant=loading.parse_spec(p.spec)[1])
            over += [f"{p.spec} host {s.rank} (layers {s.layers.start}-{s.layers.stop - 1}) needs {gb(s.need)}"
                     for s in shares if not s.fits]
    if over:
        raise MemoryBudgetError(f"a share will not fit in this machine's {gb(have)}: {'; '.join(over)}",
                                hint=f"use more hosts; `mlxinterp plan --model M --hosts {hosts + 1} --memory "
                                     f"{have / 1e9:.0f}` shows the split")


@dataclass(frozen=True)
class HostPlan:
    """One host's share of a layer-sharded model (core.pipeline): its blocks and what it must hold."""

    rank: int
    layers: range
    embedding: bool  # the token embedding (rank 0), or the tied/untied unembedding (last rank)
    unembedding: bool
    weights: int
    margin: int
    kv_cache: int
    limit: int

    @property
    def need(self) -> int:
        return self.weights + self.margin + self.kv_cache

    @property
    def fits(self) -> bool:
        return self.need <= self.limit

    def to_dict(self) -> dict:
        return {"rank": self.rank, "layers": [self.layers.start, self.layers.stop - 1], "embedding": self.embedding,
                "unembedding": self.unembedding, "weights": self.weights, "margin": self.margin,
                "kv_cache": self.kv_cache, "need": self.need, "limit": self.limit, "fits": self.fits}


def plan_hosts(cfg: dict, hosts: int, memory: int, dtype: str | None = None, variant=None,
               context: int = SUITE_CONTEXT, batch: int = SUITE_BATCH) -> tuple[list[HostPlan], str | None]:
    """Per host of `memory` bytes, the blocks core.pipeline gives it and whether its share fits, plus the
    dtype note of the load rule. The formulas are estimate()'s, cut by layer: each host holds its blocks'
    weights and KV cache; host 0 also the embedding; the last host the final norm and the unembedding
    (the embedding matrix again when tied, as shard_model keeps it there). Each rank applies the load rule
    (memory.choose_plan) to its own machine, so the dtype is decided with limit = one host's memory."""
    # Imported here: core.pipeline pulls in MLX, which planning a suite (`run-suite --list`) never needs.
    from mlxinterp.core.pipeline import split_layers

    c = text_config(cfg)
    plan, note = choose_plan(cfg, dtype, variant, memory)
    per = quantized_float32_bytes(cfg) if note else bytes_per_param(cfg, plan)
    d, n_layers, mlp = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"]
    heads = c["num_attention_heads"]
    kv, hd = c.get("num_key_value_heads") or heads, c.get("head_dim") or d // heads
    block = 2 * d * hd * (heads + kv) + 3 * d * mlp  # as memory.config_n_params
    vocab_rows = c["vocab_size"] * d
    kv_all = kv_cache_bytes(cfg, context, batch, 4 if note else compute_bytes(cfg, dtype, variant))
    out = []
    split = split_layers(n_layers, hosts)
    for r, layers in enumerate(split):
        first, last = r == 0, r == len(split) - 1
        params = len(layers) * block + vocab_rows * (int(first) + int(last))
        weights = int(params * per)
        margin = with_margin(weights) - weights
        out.append(HostPlan(r, layers, first, last, weights, margin, kv_all * len(layers) // n_layers, memory))
    return out, note

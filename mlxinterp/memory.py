"""How much memory a model and an experiment need, and what to do when it is too much.

Three parts, each a formula (bytes):

  weights      n_params x bytes per parameter at the compute dtype:
               float32 4, float16/bfloat16 2; MLX-quantized b bits with group size g:
               b/8 (packed) + 4/g (one 16-bit scale and one 16-bit bias per group),
               i.e. 4.5 bits/param at 4-bit g64 and 8.5 at 8-bit g64. Norms and biases
               are left out of n_params (< 0.1 %). Plus loading's margin (10 % + 256 MB)
               for buffers, the tokenizer and temporaries (loading.estimate_memory).
  KV cache     2 (K and V) x layers x kv_heads x head_dim x context x batch x bytes of the
               compute dtype (2 when quantized: MLX keeps activations in 16 bits). An upper
               bound: Gemma's sliding-window layers are counted at the full context.
  activations  prompts x kept positions x sum of the captured widths per layer x layers x 4
               (captures are stored as float32, see directions.collect).

`plan_models` orders a suite's models smallest first (results arrive early) and
`check_fit` refuses, before anything is loaded, a model whose weights + KV cache
exceed the machine's memory (platform.total_memory_bytes; MLXINTERP_MEMORY_LIMIT
fakes a smaller machine). Captured activations are not refused: `RowStore` keeps
them in RAM while they fit the budget and spills them to .npy memmaps otherwise;
the suite sets the budget (memory left beside the model) and the spill directory
per experiment with `spill_scope`.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import re
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlxinterp import loading
from mlxinterp.errors import MemoryBudgetError, MlxInterpError
from mlxinterp.platform import total_memory_bytes

SUITE_CONTEXT = 1024  # tokens per sequence the suite's estimate allows for (its prompts are < 200)
SUITE_BATCH = 8  # sequences per forward (directions.collect's default batch)
ACTIVATION_BYTES = 4  # captures are float32
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


# ------------------------------------------------------------------ formulas


def n_params(cfg: dict) -> int:
    """Parameters implied by an mlx-lm config (norms and biases left out)."""
    return loading.config_n_params(cfg)


def _text(cfg: dict) -> dict:
    return loading._text_cfg(cfg)


def compute_bytes(cfg: dict, dtype: str | None = None, variant: loading.Variant | None = None) -> int:
    """Bytes per activation/KV element under the load policy: the float dtype, or 2 when quantized."""
    plan = loading.plan_dtype(dtype, variant)
    if plan.dtype:
        return _DTYPE_BYTES[plan.dtype]
    stored = cfg.get("torch_dtype") or cfg.get("dtype")
    return _DTYPE_BYTES.get(stored, 2) if not cfg.get("quantization") else 2


def kv_cache_bytes(cfg: dict, context: int, batch: int = 1, element_bytes: int = 2) -> int:
    """2 x layers x kv_heads x head_dim x context x batch x element_bytes (an upper bound, see module doc)."""
    c = _text(cfg)
    heads = c["num_attention_heads"]
    kv, hd = c.get("num_key_value_heads") or heads, c.get("head_dim") or c["hidden_size"] // heads
    return 2 * c["num_hidden_layers"] * kv * hd * int(context) * int(batch) * element_bytes


WIDTHS = {"resid": "hidden_size", "mlp": "intermediate_size"}


@dataclass(frozen=True)
class ActivationPlan:
    """What an experiment captures: `prompts` x `positions` kept x the `hooks` of every layer, float32.

    hooks: per-layer hook kinds, "resid" (d_model wide: resid_pre/mid/post, attn_out,
    mlp_out) or "mlp" (d_mlp wide: neurons). The default is a capture-all-positions
    study of the residual stream: 256 prompts x 64 positions x every layer.
    """

    prompts: int = 256
    positions: int = 64
    hooks: tuple[str, ...] = ("resid",)

    def __post_init__(self) -> None:
        bad = [h for h in self.hooks if h not in WIDTHS]
        if bad or self.prompts < 0 or self.positions < 0:
            raise MlxInterpError(f"bad activation plan {self}: hooks must be in {sorted(WIDTHS)}, "
                                 "prompts and positions >= 0")

    def bytes(self, cfg: dict) -> int:
        c = _text(cfg)
        width = sum(int(c[WIDTHS[h]]) for h in self.hooks)
        return self.prompts * self.positions * c["num_hidden_layers"] * width * ACTIVATION_BYTES

    def describe(self) -> str:
        return f"{'+'.join(self.hooks)} at every layer, {self.prompts} prompts x {self.positions} positions, float32"


@dataclass(frozen=True)
class Estimate:
    """Bytes by part; `total` is what must fit."""

    weights: int
    margin: int
    kv_cache: int
    activations: int
    dtype: str  # what the weights are held as: float32 | bfloat16 | 4bit-g64 ...

    @property
    def model(self) -> int:
        """What must fit for the model to run at all: weights + margin + KV cache."""
        return self.weights + self.margin + self.kv_cache

    @property
    def total(self) -> int:
        return self.model + self.activations

    def to_dict(self) -> dict:
        return {**asdict(self), "model": self.model, "total": self.total}

    def describe(self) -> str:
        parts = [f"weights {gb(self.weights)} ({self.dtype})", f"KV cache {gb(self.kv_cache)}",
                 f"margin {gb(self.margin)}"]
        if self.activations:
            parts.append(f"activations {gb(self.activations)}")
        return f"{gb(self.total)} = " + " + ".join(parts)


def gb(n: int | float) -> str:
    return f"{n / 1e9:.1f} GB"


def human(n: int | float) -> str:
    """Bytes in the largest unit that keeps them readable (GB, MB, KB, bytes)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def _weights_label(cfg: dict, plan: Any) -> str:
    q = {"bits": plan.quant[0], "group_size": plan.quant[1]} if plan.quant else None
    if q is None and plan.dtype:
        return plan.dtype
    q = q or cfg.get("quantization")
    return f"{q['bits']}bit-g{q['group_size']}" if q else (cfg.get("torch_dtype") or "bfloat16")


def estimate(cfg: dict, dtype: str | None = None, variant: loading.Variant | None = None,
             context: int = SUITE_CONTEXT, batch: int = 1, activations: ActivationPlan | None = None) -> Estimate:
    """Weights + margin (as loading.estimate_memory) + KV cache + captured activations, for a config
    loaded the way load_model would load it with this dtype and variant."""
    plan = loading.plan_dtype(dtype, variant)
    weights = int(n_params(cfg) * loading._bytes_per_param(cfg, plan))
    margin = loading._with_margin(weights) - weights
    kv = kv_cache_bytes(cfg, context, batch, compute_bytes(cfg, dtype, variant))
    acts = activations.bytes(cfg) if activations else 0
    return Estimate(weights, margin, kv, acts, _weights_label(cfg, plan))


# ------------------------------------------------------------- suite planning


@dataclass(frozen=True)
class ModelPlan:
    """A suite model with its estimate (None when its config cannot be read without loading it)."""

    spec: str
    estimate: Estimate | None
    config_source: str

    @property
    def need(self) -> int | None:
        return self.estimate.model if self.estimate else None


def spec_config(spec: str) -> tuple[dict | None, str]:
    """A spec's config.json without loading, importing or downloading anything; else the catalogue's."""
    from mlxinterp import catalogue

    base, _ = loading.parse_spec(spec)
    cfg, source = None, "unknown"
    with contextlib.suppress(loading.ModelSpecError, OSError, ValueError, ImportError):
        if base == loading.DEFAULT_SPEC:
            d = loading.default_model_dir(create=False)
            cfg, source = (loading.read_config(d), str(d)) if (d / "config.json").exists() else (None, source)
        elif Path(base).expanduser().is_dir():
            cfg, source = loading.read_config(Path(base).expanduser()), base
        elif loading._REPO_RE.match(base) and Path(base).suffix.lower() != ".gguf":
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
        est = None
        if cfg is not None:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                est = estimate(cfg, dtype, loading.parse_spec(spec)[1], context=context, batch=batch)
        plans.append(ModelPlan(spec, est, source))
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
             "4-bit stays 4-bit; on a CPU it is dequantized to float32); "
             "`mlxinterp models --catalogue` lists what each needs")


def model_need(info: Any) -> int:
    """Weights + margin + the suite's KV cache for a loaded model (from its ModelInfo)."""
    kv_bytes = 2 if info.quantization else _DTYPE_BYTES.get(info.dtype, 4)
    cfg = {"hidden_size": info.d_model, "num_hidden_layers": info.n_layers, "num_attention_heads": info.n_heads,
           "num_key_value_heads": info.n_kv_heads, "head_dim": info.head_dim}
    return loading.estimate_memory(info) + kv_cache_bytes(cfg, SUITE_CONTEXT, SUITE_BATCH, kv_bytes)


def activation_budget(info: Any) -> int:
    """Memory left for captured activations beside a loaded model (may be <= 0: then everything spills)."""
    return total_memory_bytes() - model_need(info)


# ---------------------------------------------------------------- spilling


@dataclass(frozen=True)
class SpillTarget:
    """Where captures go when their estimate exceeds `budget` bytes."""

    directory: Path
    budget: int


_SPILL: ContextVar[SpillTarget | None] = ContextVar("mlxinterp_spill", default=None)
_counter = itertools.count()


@contextlib.contextmanager
def spill_scope(directory: str | os.PathLike, budget: int) -> Iterator[SpillTarget]:
    """Within the block, captures larger than `budget` bytes spill to .npy files under `directory`."""
    target = SpillTarget(Path(directory), int(budget))
    token = _SPILL.set(target)
    try:
        yield target
    finally:
        _SPILL.reset(token)


def spill_target() -> SpillTarget | None:
    return _SPILL.get()


def rss_bytes() -> int | None:
    """This process's resident memory (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def available_bytes() -> int:
    """Memory not yet used by this process (a rough budget when none was given)."""
    used = rss_bytes()
    if used is None:
        import mlx.core as mx

        used = mx.get_active_memory()
    return total_memory_bytes() - used


class RowStore:
    """Per hook, rows [N, width] float32 written batch by batch: in RAM, or in .npy memmaps on disk.

    `open` decides once, from the first batch's widths: N x sum(widths) x 4 bytes
    against the budget of the spill target (an explicit directory, else the
    suite's `spill_scope`). Spilled arrays come back as read-only np.memmap
    views of the files, so only the pages a caller touches are in memory.
    """

    def __init__(self, n_rows: int, widths: dict[str, int], directory: Path | None):
        self.n_rows, self.directory = n_rows, directory
        self.arrays: dict[str, np.ndarray] = {}
        for i, (name, width) in enumerate(widths.items()):
            if directory is None:
                self.arrays[name] = np.empty((n_rows, width), np.float32)
            else:
                path = directory / f"{i:03d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.npy"
                self.arrays[name] = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                                              shape=(n_rows, width))

    @property
    def spilled(self) -> bool:
        return self.directory is not None

    @classmethod
    def open(cls, n_rows: int, widths: dict[str, int], spill_dir: str | os.PathLike | None = None,
             budget: int | None = None, what: str = "captured activations") -> "RowStore":
        need = n_rows * sum(widths.values()) * ACTIVATION_BYTES
        scope = spill_target()
        directory = Path(spill_dir) if spill_dir is not None else (scope.directory if scope else None)
        if budget is None:
            budget = scope.budget if scope and spill_dir is None else available_bytes()
        if need <= budget:
            return cls(n_rows, widths, None)
        if directory is None:
            if need > total_memory_bytes():
                raise MemoryBudgetError(f"{what} need {human(need)} ({n_rows} rows x {sum(widths.values())} "
                                        f"float32), more than this machine's {human(total_memory_bytes())}",
                                        hint="pass spill_dir=... to stream them to disk, or capture fewer hooks")
            return cls(n_rows, widths, None)
        run_dir = directory / f"rows-{os.getpid()}-{next(_counter)}"
        run_dir.mkdir(parents=True, exist_ok=True)
        return cls(n_rows, widths, run_dir)

    def write(self, start: int, rows: dict[str, np.ndarray]) -> None:
        for name, block in rows.items():
            self.arrays[name][start : start + len(block)] = block

    def finish(self) -> dict[str, np.ndarray]:
        """The arrays; spilled ones flushed and reopened read-only."""
        if not self.spilled:
            return self.arrays
        out = {}
        for name, arr in self.arrays.items():
            arr.flush()
            out[name] = np.load(arr.filename, mmap_mode="r")
        self.arrays = {}
        return out

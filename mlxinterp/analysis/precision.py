"""Precision patching: which quantized module changes a finding.

Activation patching asks which activation carries an effect; precision patching
asks the same of quantization error. Start from the quantized model, give one
module (a block's attention or MLP, or one projection) back its float weights,
and measure how far a metric moves back toward the float model's value; or the
reverse, quantize one module inside the float model. Per module, the share of
the float-vs-quantized gap it restores (or causes) is

    restore:  mean(m_unit - m_quant) / mean(m_float - m_quant)
    quantize: mean(m_float - m_unit) / mean(m_float - m_quant)

over prompts, with a percentile-bootstrap interval that resamples prompts
(analysis.stats.bootstrap_ci). 1 means the module carries the whole gap, 0 none.
Modules interact, so the restore and quantize shares need not agree or sum to 1.

Weights only differ, so nothing is reloaded: `PrecisionSwitch` keeps each weight's
float value and its packed quantized form, and swaps in place either the float
array or dequantize(quantize(w)) (exactly what MLX's quantized kernels multiply
by; core/quantize.py). Hook points stay where they are; a swap costs one
dequantize of the swapped module's weights. With every module quantized
the model computes exactly what `load(spec + "@4bit")` computes on a CPU
(quantize float32 weights, then dequantize), bit for bit; with none, exactly
the float model (tests/test_precision.py).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import numpy as np

from mlxinterp.analysis.stats import bootstrap_ci
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.core.quantize import module_names, quantizable

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

GRANULARITIES = ("layer", "sublayer", "projection")
DIRECTIONS = ("restore", "quantize")
Metric = Callable[[Any], "np.ndarray | dict[str, np.ndarray]"]  # HookedModel -> per-prompt values


def unit_of(name: str, granularity: str) -> str:
    """The unit a weight belongs to: 'blocks.3.attn.q_proj' -> 'blocks.3' | 'blocks.3.attn' | itself."""
    parts = name.split(".")
    if parts[0] != "blocks" or len(parts) < 3:
        return name  # embed, unembed, or a module outside the blocks
    keep = {"layer": 2, "sublayer": 3, "projection": len(parts)}[granularity]
    return ".".join(parts[:keep])


@dataclass
class _Weight:
    """One layer's float weight and its MLX-quantized form (packed: ~1/6 of float32 at 4 bits)."""

    module: Any
    float_w: mx.array
    packed: tuple  # mx.quantize(float_w): (weights, scales, biases)
    bits: int
    group_size: int

    def quantized(self) -> mx.array:
        """dequantize(quantize(w)): the ops of QuantizedLinear.from_linear then mlx-lm's dequantize_model."""
        return mx.dequantize(*self.packed, group_size=self.group_size, bits=self.bits)


@dataclass
class PrecisionSwitch:
    """A float model whose modules can be put at quantized precision one by one, in place.

    `units` lists the modules in forward order (embed, blocks.0.attn, blocks.0.mlp, ...,
    unembed); every weight that mlx-lm would quantize belongs to exactly one unit, so
    quantizing all units is the '@{bits}bit-g{group_size}' model.
    """

    hm: Any
    bits: int = 4
    group_size: int = 64
    granularity: str = "sublayer"
    units: list[str] = field(init=False)
    _weights: dict[str, list[_Weight]] = field(init=False, repr=False)
    _quantized: frozenset = field(init=False, default=frozenset())

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise MlxInterpError(f"granularity {self.granularity!r} is not one of {', '.join(GRANULARITIES)}")
        q = self.hm.info.quantization
        if q:
            raise MlxInterpError(
                f"precision patching needs the float model; {self.hm.info.slug} is quantized ({q})",
                hint="load the float checkpoint (e.g. 'default', or SPEC@f32 for a stored quantized one)")
        model = self.hm.model
        names = module_names(model, self.hm.info.arch)
        own = getattr(model, "quant_predicate", None)
        self._weights = {}
        for path, m in model.named_modules():
            if not quantizable(m, self.group_size) or (own is not None and own(path, m) is False):
                continue
            unit = unit_of(names.get(id(m), path), self.granularity)
            w = m.weight
            packed = mx.quantize(w, group_size=self.group_size, bits=self.bits)
            mx.eval(packed)
            self._weights.setdefault(unit, []).append(_Weight(m, w, packed, self.bits, self.group_size))
        self.units = sorted(self._weights, key=_forward_order)

    @property
    def label(self) -> str:
        return f"{self.bits}bit-g{self.group_size}"

    def set(self, quantized: Iterable[str]) -> None:
        """Quantize exactly the units in `quantized`; every other unit gets its float weights back."""
        quantized = frozenset(quantized)
        if unknown := quantized - set(self.units):
            raise MlxInterpError(f"unknown precision-patching unit(s) {sorted(unknown)[:3]}",
                                 hint=f"units: {', '.join(self.units[:4])}, ...")
        new = []
        for unit, ws in self._weights.items():
            if (unit in quantized) != (unit in self._quantized):
                for w in ws:
                    w.module.weight = w.quantized() if unit in quantized else w.float_w
                    new.append(w.module.weight)
        mx.eval(new)  # expanded once here, not inside every forward
        self._quantized = quantized

    @contextmanager
    def state(self, quantized: Iterable[str]) -> Iterator[PrecisionSwitch]:
        """`set(quantized)` for the block, float everywhere afterwards (also on error)."""
        self.set(quantized)
        try:
            yield self
        finally:
            self.set(())


def _forward_order(unit: str) -> tuple:
    parts = unit.split(".")
    if parts[0] == "embed":
        return (-1,)
    if parts[0] == "blocks":
        return (int(parts[1]), 0 if len(parts) < 3 else {"attn": 1, "mlp": 2}.get(parts[2], 3), *parts[3:])
    return (10**9, unit)


def _as_dict(values: np.ndarray | dict) -> dict[str, np.ndarray]:
    if isinstance(values, dict):
        return {k: np.asarray(v, float) for k, v in values.items()}
    return {"metric": np.asarray(values, float)}


def gap_share(num: np.ndarray, gap: np.ndarray, seed: int = 0) -> dict:
    """mean(num) / mean(gap) with a bootstrap CI that resamples prompts (num and gap paired)."""
    num, gap = np.asarray(num, float), np.asarray(gap, float)

    def ratio(idx):
        i = np.asarray(idx, int)
        d = gap[i].mean()
        return num[i].mean() / d if d != 0 else np.nan

    if gap.mean() == 0:
        return {"estimate": None, "low": None, "high": None, "n": int(gap.size)}
    with np.errstate(divide="ignore", invalid="ignore"):
        return bootstrap_ci(np.arange(gap.size, dtype=float), statistic=ratio, seed=seed)


def precision_patch(hm: HookedModel, metric: Metric, bits: int = 4, group_size: int = 64, granularity: str = "sublayer",
                    directions: Iterable[str] = DIRECTIONS, units: Iterable[str] | None = None,
                    switch: PrecisionSwitch | None = None, seed: int = 0,
                    progress: Callable[[str], None] | None = None) -> dict:
    """Per module: the metric with only that module restored to float in the quantized model ('restore')
    and with only it quantized in the float model ('quantize'), and its share of the gap (module doc).

    `metric(hm)` returns per-prompt values (an array, or a dict of arrays for several metrics
    from the same forward passes). Returns a JSON-able dict keyed by metric, with 'units',
    'float' / 'quantized' per-prompt values, the gap's CI, and per direction and unit the values,
    the share of the gap and the paired change; 'seconds' has the wall and CPU time per evaluation.
    """
    directions = list(directions)
    if bad := [d for d in directions if d not in DIRECTIONS]:
        raise MlxInterpError(f"precision-patching direction {bad[0]!r} is not one of {', '.join(DIRECTIONS)}")
    t0 = time.perf_counter()
    sw = switch or PrecisionSwitch(hm, bits, group_size, granularity)
    setup_s = time.perf_counter() - t0
    todo = list(units) if units is not None else sw.units
    evals: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    times, cpu0 = [], time.process_time()

    def run(key: tuple[str, str], quantized: Iterable[str]) -> None:
        t = time.perf_counter()
        with sw.state(quantized):
            evals[key] = _as_dict(metric(hm))
        times.append(time.perf_counter() - t)
        if progress:
            progress(f"{key[0]} {key[1]} ({times[-1]:.1f} s)")

    run(("float", ""), ())
    run(("quantized", ""), sw.units)
    for d in directions:
        for u in todo:
            run((d, u), [v for v in sw.units if v != u] if d == "restore" else [u])
    out: dict[str, Any] = {"units": todo, "precision": sw.label, "granularity": sw.granularity,
                           "seconds": {"setup": round(setup_s, 3), "per_evaluation": round(float(np.mean(times)), 3),
                                       "total": round(time.perf_counter() - t0, 3), "evaluations": len(times),
                                       # CPU seconds of this process (all threads): wall time on a shared machine
                                       # depends on the load, this much less
                                       "cpu_per_evaluation": round((time.process_time() - cpu0) / len(times), 3)},
                           "metrics": {}}
    for name, f in evals[("float", "")].items():
        q = evals[("quantized", "")][name]
        gap = f - q
        m: dict[str, Any] = {"float": f.tolist(), "quantized": q.tolist(),
                             "gap": bootstrap_ci(gap, seed=seed)}
        for d in directions:
            rows = {}
            for u in todo:
                v = evals[(d, u)][name]
                num = v - q if d == "restore" else f - v
                rows[u] = {"values": v.tolist(), "share": gap_share(num, gap, seed),
                           "change": bootstrap_ci(v - (q if d == "restore" else f), seed=seed)}
            m[d] = rows
        out["metrics"][name] = m
    return out


def share_grid(result: dict, metric: str, direction: str = "restore") -> tuple[np.ndarray, list[str], list[str]]:
    """(shares [rows, columns], row labels, column labels): blocks as rows, sublayers as columns;
    units outside the blocks (embed, unembed) are extra rows labelled by name."""
    rows_ = result["metrics"][metric][direction]
    blocks = sorted({int(u.split(".")[1]) for u in rows_ if u.startswith("blocks.")})
    cols = sorted({".".join(u.split(".")[2:]) or "block" for u in rows_ if u.startswith("blocks.")},
                  key=lambda c: ({"attn": 0, "mlp": 1}.get(c.split(".")[0], 2), c))
    extra = [u for u in rows_ if not u.startswith("blocks.")]
    labels = [*extra, *(f"block {b}" for b in blocks)]
    grid = np.full((len(labels), max(len(cols), 1)), np.nan)
    for u, r in rows_.items():
        est = r["share"]["estimate"]
        if u.startswith("blocks."):
            p = u.split(".")
            i, j = len(extra) + blocks.index(int(p[1])), cols.index(".".join(p[2:]) or "block")
        else:
            i, j = extra.index(u), 0
        grid[i, j] = np.nan if est is None else est
    return grid, labels, cols


def plot_shares(result: dict, metric: str, direction: str = "restore", title: str | None = None):
    """Layers x sublayers, coloured by the share of the float-vs-quantized gap each module restores
    (or causes); embed/unembed rows use the first column. Returns the figure."""
    from mlxinterp.analysis.plotting import subplots

    grid, labels, cols = share_grid(result, metric, direction)
    fig, ax = subplots(figsize=(1.6 + 1.3 * len(cols), 1.2 + 0.28 * len(labels)))
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6)
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    verb = "restored by float" if direction == "restore" else "caused by quantizing"
    ax.set_title(title or f"{metric}: share of the gap {verb} ({result['precision']})", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig

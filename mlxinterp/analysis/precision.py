"""Precision patching: which quantized module changes a finding.

Activation patching asks which activation carries an effect; precision patching
asks the same of quantization error. Start from the quantized model, give one
module (a block's attention or MLP, or one projection) back its float weights,
and measure how far a metric moves back toward the float model's value; or the
reverse, quantize one module inside the float model. Per module, the share of
the float-vs-quantized gap it restores (or causes) is

    restore:  mean(m_unit - m_quant) / mean(m_float - m_quant)
    quantize: mean(m_float - m_unit) / mean(m_float - m_quant)

over prompts, with a BCa bootstrap interval that resamples prompts (analysis.stats.bootstrap_ci;
the gap and the paired changes by paired_diff_ci), at the Bonferroni level for the map's modules
(`summarise`). 1 means the module carries the whole gap, 0 none. Modules interact, so the restore
and quantize shares need not agree or sum to 1.

Weights only differ, so nothing is reloaded: `PrecisionSwitch` keeps each weight's
float value and its packed quantized form, and swaps in place either the float
array or dequantize(quantize(w)) (exactly what MLX's quantized kernels multiply
by; core/quantize.py). Hook points stay where they are; a swap costs one
dequantize of the swapped module's weights. With every module quantized
the model computes exactly what `load(spec + "@4bit")` computes on a CPU
(quantize float32 weights, then dequantize), bit for bit; with none, exactly
the float model (tests/test_precision.py). A module in block i leaves the blocks before i as in
the reference run, so `PrefixShare` replays their output instead of recomputing it (share_prefix).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import numpy as np

from mlxinterp.analysis.stats import LEVEL, Interval, bootstrap_ci, paired_diff_ci
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.core.quantize import module_names, own_precision, quantizable
from mlxinterp.core.taps import Capture

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
        self._weights = {}
        for path, m in model.named_modules():
            rule = own_precision(model, path, m)  # a layer the model keeps float or at a fixed precision
            bits, gs = (rule["bits"], rule["group_size"]) if isinstance(rule, dict) else (self.bits, self.group_size)
            if rule is False or not quantizable(m, gs):
                continue
            unit = unit_of(names.get(id(m), path), self.granularity)
            w = m.weight
            packed = mx.quantize(w, group_size=gs, bits=bits)
            mx.eval(packed)
            self._weights.setdefault(unit, []).append(_Weight(m, w, packed, bits, gs))
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


def _block_of(unit: str) -> int | None:
    """The block a unit lives in ('blocks.3.mlp' -> 3); None outside the blocks (embed, unembed)."""
    parts = unit.split(".")
    return int(parts[1]) if parts[0] == "blocks" and len(parts) > 1 and parts[1].isdigit() else None


class _Recorder(Capture):
    """Keeps every forward call's activation at one hook point, in call order (a[...]: mlx-lm edits
    some arrays in place, e.g. Gemma's `h *= sqrt(d)`)."""

    def __init__(self, out: list):
        super().__init__(store=self)
        self.out = out

    def append(self, *args) -> None:  # Capture's store protocol: the list above is the store
        pass

    def validate(self, feature_shape, name) -> None:
        pass

    def __call__(self, a: mx.array, ctx) -> mx.array:
        self.out.append(a[...])
        return a


class _Replay(Capture):
    """At blocks.i.hook_resid_pre: the reference run's value for the same forward call.

    A unit in block i changes no weight before block i, so in every forward the blocks before i
    compute exactly what they computed in the reference run (the float run for 'quantize', the
    quantized run for 'restore'). Handing back the recorded value leaves the earlier blocks as
    unused nodes of MLX's lazy graph, never evaluated. The values are the ones the prefix would
    compute, bit for bit, so this counts as a capture (the hooked model's NaN check for editing
    taps, which would force the unused logits, does not apply). Replay holds only while the
    calls follow the reference run's order: each call's embedding (hook_embed, cheap to
    evaluate) must equal the reference call's, else replay stops for the rest of the evaluation.
    """

    def __init__(self, recorded: list, ref_embeds: list, embeds: list):
        super().__init__(store=self)
        self.recorded, self.ref_embeds, self.embeds = recorded, ref_embeds, embeds
        self.calls = self.hits = 0
        self.diverged = False

    def append(self, *args) -> None:
        pass

    def validate(self, feature_shape, name) -> None:
        pass

    def __call__(self, a: mx.array, ctx) -> mx.array:
        k, self.calls = self.calls, self.calls + 1
        if not self.diverged:
            self.diverged = not (k < len(self.recorded) and len(self.embeds) == k + 1
                                 and self.recorded[k].shape == a.shape
                                 and self.ref_embeds[k].shape == self.embeds[k].shape
                                 and bool(mx.array_equal(self.ref_embeds[k], self.embeds[k]).item()))
        if self.diverged:
            return a
        self.hits += 1
        return self.recorded[k]


class PrefixShare:
    """Records the reference runs' block inputs and replays them for units later in the network.

    Valid for metrics whose forwards, before the changed module's block, depend only on their
    inputs (not on an earlier forward's output through a later layer, e.g. greedy decoding with
    a steering vector computed from the logits): the study's metrics are such.
    """

    def __init__(self, hm: HookedModel, layers: Iterable[int]):
        self.hm, self.layers = hm, sorted(set(layers))
        self.refs: dict[str, dict] = {}
        self.calls = self.hits = 0

    def record(self, which: str) -> list:
        """Taps that record a reference run ('float' or 'quantized')."""
        ref = self.refs[which] = {"embed": [], **{l: [] for l in self.layers}}
        return [("hook_embed", _Recorder(ref["embed"]))] + \
               [(f"blocks.{l}.hook_resid_pre", _Recorder(ref[l])) for l in self.layers]

    def finish(self, which: str) -> None:
        ref = self.refs[which]
        mx.eval([a for v in ref.values() for a in v])

    def replay(self, which: str, layer: int) -> tuple[list, _Replay]:
        ref, embeds = self.refs[which], []
        tap = _Replay(ref[layer], ref["embed"], embeds)
        return [("hook_embed", _Recorder(embeds)), (f"blocks.{layer}.hook_resid_pre", tap)], tap


def evaluate(hm: HookedModel, metric: Metric, bits: int = 4, group_size: int = 64, granularity: str = "sublayer",
             directions: Iterable[str] = DIRECTIONS, units: Iterable[str] | None = None,
             switch: PrecisionSwitch | None = None, share_prefix: bool = False,
             progress: Callable[[str], None] | None = None) -> dict:
    """The metric's per-prompt values on the float model, the quantized model, and per direction and
    unit with only that unit restored ('restore') or quantized ('quantize'); no intervals (`summarise`).

    share_prefix: replay the reference runs' inputs to the changed unit's block instead of
    recomputing the blocks before it (`PrefixShare`; identical values, about half the block
    compute of a full map). Returns {"units", "precision", "granularity", "values": {metric:
    {"float", "quantized", "restore": {unit: values}, "quantize": {...}}}, "seconds"}.
    """
    directions = list(directions)
    if bad := [d for d in directions if d not in DIRECTIONS]:
        raise MlxInterpError(f"precision-patching direction {bad[0]!r} is not one of {', '.join(DIRECTIONS)}")
    t0 = time.perf_counter()
    sw = switch or PrecisionSwitch(hm, bits, group_size, granularity)
    setup_s = time.perf_counter() - t0
    todo = list(units) if units is not None else sw.units
    share = PrefixShare(hm, [b for u in todo if (b := _block_of(u))]) if share_prefix else None
    evals: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    times, cpu0 = [], time.process_time()

    def run(key: tuple[str, str], quantized: Iterable[str]) -> None:
        t = time.perf_counter()
        taps, replay = [], None
        ref = {"float": "quantize", "quantized": "restore"}.get(key[0])
        block = _block_of(key[1]) if key[1] else None
        if share is not None and ref in directions:
            taps = share.record(key[0])
        elif share is not None and block:
            taps, replay = share.replay("quantized" if key[0] == "restore" else "float", block)
        with sw.state(quantized), hm.hooks(taps):
            evals[key] = _as_dict(metric(hm))
        if share is not None and ref in directions:
            share.finish(key[0])
        if replay is not None:
            share.calls, share.hits = share.calls + replay.calls, share.hits + replay.hits
        times.append(time.perf_counter() - t)
        if progress:
            progress(f"{key[0]} {key[1]} ({times[-1]:.1f} s)")

    run(("float", ""), ())
    run(("quantized", ""), sw.units)
    for d in directions:
        for u in todo:
            run((d, u), [v for v in sw.units if v != u] if d == "restore" else [u])
    values = {}
    for name, f in evals[("float", "")].items():
        values[name] = {"float": f.tolist(), "quantized": evals[("quantized", "")][name].tolist(),
                        **{d: {u: evals[(d, u)][name].tolist() for u in todo} for d in directions}}
    return {"units": todo, "precision": sw.label, "granularity": sw.granularity, "directions": directions,
            "values": values,
            "seconds": {"setup": round(setup_s, 3), "per_evaluation": round(float(np.mean(times)), 3),
                        "total": round(time.perf_counter() - t0, 3), "evaluations": len(times),
                        # CPU seconds of this process (all threads): wall time on a shared machine
                        # depends on the load, this much less
                        "cpu_per_evaluation": round((time.process_time() - cpu0) / len(times), 3),
                        "prefix_calls_replayed": None if share is None else [share.hits, share.calls]}}


def gap_share(num: np.ndarray, gap: np.ndarray, level: float = LEVEL, seed: int = 0) -> dict:
    """mean(num) / mean(gap), BCa bootstrap over prompts (num and gap resampled together; analysis.stats)."""
    num, gap = np.asarray(num, float), np.asarray(gap, float)
    if gap.size == 0 or gap.mean() == 0:
        return Interval(None, None, None, int(gap.size), "ratio of means (no gap)", level=level).to_dict()
    with np.errstate(divide="ignore", invalid="ignore"):
        return bootstrap_ci(num, _ratio_of_means, level=level, seed=seed, paired_with=gap).to_dict()


def _ratio_of_means(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) / np.mean(b, axis=axis)


def group_share(values: dict, members: dict[str, list[str]], direction: str, level: float = LEVEL,
                seed: int = 0) -> dict:
    """Share of the gap carried by a group of units minus another's, as one statistic over prompts:
    members = {"plus": [...units], "minus": [...units]} -> (sum_plus - sum_minus of the units' mean
    changes) / mean gap, BCa bootstrap resampling prompts (every unit's values stay paired)."""
    f, q = np.asarray(values["float"], float), np.asarray(values["quantized"], float)
    rows = values[direction]

    def change(u: str) -> np.ndarray:
        v = np.asarray(rows[u], float)
        return v - q if direction == "restore" else f - v

    num = sum((change(u) for u in members.get("plus", [])), np.zeros_like(f)) - \
        sum((change(u) for u in members.get("minus", [])), np.zeros_like(f))
    return gap_share(num, f - q, level, seed)


def summarise(raw: dict, seed: int = 0) -> dict:
    """Intervals for `evaluate`'s values, per the project's interval policy (analysis.stats):
    the gap mean(float - quantized) by paired_diff_ci; per unit the paired change and the share of
    the gap (a ratio of means: BCa bootstrap). A map reports every unit together, so each unit's
    share and change are at the Bonferroni level 1 - 0.05 / units (simultaneous 95 %)."""
    level = 1 - (1 - LEVEL) / max(1, len(raw["units"]))
    out = {k: raw[k] for k in ("units", "precision", "granularity", "directions")}
    out["level_per_unit"] = level
    out["metrics"] = {}
    for name, vals in raw["values"].items():
        f, q = np.asarray(vals["float"], float), np.asarray(vals["quantized"], float)
        m: dict[str, Any] = {"float": vals["float"], "quantized": vals["quantized"],
                             "gap": paired_diff_ci(f, q, seed=seed).to_dict()}
        for d in raw["directions"]:
            rows = {}
            for u, v in vals[d].items():
                v = np.asarray(v, float)
                num = v - q if d == "restore" else f - v
                rows[u] = {"values": v.tolist(), "share": gap_share(num, f - q, level, seed),
                           "change": paired_diff_ci(v, q if d == "restore" else f, level=level, seed=seed).to_dict()}
            m[d] = rows
        out["metrics"][name] = m
    return out


def precision_patch(hm: HookedModel, metric: Metric, bits: int = 4, group_size: int = 64, granularity: str = "sublayer",
                    directions: Iterable[str] = DIRECTIONS, units: Iterable[str] | None = None,
                    switch: PrecisionSwitch | None = None, seed: int = 0, share_prefix: bool = False,
                    progress: Callable[[str], None] | None = None) -> dict:
    """Per module: the metric with only that module restored to float in the quantized model ('restore')
    and with only it quantized in the float model ('quantize'), and its share of the gap (module doc).

    `metric(hm)` returns per-prompt values (an array, or a dict of arrays for several metrics
    from the same forward passes). Returns a JSON-able dict keyed by metric, with 'units',
    'float' / 'quantized' per-prompt values, the gap's CI, and per direction and unit the values,
    the share of the gap and the paired change; 'seconds' has the wall and CPU time per evaluation.
    `evaluate` + `summarise` in one call.
    """
    raw = evaluate(hm, metric, bits, group_size, granularity, directions, units, switch, share_prefix, progress)
    return {**summarise(raw, seed), "seconds": raw["seconds"]}


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

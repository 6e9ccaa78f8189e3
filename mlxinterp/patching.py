"""Activation patching, batched: many patched variants of one prompt per forward pass.

A *variant* is a list of patches (hook, position, value); all variants of one
prompt run as rows of a single batch, each row with its own patches (a
Replace tap per hook with a per-row position mask). Only the positions the
metric reads are unembedded: a tap on `ln_final.hook_normalized` keeps those
columns, so a 262k-vocabulary model does not compute logits nobody reads.

Everything still runs through mlx-lm's own forward; nothing here skips or
re-implements a layer.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from mlxinterp import taps as T
from mlxinterp.errors import HookNameError, PromptError, TapError

Metric = Callable[[mx.array], mx.array]  # logits [B, V] -> [B]


@dataclass(frozen=True)
class Patch:
    """Write `value` at `hook`, sequence position `position` (negative: from the end).

    value has the hook's feature shape, or with `head` set (per-head hooks such
    as attn.hook_z) the shape of one head, [head_dim].
    """

    hook: str
    position: int
    value: object
    head: int | None = None


@dataclass(eq=False)
class _PatchCells(T.Tap):
    """Per-row patches: values [B, L, *feat] where mask [B, L] (or [B, L, H] per head) is set."""

    values: object = None
    mask: object = None

    def __call__(self, a, ctx):
        m = self.mask.reshape(self.mask.shape + (1,) * (a.ndim - self.mask.ndim))
        return mx.where(m, self.values.astype(a.dtype), a)


@dataclass(eq=False)
class _KeepColumns(T.Tap):
    """Keep only some sequence columns (before the unembedding)."""

    columns: tuple = ()

    def __call__(self, a, ctx):
        return a[:, list(self.columns)]


def logit_diff(hm, target: str | int, foil: str | int) -> Metric:
    """logit(target) - logit(foil) at the read position: the usual patching metric."""
    from mlxinterp.lens import target_id

    t = target if isinstance(target, int) else target_id(hm, target)
    f = foil if isinstance(foil, int) else target_id(hm, foil)
    return lambda logits: logits[:, t] - logits[:, f]


def token_logprob(hm, target: str | int) -> Metric:
    from mlxinterp.lens import target_id

    t = target if isinstance(target, int) else target_id(hm, target)
    return lambda logits: logits[:, t] - mx.logsumexp(logits, axis=-1)


def forward_last(hm, ids, taps=None, read: Sequence[int] = (-1,)) -> mx.array:
    """Logits [B, len(read), V] at the `read` columns only (float32).

    ids: an [B, L] array, or a left-padded `hm.tokens([...])` Batch (prompts of
    different lengths; column -1 is then every row's last token).
    """
    from mlxinterp.hooks import Batch

    pairs = list(taps.items()) if isinstance(taps, dict) else list(taps or [])
    pairs.append(("ln_final.hook_normalized", _KeepColumns(columns=tuple(read))))
    with hm.hooks(pairs):
        out = hm.forward(ids) if isinstance(ids, Batch) else hm.model(ids)
    return out.astype(mx.float32)


def run_variants(hm, ids: Sequence[int], variants: Sequence[Sequence[Patch]], metric: Metric,
                 read: int = -1, batch_size: int = 32, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """metric(logits at `read`) for each variant of one prompt; rows of a batch carry different patches."""
    ids = list(ids)
    L = len(ids)
    if L == 0:
        raise PromptError("empty prompt: nothing to patch")
    out = []
    for start in range(0, len(variants), batch_size):
        chunk = variants[start : start + batch_size]
        taps = _variant_taps(hm, chunk, L)
        logits = forward_last(hm, mx.array([ids] * len(chunk)), taps, (read,))[:, 0]
        vals = metric(logits)
        mx.eval(vals)
        out.append(np.array(vals, dtype=np.float64))
        if progress:
            progress(len(chunk))
    return np.concatenate(out) if out else np.zeros(0)


def _variant_taps(hm, chunk: Sequence[Sequence[Patch]], L: int) -> list:
    """One tap per hook: values [B, L, *feat] and a mask of the patched cells ([B, L], or [B, L, H] per head)."""
    by_hook: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    B = len(chunk)
    for row, patches in enumerate(chunk):
        for p in patches:
            name = hm.point(p.hook).name
            feat = tuple(hm.point(name).feature_shape)
            per_head = len(feat) == 2
            if name not in by_hook:
                by_hook[name] = (np.zeros((B, L, *feat), np.float32),
                                 np.zeros((B, L, feat[0]) if per_head else (B, L), bool))
            values, mask = by_hook[name]
            pos = p.position + L if p.position < 0 else p.position
            if not 0 <= pos < L:
                raise TapError(f"patch position {p.position} is out of range for a {L}-token prompt")
            v = np.asarray(p.value, dtype=np.float32)
            if p.head is not None:
                if not per_head or not 0 <= p.head < feat[0]:
                    raise TapError(f"head={p.head} does not fit {name} (feature shape {feat})")
                if v.shape != feat[1:]:
                    raise TapError(f"patch value for {name} head {p.head} has shape {v.shape}; needs {feat[1:]}")
                values[row, pos, p.head] = v
                mask[row, pos, p.head] = True
                continue
            if v.shape != feat:
                raise TapError(f"patch value for {name} has shape {v.shape}; needs {feat}")
            values[row, pos] = v
            mask[row, pos] = True
    return [(name, _PatchCells(values=mx.array(values), mask=mx.array(mask))) for name, (values, mask) in by_hook.items()]


@dataclass
class SweepResult:
    """Patching grid over (layer, position): raw metric and normalised (0 = corrupt, 1 = clean)."""

    hook: str
    layers: list[int]
    positions: list[int]
    tokens: list[str]
    clean: float
    corrupt: float
    metric: list[list[float]]
    normalised: list[list[float]]
    seconds: float = 0.0
    patches_per_second: float = 0.0
    meta: dict = field(default_factory=dict)


def patch_sweep(hm, clean: str | Sequence[int], corrupt: str | Sequence[int], metric: Metric,
                hook: str = "hook_resid_pre", layers: Sequence[int] | None = None,
                positions: Sequence[int] | None = None, batch_size: int = 32,
                progress: Callable[[int], None] | None = None) -> SweepResult:
    """Patch clean activations into the corrupt run at every (layer, position); one call, batched.

    Clean and corrupt must tokenize to the same length (positions line up).
    """
    clean_ids, corrupt_ids = _ids(hm, clean), _ids(hm, corrupt)
    if len(clean_ids) != len(corrupt_ids):
        raise PromptError(f"clean and corrupt prompts have {len(clean_ids)} and {len(corrupt_ids)} tokens; "
                          "a position-wise sweep needs equal lengths (rephrase one, or patch chosen positions "
                          "with run_variants)")
    layers = list(range(hm.info.n_layers)) if layers is None else _wrap(layers, hm.info.n_layers, "layer", HookNameError)
    L = len(clean_ids)
    positions = list(range(L)) if positions is None else _wrap(positions, L, "position", TapError)
    names = [f"blocks.{l}.{hook}" for l in layers]
    t0 = time.perf_counter()
    _, cache = hm.run_with_cache(mx.array([clean_ids]), names=names)
    m_clean = float(metric(forward_last(hm, mx.array([clean_ids]))[:, 0])[0])
    m_corrupt = float(metric(forward_last(hm, mx.array([corrupt_ids]))[:, 0])[0])
    acts = {n: np.array(cache[n][0].astype(mx.float32)) for n in names}
    variants = [[Patch(n, p, acts[n][p])] for n in names for p in positions]
    vals = run_variants(hm, corrupt_ids, variants, metric, batch_size=batch_size, progress=progress)
    secs = time.perf_counter() - t0
    grid = vals.reshape(len(layers), len(positions))
    denom = m_clean - m_corrupt
    norm = (grid - m_corrupt) / denom if abs(denom) > 1e-9 else np.full_like(grid, np.nan)
    decode = hm.tokenizer.decode
    return SweepResult(hook, layers, positions, [decode([t]) for t in corrupt_ids], m_clean, m_corrupt,
                       grid.tolist(), norm.tolist(), secs, len(variants) / secs)


def _wrap(values: Sequence[int], n: int, what: str, error: type) -> list[int]:
    """Indices in -n..n-1 made non-negative; anything else is an error (it used to wrap around silently)."""
    bad = [v for v in values if not -n <= int(v) < n]
    if bad:
        raise error(f"{what} {bad[0]} is out of range; allowed {-n}..{n - 1}")
    return [int(v) % n for v in values]


def _ids(hm, prompt) -> list[int]:
    if isinstance(prompt, str):
        return hm.tokens(prompt).ids[0].tolist()
    return [int(t) for t in prompt]


def plot_sweep(res: SweepResult, path, title: str | None = None):
    """Heatmap of the normalised patching effect, layers x positions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlxinterp.io import save_figure
    from mlxinterp.lens import _label

    grid = np.array(res.normalised, dtype=float)
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(res.positions)), max(4, 0.3 * len(res.layers))))
    lim = max(1.0, float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0)
    im = ax.imshow(grid, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_xticks(range(len(res.positions)), [_label(res.tokens[p]) for p in res.positions], rotation=45, ha="right")
    ax.set_yticks(range(len(res.layers)), res.layers)
    ax.set_ylabel(f"layer ({res.hook})")
    ax.set_title(title or f"activation patching (clean {res.clean:.2f}, corrupt {res.corrupt:.2f})")
    fig.colorbar(im, ax=ax, label="normalised effect (1 = clean)")
    fig.tight_layout()
    save_figure(path, fig)
    plt.close(fig)
    return path

"""Activation patching, batched: many patched variants of one prompt per forward pass.

A *variant* is a list of patches (hook, position, value); all variants of one
prompt run as rows of a single batch, each row with its own patches (a
Replace tap per hook with a per-row position mask). Only the positions the
metric reads are unembedded: a tap on `ln_final.hook_normalized` keeps those
columns, so a 262k-vocabulary model does not compute logits nobody reads; a
metric that reads only some tokens (`logit_diff`, a `VocabMetric`) has only
those rows of the unembedding computed. With `reuse_prefix`, tokens before a
row's first patched position (identical to the unpatched run) come from the
unpatched run's KV cache instead of being recomputed.

Everything still runs through mlx-lm's own forward; nothing here skips or
re-implements a layer.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np
from matplotlib.figure import Figure
from mlx_lm.models.cache import KVCache, RotatingKVCache, make_prompt_cache

from mlxinterp.analysis.plotting import subplots, token_label
from mlxinterp.core import taps as T
from mlxinterp.core.io import save_figure
from mlxinterp.core.errors import HookNameError, PromptError, TapError
from mlxinterp.core import names as H
from mlxinterp.analysis.lens import target_id
from mlxinterp.core.hooks import ActivationCache, Batch, HookedModel

Metric = Callable[[mx.array], mx.array]  # logits [B, V] -> [B] (or [B, k]: run_variants then returns [n, k])


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
class KeepColumns(T.Tap):
    """Keep only some sequence columns (before the unembedding), so a forward that needs one position's
    logits (forward_last) or none of them (directions.collect) skips unembedding the rest."""

    columns: tuple = ()
    kept: object = None  # the kept columns, for an unembedding of a few vocabulary rows (forward_last)
    recorded = ("kept",)

    def __call__(self, a, ctx):
        self.kept = a[:, list(self.columns)]
        return self.kept


@dataclass(frozen=True)
class VocabMetric:
    """A metric that reads only the logits of `vocab`, so patching unembeds just those rows.

    Called on full logits [B, V] it is an ordinary metric; `on_vocab` takes the
    logits of `vocab` only ([B, len(vocab)], in `vocab` order). For Gemma 3 270M
    this skips a 640 x 262144 matmul per patched row.
    """

    vocab: tuple[int, ...]
    on_vocab: Callable[[mx.array], mx.array]

    def __call__(self, logits: mx.array) -> mx.array:
        return self.on_vocab(logits[:, list(self.vocab)])


def _evaluate(metric: Metric, logits: mx.array) -> mx.array:
    """metric on logits from forward_last(..., vocab=metric.vocab) when it has one, else on full logits."""
    return metric.on_vocab(logits) if isinstance(metric, VocabMetric) else metric(logits)


def _vocab(metric: Metric) -> tuple[int, ...] | None:
    return metric.vocab if isinstance(metric, VocabMetric) else None


def logit_diff(hm: HookedModel, target: str | int, foil: str | int) -> VocabMetric:
    """logit(target) - logit(foil) at the read position: the usual patching metric."""
    t = target if isinstance(target, int) else target_id(hm, target)
    f = foil if isinstance(foil, int) else target_id(hm, foil)
    return VocabMetric((int(t), int(f)), lambda z: z[:, 0] - z[:, 1])


def token_logprob(hm: HookedModel, target: str | int) -> Metric:
    t = target if isinstance(target, int) else target_id(hm, target)
    return lambda logits: logits[:, t] - mx.logsumexp(logits, axis=-1)


def forward_last(hm: HookedModel, ids, taps=None, read: Sequence[int] = (-1,), cache=None,
                 vocab: Sequence[int] | None = None) -> mx.array:
    """Logits [B, len(read), V] at the `read` columns only (float32).

    ids: an [B, L] array, or a left-padded `hm.tokens([...])` Batch (prompts of
    different lengths; column -1 is then every row's last token). `cache`: an
    mlx-lm prompt cache holding earlier tokens (ids [B, L] array only).
    vocab: token ids; the result is then [B, len(read), len(vocab)] and only
    those rows of the unembedding are computed (the model's own full
    unembedding stays an unevaluated node of MLX's lazy graph).
    """
    pairs = list(taps.items()) if isinstance(taps, dict) else list(taps or [])
    keep = KeepColumns(columns=tuple(read))
    pairs.append(("ln_final.hook_normalized", keep))
    with hm.hooks(pairs):
        if isinstance(ids, Batch):
            out = hm.forward(ids)
        else:
            out = hm.model(ids, cache=cache) if cache is not None else hm.model(ids)
    if vocab is not None:
        return hm.unembed(keep.kept, normed=False, vocab=vocab)
    return out.astype(mx.float32)


def run_variants(hm: HookedModel, ids: Sequence[int], variants: Sequence[Sequence[Patch]], metric: Metric,
                 read: int = -1, batch_size: int = 32, progress: Callable[[int], None] | None = None,
                 reuse_prefix: bool = False) -> np.ndarray:
    """metric(logits at `read`) for each variant of one prompt; rows of a batch carry different patches.

    reuse_prefix: the tokens before a variant's first patched position (and
    before `read`) are those of the unpatched run, so the prompt runs once into
    mlx-lm's KV cache and each variant runs only from its first patch on (equal
    to the full run up to float rounding). Variants are batched in order of that
    position. Last-position patches (Todd et al.'s per-head patching at the
    final token) then cost one token each; a layer x position sweep about half
    of the full runs. Caches that cannot be cut to a prefix (a prompt longer
    than a sliding window, non-KV caches) fall back to full runs.
    """
    ids = list(ids)
    L = len(ids)
    if L == 0:
        raise PromptError("empty prompt: nothing to patch")
    r = _position(read, L, "read position")
    prefix = _empty_prefix_cache(hm, L) if reuse_prefix else None
    if prefix is not None:
        hm.model(mx.array([ids]), cache=prefix)  # logits stay unevaluated: only keys and values are computed
        mx.eval([a for c in prefix for a in (c.keys, c.values)])
    return _run_batched(hm, ids, variants, metric, r, batch_size, progress, prefix)


# A forward's fixed cost in token-rows: at the batch sizes of patching, a forward streams every weight once
# (Gemma 3 270M on 2 CPU cores: ~20-25 token-rows). Chunks with different starts merge when cheaper than that.
_FORWARD_COST = 24


def _run_batched(hm: HookedModel, ids: list[int], variants: Sequence[Sequence[Patch]], metric: Metric, r: int, batch_size: int,
                 progress: Callable[[int], None] | None, prefix: list | None) -> np.ndarray:
    """One forward per chunk of variants; with a prefix cache each chunk starts at its first patched position."""
    L = len(ids)
    starts = [min([_position(p.position, L) for p in v] + [r]) if prefix is not None else 0 for v in variants]
    vocab = _vocab(metric)
    out = None  # [n_variants] or [n_variants, k]: a metric may return several numbers per row
    for rows, s in _chunks(starts, batch_size):
        taps = _variant_taps(hm, [variants[i] for i in rows], L, start=s)
        cache = _cut_cache(prefix, s, len(rows)) if s else None
        logits = forward_last(hm, mx.array([ids[s:]] * len(rows)), taps, (r - s,), cache=cache, vocab=vocab)[:, 0]
        vals = _evaluate(metric, logits)
        mx.eval(vals)
        vals = np.array(vals, dtype=np.float64)
        if out is None:
            out = np.zeros((len(variants), *vals.shape[1:]))
        out[rows] = vals
        if progress:
            progress(len(rows))
    return np.zeros(0) if out is None else out


def _chunks(starts: Sequence[int], batch_size: int) -> list[tuple[list[int], int]]:
    """(variant indices, start) per forward: at most batch_size rows, in order of start.

    A chunk runs from its smallest start, so a row with a later start recomputes
    the positions in between; a group of rows with a later start joins the current
    chunk only when that costs fewer token-rows than another forward.
    """
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(starts):
        groups.setdefault(s, []).append(i)
    chunks: list[tuple[list[int], int]] = []
    for s in sorted(groups):
        rows = groups[s]
        if chunks:
            last, s0 = chunks[-1]
            if len(last) + len(rows) <= batch_size and (s - s0) * len(rows) < _FORWARD_COST:
                last.extend(rows)
                continue
        chunks += [(rows[k : k + batch_size], s) for k in range(0, len(rows), batch_size)]
    return chunks


def _position(pos: int, L: int, what: str = "patch position") -> int:
    p = pos + L if pos < 0 else pos
    if not 0 <= p < L:
        raise TapError(f"{what} {pos} is out of range for a {L}-token prompt")
    return p


def _empty_prefix_cache(hm: HookedModel, L: int) -> list | None:
    """A fresh mlx-lm prompt cache to fill with the unpatched prompt; None when it could not be cut to a prefix."""
    cache = make_prompt_cache(hm.model)
    if not all(type(c) is KVCache or (type(c) is RotatingKVCache and L <= c.max_size) for c in cache):
        return None
    return cache


def _cut_cache(prefix: list, s: int, B: int) -> list:
    """Copies of the prefix caches holding only their first s tokens, repeated for B rows.

    Valid for KVCache and for a RotatingKVCache that has not wrapped (tokens in
    temporal order), which is what _empty_prefix_cache accepts.
    """
    out = []
    for c in prefix:
        c2 = copy.copy(c)
        c2.keys, c2.values = (mx.repeat(a[..., :s, :], B, axis=0) for a in (c.keys, c.values))
        c2.offset = s
        if hasattr(c2, "_idx"):
            c2._idx = s
        out.append(c2)
    return out


def _variant_taps(hm: HookedModel, chunk: Sequence[Sequence[Patch]], L: int, start: int = 0) -> list:
    """One tap per hook: values [B, n, *feat] and a mask of the patched cells ([B, n], or [B, n, H] per head).

    The forward covers positions start..L-1 (n = L - start columns; earlier ones sit in a KV cache).
    """
    by_hook: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    B = len(chunk)
    n = L - start
    for row, patches in enumerate(chunk):
        for p in patches:
            name = hm.point(p.hook).name
            feat = tuple(hm.point(name).feature_shape)
            per_head = len(feat) == 2
            if name not in by_hook:
                by_hook[name] = (np.zeros((B, n, *feat), np.float32),
                                 np.zeros((B, n, feat[0]) if per_head else (B, n), bool))
            values, mask = by_hook[name]
            pos = _position(p.position, L) - start
            if pos < 0:
                raise TapError(f"patch position {p.position} lies in the reused prefix (before {start})")
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


def patch_sweep(hm: HookedModel, clean: str | Sequence[int], corrupt: str | Sequence[int], metric: Metric,
                hook: str = "hook_resid_pre", layers: Sequence[int] | None = None,
                positions: Sequence[int] | None = None, batch_size: int = 32,
                progress: Callable[[int], None] | None = None, reuse_prefix: bool = True,
                skip_identical: bool = True) -> SweepResult:
    """Patch clean activations into the corrupt run at every (layer, position); one call, batched.

    Clean and corrupt must tokenize to the same length (positions line up).
    Two unpatched forwards (clean and corrupt, each capturing the hook; the
    corrupt one also fills the KV cache the patched rows start from, see
    run_variants' reuse_prefix), then the patched rows, batched.
    skip_identical: a cell whose clean activation equals the corrupt one bit
    for bit (every position before the first differing token, e.g. BOS) would
    rerun the corrupt forward exactly; it gets the corrupt metric without a run
    (`meta["skipped"]` counts them).
    """
    clean_ids, corrupt_ids = prompt_ids(hm, clean), prompt_ids(hm, corrupt)
    if len(clean_ids) != len(corrupt_ids):
        raise PromptError(f"clean and corrupt prompts have {len(clean_ids)} and {len(corrupt_ids)} tokens; "
                          "a position-wise sweep needs equal lengths (rephrase one, or patch chosen positions "
                          "with run_variants)")
    layers = list(range(hm.info.n_layers)) if layers is None else _wrap(layers, hm.info.n_layers, "layer", HookNameError)
    L = len(clean_ids)
    positions = list(range(L)) if positions is None else _wrap(positions, L, "position", TapError)
    names = [H.name(l, hook) for l in layers]
    t0 = time.perf_counter()
    prefix = _empty_prefix_cache(hm, L) if reuse_prefix else None
    m_clean, acts = _capture_run(hm, clean_ids, names, metric)
    m_corrupt, corrupt_acts = _capture_run(hm, corrupt_ids, names, metric, cache=prefix)
    cells = [(n, p) for n in names for p in positions]
    same = [skip_identical and np.array_equal(acts[n][p], corrupt_acts[n][p]) for n, p in cells]
    todo = [i for i, sm in enumerate(same) if not sm]
    if progress and len(todo) < len(cells):
        progress(len(cells) - len(todo))
    vals = np.full(len(cells), m_corrupt)
    if todo:
        variants = [[Patch(cells[i][0], cells[i][1], acts[cells[i][0]][cells[i][1]])] for i in todo]
        vals[todo] = _run_batched(hm, corrupt_ids, variants, metric, L - 1, batch_size, progress, prefix)
    secs = time.perf_counter() - t0
    grid = vals.reshape(len(layers), len(positions))
    denom = m_clean - m_corrupt
    norm = (grid - m_corrupt) / denom if abs(denom) > 1e-9 else np.full_like(grid, np.nan)
    decode = hm.tokenizer.decode
    return SweepResult(hook, layers, positions, [decode([t]) for t in corrupt_ids], m_clean, m_corrupt,
                       grid.tolist(), norm.tolist(), secs, len(cells) / secs,
                       meta={"skipped": len(cells) - len(todo), "reuse_prefix": prefix is not None})


def _capture_run(hm: HookedModel, ids: list[int], names: list[str], metric: Metric, cache: list | None = None):
    """(metric at the last position, {hook: activations [L, *feat] float32}) of one unpatched forward."""
    store = ActivationCache(hm)
    logits = forward_last(hm, mx.array([ids]), [(n, T.Capture(store=store)) for n in names], cache=cache,
                          vocab=_vocab(metric))[:, 0]
    value = _evaluate(metric, logits)
    mx.eval(value, *store.arrays(), *([a for c in cache for a in (c.keys, c.values)] if cache else []))
    return float(value[0]), {n: np.array(store[n][0].astype(mx.float32)) for n in names}


def _wrap(values: Sequence[int], n: int, what: str, error: type) -> list[int]:
    """Indices in -n..n-1 made non-negative; anything else is an error (it used to wrap around silently)."""
    bad = [v for v in values if not -n <= int(v) < n]
    if bad:
        raise error(f"{what} {bad[0]} is out of range; allowed {-n}..{n - 1}")
    return [int(v) % n for v in values]


def prompt_ids(hm: HookedModel, prompt) -> list[int]:
    """Token ids of a prompt given as text (tokenized the model's way) or as ids already."""
    if isinstance(prompt, str):
        return hm.tokens(prompt).ids[0].tolist()
    return [int(t) for t in prompt]


def plot_sweep(res: SweepResult, path, title: str | None = None):
    """Save `sweep_figure(res, title)` as a PNG at `path`; return the path."""
    save_figure(path, sweep_figure(res, title))
    return path


def sweep_figure(res: SweepResult, title: str | None = None) -> Figure:
    """Heatmap of the normalised patching effect, layers x positions."""
    grid = np.array(res.normalised, dtype=float)
    fig, ax = subplots(figsize=(max(5, 0.7 * len(res.positions)), max(4, 0.3 * len(res.layers))))
    lim = max(1.0, float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0)
    im = ax.imshow(grid, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_xticks(range(len(res.positions)), [token_label(res.tokens[p]) for p in res.positions], rotation=45, ha="right")
    ax.set_yticks(range(len(res.layers)), res.layers)
    ax.set_ylabel(f"layer ({res.hook})")
    ax.set_title(title or f"activation patching (clean {res.clean:.2f}, corrupt {res.corrupt:.2f})")
    fig.colorbar(im, ax=ax, label="normalised effect (1 = clean)")
    fig.tight_layout()
    return fig

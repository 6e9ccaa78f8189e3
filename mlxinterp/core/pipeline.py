"""Pipeline (layer) sharding: a model's blocks split across ranks, each rank holding only its own.

Started by `mlx.launch -n N --backend ring python ...` (or mpirun), every rank runs
the same script. Rank r holds the contiguous blocks `split_layers(n, N)[r]`; the
embedding lives on rank 0, the final norm and unembedding on the last rank (and
the embedding there too when the unembedding is tied to it). Everything else is
replaced before any weight is read from disk, so a rank's memory is its share.

mlx-lm's own forward still runs on every rank, unchanged: blocks a rank does not
hold are `_Relay` modules. They return their input (keeping the KV cache's offset
in step with a 1-wide dummy entry, so mlx-lm's masks and RoPE offsets are right),
except two: the relay just before a rank's first block receives the residual
stream from the previous rank, and the relay just after its last block sends it
on. Since relays are not hooked, every tap of a rank's blocks has run before its
output is sent: a steering tap on rank 1 changes what rank 2 receives exactly as
in one process. The last rank's logits are passed on to every other rank (`broadcast`),
so every rank sees the same logits and mlx-lm's generation samples the same tokens
everywhere. Every call of the model is
evaluated before it returns, on every rank, so its transfers run in call order
whatever the caller reads afterwards (the logits, a capture, only a KV cache).

Hook names are global (`blocks.17.hook_resid_post` is the same point on every
rank); a tap is attached on the rank that holds its block and ignored elsewhere.
What taps record is given to every rank when their `hooks` block ends (a Capture's
arrays, a tap's `Tap.recorded` attributes), `run_with_cache` gives every rank every
rank's captures, and `unembed` (final norm + unembedding, which only the last rank
holds) gives every rank the last rank's result: code that reads captures and decides
what to run next (an experiment choosing a layer) then takes the same path on every
rank, so the ranks' forwards stay paired (`run-suite --shard layers`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.utils import get_total_parameters

from mlxinterp.core import patterns
from mlxinterp.core.archs import BLOCK_ORDER, arch_spec, text_model, top_text_model
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.core.hooks import ActivationCache, HookedModel, HookPoint
from mlxinterp.core.taps import Capture

_TOP_POINTS = {"hook_embed": "first", "ln_final.hook_normalized": "last", "hook_logits": "all"}
_MAX_NDIM = 6  # arrays passed between ranks (broadcast): captures are [B, L, *feature], at most 5-d
_DTYPES = [mx.float32, mx.float16, mx.bfloat16, mx.int32, mx.uint32, mx.int64, mx.uint8, mx.bool_]


class ShardingError(MlxInterpError):
    """A model cannot be split as asked (more ranks than layers, no process group)."""


def split_layers(n_layers: int, size: int) -> list[range]:
    """Contiguous blocks per rank, in rank order; the first ranks take one extra when it does not divide."""
    if size < 1 or n_layers < size:
        raise ShardingError(f"cannot split {n_layers} layers over {size} ranks: each rank needs at least one layer",
                            hint="launch fewer ranks")
    base, extra = divmod(n_layers, size)
    out, start = [], 0
    for r in range(size):
        n = base + (1 if r < extra else 0)
        out.append(range(start, start + n))
        start += n
    return out


class _Relay(nn.Module):
    """Stands in for a block this rank does not hold (see the module docstring)."""

    def __init__(self, like: nn.Module, mode: str, peer: int, group):
        super().__init__()
        for k, v in vars(like).items():  # plain attributes mlx-lm reads off a block (use_sliding, is_sliding ...)
            if isinstance(v, (bool, int, float, str)) or v is None:
                object.__setattr__(self, k, v)
        self._mode, self._peer, self._group = mode, peer, group
        # The block itself, its weights unread (lazy): not a child module, so loading never evaluates them;
        # ShardedHookedModel.block reads them from the checkpoint when code asks for this block's weights.
        object.__setattr__(self, "whole", like)

    def __deepcopy__(self, memo) -> _Relay:
        """A relay of a copied model (e.g. a quantized copy): the same peer, group (which cannot be copied)
        and unread block."""
        return _Relay(self.whole, self._mode, self._peer, self._group)

    def __call__(self, x: mx.array, mask=None, cache=None, *args, **kwargs) -> mx.array:
        if cache is not None:  # advance the offset as the real block's attention would
            z = mx.zeros((x.shape[0], 1, x.shape[1], 1), dtype=x.dtype)
            cache.update_and_fetch(z, z)
        if self._mode == "skip":
            return x
        # Transfers run in call order on both ends: the pipelined model evaluates each forward before
        # it returns (_pipelined_class), so no transfer is left for a later evaluation to pick up.
        if self._mode == "recv":
            return mx.distributed.recv_like(x, src=self._peer, group=self._group)
        sent = mx.distributed.send(x, dst=self._peer, group=self._group)
        return mx.depends(x, sent)


class _ZeroEmbedding(nn.Module):
    """The embedding on ranks that only need its shape: zeros [.., d_model] (replaced by what they receive)."""

    def __init__(self, d_model: int, dtype):
        super().__init__()
        self._d, self._dtype = d_model, dtype

    def __call__(self, ids: mx.array) -> mx.array:
        return mx.zeros((*ids.shape, self._d), dtype=self._dtype)

    def __deepcopy__(self, memo) -> _ZeroEmbedding:
        return _ZeroEmbedding(self._d, self._dtype)  # an MLX dtype cannot be deep-copied

    def as_linear(self, x: mx.array) -> mx.array:
        return _zero_logits(self, x)


def _zero_logits(self, x: mx.array) -> mx.array:
    """[.., 1] zeros standing in for logits; they depend on x, so the forward that sends x still runs."""
    return mx.depends(mx.zeros((*x.shape[:-1], 1), dtype=x.dtype), x)


class _Identity(nn.Module):
    def __call__(self, x: mx.array, *args, **kwargs) -> mx.array:
        return x


class _ZeroHead(nn.Module):
    def __call__(self, x: mx.array) -> mx.array:
        return _zero_logits(self, x)


def _pipelined_class(cls: type, is_last: bool, group) -> type:
    """The top model's class, with the last rank's logits given to every rank."""
    orig = cls.__call__

    def __call__(self, inputs=None, cache=None, *args, **kwargs):
        out = orig(self, inputs, cache, *args, **kwargs)
        # The last rank's logits, on every rank, evaluated here whatever the caller reads: a forward left
        # lazy would run its transfers whenever each rank next evaluates something that depends on them,
        # which differs between ranks (a rank that only reads a KV cache never sends; one that reads a
        # capture waits on a receive while the other passes logits on), and the ranks would pair different
        # transfers. Their shape comes from the last rank too: a tap at the final norm (KeepColumns) may keep
        # only some positions there. `after=out`: each rank runs (and sends on) its share of the forward first.
        return broadcast(group, group.size() - 1, out if is_last else None, after=out)

    return type(f"Pipelined{cls.__name__}", (cls,), {"__call__": __call__})


def shard_model(model, rank: int, size: int, group, dtype) -> range:
    """Replace everything rank `rank` does not hold (call before the weights are evaluated)."""
    inner, top = text_model(model), top_text_model(model)
    n = len(inner.layers)
    mine = split_layers(n, size)[rank]
    first, last = rank == 0, rank == size - 1
    for i in range(n):
        if i in mine:
            continue
        mode = "recv" if i == mine.start - 1 else ("send" if i == mine.stop else "skip")
        peer = rank - 1 if mode == "recv" else rank + 1
        inner.layers[i] = _Relay(inner.layers[i], mode, peer, group)
    tied = "lm_head" not in top
    d_model = inner.embed_tokens.weight.shape[-1] * (32 // getattr(inner.embed_tokens, "bits", 32))
    if not first and not (last and tied):
        inner.embed_tokens = _ZeroEmbedding(d_model, dtype)
    if not last:
        inner.norm = _Identity()
        if "lm_head" in top:
            top.lm_head = _ZeroHead()
        elif first:  # tied: rank 0 keeps its embedding for the lookup, not for the unembedding
            emb = inner.embed_tokens
            emb.__class__ = type(f"Headless{type(emb).__name__}", (type(emb),), {"as_linear": _zero_logits})
    top.__class__ = _pipelined_class(type(top), last, group)
    return mine


def broadcast(group, src: int, arr: mx.array | None, after: mx.array | None = None) -> mx.array | None:
    """Rank `src`'s `arr` (None allowed) on every rank of `group`, evaluated; what other ranks pass is ignored.

    A header (present, dtype, shape), then the array, each passed from neighbour to neighbour round the
    ring, src -> src + 1 -> ...: MLX's ring backend sends only to a rank's two neighbours, and on this
    2-core machine a send/receive pair took 0.03-0.1 ms where a sum over the group of 8 floats took
    4-45 ms (tiny layer-sharded runs were 6x slower than one process with sums). Exact: bytes are copied.
    `after`: evaluated on this rank before it waits to receive (its share of a forward must be sent first).
    """
    rank = group.rank()
    head = [0] * (3 + _MAX_NDIM)
    if rank == src and arr is not None:
        if arr.ndim > _MAX_NDIM or arr.dtype not in _DTYPES:
            raise ShardingError(f"cannot pass a {arr.ndim}-d {arr.dtype} array between ranks",
                                hint=f"arrays of at most {_MAX_NDIM} dimensions, of dtype "
                                     f"{', '.join(str(d).removeprefix('mlx.core.') for d in _DTYPES)}")
        head = [1, _DTYPES.index(arr.dtype), arr.ndim, *arr.shape, *[0] * (_MAX_NDIM - arr.ndim)]
    head = _along_ring(group, src, mx.array(head, dtype=mx.int32) if rank == src else None,
                       mx.zeros((3 + _MAX_NDIM,), mx.int32)).tolist()
    if not head[0]:
        return None
    if after is not None:  # now: a receive has no inputs, so nothing else would order it after `after`
        mx.eval(after)
    like = mx.zeros(head[3 : 3 + head[2]], dtype=_DTYPES[head[1]])
    return _along_ring(group, src, arr if rank == src else None, like)


def _along_ring(group, src: int, arr: mx.array | None, like: mx.array) -> mx.array:
    """`arr` from rank src, received from the left neighbour (shape and dtype of `like`) and sent on to the
    right one, until every rank has it; evaluated."""
    rank, size = group.rank(), group.size()
    k = (rank - src) % size  # hops from src
    got = arr if k == 0 else mx.distributed.recv_like(like, src=(rank - 1) % size, group=group)
    if k < size - 1:
        got = mx.depends(got, mx.distributed.send(got, dst=(rank + 1) % size, group=group))
    mx.eval(got)
    return got


class ShardedHookedModel(HookedModel):
    """A HookedModel whose blocks are split across the ranks of `group` (see the module docstring)."""

    def __init__(self, loaded, group, layers: range):
        self.group, self.rank, self.size = group, group.rank(), group.size()
        self.layers = layers
        self.split = split_layers(loaded.info.n_layers, self.size)
        super().__init__(loaded)

    # -- which rank holds what
    def owner(self, name: str) -> int:
        """The rank whose hook point `name` (normalised) is; hook_logits is on every rank (returns -1)."""
        if name in _TOP_POINTS:
            return {"first": 0, "last": self.size - 1, "all": -1}[_TOP_POINTS[name]]
        layer = int(name.split(".")[1])
        return next(r for r, rng in enumerate(self.split) if layer in rng)

    def owns(self, layer: int | None, name: str) -> bool:
        return self.owner(name) in (-1, self.rank)

    @property
    def global_hook_names(self) -> list[str]:
        """Every hook point of the whole model, in forward order (each rank holds some of them)."""
        sites = arch_spec(self.info.arch).sites
        per_block = [s for s in BLOCK_ORDER if s in sites] + list(patterns.suffixes(sites))  # as HookedModel orders them
        blocks = [f"blocks.{i}.{s}" for i in range(self.info.n_layers) for s in per_block]
        return ["hook_embed", *blocks, "ln_final.hook_normalized", "hook_logits"]

    def point(self, name: str) -> HookPoint:
        """This rank's hook point, or for a point another rank holds a detached stand-in with its global
        name, layer and shape (code reading `hm.point(name).name` or its shape runs alike on every rank;
        a tap on it is attached on the owning rank by `hooks`)."""
        norm = self._normalise(name)
        if norm in self._points or norm not in set(self.global_hook_names):
            return super().point(name)
        layer = None if norm in _TOP_POINTS else int(norm.split(".")[1])
        if patterns.is_pattern_name(norm):
            return HookPoint(norm, layer, patterns.KIND, self._state, patterns.feature_shape(self.info.n_heads))
        kind = "d_model" if norm in _TOP_POINTS else arch_spec(self.info.arch).sites[norm.split(".", 2)[2]].kind
        return HookPoint(norm, layer, kind, self._state, self._global_shape(norm))

    def global_name(self, name: str) -> str:
        """`name` normalised (negative layers counted from the end); unknown names raise as usual."""
        name = self._normalise(name)
        if name not in set(self.global_hook_names):
            return self.point(name).name  # raises the usual unknown-name error
        return name

    # -- taps: attach where the block is, validate everywhere
    @contextmanager
    def hooks(self, taps=None):
        """Taps attached where their block is. On leaving the block, what each tap recorded on the rank
        holding its point (a Capture's array, the attributes a tap lists in `recorded`) is given to the
        same tap on every other rank, in forward order, so code reading them runs alike on every rank.

        Taps held by other ranks still count as taps of this forward here: the finite-logits check of
        editing taps (HookedModel) then runs on every rank, as one process would run it."""
        pairs = list(taps.items()) if isinstance(taps, Mapping) else list(taps or [])
        flat = [(self.global_name(n), t) for n, ts in pairs for t in (ts if isinstance(ts, (list, tuple)) else [ts])]
        remote = [(n, t) for n, t in flat if self.owner(n) not in (-1, self.rank)]
        shared = [(n, t) for n, t in flat if self.owner(n) != -1 and (isinstance(t, Capture) or getattr(t, "recorded", ()))]
        order = {n: i for i, n in enumerate(self.global_hook_names)}
        shared.sort(key=lambda p: order.get(p[0], len(order)))  # forward order: rank 0's stores fill as in one process
        state, edits = self._state, sum(not isinstance(t, Capture) for _, t in remote)
        state.n_taps, state.n_edits = state.n_taps + len(remote), state.n_edits + edits
        try:
            with super().hooks([(n, t) for n, t in flat if self.owner(n) in (-1, self.rank)]) as hm:
                yield hm
        finally:
            state.n_taps, state.n_edits = state.n_taps - len(remote), state.n_edits - edits
        for name, tap in shared:
            self._share_recorded(name, tap)

    def _share_recorded(self, name: str, tap) -> None:
        """What `tap` recorded at `name` on the point's owner, on every rank."""
        owner = self.owner(name)
        if isinstance(tap, Capture):
            got = self.from_rank(owner, tap.store[name] if owner == self.rank else None)
            if owner != self.rank:
                tap.store.append(name, got, None)
            return
        for attr in tap.recorded:
            got = self.from_rank(owner, getattr(tap, attr) if owner == self.rank else None)
            if owner != self.rank:
                setattr(tap, attr, got)

    def from_rank(self, rank: int, arr: mx.array | None) -> mx.array | None:
        """`arr` as rank `rank` holds it (what the others pass is ignored), on every rank (`broadcast`)."""
        return broadcast(self.group, rank, arr if rank == self.rank else None)

    def names(self, filter=None) -> list[str]:
        """Global hook names (every rank's), so that every rank asks for the same captures."""
        if filter is None:
            return list(self.global_hook_names)
        if isinstance(filter, str):
            hits = [n for n in self.global_hook_names if filter in n]
            return hits or super().names(filter)  # no match: the usual error
        if callable(filter):
            return [n for n in self.global_hook_names if filter(n)]
        return [self.global_name(f) for f in filter]

    def block(self, layer: int):
        """Block `layer`'s module on every rank: a rank that does not hold it reads its weights from the
        checkpoint now (every host has the checkpoint: it loads its own share from it) and keeps them, so
        weight reads are exact and need no transfer; only forwards are split (what the relay runs)."""
        mod = super().block(layer)
        return mod.whole if isinstance(mod, _Relay) else mod

    def unembed(self, h: mx.array, normed: bool = True, vocab=None) -> mx.array:
        """HookedModel.unembed computed on the last rank (the only one with the final norm and the
        unembedding), on every rank (`from_rank`)."""
        last = self.size - 1
        return self.from_rank(last, super().unembed(h, normed=normed, vocab=vocab) if self.rank == last else None)

    def unembedding_rows(self, vocab):
        """HookedModel.unembedding_rows from the last rank, on every rank (as `unembed`)."""
        last = self.size - 1
        w, b = super().unembedding_rows(list(vocab)) if self.rank == last else (None, None)
        return self.from_rank(last, w), self.from_rank(last, b)

    def run_with_cache(self, prompts, names=None, taps=None, chat: bool = False, logits: bool = True):
        """As HookedModel.run_with_cache; every rank's cache holds every rank's captures (shared by `hooks`).
        The logits are always computed: every rank's forward takes part in the pipeline."""
        # names None: every point but the scores and patterns, as HookedModel.run_with_cache (they switch
        # attention to its explicit path)
        wanted = [n for n in self.global_hook_names if not patterns.is_pattern_name(n)] if names is None else (
            [n for n in self.global_hook_names if names in n] if isinstance(names, str)
            else [self.global_name(n) for n in names])
        out, local = super().run_with_cache(prompts, names=wanted, taps=taps, chat=chat)
        cache = GatheredCache(self, local.left_padding)
        for name in dict.fromkeys(wanted):  # the same order on every rank (code may iterate over the names)
            if name in local:
                cache.append(name, local[name], None)
        return (out if logits else None), cache

    def _global_shape(self, name: str) -> tuple[int, ...]:
        if name in _TOP_POINTS:
            return self._shape_of({"hook_embed": "d_model", "ln_final.hook_normalized": "d_model",
                                   "hook_logits": "vocab"}[name])
        return self._shape_of(arch_spec(self.info.arch).sites[name.split(".", 2)[2]].kind)


class GatheredCache(ActivationCache):
    """The captures of a sharded forward, looked up by global hook name (every rank holds every rank's)."""

    def __getitem__(self, name: str) -> mx.array:
        name = self.hooked.global_name(name)
        if name not in self:
            raise KeyError(f"{name!r} was not captured on rank {self.hooked.rank}; captured: {len(self.keys())} "
                           "hook points")
        chunks = self._chunks[name]
        if len(chunks) > 1:
            self._chunks[name] = chunks = [mx.concatenate(chunks, axis=1)]
        return chunks[0]


def load_sharded(spec: str, group=None, dtype: str | None = None) -> ShardedHookedModel:
    """Load `spec` with this rank's blocks only (mx.distributed group: the launched one by default)."""
    from mlxinterp.core.loading import load_model

    if group is None:
        try:
            group = mx.distributed.init(strict=True)
        except (RuntimeError, ValueError):
            group = None
    if group is None or group.size() < 2:
        raise ShardingError("layer sharding needs at least 2 ranks; this process is alone",
                            hint="start it with `mlx.launch -n 2 --backend ring python ...`")
    held: dict[str, Any] = {}

    def shard(model):
        first = next(v for _, v in tree_flatten(model.parameters()) if mx.issubdtype(v.dtype, mx.floating))
        held["n_params"] = int(get_total_parameters(model))  # the whole model's (shapes only: nothing is read)
        held["layers"] = shard_model(model, group.rank(), group.size(), group, first.dtype)
        return model

    loaded = load_model(spec, dtype=dtype, shard=shard)
    # the model's facts, not this rank's share (results record them, and every rank must agree)
    loaded.info = dataclasses.replace(loaded.info, n_params=held["n_params"])
    return ShardedHookedModel(loaded, group, held["layers"])

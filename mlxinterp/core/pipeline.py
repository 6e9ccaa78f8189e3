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
in one process. The last rank's logits are summed over the group (the other ranks
contribute zeros, so the sum is exact), so every rank sees the same logits and
mlx-lm's generation samples the same tokens everywhere.

Hook names are global (`blocks.17.hook_resid_post` is the same point on every
rank); a tap is attached on the rank that holds its block and ignored elsewhere.
`run_with_cache` gives every rank every rank's captures, and `unembed` (final norm +
unembedding, which only the last rank holds) gives every rank the last rank's
result: code that reads captures and decides what to run next (an experiment
choosing a layer) then takes the same path on every rank, so the ranks' forwards
stay paired (`run-suite --shard layers`).
"""
from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mlxinterp.core.archs import BLOCK_ORDER, arch_spec, text_model, top_text_model
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.core.hooks import ActivationCache, HookedModel, HookPoint
from mlxinterp.core.taps import Capture

_TOP_POINTS = {"hook_embed": "first", "ln_final.hook_normalized": "last", "hook_logits": "all"}


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
        object.__setattr__(self, "_last", [])  # this relay's previous transfer (see __call__); not a parameter

    def __call__(self, x: mx.array, mask=None, cache=None, *args, **kwargs) -> mx.array:
        if cache is not None:  # advance the offset as the real block's attention would
            z = mx.zeros((x.shape[0], 1, x.shape[1], 1), dtype=x.dtype)
            cache.update_and_fetch(z, z)
        if self._mode == "skip":
            return x
        # Each transfer depends on the previous one, so transfers run in call order on both ends,
        # and a forward whose output nobody evaluates (a prompt that only fills the KV cache,
        # as mlx-lm's generation does) still sends before the next one.
        x_in = mx.depends(x, self._last) if self._last else x
        if self._mode == "recv":
            out = mx.distributed.recv_like(x_in, src=self._peer, group=self._group)
            object.__setattr__(self, "_last", [out])
            return out
        sent = mx.distributed.send(x_in, dst=self._peer, group=self._group)
        object.__setattr__(self, "_last", [sent])
        return mx.depends(x, sent)


class _ZeroEmbedding(nn.Module):
    """The embedding on ranks that only need its shape: zeros [.., d_model] (replaced by what they receive)."""

    def __init__(self, d_model: int, dtype):
        super().__init__()
        self._d, self._dtype = d_model, dtype

    def __call__(self, ids: mx.array) -> mx.array:
        return mx.zeros((*ids.shape, self._d), dtype=self._dtype)

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


def _pipelined_class(cls: type, vocab: int, is_last: bool, group) -> type:
    """The top model's class, with its logits summed over the group (zeros from every rank but the last)."""
    orig = cls.__call__

    def __call__(self, inputs=None, cache=None, *args, **kwargs):
        out = orig(self, inputs, cache, *args, **kwargs)
        # zeros that still depend on this rank's forward, so its send to the next rank runs
        mine = out if is_last else mx.depends(mx.zeros((*out.shape[:-1], vocab), dtype=out.dtype), out)
        return mx.distributed.all_sum(mine, group=group)

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
    vocab = int(top.args.vocab_size if hasattr(top, "args") else inner.vocab_size)
    top.__class__ = _pipelined_class(type(top), vocab, last, group)
    return mine


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
        blocks = [f"blocks.{i}.{s}" for i in range(self.info.n_layers) for s in BLOCK_ORDER if s in sites]
        return ["hook_embed", *blocks, "ln_final.hook_normalized", "hook_logits"]

    def point(self, name: str) -> HookPoint:
        """This rank's hook point, or for a point another rank holds a detached stand-in with its global
        name, layer and shape (code reading `hm.point(name).name` or its shape runs alike on every rank;
        a tap on it is attached on the owning rank by `hooks`)."""
        norm = self._normalise(name)
        if norm in self._points or norm not in set(self.global_hook_names):
            return super().point(name)
        layer = None if norm in _TOP_POINTS else int(norm.split(".")[1])
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
        """Taps attached where their block is. On leaving the block, what each Capture tap recorded on
        the rank holding its point is given to the same tap's store on every other rank (in the taps'
        order), so code that captures through taps reads the same arrays on every rank."""
        pairs = list(taps.items()) if isinstance(taps, Mapping) else list(taps or [])
        local = [(self.global_name(n), t) for n, t in pairs]
        captures = [(n, t) for n, ts in local for t in (ts if isinstance(ts, (list, tuple)) else [ts])
                    if isinstance(t, Capture) and self.owner(n) != -1]
        with super().hooks([(n, t) for n, t in local if self.owner(n) in (-1, self.rank)]) as hm:
            yield hm
        for name, tap in captures:
            self._share_capture(name, tap)

    def _share_capture(self, name: str, tap: Capture) -> None:
        """The owner's recorded array (float32) on every rank: its shape, then its values, by sums over
        the group in which the other ranks add zeros."""
        mine = self.owner(name) == self.rank
        arr = tap.store[name].astype(mx.float32) if mine else None
        shape = mx.array(list(arr.shape) + [0] * (6 - arr.ndim) if mine else [0] * 6, dtype=mx.int32)
        shape = [int(v) for v in mx.distributed.all_sum(shape, group=self.group).tolist() if v]
        got = mx.distributed.all_sum(arr if mine else mx.zeros(shape, mx.float32), group=self.group)
        mx.eval(got)
        if not mine:
            tap.store.append(name, got, None)

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

    def unembed(self, h: mx.array, normed: bool = True, vocab=None) -> mx.array:
        """HookedModel.unembed computed on the last rank (the only one with the final norm and the
        unembedding) and summed over the group, the other ranks adding zeros: exact, and on every rank."""
        if self.rank == self.size - 1:
            out = super().unembed(h, normed=normed, vocab=vocab)
        else:
            width = self.info.vocab_size if vocab is None else len(list(vocab))
            out = mx.zeros((*h.shape[:-1], width), dtype=mx.float32)
        out = mx.distributed.all_sum(out, group=self.group)
        mx.eval(out)
        return out

    def unembedding_rows(self, vocab):
        """HookedModel.unembedding_rows from the last rank, on every rank (as `unembed`)."""
        ids = list(vocab)
        last = self.rank == self.size - 1
        w, b = super().unembedding_rows(ids) if last else (mx.zeros((len(ids), self.info.d_model), mx.float32), None)
        has_bias = mx.distributed.all_sum(mx.array([float(last and b is not None)]), group=self.group)
        w = mx.distributed.all_sum(w, group=self.group)
        if float(has_bias.item()):
            b = mx.distributed.all_sum(b if b is not None else mx.zeros((len(ids),), mx.float32), group=self.group)
        mx.eval(w, *([] if b is None else [b]))
        return w, b

    def run_with_cache(self, prompts, names=None, taps=None, chat: bool = False, logits: bool = True):
        """As HookedModel.run_with_cache; every rank's cache holds every rank's captures (shared by `hooks`).
        The logits are always computed: every rank's forward takes part in the pipeline."""
        wanted = self.global_hook_names if names is None else (
            [n for n in self.global_hook_names if names in n] if isinstance(names, str)
            else [self.global_name(n) for n in names])
        out, local = super().run_with_cache(prompts, names=wanted, taps=taps, chat=chat)
        cache = GatheredCache(self, local.left_padding)
        for name in local.keys():
            cache.append(name, local[name], None)
        return (out if logits else None), cache

    def forward(self, batch):
        """Logits on every rank, evaluated now: a lazy result holding sends and a sum over the group
        would pair with whatever collective another rank evaluates next (a deadlock)."""
        logits = super().forward(batch)
        mx.eval(logits)
        return logits

    def generate(self, prompt, max_tokens: int = 32, taps=None, chat: bool = False,
                 temperature: float = 0.0, seed: int = 0):
        """Greedy generation (HookedModel.generate_batch's loop, one prompt), taps in place.

        mlx-lm's stream_generate evaluates only the KV cache during the prompt, which leaves
        the send to the next rank unevaluated on the sending rank; the plain loop evaluates
        the logits, which depend on every rank's forward.
        """
        if temperature:
            raise ShardingError(f"temperature={temperature!r}: a layer-sharded model generates greedily only",
                                hint="use temperature=0, or run the model in one process")
        ids = self.tokens(prompt, chat=chat).ids[0].tolist()
        return self.generate_batch([ids], max_tokens=max_tokens, taps=taps)[0]

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
        held["layers"] = shard_model(model, group.rank(), group.size(), group, first.dtype)
        return model

    loaded = load_model(spec, dtype=dtype, shard=shard)
    return ShardedHookedModel(loaded, group, held["layers"])

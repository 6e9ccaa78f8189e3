"""Hook points inside mlx-lm's own modules, and the HookedModel that owns them.

Installing hooks swaps the class of each hooked module instance for a thin
subclass whose `__call__` runs the original `__call__` and then the taps. The
parameter tree, attribute access, masks, sliding windows and KV caches are all
mlx-lm's own; with no taps attached the original call runs untouched, so
logits are bit-identical to plain mlx-lm. `remove_hooks()` restores the
original classes.

`hook_resid_mid` has no module boundary of its own in mlx-lm's blocks: it is
read at the input of the pre-MLP norm. A tap that changes it also shifts the
block output by the same delta, so the residual stream sees the new value
(exact in real arithmetic; float rounding of (h + r) + delta vs h' + r).
"""
from __future__ import annotations

import numbers
import re
import shlex
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm import stream_generate
from mlx_lm.models.cache import BatchKVCache, BatchRotatingKVCache, KVCache, RotatingKVCache, make_prompt_cache
from mlx_lm.sample_utils import make_sampler

from mlxinterp.core import patterns
from mlxinterp.core.archs import BLOCK_ORDER, Site, arch_spec, site_scale, text_model, top_text_model
from mlxinterp.core.errors import HookNameError, PromptError, TapError, closest
from mlxinterp.core.taps import Capture, Tap, TapContext
from mlxinterp.core.validate import INT64_MAX, real, whole
from mlxinterp.core.loading import load_model
from mlxinterp.core.tokenization import encode_batch

_HOOK_RE = re.compile(r"^blocks\.(-?\d+)\.(.+)$")


class HookPoint:
    """One named place in the forward pass and the taps attached to it."""

    __slots__ = ("name", "layer", "kind", "taps", "state", "feature_shape", "scale")

    def __init__(self, name: str, layer: int | None, kind: str, state: "_ForwardState",
                 feature_shape: tuple[int, ...], scale: float | None = None):
        self.name, self.layer, self.kind, self.state = name, layer, kind, state
        self.feature_shape = feature_shape
        self.scale = scale  # the point sees its module's value times this (Granite's residual_multiplier)
        self.taps: list[Tap] = []

    def run(self, a: mx.array) -> mx.array:
        ctx = self.state.context(self)
        if self.scale is None:
            for tap in self.taps:
                a = tap(a, ctx)
            return a
        # The taps see the product the block adds to the residual (computed as the block computes it, so a
        # capture is bit-identical to it); an unchanged value goes back untouched, a new one divided.
        seen = a * self.scale
        b = seen
        for tap in self.taps:
            b = tap(b, ctx)
        return a if b is seen else b / self.scale


class _ForwardState:
    """Per-forward facts the taps need: each column's position in its sequence."""

    def __init__(self, hooked: "HookedModel"):
        self.hooked = hooked
        self.seq_pos: np.ndarray | None = None
        self.prompt_len: np.ndarray | None = None
        self.masks: dict = {}  # position masks, shared by every hook point of one forward
        self.n_taps = 0  # taps attached anywhere; 0 means every hooked call is a pass-through
        self.n_edits = 0  # taps that may change activations (all but Capture): their logits are checked
        self.mid_delta: mx.array | None = None

    def begin(self, inputs: mx.array | None, cache: Any, embeddings: mx.array | None) -> None:
        shape = inputs.shape if inputs is not None else embeddings.shape[:2]
        B, L = int(shape[0]), int(shape[1])
        start = np.zeros(B, dtype=np.int64)
        c0 = cache[0] if cache else None
        if c0 is not None:
            off = c0.offset
            start = np.asarray(off, dtype=np.int64).reshape(-1) if isinstance(off, mx.array) else start + int(off)
            if start.size == 1 and B > 1:
                start = np.repeat(start, B)
        self.seq_pos = start[:, None] + np.arange(L)[None, :]
        self.padded = bool((self.seq_pos < 0).any())
        self.masks = {}

    def logits_read(self) -> bool:
        """False for a generation prefill chunk that ends before every row's last prompt token.

        mlx-lm's stream_generate (and generate_batch) never read those logits, so they
        stay unevaluated nodes of MLX's lazy graph; checking them would compute the
        full unembedding of every prompt token for nothing.
        """
        return self.prompt_len is None or bool((self.seq_pos[:, -1] >= self.prompt_len - 1).any())

    def check_finite(self, logits: mx.array) -> None:
        """Refuse NaN/inf logits produced with editing taps attached, naming the taps.

        Each tap's arguments are checked when it is attached, but a finite value
        can still overflow float32 once it meets the activations (Scale(1e30) on a
        residual stream of norm 1e9); without this the caller would get NaN logits
        (and greedy generation token 0) without a word. One reduction over the logits.
        """
        try:
            ok = mx.all(mx.isfinite(logits)).item()
        except RuntimeError:  # inside mx.compile / mx.vmap nothing may be evaluated: unchecked there
            return
        if ok:
            return
        edits = [f"{t.describe()} at {p.name}" for p in self.hooked._points.values() for t in p.taps
                 if not isinstance(t, Capture)]
        more = f" (and {len(edits) - 4} more)" if len(edits) > 4 else ""
        raise TapError(f"the logits contain NaN or inf with these taps attached: {'; '.join(edits[:4])}{more}",
                       hint="a tap's values overflow float32 where they meet the activations; use smaller "
                            "scales or factors")

    def context(self, point: HookPoint) -> TapContext:
        if self.seq_pos is None:
            raise RuntimeError("hooked submodule called outside a model forward")
        return TapContext(point.name, point.layer, self.seq_pos, self.prompt_len, point.feature_shape, self.masks,
                          self.padded)


# ---------------------------------------------------------------- class swapping
_HOOKED_CLASSES: dict[tuple[type, str], type] = {}


def _hooked_class(cls: type, role: str) -> type:
    """A subclass of `cls` whose __call__ runs the original, then the site's hook points."""
    key = (cls, role)
    if key in _HOOKED_CLASSES:
        return _HOOKED_CLASSES[key]
    orig = cls.__call__

    if role == "top":
        def __call__(self, inputs=None, cache=None, *args, **kwargs):
            site = self._mi_site
            if not site.state.n_taps:
                return orig(self, inputs, cache, *args, **kwargs)
            site.state.begin(inputs, cache, kwargs.get("input_embeddings"))
            logits = site.run_out(orig(self, inputs, cache, *args, **kwargs))
            if site.state.n_edits and site.state.logits_read():
                site.state.check_finite(logits)
            return logits
    elif role == "block":
        def __call__(self, x, *args, **kwargs):
            site = self._mi_site
            if not site.state.n_taps:  # not site.active: a resid_mid tap inside needs the delta below
                return orig(self, x, *args, **kwargs)
            x = site.run_in(x)
            site.state.mid_delta = None
            out = orig(self, x, *args, **kwargs)
            if site.state.mid_delta is not None:  # a tap changed hook_resid_mid
                out = out + site.state.mid_delta
                site.state.mid_delta = None
            return site.run_out(out)
    elif role == "mid":
        def __call__(self, x, *args, **kwargs):
            site = self._mi_site
            if not site.active:
                return orig(self, x, *args, **kwargs)
            new = site.run_in(x)
            if new is not x:
                site.state.mid_delta = new - x
            return site.run_out(orig(self, new, *args, **kwargs))
    else:
        def __call__(self, x, *args, **kwargs):
            site = self._mi_site
            if not site.active:
                return orig(self, x, *args, **kwargs)
            return site.run_out(orig(self, site.run_in(x), *args, **kwargs))

    hooked = type(f"Hooked{cls.__name__}", (cls,), {"__call__": __call__, "_mi_orig_class": cls})
    _HOOKED_CLASSES[key] = hooked
    return hooked


class _Site:
    """The hook points on one module instance: on its input and on its output."""

    __slots__ = ("module", "state", "ins", "outs", "heads")

    def __init__(self, module, state: _ForwardState):
        self.module, self.state = module, state
        self.ins: list[HookPoint] = []
        self.outs: list[HookPoint] = []
        self.heads: int | None = None  # per-head reshape for attn.hook_q/k/v/z

    @property
    def active(self) -> bool:
        return any(p.taps for p in self.ins) or any(p.taps for p in self.outs)

    def _run(self, points: list[HookPoint], a: mx.array) -> mx.array:
        if not any(p.taps for p in points):
            return a
        shape = a.shape
        if self.heads:
            a = a.reshape(*shape[:-1], self.heads, shape[-1] // self.heads)
        for p in points:
            if p.taps:
                a = p.run(a)
        return a.reshape(shape) if self.heads else a

    def run_in(self, a):
        return self._run(self.ins, a)

    def run_out(self, a):
        return self._run(self.outs, a)


def plain_call(module, *args):
    """Call a module's original class (no taps), hooked or not: a weight applied on its own, e.g. a norm or a
    projection evaluated outside the forward (function-vector head outputs, a layer's norm gain)."""
    cls = getattr(type(module), "_mi_orig_class", type(module))
    return cls.__call__(module, *args)


def _get(module, path: str):
    for part in path.split(".") if path else []:
        module = getattr(module, part, None)
    return module


# ---------------------------------------------------------------- the model
class HookedModel:
    """mlx-lm model + tokenizer + metadata, with hook points at every layer.

    Use `hooks({...})` as a context manager to attach taps, `run_with_cache`
    to capture activations, `generate` to sample with taps in place.
    """

    def __init__(self, loaded):
        self.loaded = loaded
        self.model, self.tokenizer, self.info = loaded.model, loaded.tokenizer, loaded.info
        self.spec = arch_spec(self.info.arch)
        self._state = _ForwardState(self)
        self._points: dict[str, HookPoint] = {}
        self._sites: list[_Site] = []
        self.install_hooks()

    # -- installation
    def install_hooks(self) -> None:
        """Put hook points into mlx-lm's modules (done on construction; after remove_hooks, again)."""
        if self._points:
            return
        inner = text_model(self.model)
        self._attach(top_text_model(self.model), "top", "out", "hook_logits", None, "vocab")
        self._attach(inner.embed_tokens, "plain", "out", "hook_embed", None, "d_model")
        for i, block in enumerate(inner.layers):
            for suffix in BLOCK_ORDER:
                site: Site | None = self.spec.sites.get(suffix)
                module = _get(block, site.path) if site else None
                if module is None:  # this family (or this layer, e.g. a dense layer of an MoE) has no such point
                    continue
                role = "block" if site.path == "" else ("mid" if suffix == "hook_resid_mid" else "plain")
                scale = site_scale(block, site) if site.scale else None
                self._attach(module, role, site.side, f"blocks.{i}.{suffix}", i, site.kind, scale)
            for suffix in patterns.suffixes(self.spec.sites):  # run inside the attention call (core/patterns.py)
                name = f"blocks.{i}.{suffix}"
                if self.owns(i, name):
                    self._points[name] = HookPoint(name, i, patterns.KIND, self._state,
                                                   patterns.feature_shape(self.info.n_heads))
        self._attach(inner.norm, "plain", "out", "ln_final.hook_normalized", None, "d_model")

    def owns(self, layer: int | None, name: str) -> bool:
        """Whether this process holds the hook point (always; a layer-sharded model holds its own blocks)."""
        return True

    def _attach(self, module, role: str, side: str, name: str, layer: int | None, kind: str,
                scale: float | None = None) -> None:
        if not self.owns(layer, name):
            return
        site = getattr(module, "_mi_site", None)
        if site is None or site.state is not self._state:
            site = _Site(module, self._state)
            object.__setattr__(module, "_mi_site", site)
            base = getattr(type(module), "_mi_orig_class", type(module))
            module.__class__ = _hooked_class(base, role)
            self._sites.append(site)
        if kind in ("heads", "kv_heads"):
            site.heads = self.info.n_heads if kind == "heads" else self.info.n_kv_heads
        point = HookPoint(name, layer, kind, self._state, self._shape_of(kind), scale)
        (site.ins if side == "in" else site.outs).append(point)
        self._points[name] = point

    def remove_hooks(self) -> None:
        """Restore mlx-lm's original classes; the model is exactly as loaded."""
        for s in self._sites:
            s.module.__class__ = s.module._mi_orig_class
            object.__delattr__(s.module, "_mi_site")
        self._sites.clear()
        self._points.clear()

    # -- names and shapes
    @property
    def hook_names(self) -> list[str]:
        return list(self._points)

    def _shape_of(self, kind: str) -> tuple[int, ...]:
        i = self.info
        return {
            "d_model": (i.d_model,), "d_mlp": (i.d_mlp,), "vocab": (i.vocab_size,),
            "heads": (i.n_heads, i.head_dim), "kv_heads": (i.n_kv_heads, i.head_dim),
            "experts": (i.n_experts or 0,), "topk_d_model": (i.experts_per_token or 0, i.d_model),
        }[kind]

    def hook_shape(self, name: str) -> tuple[int, ...]:
        """Per-position feature shape of a hook point, e.g. (640,) or (4, 256)."""
        return self.point(name).feature_shape

    def point(self, name: str) -> HookPoint:
        """The hook point called `name`; negative layers count from the end."""
        name = self._normalise(name)
        if name not in self._points:
            suggestion = closest(name, self._points)
            block = re.match(r"blocks\.\d+\.", name)
            listing = f"mlxinterp hooks --model {shlex.quote(self.info.spec)}" + (f" --filter {block[0]}" if block else "")
            raise HookNameError(
                f"unknown hook point {name!r}",
                hint=(f"did you mean {suggestion}? " if suggestion else "") + f"`{listing}` lists them",
            )
        return self._points[name]

    def _normalise(self, name: str) -> str:
        if not isinstance(name, str):
            raise HookNameError(f"hook name {name!r:.60} is not a string but a {type(name).__name__}",
                                hint="e.g. 'blocks.3.hook_resid_post' (`mlxinterp hooks` lists them)")
        m = _HOOK_RE.match(name)
        if not m:
            return name
        layer, rest = int(m.group(1)), m.group(2)
        n = self.info.n_layers
        if not -n <= layer < n:
            raise HookNameError(f"layer {layer} in {name!r} is out of range; this model has layers 0..{n - 1}")
        return f"blocks.{layer % n}.{rest}"

    def names(self, filter: str | Callable[[str], bool] | Iterable[str] | None = None) -> list[str]:
        """Hook names matching a substring, a predicate or an explicit list (validated)."""
        if filter is None:
            return self.hook_names
        if isinstance(filter, str):
            hits = [n for n in self._points if filter in n]
            if not hits:
                raise HookNameError(f"no hook point matches {filter!r}", hint="try 'resid_post', 'attn.hook_z' or 'blocks.3.'")
            return hits
        if callable(filter):
            return [n for n in self._points if filter(n)]
        return [self.point(n).name for n in filter]

    # -- taps
    @contextmanager
    def hooks(self, taps: Mapping[str, Tap | Sequence[Tap]] | Iterable[tuple[str, Tap]] | None = None) -> Iterator["HookedModel"]:
        """Attach taps for the duration of the block; they are removed on exit, even on error."""
        pairs = _tap_pairs(taps)
        attached: list[tuple[HookPoint, Tap]] = []
        try:
            for name, tap_or_list in pairs:
                point = self.point(name)
                for tap in tap_or_list if isinstance(tap_or_list, (list, tuple)) else [tap_or_list]:
                    if not isinstance(tap, Tap):
                        raise TapError(f"{point.name}: {tap!r:.60} is not a tap",
                                       hint="use mlxinterp.core.taps (Capture, Add, Replace, Project, Ablate, Scale), "
                                            "or taps.Fn(fn) for a function")
                    if point.kind == patterns.KIND:
                        patterns.check_tap(tap, point.name, self.info.n_heads)
                    else:
                        tap.validate(point.feature_shape, point.name)
                    point.taps.append(tap)
                    attached.append((point, tap))
                    self._state.n_taps += 1
                    self._state.n_edits += not isinstance(tap, Capture)
            # a pattern tap switches its layer's attention to the explicit path while it is attached
            explicit = any(p.kind == patterns.KIND for p, _ in attached)
            with patterns.explicit_attention(self) if explicit else nullcontext():
                yield self
        finally:
            for point, tap in attached:
                point.taps.remove(tap)
                self._state.n_taps -= 1
                self._state.n_edits -= not isinstance(tap, Capture)

    def attach_internal(self, pairs: Sequence[tuple[HookPoint, Tap]]) -> None:
        """Taps of the hook machinery itself (core/patterns.py's markers): attached until `detach_internal`,
        counted as taps (so the hooked calls run) but not as edits (they change nothing)."""
        for point, tap in pairs:
            point.taps.append(tap)
            self._state.n_taps += 1

    def detach_internal(self, pairs: Sequence[tuple[HookPoint, Tap]]) -> None:
        for point, tap in pairs:
            point.taps.remove(tap)
            self._state.n_taps -= 1

    # -- running
    def tokens(self, prompts, chat: bool = False) -> "Batch":
        """Token ids [B, L] (left padded) for prompts: str, list of str, or ids."""
        if isinstance(prompts, (mx.array, np.ndarray)) and prompts.ndim in (1, 2):
            if not np.issubdtype(np.dtype(str(prompts.dtype).removeprefix("mlx.core.")), np.integer):
                raise PromptError(f"token ids have dtype {str(prompts.dtype).removeprefix('mlx.core.')}; token ids "
                                  "must be integers (a float id would be truncated)")
            ids = mx.array(prompts) if prompts.ndim == 2 else mx.array(prompts)[None]
            self._check_ids(np.array(ids))
            return Batch(ids.astype(mx.int32), [0] * ids.shape[0])
        if prompts is None or isinstance(prompts, (bytes, dict, mx.array, np.ndarray, numbers.Number)):
            raise PromptError(f"prompts must be a string, a list of strings or token ids, not {type(prompts).__name__}"
                              + (f" of shape {tuple(prompts.shape)}" if hasattr(prompts, "shape") else ""))
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        if texts and isinstance(texts[0], (numbers.Number, np.generic)):  # one sequence of ids
            texts = [texts]
        if texts and not isinstance(texts[0], str):
            rows = [_id_row(t, i) for i, t in enumerate(texts)]
            for r in rows:
                self._check_ids(np.array(r, dtype=object if r and max(map(abs, r)) > INT64_MAX else np.int64))
            L = max(map(len, rows))
            pad = [L - len(r) for r in rows]
            return Batch(mx.array([[0] * p + r for p, r in zip(pad, rows)], dtype=mx.int32), pad)

        ids, pad = encode_batch(self.tokenizer, self.info, texts, chat=chat)
        return Batch(ids, pad)

    def _check_ids(self, ids: np.ndarray) -> None:
        """Token ids must exist: MLX's embedding lookup does not bounds-check (an id past the
        vocabulary crashed the process with a segfault, BUGFIX.md)."""
        if ids.size == 0 or ids.shape[-1] == 0:
            raise PromptError("empty token sequence: nothing to run", hint="pass at least one token id")
        bad = ids[(ids < 0) | (ids >= self.info.vocab_size)]
        if bad.size:
            raise PromptError(f"token id {int(bad[0])} is out of range; this model's vocabulary is "
                              f"0..{self.info.vocab_size - 1}")

    def _check_context(self, prompt_len: int, max_tokens: int) -> None:
        """Refuse to generate past the context the model was trained for: mlx-lm would carry on
        without a word, at RoPE positions the model never saw."""
        n = self.info.max_context
        if n and prompt_len + max_tokens > n:
            raise PromptError(f"max_tokens={max_tokens} after a {prompt_len}-token prompt runs past {self.info.slug}'s "
                              f"max context of {n} tokens",
                              hint=f"use max_tokens <= {n - prompt_len}" if n > prompt_len else "shorten the prompt")

    def forward(self, batch: "Batch") -> mx.array:
        """Logits [B, L, V] through mlx-lm's own model call (padding-aware caches when padded)."""
        cache = self.padded_cache(batch.left_padding) if any(batch.left_padding) else None
        return self.model(batch.ids, cache=cache) if cache else self.model(batch.ids)

    def __call__(self, prompts, chat: bool = False) -> mx.array:
        return self.forward(self.tokens(prompts, chat=chat))

    def padded_cache(self, left_padding: Sequence[int]) -> list:
        """mlx-lm's batch caches, so its own masks skip left padding and RoPE counts per sequence."""
        out = []
        gqa = self.spec.gqa_mask_5d and self.info.n_heads != self.info.n_kv_heads
        for c in make_prompt_cache(self.model):
            if isinstance(c, RotatingKVCache):
                out.append(BatchRotatingKVCache(c.max_size, list(left_padding)))
            elif isinstance(c, KVCache):
                out.append(GQAMaskBatchKVCache(list(left_padding)) if gqa else BatchKVCache(list(left_padding)))
            else:
                raise HookNameError(f"cache type {type(c).__name__} does not support padded batches")
        return out

    def unembed(self, h: mx.array, normed: bool = True, vocab: Sequence[int] | None = None) -> mx.array:
        """Logits for residual-stream vectors h [..., d_model] through the model's real final path.

        Final norm (optional), unembedding (tied or lm_head) and Gemma 2's logit
        soft-cap, computed in float32 and bypassing any attached taps. vocab:
        token ids; only those rows of the unembedding are used ([..., len(vocab)]),
        for metrics that read a few logits (patching).
        """
        top, inner = top_text_model(self.model), text_model(self.model)
        x = h.astype(mx.float32)
        if normed:
            x = plain_call(inner.norm, x)
        if vocab is not None:
            w, b = self._unembedding_rows(vocab)
            logits = x @ w.T if b is None else x @ w.T + b
        elif "lm_head" in top:
            logits = plain_call(top.lm_head, x)
        else:
            logits = inner.embed_tokens.as_linear(x)
        if self.spec.logit_scale_attr:
            logits = logits * _get(top, self.spec.logit_scale_attr)
        if self.spec.logit_divisor_attr:
            logits = logits / _get(top, self.spec.logit_divisor_attr)
        cap = getattr(top, self.spec.softcap_attr, None) if self.spec.softcap_attr else None
        if cap:
            logits = mx.tanh(logits / cap) * cap
        return logits.astype(mx.float32)

    def block(self, layer: int):
        """Block `layer`'s mlx-lm module, for code that reads its weights or applies one of its submodules
        outside the forward (attention scores, a head's output projection); negative layers count from
        the end. A layer-sharded model (core/pipeline.py) gives it on every rank."""
        n = self.info.n_layers
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not -n <= layer < n:
            raise HookNameError(f"layer {layer!r} is out of range; this model has layers 0..{n - 1}")
        return text_model(self.model).layers[int(layer) % n]

    def unembedding_rows(self, vocab: Sequence[int]) -> tuple[mx.array, mx.array | None]:
        """The rows that map the final-normed residual to these tokens' logits, for linear readouts such as
        direct logit attribution: `_unembedding_rows` times the model's constant logit factor."""
        w, b = self._unembedding_rows(vocab)
        f = self.logit_factor()
        return (w, b) if f == 1.0 else (w * f, None if b is None else b * f)

    def logit_factor(self) -> float:
        """The constant mlx-lm multiplies the unembedded logits by: Cohere's logit_scale, one over Granite's
        logits_scaling; 1.0 for the other families."""
        top, f = top_text_model(self.model), 1.0
        if self.spec.logit_scale_attr:
            f *= float(_get(top, self.spec.logit_scale_attr))
        if self.spec.logit_divisor_attr:
            f /= float(_get(top, self.spec.logit_divisor_attr))
        return f

    def _unembedding_rows(self, vocab: Sequence[int]) -> tuple[mx.array, mx.array | None]:
        """float32 rows [len(vocab), d_model] of the unembedding for these tokens (dequantized when quantized), bias."""
        ids = np.asarray(list(vocab), dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0 or (ids < 0).any() or (ids >= self.info.vocab_size).any():
            raise PromptError(f"vocab {list(vocab)[:5]!r} must be token ids in 0..{self.info.vocab_size - 1}")
        idx = mx.array(ids.astype(np.uint32))
        top, inner = top_text_model(self.model), text_model(self.model)
        if "lm_head" not in top:
            return plain_call(inner.embed_tokens, idx).astype(mx.float32), None  # QuantizedEmbedding dequantizes
        head = top.lm_head
        if "scales" in head:
            w = mx.dequantize(head["weight"][idx], head["scales"][idx], head["biases"][idx] if "biases" in head else None,
                              group_size=head.group_size, bits=head.bits, mode=getattr(head, "mode", "affine"))
        else:
            w = head["weight"][idx]
        return w.astype(mx.float32), (head["bias"][idx].astype(mx.float32) if "bias" in head else None)

    def run_with_cache(self, prompts, names=None, taps=None, chat: bool = False, logits: bool = True):
        """Forward with Capture taps on `names`; returns (logits, cache).

        names None: every hook point but the attention scores and patterns (capturing those switches
        attention to its explicit path, core/patterns.py, so the logits would no longer be bit-identical
        to mlx-lm's); name them, or filter for them, to capture them.

        With `logits=False` only the captures are evaluated and None is returned for
        the logits: MLX computes lazily, so the layers after the last captured hook
        and the unembedding (for a 262,144-token vocabulary, most of a small model's
        FLOPs) are never computed. Captures are identical either way.
        """
        batch = self.tokens(prompts, chat=chat)
        cache = ActivationCache(self, batch.left_padding)
        capture = Capture(store=cache)
        wanted = [n for n in self.hook_names if self._points[n].kind != patterns.KIND] if names is None \
            else self.names(names)
        pairs = [(n, capture) for n in dict.fromkeys(wanted)]  # a name twice would capture twice
        with self.hooks(_tap_pairs(taps) + pairs):
            out = self.forward(batch)
        mx.eval(*((out,) if logits else ()), *cache.arrays())
        return (out if logits else None), cache

    def generate(self, prompt, max_tokens: int = 32, taps=None, chat: bool = False,
                 temperature: float = 0.0, seed: int = 0) -> "Generation":
        """Sample with mlx-lm's own stream_generate (and its KV cache), taps in place.

        A tap's `when` decides whether it acts on the prompt, the generated
        tokens or both; positions keep counting from the prompt into the
        generated tokens.
        """
        pieces, tokens = [], []
        for text, token in self.stream(prompt, max_tokens, taps, chat, temperature, seed):
            pieces.append(text)
            tokens.append(token)
        return Generation("".join(pieces), tokens, self.tokens(prompt, chat=chat).ids[0].tolist())

    def stream(self, prompt, max_tokens: int = 32, taps=None, chat: bool = False,
               temperature: float = 0.0, seed: int = 0) -> Iterator[tuple[str, int]]:
        """`generate`, one (text piece, token id) at a time as mlx-lm's stream_generate yields them.

        The taps stay attached until the iterator is exhausted or closed, so consume
        it before running anything else on this model.
        """
        check_generation(max_tokens, temperature, seed)
        batch = self.tokens(prompt, chat=chat)
        if batch.ids.shape[0] != 1:
            raise PromptError("generate takes one prompt; use generate_batch for several")
        ids = batch.ids[0].tolist()
        self._check_context(len(ids), max_tokens)
        mx.random.seed(seed)
        self._state.prompt_len = np.array([len(ids)])
        try:
            with self.hooks(taps):
                for r in stream_generate(self.model, self.tokenizer, ids, max_tokens=max_tokens,
                                         sampler=make_sampler(temp=temperature)):
                    yield r.text, int(r.token)
        finally:
            self._state.prompt_len = None

    def generate_batch(self, prompts: Sequence[str] | Sequence[Sequence[int]], max_tokens: int = 32, taps=None,
                       chat: bool = False) -> list["Generation"]:
        """Greedy generation for several prompts at once (left-padded, mlx-lm's batch KV caches).

        Row i of the result matches `generate(prompts[i])` up to float rounding in
        the batched matmuls; taps see per-sequence positions and phases as in `generate`.
        """
        check_generation(max_tokens)
        batch = self.tokens(list(prompts), chat=chat)
        self._check_context(max(batch.lengths), max_tokens)
        B = batch.ids.shape[0]
        eos = set(getattr(self.tokenizer, "eos_token_ids", None) or [self.tokenizer.eos_token_id])
        cache = self.padded_cache(batch.left_padding)
        self._state.prompt_len = np.array(batch.lengths)
        out: list[list[int]] = [[] for _ in range(B)]
        done = np.zeros(B, bool)
        try:
            with self.hooks(taps):
                if batch.ids.shape[1] > 1:  # as mlx-lm does: the prompt but its last token fills the cache only
                    self.model(batch.ids[:, :-1], cache=cache)  # (its logits are never computed)
                logits = self.model(batch.ids[:, -1:], cache=cache)
                for step in range(max_tokens):
                    nxt = mx.argmax(logits[:, -1], axis=-1)
                    toks = np.array(nxt).tolist()
                    for b, t in enumerate(toks):
                        if not done[b]:
                            out[b].append(int(t))
                            done[b] = t in eos
                    if done.all() or step == max_tokens - 1:  # no forward for a token nobody reads
                        break
                    logits = self.model(nxt[:, None].astype(mx.int32), cache=cache)
        finally:
            self._state.prompt_len = None
        rows = [r[: batch.ids.shape[1]] for r in batch.ids.tolist()]
        prompts_ids = [row[p:] for row, p in zip(rows, batch.left_padding)]
        return [Generation(self.tokenizer.decode([t for t in toks if t not in eos]), toks, ids)
                for toks, ids in zip(out, prompts_ids)]


def check_generation(max_tokens, temperature: float = 0.0, seed: int = 0) -> None:
    """mlx-lm generates forever for max_tokens < 0 and inverts the distribution for temperature < 0.

    Needs no model, so the CLI runs it before loading one; the model's context
    length is checked once the prompt is tokenized (HookedModel._check_context).
    """
    whole(max_tokens, "max_tokens", 1, error=PromptError)
    try:
        real(temperature, "temperature", 0, error=PromptError)
    except PromptError as e:
        raise PromptError(f"{e.args[0]} (0 = greedy)") from None
    whole(seed, "seed", 0, 2**64 - 1, error=PromptError)


def _tap_pairs(taps: Any) -> list[tuple[Any, Any]]:
    """(hook name, tap or taps) pairs from a mapping or a list of pairs; anything else is refused here,
    not as an unpacking error inside the loop."""
    if taps is None:
        return []
    if isinstance(taps, Mapping):
        return list(taps.items())
    if isinstance(taps, (str, bytes, Tap)) or not isinstance(taps, Iterable):
        raise TapError(f"taps={taps!r:.60} is not allowed; pass {{hook name: tap or [taps]}} or a list of "
                       "(hook name, tap) pairs", hint="e.g. {'blocks.3.hook_resid_post': taps.Scale(0.5)}")
    pairs = list(taps)
    for p in pairs:
        if not (isinstance(p, (tuple, list)) and len(p) == 2):
            raise TapError(f"taps entry {p!r:.60} is not a (hook name, tap) pair",
                           hint="e.g. [('blocks.3.hook_resid_post', taps.Scale(0.5))]")
    return pairs




def _id_row(row: Any, i: int) -> list[int]:
    """One prompt given as token ids: whole numbers only (a float id used to be truncated silently)."""
    if isinstance(row, (str, bytes)) or not isinstance(row, Iterable):
        raise PromptError(f"prompt {i} is a {type(row).__name__}; a batch of token ids is a list of lists of ints")
    out = []
    for j, x in enumerate(row):
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
            raise PromptError(f"token id {x!r:.40} (prompt {i}, position {j}) is not allowed; token ids are whole "
                              "numbers (a float id would be truncated)")
        out.append(int(x))
    return out


class Generation:
    """Generated text and token ids, with the prompt ids that produced them."""

    def __init__(self, text: str, tokens: list[int], prompt_tokens: list[int]):
        self.text, self.tokens, self.prompt_tokens = text, tokens, prompt_tokens

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Generation({self.text!r})"


class GQAMaskBatchKVCache(BatchKVCache):
    """BatchKVCache whose array mask has a grouped-query axis, [B, 1, 1, L, S] (BUGFIX.md #1)."""

    def make_mask(self, N: int, return_array: bool = False, **kwargs):
        mask = super().make_mask(N, return_array=return_array, **kwargs)
        return mask[:, :, None] if isinstance(mask, mx.array) and mask.ndim == 4 else mask


class Batch:
    """Token ids [B, L] with each row's left padding."""

    def __init__(self, ids: mx.array, left_padding: Sequence[int]):
        self.ids, self.left_padding = ids, list(left_padding)

    @property
    def lengths(self) -> list[int]:
        return [self.ids.shape[1] - p for p in self.left_padding]


class ActivationCache:
    """Captured activations by hook name: [B, L, ...] arrays in the padded layout.

    Generation appends one chunk per forward; reading joins them along positions.
    """

    def __init__(self, hooked: HookedModel, left_padding: Sequence[int] = ()):
        self.hooked = hooked
        self.left_padding = list(left_padding)
        self._chunks: dict[str, list[mx.array]] = defaultdict(list)

    def append(self, name: str, a: mx.array, seq_pos: np.ndarray) -> None:
        self._chunks[name].append(a)

    def __getitem__(self, name: str) -> mx.array:
        name = self.hooked.point(name).name
        if name not in self._chunks:
            raise KeyError(f"{name!r} was not captured; captured: {len(self._chunks)} hook points")
        chunks = self._chunks[name]
        if len(chunks) > 1:  # attention patterns grow by keys as well as by positions
            joined = patterns.join_chunks(chunks) if patterns.is_pattern_name(name) else mx.concatenate(chunks, axis=1)
            self._chunks[name] = chunks = [joined]
        return chunks[0]

    def __contains__(self, name: str) -> bool:
        return name in self._chunks

    def keys(self) -> list[str]:
        return list(self._chunks)

    def arrays(self) -> list[mx.array]:
        return [a for chunks in self._chunks.values() for a in chunks]

    def stack(self, suffix: str = "hook_resid_post") -> mx.array:
        """[n_layers, B, L, ...] for one per-layer hook (e.g. the residual stream after each block)."""
        return mx.stack([self[f"blocks.{i}.{suffix}"] for i in range(self.hooked.info.n_layers)])


def load(spec: str = "default", dtype: str | None = None, allow_download: bool = False,
         precision: dict[str, str] | None = None) -> HookedModel:
    """Load a model (see `mlxinterp.core.loading.load_model`; `precision` is a per-module
    precision map, core/quantize.py) with hook points installed."""
    return HookedModel(load_model(spec, dtype=dtype, allow_download=allow_download, precision=precision))

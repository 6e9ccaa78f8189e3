"""Sparse autoencoders and transcoders: load, encode/decode, and taps that read or edit features.

An SAE reads an activation x at one hook point and writes features
f = act(W_enc^T (x - b_dec?) + b_enc) with reconstruction x_hat = W_dec^T f + b_dec.
A transcoder reads at one hook (e.g. the MLP's normalised input) and reconstructs
another (the MLP's output); the same class holds both (`hook_out`).

Formats read (never pickles):
- SAELens directories: `cfg.json` + `sae_weights.safetensors` (keys W_enc [d_in, d_sae],
  W_dec [d_sae, d_in], b_enc, b_dec, and `threshold` or `log_threshold` for JumpReLU).
- Gemma Scope parameters: `params.npz` (read with numpy.load(allow_pickle=False)) or
  `params.safetensors` with W_enc, W_dec, b_enc, b_dec, threshold (JumpReLU,
  Rajamanoharan et al. 2024). The hook is read from the release path
  (`...-res/layer_9/...` -> blocks.9.hook_resid_post) unless given.
- Our own files (`SAE.save`), which are SAELens directories.

Activations: ReLU, JumpReLU (f = pre * [pre > threshold]) and TopK (Gao et al.
2024: keep the k largest pre-activations, then ReLU).

Splicing (`sae_taps`) replaces the activation by decode(edited features) plus the
error term x - decode(features), so with no edit the forward is the unspliced one
up to float rounding, and an edit changes exactly what the features explain.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import mlx.core as mx
import numpy as np

from mlxinterp.core import taps as T
from mlxinterp.core.errors import MlxInterpError

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

ACTIVATIONS = ("relu", "jumprelu", "topk")
REQUIRED = ("W_enc", "W_dec", "b_enc", "b_dec")
SAELENS_CFG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"

# Gemma Scope release names (and Gemma Scope 2 folder names) -> (input hook suffix, output hook suffix).
# Attention SAEs read the concatenated head outputs before o_proj (attn.hook_z); transcoders read the
# pre-MLP norm's output and write the MLP sublayer's output (after Gemma's post-MLP norm).
GEMMA_SCOPE_SITES = {
    "res": ("hook_resid_post", None), "resid_post": ("hook_resid_post", None),
    "mlp": ("hook_mlp_out", None), "mlp_out": ("hook_mlp_out", None),
    "att": ("attn.hook_z", None), "attn_out": ("attn.hook_z", None),
    "transcoders": ("ln2.hook_normalized", "hook_mlp_out"), "transcoder": ("ln2.hook_normalized", "hook_mlp_out"),
}
# SAELens (TransformerLens) names that differ from ours.
_TL_RENAMES = {"hook_mlp_in": "ln2.hook_normalized", "ln2.hook_normalized": "ln2.hook_normalized"}


class SAEError(MlxInterpError):
    """An SAE or transcoder file is missing parts, malformed, or does not fit the model."""


@dataclass(eq=False)
class SAE:
    """Weights (float32 mx arrays) and how to apply them.

    W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_out], b_dec [d_out].
    `apply_b_dec_to_input`: subtract b_dec from x before encoding (SAELens
    default; Gemma Scope does not). `hook_out` is None for an SAE, the
    reconstructed hook for a transcoder.
    """

    W_enc: mx.array
    b_enc: mx.array
    W_dec: mx.array
    b_dec: mx.array
    activation: str = "relu"
    hook: str = ""
    hook_out: str | None = None
    k: int | None = None
    threshold: mx.array | None = None
    apply_b_dec_to_input: bool = True
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        _validate(self)

    # -- shapes
    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.W_dec.shape[1])

    @property
    def is_transcoder(self) -> bool:
        return self.hook_out is not None and self.hook_out != self.hook

    # -- the map
    def pre_acts(self, x: mx.array) -> mx.array:
        x = x.astype(mx.float32)
        if self.apply_b_dec_to_input and not self.is_transcoder:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: mx.array) -> mx.array:
        if self.activation == "relu":
            return mx.maximum(pre, 0.0)
        if self.activation == "jumprelu":
            return mx.where(pre > self.threshold, pre, 0.0)
        kth = mx.stop_gradient(mx.topk(pre, self.k, axis=-1).min(axis=-1, keepdims=True))
        return mx.where(pre >= kth, mx.maximum(pre, 0.0), 0.0)

    def encode(self, x: mx.array) -> mx.array:
        """Feature activations [..., d_sae] for activations [..., d_in]."""
        return self.activate(self.pre_acts(x))

    def decode(self, f: mx.array) -> mx.array:
        return f @ self.W_dec + self.b_dec

    def __call__(self, x: mx.array) -> mx.array:
        return self.decode(self.encode(x))

    # -- conventions
    def decoder_norms(self) -> mx.array:
        return mx.linalg.norm(self.W_dec, axis=1)

    def fold_decoder_norm(self) -> "SAE":
        """Same map with unit-norm decoder rows: feature i is rescaled by ||W_dec[i]||.

        Exact for ReLU and JumpReLU (the threshold scales too). Refused for TopK,
        where rescaling features changes which k are largest.
        """
        if self.activation == "topk":
            raise SAEError("fold_decoder_norm would change which features a TopK SAE selects",
                           hint="TopK SAEs are trained with unit-norm decoder rows; use the weights as they are")
        n = self.decoder_norms()
        if not bool(mx.all(n > 0).item()):
            raise SAEError("a decoder row has norm 0: the feature cannot be rescaled")
        thr = None if self.threshold is None else self.threshold * n
        return SAE(self.W_enc * n, self.b_enc * n, self.W_dec / n[:, None], self.b_dec, self.activation, self.hook,
                   self.hook_out, self.k, thr, self.apply_b_dec_to_input, dict(self.meta))

    def check_model(self, hm: HookedModel) -> None:
        """The SAE's hooks exist in this model and their widths match d_in / d_out."""
        for name, d, what in ((self.hook, self.d_in, "d_in"), (self.hook_out or self.hook, self.d_out, "d_out")):
            point = hm.point(name)
            width = int(np.prod(point.feature_shape))
            if width != d:
                raise SAEError(f"SAE {what} = {d} but {point.name} of {hm.info.spec} has width {width}",
                               hint="the SAE was trained on another model or hook; pass the right --hook or model")

    # -- files
    def save(self, directory: str | Path, extra_cfg: dict | None = None) -> Path:
        """A SAELens-style directory: cfg.json + sae_weights.safetensors (both written atomically)."""
        from safetensors.numpy import save as st_save

        from mlxinterp.core.io import atomic_write_bytes, write_json

        directory = Path(directory)
        tensors = {n: np.array(getattr(self, n), dtype=np.float32) for n in REQUIRED}
        if self.threshold is not None:
            tensors["threshold"] = np.array(self.threshold, dtype=np.float32)
        atomic_write_bytes(directory / SAELENS_WEIGHTS, st_save(tensors))
        cfg = {"d_in": self.d_in, "d_sae": self.d_sae, "hook_name": self.hook,
               "architecture": "standard" if self.activation == "relu" else self.activation,  # SAELens's name for ReLU
               "activation_fn_str": self.activation, "apply_b_dec_to_input": self.apply_b_dec_to_input,
               "normalize_activations": "none", "dtype": "float32", **({"k": self.k} if self.k else {}),
               **({"hook_name_out": self.hook_out} if self.hook_out else {}), **self.meta, **(extra_cfg or {})}
        write_json(directory / SAELENS_CFG, cfg)
        return directory


def _validate(sae: SAE) -> None:
    if sae.activation not in ACTIVATIONS:
        raise SAEError(f"activation {sae.activation!r} is not supported; allowed: {', '.join(ACTIVATIONS)}")
    W_enc, W_dec = sae.W_enc, sae.W_dec
    if W_enc.ndim != 2 or W_dec.ndim != 2:
        raise SAEError(f"W_enc and W_dec must be matrices; got shapes {tuple(W_enc.shape)} and {tuple(W_dec.shape)}")
    d_in, d_sae = W_enc.shape
    want = {"W_dec": (d_sae, None), "b_enc": (d_sae,), "b_dec": (W_dec.shape[1],)}
    if W_dec.shape[0] != d_sae:
        raise SAEError(f"W_dec has shape {tuple(W_dec.shape)}; with W_enc {tuple(W_enc.shape)} it must be ({d_sae}, d_out)",
                       hint="SAELens and Gemma Scope store W_enc as [d_in, d_sae] and W_dec as [d_sae, d_in]")
    for name in ("b_enc", "b_dec"):
        if tuple(getattr(sae, name).shape) != want[name]:
            raise SAEError(f"{name} has shape {tuple(getattr(sae, name).shape)}; expected {want[name]}")
    if sae.activation == "jumprelu":
        if sae.threshold is None or tuple(sae.threshold.shape) != (d_sae,):
            got = None if sae.threshold is None else tuple(sae.threshold.shape)
            raise SAEError(f"a JumpReLU SAE needs threshold of shape ({d_sae},); got {got}")
    if sae.activation == "topk":
        if isinstance(sae.k, bool) or not isinstance(sae.k, (int, np.integer)) or not 1 <= sae.k <= d_sae:
            raise SAEError(f"a TopK SAE needs k in 1..{d_sae}; got k={sae.k!r}")
        sae.k = int(sae.k)
    if not sae.is_transcoder and sae.d_in != sae.d_out:
        raise SAEError(f"an SAE reconstructs its input, but d_in = {d_in} and d_out = {sae.d_out}",
                       hint="a transcoder names its output hook (hook_name_out in cfg.json)")
    for name in (*REQUIRED, "threshold"):
        v = getattr(sae, name)
        if v is not None and not bool(mx.all(mx.isfinite(v)).item()):
            raise SAEError(f"{name} contains NaN or inf", hint="the file is corrupt or was saved mid-training")


# ---------------------------------------------------------------- loading
def load_sae(path: str | Path, hook: str | None = None, activation: str | None = None, k: int | None = None,
             hook_out: str | None = None) -> SAE:
    """An SAE or transcoder from a SAELens directory, a Gemma Scope params file, or a directory holding one.

    hook / activation / k / hook_out override what the files say (Gemma Scope
    files carry no config: their activation is JumpReLU when a threshold is stored).
    """
    path = Path(path)
    if not path.exists():
        raise SAEError(f"SAE path {str(path)!r} does not exist",
                       hint="give a SAELens directory (cfg.json + sae_weights.safetensors) or a Gemma Scope params.npz")
    if path.is_dir():
        if (path / SAELENS_CFG).exists():
            return _load_saelens(path, hook, activation, k, hook_out)
        found = [p for p in (path / "params.npz", path / "params.safetensors", path / SAELENS_WEIGHTS) if p.exists()]
        if not found:
            raise SAEError(f"{path} holds no cfg.json, params.npz or params.safetensors",
                           hint="SAELens: cfg.json + sae_weights.safetensors; Gemma Scope: params.npz")
        path = found[0]
    if path.name == SAELENS_WEIGHTS and (path.parent / SAELENS_CFG).exists():
        return _load_saelens(path.parent, hook, activation, k, hook_out)
    if path.suffix not in (".npz", ".safetensors"):
        raise SAEError(f"{path.name}: unknown SAE file type {path.suffix!r}; allowed: .npz, .safetensors, or a directory",
                       hint="pickled checkpoints (.pt, .pkl) are never loaded")
    return _load_params(path, hook, activation, k, hook_out)


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {n: np.asarray(z[n]) for n in z.files}
        from safetensors.numpy import load_file

        return load_file(str(path))
    except (OSError, ValueError, EOFError) as e:  # ValueError: an object array would need pickle
        raise SAEError(f"cannot read {path}: {e}", hint="a valid .npz of plain arrays or a .safetensors file") from None
    except Exception as e:  # safetensors raises its own SafetensorError for a truncated header
        raise SAEError(f"cannot read {path}: {type(e).__name__}: {e}") from None


def _from_tensors(t: dict[str, np.ndarray], where: Path, activation: str, hook: str, hook_out: str | None,
                  k: int | None, apply_b_dec: bool, meta: dict) -> SAE:
    missing = [n for n in REQUIRED if n not in t]
    if missing:
        raise SAEError(f"{where} lacks {', '.join(missing)} (has {', '.join(sorted(t)) or 'nothing'})",
                       hint="an SAE file holds W_enc, W_dec, b_enc, b_dec (and threshold for JumpReLU)")
    thr = t.get("threshold")
    if thr is None and "log_threshold" in t:  # older SAELens JumpReLU files
        thr = np.exp(t["log_threshold"])
    arr = {n: mx.array(np.asarray(t[n], dtype=np.float32)) for n in REQUIRED}
    return SAE(arr["W_enc"], arr["b_enc"], arr["W_dec"], arr["b_dec"], activation, hook, hook_out, k,
               None if thr is None else mx.array(np.asarray(thr, dtype=np.float32)), apply_b_dec, meta)


def _load_saelens(d: Path, hook, activation, k, hook_out) -> SAE:
    from mlxinterp.core.io import read_json

    try:
        cfg = read_json(d / SAELENS_CFG)
    except MlxInterpError as e:
        raise SAEError(str(e)) from None
    if not isinstance(cfg, dict):
        raise SAEError(f"{d / SAELENS_CFG} is not a JSON object")
    weights = d / SAELENS_WEIGHTS
    if not weights.exists():
        raise SAEError(f"{d} has cfg.json but no {SAELENS_WEIGHTS}")
    norm = cfg.get("normalize_activations") or "none"
    if norm != "none":
        raise SAEError(f"normalize_activations={norm!r} in {d / SAELENS_CFG} is not supported; only 'none'",
                       hint="fold the normalisation into the weights first (SAELens: sae.fold_activation_norm_scaling_factor)")
    act = activation or _saelens_activation(cfg, d)
    kwargs = cfg.get("activation_fn_kwargs") or {}
    k = k if k is not None else cfg.get("k", kwargs.get("k"))
    hook = hook or cfg.get("hook_name") or cfg.get("hook_point")
    if not hook:
        raise SAEError(f"{d / SAELENS_CFG} names no hook (hook_name)", hint="pass hook=... / --hook")
    out = hook_out or cfg.get("hook_name_out")
    meta = {key: cfg[key] for key in ("model_name", "release", "sae_id", "dataset_path", "context_size",
                                      "training_tokens") if key in cfg}
    return _from_tensors(_read_tensors(weights), weights, act, map_hook(hook), map_hook(out) if out else None, k,
                         bool(cfg.get("apply_b_dec_to_input", True)), meta)


def _saelens_activation(cfg: dict, d: Path) -> str:
    arch = str(cfg.get("architecture", "standard")).lower()
    fn = str(cfg.get("activation_fn_str", cfg.get("activation_fn", "relu"))).lower()
    if arch in ("jumprelu", "jumprelu_transcoder"):
        return "jumprelu"
    if arch == "topk" or fn == "topk":
        return "topk"
    if arch in ("standard", "transcoder") and fn == "relu":
        return "relu"
    raise SAEError(f"{d / SAELENS_CFG}: architecture={arch!r} with activation {fn!r} is not supported",
                   hint="supported: standard/relu, jumprelu, topk (gated SAEs are not)")


def _load_params(path: Path, hook, activation, k, hook_out) -> SAE:
    t = _read_tensors(path)
    site_in, site_out, layer = gemma_scope_site(path)
    if hook is None:
        if site_in is None or layer is None:
            raise SAEError(f"cannot tell which hook {path} was trained on",
                           hint="pass hook=... / --hook (e.g. blocks.9.hook_resid_post); Gemma Scope paths "
                                "look like gemma-scope-2b-pt-res/layer_9/.../params.npz")
        hook = f"blocks.{layer}.{site_in}"
        if site_out and hook_out is None:
            hook_out = f"blocks.{layer}.{site_out}"
    act = activation or ("jumprelu" if "threshold" in t else "topk" if k else "relu")
    meta = {"source": str(path)}
    # Gemma Scope encodes x directly (no b_dec subtraction: Lieberum et al. 2024, appendix).
    return _from_tensors(t, path, act, map_hook(hook), map_hook(hook_out) if hook_out else None, k, False, meta)


def gemma_scope_site(path: Path) -> tuple[str | None, str | None, int | None]:
    """(input hook suffix, output hook suffix, layer) read from a Gemma Scope release path, or Nones."""
    parts = [p.lower() for p in Path(path).parts]
    layer = None
    for p in parts:
        m = re.search(r"layer_(\d+)", p)
        if m:
            layer = int(m.group(1))
    for p in reversed(parts):
        for key in (p, p.rsplit("-", 1)[-1]):
            if key in GEMMA_SCOPE_SITES:
                return (*GEMMA_SCOPE_SITES[key], layer)
    return None, None, layer


def map_hook(name: str) -> str:
    """A SAELens / TransformerLens hook name in our spelling (most are already identical)."""
    m = re.match(r"^blocks\.(\d+)\.(.+)$", name)
    if not m:
        return name
    rest = _TL_RENAMES.get(m.group(2), m.group(2))
    return f"blocks.{m.group(1)}.{rest}"


# ---------------------------------------------------------------- taps
@dataclass
class FeatureEdit:
    """What to do to one feature: 'ablate' (set 0), 'clamp' (set to value), 'add' (add value), 'scale' (x value)."""

    feature: int
    mode: str = "ablate"
    value: float = 0.0


EDIT_MODES = ("ablate", "clamp", "add", "scale")


def _edit_arrays(edits: Sequence[FeatureEdit], d_sae: int) -> tuple[mx.array, mx.array, mx.array] | None:
    """Edits as f' = keep * f * mult + add: three [d_sae] vectors, built once."""
    if not edits:
        return None
    keep, mult, add = np.ones(d_sae, np.float32), np.ones(d_sae, np.float32), np.zeros(d_sae, np.float32)
    for e in edits:
        if not isinstance(e, FeatureEdit):
            raise SAEError(f"{e!r:.60} is not a FeatureEdit")
        if e.mode not in EDIT_MODES:
            raise SAEError(f"feature edit mode={e.mode!r} is not allowed; use one of {', '.join(EDIT_MODES)}")
        if isinstance(e.feature, bool) or not isinstance(e.feature, (int, np.integer)) or not 0 <= e.feature < d_sae:
            raise SAEError(f"feature {e.feature!r} is out of range; this SAE has features 0..{d_sae - 1}")
        if not math.isfinite(float(e.value)):
            raise SAEError(f"feature {e.feature}: value={e.value!r} is not finite")
        i, v = int(e.feature), float(e.value)
        if e.mode in ("ablate", "clamp"):
            keep[i], add[i] = 0.0, (v if e.mode == "clamp" else 0.0)
        elif e.mode == "add":
            add[i] += v
        else:
            mult[i] *= v
    return mx.array(keep * mult), mx.array(add), mx.array(keep)


class FeatureStore:
    """Sparse feature activations captured by SAE taps: per forward, top-k ids and values per position.

    `ids[i]`, `values[i]`: [B, L, k] arrays of the i-th captured forward; `seq_pos[i]`
    is each column's position in its sequence (negative on left padding).
    """

    def __init__(self):
        self.ids: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.seq_pos: list[np.ndarray] = []
        self.dense: list[mx.array] = []

    def add(self, f: mx.array, k: int, seq_pos: np.ndarray, keep_dense: bool) -> None:
        k = min(k, f.shape[-1])
        idx = mx.argpartition(-f, kth=k - 1, axis=-1)[..., :k]
        vals = mx.take_along_axis(f, idx, axis=-1)
        order = mx.argsort(-vals, axis=-1)
        idx, vals = mx.take_along_axis(idx, order, axis=-1), mx.take_along_axis(vals, order, axis=-1)
        self.ids.append(np.array(idx))
        self.values.append(np.array(vals))
        self.seq_pos.append(seq_pos)
        if keep_dense:
            self.dense.append(f)


def _flat(a: mx.array) -> tuple[mx.array, tuple]:
    """[B, L, *feature] -> [B, L, width] (per-head hooks such as attn.hook_z are concatenated)."""
    shape = a.shape
    if a.ndim > 3:
        a = a.reshape(*shape[:2], -1)
    return a, shape


@dataclass(eq=False)
class SAETap(T.Tap):
    """Encode at the hook; optionally record features; optionally splice the (edited) reconstruction.

    splice=False: read only (the activation is returned untouched).
    splice=True: return decode(edited f) + error, where error = x - decode(f) when
    keep_error (so no edit = the original forward up to rounding), else 0 (the
    SAE replaces the activation: what reconstruction metrics such as spliced CE loss measure).
    For a transcoder this tap sits at the output hook and reads its input from `source`.
    """

    sae: Any = None
    edits: Sequence[FeatureEdit] = ()
    splice: bool = True
    keep_error: bool = True
    store: FeatureStore | None = None
    top_k: int = 32
    keep_dense: bool = False
    source: "_HoldInput | None" = None

    def validate(self, feature_shape, name):
        super().validate(feature_shape, name)
        width = int(np.prod(feature_shape))
        want = self.sae.d_out if self.source is not None else self.sae.d_in
        if width != want:
            raise SAEError(f"SAE width {want} does not fit {name}, which has width {width}",
                           hint="the SAE was trained on another model or hook point")
        self._edit = _edit_arrays(list(self.edits), self.sae.d_sae)

    def __call__(self, a, ctx):
        x, shape = _flat(a)
        x_in = x if self.source is None else self.source.take()
        f = self.sae.encode(x_in)
        if self.store is not None:
            self.store.add(f, self.top_k, ctx.seq_pos, self.keep_dense)
        if not self.splice:
            return a
        recon = self.sae.decode(f)
        f_new = f if self._edit is None else f * self._edit[0] + self._edit[1]
        new = self.sae.decode(f_new) if self._edit is not None else recon
        if self.keep_error:
            new = new + (x.astype(mx.float32) - recon)
        return self._blend(a, new.reshape(shape), ctx)


@dataclass(eq=False)
class _HoldInput(T.Tap):
    """Keeps a transcoder's input activation for the tap at its output hook (same block, same forward)."""

    def __post_init__(self):
        self._held = None

    def __call__(self, a, ctx):
        self._held = _flat(a)[0]
        return a

    def take(self) -> mx.array:
        if self._held is None:
            raise SAEError("the transcoder's input hook did not run before its output hook")
        held, self._held = self._held, None
        return held


def sae_taps(sae: SAE, edits: Sequence[FeatureEdit] = (), splice: bool = True, keep_error: bool = True,
             store: FeatureStore | None = None, top_k: int = 32, keep_dense: bool = False,
             positions: T.Positions = None, when: str = "both") -> list[tuple[str, T.Tap]]:
    """(hook, tap) pairs for `hm.hooks(...)`: capture features and/or splice an (edited) reconstruction.

    Example: ablate feature 123 everywhere but keep everything else exact:
        with hm.hooks(sae_taps(sae, [FeatureEdit(123)])): logits = hm(prompt)
    """
    kw = dict(sae=sae, edits=tuple(edits), splice=splice, keep_error=keep_error, store=store, top_k=top_k,
              keep_dense=keep_dense, positions=positions, when=when)
    if not sae.is_transcoder:
        return [(sae.hook, SAETap(**kw))]
    hold = _HoldInput()
    return [(sae.hook, hold), (sae.hook_out, SAETap(source=hold, **kw))]


def feature_acts(hm: HookedModel, sae: SAE, prompts, top_k: int = 32, chat: bool = False) -> tuple[FeatureStore, mx.array]:
    """Run prompts with the SAE reading (not editing) its hook; (store of top-k features, logits)."""
    sae.check_model(hm)
    store = FeatureStore()
    with hm.hooks(sae_taps(sae, splice=False, store=store, top_k=top_k)):
        logits = hm(prompts, chat=chat)
    mx.eval(logits)
    return store, logits


def decoder_logit_effects(hm: HookedModel, sae: SAE, features: Sequence[int], top: int = 10) -> list[dict]:
    """Per feature: the tokens its decoder direction promotes and suppresses most, through the final norm
    and unembedding (`hm.unembed`, which bypasses taps). Only meaningful for residual-stream SAEs."""
    idx = mx.array(np.asarray(list(features), dtype=np.int64).astype(np.uint32))
    logits = hm.unembed(sae.W_dec[idx], normed=True)
    logits = logits - mx.mean(logits, axis=-1, keepdims=True)
    order = mx.argsort(logits, axis=-1)
    mx.eval(order, logits)
    order_np, lg = np.array(order), np.array(logits)
    dec = hm.tokenizer.decode
    out = []
    for row, f in enumerate(features):
        up = order_np[row, ::-1][:top]
        down = order_np[row, :top]
        out.append({"feature": int(f),
                    "promotes": [{"token": dec([int(t)]), "id": int(t), "logit": round(float(lg[row, t]), 4)} for t in up],
                    "suppresses": [{"token": dec([int(t)]), "id": int(t), "logit": round(float(lg[row, t]), 4)} for t in down]})
    return out


def feature_attribution(hm: HookedModel, sae: SAE, prompts, metric, read: int = -1, top: int = 20) -> dict:
    """Gradient x activation per feature (Marks et al. 2024, "Sparse feature circuits"): the first-order effect
    on `metric` of removing each feature at each position, f_i * (d metric / d x) . W_dec[i], with the
    error term held fixed. Uses `gradients.value_and_grad` at the SAE's hook(s).

    Returns {"attr": [B, L, d_sae] float32 numpy, "total": per-feature sum over positions and prompts,
    "top": the `top` features by |total|, "value": the metric per prompt}.
    """
    from mlxinterp.analysis import gradients

    sae.check_model(hm)
    out_hook = hm.point(sae.hook_out or sae.hook).name
    names = list(dict.fromkeys([hm.point(sae.hook).name, out_hook]))
    res = gradients.value_and_grad(hm, prompts, metric, at=names, read=read)
    x = res.acts[names[0]]
    g = res.grads[out_hook]
    x = x.reshape(*x.shape[:2], -1)
    g = g.reshape(*g.shape[:2], -1)
    f = sae.encode(x)
    attr = f * (g @ sae.W_dec.T)  # [B, L, d_sae]; padding has zero gradient
    mx.eval(attr)
    a = np.array(attr, dtype=np.float32)
    total = a.sum(axis=(0, 1))
    order = np.argsort(-np.abs(total))[:top]
    return {"attr": a, "total": total, "value": res.value,
            "top": [{"feature": int(i), "attribution": float(total[i])} for i in order]}

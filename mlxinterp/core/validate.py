"""Checks at the boundaries where outside values enter mlxinterp, one place per boundary.

Values arrive from model files (config.json, GGUF metadata, weights), from the
environment, and from users (numbers, text, token ids). Each check raises an
mlxinterp.core.errors exception naming the value and what is allowed, before the
value reaches MLX or mlx-lm, where the same mistake surfaces as a TypeError deep
in a model constructor, a segfault, or silently wrong numbers (NaN logits,
truncated ids).

- numbers and text: `whole`, `real`, `text`
- model metadata: `check_config` (config.json, and the config built from GGUF
  metadata), against mlx-lm's own ModelArgs for the architecture plus the ranges
  every decoder needs (sizes >= 1, heads divisible into groups)
- weights: `check_parameter_dtypes` (on the lazily loaded model, so it costs
  nothing) and `check_finite_parameters` (one reduction per tensor after load)
- environment: `env_bytes`, `env_flag`
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
import types as types_module
import typing
from typing import Any

import numpy as np

from mlxinterp.core.errors import EnvVarError, MlxInterpError, ModelFileError, PromptError

FLOAT32_MAX = float(np.finfo(np.float32).max)  # ~3.4e38: beyond it a value is inf in float32
INT64_MAX = 2**63 - 1

# Sizes every decoder config states as whole numbers >= 1 (null allowed where optional).
SIZE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
             "intermediate_size", "vocab_size", "max_position_embeddings", "sliding_window",
             "moe_intermediate_size", "num_experts", "num_local_experts", "num_experts_per_tok")
# Sizes mlx-lm fills in itself when null (kv heads = heads, head_dim = d_model / heads, no window).
NULLABLE_KEYS = ("num_key_value_heads", "head_dim", "sliding_window")
# Keys a decoder cannot be built without, whatever defaults the architecture has.
REQUIRED_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
# Floats that must be finite and > 0 (norm epsilons, RoPE bases, attention scales).
POSITIVE_FLOAT_KEYS = ("rms_norm_eps", "layer_norm_eps", "norm_eps", "rope_theta", "rope_local_base_freq",
                       "query_pre_attn_scalar")


# ---------------------------------------------------------------- numbers and text


def whole(value: Any, what: str, lo: int | None = None, hi: int | None = None,
          error: type[MlxInterpError] = MlxInterpError) -> int:
    """`value` as an int: a whole number (not a bool, not a float such as 2.0 or 2.5) in [lo, hi]."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if ok:
        value = int(value)
        ok = (lo is None or value >= lo) and (hi is None or value <= hi)
    if not ok:
        raise error(f"{what}={_short(value)} is not allowed; use {_int_range(lo, hi)}")
    return value


def real(value: Any, what: str, lo: float | None = None, hi: float | None = None, *, above: bool = False,
         error: type[MlxInterpError] = MlxInterpError) -> float:
    """`value` as a finite float within [lo, hi] ((lo, hi] with above=True); numbers only, no strings or bools."""
    ok = isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(value, (bool, np.bool_))
    if ok:
        value = float(value)
        ok = math.isfinite(value) and (lo is None or (value > lo if above else value >= lo)) \
            and (hi is None or value <= hi)
    if not ok:
        bound = [f"{'>' if above else '>='} {lo:g}" if lo is not None else "", f"<= {hi:g}" if hi is not None else ""]
        limits = " and ".join(b for b in bound if b)
        raise error(f"{what}={_short(value)} is not allowed; use a finite number" + (f" {limits}" if limits else ""))
    return value


def text(value: Any, what: str, error: type[MlxInterpError] = PromptError) -> str:
    """A str that encodes to UTF-8: lone surrogates (what undecodable bytes in argv or a file become
    under Python's surrogateescape) are refused rather than tokenized as garbage."""
    if not isinstance(value, str):
        raise error(f"{what} is not a string but a {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise error(f"{what} is not valid UTF-8 text: character {e.start} is {value[e.start]!r} (a lone surrogate, "
                    "e.g. an undecodable byte)", hint="pass text saved as UTF-8") from None
    return value


def _int_range(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f"a whole number from {lo} to {hi}"
    if lo is not None:
        return f"a whole number >= {lo}"
    return f"a whole number <= {hi}" if hi is not None else "a whole number"


def _short(value: Any, limit: int = 60) -> str:
    """repr, cut so a 5000-character value still gives a one-line message."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


# ---------------------------------------------------------------- environment


def env_bytes(name: str) -> int | None:
    """A size from the environment ('8GB', '512MiB', '1e9'); None when unset or empty."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        n = parse_bytes(raw)
    except (ValueError, OverflowError):
        n = 0
    if n <= 0:
        raise EnvVarError(f"environment variable {name}={_short(raw)} is not a size; use e.g. 8GB, 512MB "
                             "or a number of bytes > 0", hint=f"fix or unset {name}")
    return n


def parse_bytes(text: str) -> int:
    """'8GB', '512MiB', '1e9' -> bytes; ValueError for anything else (also 'inf' and 'nan')."""
    t = text.strip().upper().replace("IB", "B")
    number, mult = t.rstrip("B"), 1
    for unit, m in (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if t.endswith(unit):
            number, mult = t[: -len(unit)], m
            break
    value = float(number) * mult
    if not math.isfinite(value):
        raise ValueError(f"not a finite size: {text!r}")
    return int(value)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def env_flag(name: str) -> bool:
    """A yes/no environment variable; anything else is an error, not silently 'no'."""
    raw = os.environ.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise EnvVarError(f"environment variable {name}={_short(os.environ[name])} is not allowed; "
                         f"use 1/true/yes or 0/false/no", hint=f"fix or unset {name}")


# ---------------------------------------------------------------- model metadata


def check_config(cfg: Any, where: str, key_names: dict[str, str] | None = None, *, model_args: bool = True) -> None:
    """Refuse a model config that mlx-lm would crash on or silently misread.

    `where` names the source in messages ('DIR/config.json', 'GGUF m.gguf');
    `key_names` maps config keys to the names the user's file uses (GGUF keys).
    Checks, in order: model_type is a string; the sizes are whole numbers >= 1
    and the required ones present; epsilons and RoPE bases finite and > 0; the
    types mlx-lm's ModelArgs of this architecture declares; head counts that
    divide (grouped-query attention shares each kv head by a whole number of
    query heads). model_args=False skips mlx-lm's ModelArgs (a config still
    being assembled from GGUF metadata).
    """
    if not isinstance(cfg, dict):
        raise ModelFileError(f"{where} is not a JSON object but a {type(cfg).__name__}",
                             hint="re-download the checkpoint")
    arch = cfg.get("model_type")
    if not isinstance(arch, str):
        raise ModelFileError(f"{where}: model_type={_short(arch)} is not allowed; it must name the architecture "
                             "(a string such as 'llama')")
    c = {**cfg, **cfg["text_config"]} if isinstance(cfg.get("text_config"), dict) else cfg
    names = key_names or {}

    def bad(key: str, need: str) -> ModelFileError:
        shown = names.get(key, key)
        if key not in c:
            return ModelFileError(f"{where} has no {shown!r} ({need})", hint="the file is incomplete or not a "
                                  "decoder checkpoint; re-download or re-convert it")
        return ModelFileError(f"{where}: {shown}={_short(c[key])} is not allowed; {need}",
                              hint="the file is damaged or was edited; re-download or re-convert it")

    args_fields = _model_args_fields(cfg) if model_args else {}
    for key in REQUIRED_KEYS:
        if key not in c and key not in args_fields.get("defaults", ()):
            raise bad(key, "a whole number >= 1 is required")
    for key in SIZE_KEYS:
        if key in c and not (c[key] is None and key in NULLABLE_KEYS):
            v = c[key]
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= INT64_MAX:
                raise bad(key, "use a whole number >= 1")
    for key in POSITIVE_FLOAT_KEYS:
        if key in c and c[key] is not None:
            v = c[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise bad(key, "use a finite number > 0")
    for key, kind in args_fields.get("types", {}).items():
        if key not in c or c[key] is None and key in args_fields["nullable"]:
            continue
        if not _is_kind(c[key], kind):
            raise bad(key, f"mlx-lm's {arch} model takes {kind.__name__}")
    for key in args_fields.get("required", ()):
        if key not in c:
            raise bad(key, f"mlx-lm's {arch} model requires it")
    heads, kv = c.get("num_attention_heads"), c.get("num_key_value_heads")
    if isinstance(heads, int) and isinstance(kv, int) and heads % kv:
        raise ModelFileError(f"{where}: {names.get('num_attention_heads', 'num_attention_heads')}={heads} is not a "
                             f"multiple of {names.get('num_key_value_heads', 'num_key_value_heads')}={kv}",
                             hint="grouped-query attention shares each kv head by a whole number of query heads")
    if c.get("head_dim") is None and isinstance(heads, int) and isinstance(c.get("hidden_size"), int) \
            and c["hidden_size"] % heads:
        raise ModelFileError(f"{where}: {names.get('hidden_size', 'hidden_size')}={c['hidden_size']} is not divisible "
                             f"by {names.get('num_attention_heads', 'num_attention_heads')}={heads} and no head_dim "
                             "is given")


def _is_kind(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def _model_args_fields(cfg: dict) -> dict[str, Any]:
    """mlx-lm's ModelArgs of this config's architecture (the text decoder's, for multimodal
    wrappers): fields without defaults, fields with defaults, and the plain scalar types declared."""
    import importlib

    arch = cfg["model_type"]
    mod = None
    for name in ((f"{arch}_text", arch) if isinstance(cfg.get("text_config"), dict) else (arch,)):
        try:
            mod = importlib.import_module(f"mlx_lm.models.{name}")
            break
        except ImportError:
            continue
    args = getattr(mod, "ModelArgs", None)
    if args is None or not dataclasses.is_dataclass(args):
        return {}
    required, defaults, types, nullable = [], [], {}, []
    for f in dataclasses.fields(args):
        if f.name in ("model_type", "text_config"):
            continue
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        (defaults if has_default else required).append(f.name)
        kind = f.type
        if typing.get_origin(kind) in (typing.Union, types_module.UnionType):  # Optional[int] -> int
            inner = [a for a in typing.get_args(kind) if a is not type(None)]
            nullable.append(f.name)
            kind = inner[0] if len(inner) == 1 else None
        elif f.default is None:
            nullable.append(f.name)
        if kind in (int, float, bool, str):
            types[f.name] = kind
    return {"required": required, "defaults": defaults, "types": types, "nullable": nullable}


# ---------------------------------------------------------------- weights


def check_parameter_dtypes(model: Any, where: str) -> None:
    """Every parameter is floating, except the packed weights of quantized layers (which have .scales).

    An integer tensor where a float belongs loads without complaint and turns
    every matmul into integer arithmetic (a weights file written with the wrong
    dtype). Runs on the lazily loaded model: only dtypes are read.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten

    params = dict(tree_flatten(model.parameters()))
    for name, p in params.items():
        if mx.issubdtype(p.dtype, mx.floating):
            continue
        if name.endswith(".weight") and name[: -len("weight")] + "scales" in params:
            continue
        raise ModelFileError(f"{where}: weight {name} has dtype {str(p.dtype).removeprefix('mlx.core.')}; "
                             "weights must be floating (float32/float16/bfloat16; integers only as quantized "
                             "weights beside their scales)", hint="re-download or re-convert the checkpoint")


def check_finite_parameters(model: Any, where: str) -> None:
    """No NaN or inf in any floating parameter: one sum per tensor, evaluated together.

    A single NaN weight makes every logit NaN, and greedy decoding then emits
    token 0 (padding) forever and exits cleanly: a silent wrong result.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten

    items = [(n, p) for n, p in tree_flatten(model.parameters()) if mx.issubdtype(p.dtype, mx.floating)]
    if not items:
        return
    # A sum is NaN or inf exactly when an element is (finite float32 weights would need entries
    # near 1e30 to overflow it), and it reads each tensor once without a mask the size of the weights.
    flags = mx.stack([mx.isfinite(mx.sum(p)) for _, p in items])
    ok = np.array(flags)
    if ok.all():
        return
    bad = [n for (n, _), good in zip(items, ok) if not good]
    raise ModelFileError(f"{where}: {len(bad)} weight tensor(s) contain NaN or inf, e.g. {', '.join(bad[:3])}",
                         hint="the checkpoint is damaged (or was saved after a diverged training step); "
                              "re-download it")

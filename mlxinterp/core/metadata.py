"""A model's metadata and hook points without loading its weights or tokenizer.

`mlxinterp info` and `mlxinterp hooks` answer from config.json, the safetensors headers
and the architecture table (core/archs.py): a fraction of a second instead of a full
load (the default model's 33 MB tokenizer alone takes seconds). The spec goes through the
same checks as `load_model` before anything is read (spec, dtype, config values, no
custom code, tokenizer files present, weight files complete, weight dtypes floating), so
a bad checkpoint fails here with the same one-line error.

What needs the loaded model is left out: whether prompts need BOS when the tokenizer
alone decides it (`needs_bos` None), and mixture-of-experts models, whose dense and
sparse layers differ per checkpoint (`describe` raises NotStatic; callers load instead).
tests/test_metadata.py checks every field and hook point against the loaded model.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from mlxinterp.core import names as H
from mlxinterp.core import patterns
from mlxinterp.core.archs import BLOCK_ORDER, arch_spec
from mlxinterp.core.errors import ModelFileError
from mlxinterp.core.loading import (check_arch, check_no_code, check_tokenizer, read_config, resolve,
                                    safetensors_headers, weights_hash)
from mlxinterp.core.memory import choose_plan, text_config
from mlxinterp.core.specs import parse_spec, plan_dtype
from mlxinterp.core.validate import check_config

# safetensors dtype codes -> MLX names
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
           "I16": "int16", "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool"}


class NotStatic(Exception):
    """The hook points of this model depend on its modules (mixture of experts): load it."""


def tensors(headers: list[tuple[str, int, bytes]]) -> dict[str, dict]:
    """name -> {"dtype", "shape"} over every weight file's header."""
    out = {}
    for _, _, header in headers:
        for name, entry in json.loads(header).items():
            if name != "__metadata__":
                out[name] = {"dtype": _DTYPES.get(entry["dtype"], entry["dtype"].lower()), "shape": entry["shape"]}
    return out


def check_dtypes(ts: dict[str, dict], where: str) -> None:
    """check_parameter_dtypes's rule on the headers: floating, or quantized weights beside their scales."""
    for name, t in ts.items():
        if t["dtype"].startswith(("float", "bfloat")):
            continue
        if name.endswith(".weight") and name[: -len("weight")] + "scales" in ts:
            continue
        raise ModelFileError(f"{where}: weight {name} has dtype {t['dtype']}; weights must be floating "
                             "(float32/float16/bfloat16; integers only as quantized weights beside their scales)",
                             hint="re-download or re-convert the checkpoint")


def _n_params(ts: dict[str, dict], bits: int | None) -> int:
    """Parameters as mlx-lm counts them (get_total_parameters): packed weights unpacked, scales and biases
    of quantized layers not counted."""
    n = 0
    for name, t in ts.items():
        size = math.prod(t["shape"])
        base = name.rsplit(".", 1)[0]
        quantized = f"{base}.scales" in ts
        if quantized and name.endswith((".scales", ".biases")):
            continue
        n += size * 32 // bits if quantized and name.endswith(".weight") and bits else size
    return n


def describe(spec: str, dtype: str | None = None, allow_download: bool = False) -> dict:
    """ModelInfo's fields that need no load, plus `hook_shapes` {name: per-position shape} in
    HookedModel's order. Raises the loader's errors for a bad spec or checkpoint, NotStatic for MoE."""
    base, variant = parse_spec(str(spec))
    plan = plan_dtype(dtype, variant)
    path, slug = resolve(base, allow_download)
    cfg = read_config(path)
    check_no_code(path, cfg)
    arch = check_arch(cfg)
    check_config(cfg, str(path / "config.json"), model_args=False)  # mlx-lm's ModelArgs import costs seconds
    check_tokenizer(path)
    headers = safetensors_headers(path)
    ts = tensors(headers)
    check_dtypes(ts, str(path))
    spec_table = arch_spec(arch)
    if spec_table.router is not None:
        raise NotStatic(arch)
    c = text_config(cfg)
    heads = c["num_attention_heads"]
    q = cfg.get("quantization")
    stored_q = {"bits": q["bits"], "group_size": q["group_size"]} if isinstance(q, dict) and "bits" in q else None
    if not (dtype or variant):
        plan, _ = choose_plan(cfg, dtype, variant)
    floats = Counter()
    for t in ts.values():
        if t["dtype"].startswith(("float", "bfloat")):
            floats[t["dtype"]] += math.prod(t["shape"])
    quant = ({"bits": plan.quant[0], "group_size": plan.quant[1]} if plan.quant
             else None if plan.dtype else stored_q)
    info = {
        "spec": str(spec), "slug": f"{slug}@{variant.name}" if variant else slug, "arch": arch,
        "n_layers": c["num_hidden_layers"], "d_model": c["hidden_size"], "n_heads": heads,
        "n_kv_heads": c.get("num_key_value_heads") or heads,
        "head_dim": _head_dim(ts, c, heads), "d_mlp": c["intermediate_size"], "vocab_size": c["vocab_size"],
        "dtype": plan.dtype or (floats.most_common(1)[0][0] if floats else "float32"),
        "stored_dtype": floats.most_common(1)[0][0] if floats else None,
        "quantization": quant, "needs_bos": _needs_bos(path, arch, cfg),
        "has_chat_template": _has_chat_template(path), "max_context": c.get("max_position_embeddings"),
        "source": str(path), "weights_hash": weights_hash(path, headers),
        "n_params": _n_params(ts, stored_q["bits"] if stored_q else None),
    }
    info["hook_shapes"] = hook_shapes(info, spec_table.sites)
    return info


def _head_dim(ts: dict[str, dict], c: dict, heads: int) -> int:
    """From the query projection's rows (config head_dim is optional and some ModelArgs default it)."""
    q = next((t for n, t in ts.items() if n.endswith("layers.0.self_attn.q_proj.weight")), None)
    return q["shape"][0] // heads if q else (c.get("head_dim") or c["hidden_size"] // heads)


def _needs_bos(path: Path, arch: str, cfg: dict) -> bool | None:
    """loading.needs_bos's rule where it needs no tokenizer: Gemma always; else add_bos_token; else unknown."""
    if arch.startswith("gemma"):
        return True
    try:
        tcfg = json.loads((path / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return None
    return bool(tcfg["add_bos_token"]) if isinstance(tcfg, dict) and tcfg.get("add_bos_token") is not None else None


def _has_chat_template(path: Path) -> bool:
    if (path / "chat_template.jinja").exists() or (path / "chat_template.json").exists():
        return True
    try:
        tcfg = json.loads((path / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(tcfg, dict) and bool(tcfg.get("chat_template"))


def hook_shapes(info: dict, sites: dict) -> dict[str, tuple[int, ...]]:
    """Every hook point and its per-position shape, in HookedModel.install_hooks's order."""
    kinds = {"d_model": (info["d_model"],), "d_mlp": (info["d_mlp"],), "vocab": (info["vocab_size"],),
             "heads": (info["n_heads"], info["head_dim"]), "kv_heads": (info["n_kv_heads"], info["head_dim"])}
    out = {H.LOGITS: kinds["vocab"], H.EMBED: kinds["d_model"]}
    for i in range(info["n_layers"]):
        for suffix in BLOCK_ORDER:
            if suffix in sites:
                out[H.name(i, suffix)] = kinds[sites[suffix].kind]
        for suffix in patterns.suffixes(sites):
            out[H.name(i, suffix)] = patterns.feature_shape(info["n_heads"])
    out[H.LN_FINAL] = kinds["d_model"]
    return out

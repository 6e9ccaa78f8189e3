"""GGUF file -> mlx-lm model directory (config.json, model.safetensors, tokenizer).

Why an importer rather than a GGUF runtime: every tool in mlxinterp hooks
mlx-lm's own modules, so a GGUF has to become an ordinary mlx-lm checkpoint
first. The work is done by libraries: gguf-py reads and dequantizes (no torch),
gguf-py's TensorNameMap says which GGUF tensor is which mlx-lm parameter (we
apply it to the parameter names of an mlx-lm model skeleton), transformers'
GGUF tables give the config keys and build the tokenizer. What is left here
are the places where llama.cpp's converter changed the weights and we must
change them back:

- Gemma RMSNorm weights are stored as (1 + w); mlx-lm adds the 1 itself.
- Llama q/k rows are permuted into llama.cpp's interleaved rope layout.
- No `output.weight` means tied embeddings.
- Gemma files may state wrong special-token ids; Gemma's are pad 0, eos 1, bos 2.

Weights are written in float32: dequantized GGUF values are not exactly
representable in float16/bfloat16, and the loader decides the compute dtype.
The directory is written atomically (temp dir + rename) with a manifest that
records the GGUF's sha256, so a cache entry is either complete or absent.
"""
from __future__ import annotations

# gguf-py, mlx-lm and transformers are imported inside the functions that need them: reading a
# spec or a config must not pay for them, and the importer runs once per GGUF file.

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlxinterp.core.errors import MemoryBudgetError, ModelFileError, UnsupportedArchitectureError
from mlxinterp.core.validate import check_config, real, whole

MANIFEST = "mlxinterp_import.json"
IMPORTER_VERSION = 1
# Gemma's real special-token ids (pad, eos, bos, unk); some GGUFs state others.
_GEMMA_SPECIALS = {"pad": 0, "eos": 1, "bos": 2, "unk": 3}
# GGML tensor types holding integers: never model weights (llama.cpp writes them for other data).
_INTEGER_TYPES = ("I8", "I16", "I32", "I64")
# Big tokenizer arrays are read only by the tokenizer builder.
_TOKENIZER_ARRAYS = ("tokens", "scores", "token_type", "merges")


@dataclass(frozen=True)
class _Arch:
    """How one GGUF architecture maps onto an mlx-lm model_type."""

    model_type: str
    norm_shift: float = 0.0  # llama.cpp stores Gemma norms as (1 + w)
    permute_qk: bool = False  # llama.cpp permutes llama q/k rows for its rope


ARCHS: dict[str, _Arch] = {
    "llama": _Arch("llama", permute_qk=True),
    "qwen2": _Arch("qwen2"),
    "qwen3": _Arch("qwen3"),
    "gemma2": _Arch("gemma2", norm_shift=1.0),
    "gemma3": _Arch("gemma3_text", norm_shift=1.0),
}


def supported_gguf_archs() -> list[str]:
    return sorted(ARCHS)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- reading


def open_gguf(path: str | Path):
    """GGUFReader for `path`, with truncation/corruption turned into ModelFileError."""
    from gguf import GGUFReader

    path = Path(path)
    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # gguf-py raises ValueError/IndexError/struct.error on bad bytes
        raise ModelFileError(
            f"{path} is not a readable GGUF file (truncated or corrupt: {e})",
            hint="re-download or re-assemble the file; a complete GGUF starts with 'GGUF'",
        ) from e
    size = path.stat().st_size
    end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    if end > size or not reader.tensors:
        raise ModelFileError(f"{path} is truncated: tensor data needs {end} bytes, file has {size}")
    return reader


def read_metadata(reader, with_tokenizer_arrays: bool = False) -> dict[str, Any]:
    """All key/value fields as Python values (tokenizer arrays only on request: they are big)."""
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if not with_tokenizer_arrays and key.removeprefix("tokenizer.ggml.") in _TOKENIZER_ARRAYS:
            continue
        meta[key] = field.contents()
    return meta


def gguf_arch(meta: dict[str, Any], path: Path) -> tuple[str, _Arch]:
    name = meta.get("general.architecture")
    if name not in ARCHS:
        raise UnsupportedArchitectureError(
            f"GGUF {path.name} has architecture {name!r}; the importer supports {supported_gguf_archs()}",
            hint="use an mlx-lm (safetensors) checkpoint of this model instead",
        )
    return name, ARCHS[name]


# ---------------------------------------------------------------- config


def build_config(meta: dict[str, Any], arch_name: str, tensor_shapes: dict[str, tuple],
                 where: str = "GGUF metadata") -> dict:
    """An mlx-lm config.json from GGUF metadata (keys via transformers' GGUF table).

    The metadata is checked like a config.json (validate.check_config, messages
    naming the GGUF keys) and against the tensors it describes (block count,
    embedding width), because a wrong value here would otherwise fail deep in
    mlx-lm's constructors or import a model with layers missing.
    """
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    arch = ARCHS[arch_name]
    cfg: dict[str, Any] = {"model_type": arch.model_type}
    table = dict(GGUF_CONFIG_MAPPING.get(arch_name, GGUF_CONFIG_MAPPING["llama"]))
    table.setdefault("attention.key_length", "head_dim")
    for key, name in table.items():
        if name and f"{arch_name}.{key}" in meta:
            cfg[name] = meta[f"{arch_name}.{key}"]
    if "token_embd.weight" not in tensor_shapes:
        raise ModelFileError(f"{where} has no token embedding tensor (token_embd.weight)",
                             hint="the file is incomplete; re-download or re-convert it")
    cfg["vocab_size"] = tensor_shapes["token_embd.weight"][0]
    cfg["tie_word_embeddings"] = "output.weight" not in tensor_shapes
    key_names = {name: f"{arch_name}.{key}" for key, name in table.items() if name}
    check_config(cfg, where, key_names, model_args=False)
    _check_against_tensors(cfg, tensor_shapes, where, key_names)
    if any(n.endswith("attn_q.bias") for n in tensor_shapes) and arch_name == "llama":
        cfg["attention_bias"] = True
    _rope_scaling(meta, arch_name, cfg)
    if arch_name in ("gemma2", "gemma3"):
        _gemma_config(meta, arch_name, cfg)
    check_config(cfg, where, key_names)
    return cfg


def _check_against_tensors(cfg: dict, shapes: dict[str, tuple], where: str, key_names: dict[str, str]) -> None:
    """The metadata must describe the tensors the file holds (a block count or width that lies
    would import a truncated model, or fail later with a shape error naming no key)."""
    blocks = {int(n.split(".")[1]) for n in shapes if n.startswith("blk.") and n.split(".")[1].isdigit()}
    if blocks and cfg["num_hidden_layers"] != max(blocks) + 1:
        raise ModelFileError(f"{where}: {key_names['num_hidden_layers']}={cfg['num_hidden_layers']} but the file holds "
                             f"tensors for {max(blocks) + 1} blocks (blk.0..blk.{max(blocks)})",
                             hint="the metadata does not match the tensors; re-convert the model")
    width = shapes["token_embd.weight"][1] if len(shapes["token_embd.weight"]) > 1 else None
    if width is not None and cfg["hidden_size"] != width:
        raise ModelFileError(f"{where}: {key_names['hidden_size']}={cfg['hidden_size']} but token_embd.weight has "
                             f"width {width}", hint="the metadata does not match the tensors; re-convert the model")


def _rope_scaling(meta: dict, arch_name: str, cfg: dict) -> None:
    kind = meta.get(f"{arch_name}.rope.scaling.type")
    if kind and kind != "none":
        factor = _number(meta, f"{arch_name}.rope.scaling.factor", 1.0)
        cfg["rope_scaling"] = {"type": kind, "rope_type": kind, "factor": factor}


def _gemma_config(meta: dict, arch_name: str, cfg: dict) -> None:
    """Values llama.cpp hardcodes for Gemma instead of storing them."""
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    cfg["head_dim"] = head_dim
    scale = _number(meta, f"{arch_name}.attention.scale", None)
    if scale:
        cfg["query_pre_attn_scalar"] = 1.0 / scale ** 2
    elif cfg["num_hidden_layers"] in (46, 62):  # Gemma 2/3 27B scale by d_model / n_heads
        cfg["query_pre_attn_scalar"] = cfg["hidden_size"] // cfg["num_attention_heads"]
    else:
        cfg["query_pre_attn_scalar"] = head_dim
    if arch_name == "gemma2":
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if f"gemma2.{key}" in meta:
                cfg[key] = _number(meta, f"gemma2.{key}", None)
        return
    cfg["sliding_window_pattern"] = _sliding_pattern(meta.get("gemma3.attention.sliding_window_pattern"))
    cfg["rope_local_base_freq"] = _number(meta, "gemma3.rope.freq_base_swa", 10000.0)


def _number(meta: dict, key: str, default: float | None) -> float | None:
    """A positive finite number stored under `key` (default when absent)."""
    if key not in meta:
        return default
    return real(meta[key], f"GGUF metadata {key}", 0, above=True, error=ModelFileError)


def _sliding_pattern(value) -> int:
    """llama.cpp's default is 6 (five local layers, one global); newer files state it."""
    if value is None:
        return 6
    if isinstance(value, (list, tuple)) and value:  # per-layer "is sliding" flags
        return next((i + 1 for i, sliding in enumerate(value) if not sliding), len(value))
    return whole(value, "GGUF metadata gemma3.attention.sliding_window_pattern", 1, error=ModelFileError)


# ---------------------------------------------------------------- weights


def gguf_to_mlx_names(cfg: dict, arch_name: str) -> dict[str, tuple[str, tuple]]:
    """{gguf tensor name: (mlx-lm parameter name, shape)} from an mlx-lm skeleton of `cfg`.

    The skeleton's parameters are lazy (never evaluated), so this costs nothing.
    """
    import gguf
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    model_cls, args_cls = _get_classes(cfg)
    skeleton = model_cls(args_cls.from_dict(dict(cfg)))
    arch_enum = gguf.MODEL_ARCH[arch_name.upper()]
    names = gguf.get_tensor_name_map(arch_enum, cfg["num_hidden_layers"])
    table = {}
    for mlx_name, value in tree_flatten(skeleton.parameters()):
        g = names.get_name(mlx_name, try_suffixes=(".weight", ".bias"))
        if g is not None:
            table[g] = (mlx_name, tuple(value.shape))
    return table


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's `permute(w, n_head, n_head_kv)` (rope rows interleaved per head)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's own permutation (convert_hf_to_gguf.LlamaModel.permute); tests use it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert_tensors(reader, cfg: dict, arch_name: str) -> dict[str, np.ndarray]:
    """Dequantize every tensor to float32 and undo llama.cpp's transformations."""
    from gguf.quants import dequantize

    arch = ARCHS[arch_name]
    table = gguf_to_mlx_names(cfg, arch_name)
    out = {}
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            raise UnsupportedArchitectureError(
                "this GGUF carries llama3-style rope frequency factors (rope_freqs.weight), "
                "which the importer does not translate",
                hint="load the model's mlx-lm / Hugging Face checkpoint instead",
            )
        if t.name not in table:
            raise UnsupportedArchitectureError(
                f"GGUF tensor {t.name!r} has no counterpart in mlx-lm's {arch.model_type} model")
        mlx_name, shape = table[t.name]
        if t.tensor_type.name in _INTEGER_TYPES:
            raise ModelFileError(f"GGUF tensor {t.name} has type {t.tensor_type.name}; weights must be float "
                                 "or a quantized type", hint="the file is damaged or not a model; re-convert it")
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        if w.shape != shape:
            raise ModelFileError(f"GGUF tensor {t.name} has shape {w.shape}, config implies {shape}")
        out[mlx_name] = _fix(w, t.name, cfg, arch)
    missing = sorted(n for g, (n, _) in table.items() if n not in out and g != "output.weight")
    if missing:
        raise ModelFileError(f"GGUF lacks {len(missing)} tensors mlx-lm needs, e.g. {missing[:3]}")
    return out


def _fix(w: np.ndarray, gname: str, cfg: dict, arch: _Arch) -> np.ndarray:
    if arch.norm_shift and gname.endswith("norm.weight"):
        return w - arch.norm_shift
    if arch.permute_qk and gname.endswith(("attn_q.weight", "attn_q.bias")):
        return unpermute_qk(w, cfg["num_attention_heads"])
    if arch.permute_qk and gname.endswith(("attn_k.weight", "attn_k.bias")):
        return unpermute_qk(w, cfg.get("num_key_value_heads", cfg["num_attention_heads"]))
    return w


# ---------------------------------------------------------------- tokenizer


def special_ids(meta: dict, arch_name: str, tokens: list[str]) -> dict[str, int | None]:
    """bos/eos/pad/unk ids; for Gemma the vocabulary's own <pad>/<eos>/<bos>/<unk> win."""
    ids = {
        "bos": meta.get("tokenizer.ggml.bos_token_id"),
        "eos": meta.get("tokenizer.ggml.eos_token_id"),
        "pad": meta.get("tokenizer.ggml.padding_token_id"),
        "unk": meta.get("tokenizer.ggml.unknown_token_id"),
    }
    if arch_name.startswith("gemma"):
        for role, i in _GEMMA_SPECIALS.items():
            if i < len(tokens) and tokens[i] == f"<{role}>":
                ids[role] = i
    ids = {k: None if v is None else whole(v, f"GGUF metadata {k} token id", 0, error=ModelFileError)
           for k, v in ids.items()}
    return {k: (v if v is not None and v < len(tokens) else None) for k, v in ids.items()}


def build_tokenizer(meta: dict, arch_name: str):
    """PreTrainedTokenizerFast from the GGUF vocabulary via transformers' GGUF builders.

    `meta` must include the tokenizer arrays (read_metadata(..., True)).
    """
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    tok_dict = {name: meta[f"tokenizer.{key}"] for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
                if f"tokenizer.{key}" in meta}
    if "tokens" not in tok_dict:
        raise ModelFileError("GGUF has no tokenizer vocabulary (tokenizer.ggml.tokens)")
    try:
        backend, _ = convert_gguf_tokenizer(arch_name, tok_dict)
    except ValueError as e:
        raise UnsupportedArchitectureError(f"cannot rebuild the GGUF's tokenizer: {e}") from e
    tokens = tok_dict["tokens"]
    ids = special_ids(meta, arch_name, tokens)
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", tok_dict.get("tokenizer_type") == "llama"))
    add_bos = add_bos and ids["bos"] is not None
    kwargs = {f"{role}_token": tokens[i] for role, i in ids.items() if i is not None}
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, add_bos_token=add_bos,
                                   add_eos_token=False, **kwargs)
    if meta.get("tokenizer.chat_template"):
        fast.chat_template = meta["tokenizer.chat_template"]
    return fast, ids, add_bos


def save_tokenizer(fast, out: Path, add_bos: bool) -> None:
    """save_pretrained, then record add_bos_token (transformers 5 drops it from the config)."""
    fast.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["add_bos_token"], cfg["add_eos_token"] = add_bos, False
    cfg_path.write_text(json.dumps(cfg, indent=2))


# ---------------------------------------------------------------- import


def read_manifest(model_dir: Path) -> dict | None:
    try:
        return json.loads((Path(model_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def import_gguf(gguf_path: str | Path, out_dir: str | Path, *, sha256: str | None = None,
                expected_sha256: str | None = None) -> Path:
    """Convert `gguf_path` into the mlx-lm model directory `out_dir` (replaced atomically).

    sha256: the file's hash if the caller already computed it (else computed here).
    expected_sha256: refuse (ModelFileError) when the file's hash differs.
    """
    from mlx_lm.utils import save_config
    from safetensors.numpy import save_file

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    start = time.perf_counter()
    sha256 = sha256 or sha256_file(gguf_path)
    if expected_sha256 and sha256 != expected_sha256:
        raise ModelFileError(f"{gguf_path} has sha256 {sha256}, expected {expected_sha256}",
                             hint="the file is corrupt or a different build; re-create it")
    reader = open_gguf(gguf_path)
    _check_memory(reader, gguf_path)
    meta = read_metadata(reader, with_tokenizer_arrays=True)
    arch_name, _ = gguf_arch(meta, gguf_path)
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors}
    cfg = build_config(meta, arch_name, shapes, f"GGUF {gguf_path.name}")
    fast, ids, add_bos = build_tokenizer(meta, arch_name)
    cfg.update({f"{r}_token_id": i for r, i in ids.items() if r != "unk" and i is not None})
    weights = convert_tensors(reader, cfg, arch_name)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "mlx"})
        del weights
        save_config(cfg, tmp / "config.json")
        save_tokenizer(fast, tmp, add_bos)
        manifest = {"gguf_sha256": sha256, "gguf_path": str(gguf_path.resolve()), "gguf_arch": arch_name,
                    "importer_version": IMPORTER_VERSION, "seconds": round(time.perf_counter() - start, 2)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _check_memory(reader, path: Path) -> None:
    """The import holds every tensor in float32 at once; refuse early if that cannot fit."""
    from mlxinterp.core.platform import total_memory_bytes

    need = sum(int(t.n_elements) for t in reader.tensors) * 4
    if need > 0.8 * total_memory_bytes():
        raise MemoryBudgetError(
            f"importing {path.name} needs about {need / 1e9:.1f} GB (float32 weights), "
            f"this machine has {total_memory_bytes() / 1e9:.1f} GB",
            hint="use the model's mlx-lm (safetensors) checkpoint instead of a GGUF")


def _replace_dir(src: Path, dst: Path) -> None:
    """Move src to dst; an existing dst is moved aside first and deleted after."""
    trash = None
    if dst.exists():
        trash = dst.parent / f".{dst.name}.old-{os.getpid()}"
        os.replace(dst, trash)
    os.replace(src, dst)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)

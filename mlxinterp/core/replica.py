"""Size replicas: random-weight mlx-lm checkpoints with a real model's exact config, shapes and quantization.

Memory and speed depend on shapes, dtypes and quantization, not on the values
of the weights, so a replica measures what a real 2B-27B checkpoint would cost
on this machine without downloading it. The model is built by mlx-lm itself
(its own classes and `quantize_model`, so parameter names, shapes and dtypes are
those of a converted checkpoint), but lazily: nothing of its float32 init is
ever evaluated (a 9B model would need 37 GB). Each tensor is instead drawn
directly in its stored form, seeded by (seed, name):

  packed quantized weights  uniform random codes (all 2**bits levels equally likely)
  their scales and biases   scale = 1 / (sqrt(fan_in) * std of the codes), bias = -scale * mean
                            code, so dequantized weights have mean 0 and std 1/sqrt(fan_in)
                            (activations keep their size through the layers)
  norm weights, float biases  mlx-lm's own init (ones or zeros), cast to the stored dtype
  any other float tensor     normal, std 1/sqrt(fan_in)

Shards of about `shard_bytes` are written one at a time (model-0000i-of-0000n.safetensors
with an index, as mlx-lm and the hub do), so the writer's peak memory is one shard.
The tokenizer is the default model's when every one of its ids is inside the
replica's vocabulary, else a byte-level one (256 byte tokens + <pad> <bos> <eos>).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from mlxinterp.core.errors import MlxInterpError
from mlxinterp.core.io import atomic_write_text

SHARD_BYTES = 2 * 1024**3
_DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}


def lazy_model(cfg: dict):
    """mlx-lm's model for `cfg`, quantized as `cfg['quantization']` says; parameters unevaluated.

    Returns (model, config as mlx-lm's quantize_model records it).
    """
    from mlx_lm.utils import _get_classes, quantize_model

    model_cls, args_cls = _get_classes(cfg)
    model = model_cls(args_cls.from_dict({k: v for k, v in cfg.items() if k != "quantization"}))
    q = cfg.get("quantization")
    if not q:
        return model, cfg
    plain = {k: v for k, v in cfg.items() if k not in ("quantization", "quantization_config")}
    with contextlib.redirect_stdout(io.StringIO()):  # quantize_model prints bits per weight
        model, qcfg = quantize_model(model, plain, group_size=q["group_size"], bits=q["bits"])
    return model, qcfg


def _key(seed: int, name: str) -> mx.array:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return mx.random.key(int.from_bytes(digest[:4], "little"))


def _tensor(name: str, like: mx.array, params: dict, q: dict | None, dtype, seed: int) -> mx.array:
    """One tensor of the replica in its stored form (see the module docstring)."""
    key = _key(seed, name)
    if like.dtype == mx.uint32:  # packed codes
        # two exact 16-bit halves: randint over 2**32 values goes through float32 and biases the low bits
        hi, lo = (mx.random.randint(0, 2**16, like.shape, dtype=mx.uint32, key=k) for k in mx.random.split(key))
        return (hi << 16) | lo
    stem = name.rsplit(".", 1)[0]
    if q and name.endswith((".scales", ".biases")) and f"{stem}.weight" in params:
        levels = 2 ** q["bits"]
        code_std = math.sqrt((levels**2 - 1) / 12)  # std of a uniform code on 0..levels-1
        fan_in = params[f"{stem}.weight"].shape[-1] * 32 // q["bits"]
        scale = 1.0 / (math.sqrt(fan_in) * code_std)
        s = scale * (1 + 0.1 * mx.random.normal(like.shape, key=_key(seed, stem + ".scales")))
        return (s if name.endswith(".scales") else -s * (levels - 1) / 2).astype(dtype)
    if "norm" in name or name.endswith(".bias") or like.ndim < 2:
        return like.astype(dtype)  # mlx-lm's own (cheap) init of norms and biases
    return (mx.random.normal(like.shape, key=key) / math.sqrt(like.shape[-1])).astype(dtype)


def write_replica(cfg: dict, out: Path, seed: int = 0, tokenizer_dir: Path | None = None,
                  shard_bytes: int = SHARD_BYTES, progress: Callable[[str], None] | None = None) -> Path:
    """Write a random-weight mlx-lm checkpoint for `cfg` into `out` (see the module docstring)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise MlxInterpError(f"{out} exists and is not empty", hint="give a new directory, or delete this one first")
    dtype = _DTYPES.get(cfg.get("torch_dtype", "bfloat16"), mx.bfloat16)
    model, qcfg = lazy_model(cfg)
    params = stored_params(model, cfg)
    q = cfg.get("quantization")
    shards = _plan_shards(params, shard_bytes, dtype)
    out.mkdir(parents=True, exist_ok=True)
    index, total = {}, 0
    for i, names in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        arrays = {n: _tensor(n, params[n], params, q, dtype, seed) for n in names}
        mx.eval(arrays)
        total += sum(a.nbytes for a in arrays.values())
        mx.save_safetensors(str(out / fname), arrays, metadata={"format": "mlx"})
        index.update({n: fname for n in names})
        del arrays
        if progress:
            progress(f"shard {i}/{len(shards)}: {len(names)} tensors, {total / 1e9:.2f} GB written")
    atomic_write_text(out / "model.safetensors.index.json",
                      json.dumps({"metadata": {"total_size": total}, "weight_map": index}, indent=1))
    tok = write_tokenizer(out, _vocab_size(cfg), tokenizer_dir)
    final = {**qcfg, **tok, "mlxinterp_replica": {"seed": seed, "note": "random weights; real shapes"}}
    atomic_write_text(out / "config.json", json.dumps(final, indent=2))
    return out


def stored_params(model, cfg: dict) -> dict:
    """The tensors a converted checkpoint stores: with tied embeddings there is no lm_head (Gemma 3's
    mlx-lm class builds one and drops it in `sanitize` when the checkpoint has none)."""
    params = dict(tree_flatten(model.parameters()))
    tied = {**cfg, **cfg.get("text_config", {})}.get("tie_word_embeddings", False)
    if tied:
        params = {k: v for k, v in params.items() if not k.removeprefix("language_model.").startswith("lm_head.")}
    return params


def _plan_shards(params: dict, shard_bytes: int, dtype) -> list[list[str]]:
    shards, cur, size = [], [], 0
    for name, a in params.items():
        n = a.size * (a.dtype.size if a.dtype == mx.uint32 else dtype.size)
        if cur and size + n > shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(name)
        size += n
    return shards + ([cur] if cur else [])


def _vocab_size(cfg: dict) -> int:
    return int(cfg.get("text_config", {}).get("vocab_size") or cfg["vocab_size"])


def write_tokenizer(out: Path, vocab_size: int, tokenizer_dir: Path | None) -> dict:
    """Copy `tokenizer_dir`'s tokenizer if all its ids fit `vocab_size`, else write a byte-level one.

    Returns the config fields that go with it (bos/eos token ids).
    """
    if tokenizer_dir is not None and (Path(tokenizer_dir) / "tokenizer.json").exists():
        from tokenizers import Tokenizer

        borrowed = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
        if borrowed.get_vocab_size(with_added_tokens=True) <= vocab_size:
            for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"):
                if (Path(tokenizer_dir) / f).exists():
                    shutil.copy(Path(tokenizer_dir) / f, out / f)
            src = json.loads((Path(tokenizer_dir) / "config.json").read_text()) \
                if (Path(tokenizer_dir) / "config.json").exists() else {}
            return {k: src[k] for k in ("bos_token_id", "eos_token_id") if k in src} | {
                "mlxinterp_tokenizer": f"borrowed from {tokenizer_dir}"}
    _byte_level_tokenizer(out)
    return {"bos_token_id": 1, "eos_token_id": 2, "mlxinterp_tokenizer": "byte-level (256 bytes + 3 specials)"}


def _byte_level_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(specials + alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    fast.save_pretrained(str(out))

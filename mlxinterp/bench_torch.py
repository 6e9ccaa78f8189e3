"""The torch side of the benchmarks: the same weights in transformers' Gemma3ForCausalLM.

Benchmark-only (the optional extra `bench`: torch, nnsight, transformer-lens);
nothing in the toolkit imports this module. The model comes from the
converted safetensors in mlxinterp's cache, so MLX and torch run exactly the
same float32 numbers: mlx-lm's gemma3_text parameter names are the Hugging
Face names, and both implementations apply Gemma's RMSNorm as (1 + w).

One known difference is not a weight: mlx-lm scales embeddings by sqrt(d)
rounded to bfloat16 (25.25 for d = 640) and transformers by the float32
sqrt(d) (25.298). `embed_scale="mlx"` copies mlx-lm's constant so the two
forwards compute the same function; `"hf"` keeps transformers' own.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from mlxinterp.errors import MlxInterpError

EXTRA_HINT = "install the benchmark extra: pip install torch==2.13.0 (CPU build first), then pip install -e '.[bench]'"


def require(*modules: str) -> None:
    """Import-check the benchmark-only packages with a clear message naming the missing one."""
    import importlib

    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError as e:
            raise MlxInterpError(f"benchmark dependency {m!r} is not installed ({e})", hint=EXTRA_HINT) from e


def hf_config(model_dir: Path):
    """transformers' Gemma3TextConfig for an mlx-lm gemma3_text directory."""
    require("torch", "transformers")
    from transformers import Gemma3TextConfig

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    if cfg.get("model_type") != "gemma3_text":
        raise MlxInterpError(f"model_type {cfg.get('model_type')!r} in {model_dir} is not supported by the torch "
                             "reference; allowed: 'gemma3_text' (the default model)")
    pattern = int(cfg.get("sliding_window_pattern", 6))
    n = int(cfg["num_hidden_layers"])
    return Gemma3TextConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=n, num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"], head_dim=cfg["head_dim"],
        max_position_embeddings=cfg.get("max_position_embeddings", 32768), rms_norm_eps=cfg["rms_norm_eps"],
        query_pre_attn_scalar=cfg.get("query_pre_attn_scalar", cfg["head_dim"]),
        sliding_window=cfg.get("sliding_window", 512),
        layer_types=["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n)],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": cfg.get("rope_theta", 1e6)},
                         "sliding_attention": {"rope_type": "default",
                                               "rope_theta": cfg.get("rope_local_base_freq", 1e4)}},
        final_logit_softcapping=cfg.get("final_logit_softcapping"),
        attn_logit_softcapping=cfg.get("attn_logit_softcapping"),
        tie_word_embeddings=cfg.get("tie_word_embeddings", True),
        bos_token_id=cfg.get("bos_token_id", 2), eos_token_id=cfg.get("eos_token_id", 1),
        pad_token_id=cfg.get("pad_token_id", 0), hidden_activation="gelu_pytorch_tanh",
    )


def load_hf(model_dir: Path | None = None, embed_scale: str = "mlx", attn: str = "sdpa", threads: int | None = None):
    """Gemma3ForCausalLM (float32, eval mode) holding the mlx-lm directory's weights.

    attn: "sdpa" (transformers' default) or "eager" (what TransformerLens's bridge forces).
    """
    if embed_scale not in ("mlx", "hf"):
        raise MlxInterpError(f"embed_scale={embed_scale!r} is not allowed; use 'mlx' or 'hf'")
    require("torch", "transformers", "safetensors")
    import torch
    from safetensors.torch import load_file
    from transformers import Gemma3ForCausalLM

    from mlxinterp.loading import default_model_dir

    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    if threads:
        torch.set_num_threads(threads)
    cfg = hf_config(model_dir)
    cfg._attn_implementation = attn
    with torch.device("meta"):
        model = Gemma3ForCausalLM(cfg)
    state = load_file(str(model_dir / "model.safetensors"))
    state = {k: v.float() for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise MlxInterpError(f"weights of {model_dir} do not map onto Gemma3ForCausalLM: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
    model.lm_head.weight = model.model.embed_tokens.weight  # tied
    emb = model.model.embed_tokens
    d = cfg.hidden_size
    scale = float(torch.tensor(math.sqrt(d), dtype=torch.bfloat16)) if embed_scale == "mlx" else math.sqrt(d)
    emb.scalar_embed_scale = scale
    emb.embed_scale = torch.tensor(scale, dtype=torch.float32)
    model.model.rotary_emb = type(model.model.rotary_emb)(cfg)  # built on meta above: recompute inv_freq on CPU
    return model.eval()


def hf_tokenizer(model_dir: Path | None = None):
    """The same tokenizer (tokenizer.json of the imported model) as a transformers fast tokenizer."""
    require("transformers")
    from transformers import AutoTokenizer

    from mlxinterp.loading import default_model_dir

    return AutoTokenizer.from_pretrained(str(model_dir or default_model_dir()))

"""Tiny random-weight checkpoints of every supported architecture.

Each is written as a real mlx-lm model directory (config.json, safetensors,
tokenizer files) so tests exercise the same loading path a user's
mlx-community checkpoint takes. Weights come from mlx-lm's own module
constructors with a fixed seed; the tokenizer is a small byte-level BPE trained
on a fixed corpus (deterministic).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

ARCHS = ("llama", "qwen2", "qwen3", "gemma2", "gemma3_text")
VOCAB = 512
_COMMON = dict(
    hidden_size=64,
    num_hidden_layers=4,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=VOCAB,
    rms_norm_eps=1e-6,
    max_position_embeddings=256,
    rope_theta=10000.0,
)
_EXTRA = {
    "llama": dict(tie_word_embeddings=False),
    "qwen2": dict(tie_word_embeddings=True),
    "qwen3": dict(tie_word_embeddings=True),
    "gemma2": dict(query_pre_attn_scalar=16, attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
    # A window of 8 with every second layer global, so sliding windows are exercised.
    "gemma3_text": dict(query_pre_attn_scalar=16, sliding_window=8, sliding_window_pattern=2),
}
# More dense families and mixtures of experts (tests/test_archs.py runs the hook tests on them;
# the six above stay the ones every other test file is parametrised over).
MORE_ARCHS = ("mistral", "gemma", "smollm3", "starcoder2", "phi3", "olmo2", "olmo3", "cohere", "cohere2",
              "granite", "qwen3_moe", "mixtral")
MOE_ARCHS = ("qwen3_moe", "mixtral")
_WINDOW = dict(sliding_window=8)  # a window shorter than the test prompts, so sliding layers are exercised
_MOE = dict(num_experts_per_tok=2, tie_word_embeddings=False)
_EXTRA.update({
    "mistral": dict(tie_word_embeddings=False),
    "gemma": dict(),
    "smollm3": dict(no_rope_layer_interval=2, tie_word_embeddings=True),
    "starcoder2": dict(norm_epsilon=1e-5, tie_word_embeddings=True),
    "phi3": dict(tie_word_embeddings=False),
    "olmo2": dict(tie_word_embeddings=False),
    "olmo3": dict(**_WINDOW, layer_types=["sliding_attention", "full_attention"] * 2, tie_word_embeddings=False),
    "cohere": dict(layer_norm_eps=1e-5, logit_scale=0.5),
    "cohere2": dict(layer_norm_eps=1e-5, logit_scale=0.5, **_WINDOW, sliding_window_pattern=2),
    # Granite 3's multipliers (embedding x12, residual x0.22, logits /8; attention scale 1/head_dim)
    "granite": dict(logits_scaling=8.0, attention_multiplier=1 / 16, embedding_multiplier=12.0,
                    residual_multiplier=0.22, attention_bias=False, mlp_bias=False, tie_word_embeddings=True),
    "qwen3_moe": dict(num_experts=4, decoder_sparse_step=1, mlp_only_layers=[], moe_intermediate_size=32,
                      norm_topk_prob=True, **_MOE),
    "mixtral": dict(num_local_experts=4, **_MOE),
})
BOS_ARCHS = {"llama", "gemma2", "gemma3_text", "gemma", "cohere", "cohere2"}
CORPUS = [
    "The Eiffel Tower is located in the city of Paris.",
    "The capital of France is Paris and the capital of Italy is Rome.",
    "Once upon a time there was a small model that liked to count tokens.",
    "Mechanistic interpretability reads the residual stream layer by layer.",
    "Steering adds a direction to the hidden state at some layer.",
    "Patching copies an activation from one run into another run.",
] * 20


def tiny_config(arch: str, bits: int | None = None) -> dict:
    cfg = {"model_type": arch, **_COMMON, **_EXTRA[arch]}
    cfg["bos_token_id"], cfg["eos_token_id"] = 1, 2
    if bits:
        cfg["quantization"] = {"group_size": 32, "bits": bits}
    return cfg


@lru_cache(maxsize=1)
def _tokenizer():
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(CORPUS, vocab_size=VOCAB, min_frequency=1,
                            special_tokens=["<pad>", "<bos>", "<eos>"], show_progress=False)
    return tok


def _write_tokenizer(path: Path, arch: str) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=_tokenizer()._tokenizer,
                                   bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    fast.save_pretrained(str(path))
    cfg_path = path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["add_bos_token"] = arch in BOS_ARCHS
    if arch in ("qwen3", "gemma3_text"):
        cfg["chat_template"] = (
            "{% for m in messages %}<bos>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}"
        )
    cfg_path.write_text(json.dumps(cfg, indent=2))


def write_tiny_model(path: Path, arch: str, bits: int | None = None, seed: int = 0) -> Path:
    """Write a tiny random mlx-lm checkpoint of `arch` (quantized when bits is set)."""
    from mlx_lm.utils import _get_classes, quantize_model, save_config

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config(arch)
    model_cls, args_cls = _get_classes(cfg)
    mx.random.seed(seed)
    model = model_cls(args_cls.from_dict(cfg))
    # Norm weights start at 0 (Gemma adds 1) or 1; perturb them so norms matter.
    params = dict(tree_flatten(model.parameters()))
    noisy = {k: v + 0.1 * mx.random.normal(v.shape) if "norm" in k else v for k, v in params.items()}
    model.load_weights(list(noisy.items()))
    if bits:
        model, cfg = quantize_model(model, cfg, group_size=32, bits=bits)
    mx.eval(model.parameters())
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    save_config(cfg, path / "config.json")
    _write_tokenizer(path, arch)
    return path

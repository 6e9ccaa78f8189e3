"""Where each hook point lives in each mlx-lm architecture.

A hook point is a (module, side) pair inside mlx-lm's own block: the input or
output of an existing submodule. Nothing here re-implements a forward pass;
the table only says which of mlx-lm's modules computes what TransformerLens
calls `hook_attn_out`, `hook_resid_mid`, and so on.

Gemma's blocks are "sandwich" blocks: the attention and MLP outputs pass
through an extra RMSNorm before they are added to the residual, so
`hook_attn_out` / `hook_mlp_out` (what is added to the residual) are the
outputs of those post-norms, while `attn.hook_out` / `mlp.hook_out` are the raw
sublayer outputs.

Granite's blocks multiply each sublayer output by a constant (`residual_multiplier`)
inside the block's own call, so no module outputs what is added to the residual. A
site with a `scale` is the module's output times that block attribute: the hook
point sees (and captures) exactly the product the block adds, and a tap's new value
is divided by the constant before the block multiplies it back.
"""
from __future__ import annotations

from dataclasses import dataclass

from mlxinterp.core.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class Site:
    """A hook point's place in a block: submodule path ('' = the block) and side."""

    path: str
    side: str  # "in" (transform the module's first argument) or "out" (its result)
    kind: str = "d_model"  # feature shape: d_model | heads | kv_heads | d_mlp
    scale: str | None = None  # block attribute the block multiplies the module's output by (Granite)


_SHARED = {
    "hook_resid_pre": Site("", "in"),
    "ln1.hook_normalized": Site("input_layernorm", "out"),
    "attn.hook_q": Site("self_attn.q_proj", "out", "heads"),
    "attn.hook_k": Site("self_attn.k_proj", "out", "kv_heads"),
    "attn.hook_v": Site("self_attn.v_proj", "out", "kv_heads"),
    "attn.hook_z": Site("self_attn.o_proj", "in", "heads"),
    "attn.hook_out": Site("self_attn", "out"),
    "mlp.hook_pre": Site("mlp.gate_proj", "out", "d_mlp"),
    "mlp.hook_post": Site("mlp.down_proj", "in", "d_mlp"),
    "mlp.hook_out": Site("mlp", "out"),
    "hook_resid_post": Site("", "out"),
}

LLAMA_SITES = {
    **_SHARED,
    "hook_attn_out": Site("self_attn", "out"),
    "hook_resid_mid": Site("post_attention_layernorm", "in"),
    "ln2.hook_normalized": Site("post_attention_layernorm", "out"),
    "hook_mlp_out": Site("mlp", "out"),
}

GEMMA_SITES = {
    **_SHARED,
    "hook_attn_out": Site("post_attention_layernorm", "out"),
    "hook_resid_mid": Site("pre_feedforward_layernorm", "in"),
    "ln2.hook_normalized": Site("pre_feedforward_layernorm", "out"),
    "hook_mlp_out": Site("post_feedforward_layernorm", "out"),
}

# OLMo 2/3 normalise sublayer *outputs* only (no pre-norms): what is added to
# the residual is the post-norm's output, and the MLP reads the raw residual, so
# `hook_resid_mid` is the MLP's input and there is no ln1/ln2 hook point.
OLMO2_SITES = {
    **{k: v for k, v in _SHARED.items() if k != "ln1.hook_normalized"},
    "hook_attn_out": Site("post_attention_layernorm", "out"),
    "hook_resid_mid": Site("mlp", "in"),
    "hook_mlp_out": Site("post_feedforward_layernorm", "out"),
}

# StarCoder 2's MLP is c_fc -> GELU -> c_proj (no gate).
STARCODER2_SITES = {
    **LLAMA_SITES,
    "mlp.hook_pre": Site("mlp.c_fc", "out", "d_mlp"),
    "mlp.hook_post": Site("mlp.c_proj", "in", "d_mlp"),
}

# Phi-3 fuses q/k/v into one qkv_proj and gate/up into one gate_up_proj, so the
# per-projection points (attn.hook_q/k/v, mlp.hook_pre) have no module boundary.
PHI3_SITES = {k: v for k, v in LLAMA_SITES.items() if k not in ("attn.hook_q", "attn.hook_k", "attn.hook_v",
                                                                "mlp.hook_pre")}

# Cohere (Command-R) runs attention and MLP in parallel on one normalised input:
# resid_post = resid_pre + attn_out + mlp_out. There is no resid_mid and no second
# norm (as TransformerLens for parallel-attention models).
COHERE_SITES = {k: v for k, v in LLAMA_SITES.items() if k not in ("hook_resid_mid", "ln2.hook_normalized")}

# Granite adds `residual_multiplier * sublayer output` to the residual (see the module docstring);
# its embeddings are multiplied by `embedding_multiplier` after hook_embed (as Gemma's sqrt(d)) and its
# logits divided by `logits_scaling`.
GRANITE_SITES = {
    **LLAMA_SITES,
    "hook_attn_out": Site("self_attn", "out", scale="residual_multiplier"),
    "hook_mlp_out": Site("mlp", "out", scale="residual_multiplier"),
}


def site_scale(block, site: Site) -> float:
    """The constant `block` multiplies `site`'s module output by before adding it (1.0 but on Granite)."""
    return float(getattr(block, site.scale)) if site.scale else 1.0


# Mixture-of-experts MLPs (mlx-lm's SwitchGLU behind a linear router). The router
# logits are the gate's output [.., n_experts]; `mlp.hook_expert_out` is each
# selected expert's output before the router's weighting, [.., k, d_model], in
# the order of the indices mlx-lm selects (mlxinterp.core.moe.selected_experts).
def _moe_sites(moe: str) -> dict:
    dense = {k: v for k, v in LLAMA_SITES.items() if k not in ("mlp.hook_pre", "mlp.hook_post")}
    return {**dense, "mlp.hook_out": Site(moe, "out"), "hook_mlp_out": Site(moe, "out"),
            "mlp.hook_router_logits": Site(f"{moe}.gate", "out", "experts"),
            "mlp.hook_expert_out": Site(f"{moe}.switch_mlp", "out", "topk_d_model")}


# Order in which the per-block hook points fire in a forward pass; also the
# order `hook_names` lists them. A family lists the subset its blocks have.
BLOCK_ORDER = (
    "hook_resid_pre", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v",
    "attn.hook_z", "attn.hook_out", "hook_attn_out", "hook_resid_mid", "ln2.hook_normalized",
    "mlp.hook_router_logits", "mlp.hook_pre", "mlp.hook_post", "mlp.hook_expert_out",
    "mlp.hook_out", "hook_mlp_out", "hook_resid_post",
)


@dataclass(frozen=True)
class ArchSpec:
    """What the hook machinery and the logit lens need to know about one family."""

    family: str
    sites: dict
    embed_scale: bool = False  # Gemma multiplies embeddings by sqrt(d_model)
    softcap_attr: str | None = None  # attribute on the top model holding the final logit cap
    # mlx-lm's gemma2 attention reshapes queries to 5-D for grouped-query
    # attention but applies a 4-D batch mask, which broadcasts the batch axis
    # against the kv-head axis (BUGFIX.md #1). Padded batches give it a 5-D mask.
    gqa_mask_5d: bool = False
    # attribute path on the top model of a factor mlx-lm multiplies the logits by (Cohere's logit_scale)
    logit_scale_attr: str | None = None
    # attribute on the top model the logits are divided by (Granite's logits_scaling)
    logit_divisor_attr: str | None = None
    # mixture of experts: how mlx-lm turns router logits into the selected experts (core/moe.py)
    router: str | None = None


ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama", LLAMA_SITES),
    "mistral": ArchSpec("llama", LLAMA_SITES),
    "qwen2": ArchSpec("llama", LLAMA_SITES),
    "qwen3": ArchSpec("llama", LLAMA_SITES),
    "gemma2": ArchSpec("gemma", GEMMA_SITES, embed_scale=True, softcap_attr="final_logit_softcapping",
                       gqa_mask_5d=True),
    "gemma3_text": ArchSpec("gemma", GEMMA_SITES, embed_scale=True),
    "gemma3": ArchSpec("gemma", GEMMA_SITES, embed_scale=True),
    # Gemma 1 is a pre-norm (llama-layout) block with scaled embeddings and a GELU MLP.
    "gemma": ArchSpec("llama", LLAMA_SITES, embed_scale=True),
    "smollm3": ArchSpec("llama", LLAMA_SITES),
    "starcoder2": ArchSpec("llama", STARCODER2_SITES),
    "phi3": ArchSpec("llama", PHI3_SITES),
    "olmo2": ArchSpec("olmo2", OLMO2_SITES),
    "olmo3": ArchSpec("olmo2", OLMO2_SITES),
    "cohere": ArchSpec("parallel", COHERE_SITES, logit_scale_attr="args.logit_scale"),
    "cohere2": ArchSpec("parallel", COHERE_SITES, logit_scale_attr="args.logit_scale"),
    "granite": ArchSpec("llama", GRANITE_SITES, logit_divisor_attr="logits_scaling"),
    "qwen3_moe": ArchSpec("llama", _moe_sites("mlp"), router="softmax_topk"),
    "mixtral": ArchSpec("llama", _moe_sites("block_sparse_moe"), router="topk_softmax"),
}


def arch_spec(model_type: str) -> ArchSpec:
    """The hook map for an mlx-lm model_type, or a clear error listing what is supported."""
    try:
        return ARCHS[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} has no hook map; supported: {', '.join(sorted(ARCHS))}",
            hint="open an issue with the mlx-lm model_type; adding one is a table entry in mlxinterp/archs.py",
        ) from None


def text_model(model):
    """mlx-lm's inner text model (the one holding embed_tokens, layers, norm)."""
    inner = getattr(model, "language_model", model)  # gemma3 multimodal wraps the text model
    return inner.model


def top_text_model(model):
    """The module whose call returns logits for text (gemma3 multimodal: language_model)."""
    return getattr(model, "language_model", model)

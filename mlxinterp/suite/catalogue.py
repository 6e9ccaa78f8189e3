"""Known mlx-community checkpoints (Gemma, Llama, Qwen; 4-bit and 8-bit) and what they need in memory.

The cross-model plan (docs/sources.md) ran its studies on seven mlx-community 4-bit checkpoints, 2B to 27B, on
a 64 GB Mac. Before downloading tens of gigabytes, a user wants to know which of
them (and their 8-bit twins) fit, with how much room left for KV cache and
captured activations. This module holds their architectures and prices them
with `mlxinterp.core.memory`'s formulas; `mlxinterp models --catalogue` prints it.

Where the numbers come from (each entry's `source` says so again):
  * architecture (layers, d_model, heads, kv heads, head_dim, d_mlp, vocab, tied
    embeddings, context): the upstream `config.json` on the Hugging Face hub
    (`text_config` for Gemma 3 4B+), as published; written down here offline
    (this machine has no hub access), except Gemma 3 270M, which is read from
    the default model's GGUF metadata on this machine (PLATFORM.md);
  * `published_params_b`: the model card's parameter count;
  * `n_params`: computed from the architecture by `loading.config_n_params`
    (norms and biases left out); tests/test_catalogue.py checks it against the
    published count (within 1 %; Gemma 3 4B+ within their vision tower) and, for
    Gemma 3 270M, against the real model (268,098,176 parameters);
  * memory: computed (mlxinterp.core.memory), never measured on these checkpoints here.
Repo names follow the cross-model plan and the mlx-community naming (`<model>-4bit`, `-8bit`,
group size 64); they were not checked against the hub from this machine.
"""
from __future__ import annotations

from dataclasses import dataclass

from mlxinterp.core import memory
from mlxinterp.core.errors import ModelSpecError, closest
from mlxinterp.core.shape import Shape

ORG = "mlx-community"
_HUB = "config.json of {base} on the Hugging Face hub, as published (recorded offline)"
_GEMMA3_MM = ("multimodal checkpoint: mlx-lm loads the text decoder (model_type gemma3, text_config) "
              "and drops the ~0.4B-parameter vision tower, which is still downloaded")


@dataclass(frozen=True)
class Architecture(Shape):
    """A published decoder: its shape as its upstream config.json gives it, and where it comes from."""

    base: str  # upstream repo, e.g. google/gemma-2-2b-it
    stem: str  # mlx-community repo name without the -4bit/-8bit suffix
    family: str
    model_type: str  # mlx-lm model_type
    tied_embeddings: bool
    max_context: int
    published_params_b: float
    in_seed: bool = False  # one of the cross-model plan's seven checkpoints
    note: str = ""
    source: str = ""

    def config(self) -> dict:
        """The fields of an mlx-lm config.json that memory estimates read."""
        return {"model_type": self.model_type, **super().config(),
                "tie_word_embeddings": self.tied_embeddings, "max_position_embeddings": self.max_context}

    def full_config(self) -> dict:
        """A complete mlx-lm config.json (norm eps, RoPE, soft-caps, windows: the family's published
        values, _FAMILY_CONFIG), enough to build the model: what `mlxinterp replica` writes."""
        extra = {k: v(self) if callable(v) else v for k, v in _FAMILY_CONFIG[self.family].items()}
        cfg = {**self.config(), **extra, "torch_dtype": "bfloat16"}
        if self.model_type == "gemma3":  # multimodal wrapper: mlx-lm reads the decoder from text_config
            text = {k: v for k, v in cfg.items() if k not in ("model_type", "torch_dtype")}
            return {"model_type": "gemma3", "vocab_size": self.vocab_size, "torch_dtype": "bfloat16",
                    "text_config": {**text, "model_type": "gemma3_text"}}
        return cfg


def _arch(base: str, stem: str, family: str, model_type: str, layers: int, d: int, heads: int, kv: int,
          hd: int, mlp: int, vocab: int, tied: bool, ctx: int, params_b: float, in_seed: bool = False,
          note: str = "", source: str | None = None) -> Architecture:
    return Architecture(n_layers=layers, d_model=d, n_heads=heads, n_kv_heads=kv, head_dim=hd, d_mlp=mlp,
                        vocab_size=vocab, base=base, stem=stem, family=family, model_type=model_type,
                        tied_embeddings=tied, max_context=ctx, published_params_b=params_b, in_seed=in_seed,
                        note=note, source=source or _HUB.format(base=base))


ARCHITECTURES: tuple[Architecture, ...] = (
    # Gemma 2 (the cross-model plan: 2B, 9B, 27B)
    _arch("google/gemma-2-2b-it", "gemma-2-2b-it", "gemma2", "gemma2", 26, 2304, 8, 4, 256, 9216, 256000,
          True, 8192, 2.61, in_seed=True),
    _arch("google/gemma-2-9b-it", "gemma-2-9b-it", "gemma2", "gemma2", 42, 3584, 16, 8, 256, 14336, 256000,
          True, 8192, 9.24, in_seed=True),
    _arch("google/gemma-2-27b-it", "gemma-2-27b-it", "gemma2", "gemma2", 46, 4608, 32, 16, 128, 36864, 256000,
          True, 8192, 27.2, in_seed=True),
    # Llama 3.x (the cross-model plan: 3B, 8B)
    _arch("meta-llama/Llama-3.2-3B-Instruct", "Llama-3.2-3B-Instruct", "llama3", "llama", 28, 3072, 24, 8, 128,
          8192, 128256, True, 131072, 3.21, in_seed=True),
    _arch("meta-llama/Llama-3.1-8B-Instruct", "Llama-3.1-8B-Instruct", "llama3", "llama", 32, 4096, 32, 8, 128,
          14336, 128256, False, 131072, 8.03, in_seed=True,
          note="name as in the cross-model plan; mlx-community also publishes it as Meta-Llama-3.1-8B-Instruct-4bit/-8bit"),
    # Qwen 2.5 (the cross-model plan: 7B, 14B)
    _arch("Qwen/Qwen2.5-7B-Instruct", "Qwen2.5-7B-Instruct", "qwen2.5", "qwen2", 28, 3584, 28, 4, 128, 18944,
          152064, False, 32768, 7.62, in_seed=True),
    _arch("Qwen/Qwen2.5-14B-Instruct", "Qwen2.5-14B-Instruct", "qwen2.5", "qwen2", 48, 5120, 40, 8, 128, 13824,
          152064, False, 32768, 14.7, in_seed=True),
    # Gemma 3
    _arch("google/gemma-3-270m-it", "gemma-3-270m-it", "gemma3", "gemma3_text", 18, 640, 4, 1, 256, 2048, 262144,
          True, 32768, 0.268,
          note="same architecture as the default model (Gemma 3 270M base)",
          source="GGUF metadata of the default model, read on this machine (PLATFORM.md); "
                 "parameter count measured on the loaded model (268,098,176)"),
    _arch("google/gemma-3-1b-it", "gemma-3-1b-it", "gemma3", "gemma3_text", 26, 1152, 4, 1, 256, 6912, 262144,
          True, 32768, 1.0),
    _arch("google/gemma-3-4b-it", "gemma-3-4b-it", "gemma3", "gemma3", 34, 2560, 8, 4, 256, 10240, 262208,
          True, 131072, 4.3, note=_GEMMA3_MM),
    _arch("google/gemma-3-12b-it", "gemma-3-12b-it", "gemma3", "gemma3", 48, 3840, 16, 8, 256, 15360, 262208,
          True, 131072, 12.2, note=_GEMMA3_MM),
    _arch("google/gemma-3-27b-it", "gemma-3-27b-it", "gemma3", "gemma3", 62, 5376, 32, 16, 128, 21504, 262208,
          True, 131072, 27.4, note=_GEMMA3_MM),
    # Qwen 3
    _arch("Qwen/Qwen3-0.6B", "Qwen3-0.6B", "qwen3", "qwen3", 28, 1024, 16, 8, 128, 3072, 151936, True, 40960, 0.6),
    _arch("Qwen/Qwen3-4B", "Qwen3-4B", "qwen3", "qwen3", 36, 2560, 32, 8, 128, 9728, 151936, True, 40960, 4.0),
    _arch("Qwen/Qwen3-8B", "Qwen3-8B", "qwen3", "qwen3", 36, 4096, 32, 8, 128, 12288, 151936, False, 40960, 8.2),
    _arch("Qwen/Qwen3-14B", "Qwen3-14B", "qwen3", "qwen3", 40, 5120, 40, 8, 128, 17408, 151936, False, 40960, 14.8),
    _arch("Qwen/Qwen3-32B", "Qwen3-32B", "qwen3", "qwen3", 64, 5120, 64, 8, 128, 25600, 151936, False, 40960, 32.8),
)

# Config fields beyond the shape, from each family's published config.json (recorded offline, like the
# shapes above). Values that differ within a family are functions of the entry.
_FAMILY_CONFIG: dict[str, dict] = {
    "gemma2": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "attn_logit_softcapping": 50.0,
               "final_logit_softcapping": 30.0, "sliding_window": 4096,
               # 2B and 9B scale queries by head_dim, 27B by d_model / n_heads (= 144)
               "query_pre_attn_scalar": lambda a: a.head_dim if a.d_model < 4000 else a.d_model // a.n_heads},
    "llama3": {"rms_norm_eps": 1e-5, "rope_theta": 500000.0,
               "rope_scaling": lambda a: {"rope_type": "llama3", "factor": 32.0 if a.n_layers == 28 else 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 8192}},
    "qwen2.5": {"rms_norm_eps": 1e-6, "rope_theta": 1000000.0},
    "qwen3": {"rms_norm_eps": 1e-6, "rope_theta": 1000000.0},
    "gemma3": {"rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
               "sliding_window_pattern": 6, "sliding_window": lambda a: 512 if a.d_model < 2000 else 1024,
               "query_pre_attn_scalar": lambda a: 168 if a.d_model == 5376 else 256},
}

BITS = (4, 8)
GROUP_SIZE = 64  # mlx-community's (and mlx_lm.convert's) default


@dataclass(frozen=True)
class Checkpoint:
    """One mlx-community checkpoint: an architecture stored at `bits` with group size `group_size`."""

    arch: Architecture
    bits: int
    group_size: int = GROUP_SIZE

    @property
    def repo(self) -> str:
        return f"{ORG}/{self.arch.stem}-{self.bits}bit"

    @property
    def n_params(self) -> int:
        return memory.n_params(self.arch.config())

    def config(self) -> dict:
        """The mlx-lm config.json fields memory estimates need, with this checkpoint's quantization."""
        return {**self.arch.config(), "quantization": {"bits": self.bits, "group_size": self.group_size}}

    def full_config(self) -> dict:
        """A complete mlx-lm config.json for this checkpoint (what `mlxinterp replica` writes)."""
        return {**self.arch.full_config(), "quantization": {"bits": self.bits, "group_size": self.group_size}}

    def estimate(self, context: int = memory.SUITE_CONTEXT, batch: int = 1,
                 activations: memory.ActivationPlan | None = None, dtype: str | None = "native") -> memory.Estimate:
        """Memory to run it: weights (as stored by default) + KV cache + captured activations."""
        return memory.estimate(self.config(), dtype=dtype, context=context, batch=batch, activations=activations)


CHECKPOINTS: tuple[Checkpoint, ...] = tuple(
    sorted((Checkpoint(a, b) for a in ARCHITECTURES for b in BITS), key=lambda c: (c.n_params, c.bits)))


def find(name: str) -> Checkpoint | None:
    """The checkpoint called `name` ('mlx-community/gemma-2-2b-it-4bit', or without the org), or None."""
    key = name.strip().lower()
    key = key if "/" in key else f"{ORG.lower()}/{key}"
    return next((c for c in CHECKPOINTS if c.repo.lower() == key), None)


def get(name: str) -> Checkpoint:
    """Like `find`, but an unknown name is an error that suggests the nearest known one."""
    found = find(name)
    if found is None:
        names = [c.repo if "/" in name else c.repo.split("/", 1)[1] for c in CHECKPOINTS]
        near = closest(name, names)
        raise ModelSpecError(f"{name!r} is not in the catalogue" + (f"; did you mean {near}?" if near else ""),
                             hint="`mlxinterp models --catalogue` lists the known checkpoints")
    return found


def default_architecture() -> Architecture:
    """Gemma 3 270M: the default model's architecture (it is the base model, not the -it one)."""
    return next(a for a in ARCHITECTURES if a.base == "google/gemma-3-270m-it")


def rows(memory_limit: int, context: int = memory.SUITE_CONTEXT, batch: int = memory.SUITE_BATCH,
         activations: memory.ActivationPlan | None = None) -> list[dict]:
    """One row per checkpoint for `mlxinterp models --catalogue` (and its --json); KV cache for
    `batch` sequences of `context` tokens, as the suite's planner budgets it."""
    acts = activations or memory.ActivationPlan()
    out = []
    for c in CHECKPOINTS:
        a = c.arch
        stored = c.estimate(context=context, batch=batch, activations=acts, dtype="native")
        f32 = c.estimate(context=context, batch=batch, activations=acts, dtype="float32")
        # what `load_model` would do on this machine with dtype=None (memory.choose_plan): float32 on a
        # CPU while it fits `memory_limit`, else the stored quantization
        plan, policy_note = memory.choose_plan(c.config(), limit=memory_limit)
        here = f32 if plan.dtype == "float32" else memory.estimate(
            c.config(), None, context=context, batch=batch, activations=acts, limit=memory_limit)
        out.append({
            "repo": c.repo, "family": a.family, "model_type": a.model_type, "bits": c.bits,
            "group_size": c.group_size, "in_seed_004": a.in_seed, "n_params": c.n_params,
            "published_params_b": a.published_params_b, "n_layers": a.n_layers, "d_model": a.d_model,
            "n_heads": a.n_heads, "n_kv_heads": a.n_kv_heads, "head_dim": a.head_dim, "d_mlp": a.d_mlp,
            "vocab_size": a.vocab_size, "tied_embeddings": a.tied_embeddings, "max_context": a.max_context,
            "memory_as_stored": stored.to_dict(), "memory_float32": f32.to_dict(),
            # What the suite refuses on is the model (weights + margin + KV cache); captures that do not
            # fit beside it spill to disk (memory.RowStore), so they decide RAM vs disk, not fit.
            "fits_as_stored": stored.model <= memory_limit, "fits_float32": f32.model <= memory_limit,
            "runs_here_as": here.dtype, "memory_here": here.to_dict(), "fits_here": here.model <= memory_limit,
            "captures_in_ram_here": here.total <= memory_limit,
            "policy_note": policy_note,
            "captures_in_ram_as_stored": stored.total <= memory_limit,
            "note": a.note, "source": {"architecture": a.source, "published_params_b": f"model card of {a.base}",
                                       "n_params": "computed from the architecture (loading.config_n_params)",
                                       "memory": "computed (mlxinterp.core.memory.estimate)"},
        })
    return out

"""How much memory a model and an experiment need, and what to do when it is too much.

Three parts, each a formula (bytes):

  weights      n_params x bytes per parameter at the compute dtype:
               float32 4, float16/bfloat16 2; MLX-quantized b bits with group size g:
               b/8 (packed) + 4/g (one 16-bit scale and one 16-bit bias per group),
               i.e. 4.5 bits/param at 4-bit g64 and 8.5 at 8-bit g64. Norms and biases
               are left out of n_params (< 0.1 %). Plus loading's margin (10 % + 256 MB)
               for buffers, the tokenizer and temporaries (loading.estimate_memory).
  KV cache     2 (K and V) x layers x kv_heads x head_dim x context x batch x bytes of the
               compute dtype (2 when quantized: MLX keeps activations in 16 bits). An upper
               bound: Gemma's sliding-window layers are counted at the full context.
  activations  prompts x kept positions x sum of the captured widths per layer x layers x 4
               (captures are stored as float32, see directions.collect).

`plan_models` orders a suite's models smallest first (results arrive early) and
`check_fit` refuses, before anything is loaded, a model whose weights + KV cache
exceed the machine's memory (platform.total_memory_bytes; MLXINTERP_MEMORY_LIMIT
fakes a smaller machine). Captured activations are not refused: `RowStore` keeps
them in RAM while they fit the budget and spills them to .npy memmaps otherwise;
the suite sets the budget (memory left beside the model) and the spill directory
per experiment with `spill_scope`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


from mlxinterp.core.errors import MemoryBudgetError, MlxInterpError
from mlxinterp.core.platform import total_memory_bytes
from mlxinterp.core.specs import DtypePlan, Variant, plan_dtype

SUITE_CONTEXT = 1024  # tokens per sequence the suite's estimate allows for (its prompts are < 200)
SUITE_BATCH = 8  # sequences per forward (directions.collect's default batch)
ACTIVATION_BYTES = 4  # captures are float32
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


# ------------------------------------------------------------------ formulas


def text_config(cfg: dict) -> dict:
    return {**cfg, **cfg["text_config"]} if isinstance(cfg.get("text_config"), dict) else cfg


def config_n_params(cfg: dict) -> int:
    """Parameter count implied by a decoder config (norms and biases ignored)."""
    c = text_config(cfg)
    d, layers, mlp = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"]
    heads = c["num_attention_heads"]
    kv, hd = c.get("num_key_value_heads", heads), c.get("head_dim") or d // heads
    embed = c["vocab_size"] * d * (1 if c.get("tie_word_embeddings", True) else 2)
    return embed + layers * (2 * d * hd * (heads + kv) + 3 * d * mlp)


def bytes_per_param(cfg: dict, plan: DtypePlan) -> float:
    if plan.quant and plan.dequantize:  # quantized on load, then computed with float weights
        return DTYPE_BYTES[plan.dtype or "float32"]
    q = {"bits": plan.quant[0], "group_size": plan.quant[1]} if plan.quant else None
    if q is None and plan.dtype:
        return DTYPE_BYTES[plan.dtype]
    q = q or cfg.get("quantization")
    if q:
        return q["bits"] / 8 + 4 / q["group_size"]  # packed weights + scales and biases
    return DTYPE_BYTES.get(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16", 2)


def with_margin(weight_bytes: float) -> int:
    return int(weight_bytes * 1.1) + 256 * 1024**2


def estimate_memory(info_or_config: Any, dtype: str | None = None) -> int:
    """Bytes to hold the weights at the compute dtype (or quantized), plus a margin for activations.

    A config is assumed loaded the way load_model would (dtype policy applied).
    """
    if not isinstance(info_or_config, dict):
        info = info_or_config
        q = info.quantization if (info.quantization or {}).get("compute") != "dequantized" else None
        per = q["bits"] / 8 + 4 / q["group_size"] if q else DTYPE_BYTES.get(dtype or info.dtype, 4)
        return with_margin(info.n_params * per)
    cfg = info_or_config
    return with_margin(config_n_params(cfg) * bytes_per_param(cfg, choose_plan(cfg, dtype)[0]))


def choose_plan(cfg: dict, dtype: str | None = None, variant: Variant | None = None,
                limit: int | None = None) -> tuple[DtypePlan, str | None]:
    """The load plan, and a note when the automatic choice had to change.

    plan_dtype computes in float32 on a CPU (MLX's CPU kernels for bfloat16 and
    quantized matmuls are slower). A model whose float32 weights (+ margin) would
    not fit this machine is instead kept as stored, quantized with MLX's native
    kernels: slower per token, but it runs (a 4-bit 9B model is ~5 GB as stored,
    ~37 GB as float32). An explicit dtype or variant is always obeyed.
    """
    plan = plan_dtype(dtype, variant)
    if dtype is not None or variant is not None or plan.dtype != "float32" or not text_config(cfg).get("quantization"):
        return plan, None  # only quantized checkpoints: a float one too big for float32 is refused (check_memory)
    have = total_memory_bytes() if limit is None else limit
    try:
        need = with_margin(config_n_params(cfg) * 4)
    except (KeyError, TypeError):
        return plan, None
    if need <= have:
        return plan, None
    stored = DtypePlan(None)
    label = _weights_label(cfg, stored)
    return stored, (f"float32 would need {gb(need)} (this machine: {gb(have)}), so the weights stay as stored "
                    f"({label}, MLX's native quantized kernels, float32 scales and activations); "
                    "--dtype float32 forces float32")


def quantized_float32_bytes(cfg: dict) -> float:
    """Bytes per parameter of a quantized checkpoint kept quantized with float32 scales and biases
    (the CPU fallback of choose_plan): bits/8 + 8/group_size, e.g. 5 bits at 4-bit g64."""
    q = text_config(cfg)["quantization"]
    return q["bits"] / 8 + 8 / q["group_size"]


def check_memory(cfg: dict, plan: DtypePlan, spec: str) -> None:
    try:
        need = with_margin(config_n_params(cfg) * bytes_per_param(cfg, plan))
    except (KeyError, TypeError):  # an unusual config: let mlx-lm judge it
        return
    have = total_memory_bytes()
    if need > have:
        raise MemoryBudgetError(
            f"model {spec!r} needs about {need / 1e9:.1f} GB at {plan.dtype or 'its stored dtype'}, "
            f"this machine has {have / 1e9:.1f} GB",
            hint="try a quantized variant with dtype='native' (SPEC@4bit --dtype native; on a CPU SPEC@4bit alone "
                 "computes with float32 weights), or dtype='native' for a quantized checkpoint")


def n_params(cfg: dict) -> int:
    """Parameters implied by an mlx-lm config (norms and biases left out)."""
    return config_n_params(cfg)


def compute_bytes(cfg: dict, dtype: str | None = None, variant: Variant | None = None) -> int:
    """Bytes per activation/KV element under the load policy: the float dtype, or 2 when quantized
    (4 in the CPU fallback, which computes in float32)."""
    plan, fallback = choose_plan(cfg, dtype, variant)
    if fallback:
        return 4
    if plan.dtype:
        return DTYPE_BYTES[plan.dtype]
    stored = cfg.get("torch_dtype") or cfg.get("dtype")
    return DTYPE_BYTES.get(stored, 2) if not cfg.get("quantization") else 2


def kv_cache_bytes(cfg: dict, context: int, batch: int = 1, element_bytes: int = 2) -> int:
    """2 x layers x kv_heads x head_dim x context x batch x element_bytes (an upper bound, see module doc)."""
    c = text_config(cfg)
    heads = c["num_attention_heads"]
    kv, hd = c.get("num_key_value_heads") or heads, c.get("head_dim") or c["hidden_size"] // heads
    return 2 * c["num_hidden_layers"] * kv * hd * int(context) * int(batch) * element_bytes


WIDTHS = {"resid": "hidden_size", "mlp": "intermediate_size"}


@dataclass(frozen=True)
class ActivationPlan:
    """What an experiment captures: `prompts` x `positions` kept x the `hooks` of every layer, float32.

    hooks: per-layer hook kinds, "resid" (d_model wide: resid_pre/mid/post, attn_out,
    mlp_out) or "mlp" (d_mlp wide: neurons). The default is a capture-all-positions
    study of the residual stream: 256 prompts x 64 positions x every layer.
    """

    prompts: int = 256
    positions: int = 64
    hooks: tuple[str, ...] = ("resid",)

    def __post_init__(self) -> None:
        bad = [h for h in self.hooks if h not in WIDTHS]
        if bad or self.prompts < 0 or self.positions < 0:
            raise MlxInterpError(f"bad activation plan {self}: hooks must be in {sorted(WIDTHS)}, "
                                 "prompts and positions >= 0")

    def bytes(self, cfg: dict) -> int:
        c = text_config(cfg)
        width = sum(int(c[WIDTHS[h]]) for h in self.hooks)
        return self.prompts * self.positions * c["num_hidden_layers"] * width * ACTIVATION_BYTES

    def describe(self) -> str:
        return f"{'+'.join(self.hooks)} at every layer, {self.prompts} prompts x {self.positions} positions, float32"


@dataclass(frozen=True)
class Estimate:
    """Bytes by part; `total` is what must fit."""

    weights: int
    margin: int
    kv_cache: int
    activations: int
    dtype: str  # what the weights are held as: float32 | bfloat16 | 4bit-g64 ...

    @property
    def model(self) -> int:
        """What must fit for the model to run at all: weights + margin + KV cache."""
        return self.weights + self.margin + self.kv_cache

    @property
    def total(self) -> int:
        return self.model + self.activations

    def to_dict(self) -> dict:
        return {**asdict(self), "model": self.model, "total": self.total}

    def describe(self) -> str:
        parts = [f"weights {gb(self.weights)} ({self.dtype})", f"KV cache {gb(self.kv_cache)}",
                 f"margin {gb(self.margin)}"]
        if self.activations:
            parts.append(f"activations {gb(self.activations)}")
        return f"{gb(self.total)} = " + " + ".join(parts)


def gb(n: int | float) -> str:
    return f"{n / 1e9:.1f} GB"


def human(n: int | float) -> str:
    """Bytes in the largest unit that keeps them readable (GB, MB, KB, bytes)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def _weights_label(cfg: dict, plan: Any) -> str:
    q = {"bits": plan.quant[0], "group_size": plan.quant[1]} if plan.quant else None
    if q is None and plan.dtype:
        return plan.dtype
    q = q or cfg.get("quantization")
    return f"{q['bits']}bit-g{q['group_size']}" if q else (cfg.get("torch_dtype") or "bfloat16")


def estimate(cfg: dict, dtype: str | None = None, variant: Variant | None = None,
             context: int = SUITE_CONTEXT, batch: int = 1, activations: ActivationPlan | None = None,
             limit: int | None = None) -> Estimate:
    """Weights + margin (as loading.estimate_memory) + KV cache + captured activations, for a config
    loaded the way load_model would load it with this dtype and variant."""
    plan, fallback = choose_plan(cfg, dtype, variant, limit)
    per = quantized_float32_bytes(cfg) if fallback else bytes_per_param(cfg, plan)
    weights = int(n_params(cfg) * per)
    margin = with_margin(weights) - weights
    kv = kv_cache_bytes(cfg, context, batch, 4 if fallback else compute_bytes(cfg, dtype, variant))
    acts = activations.bytes(cfg) if activations else 0
    return Estimate(weights, margin, kv, acts, _weights_label(cfg, plan) + (" (float32 scales)" if fallback else ""))


def model_need(info: Any) -> int:
    """Weights + margin + the suite's KV cache for a loaded model (from its ModelInfo)."""
    kv_bytes = 2 if info.quantization else DTYPE_BYTES.get(info.dtype, 4)
    cfg = info.config()
    return estimate_memory(info) + kv_cache_bytes(cfg, SUITE_CONTEXT, SUITE_BATCH, kv_bytes)


def activation_budget(info: Any) -> int:
    """Memory left for captured activations beside a loaded model (may be <= 0: then everything spills)."""
    return total_memory_bytes() - model_need(info)




# ------------------------------------------------------------------ peak of one workload
# What a process holds besides the model's arrays: Python, MLX, mlx-lm, transformers and a
# tokenizer. Measured (bench/replicas.py, Llama-3.2-3B replica): 117 MB resident before loading
# + 67 MB of non-MLX growth during the load, with the replica's byte-level tokenizer; a real
# checkpoint's tokenizer adds its own size. Was 600 MB (a guess): +20 % on the 3B's peak.
RUNTIME_BYTES = 200 * 1024**2
WORKLOADS = ("none", "all", "sweep")
KV_STEP = 256  # mlx_lm.models.cache.KVCache.step: keys and values are allocated this many tokens at a time


@dataclass(frozen=True)
class Workload:
    """One forward of `batch` x `tokens`: plain ("none"), capturing every hook point ("all"), or a
    patch sweep's batch ("sweep": one hook per layer captured, rows restart from a KV-cached prefix)."""

    tokens: int = 128
    batch: int = 1
    capture: str = "none"

    def __post_init__(self) -> None:
        if self.capture not in WORKLOADS or self.tokens < 1 or self.batch < 1:
            raise MlxInterpError(f"bad workload {self}: capture must be one of {WORKLOADS}, tokens and batch >= 1")


def hook_widths(cfg: dict) -> tuple[int, int]:
    """(elements per position over every per-block hook point of one layer, over the model-level ones)."""
    from mlxinterp.core.archs import BLOCK_ORDER, arch_spec

    c = text_config(cfg)
    heads = c["num_attention_heads"]
    kv, hd = c.get("num_key_value_heads") or heads, c.get("head_dim") or c["hidden_size"] // heads
    k = c.get("num_experts_per_tok") or 0
    width = {"d_model": c["hidden_size"], "d_mlp": c["intermediate_size"], "heads": heads * hd, "kv_heads": kv * hd,
             "experts": c.get("num_experts") or c.get("num_local_experts") or 0, "topk_d_model": k * c["hidden_size"]}
    sites = arch_spec(cfg["model_type"]).sites
    per_layer = sum(width[sites[s].kind] for s in BLOCK_ORDER if s in sites)
    return per_layer, 2 * c["hidden_size"] + c["vocab_size"]  # hook_embed, ln_final, hook_logits


def predict_peak(cfg: dict, work: Workload, dtype: str | None = None, variant: Variant | None = None,
                 float32_scales: bool = False) -> Estimate:
    """Peak memory of one workload: weights + runtime + the forward's working set + KV cache + captures.

    weights     as `estimate` (n_params x bytes per parameter of the load plan)
    margin      RUNTIME_BYTES + the largest transient arrays of a forward: the logits
                (batch x tokens x vocab, twice: the unembedding's output and one
                elementwise op on it, e.g. Gemma 2's soft-cap) and one layer's MLP
                (batch x tokens x 3 d_mlp), in the compute dtype
    kv_cache    only when a cache is kept (the sweep: its prefix and the patched rows, each
                rounded up to mlx-lm's 256-token allocation step); a forward without a
                cache keeps no K/V beyond the attention call
    activations captures at the compute dtype: every hook point ("all"), or for a
                sweep one d_model hook per layer of the clean and corrupt runs
    """
    plan, fallback = choose_plan(cfg, dtype, variant)
    float32_scales = float32_scales or fallback is not None
    c = text_config(cfg)
    el = 4 if float32_scales else compute_bytes(cfg, dtype, variant)
    B, T = work.batch, work.tokens
    weights = int(n_params(cfg) * (quantized_float32_bytes(cfg) if float32_scales else bytes_per_param(cfg, plan)))
    read = 1 if work.capture == "sweep" else T  # a sweep unembeds only the position its metric reads
    transient = el * B * (2 * read * c["vocab_size"] + 3 * T * c["intermediate_size"])
    # mlx-lm's KVCache grows in steps of KV_STEP tokens, per row: the sweep's prefix cache (1 row)
    # and the patched rows' caches (B) each hold at least one step, however short the prompt
    kv = kv_cache_bytes(cfg, -(-T // KV_STEP) * KV_STEP, B + 1, el) if work.capture == "sweep" else 0
    if work.capture == "all":
        per_layer, model_level = hook_widths(cfg)
        acts = el * B * T * (per_layer * c["num_hidden_layers"] + model_level)
    elif work.capture == "sweep":
        acts = el * 2 * T * c["hidden_size"] * c["num_hidden_layers"]
    else:
        acts = 0
    label = _weights_label(cfg, plan) + (" (float32 scales)" if float32_scales else "")
    return Estimate(weights, RUNTIME_BYTES + transient, kv, acts, label)

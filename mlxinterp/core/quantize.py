"""Precision maps: which modules of a model are MLX-quantized, at what bits and group size.

A precision map names modules the way hook points do, so a reader can go from a
hook name to the weights behind it:

    embed                    the token embedding (and the unembedding when tied)
    unembed                  a separate lm_head
    blocks.{i}               every weight in block i
    blocks.{i}.attn          its attention (mlx-lm's self_attn), blocks.{i}.attn.q_proj one projection
    blocks.{i}.mlp           its MLP (mlx-lm's mlp or MoE module), blocks.{i}.mlp.down_proj one projection
    blocks.*.mlp             '*' stands for every layer
    default                  everything not named otherwise

and gives each "float" (keep the loaded float weights) or an MLX quantization
("4bit", "8bit", "4bit-g32", ...; group size 64 unless given). The most specific
name wins: more dotted parts first, then a number over '*'. So
{"default": "4bit", "blocks.9.attn": "float"} is 4-bit everywhere except block 9's
attention, and {"blocks.*.mlp": "8bit"} quantizes only the MLPs.

Quantizing goes through mlx-lm's own quantize_model (mlx.nn.quantize with a
class predicate), so a uniform map gives exactly mlx-lm's quantized model.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from mlxinterp.core.archs import arch_spec, text_model, top_text_model
from mlxinterp.core.errors import ModelSpecError
from mlxinterp.core.specs import ALLOWED_VARIANTS, parse_variant

FLOAT = "float"
_NAME_RE = re.compile(r"^(default|embed|unembed|blocks\.(\d+|\*)(\.(attn|mlp)(\.[A-Za-z_][\w.]*)?)?)$")

Quant = tuple[int, int] | None  # (bits, group_size), None = float


def parse_precision(text: str) -> Quant:
    """'float' -> None; '4bit', '8bit-g32', ... -> (bits, group_size)."""
    if str(text).strip().lower() in (FLOAT, "f32", "float32"):
        return None
    v = parse_variant(str(text).strip())
    if v.bits is None:
        raise ModelSpecError(f"precision {text!r} is a float cast, not a quantization",
                             hint=f"use 'float' or one of {', '.join(a for a in ALLOWED_VARIANTS if 'bit' in a)}")
    return v.bits, v.group_size


def quant_name(q: Quant) -> str:
    return FLOAT if q is None else f"{q[0]}bit-g{q[1]}"


@dataclass(frozen=True)
class PrecisionMap:
    """Module name pattern -> precision (see the module docstring); `default` covers the rest."""

    rules: tuple[tuple[str, Quant], ...]
    default: Quant = None

    @classmethod
    def parse(cls, mapping: Mapping[str, str], default: Quant = None) -> PrecisionMap:
        """Check every name and precision; `default` (e.g. from a '@4bit' variant) unless the map sets one."""
        rules = []
        for name, text in mapping.items():
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise ModelSpecError(
                    f"precision map: unknown module name {name!r}",
                    hint="use default, embed, unembed, blocks.N, blocks.N.attn, blocks.N.mlp, "
                         "blocks.N.attn.q_proj (mlx-lm's projection name), with '*' for every layer")
            q = parse_precision(text)
            if name == "default":
                if default is not None and q != default:
                    raise ModelSpecError(f"precision map default {text!r} contradicts the variant "
                                         f"@{quant_name(default)}", hint="give one of them")
                default = q
            else:
                rules.append((name, q))
        return cls(tuple(sorted(rules)), default)

    @property
    def uniform(self) -> bool:
        return not self.rules

    def lookup(self, name: str) -> Quant:
        """The precision of the module called `name` (a hook-style module name)."""
        best, best_key = self.default, (-1, 0)
        parts = name.split(".")
        for pattern, q in self.rules:
            p = pattern.split(".")
            if len(p) <= len(parts) and all(a in (b, "*") for a, b in zip(p, parts)):
                key = (len(p), "*" not in p)
                if key > best_key:
                    best, best_key = q, key
        return best

    def to_dict(self) -> dict:
        return {"default": quant_name(self.default), **{k: quant_name(q) for k, q in self.rules}}

    def digest(self) -> str:
        """A short content hash: mixed-precision variants get their own model slug."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]

    def group_sizes(self) -> set[int]:
        return {q[1] for q in [self.default, *(q for _, q in self.rules)] if q is not None}


def module_names(model, arch: str) -> dict[int, str]:
    """id(module) -> hook-style name for the embedding, lm_head and every submodule of each block's
    attention and MLP (where mlx-lm keeps them is read from the hook table, core/archs.py)."""
    sites = arch_spec(arch).sites
    inner = text_model(model)
    names = {id(inner.embed_tokens): "embed"}
    head = getattr(top_text_model(model), "lm_head", None)
    if head is not None:
        names[id(head)] = "unembed"
    for i, block in enumerate(inner.layers):
        for sub in ("attn", "mlp"):
            module = block
            for part in sites[f"{sub}.hook_out"].path.split("."):
                module = getattr(module, part)
            for path, m in module.named_modules():
                names[id(m)] = f"blocks.{i}.{sub}" + (f".{path}" if path else "")
        for path, m in block.named_modules():
            names.setdefault(id(m), f"blocks.{i}" + (f".{path}" if path else ""))
    return names


def quantizable(module, group_size: int) -> bool:
    """mlx-lm's rule: a layer with to_quantized whose input width the group size divides."""
    return hasattr(module, "to_quantized") and module.weight.shape[-1] % group_size == 0


def quantize_by_map(model, cfg: dict, arch: str, pmap: PrecisionMap):
    """Quantize `model` in place as `pmap` says, with mlx-lm's quantize_model; returns the model.

    A uniform map is exactly mlx-lm's quantize_model(bits, group_size); a mixed one
    passes it a predicate giving each layer its own precision (or none).
    """
    if pmap.uniform:
        return model if pmap.default is None else _quantize(model, cfg, *pmap.default)
    names = module_names(model, arch)
    def predicate(path, module):
        q = pmap.lookup(names.get(id(module), path))
        if q is None or not quantizable(module, q[1]):
            return False
        rule = own_precision(model, path, module)
        return rule if rule is not None else {"bits": q[0], "group_size": q[1], "mode": "affine"}

    if not pmap.group_sizes():  # every rule says float
        return model
    # quantize_model first checks divisibility by its own group size: give it the smallest in the map
    return _quantize(model, cfg, 4, min(pmap.group_sizes()), predicate)


def own_precision(model, path: str, module) -> dict | bool | None:
    """What the mlx-lm model's own `quant_predicate` says of a layer whenever it is quantized: False (keep it
    float, e.g. some routers), a dict (a fixed precision: Qwen3-MoE's router and Granite's o_proj, down_proj
    and lm_head at 8 bits), or None (no rule). mlx-lm's uniform quantization obeys it; so do precision maps and
    precision patching, so that their "4-bit" is the same model as `@4bit`."""
    own = getattr(model, "quant_predicate", None)
    if own is None:
        return None
    rule = own(path, module)
    return rule if rule is False or isinstance(rule, dict) else None


def _quantize(model, cfg: dict, bits: int, group_size: int, predicate=None):
    import contextlib
    import io

    from mlx_lm.utils import quantize_model

    cfg = {k: v for k, v in cfg.items() if k not in ("quantization", "quantization_config")}
    with contextlib.redirect_stdout(io.StringIO()):  # quantize_model prints bits/weight
        model, _ = quantize_model(model, cfg, group_size=group_size, bits=bits, quant_predicate=predicate)
    return model


def dequantize(model):
    """Every quantized layer back to a float layer holding dequantize(quantize(w)) (mlx-lm's dequantize_model)."""
    from mlx_lm.utils import dequantize_model

    return dequantize_model(model)

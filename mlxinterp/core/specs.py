"""Model specs: 'default', a directory, an HF repo id or a .gguf file, with an optional '@variant'
(a float dtype or MLX quantization), and the dtype policy that decides how weights are computed."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mlxinterp.core.errors import ModelSpecError, closest
from mlxinterp.core.platform import default_device

DEFAULT_SPEC = "default"
DTYPES = ("native", "float32", "float16", "bfloat16")
_FLOAT_VARIANTS = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
_QUANT_BITS, _GROUP_SIZES, _DEFAULT_GROUP = (4, 8), (32, 64, 128), 64
ALLOWED_VARIANTS = (*_FLOAT_VARIANTS, "4bit", "8bit", "4bit-g32", "8bit-g32", "4bit-g128", "8bit-g128")
REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Variant:
    """A parsed '@...' suffix: a float dtype, or MLX quantization bits + group size."""

    name: str
    dtype: str | None = None
    bits: int | None = None
    group_size: int | None = None


@dataclass
class _Plan:
    """What to do to the weights after loading: cast to `dtype` (None keeps), then quantize."""

    dtype: str | None
    quant: tuple[int, int] | None = None


@dataclass
class DtypePlan:
    """What to do to the weights after loading: cast to `dtype` (None keeps), then quantize.

    `dequantize`: weights quantized on load are expanded back to float layers holding
    dequantize(quantize(w)), so every matmul uses exactly the quantized values with
    float kernels (MLX's CPU quantized matmul is ~7x slower than float32 with OpenBLAS).
    """

    dtype: str | None
    quant: tuple[int, int] | None = None
    dequantize: bool = False


def parse_spec(spec: str | Path) -> tuple[str, Variant | None]:
    """Split 'base@variant'. A '@' inside an existing path is part of the path."""
    text = str(spec).strip()
    if not text:
        raise ModelSpecError("empty model spec", hint="use 'default', a model directory, a .gguf file or org/name")
    base, sep, suffix = text.rpartition("@")
    if not sep or "/" in suffix or Path(text).exists():
        return text, None
    return base, parse_variant(suffix)


def parse_variant(suffix: str) -> Variant:
    s = suffix.lower()
    if s in _FLOAT_VARIANTS:
        return Variant(s, dtype=_FLOAT_VARIANTS[s])
    m = re.fullmatch(r"(\d+)bit(?:-g(\d+))?", s)
    if m and int(m[1]) in _QUANT_BITS and int(m[2] or _DEFAULT_GROUP) in _GROUP_SIZES:
        bits, gs = int(m[1]), int(m[2] or _DEFAULT_GROUP)
        return Variant(f"{bits}bit-g{gs}", bits=bits, group_size=gs)
    near = closest(s, ALLOWED_VARIANTS)
    raise ModelSpecError(
        f"unknown model variant '@{suffix}'; allowed: {', '.join('@' + v for v in ALLOWED_VARIANTS)}",
        hint=f"did you mean {near}?" if near else "group sizes 32, 64, 128 combine with 4bit or 8bit",
    )


def slugify(text: str) -> str:
    """A filesystem-safe name (results directories are named after it)."""
    return re.sub(r"[^A-Za-z0-9._@+-]+", "-", text).strip("-.") or "model"


# ---------------------------------------------------------------- resolving


def plan_dtype(dtype: str | None, variant: Variant | None = None, device: str | None = None) -> DtypePlan:
    """Decide the compute dtype and quantization (see load_model's docstring)."""
    if dtype is not None and dtype not in DTYPES:
        raise ModelSpecError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)} or None (automatic)")
    cpu = (device or default_device()) == "cpu"
    explicit = None if dtype in (None, "native") else dtype
    if variant and variant.dtype:
        if explicit and explicit != variant.dtype:
            raise ModelSpecError(f"variant @{variant.name} asks for {variant.dtype} but dtype={dtype!r}",
                                 hint="give one of them")
        return DtypePlan(variant.dtype)
    auto_float = "float32" if cpu and dtype is None else None
    quant = (variant.bits, variant.group_size) if variant else None
    # automatic on a CPU: quantize, then compute with the dequantized weights; an explicit dtype
    # ("native", or "float32": cast first) keeps MLX's quantized kernels
    return DtypePlan(explicit or auto_float, quant, dequantize=cpu and dtype is None)

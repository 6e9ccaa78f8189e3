"""llama.cpp control vectors: the file llama.cpp's loader reads, round trips, layer numbering, CLI."""
from __future__ import annotations

import json

import gguf
import mlx.core as mx
import numpy as np
import pytest

from mlxinterp.core import taps as T
from mlxinterp.analysis.controlvec import (ControlVectorError, LayerVectors, export_llama_cpp, import_llama_cpp,
                                  is_layer_vectors, load_vectors)
from mlxinterp.analysis.directions import diff_of_means
from mlxinterp.core.errors import TapError
from cli_runner import run


def _direction(hook: str, d: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    return diff_of_means(rng.normal(size=(6, d)) + 0.5, rng.normal(size=(6, d)), hook, rng, model="tiny")


def _field(reader: gguf.GGUFReader, key: str):
    f = reader.get_field(key)
    assert f is not None, key
    return f.types[0], f.contents()


def test_written_file_is_what_llama_cpp_loads(tmp_path):
    """llama.cpp (common_control_vector_load_one) needs: tensors named direction.N with N >= 1, type F32,
    1-D, all of length n_embd. Metadata: general.architecture, controlvector.model_hint/layer_count."""
    rng = np.random.default_rng(1)
    vecs = {l: rng.normal(size=640).astype(np.float32) for l in (3, 1, 2)}
    path = export_llama_cpp(LayerVectors(vecs, "gemma3"), tmp_path / "cv.gguf", scale=2.5)
    r = gguf.GGUFReader(str(path))
    assert _field(r, "general.architecture") == (gguf.GGUFValueType.STRING, "controlvector")
    assert _field(r, "controlvector.model_hint") == (gguf.GGUFValueType.STRING, "gemma3")
    assert _field(r, "controlvector.layer_count") == (gguf.GGUFValueType.UINT32, 3)
    assert [t.name for t in r.tensors] == ["direction.1", "direction.2", "direction.3"]
    for t in r.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert list(t.shape) == [640] and t.n_elements == 640 and t.data_offset % r.alignment == 0
        np.testing.assert_array_equal(np.asarray(t.data), np.float32(2.5) * vecs[int(t.name.split(".")[1])])


def test_round_trip_direction_gguf_layer_vectors(tmp_path):
    d = _direction("blocks.5.hook_resid_post")
    d.save(tmp_path / "dir")
    lv = load_vectors(tmp_path / "dir.safetensors", layers=[4, 5, 6])  # one direction, copied to three layers
    assert lv.layers == [4, 5, 6] and lv.model_hint == "tiny"
    back = import_llama_cpp(export_llama_cpp(lv, tmp_path / "cv.gguf"))
    assert back.layers == [4, 5, 6] and back.model_hint == "tiny" and back.meta["gguf_layer_count"] == 3
    for l in back.layers:
        np.testing.assert_array_equal(back.vectors[l], d.vector)
    saved = back.save(tmp_path / "imported")
    assert saved.suffix == ".safetensors" and is_layer_vectors(saved) and not is_layer_vectors(tmp_path / "dir")
    again = load_vectors(saved)
    assert again.layers == [4, 5, 6] and np.array_equal(again.vectors[5], d.vector)
    assert load_vectors(tmp_path / "dir").layers == [5]  # a direction alone: its own layer


def test_layer_zero_and_other_hooks_are_refused(tmp_path):
    with pytest.raises(ControlVectorError, match="direction.0"):
        export_llama_cpp(LayerVectors({0: np.ones(8), 1: np.ones(8)}), tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
    with pytest.raises(TapError, match="no llama.cpp equivalent"):
        LayerVectors.from_directions(_direction("blocks.2.hook_mlp_out"))
    with pytest.raises(TapError, match="embedding output"):
        LayerVectors.from_directions(_direction("blocks.0.hook_resid_pre"))
    with pytest.raises(ControlVectorError, match="one length"):
        LayerVectors({1: np.ones(8), 2: np.ones(9)})
    with pytest.raises(ControlVectorError, match="NaN"):
        LayerVectors({1: np.array([1.0, np.nan])})
    with pytest.raises(ControlVectorError, match=r"not in this control vector; it has layers \[1\]"):
        LayerVectors({1: np.ones(8)}).select([2])


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_exported_vector_steers_where_the_direction_did(tiny_hooked, tmp_path, arch):
    """A direction at blocks.2.hook_resid_pre leaves as direction.1 (block 1's output: the same activation)
    and, imported back, steers the model exactly as the original tap did."""
    hm = tiny_hooked(arch, None)
    d = _direction("blocks.2.hook_resid_pre", d=hm.info.d_model)
    path = export_llama_cpp(LayerVectors.from_directions(d), tmp_path / "cv.gguf")
    assert [t.name for t in gguf.GGUFReader(str(path)).tensors] == ["direction.1"]
    lv = import_llama_cpp(path)
    ids = hm.tokens("the cat sat on").ids
    with hm.hooks({"blocks.2.hook_resid_pre": T.Add(d.vector, scale=3.0)}):
        want = np.array(hm.model(ids).astype(mx.float32))
    with hm.hooks(lv.taps(alpha=3.0)):
        got = np.array(hm.model(ids).astype(mx.float32))
    plain = np.array(hm.model(ids).astype(mx.float32))
    assert np.abs(want - plain).max() > 1e-3  # the steering does something
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_imports_repeng_and_cvector_generator_files(tmp_path):
    """Files written the way repeng (ControlVector.export_gguf: uint32 layer_count, layers n-1..1 in that order,
    HF model_type hint) and llama.cpp's cvector-generator (int32 layer_count, unit vectors) write them."""
    rng = np.random.default_rng(2)
    repeng = {l: rng.normal(size=32).astype(np.float32) for l in range(17, 0, -1)}
    w = gguf.GGUFWriter(str(tmp_path / "repeng.gguf"), "controlvector")
    w.add_string("controlvector.model_hint", "gemma3_text")
    w.add_uint32("controlvector.layer_count", len(repeng))
    for l, v in repeng.items():
        w.add_tensor(f"direction.{l}", v)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()  # noqa: E702
    lv = import_llama_cpp(tmp_path / "repeng.gguf")
    assert lv.layers == list(range(1, 18)) and lv.model_hint == "gemma3_text"
    assert all(np.array_equal(lv.vectors[l], repeng[l]) for l in repeng)

    w = gguf.GGUFWriter(str(tmp_path / "gen.gguf"), "controlvector")
    w.add_string("controlvector.model_hint", "llama")
    w.add_int32("controlvector.layer_count", 2)
    for l in (1, 2):
        v = rng.normal(size=32).astype(np.float32)
        w.add_tensor(f"direction.{l}", v / np.linalg.norm(v))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()  # noqa: E702
    lv = import_llama_cpp(tmp_path / "gen.gguf")
    assert lv.layers == [1, 2] and np.allclose(list(lv.norms().values()), 1.0, atol=1e-6)


def test_import_rejects_what_is_not_a_control_vector(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "model.gguf"), "llama")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()  # noqa: E702
    with pytest.raises(ControlVectorError, match="'llama' model file, not a control vector"):
        import_llama_cpp(tmp_path / "model.gguf")
    good = export_llama_cpp(LayerVectors({1: np.ones(64)}), tmp_path / "cv.gguf")
    (tmp_path / "cut.gguf").write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ControlVectorError, match="not a readable control vector"):
        import_llama_cpp(tmp_path / "cut.gguf")
    with pytest.raises(ControlVectorError, match="no file"):
        import_llama_cpp(tmp_path / "missing.gguf")




def test_cli_export_import_then_steer(tiny_dirs, tmp_path, capsys):
    d = _direction("blocks.1.hook_resid_post")
    d.save(tmp_path / "v")
    code, out, err = run(["export-vector", str(tmp_path / "v"), "--format", "llama-cpp", "--out",
                           str(tmp_path / "v.gguf"), "--layers", "1-2", "--scale", "2", "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["layers"] == [1, 2] and info["d_model"] == 64
    assert info["norms"]["1"] == pytest.approx(2 * d.norm, rel=1e-5)
    code, out, err = run(["import-vector", str(tmp_path / "v.gguf"), "--out", str(tmp_path / "imp"), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["layers"] == [1, 2]
    model = str(tiny_dirs[("llama", None)])
    code, out, err = run(["steer", "hi", "--model", model, "--dtype", "native", "--vector",
                           str(tmp_path / "imp.safetensors"), "--alpha", "1", "--max-tokens", "3", "--json"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["layers"] == [1, 2] and res["perturbation_pct_of_resid"] is None
    code, _, err = run(["export-vector", str(tmp_path / "v"), "--format", "onnx", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "'onnx' is not supported; allowed: llama-cpp" in err
    code, _, err = run(["export-vector", str(tmp_path / "v"), "--layers", "0-1", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "direction.0" in err and "hint" in err
    code, _, err = run(["steer", "hi", "--model", model, "--vector", str(tmp_path / "v"), "--alpha", "1"], capsys)
    assert code == 2 and "--layers is needed" in err

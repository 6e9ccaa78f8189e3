"""Size replicas: random weights with a real checkpoint's exact names, shapes, dtypes and quantization."""
from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import tiny
from cli_runner import run
from mlx.utils import tree_flatten

from mlxinterp.core import memory
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.core.hooks import load
from mlxinterp.core.replica import stored_params, lazy_model, write_replica
from mlxinterp.suite import catalogue


def _shapes(model) -> dict:
    return {k: (v.shape, v.dtype) for k, v in tree_flatten(model.parameters())}


@pytest.mark.parametrize("arch", ["gemma2", "llama", "qwen2"])
def test_replica_has_the_tensors_mlx_lm_quantization_gives(arch, tmp_path):
    cfg = {**tiny.tiny_config(arch), "quantization": {"group_size": 32, "bits": 4}, "torch_dtype": "float32"}
    rep = load(str(write_replica(cfg, tmp_path / "rep", shard_bytes=30_000)), dtype="native")
    ref = load(str(tiny.write_tiny_model(tmp_path / "ref", arch, bits=4)), dtype="native")
    assert _shapes(rep.model) == _shapes(ref.model)
    assert len(list((tmp_path / "rep").glob("model-*-of-*.safetensors"))) > 1  # sharded as asked
    logits = rep("The capital of France is")
    assert bool(mx.isfinite(logits).all())


def test_replica_weights_are_seeded_and_scaled(tmp_path):
    cfg = {**tiny.tiny_config("llama"), "quantization": {"group_size": 32, "bits": 4}}
    a = load(str(write_replica(cfg, tmp_path / "a", seed=3)), dtype="native")
    b = load(str(write_replica(cfg, tmp_path / "b", seed=3)), dtype="native")
    c = load(str(write_replica(cfg, tmp_path / "c", seed=4)), dtype="native")
    ids = mx.array([[1, 5, 9, 13]])
    assert mx.array_equal(a(ids), b(ids)) and not mx.array_equal(a(ids), c(ids))
    q = a.model.model.layers[0].mlp.down_proj  # fan_in = d_mlp = 128
    assert isinstance(q, nn.QuantizedLinear)
    w = np.array(mx.dequantize(q.weight, q.scales, q.biases, q.group_size, q.bits).astype(mx.float32))
    assert abs(w.mean()) < 0.01 and abs(w.std() * np.sqrt(128) - 1) < 0.1


@pytest.mark.parametrize("arch", catalogue.ARCHITECTURES, ids=lambda a: a.stem)
def test_every_catalogue_entry_builds_in_mlx_lm_with_its_shapes(arch):
    """The full config builds mlx-lm's model (lazily: nothing is allocated) with the catalogue's parameter count."""
    cfg = arch.full_config()
    model, _ = lazy_model(cfg)
    params = stored_params(model, cfg)
    matrices = sum(v.size for k, v in params.items() if v.ndim == 2)
    assert matrices == memory.n_params(arch.config())


def test_cli_replica_of_the_default_models_architecture(tmp_path, capsys):
    code, stdout, err = run(["replica", "--like", "gemma-3-270m-it-4bit", "--out", str(tmp_path / "r"), "--json"], capsys)
    assert code == 0, err
    res = json.loads(stdout)
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (cfg["quantization"]["bits"], cfg["quantization"]["group_size"]) == (4, 64)
    assert cfg["num_hidden_layers"] == 18
    assert "borrowed" in cfg["mlxinterp_tokenizer"]  # 262144 tokens: the default model's tokenizer fits
    hm = load(res["path"], dtype="native")
    assert hm.info.quantization == {"bits": 4, "group_size": 64} and hm.info.vocab_size == 262144
    assert hm.tokenizer.encode("Paris") == load("default").tokenizer.encode("Paris")


def test_vocab_that_does_not_fit_gets_a_byte_level_tokenizer(tmp_path):
    from mlxinterp.core.loading import default_model_dir

    cfg = {**tiny.tiny_config("gemma2"), "quantization": {"group_size": 32, "bits": 4}}
    hm = load(str(write_replica(cfg, tmp_path / "r", tokenizer_dir=default_model_dir())), dtype="native")
    ids = hm.tokenizer.encode("héllo")
    assert max(ids) < 512 and hm.tokenizer.decode(ids).endswith("héllo")


def test_cli_replica_bad_input(tmp_path, capsys):
    code, _, err = run(["replica", "--like", "gemma-2-2b-it-5bit", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "not in the catalogue" in err and not (tmp_path / "x").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    code, _, err = run(["replica", "--like", "gemma-2-2b-it-4bit", "--out", str(tmp_path / "full")], capsys)
    assert code == 2 and "not an empty directory" in err
    with pytest.raises(MlxInterpError, match="not empty"):
        write_replica(tiny.tiny_config("llama"), tmp_path / "full")


# ------------------------------------------------------------------ dtype policy at real sizes


def test_float32_that_would_not_fit_runs_as_stored_and_says_so():
    cfg = catalogue.get("gemma-2-9b-it-4bit").config()
    plan, note = memory.choose_plan(cfg, limit=24 * 1024**3)
    if plan.dtype is None and note is None:
        pytest.skip("Metal: the automatic plan keeps checkpoints as stored anyway")
    assert plan.dtype is None and plan.quant is None and "float32 would need" in note and "4bit-g64" in note
    assert memory.choose_plan(cfg, limit=64 * 1024**3) == (memory.plan_dtype(None), None)  # fits: float32
    assert memory.choose_plan(cfg, dtype="float32", limit=24 * 1024**3)[0].dtype == "float32"  # --dtype overrides
    unquantized = {k: v for k, v in cfg.items() if k != "quantization"}
    assert memory.choose_plan(unquantized, limit=24 * 1024**3)[1] is None  # nothing stored to fall back to


def test_catalogue_verdict_is_how_this_machine_would_run_it(capsys):
    code, out, _ = run(["models", "--catalogue", "--memory", "24GB", "--json"], capsys)
    assert code == 0
    rows = {r["repo"]: r for r in json.loads(out)["catalogue"]["rows"]}
    q7 = rows["mlx-community/Qwen2.5-7B-Instruct-4bit"]
    assert not q7["fits_float32"]
    assert q7["fits_here"] and q7["runs_here_as"] in ("4bit-g64 (float32 scales)", "4bit-g64")
    for r in rows.values():  # never "fits" while the dtype it would run in does not
        assert not (r["fits_here"] and r["runs_here_as"] == "float32" and not r["fits_float32"])


def test_load_keeps_quantization_when_float32_would_not_fit(tmp_path, monkeypatch):
    from mlxinterp.core.loading import DtypePolicyWarning

    cfg = {**tiny.tiny_config("llama"), "quantization": {"group_size": 32, "bits": 4}}
    path = write_replica(cfg, tmp_path / "r")
    if memory.plan_dtype(None).dtype != "float32":
        pytest.skip("Metal: stored quantization is the default anyway")
    n = memory.config_n_params(cfg)
    between = (memory.with_margin(n * 4) + memory.with_margin(n * memory.bytes_per_param(cfg, memory.plan_dtype("native")))) // 2
    monkeypatch.setenv("MLXINTERP_MEMORY_LIMIT", str(between))
    with pytest.warns(DtypePolicyWarning, match="float32 would need"):
        hm = load(str(path))
    assert hm.info.quantization == {"bits": 4, "group_size": 32}
    with pytest.raises(MlxInterpError, match="needs about"):
        load(str(path), dtype="float32")

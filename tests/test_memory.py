"""The memory planner: formulas against real models, order, refusal, spilling to disk, freeing models.

A fake smaller machine is MLXINTERP_MEMORY_LIMIT (platform.total_memory_bytes).
"""
from __future__ import annotations

import dataclasses
import io as stdio
import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from rich.console import Console

from mlxinterp.analysis import directions
from mlxinterp.core import loading, memory, specs
from mlxinterp import suite
from mlxinterp.suite import runner
from mlxinterp.suite import registry as reg
from mlxinterp.cli import main
from mlxinterp.core.errors import MemoryBudgetError

PROMPTS = ["The Eiffel Tower is in Paris.", "Rome is the capital of Italy.", "Once upon a time",
           "Steering adds a direction.", "Patching copies an activation.", "The city of"]
HOOKS = ["blocks.1.hook_resid_post", "blocks.2.mlp.hook_post"]


@dataclasses.dataclass
class Cfg:
    seed: int = 0


@pytest.fixture
def registry(monkeypatch):
    """A private registry with one experiment that captures activations through directions.collect."""
    monkeypatch.setattr(reg, "_REGISTRY", {})
    monkeypatch.setattr(reg, "_IMPORT_ERRORS", {})
    monkeypatch.setattr(reg, "_builtin_modules", lambda: [])
    seen: dict = {}

    @suite.experiment("capture", Cfg)
    def capture(hm, cfg, ctx):
        """Capture two hooks and run a forward."""
        if not hasattr(hm, "names"):  # a stand-in model (planner tests)
            return {"ok": True}
        acts = directions.collect(hm, PROMPTS, HOOKS, batch_size=4)
        spill = ctx.out_dir / runner.SPILL_DIR
        seen["spilled"] = {k: isinstance(v, np.memmap) for k, v in acts.items()}
        seen["files"] = sorted(p.name for p in spill.rglob("*.npy")) if spill.exists() else []
        seen["acts"] = {k: np.array(v) for k, v in acts.items()}
        seen["active_during"] = mx.get_active_memory()
        return {"norms": {k: float(np.linalg.norm(v)) for k, v in acts.items()}}

    return seen


class Stand:
    """A stand-in model: the planner only needs the spec, the driver only .info."""

    def __init__(self, spec):
        self.info = type("Info", (), {"slug": specs.slugify(spec.split("/")[-1]), "weights_hash": "h",
                                      "to_dict": lambda self: {}})()


def _quiet():
    buf = stdio.StringIO()
    return Console(file=buf, width=300), buf


# ------------------------------------------------------------------ formulas


@pytest.mark.real
def test_float32_weight_formula_matches_the_real_default_model(real_hm):
    cfg = loading.read_config(loading.default_model_dir())
    est = memory.estimate(cfg, dtype="float32")
    actual = sum(v.nbytes for _, v in tree_flatten(real_hm.model.parameters()))
    assert est.weights == pytest.approx(actual, rel=1e-3)  # norms are the only difference
    assert memory.estimate_memory(real_hm.info) == pytest.approx(est.weights + est.margin, abs=300_000)


def test_quantized_weight_formula_matches_mlx_quantization(tiny_dirs):
    """4.5 bits per parameter at 4-bit g64 with 16-bit scales and biases (mlx-community's layout)."""
    from mlx_lm.utils import quantize_model

    hm = loading.load_model(str(tiny_dirs[("llama", None)]), dtype="bfloat16")
    cfg = loading.read_config(tiny_dirs[("llama", None)])
    qmodel, qcfg = quantize_model(hm.model, dict(cfg), group_size=64, bits=4)
    actual = sum(v.nbytes for _, v in tree_flatten(qmodel.parameters()))
    est = memory.estimate(qcfg, dtype="native")
    assert est.dtype == "4bit-g64"
    assert est.weights == pytest.approx(actual, rel=0.015)  # unquantized bf16 norms are the rest (0.95 %)


def test_kv_cache_formula_matches_mlx_lm_cache(tiny_hooked):
    hm = tiny_hooked("llama", None)
    cache = hm.padded_cache([0, 0])
    hm.model(mx.zeros((2, 10), dtype=mx.int32), cache=cache)
    actual = sum(c.keys[..., : c._idx, :].nbytes + c.values[..., : c._idx, :].nbytes for c in cache)
    cfg = loading.read_config(Path(hm.info.source))
    assert memory.kv_cache_bytes(cfg, context=10, batch=2, element_bytes=4) == actual


# ----------------------------------------------------------- order, refusal


def test_run_suite_runs_the_smallest_model_first(registry, tiny_dirs, tmp_path):
    loads = []
    specs = ["default", str(tiny_dirs[("llama", None)]), str(tiny_dirs[("qwen2", None)]), "org/unknown"]
    console, buf = _quiet()
    suite.run_all(specs, out=tmp_path / "out", console=console, load_fn=lambda s: loads.append(s) or Stand(s))
    # qwen2's tiny checkpoint ties its embeddings (smaller than llama's); the default model is 270M;
    # a spec without a readable config keeps its place after the known ones
    assert loads == [specs[2], specs[1], "default", "org/unknown"]
    assert "smallest first" in buf.getvalue() and "org/unknown (size unknown)" in buf.getvalue()


def test_a_model_that_will_not_fit_is_refused_before_anything_loads(registry, tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("MLXINTERP_MEMORY_LIMIT", "1GB")
    loads = []
    with pytest.raises(MemoryBudgetError) as err:
        suite.run_all([str(tiny_dirs[("llama", None)]), "default"], out=tmp_path / "out", console=_quiet()[0],
                      load_fn=lambda s: loads.append(s) or Stand(s))
    msg = str(err.value)
    assert "1 model(s) will not fit in this machine's 1.1 GB (MLXINTERP_MEMORY_LIMIT)" in msg
    assert "default needs" in msg and "float32" in msg and "hint:" in msg
    assert loads == [] and not (tmp_path / "out").exists()


def test_cli_refuses_a_catalogue_model_too_big_without_downloading_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLXINTERP_MEMORY_LIMIT", "8GB")
    with pytest.raises(SystemExit) as ex:
        main(["run-suite", "--model", "mlx-community/gemma-2-27b-it-4bit", "--only", "validation",
              "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert ex.value.code == 2
    assert "mlx-community/gemma-2-27b-it-4bit needs" in err and "8.6 GB" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ spilling


def test_collect_spills_to_npy_memmaps_with_identical_values(tiny_hooked, tmp_path):
    hm = tiny_hooked("gemma3_text", None)
    ram = directions.collect(hm, PROMPTS, HOOKS, batch_size=4)
    disk = directions.collect(hm, PROMPTS, HOOKS, batch_size=4, spill_dir=tmp_path, budget=0)
    for name in ram:
        assert not isinstance(ram[name], np.memmap) and isinstance(disk[name], np.memmap)
        assert np.array_equal(ram[name], disk[name]) and disk[name].dtype == np.float32
    files = sorted(tmp_path.rglob("*.npy"))
    assert len(files) == 2 and {np.load(f).shape for f in files} == {(6, 64), (6, 128)}


def test_suite_spills_captures_that_do_not_fit_beside_the_model(registry, tiny_hooked, tmp_path, monkeypatch):
    """A machine just big enough for the model (+1 KB): the 6 x (64 + 128) float32 captures go to disk."""
    hm = tiny_hooked("llama", None)
    ram = directions.collect(hm, PROMPTS, HOOKS, batch_size=4)
    monkeypatch.setenv("MLXINTERP_MEMORY_LIMIT", str(memory.model_need(hm.info) + 1024))
    console, _ = _quiet()
    suite.run_all([hm.info.source], out=tmp_path / "out", console=console, load_fn=lambda s: hm)
    assert all(registry["spilled"].values()) and len(registry["files"]) == 2
    assert all(np.array_equal(registry["acts"][k], ram[k]) for k in ram)
    assert not list((tmp_path / "out").rglob(runner.SPILL_DIR))  # removed after the experiment
    # with the real machine's memory nothing spills
    monkeypatch.delenv("MLXINTERP_MEMORY_LIMIT")
    suite.run_all([hm.info.source], out=tmp_path / "out2", console=console, load_fn=lambda s: hm)
    assert not any(registry["spilled"].values()) and registry["files"] == []


def test_captures_larger_than_the_machine_without_a_spill_dir_are_refused(tiny_hooked, monkeypatch):
    hm = tiny_hooked("llama", None)
    monkeypatch.setenv("MLXINTERP_MEMORY_LIMIT", "1KB")
    with pytest.raises(MemoryBudgetError, match=r"(?s)captured activations need 4.6 KB \(6 rows x 192 float32\), "
                                                r"more than this machine's 1.0 KB.*hint: pass spill_dir"):
        directions.collect(hm, PROMPTS, HOOKS)


# ------------------------------------------------------------------- freeing


def test_each_model_is_freed_before_the_next_loads(registry, tiny_dirs, tmp_path):
    from mlxinterp.core.hooks import load

    active = []

    def load_fn(spec):
        active.append(mx.get_active_memory())
        return load(spec)

    specs = [str(tiny_dirs[("llama", None)]), str(tiny_dirs[("gemma3_text", None)]), str(tiny_dirs[("qwen2", None)])]
    base = mx.get_active_memory()
    suite.run_all(specs, out=tmp_path / "out", console=_quiet()[0], load_fn=load_fn)
    model_bytes = registry["active_during"] - base
    assert model_bytes > 500_000  # the last model (and its captures) were really in memory
    # before each load and after the run, what the previous model held is back (within 1 %)
    assert all(a - base < 0.01 * model_bytes for a in active + [mx.get_active_memory()])


FREE_SCRIPT = """
import json, mlx.core as mx
from mlxinterp.core import spill
from mlxinterp.core.hooks import load
from mlxinterp.suite import free_memory
out = {"rss0": spill.rss_bytes()}
for i in range(2):
    hm = load("default")
    hm("The Eiffel Tower is located in the city of")
    out[f"rss_loaded{i}"], out[f"active_loaded{i}"] = spill.rss_bytes(), mx.get_active_memory()
    del hm
    free_memory()
    out[f"rss_freed{i}"], out[f"active_freed{i}"] = spill.rss_bytes(), mx.get_active_memory()
print(json.dumps(out))
"""


@pytest.mark.real
@pytest.mark.offload  # waits on its own process (RSS counts only that model)
@pytest.mark.skipif(sys.platform != "linux", reason="reads RSS from /proc")
def test_freeing_the_default_model_returns_its_memory_to_the_os():
    """RSS, not just MLX's counters: del + free_memory gives the ~1.07 GB of float32 weights back."""
    proc = subprocess.run([sys.executable, "-c", FREE_SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    weights = m["active_loaded0"]
    assert weights > 1.0e9 and m["active_freed0"] < 1e6 and m["active_freed1"] < 1e6
    assert m["rss_loaded0"] - m["rss_freed0"] > 0.9 * weights  # given back to the OS
    assert abs(m["rss_freed1"] - m["rss_freed0"]) < 0.1 * weights  # a second load does not accumulate


# ------------------------------------------------------------------ per-host plans (layer sharding)


def test_per_host_plan_splits_layers_and_weights_as_the_pipeline_does(tiny_hooked, tiny_dirs):
    """Each host's weights = its blocks' parameters (+ the embedding on host 0, the tied unembedding on the
    last host) at the load rule's bytes per parameter; counted from the real tiny model's arrays."""
    from mlxinterp.core.pipeline import split_layers
    from mlxinterp.suite.planner import plan_hosts

    path = tiny_dirs[("llama", None)]
    cfg = loading.read_config(path)
    hm = tiny_hooked("llama", None)
    inner = hm.model.model
    # parameters of matrices only (norms and biases are left out of the formula, as memory.config_n_params)
    count = lambda mod: sum(v.size for _, v in tree_flatten(mod.parameters()) if v.ndim == 2)
    blocks = [count(layer) for layer in inner.layers]
    vocab = count(inner.embed_tokens)  # the lm_head of an untied model has the same shape
    shares, note = plan_hosts(cfg, 3, 10**12, dtype="float32")
    assert note is None and [s.layers for s in shares] == split_layers(len(blocks), 3)
    for s in shares:
        params = sum(blocks[i] for i in s.layers) + vocab * (int(s.rank == 0) + int(s.rank == 2))
        assert s.weights == params * 4 and s.embedding == (s.rank == 0) and s.unembedding == (s.rank == 2)
    # the KV cache is split by layers: the shares add up to the whole model's
    total_kv = memory.kv_cache_bytes(cfg, memory.SUITE_CONTEXT, memory.SUITE_BATCH, 4)
    assert abs(sum(s.kv_cache for s in shares) - total_kv) <= len(shares)


def test_per_host_plan_says_which_host_does_not_fit():
    from mlxinterp.suite import catalogue
    from mlxinterp.suite.planner import plan_hosts

    cfg = catalogue.get("gemma-2-9b-it-4bit").config()
    shares, _ = plan_hosts(cfg, 2, 10**12, dtype="native")
    need = max(s.need for s in shares)
    assert all(s.fits for s in plan_hosts(cfg, 2, need, dtype="native")[0])
    tight, _ = plan_hosts(cfg, 2, need - 1, dtype="native")
    assert [s.fits for s in tight] == [s.need < need for s in shares] and not all(s.fits for s in tight)
    # two hosts each need less than the whole model would on one
    whole = memory.estimate(cfg, "native", batch=memory.SUITE_BATCH)
    assert max(s.weights for s in shares) < whole.weights


def test_cli_plan(capsys):
    from cli_runner import run

    code, out, _ = run(["plan", "--model", "gemma-2-9b-it-4bit", "--hosts", "2", "--memory", "16", "--json"], capsys)
    assert code == 0
    rep = json.loads(out)
    assert rep["fits"] and [s["layers"] for s in rep["shares"]] == [[0, 20], [21, 41]]
    code, _, err = run(["plan", "--hosts", "0", "--memory", "16"], capsys)
    assert code == 2 and "--hosts=0 is not allowed" in err
    code, _, err = run(["plan", "--model", "gemma-2-9b-it-4bit", "--hosts", "50", "--memory", "16"], capsys)
    assert code == 2 and "more than the model's 42 layers" in err

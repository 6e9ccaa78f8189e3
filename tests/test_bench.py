"""The benchmark machinery: worker processes, interleaving, ratios, the README table, agreement with transformers."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from bench import harness as B
from mlxinterp.core.errors import MlxInterpError

# Whole suite runs and processes of their own: in the second pytest process, beside the in-process tests
# (tests/background.py), which would otherwise run alone on one core for their last minutes.
pytestmark = pytest.mark.offload


def test_worker_runs_conditions_and_reports_its_errors(tiny_dirs, tmp_path):
    spec = str(tiny_dirs[("gemma3_text", None)])
    with B.Worker("mlx", "mlx", {"kind": "forward", "model": spec, "prompt": "hello world", "compiled": True},
                  env=B.worker_env(), log=tmp_path / "w.log") as w:
        assert w.conditions == ["forward", "run_with_cache_all", "forward_compiled"]
        a, b = w.run("forward"), w.run("forward_compiled")
        assert a["seconds"] > 0 and a["value"]["argmax"] == b["value"]["argmax"]  # mx.compile: same function
        assert w.run("run_with_cache_all")["value"]["captured"] > 50
        with pytest.raises(MlxInterpError, match="nope"):
            w.run("nope")
        times, values = B.interleave([(w, "forward"), (w, "run_with_cache_all")], rounds=3, warm=False)
    assert [len(v) for v in times.values()] == [3, 3] and set(values) == {"mlx/forward", "mlx/run_with_cache_all"}
    assert w.proc.poll() == 0  # closed cleanly


def test_worker_set_up_failures_name_the_problem(tmp_path):
    with pytest.raises(MlxInterpError, match="kind 'bogus'"):
        B.Worker("x", "mlx", {"kind": "bogus", "model": "/nonexistent"}, log=tmp_path / "w.log")
    with pytest.raises(MlxInterpError, match="worker kind 'cuda'"):
        B.Worker("x", "cuda")


def test_rounds_rotate_so_no_condition_always_runs_first():
    names = ["a", "b", "c"]
    assert [B._rotated(names, r)[0] for r in range(3)] == ["a", "b", "c"]
    with pytest.raises(MlxInterpError, match="rounds=0"):
        B.bench_taps(None, rounds=0)


def test_ratio_summary_is_the_median_of_per_round_ratios():
    r = B.ratio_summary([2.0, 4.0, 9.0], [1.0, 1.0, 3.0])
    assert r["rounds"] == [2.0, 4.0, 3.0] and r["median"] == 3.0
    assert r["ci95"][0] <= 3.0 <= r["ci95"][1]


def test_bench_generate_counts_tokens_of_every_condition(tiny_hooked):
    hm = tiny_hooked("llama", None)
    res = B.bench_generate(hm, prompt="hello world", max_tokens=4, rounds=2, layer=1)
    assert set(res["tokens_per_second"]) == {"mlx_lm", "hooked_no_tap", "steered"}
    assert all(len(v) == 2 and min(v) > 0 for v in res["tokens_per_second"].values())
    assert res["generated_tokens"]["mlx_lm"] == res["generated_tokens"]["hooked_no_tap"]  # no tap: same text
    assert res["steered_vs_mlx_lm"]["median"] > 0
    assert hm.hook_names  # hooks reinstalled after the bare mlx-lm condition


def test_bench_batchgen_rows_match_sequential_generation(tiny_hooked):
    hm = tiny_hooked("qwen2", None)
    lines = []
    res = B.bench_batchgen(hm, prompts=["hello world", "a b c d", "the cat"], max_tokens=4, rounds=2, layer=1,
                           progress=lines.append)
    assert res["rows_token_identical"] == 3  # row i of the batch == prompt i generated alone with its strength
    assert res["generated_tokens"]["batched"] == res["generated_tokens"]["sequential"]
    assert all(len(v) == 2 and min(v) > 0 for v in res["tokens_per_second"].values())
    assert len(res["batched_vs_sequential"]["rounds"]) == 2 and len(lines) == 4
    assert "one generate_batch, per-row Add scale (3/3 rows token-identical)" in B.render_table({"batchgen": res})


def test_blas_variants_name_only_libraries_that_exist():
    variants = B.blas_variants()
    assert "reference" in variants and "LD_PRELOAD" not in variants["reference"]
    for name, env in variants.items():
        pre = env.get("LD_PRELOAD")
        assert pre is None or __import__("os").path.exists(pre), name
    env = B.worker_env({"OPENBLAS_CORETYPE": None, "X_TEST": "1"}, preload=False)
    assert "LD_PRELOAD" not in env and "OPENBLAS_CORETYPE" not in env and env["X_TEST"] == "1"
    with pytest.raises(MlxInterpError, match="'quantum' is not available"):
        B.bench_forward(blas=["quantum"], torch_side=False)


def _fake_results() -> dict:
    ratio = lambda m: {"median": m, "ci95": [m * 0.9, m * 1.1], "rounds": [m]}  # noqa: E731
    machine = {"time": "now", "cpu": "cpu", "cores": 2, "python": "3.11", "versions": {"mlx": "0.32"},
               "load_average": [1.0, 1.0, 1.0], "env": {"OPENBLAS_CORETYPE": None}}
    return {
        "generate": {"median_tokens_per_second": {"mlx_lm": 50.0, "hooked_no_tap": 49.0, "steered": 40.0},
                     "max_tokens": 64, "layer": 9, "steered_vs_mlx_lm": ratio(0.80),
                     "hooked_no_tap_vs_mlx_lm": ratio(0.98), "machine": machine},
        "patching": {"reference": "mlx/sweep_b32", "n_patches": 180,
                     "median_seconds": {"mlx/sweep_b32": 2.0, "torch/nnsight_batched": 5.0, "mlx/loop_full_logits": 12.0},
                     "ratios_vs_reference": {"torch/nnsight_batched": ratio(2.5), "mlx/loop_full_logits": ratio(6.0)},
                     "max_abs_diff_vs_reference": {"torch/nnsight_batched": 1e-4, "mlx/loop_full_logits": 1e-5},
                     "targets": {"faster_than": "torch/nnsight_batched", "speedup_vs_loop": 8.0}, "machine": machine},
    }


def test_table_marks_met_and_missed_targets(tmp_path):
    table = B.render_table(_fake_results())
    rows = {line.split("|")[2].strip(): line for line in table.splitlines()[2:]}
    assert "**missed**" in rows["hm.generate, Add tap on layer 9"]  # 0.80 < 0.95
    assert "| met |" in rows["torch/nnsight_batched (grid max diff 1.0e-04)"]  # 2.5 x slower than mlxinterp
    assert "**missed**" in rows["mlx/loop_full_logits (grid max diff 1.0e-05)"]  # 6 x < 8 x
    readme = tmp_path / "README.md"
    readme.write_text(f"# Bench\nintro\n{B.TABLE_START}\nold\n{B.TABLE_END}\nafter\n")
    B.update_readme(readme, _fake_results())
    text = readme.read_text()
    assert "old" not in text and "intro" in text and "after" in text and "**missed**" in text
    (tmp_path / "bad.md").write_text("no markers")
    with pytest.raises(MlxInterpError, match="markers"):
        B.update_readme(tmp_path / "bad.md", _fake_results())


def test_bench_cli_rejects_bad_numbers(tmp_path):
    from typer.testing import CliRunner

    from bench.cli import bench_app

    res = CliRunner().invoke(bench_app, ["patching", "--batch-sizes", "32,0", "--no-torch"])
    assert res.exit_code != 0 and "--batch-sizes" in str(res.exception or res.output)


HAVE_TORCH = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))


@pytest.mark.real
@pytest.mark.bench
@pytest.mark.skipif(not HAVE_TORCH, reason="torch/transformers not installed (pip install -e '.[bench]')")
def test_default_model_agrees_with_transformers(real_hm):
    """An independent check of the GGUF import and of mlx-lm's Gemma 3: transformers' own Gemma3ForCausalLM on
    the same weights gives the same hidden states and logits (and differs, as it should, when only the
    embedding scale is transformers' float32 sqrt(d) instead of mlx-lm's bfloat16-rounded one)."""
    res = B.bench_agreement(real_hm, prompts=["The Eiffel Tower is located in the city of", "Paris is the capital of"])
    same, own = res["mlx_embed_scale"], res["hf_embed_scale"]
    assert same["top1_agreement"] == 1.0 and same["logits_max_abs_diff"] < 1e-3 and same["hidden_max_rel_diff"] < 1e-4
    assert own["logits_max_abs_diff"] > 10 * same["logits_max_abs_diff"]
    json.dumps(res)  # storable as it is
    assert np.isfinite(same["hidden_max_abs_diff"])

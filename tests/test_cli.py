"""The command line: JSON outputs, help with examples, the installed entry point (errors: test_bad_inputs.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from cli_runner import run




def test_info_json_on_tiny_model(tiny_dirs, capsys):
    code, out, _ = run(["info", "--model", str(tiny_dirs[("gemma2", 4)]), "--dtype", "native", "--json"], capsys)
    assert code == 0
    d = json.loads(out)
    assert d["arch"] == "gemma2" and d["n_layers"] == 4 and d["d_model"] == 64 and d["n_heads"] == 4
    assert d["vocab_size"] == 512 and "blocks.3.attn.hook_z" in d["hook_points"]
    assert d["quantization"]["bits"] == 4


def test_hooks_filter_json(tiny_dirs, capsys):
    code, out, _ = run(["hooks", "--model", str(tiny_dirs[("llama", None)]), "--filter", "attn.hook_z", "--json"], capsys)
    assert code == 0
    assert json.loads(out) == {f"blocks.{i}.attn.hook_z": [4, 16] for i in range(4)}


def test_lens_json_and_png(tiny_dirs, tmp_path, capsys):
    code, out, _ = run(["lens", "--model", str(tiny_dirs[("qwen2", None)]), "The city of", "--target", " Paris",
                        "--json", "--out", str(tmp_path)], capsys)
    assert code == 0
    d = json.loads(out)
    assert len(d["layers"]) == 4 and {"layer", "top_tokens", "entropy", "target_rank"} <= set(d["layers"][0])
    assert len(list(tmp_path.glob("lens-*.png"))) == 1 and d["figure"].endswith(".png")


def test_steer_json(tiny_dirs, tmp_path, capsys):
    from mlxinterp.analysis.directions import diff_of_means
    import numpy as np

    rng = np.random.default_rng(0)
    d = diff_of_means(rng.normal(size=(4, 64)) + 1, rng.normal(size=(4, 64)), "blocks.1.hook_resid_post", rng)
    path = d.save(tmp_path / "v")
    model = str(tiny_dirs[("llama", None)])
    code, out, _ = run(["steer", "hi", "--model", model, "--dtype", "native", "--vector", str(path), "--alpha", "2",
                        "--layers", "1-2", "--max-tokens", "4", "--json"], capsys)
    assert code == 0 and json.loads(out)["layers"] == [1, 2]


def test_help_has_examples(capsys):
    for cmd in ("info", "hooks", "lens", "generate", "steer", "run-suite", "models", "doctor"):
        code, out, _ = run([cmd, "--help"], capsys)
        assert code == 0 and "Example" in out, cmd


def test_console_script_runs_and_preloads_blas(tmp_path):
    """The installed `mlxinterp` entry point (a subprocess, as a user runs it)."""
    exe = os.path.join(os.path.dirname(sys.executable), "mlxinterp")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MLXINTERP_BLAS_REEXEC")}
    r = subprocess.run([exe, "doctor", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    from mlxinterp.core.platform import find_openblas

    d = json.loads(r.stdout)
    assert d["openblas_interposed"] is bool(find_openblas())  # the entry point re-executed itself with the preload
    r = subprocess.run([exe, "info", "--model", "no-such-model"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "no-such-model" in r.stderr and "Traceback" not in r.stderr


def test_run_suite_lists_config_fields_and_refuses_a_bad_set(tmp_path, capsys):
    code, out, _ = run(["run-suite", "--list", "--fields"], capsys)
    assert code == 0 and "steps=" in out and "ard_mmd" in out
    code, out, err = run(["run-suite", "--model", "default", "--only", "ard_mmd", "--set", "ard_mmd.stepz=9",
                          "--out", str(tmp_path / "r")], capsys)
    assert code != 0 and "no config field 'stepz'" in out + err and "steps" in out + err
    assert not (tmp_path / "r").exists()

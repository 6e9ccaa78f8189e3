"""Layer (pipeline) sharding: 2 and 3 local ranks under `mlx.launch` give the single-process numbers.

Every rank runs WORKER (below); rank 0 writes what it saw to an .npz, which is
compared with the same calls on the unsharded model in this process: logits,
every captured hook point (gathered to rank 0), every layer's attention pattern, steering and ablation taps on
blocks held by other ranks, greedy generation with a tap, and sampling at temperature 1.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import tiny
from test_distributed import free_ports

from mlxinterp.core.hooks import load
from mlxinterp.core.pipeline import ShardingError, load_sharded, split_layers

LAUNCH = shutil.which("mlx.launch") or str(Path(sys.executable).parent / "mlx.launch")
needs_launch = pytest.mark.skipif(not Path(LAUNCH).exists(), reason="mlx.launch is not installed (it comes with mlx)")
IDS = [1, 287, 414, 417, 279, 280, 300, 301, 302, 303, 304, 305]

# The calls compared, as source: the ranks run them on the split model (WORKER), this process on the whole one.
CALLS = textwrap.dedent('''
    import mlx.core as mx
    import numpy as np
    from mlxinterp.core import taps as T


    def calls(hm, ids):
        """Logits, every capture, every layer's attention pattern, taps on first and last blocks, generation."""
        v = mx.array(np.random.default_rng(0).normal(size=hm.info.d_model).astype(np.float32))
        last = hm.info.n_layers - 1
        res = {"logits": hm(ids)}
        _, cache = hm.run_with_cache(ids)
        patterns = hm.names(lambda n: n.endswith("attn.hook_pattern"))  # global names: the same on every rank
        if patterns:
            pc = hm.run_with_cache(ids, names=patterns, logits=False)[1]
            res.update({"pattern/" + n: pc[n] for n in patterns})
        with hm.hooks({f"blocks.{last}.hook_resid_pre": T.Add(v, 4.0), "blocks.0.hook_resid_post": T.Add(v, 2.0, positions=[3])}):
            res["steered"] = hm(ids)
        with hm.hooks({f"blocks.{last}.attn.hook_z": T.Ablate("zero", heads=[1])}):
            res["ablated"] = hm(ids)
        res["generated"] = mx.array(hm.generate(ids[0].tolist(), max_tokens=4,
                                                taps={"blocks.1.hook_resid_post": T.Add(v, 3.0, when="generated")}).tokens)
        res["sampled"] = mx.array(hm.generate(ids[0].tolist(), max_tokens=4, temperature=1.0, seed=3).tokens)
        out = {k: np.array(a) for k, a in res.items()}
        out.update({"cache/" + n: np.array(cache[n]) for n in cache.keys()})
        return out
''')

WORKER = CALLS + textwrap.dedent('''
    import sys
    from mlxinterp.core.pipeline import load_sharded

    for path, out in zip(sys.argv[1::2], sys.argv[2::2]):  # one launch checks several models: ranks start once
        hm = load_sharded(path, dtype="native")
        arrays = calls(hm, mx.array([%(ids)s]))
        if hm.rank == 0:
            np.savez(out, **arrays)
''') % {"ids": IDS}


def _single(path: Path) -> dict:
    """The same calls on the whole model in this process."""
    scope: dict = {}
    exec(CALLS, scope)  # noqa: S102 - this file's own source text, shared with the ranks' script
    return scope["calls"](load(str(path), dtype="native"), mx.array([IDS]))


@needs_launch
@pytest.mark.slow
@pytest.mark.offload  # waits on its ranks: beside the in-process tests (tests/background.py)
@pytest.mark.parametrize("ranks", [2, 3])
def test_sharded_run_equals_one_process(ranks, tmp_path):
    """Every tiny architecture (dense, parallel-block and MoE families) in one launch per rank count."""
    archs = tiny.ARCHS + tiny.MORE_ARCHS  # MORE_ARCHS holds the MoE families too
    _check_sharded([tiny.write_tiny_model(tmp_path / a, a) for a in archs], ranks, tmp_path)


@needs_launch
@pytest.mark.slow
@pytest.mark.offload  # waits on its ranks: beside the in-process tests (tests/background.py)
@pytest.mark.real
def test_sharded_default_model_equals_one_process(tmp_path):
    from mlxinterp.core.loading import default_model_dir

    _check_sharded([default_model_dir()], 2, tmp_path)


def _check_sharded(paths: list[Path], ranks: int, tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    outs = [tmp_path / f"rank0-{i}.npz" for i in range(len(paths))]
    cmd = [LAUNCH, "-n", str(ranks), "--backend", "ring", "-p", str(free_ports(ranks)), "--",
           sys.executable, str(script), *[str(a) for pair in zip(paths, outs) for a in pair]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    for path, out in zip(paths, outs):
        assert out.exists(), (path.name, proc.stderr[-2000:])  # mlx.launch exits 0 even when a rank fails
        got, want = dict(np.load(out)), _single(path)
        assert set(got) == set(want), path.name  # every hook point gathered to rank 0
        for k in sorted(want):
            assert got[k].shape == want[k].shape, (path.name, k)
            assert np.array_equal(got[k], want[k]), (path.name, k, float(np.abs(got[k] - want[k]).max()))


def test_layers_split_contiguously_and_evenly():
    assert [list(r) for r in split_layers(5, 2)] == [[0, 1, 2], [3, 4]]
    assert [len(r) for r in split_layers(26, 3)] == [9, 9, 8]
    with pytest.raises(ShardingError, match="at least one layer"):
        split_layers(2, 3)


def test_sharding_without_a_launcher_is_a_clear_error(tiny_dirs):
    with pytest.raises(ShardingError, match="mlx.launch"):
        load_sharded(str(tiny_dirs[("llama", None)]))

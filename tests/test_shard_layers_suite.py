"""`run-suite --shard layers`: the suite's studies on a model whose layers are split across ranks write the
files of one process.

Each rank holds some of a tiny llama's 4 blocks (core/pipeline.py); every forward, capture, tap, lens and
generation runs across the ranks, and rank 0 writes. The runs use each study's quick profile and are compared
with one single-process run of the same studies: result.json (timings aside), each figure's bytes, the report.

The ranks are started as `mlx.launch -n N --backend ring` starts them on one host (a hostfile of localhost
ports, MLX_RANK per process) but without the launcher's I/O threads, which cost about as much CPU as the
ranks themselves here (2 ranks, 3 studies: 71 s of CPU under mlx.launch, 33 s without it). The tests wait on
their ranks, so they are offloaded to the second pytest process (tests/background.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlxinterp.suite import run_all
from test_distributed import free_ports, outputs

# What each covers beyond forwards and captures: validation the logit lens and a quantized copy of the split
# model; backpatch patching with a reused prefix KV cache and KeepColumns.kept; component_share attention
# scores from weights of blocks other ranks hold (HookedModel.block), with a middle rank on 3 ranks. The
# other studies (all but the four refused) were compared by hand on 2 ranks: docs/bigger-models.md.
TWO_RANKS = ("validation", "backpatch")
THREE_RANKS = ("component_share",)
ARCH = ("llama", None)


def _sharded_run(model: str, studies: tuple[str, ...], ranks: int, tmp_path: Path) -> tuple[Path, str]:
    """`run-suite --shard layers` on `ranks` ring ranks on localhost; (its --out, rank 0's stderr)."""
    out, hosts = tmp_path / f"ranks{ranks}", tmp_path / f"hosts{ranks}.json"
    port = free_ports(ranks)
    hosts.write_text(json.dumps([[f"127.0.0.1:{port + r}"] for r in range(ranks)]))
    cmd = [sys.executable, "-m", "mlxinterp", "run-suite", "--model", model, "--only", ",".join(studies),
           "--quick", "--shard", "layers", "--out", str(out)]
    logs = [(tmp_path / f"rank{r}-of-{ranks}.log").open("w+") for r in range(ranks)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=logs[r], text=True,
                              env={**os.environ, "MLX_RANK": str(r), "MLX_HOSTFILE": str(hosts)})
             for r in range(ranks)]
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:  # a rank left waiting after another failed
                p.kill()
    texts = []
    for f in logs:
        f.seek(0)
        texts.append(f.read())
        f.close()
    assert codes == [0] * ranks, "\n".join(f"rank {r} (exit {c}):\n{t[-3000:]}" for r, (c, t) in
                                             enumerate(zip(codes, texts)))
    return out, texts[0]


@pytest.fixture(scope="module")
def single(tiny_dirs, tmp_path_factory) -> tuple[str, dict]:
    """(model path, the files of one process running every study below)."""
    model = str(tiny_dirs[ARCH])
    ref = tmp_path_factory.mktemp("single")
    run_all([model], only=TWO_RANKS + THREE_RANKS, out=ref, quick=True)
    return model, outputs(ref)


def _check(single: tuple[str, dict], studies: tuple[str, ...], ranks: int, tmp_path: Path) -> None:
    model, want = single
    out, log = _sharded_run(model, studies, ranks, tmp_path)
    assert log.count(": computed") == len(studies), log[-3000:]
    got = outputs(out)
    for name in studies:
        key = next(k for k in got if k.endswith(f"/{name}/result.json"))
        timings = json.loads((out / key).read_text())["timings"]
        assert timings["ranks"] == ranks  # one run on every rank, each map layer-sharded
        assert all(m["ranks"] == ranks and m["shard"] == "layers" for m in timings["maps"].values()), timings
        files = sorted(k for k in got if k.split("/")[1:2] == [name])
        assert files and files == sorted(k for k in want if k.split("/")[1:2] == [name])
        for k in files:
            assert got[k] == want[k], k  # result.json (timings aside) and each figure, byte for byte


@pytest.mark.slow
@pytest.mark.offload  # waits on its ranks: beside the in-process tests (tests/background.py)
def test_two_layer_sharded_ranks_write_the_single_process_results(single, tmp_path):
    _check(single, TWO_RANKS, 2, tmp_path)


@pytest.mark.slow
@pytest.mark.offload  # waits on its ranks: beside the in-process tests (tests/background.py)
def test_three_layer_sharded_ranks_write_the_single_process_results(single, tmp_path):
    _check(single, THREE_RANKS, 3, tmp_path)

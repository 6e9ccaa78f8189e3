"""Sweeps over mx.distributed: 2 local ranks under `mlx.launch` give the single-process JSON.

The launcher runs real processes talking over MLX's ring backend (TCP on
localhost). The tiny-model test is the acceptance test (validation experiment
through the CLI); the stand-in experiments below are fast and cover how items
are shared, resume after a kill, a failing item, and ranks that diverge.
Note: mlx.launch exits 0 even when a rank fails, so these tests read outputs.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlxinterp.suite import distributed
from mlxinterp.suite import list_experiments, run_all

LAUNCH = shutil.which("mlx.launch") or str(Path(sys.executable).parent / "mlx.launch")
needs_launch = pytest.mark.skipif(not Path(LAUNCH).exists(),
                                  reason="mlx.launch is not installed (it comes with the mlx package)")


def free_ports(n: int = 2) -> int:
    """A starting port p with p .. p + n - 1 free (the ring backend listens on one port per rank)."""
    for _ in range(50):
        p = random.randint(20000, 60000)
        socks = [socket.socket() for _ in range(n)]
        try:
            for i, s in enumerate(socks):
                s.bind(("127.0.0.1", p + i))
            return p
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} free consecutive ports")


def launch(args: list[str], env: dict | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    """`mlx.launch -n 2 --backend ring -- python ARGS` (the `--` keeps e.g. --n away from the launcher)."""
    cmd = [LAUNCH, "-n", "2", "--backend", "ring", "-p", str(free_ports()), "--", sys.executable, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def strip(record: dict) -> dict:
    record = dict(record)
    record.pop("timings")
    return record


def outputs(out: Path) -> dict:
    """Every result (timings aside), figure and the report: what must be equal."""
    found = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file() and p.name not in (".lock", "suite.log")):
        rel = path.relative_to(out).as_posix()
        found[rel] = strip(json.loads(path.read_text())) if path.name == "result.json" else path.read_bytes()
    return found


# ------------------------------------------------------------- acceptance


@needs_launch
@pytest.mark.slow
@pytest.mark.offload  # waits on its ranks: beside the in-process tests (tests/background.py)
def test_two_ranks_give_the_single_process_json(tiny_dirs, tmp_path):
    """validation (5 checks) and, when registered, twohop (24 queries = 3 chunks) on a tiny model."""
    model = str(tiny_dirs[("gemma3_text", None)])
    names = ["validation"] + [n for n, _ in list_experiments() if n == "twohop"]
    ref = tmp_path / "single"
    run_all([model], only=names, out=ref, seed=3, n=24)
    out = tmp_path / "two"
    proc = launch(["-m", "mlxinterp", "run-suite", "--model", model, "--only", ",".join(names), "--seed", "3",
                   "--n", "24", "--out", str(out)])
    assert proc.stderr.count(": computed") == len(names), proc.stdout + proc.stderr
    slug = next(p.name for p in ref.iterdir() if p.is_dir())
    for name in names:
        timings = json.loads((out / slug / name / "result.json").read_text())["timings"]
        assert timings["ranks"] == 2 and all(m["ranks"] == 2 for m in timings["maps"].values())  # one run, 2 ranks
    got, want = outputs(out), outputs(ref)
    assert set(got) == set(want) and {"report.md", "report.html", f"{slug}/validation/validation.png"} <= set(got)
    assert got == want  # result.json (timings aside), the figures' bytes and the report
    assert proc.stderr.count("report: ") == 1  # rank 0 alone reports (and writes)


# -------------------------------------------------------------- stand-ins

SCRIPT = textwrap.dedent('''
    import dataclasses, os, signal, sys
    from mlxinterp import suite
    from mlxinterp.suite import registry as reg

    reg._builtin_modules = lambda: []
    RANK = os.environ.get("MLX_RANK", "-")
    KILL, FAIL, CALLS = os.environ.get("KILL", ""), os.environ.get("FAIL", ""), os.environ["CALLS"]

    @dataclasses.dataclass
    class Cfg:
        n: int = 7
        seed: int = 0

    @suite.experiment("squares", Cfg)
    def squares(model, cfg, ctx):
        """One map; the summary depends on every item, in order."""
        n = cfg.n + (1 if os.environ.get("DIVERGE") and RANK == "1" else 0)

        def item(i):
            if KILL == str(i):
                os.kill(os.getpid(), signal.SIGKILL)
            if FAIL == str(i):
                raise ValueError(f"bad item {i}")
            with open(CALLS, "a") as f:
                f.write(f"{RANK}:{i}\\n")
            return {"i": i, "sq": i * i, "r": float(ctx.rng_for("item", i).random()), "nan": float("nan")}

        rows = ctx.map("items", list(range(n)), item)
        return {"rows": rows, "summary": {"weighted": sum(k * r["sq"] for k, r in enumerate(rows))}}

    class Info:
        spec = slug = "m"
        weights_hash = "h"
        def to_dict(self):
            return {"spec": "m", "slug": "m", "weights_hash": "h"}

    class Model:
        def __init__(self, spec):
            self.info = Info()

    suite.run_all(["m"], out=sys.argv[1], load_fn=Model)
''')


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dist") / "run.py"
    path.write_text(SCRIPT)
    return path


def _single(script: Path, out: Path, calls: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CALLS": str(calls), **env})


def _calls(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@needs_launch
@pytest.mark.slow
@pytest.mark.offload  # waits on its ranks: beside the in-process tests (tests/background.py)
def test_resume_a_killed_run_on_two_ranks_shares_only_the_unfinished_items(script, tmp_path):
    ref = tmp_path / "ref"
    assert _single(script, ref, tmp_path / "ref-calls").returncode == 0
    out, calls = tmp_path / "out", tmp_path / "calls"
    assert _single(script, out, calls, KILL="3").returncode == -signal.SIGKILL  # items 0-2 checkpointed
    assert _calls(calls) == ["-:0", "-:1", "-:2"]
    proc = launch([str(script), str(out)], env={"CALLS": str(calls)})
    after = _calls(calls)[3:]
    assert sorted(int(c.split(":")[1]) for c in after) == [3, 4, 5, 6], proc.stderr  # nothing redone
    assert {c.split(":")[0] for c in after} == {"0", "1"}  # both ranks computed
    assert sorted(after) == ["0:3", "0:5", "1:4", "1:6"]  # round robin over the unfinished items
    assert outputs(out) == outputs(ref)
    record = json.loads((out / "m" / "squares" / "result.json").read_text())
    assert record["timings"]["maps"]["items"] == {"items": 7, "reloaded": 3, "ranks": 2,
                                                  "seconds": record["timings"]["maps"]["items"]["seconds"]}
    assert not list(out.rglob(".partial"))


@needs_launch
@pytest.mark.slow
@pytest.mark.offload  # waits on its ranks: beside the in-process tests (tests/background.py)
def test_a_failing_item_on_one_rank_stops_both_and_a_rerun_resumes(script, tmp_path):
    out, calls = tmp_path / "out", tmp_path / "calls"
    proc = launch([str(script), str(out)], env={"CALLS": str(calls), "FAIL": "3"})
    assert "item 3 failed on rank 1: ValueError: bad item 3" in proc.stderr  # rank 0's message
    assert "rank 1's traceback:" in proc.stderr and 'raise ValueError(f"bad item {i}")' in proc.stderr
    assert "Resume with" in proc.stderr and not (out / "m" / "squares" / "result.json").exists()
    assert sorted(_calls(calls)) == ["0:0", "0:2", "1:1"]  # round 2 (items 2, 3) failed as a whole
    assert _single(script, out, calls).returncode == 0  # resumes single-process from items 0, 1
    assert sorted(_calls(calls)[3:]) == ["-:2", "-:3", "-:4", "-:5", "-:6"]


@needs_launch
@pytest.mark.slow
@pytest.mark.offload  # waits on its ranks: beside the in-process tests (tests/background.py)
def test_ranks_that_diverge_stop_with_a_clear_error(script, tmp_path):
    out = tmp_path / "out"
    proc = launch([str(script), str(out)], env={"CALLS": str(tmp_path / "calls"), "DIVERGE": "1"})
    assert "the ranks diverged" in proc.stderr and "map squares/items: 7 items" in proc.stderr
    assert "map squares/items: 8 items" in proc.stderr
    assert not (out / "m" / "squares" / "result.json").exists()


# ------------------------------------------------------- without a launcher


def test_rounds_share_items_round_robin():
    assert distributed.rounds([0, 1, 2, 3, 4], 2) == [[0, 1], [2, 3], [4]]
    assert distributed.rounds([], 3) == []
    assert distributed.rounds([5, 9], 1) == [[5], [9]]


def test_single_process_world_is_a_pass_through(monkeypatch):
    for var in distributed.LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    distributed.world.cache_clear()
    try:
        w = distributed.world()
        assert (w.rank, w.size, w.is_root, w.distributed) == (0, 1, True, False)
        assert w.decide(lambda: {"a": 1}) == {"a": 1}
        assert w.all_gather_json([1, float("inf")]) == [[1, float("inf")]]
        assert distributed.run_round(w, [4], lambda i: i * 10) == [(4, 40)]
        with pytest.raises(KeyError):  # the item's own exception, unchanged
            distributed.run_round(w, [4], lambda i: {}[i])
    finally:
        distributed.world.cache_clear()


def test_launch_variables_without_a_backend_give_a_clear_error(monkeypatch):
    monkeypatch.setenv("MLX_RANK", "0")
    monkeypatch.delenv("MLX_HOSTFILE", raising=False)
    distributed.world.cache_clear()
    try:
        with pytest.raises(distributed.DistributedError, match=r"(?s)MLX_RANK=0.*mlx.launch -n N"):
            distributed.world()
    finally:
        distributed.world.cache_clear()


def test_a_single_ring_rank_runs_as_one_process(monkeypatch, tmp_path):
    """`mlx.launch -n 1` gives an empty hostfile, which mx.distributed.init cannot parse."""
    (tmp_path / "hosts").write_text("\n")
    monkeypatch.setenv("MLX_RANK", "0")
    monkeypatch.setenv("MLX_HOSTFILE", str(tmp_path / "hosts"))
    distributed.world.cache_clear()
    try:
        assert distributed.world().size == 1
    finally:
        distributed.world.cache_clear()


def test_layer_sharding_runs_every_item_on_every_rank():
    """Under --shard layers the ranks share each forward, so each rank computes every item (no gather)."""
    w = distributed.World(rank=1, size=2, group=None, split_items=False)
    assert w.workers == 1 and distributed.rounds([4, 5, 6], w.workers) == [[4], [5], [6]]
    assert distributed.run_round(w, [5], lambda i: i * i) == [(5, 25)]
    assert distributed.World(rank=0, size=3).workers == 3


def test_shard_layers_refuses_what_it_cannot_run_with_a_clear_error(tmp_path, capsys):
    """Before any model loads, exit 2 and nothing written: experiments that need the whole model in one
    process (their `whole_model` reason), a layer split without several ranks, and an unknown mode."""
    from cli_runner import run

    from mlxinterp.suite.registry import get, register_builtin

    register_builtin()
    code, _, err = run(["run-suite", "--model", "default", "--only", "validation,attribution", "--shard", "layers",
                        "--out", str(tmp_path / "o")], capsys)
    err = " ".join(err.split())
    assert code == 2 and "--shard layers cannot run attribution (it differentiates through every layer" in err, err
    assert "--skip attribution" in err
    # every other experiment runs layer-sharded (tests/test_shard_layers_suite.py)
    assert sorted(n for n, _ in list_experiments() if get(n).whole_model) == \
        ["attribution", "attribution_patching", "precision_patching", "quantization"]
    code, _, err = run(["run-suite", "--model", "default", "--only", "validation", "--shard", "layers",
                        "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--shard layers needs at least 2 ranks" in " ".join(err.split()), err
    code, _, err = run(["run-suite", "--model", "default", "--only", "validation", "--shard", "heads",
                        "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "shard='heads' is not allowed" in err, err
    assert not (tmp_path / "o").exists()

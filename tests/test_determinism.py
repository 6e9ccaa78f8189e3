"""Determinism: the same seed gives the same bytes, across processes; a different seed does not.

The suite runs as a user runs it (`python -m mlxinterp run-suite`), twice with
different PYTHONHASHSEED values so nothing can depend on Python's per-process
hash salt, on a tiny real model. Everything that may vary between runs lives
under "timings"; the rest of result.json and the figure must match byte for byte.
Library calls that take a seed (sampling, bootstrap, split halves) are checked
in-process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlxinterp.analysis import directions as D
from mlxinterp.core import io
from mlxinterp.analysis import patching as P
from mlxinterp.analysis.lens import logit_lens

sys.path.insert(0, str(Path(__file__).parent))  # run as a script (the background job) too
import background  # noqa: E402

ARCH = ("gemma3_text", None)


PLAN = {"seed3-a": (3, "1"), "seed3-b": (3, "2"), "seed4": (4, "1")}  # run: (seed, PYTHONHASHSEED)


def _suite(model: str, out: Path, seed: int, hash_seed: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    return subprocess.Popen([sys.executable, "-m", "mlxinterp", "run-suite", "--model", model, "--only", "validation",
                             "--n", "8", "--seed", str(seed), "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def run_plan(root: Path) -> None:
    """The background job: a tiny Gemma 3 checkpoint (tests/tiny.py, as the session's tiny_dirs writes it), then
    the three suite runs at once (independent processes and directories)."""
    import tiny

    model = str(tiny.write_tiny_model(root / "model", *ARCH))
    procs = {name: _suite(model, root / name, seed, hash_seed) for name, (seed, hash_seed) in PLAN.items()}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        if proc.returncode:
            raise SystemExit(f"{name}: exit {proc.returncode}\n{err[-3000:]}")


JOB = background.define(background.Job("determinism-suite-runs", background.python(__file__), timeout=900))


def _without_timings(out: Path) -> tuple[str, bytes]:
    """(result.json re-serialised without its timings, the figure's bytes)."""
    exp = next(out.glob("*/validation"))
    record = json.loads((exp / "result.json").read_text())
    record.pop("timings")
    return io.dumps(record), (exp / "validation.png").read_bytes()


@pytest.fixture(scope="module")
def runs() -> dict[str, tuple[str, bytes]]:
    r = background.result(JOB.name)
    assert r.returncode == 0, r.stderr[-4000:]
    return {name: _without_timings(r.cwd / name) for name in PLAN}


@pytest.mark.background(JOB.name)
@pytest.mark.timeout(background.WAIT_TIMEOUT)
def test_same_seed_gives_identical_json_and_figure(runs):
    assert runs["seed3-a"][0] == runs["seed3-b"][0]
    assert runs["seed3-a"][1] == runs["seed3-b"][1]
    assert json.loads(runs["seed3-a"][0])["status"] == "complete"


@pytest.mark.background(JOB.name)
@pytest.mark.timeout(background.WAIT_TIMEOUT)
def test_a_different_seed_changes_the_result(runs):
    """Otherwise the seed would be decoration and the equality above would prove nothing."""
    a, b = json.loads(runs["seed3-a"][0]), json.loads(runs["seed4"][0])
    assert a["seed"] == 3 and b["seed"] == 4
    assert a["result"] != b["result"]


def test_sampling_is_seeded(tiny_hooked):
    hm = tiny_hooked(*ARCH)
    runs = [hm.generate("The city of", max_tokens=12, temperature=1.0, seed=s).tokens for s in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_library_results_repeat_exactly(tiny_hooked):
    """Lens, patching sweep and direction extraction: two calls, identical numbers."""
    hm = tiny_hooked(*ARCH)
    ids = [1, 287, 414, 417, 279, 280, 300, 301]
    metric = P.logit_diff(hm, 5, 7)
    first = [logit_lens(hm, "The city of", targets=[" Paris"], grid=True).to_dict(),
             P.patch_sweep(hm, ids, ids[:1] + [290] + ids[2:], metric).metric,
             {l: d.vector.tolist() for l, d in D.extract(hm, ["a b c", "d e"], ["f g", "h i j"], layers=[1, 2]).items()}]
    second = [logit_lens(hm, "The city of", targets=[" Paris"], grid=True).to_dict(),
              P.patch_sweep(hm, ids, ids[:1] + [290] + ids[2:], metric).metric,
              {l: d.vector.tolist() for l, d in D.extract(hm, ["a b c", "d e"], ["f g", "h i j"], layers=[1, 2]).items()}]
    assert io.dumps(first) == io.dumps(second)
    split = [D.split_half_cosine(np.arange(40.0).reshape(10, 4) ** 1.5, np.ones((10, 4)), np.random.default_rng(s))
             for s in (0, 0)]
    assert split[0] == split[1]
    assert mx.array_equal(hm(mx.array([ids])), hm(mx.array([ids])))


if __name__ == "__main__":  # the background job, in its own empty directory
    run_plan(Path.cwd())

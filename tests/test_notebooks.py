"""docs/notebooks/ run top to bottom in a real Jupyter kernel (nbclient), figures inline.

On a tiny random model (every run) and on the default model (marked real). The kernel is
this interpreter's ipykernel, started with this process's environment (so with OpenBLAS
preloaded when the tests are), in an empty working directory. The default-model run is a
background job (tests/background.py): this file run as a script executes a notebook and prints it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # run as a script (the background job) too
import background  # noqa: E402

nbformat = pytest.importorskip("nbformat", reason="the test extra installs nbformat, nbclient and ipykernel")
nbclient = pytest.importorskip("nbclient", reason="the test extra installs nbformat, nbclient and ipykernel")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "docs" / "notebooks").glob("*.ipynb"))


def execute(path: Path, model: str, cwd: Path, monkeypatch=None) -> nbformat.NotebookNode:
    if monkeypatch is None:  # the background job: its own process
        os.environ["MLXINTERP_NOTEBOOK_MODEL"] = model
    else:
        monkeypatch.setenv("MLXINTERP_NOTEBOOK_MODEL", model)
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=900, resources={"metadata": {"path": str(cwd)}})
    client.execute(cwd=str(cwd))
    return nb


def _outputs(nb, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if kind in o.get("data", {}) or o.get("output_type") == kind]


def _check(nb) -> None:
    assert not _outputs(nb, "error")
    images = _outputs(nb, "image/png")
    assert len(images) >= 3, f"{len(images)} inline figures"  # lens, patching sweep, attention patterns
    text = "".join(o.get("text", "") for o in _outputs(nb, "stream"))
    for needle in ("rank of ' Paris'", "steered +8%", "patches in", "BLAS:"):
        assert needle in text, needle


def test_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["quickstart.ipynb"]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_a_tiny_model(path, tiny_dirs, tmp_path, monkeypatch):
    nb = execute(path, str(tiny_dirs[("gemma3_text", None)]), tmp_path, monkeypatch)
    _check(nb)
    assert sorted(os.listdir(tmp_path)) == []  # a notebook writes nothing by itself


def _default_model_job(path: Path):
    name = f"notebook-{path.stem}"
    background.define(background.Job(name, background.python(__file__, str(path), "default"), real=True))
    return pytest.param(path, marks=pytest.mark.background(name), id=path.stem)


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("path", [_default_model_job(p) for p in NOTEBOOKS])
@pytest.mark.timeout(background.WAIT_TIMEOUT)
def test_notebook_runs_on_the_default_model(path):
    if os.environ.get("MLXINTERP_SKIP_REAL"):
        pytest.skip("MLXINTERP_SKIP_REAL is set")
    r = background.result(f"notebook-{path.stem}")
    assert r.returncode == 0, r.stderr[-4000:]
    nb = nbformat.reads(r.stdout, as_version=4)
    _check(nb)
    if sys.platform == "linux":
        blas = "".join(o.get("text", "") for o in _outputs(nb, "stream"))
        assert "OpenBLAS" in blas or "LD_PRELOAD" not in os.environ, "the kernel runs without OpenBLAS"


if __name__ == "__main__":  # the background job: execute notebook argv[1] on model argv[2] here, print it
    sys.stdout.write(nbformat.writes(execute(Path(sys.argv[1]), sys.argv[2], Path.cwd())))

"""The built wheel works anywhere: installed into a fresh venv, run from an unrelated directory,
the suite finds its prompt sets (package data) and writes only where --out says.

Offline and fast: the wheel is built without build isolation (setuptools from the test extra),
and the fresh venv borrows this environment's installed dependencies through a plain path
line (so pip installs only the wheel itself, --no-deps). Nothing of the checkout is on its path.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.offload]  # waits on pip and a suite run: beside the in-process tests


def _build_wheel(tmp: Path) -> Path:
    """`pip wheel --no-deps` of a copy of the sources (a build in the checkout would leave build/ there)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "mlxinterp", src / "mlxinterp", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                        "-w", str(tmp / "dist")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("mlxinterp-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built once for both tests (each build copies the sources and runs pip)."""
    return _build_wheel(tmp_path_factory.mktemp("wheel"))


def test_wheel_ships_the_prompt_sets_and_no_results(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    data = {n.split("mlxinterp/data/", 1)[1] for n in names if n.startswith("mlxinterp/data/")}
    shipped = {str(p.relative_to(ROOT / "mlxinterp" / "data")) for p in (ROOT / "mlxinterp" / "data").rglob("*.json")}
    assert shipped and shipped <= data, sorted(shipped - data)
    assert not [n for n in names if n.startswith(("results/", "tests/", "bench/"))]


def test_installed_wheel_runs_the_suite_from_an_unrelated_directory(wheel, tmp_path, tiny_dirs):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")]
    Path(site, "borrowed-deps.pth").write_text("\n".join(deps) + "\n")  # plain paths: their .pth files do not run
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLXINTERP_DATA")}
    where = subprocess.run([str(py), "-c", "import mlxinterp, mlxinterp.tasks.data as d; print(mlxinterp.__file__); "
                            "print(d.DATA_DIR)"], cwd=work, capture_output=True, text=True, env=env, check=True)
    module, data_dir = where.stdout.split()
    assert module.startswith(str(env_dir)) and data_dir.startswith(str(env_dir)), where.stdout

    model = tiny_dirs[("llama", None)]
    r = subprocess.run([str(env_dir / "bin" / "mlxinterp"), "run-suite", "--model", str(model), "--only", "validation",
                        "--out", "out"], cwd=work, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[INFO]" not in r.stdout + r.stderr  # mlx-lm's quantize_model prints "[INFO] Quantized model with ..."
    (result,) = (work / "out").glob("*/validation/result.json")
    record = json.loads(result.read_text())
    assert record["status"] == "complete" and record["result"]["summary"]
    assert sorted(p.name for p in work.iterdir()) == ["out"]  # nothing written beside --out

"""Fast BLAS everywhere on Linux: the venv's .pth re-executes Python once with OpenBLAS preloaded
(python, pytest, Jupyter kernels), and `import mlxinterp` elsewhere warns once with the fix."""
from __future__ import annotations

import os
import subprocess
import sys
import venv

import pytest

from mlxinterp.core.platform import find_openblas, startup_preload_line

LIB = find_openblas()
pytestmark = pytest.mark.skipif(sys.platform != "linux" or LIB is None, reason="Linux with OpenBLAS installed only")
PLAIN = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MLXINTERP_BLAS_REEXEC", "MLXINTERP_NO_BLAS_REEXEC")}
SHOW = ("import os, sys; print(os.environ.get('LD_PRELOAD')); print(sys.argv[1:]); "
        "print(any('openblas' in l for l in open('/proc/self/maps')))")


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory):
    """A fresh venv holding only the line scripts/run.sh writes (no pip: it is not needed)."""
    root = tmp_path_factory.mktemp("blas-venv")
    venv.EnvBuilder(with_pip=False).create(root)
    py = root / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=PLAIN,
                          capture_output=True, text=True, check=True).stdout.strip()
    (root / site / "mlxinterp-openblas.pth").write_text(startup_preload_line(LIB))
    return py


def test_venv_python_restarts_once_with_openblas_mapped(venv_python):
    r = subprocess.run([str(venv_python), "-c", SHOW, "a b", "--flag"], env=PLAIN, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [LIB, "['a b', '--flag']", "True"]  # same argv, OpenBLAS in the process


def test_opt_out_and_existing_preload_are_respected(venv_python):
    r = subprocess.run([str(venv_python), "-c", SHOW], env={**PLAIN, "MLXINTERP_NO_BLAS_REEXEC": "1"},
                       capture_output=True, text=True)
    assert r.stdout.splitlines() == ["None", "[]", "False"]
    r = subprocess.run([str(venv_python), "-c", SHOW], env={**PLAIN, "LD_PRELOAD": LIB}, capture_output=True, text=True)
    assert r.stdout.splitlines()[0] == LIB  # not doubled


def test_import_without_openblas_warns_once_with_the_fix():
    code = "import mlxinterp; import mlxinterp.core.hooks; import mlxinterp.analysis.lens"
    r = subprocess.run([sys.executable, "-c", code], env={**PLAIN, "MLXINTERP_NO_BLAS_REEXEC": "1"},
                       capture_output=True, text=True)
    warnings = [l for l in r.stderr.splitlines() if "RuntimeWarning" in l]
    assert r.returncode == 0 and len(warnings) == 1, r.stderr
    assert f"export LD_PRELOAD={LIB}" in warnings[0] and "slower" in warnings[0]


def test_no_warning_when_preloaded_or_in_the_cli():
    r = subprocess.run([sys.executable, "-c", "import mlxinterp"], env={**PLAIN, "LD_PRELOAD": LIB},
                       capture_output=True, text=True)
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "mlxinterp", "run-suite", "--list"],
                       env={**PLAIN, "MLXINTERP_NO_BLAS_REEXEC": "1"}, capture_output=True, text=True)
    assert "Warning" not in r.stderr, r.stderr

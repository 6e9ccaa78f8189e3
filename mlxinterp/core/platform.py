"""Where we run: device, BLAS interposition, memory and cache directory.

MLX's Linux CPU wheel links a slow reference BLAS. Preloading OpenBLAS (when
the machine has it) makes float32 matmuls ~15x faster, but the preload must be
in the environment when the process starts, so the CLI re-executes itself once
with LD_PRELOAD set. Nothing here assumes a CPU: on a Mac with Metal none of
the BLAS logic runs.
"""
from __future__ import annotations

# mlx is imported only inside the few functions that measure or query it: the CLI consults this
# module before it re-executes itself with OpenBLAS preloaded, which must happen before MLX loads.

import glob
import os
import platform as _platform
import re
import sys
from pathlib import Path

from mlxinterp.core.errors import EnvVarError
from mlxinterp.core.validate import env_bytes, env_flag, parse_bytes  # noqa: F401  (parse_bytes: re-exported for the CLI)

_REEXEC_FLAG = "MLXINTERP_BLAS_REEXEC"
_OPENBLAS_GLOBS = (
    "/usr/lib/*-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/*-linux-gnu/openblas-openmp/libblas.so.3",
    "/usr/lib/*-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas*.so*",
)


# Where ad-hoc commands (lens, run-suite without --out) write: a folder of the working directory
# that .gitignore ignores, never a committed folder of the repository such as results/.
USER_OUT = Path("mlxinterp-out")
SUITE_OUT = USER_OUT / "suite"  # run-suite's default --out; results/ is the committed reference


def cache_dir() -> Path:
    """mlxinterp's own cache (imported models); MLXINTERP_CACHE overrides."""
    env = os.environ.get("MLXINTERP_CACHE")
    if env:
        path = Path(env).expanduser()
        try:
            bad = path.exists() and not path.is_dir()
        except (OSError, ValueError):  # a name too long for the OS, or a NUL byte
            bad = True
        if bad:
            raise EnvVarError(f"environment variable MLXINTERP_CACHE={env[:80]!r} is not a directory",
                                 hint="point it at a writable directory (it is created if missing), or unset it")
        return path
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mlxinterp"


def check_environment() -> None:
    """Parse every MLXINTERP_* variable once, so a malformed one is a clear error before any work
    (the CLI calls this first; the library parses each where it is used)."""
    env_bytes("MLXINTERP_MEMORY_LIMIT")
    env_flag("MLXINTERP_ALLOW_DOWNLOAD")
    env_flag("MLXINTERP_DEBUG")
    cache_dir()


def default_device() -> str:
    """'gpu' on Metal, else 'cpu'. Imported lazily so `--help` stays fast."""
    import mlx.core as mx

    return "gpu" if mx.metal.is_available() else "cpu"


def find_openblas() -> str | None:
    """Path of an OpenBLAS library that can be interposed under MLX, or None."""
    if sys.platform != "linux":
        return None
    for pattern in _OPENBLAS_GLOBS:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[0]
    return None


def openblas_interposed() -> bool:
    """True when this process started with OpenBLAS in LD_PRELOAD."""
    pre = os.environ.get("LD_PRELOAD", "")
    return any("openblas" in p or "libblas" in p for p in pre.split(":") if p)


def ensure_fast_blas(argv: list[str] | None = None) -> None:
    """Re-exec the current command once with OpenBLAS preloaded, when useful.

    No-op on macOS, when already preloaded, when OpenBLAS is absent, or when
    MLXINTERP_NO_BLAS_REEXEC is set (for measuring the difference).
    """
    if sys.platform != "linux" or openblas_interposed():
        return
    if os.environ.get(_REEXEC_FLAG) or os.environ.get("MLXINTERP_NO_BLAS_REEXEC"):
        return
    lib = find_openblas()
    if lib is None:
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
    env[_REEXEC_FLAG] = "1"
    args = argv if argv is not None else sys.argv
    os.execve(sys.executable, [sys.executable, *_reexec_args(args)], env)


# Measured on this project's 2-core Linux machine, default model, 21-token prompt (README "Models").
BLAS_SLOWDOWN = "~16x slower float32 matmuls (default model forward: 3.21 s without, 0.195 s with OpenBLAS)"


def startup_preload_line(lib: str) -> str:
    """The one line scripts/run.sh writes into the venv's `mlxinterp-openblas.pth`.

    Python runs `import` lines of .pth files at every interpreter start, before any user code, so
    `python`, `pytest` and a Jupyter kernel of that venv re-execute themselves once (same pid,
    same argv: sys.orig_argv) with OpenBLAS in LD_PRELOAD - the only way to interpose it, since the
    dynamic loader reads LD_PRELOAD at process start. The line is self-contained (it must not
    import mlxinterp at every start) and follows ensure_fast_blas's rules: Linux only, once,
    never when MLXINTERP_NO_BLAS_REEXEC is set or a BLAS is already preloaded.
    """
    return ("import os, sys; sys.platform == 'linux' and hasattr(sys, 'orig_argv') "
            f"and not os.environ.get('{_REEXEC_FLAG}') and not os.environ.get('MLXINTERP_NO_BLAS_REEXEC') "
            f"and 'blas' not in os.environ.get('LD_PRELOAD', '') and os.path.exists({lib!r}) "
            "and os.execve(sys.executable, sys.orig_argv, {**os.environ, "
            f"'LD_PRELOAD': ':'.join(p for p in ({lib!r}, os.environ.get('LD_PRELOAD', '')) if p), "
            f"'{_REEXEC_FLAG}': '1'}})\n")


def slow_blas_warning() -> str | None:
    """The one-line warning for a Linux process that runs MLX without the OpenBLAS it could have
    (None when there is nothing to fix: macOS, OpenBLAS absent, or already preloaded)."""
    if sys.platform != "linux" or openblas_interposed():
        return None
    lib = find_openblas()
    if lib is None:
        return None
    return (f"OpenBLAS is installed but not preloaded in this process: MLX runs {BLAS_SLOWDOWN}. "
            f"Fix: `export LD_PRELOAD={lib}` before starting Python (the `mlxinterp` command, and "
            "python/pytest/Jupyter in the venv scripts/run.sh creates, do it by themselves).")


def _is_cli() -> bool:
    """True in the `mlxinterp` command, which re-executes itself with OpenBLAS (ensure_fast_blas)."""
    argv = getattr(sys, "orig_argv", sys.argv)
    return Path(sys.argv[0]).name == "mlxinterp" or any(
        a == "-m" and b == "mlxinterp" for a, b in zip(argv, argv[1:]))


def warn_if_slow_blas() -> None:
    """warnings.warn once (at `import mlxinterp`) when OpenBLAS could be preloaded but is not."""
    import warnings

    msg = None if _is_cli() else slow_blas_warning()
    if msg:
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _reexec_args(argv: list[str]) -> list[str]:
    """argv for `python ...` that re-runs the same entry point."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        name = spec.name[: -len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        return ["-m", name, *argv[1:]]
    return list(argv)


def total_memory_bytes() -> int:
    """Physical memory; MLXINTERP_MEMORY_LIMIT (bytes, or e.g. '8GB') fakes a smaller machine."""
    fake = env_bytes("MLXINTERP_MEMORY_LIMIT")
    if fake:
        return fake
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - exotic OS
        return 16 * 1024**3


def blas_in_use() -> str:
    """Which BLAS MLX's CPU matmuls call: read from the libraries mapped into this process.

    A preloaded OpenBLAS wins symbol resolution over the reference BLAS that MLX's Linux wheel
    bundles (mlx_cpu.libs/libblas-*), so the first BLAS mapped is the one in use.
    """
    import mlx.core  # noqa: F401 - maps MLX's own BLAS

    if sys.platform == "darwin":
        return "Accelerate (macOS)"
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    libs = list(dict.fromkeys(line.split()[-1] for line in maps.splitlines()
                              if "/" in line and re.search(r"lib(open)?blas", line.rsplit("/", 1)[-1])))
    opened = [l for l in libs if "openblas" in l]
    if opened and openblas_interposed():
        return f"OpenBLAS ({opened[-1]}), preloaded over MLX's bundled BLAS"
    bundled = [l for l in libs if "mlx" in l]
    return f"MLX's bundled reference BLAS ({bundled[0]})" if bundled else (libs[0] if libs else "unknown")


def available_memory_bytes() -> int | None:
    """Memory available to a new process (Linux MemAvailable), None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def matmul_gflops(n: int = 512, rounds: int = 3) -> float:
    """Measured float32 matmul speed (best of `rounds`): the check that settles which BLAS runs."""
    import time

    import mlx.core as mx

    a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
    mx.eval(a @ b)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        mx.eval(a @ b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def describe() -> dict:
    """Platform facts for `mlxinterp doctor` and for every result's provenance."""
    import mlx.core as mx

    return {
        "python": _platform.python_version(),
        "system": f"{_platform.system()} {_platform.machine()}",
        "mlx": mx.__version__,
        "device": default_device(),
        "openblas_available": find_openblas(),
        "openblas_interposed": openblas_interposed(),
        "blas_in_use": blas_in_use(),
        "memory_bytes": total_memory_bytes(),
        "memory_available_bytes": available_memory_bytes(),
        "cache_dir": str(cache_dir()),
    }

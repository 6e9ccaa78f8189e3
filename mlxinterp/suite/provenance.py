"""Provenance of a result (versions, git commit) and the fingerprint that decides what resumes."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from mlxinterp.core import io
from mlxinterp.core.errors import MlxInterpError, ResultsError
from mlxinterp.core.platform import openblas_interposed
from mlxinterp.suite import preregistration

FORMAT_VERSION = 1


# ------------------------------------------------------------------ provenance


def versions() -> dict[str, str | None]:
    """Versions that can change a result; read from package metadata (no heavy imports).

    Also the BLAS kernel family on a CPU: OpenBLAS picks its kernels per processor unless
    OPENBLAS_CORETYPE pins them, and float32 results then differ in the 7th digit (enough to
    move a borderline count by one), so a reproduction must match it too.
    """
    out: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in (("mlx", "mlx"), ("mlx_lm", "mlx-lm"), ("numpy", "numpy"), ("mlxinterp", "mlxinterp")):
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = None
    if openblas_interposed():
        out["openblas_coretype"] = os.environ.get("OPENBLAS_CORETYPE") or "auto (this processor's)"
    return out


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """HEAD of the repo mlxinterp runs from, or None (not a checkout, no git, no commits)."""
    root = Path(__file__).resolve().parents[2]
    try:
        proc = subprocess.run(["git", "-C", str(root), "rev-parse", "--verify", "-q", "HEAD"],
                              capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def preregistration_sha256() -> str | None:
    """sha256 of the pre-registration file the run's checks were judged against (None when absent).

    A result's PASS/FAIL means something only against thresholds fixed before the run; the hash
    lets a reader confirm which version of mlxinterp/data/preregistration.toml that was.
    """
    try:
        return preregistration.sha256()
    except MlxInterpError:
        return None


def fingerprint(config: Any, info: Any, seed: int) -> dict:
    """What must match for finished work to be reused."""
    return {"format_version": FORMAT_VERSION, "config": io.normalize(dataclasses.asdict(config)),
            "weights_hash": info.weights_hash, "seed": seed}


def fingerprint_of(record: dict) -> dict:
    return {"format_version": record.get("format_version"), "config": record.get("config"),
            "weights_hash": (record.get("model") or {}).get("weights_hash"), "seed": record.get("seed")}


def differences(old: dict, new: dict) -> list[str]:
    """Human-readable list of what differs between a stored and a requested fingerprint."""
    diffs = []
    if old["format_version"] != new["format_version"]:
        diffs.append(f"format version {old['format_version']} (this mlxinterp writes {new['format_version']})")
    if old["weights_hash"] != new["weights_hash"]:
        diffs.append(f"model weights hash {old['weights_hash']} (now {new['weights_hash']})")
    if old["seed"] != new["seed"]:
        diffs.append(f"seed {old['seed']} (now {new['seed']})")
    old_cfg, new_cfg = old["config"] or {}, new["config"]
    for key in sorted(set(old_cfg) | set(new_cfg)):
        if old_cfg.get(key, "<absent>") != new_cfg.get(key, "<absent>"):
            diffs.append(f"config.{key} {old_cfg.get(key, '<absent>')!r} (now {new_cfg.get(key, '<absent>')!r})")
    return diffs


def mismatch(path: Path, diffs: list[str]) -> ResultsError:
    return ResultsError(f"cannot resume: {path} was made with different settings: " + "; ".join(diffs),
                        hint="rerun with --no-resume to recompute it, or write to another --out")



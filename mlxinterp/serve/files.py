"""The only files the explorer touches: under the results directory (read) and the vectors directory
(read, and uploads written into its `uploads/` folder).

A path from a request is a relative path inside one of those roots. It is refused when it is
absolute, holds a `..` part, a NUL or a backslash, or when it resolves (symlinks followed) outside
the root: a symlink inside the results directory that points at /etc is refused like `../../etc`.
"""
from __future__ import annotations

import base64
import re
from pathlib import Path, PurePosixPath

from safetensors import safe_open

from mlxinterp.core.io import atomic_write_bytes, write_json
from mlxinterp.serve.engine import RequestError

# What the results browser serves, and as what: report pages, figures, result JSON, discussion notes.
CONTENT_TYPES = {".png": "image/png", ".svg": "image/svg+xml", ".json": "application/json",
                 ".md": "text/plain; charset=utf-8", ".html": "text/html; charset=utf-8",
                 ".txt": "text/plain; charset=utf-8", ".csv": "text/plain; charset=utf-8"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAX_LISTED = 2000
_MAX_GGUF_BYTES = 64 << 20  # a control vector is d_model x layers floats; anything bigger is a model


class PathRefused(RequestError):
    """A path outside the configured directories (answered with HTTP 403)."""


class NotFound(RequestError):
    """A path inside the configured directories that does not exist (HTTP 404)."""


def resolve_under(root: Path, rel: str) -> Path:
    """`root / rel`, refusing anything that would leave `root` (see module doc)."""
    if not isinstance(rel, str) or "\x00" in rel or "\\" in rel:
        raise PathRefused(f"path {rel!r:.80} is not allowed")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or rel.startswith("~"):
        raise PathRefused(f"path {rel!r:.80} is outside the served directory; give a path relative to it, "
                          "without '..'")
    base = root.resolve()
    target = (base / pure).resolve()
    if target != base and base not in target.parents:
        raise PathRefused(f"path {rel!r:.80} resolves outside the served directory")
    if not target.exists():
        raise NotFound(f"{rel!r:.80} does not exist under the served directory")
    return target


def list_results(root: Path) -> dict:
    """Runs on disk: results/<model>/<experiment>/ with their result.json and figures, and the reports."""
    root = root.resolve()
    if not root.is_dir():
        return {"root": str(root), "exists": False, "reports": [], "runs": []}
    reports = [p.name for p in (root / "report.html", root / "report.md") if p.is_file()]
    runs = []
    for model in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        exps = []
        for exp in sorted(p for p in model.iterdir() if p.is_dir()):
            if not _inside(exp, root):
                continue
            files = sorted(f.name for f in exp.iterdir() if f.is_file() and f.suffix in CONTENT_TYPES and _inside(f, root))
            if "result.json" in files or any(f.endswith(".png") for f in files):
                exps.append({"name": exp.name, "path": f"{model.name}/{exp.name}", "files": files})
        if exps:
            runs.append({"model": model.name, "experiments": exps})
        elif model.name == "discussion":
            notes = sorted(f.name for f in model.glob("*.md"))
            runs.append({"model": model.name, "experiments": [], "notes": notes})
    return {"root": str(root), "exists": True, "reports": reports, "runs": runs}


def _inside(path: Path, root: Path) -> bool:
    r = path.resolve()
    return r == root or root in r.parents


def list_vectors(root: Path) -> list[dict]:
    """Steering vectors under `root`: Direction pairs (NAME.safetensors + NAME.json), per-layer files
    (import-vector), and llama.cpp control vectors (.gguf)."""
    root = root.resolve()
    if not root.is_dir():
        return []
    found = []
    for p in sorted(root.rglob("*")):
        if len(found) >= _MAX_LISTED:
            break
        if not p.is_file() or not _inside(p, root) or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        rel = p.relative_to(root).as_posix()
        if p.suffix == ".safetensors":
            kind = "direction" if p.with_suffix(".json").is_file() else _per_layer_kind(p)
            if kind:
                found.append({"path": rel, "kind": kind})
        elif p.suffix == ".gguf" and p.stat().st_size <= _MAX_GGUF_BYTES:
            found.append({"path": rel, "kind": "llama.cpp control vector"})
    return found


def _per_layer_kind(path: Path) -> str | None:
    """'per-layer' when the file's tensors are layer.N (what import-vector writes), else None."""
    try:
        with safe_open(str(path), "np") as f:
            keys = list(f.keys())
    except Exception:  # unreadable files are simply not offered
        return None
    return "per-layer" if keys and all(re.fullmatch(r"layer\.\d+", k) for k in keys) else None


def save_upload(root: Path, body: dict, limit: int) -> Path:
    """Write an uploaded vector into root/uploads/: {"name", "gguf": b64} or {"name", "safetensors": b64,
    "json": {...}} (a Direction) or {"name", "safetensors": b64} (per-layer). Returns the stored path."""
    name = body.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.endswith((".json", ".safetensors", ".gguf")):
        raise RequestError(f"name {name!r:.80} is not allowed; use 1-64 letters, digits, '_', '-' or '.', "
                           "without an extension")
    kinds = [k for k in ("gguf", "safetensors") if k in body]
    if len(kinds) != 1:
        raise RequestError("give exactly one of 'gguf' or 'safetensors' (base64 file contents)")
    data = _b64(body[kinds[0]], kinds[0], limit)
    folder = root.resolve() / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.{kinds[0]}"
    if kinds[0] == "safetensors" and body.get("json") is not None:
        meta = body["json"]
        if not isinstance(meta, dict):
            raise RequestError("'json' must be the Direction's JSON object (the NAME.json Direction.save writes)")
        write_json(folder / f"{name}.json", meta)
    elif kinds[0] == "safetensors":
        (folder / f"{name}.json").unlink(missing_ok=True)  # a stale sidecar would turn it into a Direction
    atomic_write_bytes(target, data)
    return target


def _b64(text, what: str, limit: int) -> bytes:
    if not isinstance(text, str):
        raise RequestError(f"'{what}' must be base64 text")
    if len(text) > limit * 4 // 3 + 4:
        raise RequestError(f"'{what}' is larger than the {limit >> 20} MB upload limit")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise RequestError(f"'{what}' is not valid base64") from None


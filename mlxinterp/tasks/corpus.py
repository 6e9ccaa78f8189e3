"""A plain-text corpus for training readouts (SAEs, tuned lens): files -> fixed-length token windows.

Default corpus: the reStructuredText sources of the Python 3.11 documentation that
Debian's `python3.11-doc` package installs (`apt-get install python3.11-doc`;
/usr/share/doc/python3.11/html/_sources, 497 files, 11 MB of English prose and code;
PSF License, see data/README.md). Any text file or directory replaces it.

Files are split into train and held-out sets by a hash of their relative path, so
the split is the same on every machine and does not move when files are added.
Each window is BOS + `ctx_len - 1` tokens of one file's running text.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mlxinterp.core.errors import MlxInterpError

DEFAULT_CORPUS_DIRS = (
    Path("/usr/share/doc/python3.11/html/_sources"),
    Path("/usr/share/doc/python3/html/_sources"),
)
TEXT_SUFFIXES = (".txt", ".rst", ".md", ".text")
SPLITS = ("train", "heldout", "all")


class CorpusError(MlxInterpError):
    """The corpus path has no readable text."""


def default_corpus() -> Path:
    for d in DEFAULT_CORPUS_DIRS:
        if d.is_dir():
            return d
    raise CorpusError("no default corpus: the Python documentation sources are not installed",
                      hint="`apt-get install python3.11-doc` (Debian/Ubuntu), or pass --corpus FILE_OR_DIR with any text")


def corpus_files(path: str | Path | None = None, split: str = "train", heldout_frac: float = 0.1) -> list[Path]:
    """Text files under `path` (or the default corpus) in a fixed order, restricted to one split."""
    if split not in SPLITS:
        raise CorpusError(f"split={split!r} is not allowed; use one of {', '.join(SPLITS)}")
    root = Path(path) if path is not None else default_corpus()
    if not root.exists():
        raise CorpusError(f"corpus path {str(root)!r} does not exist", hint="give a text file or a directory of .txt/.rst/.md files")
    if root.is_file():
        return [root]  # one file: the caller splits it by windows instead (see windows(heldout=...))
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(TEXT_SUFFIXES))
    if not files:
        raise CorpusError(f"{root} holds no {'/'.join(TEXT_SUFFIXES)} files")
    if split == "all":
        return files
    held = [f for f in files if _bucket(f.relative_to(root)) < heldout_frac]
    chosen = held if split == "heldout" else [f for f in files if f not in set(held)]
    if not chosen:
        raise CorpusError(f"{root}: the {split} split is empty ({len(files)} files)", hint="use more files or split='all'")
    return chosen


def _bucket(rel: Path) -> float:
    """A stable number in [0, 1) for a file's relative path."""
    return int(hashlib.sha256(str(rel).encode()).hexdigest()[:8], 16) / 16**8


def windows(tokenizer, bos_id: int | None, path: str | Path | None = None, split: str = "train",
            ctx_len: int = 128, seed: int = 0, skip: int = 0) -> Iterator[np.ndarray]:
    """int32 token windows [ctx_len]: BOS (when the model uses one) + running text of one file.

    Files are visited in a seeded shuffled order (topics mix within a batch);
    `skip` windows are passed over without being returned (resuming a collection).
    A single-file corpus is split by windows: every 10th window is held out.
    """
    if isinstance(ctx_len, bool) or not isinstance(ctx_len, int) or ctx_len < 8:
        raise CorpusError(f"ctx_len={ctx_len!r} is not allowed; use a whole number >= 8")
    files = corpus_files(path, split)
    single = len(files) == 1 and split != "all"
    order = np.random.default_rng(seed).permutation(len(files))
    body = ctx_len - (1 if bos_id is not None else 0)
    emitted = seen = 0
    for fi in order:
        try:
            text = files[fi].read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise CorpusError(f"cannot read {files[fi]}: {e}") from None
        ids = tokenizer.encode(text, add_special_tokens=False)
        for start in range(0, len(ids) - body + 1, body):
            seen += 1
            if single and ((seen % 10 == 0) != (split == "heldout")):
                continue
            emitted += 1
            if emitted <= skip:
                continue
            chunk = ids[start : start + body]
            yield np.asarray(([bos_id] if bos_id is not None else []) + chunk, dtype=np.int32)


def describe(path: str | Path | None = None) -> dict:
    """Where the corpus comes from, for provenance in results."""
    root = Path(path) if path is not None else default_corpus()
    files = corpus_files(root, "all")
    return {"path": str(root), "files": len(files), "bytes": int(sum(f.stat().st_size for f in files)),
            "default": path is None}

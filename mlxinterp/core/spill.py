"""Captured activations that may not fit in memory: `RowStore` keeps them in RAM while they fit
the budget and streams them to .npy memmaps otherwise; the suite sets the budget (memory left
beside the model) and the directory per experiment with `spill_scope`."""
from __future__ import annotations

import contextlib
import itertools
import os
import re
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlxinterp.core.errors import MemoryBudgetError
from mlxinterp.core.memory import ACTIVATION_BYTES, human
from mlxinterp.core.platform import total_memory_bytes



@dataclass(frozen=True)
class SpillTarget:
    """Where captures go when their estimate exceeds `budget` bytes."""

    directory: Path
    budget: int


_SPILL: ContextVar[SpillTarget | None] = ContextVar("mlxinterp_spill", default=None)
_counter = itertools.count()


@contextlib.contextmanager
def spill_scope(directory: str | os.PathLike, budget: int) -> Iterator[SpillTarget]:
    """Within the block, captures larger than `budget` bytes spill to .npy files under `directory`."""
    target = SpillTarget(Path(directory), int(budget))
    token = _SPILL.set(target)
    try:
        yield target
    finally:
        _SPILL.reset(token)


def spill_target() -> SpillTarget | None:
    return _SPILL.get()


def rss_bytes() -> int | None:
    """This process's resident memory (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def available_bytes() -> int:
    """Memory not yet used by this process (a rough budget when none was given)."""
    used = rss_bytes()
    if used is None:
        import mlx.core as mx

        used = mx.get_active_memory()
    return total_memory_bytes() - used


class RowStore:
    """Per hook, rows [N, width] float32 written batch by batch: in RAM, or in .npy memmaps on disk.

    `open` decides once, from the first batch's widths: N x sum(widths) x 4 bytes
    against the budget of the spill target (an explicit directory, else the
    suite's `spill_scope`). Spilled arrays come back as read-only np.memmap
    views of the files, so only the pages a caller touches are in memory.
    """

    def __init__(self, n_rows: int, widths: dict[str, int], directory: Path | None):
        self.n_rows, self.directory = n_rows, directory
        self.arrays: dict[str, np.ndarray] = {}
        for i, (name, width) in enumerate(widths.items()):
            if directory is None:
                self.arrays[name] = np.empty((n_rows, width), np.float32)
            else:
                path = directory / f"{i:03d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.npy"
                self.arrays[name] = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                                              shape=(n_rows, width))

    @property
    def spilled(self) -> bool:
        return self.directory is not None

    @classmethod
    def open(cls, n_rows: int, widths: dict[str, int], spill_dir: str | os.PathLike | None = None,
             budget: int | None = None, what: str = "captured activations") -> "RowStore":
        need = n_rows * sum(widths.values()) * ACTIVATION_BYTES
        scope = spill_target()
        directory = Path(spill_dir) if spill_dir is not None else (scope.directory if scope else None)
        if budget is None:
            budget = scope.budget if scope and spill_dir is None else available_bytes()
        if need <= budget:
            return cls(n_rows, widths, None)
        if directory is None:
            if need > total_memory_bytes():
                raise MemoryBudgetError(f"{what} need {human(need)} ({n_rows} rows x {sum(widths.values())} "
                                        f"float32), more than this machine's {human(total_memory_bytes())}",
                                        hint="pass spill_dir=... to stream them to disk, or capture fewer hooks")
            return cls(n_rows, widths, None)
        run_dir = directory / f"rows-{os.getpid()}-{next(_counter)}"
        run_dir.mkdir(parents=True, exist_ok=True)
        return cls(n_rows, widths, run_dir)

    def write(self, start: int, rows: dict[str, np.ndarray]) -> None:
        for name, block in rows.items():
            self.arrays[name][start : start + len(block)] = block

    def finish(self) -> dict[str, np.ndarray]:
        """The arrays; spilled ones flushed and reopened read-only."""
        if not self.spilled:
            return self.arrays
        out = {}
        for name, arr in self.arrays.items():
            arr.flush()
            out[name] = np.load(arr.filename, mmap_mode="r")
        self.arrays = {}
        return out

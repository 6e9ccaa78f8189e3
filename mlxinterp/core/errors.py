"""One exception family, so the CLI can turn every expected failure into one clear line.

Every error names the bad value and what would have been allowed: researchers
should never have to read an MLX traceback to learn that they typed a layer
number wrong.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class MlxInterpError(Exception):
    """Base class: an input or environment problem the user can fix."""

    hint: str | None = None

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        msg = super().__str__()
        return f"{msg}\n  hint: {self.hint}" if self.hint else msg


class ModelSpecError(MlxInterpError):
    """The model spec names nothing loadable."""


class ModelFileError(MlxInterpError):
    """A model file exists but is missing parts, truncated or corrupt."""


class UnsupportedArchitectureError(MlxInterpError):
    """The checkpoint's architecture has no hook map (or no GGUF importer)."""


class HookNameError(MlxInterpError):
    """An unknown hook point, or a layer index out of range."""


class TapError(MlxInterpError):
    """A tap's argument (vector, basis, positions, scale) does not fit its hook point."""


class PromptError(MlxInterpError):
    """An empty, too long or otherwise unusable prompt or prompt set."""


class MemoryBudgetError(MlxInterpError):
    """The model (or an experiment's captures) will not fit in memory."""


class ResultsError(MlxInterpError):
    """A results directory cannot be written, resumed or locked."""


def closest(value: str, allowed: Iterable[str], n: int = 3) -> str | None:
    """The closest allowed spelling(s), for 'did you mean' hints."""
    matches = difflib.get_close_matches(value, list(allowed), n=n, cutoff=0.5)
    return ", ".join(repr(m) for m in matches) if matches else None

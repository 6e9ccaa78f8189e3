"""Allowed values of experiment config fields, checked before any model loads.

A config field passes the `--set` type check and can still make no sense:
`n=-5` or `chunk=0` crashed after a 15 s model load, `chunk=-1` and `top_k=0`
ran to "complete" having analysed nothing, `n=10**23` overflowed numpy. Each
field's range is declared once, either beside its default

    n: int = ranged(24, lo=1)          # dataclasses.field with the Range in its metadata

or, for the fields every study shares, by the naming conventions in RULES
(`n`, `n_*`, `top_k`, `chunk`, `batch_size`, `*_frac`, `*_pct`, `seed`, ...).
`check_config` runs in `make_config`, which `run_all` calls for every selected
experiment before planning or loading anything.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from mlxinterp.core.errors import ResultsError

RANGE_KEY = "range"
MAX_ITEMS = 1_000_000  # counts (items, prompts, steps, tokens): beyond this a run would take years


@dataclasses.dataclass(frozen=True)
class Range:
    """Numbers within [lo, hi] ((lo, hi] with above=True), or one of `choices`; tuples element-wise."""

    lo: float | None = None
    hi: float | None = None
    above: bool = False
    choices: tuple | None = None

    def describe(self, whole: bool) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        kind = "a whole number" if whole else "a finite number"
        parts = [f"{'>' if self.above else '>='} {_fmt(self.lo)}" if self.lo is not None else "",
                 f"<= {_fmt(self.hi)}" if self.hi is not None else ""]
        limits = " and ".join(p for p in parts if p)
        return f"{kind} {limits}".strip()

    def allows(self, value: Any, whole: bool) -> bool:
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and not isinstance(value, int)):
            return False
        if not math.isfinite(float(value)):
            return False
        if self.lo is not None and (value <= self.lo if self.above else value < self.lo):
            return False
        return self.hi is None or value <= self.hi


def ranged(default: Any, lo: float | None = None, hi: float | None = None, *, above: bool = False,
           choices: tuple | None = None) -> Any:
    """A config field's default with its allowed values beside it: `chunk: int = ranged(8, lo=1)`."""
    return dataclasses.field(default=default, metadata={RANGE_KEY: Range(lo, hi, above, choices)})


COUNT = Range(1, MAX_ITEMS)
FRACTION = Range(0, 1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, above=True)
# Naming conventions of the studies' config fields (full match, first rule wins).
RULES: tuple[tuple[str, Range], ...] = (
    (r"seed", Range(0, 2**63 - 1)),
    (r"n|n_\w+|\w+_n|k|ks|\w+_k|top_k|chunk|batch_size|\w*steps?|\w*tokens|continuation|loop_cells|logit_top"
     r"|check_neurons|circuit_pairs|\w*_demos|width|epochs|ctx_len|\w*_windows|top_\w+|\w+_prompts|batch_rows", COUNT),
    (r"layer", Range(-1024, 1024)),  # an index: negative counts from the end (checked against the model later)
    (r"\w*_bits", Range(choices=(0, 2, 3, 4, 5, 6, 8))),  # MLX quantization widths; 0 = off
    (r"\w*group_size", Range(choices=(32, 64, 128))),  # MLX quantization group sizes
    (r"\w+_alpha", NON_NEGATIVE),  # a steering strength (unit_alpha), unlike the significance level `alpha`
    (r"alpha", Range(0, 1, above=True)),  # a significance level
    (r"\w*_?fracs?|\w*threshold|static_depth|large_effect|circuit_target", FRACTION),
    (r"\w*pcts?|kl_max|min_gap|sd_floor|\w*lambdas?|tol|\w*_nats", NON_NEGATIVE),
    (r"lr|temperatures|active_factor", POSITIVE),
    (r"logit_beta", Range()),
)


def rule_for(name: str) -> Range | None:
    """The convention's range for a field name, None when no rule matches."""
    return next((r for pattern, r in RULES if re.fullmatch(pattern, name)), None)


def field_range(f: dataclasses.Field) -> Range | None:
    """The declared range: metadata beside the default, else the naming convention."""
    return f.metadata.get(RANGE_KEY) or rule_for(f.name)


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def allows_none(f: dataclasses.Field) -> bool:
    """None is a value only for fields whose default is None or whose annotation says `| None`."""
    return default_of(f) is None or "None" in str(f.type) or "Optional" in str(f.type)


def check_value(exp_name: str, f: dataclasses.Field, value: Any, prefix: str = "") -> None:
    """Refuse `value` for field `f` of experiment `exp_name` unless its range allows it (ResultsError)."""
    if value is None:
        if allows_none(f):
            return
        raise ResultsError(f"{prefix}{exp_name}.{f.name}=None is not allowed (default {default_of(f)!r})")
    ref, rng = default_of(f), field_range(f) or Range()  # no declared range: still a finite number
    if ref is None or isinstance(ref, (bool, str)):
        return
    values = value if isinstance(value, (tuple, list)) else (value,)
    elems = ref if isinstance(ref, (tuple, list)) else (ref,)
    if elems and isinstance(elems[0], str) and rng.choices is None:
        return
    whole = bool(elems) and all(isinstance(e, int) and not isinstance(e, bool) for e in elems)
    bad = [v for v in values if not rng.allows(v, whole)]
    if bad or (isinstance(ref, (tuple, list)) and not values):
        shown = f"{value!r:.60}"
        need = rng.describe(whole) + (" (each element; at least one)" if isinstance(ref, (tuple, list)) else "")
        raise ResultsError(f"{prefix}{exp_name}.{f.name}={shown} is not allowed; use {need}",
                           hint=f"the default is {ref!r}; `mlxinterp run-suite --list --fields` shows every field")


def check_config(exp_name: str, config: Any) -> None:
    """Every field of a built config within its declared range."""
    for f in dataclasses.fields(config):
        check_value(exp_name, f, getattr(config, f.name))


def _fmt(x: float) -> str:
    return f"{int(x)}" if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"

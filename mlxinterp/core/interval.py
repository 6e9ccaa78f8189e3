"""The one value type for an estimate with its confidence interval, and the one place it becomes text.

Stored in result.json as {"estimate", "low", "high", "n", "method"} (+ "k" for proportions,
+ "level" when not 95 %, + "warning" when the interval is weaker than the policy wants, + "n_clusters"
for nested units). The policy that says which interval fits which design is docs/statistics.md. The functions that compute intervals live in mlxinterp.analysis.stats;
the report renders every interval through `format_interval`.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

LEVEL = 0.95


@dataclass(frozen=True)
class Interval(Mapping):
    """An estimate with its confidence interval, the number of units and how it was computed.

    It also reads like the dict it is stored as (`c["low"]`, `c.get("k")`), so a
    value computed now and one reloaded from a checkpoint or a result.json are
    handled by the same code. `estimate`, `low` and `high` are None when there
    was nothing to estimate (n = 0).
    """

    estimate: float | None
    low: float | None
    high: float | None
    n: int
    method: str
    k: int | None = None  # successes, for proportions
    level: float = LEVEL
    warning: str | None = None  # why this interval is weaker than the policy's default (small n, constant data)
    n_clusters: int | None = None  # independent clusters behind the n nested items (cluster_mean_ci)

    def to_dict(self) -> dict:
        d = {"estimate": self.estimate, "low": self.low, "high": self.high, "n": self.n, "method": self.method}
        if self.k is not None:
            d["k"] = self.k
        if self.level != LEVEL:
            d["level"] = self.level
        if self.warning is not None:
            d["warning"] = self.warning
        if self.n_clusters is not None:
            d["n_clusters"] = self.n_clusters
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "Interval":
        return cls(d.get("estimate"), d.get("low"), d.get("high"), int(d.get("n") or 0),
                   d.get("method", "unknown"), d.get("k"), d.get("level", LEVEL), d.get("warning"),
                   d.get("n_clusters"))

    def __getitem__(self, key: str):
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def text(self, fmt: str = ".3f", pct: bool = False, counts: bool = False) -> str:
        return format_interval(self, fmt, pct, counts)


def format_interval(c: Mapping | None, fmt: str = ".3f", pct: bool = False, counts: bool = False) -> str:
    """'0.412 [0.301, 0.520]'; with pct '41.2 % [30.1, 52.0]'; with counts ' (k/n)' or ' (n=N)' appended.

    The one place an interval becomes text: reports, summaries and figure labels use it,
    for fresh `Interval`s and for intervals read back from JSON alike.
    """
    if not c or c.get("estimate") is None:
        return f"n/a (n={(c or {}).get('n', 0)})" if counts else "n/a"
    f = 100.0 if pct else 1.0
    unit = " %" if pct else ""
    low = "n/a" if c.get("low") is None else format(f * c["low"], fmt)
    high = "n/a" if c.get("high") is None else format(f * c["high"], fmt)
    text = f"{format(f * c['estimate'], fmt)}{unit} [{low}, {high}]"
    if counts:
        text += f" ({c['k']}/{c['n']})" if c.get("k") is not None else f" (n={c.get('n')})"
    return text


def is_interval(value: object) -> bool:
    """True for an Interval or its stored dict form (what a result.json holds)."""
    return isinstance(value, Mapping) and {"estimate", "low", "high", "n"} <= set(value)

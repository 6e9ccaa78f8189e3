"""A result's headline numbers under stable identifiers, with the labels the report shows.

Keys of result.json are identifiers that do not change with a run's configuration
(`mlp_share`, not "MLP share (top-50 of 10 categories)"), so scripts and tests can
read them; the human wording, which may carry the run's numbers, goes under
`labels` beside it and only the report shows it:

    s = Summary()
    s.add("mlp_share", f"MLP share of residual update, {n} prompts", interval)
    return {**s.to_result(), "per_prompt": rows}
"""
from __future__ import annotations

import re
from typing import Any

from mlxinterp.core.errors import ResultsError

_KEY_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")


class Summary:
    """Ordered headline values by stable key, each with its label."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.labels: dict[str, str] = {}

    def add(self, key: str, label: str, value: Any) -> None:
        """One headline number; `key` is lower_snake_case (dots separate a group, e.g. `fr.add_effect`)."""
        if not _KEY_RE.match(key):
            raise ResultsError(f"summary key {key!r} is not a stable identifier",
                               hint="use lower_snake_case, optionally dotted groups (e.g. 'fr.add_effect')")
        if key in self.values:
            raise ResultsError(f"summary key {key!r} is used twice")
        self.values[key] = value
        self.labels[key] = label

    def add_checks(self, prereg: dict) -> None:
        """One line per pre-registered check of a `preregistration.report(...)` record:
        `prereg.<check>` = 'PASS (0.123 > 0.0, low)', or the bare verdict when the value is missing."""
        for name, c in prereg["checks"].items():
            v = c.get("value")
            self.add(f"prereg.{name}", f"pre-registered {name}",
                     f"{c['verdict']} ({v:.3f} {c['op']} {c['threshold']}, {c['bound']})" if v is not None
                     else c["verdict"])

    def to_result(self) -> dict:
        """`{"summary": {key: value}, "labels": {key: label}}`, to merge into an experiment's result."""
        return {"summary": dict(self.values), "labels": dict(self.labels)}

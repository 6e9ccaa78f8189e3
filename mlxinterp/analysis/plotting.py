"""Figure helpers shared by the analyses and studies: new figures, CI bars and points, token labels,
and the cross-model comparison figure.

Every function builds on `matplotlib.figure.Figure` directly, never on pyplot:
a Figure renders to PNG without a backend, so library code never has to choose
one (`matplotlib.use`), and a notebook's inline backend keeps working. Figures
are returned to the caller; saving is `mlxinterp.core.io.save_figure` (or
`ctx.save_figure` in a study).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None,
             **kwargs: Any) -> tuple[Figure, Any]:
    """(figure, axes) like `pyplot.subplots`, but the figure belongs to no backend and no pyplot state."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def _columns(cis: Sequence[Mapping | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Estimates, lows and highs of stored intervals as float arrays (a missing value is NaN)."""
    def col(key: str) -> np.ndarray:
        return np.array([c[key] if c is not None and c.get(key) is not None else np.nan for c in cis], float)

    return col("estimate"), col("low"), col("high")


def bars(ax: Any, x: Any, cis: Sequence[Mapping], width: float, color: Any, label: str) -> None:
    """Bars of interval estimates with their CI whiskers (a missing estimate draws nothing)."""
    est, lo, hi = _columns(cis)
    ax.bar(x, np.nan_to_num(est), width, color=color, alpha=0.8, label=label)
    ax.errorbar(x, est, yerr=[est - lo, hi - est], fmt="none", ecolor="k", capsize=3, lw=0.8)


def ci_points(ax: Any, x: Any, cis: Sequence[Mapping | None], **errorbar: Any) -> None:
    """Interval estimates as points with CI whiskers; keywords (fmt, color, label...) go to `ax.errorbar`."""
    est, lo, hi = _columns(cis)
    ax.errorbar(x, est, yerr=[est - lo, hi - est], **errorbar)


def plot_ci(ax: Any, x: Any, cis: Sequence[Mapping | None], color: str, label: str | None,
            bars: bool = False) -> None:
    """Estimates with their CI whiskers: a line with markers, or (bars=True) grey bars edged in `color`."""
    est, lo, hi = _columns(cis)
    if bars:
        ax.bar(x, np.nan_to_num(est), color="lightgrey", edgecolor=color)
        ax.errorbar(x, est, yerr=[est - lo, hi - est], fmt="none", ecolor=color, capsize=3)
    else:
        ci_points(ax, x, cis, fmt="o-", color=color, capsize=3, ms=4, label=label)


def token_label(token: str, width: int = 10) -> str:
    """A token as a short printable axis label (control characters escaped)."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in token)
    return text[:width]


def model_label(info: Mapping) -> str:
    """'slug' and its size on two lines, for cross-model axes (`info` is a result's "model" block)."""
    p = info.get("n_params") or 0
    return f"{info.get('slug', '?')}\n{p / 1e9:.2f}B" if p >= 1e8 else f"{info.get('slug', '?')}\n{p / 1e6:.0f}M"


def cross_model_figure(ctx: Any, hm: Any, name: str, current: dict,
                       panels: Callable[[list[tuple[dict, dict]]], Figure]) -> None:
    """Save `<name>_models.png` when results of `name` exist for two or more models in this run's output dir.

    `panels(models)` draws it from [(model info, result)], sorted by
    parameter count; the running model's result is `current` (its result.json
    is written after the experiment returns), the others come from
    `ctx.results_across_models(name)`.
    """
    models = sorted([(hm.info.to_dict(), current)] + ctx.results_across_models(name),
                    key=lambda mr: (mr[0].get("n_params") or 0, mr[0].get("slug", "")))
    if len(models) < 2:
        return
    ctx.save_figure(f"{name}_models", panels(models))

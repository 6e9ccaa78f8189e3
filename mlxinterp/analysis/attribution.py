"""Attribution patching: every patch's effect estimated from gradients, and checked by exact patching.

Activation patching writes the clean activation of one component into the
corrupted run and measures the metric. Attribution patching (AtP; Nanda 2023,
"Attribution patching"; Kramár et al. 2024, "AtP*") estimates all of those
effects at once with a first-order Taylor expansion around the corrupted run:

    effect(hook, position[, head]) ~ (a_clean - a_corrupt) . d metric / d a   (at the corrupted run)

from one clean forward (capturing activations) and one corrupted
forward + backward (analysis.gradients, probes at every hook). Methods:

- "atp": the estimate above.
- "atp*": AtP plus GradDrop (Kramár et al. 2024, sec. 3.1.2): L more backward
  passes, each with the gradient through layer l's attention and MLP outputs
  dropped (batched as L rows), and the unsigned
  score (1 / (L - 1)) * sum_l |AtP with layer l dropped| guarding against
  cancellation along paths. It ranks cells for the check; `estimate` stays
  the signed AtP. The QK-fix (sec. 3.1.1) replaces the estimates of query and
  key nodes (hooks attn.hook_q / attn.hook_k, when requested): patching a query
  or key changes the attention pattern through a softmax that AtP linearises
  badly when it saturates, so the patched pattern is computed exactly (from the
  layer's own norms, RoPE and mask, analysis.attention.scores) and only the
  pattern's effect on the metric is linearised: (A_patched - A) . d metric / d A,
  with d metric / d A the gradient at the attention-pattern hook point
  (blocks.{i}.attn.hook_pattern, core.patterns).
- "ig": integrated gradients (Sundararajan et al. 2017) along the straight
  line from the corrupted to the clean token embeddings, as EAP-IG does
  (Hanna et al. 2024): gradients at every hook are averaged over `steps`
  interpolation points (midpoint rule), run as rows of one batch, and
  multiplied by (a_clean - a_corrupt). At the embedding the attributions sum
  to metric(clean) - metric(corrupt) as steps grow (completeness).

`check(...)` verifies an attribution by exact batched patching (run_variants)
on its top-k cells plus a random subset.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np
from scipy import stats as sps

from mlxinterp.analysis import attention
from mlxinterp.analysis.gradients import Probe, check_metric, traced_metric, value_and_grad
from mlxinterp.analysis.patching import Metric, Patch, run_variants
from mlxinterp.analysis.plotting import subplots
from mlxinterp.core import taps as T
from mlxinterp.core.errors import MlxInterpError, PromptError
from mlxinterp.core.patterns import PATTERN

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

METHODS = ("atp", "atp*", "ig")
# The components AtP papers sweep: the residual stream entering each block, what attention and the MLP
# add to it, and each attention head's output before the output projection.
DEFAULT_HOOKS = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "attn.hook_z")


@dataclass
class Attribution:
    """Estimated patching effects per (hook, position[, head]) and the run facts a check needs."""

    method: str
    clean_metric: float
    corrupt_metric: float
    tokens: list[str]
    estimates: dict[str, np.ndarray]  # hook name -> [L] or [L, H]
    graddrop: dict[str, np.ndarray] | None = None  # atp*: unsigned GradDrop scores, same shapes
    check: dict | None = None
    clean_ids: list[int] = field(default_factory=list, repr=False)
    corrupt_ids: list[int] = field(default_factory=list, repr=False)
    clean_acts: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    changed: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # activation differs (bool, same shape)

    def cells(self) -> list[tuple[str, int, int | None]]:
        """Every (hook name, position, head or None), in the order of `rows()`."""
        out = []
        for name, est in self.estimates.items():
            for idx in np.ndindex(est.shape):
                out.append((name, idx[0], idx[1] if len(idx) == 2 else None))
        return out

    def values(self, which: str = "estimate") -> np.ndarray:
        src = self.estimates if which == "estimate" else self.graddrop
        return np.concatenate([src[n].reshape(-1) for n in self.estimates])

    def changed_mask(self) -> np.ndarray:
        return np.concatenate([self.changed[n].reshape(-1) for n in self.estimates])

    def rows(self) -> list[dict]:
        """[{hook, layer, position, head?, estimate[, graddrop]}] with hook the per-layer suffix (e.g. attn.hook_z)."""
        est, gd = self.values(), self.values("graddrop") if self.graddrop else None
        out = []
        for i, (name, pos, head) in enumerate(self.cells()):
            layer, suffix = _split(name)
            row = {"hook": suffix, "layer": layer, "position": pos}
            if head is not None:
                row["head"] = head
            row["estimate"] = float(est[i])
            if gd is not None:
                row["graddrop"] = float(gd[i])
            out.append(row)
        return out

    def to_dict(self) -> dict:
        d = {"method": self.method, "clean_metric": self.clean_metric, "corrupt_metric": self.corrupt_metric,
             "tokens": self.tokens, "estimates": self.rows()}
        if self.check is not None:
            d["check"] = {k: v for k, v in self.check.items() if k != "points"}
        return d


def _split(name: str) -> tuple[int | None, str]:
    parts = name.split(".", 2)
    if parts[0] == "blocks" and len(parts) == 3:
        return int(parts[1]), parts[2]
    return None, name


def _hook_names(hm: HookedModel, hooks: Sequence[str], layers: Sequence[int] | None) -> list[str]:
    n = hm.info.n_layers
    layers = list(range(n)) if layers is None else [int(l) for l in layers]
    names = []
    for suffix in hooks:
        if suffix in hm.hook_names or suffix.startswith("blocks."):
            names.append(hm.point(suffix).name)  # a full name (e.g. hook_embed or blocks.3.hook_resid_pre)
            continue
        names += [hm.point(f"blocks.{l}.{suffix}").name for l in layers]
    return list(dict.fromkeys(names))


def _token_ids(hm: HookedModel, prompt) -> list[int]:
    if isinstance(prompt, str):
        return hm.tokens(prompt).ids[0].tolist()
    return [int(t) for t in prompt]


def token_pair(hm: HookedModel, clean, corrupt) -> tuple[list[int], list[int]]:
    """Token ids of a clean and a corrupted prompt, which must line up position by position."""
    c, k = _token_ids(hm, clean), _token_ids(hm, corrupt)
    if len(c) != len(k):
        raise PromptError(f"clean and corrupt prompts have {len(c)} and {len(k)} tokens; attribution patching "
                          "compares position by position, so they need equal lengths",
                          hint="rephrase one prompt (e.g. swap a one-token name for another one-token name)")
    return c, k


def attribute(hm: HookedModel, clean, corrupt, metric: Metric, hooks: Sequence[str] = DEFAULT_HOOKS,
              layers: Sequence[int] | None = None, method: str = "atp", steps: int = 8) -> Attribution:
    """Estimate the effect of patching each clean activation into the corrupted run.

    clean, corrupt: prompts (strings or token ids) of equal token length.
    hooks: per-layer hook suffixes (e.g. "hook_resid_pre", "attn.hook_z") or full hook names.
    method: "atp" | "atp*" (adds GradDrop) | "ig" (integrated gradients, `steps` points).
    """
    if method not in METHODS:
        raise MlxInterpError(f"method={method!r} is not allowed; use one of {', '.join(METHODS)}")
    if method == "ig" and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise MlxInterpError(f"steps={steps!r} is not allowed; use a whole number >= 1")
    check_metric(metric)
    names = _hook_names(hm, hooks, layers)
    clean_ids, corrupt_ids = token_pair(hm, clean, corrupt)
    # One batch of two rows: row 0 (clean) only provides activations (weight 0), row 1 gives the gradient.
    res = value_and_grad(hm, mx.array([clean_ids, corrupt_ids]), metric, names, weights=[0.0, 1.0])
    diffs = {n: _causal_diff(res.acts[n][0], res.acts[n][1], clean_ids, corrupt_ids) for n in names}
    if method == "ig":
        grads = _ig_grads(hm, clean_ids, corrupt_ids, metric, names, steps)
    else:
        grads = {n: res.grads[n][1] for n in names}
    estimates = {n: np.array(_dot(diffs[n], grads[n]), dtype=np.float64) for n in names}
    gd = _graddrop(hm, corrupt_ids, metric, names, diffs) if method == "atp*" else None
    if method == "atp*":
        qk = [n for n in names if n.endswith(("attn.hook_q", "attn.hook_k"))]
        if qk:
            estimates.update(qk_fix(hm, clean_ids, corrupt_ids, metric, qk, res.acts))
    changed = {n: np.array(_any_change(diffs[n])) for n in names}
    decode = hm.tokenizer.decode
    return Attribution(method, float(res.value[0]), float(res.value[1]), [decode([t]) for t in corrupt_ids],
                       estimates, gd, None, clean_ids, corrupt_ids,
                       {n: np.array(res.acts[n][0]) for n in names}, changed)


def _dot(diff: mx.array, g: mx.array) -> mx.array:
    """Sum over the feature axis (the last): [L, d] -> [L], [L, H, Dh] -> [L, H]."""
    return mx.sum(diff.astype(mx.float32) * g.astype(mx.float32), axis=-1)


def _causal_diff(clean: mx.array, corrupt: mx.array, clean_ids, corrupt_ids) -> mx.array:
    """clean - corrupt activations [L, ...], exactly zero before the first token where the prompts differ.

    A causal model's activations there are the same function of the same tokens, so any difference is
    rounding: OpenBLAS's kernels for some processors (AMD Zen, for one) round two identical rows of one
    batch differently. Left in, that noise would give identical prompts non-zero estimates and let the
    check pick unchanged cells."""
    differ = np.flatnonzero(np.asarray(clean_ids) != np.asarray(corrupt_ids))
    first = int(differ[0]) if differ.size else len(clean_ids)
    keep = (mx.arange(clean.shape[0]) >= first).reshape(-1, *([1] * (clean.ndim - 1)))
    return mx.where(keep, clean - corrupt, mx.zeros_like(clean))


def _any_change(diff: mx.array) -> mx.array:
    return mx.any(diff != 0, axis=-1)


def _ig_grads(hm: HookedModel, clean_ids, corrupt_ids, metric, names, steps: int) -> dict[str, mx.array]:
    """Mean gradient at each hook over `steps` points on the corrupt -> clean embedding line (one batch)."""
    alphas = (np.arange(steps) + 0.5) / steps
    _, cache = hm.run_with_cache(mx.array([clean_ids, corrupt_ids]), names=["hook_embed"])
    e = cache["hook_embed"].astype(mx.float32)
    a = mx.array(alphas.astype(np.float32)).reshape(-1, 1, 1)
    line = e[1:2] + a * (e[0:1] - e[1:2])  # [steps, L, d]
    mix = T.Fn(fn=lambda x, ctx: line.astype(x.dtype))
    res = value_and_grad(hm, mx.array([corrupt_ids] * steps), metric, names, taps=[("hook_embed", mix)])
    return {n: mx.mean(g, axis=0) for n, g in res.grads.items()}


def qk_fix(hm: HookedModel, clean_ids, corrupt_ids, metric: Metric, names: Sequence[str], acts: dict) -> dict[str, np.ndarray]:
    """AtP* QK-fix estimates for query / key hooks: exact pattern change, linearised only in the pattern.

    acts: {hook: [2, L, ...]} clean (row 0) and corrupt (row 1) activations of the named q/k hooks.
    Returns {name: [L, H] (queries) or [L, H_kv] (keys)}.
    """
    layers = sorted({int(n.split(".")[1]) for n in names})
    A, dA = _pattern_grads(hm, corrupt_ids, metric, layers)
    out = {}
    for l in layers:
        q = _qk_pair(hm, acts, f"blocks.{l}.attn.hook_q", clean_ids, corrupt_ids)
        k = _qk_pair(hm, acts, f"blocks.{l}.attn.hook_k", clean_ids, corrupt_ids)
        a, g = A[l], dA[l]  # [H, L, L]
        s_corr = attention.scores(hm, l, q[1:2], k[1:2])[0]
        if f"blocks.{l}.attn.hook_q" in names:
            # patching query i of head h changes only row i of head h: that row of scores(q_clean, k_corrupt)
            p = mx.softmax(attention.scores(hm, l, q[0:1], k[1:2])[0], axis=-1)
            out[f"blocks.{l}.attn.hook_q"] = np.array(mx.sum((p - a) * g, axis=-1).T, dtype=np.float64)
        if f"blocks.{l}.attn.hook_k" in names:
            # patching key j of kv-head g changes column j of every query head in its group
            s_k = attention.scores(hm, l, q[1:2], k[0:1])[0]
            H, L = s_corr.shape[0], s_corr.shape[1]
            Hkv = k.shape[2]
            est = np.zeros((L, Hkv))
            for j in range(L):
                col = mx.arange(L) == j
                p = mx.softmax(mx.where(col[None, None, :], s_k, s_corr), axis=-1)
                per_head = mx.sum((p - a) * g, axis=(-2, -1))  # [H]
                est[j] = np.array(per_head.reshape(Hkv, H // Hkv).sum(-1), dtype=np.float64)
            out[f"blocks.{l}.attn.hook_k"] = est
    return out


def _qk_pair(hm: HookedModel, acts: dict, name: str, clean_ids, corrupt_ids) -> mx.array:
    """[2, L, heads, Dh] clean and corrupt activations of a q/k hook (captured now when not given)."""
    if name in acts:
        return acts[name]
    _, cache = hm.run_with_cache(mx.array([clean_ids, corrupt_ids]), names=[name])
    return cache[name].astype(mx.float32)


def _pattern_grads(hm: HookedModel, ids, metric: Metric, layers: Sequence[int]) -> tuple[dict, dict]:
    """{layer: pattern [H, L, L]} and {layer: d metric / d pattern [H, L, L]} at the run of `ids`."""
    names = [f"blocks.{l}.{PATTERN}" for l in layers]
    res = value_and_grad(hm, mx.array([ids]), metric, names)
    to_attn = lambda a: a[0].transpose(1, 0, 2).astype(mx.float32)  # noqa: E731  [L, H, L] -> [H, L, L]
    return {l: to_attn(res.acts[n]) for l, n in zip(layers, names)}, {l: to_attn(res.grads[n]) for l, n in zip(layers, names)}


def _graddrop(hm: HookedModel, corrupt_ids, metric, names, diffs) -> dict[str, np.ndarray]:
    """AtP* GradDrop scores: row l drops the gradient through layer l's attention and MLP outputs."""
    n = hm.info.n_layers
    ids = mx.array([corrupt_ids] * n)
    L = len(corrupt_ids)
    shapes = [(n, L, *hm.hook_shape(x)) for x in names]

    def drop(layer: int) -> T.Fn:
        row = mx.array(np.arange(n) == layer).reshape(n, 1, 1)
        return T.Fn(fn=lambda a, ctx: mx.where(row, mx.stop_gradient(a), a))

    stops = [(f"blocks.{l}.{s}", drop(l)) for l in range(n) for s in ("hook_attn_out", "hook_mlp_out")]

    def fn(deltas):
        total, _ = traced_metric(hm, hm.tokens(ids), metric, stops + list(zip(names, [Probe(delta=d) for d in deltas])))
        return total

    grads = mx.grad(fn)([mx.zeros(s, dtype=mx.float32) for s in shapes])
    out = {}
    for x, g in zip(names, grads):
        per_row = _dot(diffs[x][None], g)  # [n_layers, L(, H)]
        out[x] = np.array(mx.sum(mx.abs(per_row), axis=0) / max(n - 1, 1), dtype=np.float64)
    return out


def check(hm: HookedModel, att: Attribution, metric: Metric, k: int = 10, n_random: int | None = None, seed: int = 0,
          batch_size: int = 32, progress: Callable[[int], None] | None = None) -> dict:
    """Exact patching of the top-k cells (by |estimate|, or by GradDrop for atp*) plus a random subset.

    Only cells whose clean and corrupt activations differ are candidates (the rest have effect
    exactly 0 and estimate exactly 0). Returns {spearman, sign_agreement, n_checked,
    max_missed_bound, ...}; `points` holds (estimate, exact) pairs for `plot_check`.

    max_missed_bound: the largest |effect| an unchecked cell could have if its estimation error
    is no larger than the largest error seen on the random subset: max over unchecked cells
    of |estimate| + that error. An empirical bound (the random cells stand in for the rest),
    not a guarantee.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise MlxInterpError(f"check k={k!r} is not allowed; use a whole number >= 1")
    n_random = k if n_random is None else n_random
    est = att.values()
    rank_by = np.abs(att.values("graddrop")) if att.graddrop is not None else np.abs(est)
    cand = np.flatnonzero(att.changed_mask())
    if cand.size == 0:
        raise MlxInterpError("clean and corrupt activations are identical at every checked hook; nothing to check")
    top = cand[np.argsort(-rank_by[cand], kind="stable")[:k]]
    rest = np.setdiff1d(cand, top)
    rng = np.random.default_rng(seed)
    rand = rng.choice(rest, size=min(n_random, rest.size), replace=False) if rest.size else np.zeros(0, int)
    chosen = np.concatenate([top, rand]).astype(int)
    cells = att.cells()
    variants = []
    for i in chosen:
        name, pos, head = cells[i]
        value = att.clean_acts[name][pos] if head is None else att.clean_acts[name][pos, head]
        variants.append([Patch(name, pos, value, head)])
    # The unpatched baseline runs through the same path as the patched rows (an empty variant).
    vals = run_variants(hm, att.corrupt_ids, variants + [[]], metric, batch_size=batch_size, progress=progress,
                        reuse_prefix=True)
    exact = vals[:-1] - vals[-1]
    e = est[chosen]
    rho = float(sps.spearmanr(e, exact).statistic) if len(chosen) > 2 and np.ptp(e) > 0 and np.ptp(exact) > 0 else None
    signs = np.sign(e) == np.sign(exact)
    err_rand = np.abs(exact[len(top):] - e[len(top):])
    unchecked = np.setdiff1d(np.arange(len(est)), chosen)
    max_err = float(err_rand.max()) if err_rand.size else float(np.abs(exact - e).max())
    bound = float(np.abs(est[unchecked]).max() + max_err) if unchecked.size else 0.0
    return {"spearman": rho, "sign_agreement": float(signs.mean()), "n_checked": int(len(chosen)),
            "max_missed_bound": bound, "n_top": int(len(top)), "n_random": int(len(rand)),
            "random_max_abs_error": max_err, "total_effect": att.clean_metric - att.corrupt_metric,
            "points": [{"cell": _cell_label(cells[i]), "estimate": float(a), "exact": float(b), "top": j < len(top)}
                       for j, (i, a, b) in enumerate(zip(chosen, e, exact))]}


def _cell_label(cell: tuple[str, int, int | None]) -> str:
    name, pos, head = cell
    return f"{name}@{pos}" + (f".h{head}" if head is not None else "")


def attribute_and_check(hm: HookedModel, clean, corrupt, metric: Metric, k: int = 10, **kwargs) -> Attribution:
    """`attribute`, then `check` on its top-k plus k random cells; the result carries `.check`."""
    att = attribute(hm, clean, corrupt, metric, **kwargs)
    att.check = check(hm, att, metric, k=k)
    return att


def plot_check(chk: dict, title: str | None = None):
    """Scatter of estimate vs exact patching effect for the checked cells; returns a matplotlib Figure."""
    pts = chk["points"]
    fig, ax = subplots(figsize=(5, 5))
    for top, label, color in ((True, "top-k", "tab:red"), (False, "random", "tab:blue")):
        xs = [p["exact"] for p in pts if p["top"] is top]
        ys = [p["estimate"] for p in pts if p["top"] is top]
        ax.scatter(xs, ys, s=18, c=color, label=label, alpha=0.8)
    vals = [v for p in pts for v in (p["exact"], p["estimate"])]
    lo, hi = (min(vals), max(vals)) if vals else (-1, 1)
    ax.plot([lo, hi], [lo, hi], color="gray", lw=0.8, ls="--")
    ax.axhline(0, color="gray", lw=0.5)
    ax.axvline(0, color="gray", lw=0.5)
    ax.set_xlabel("exact patching effect")
    ax.set_ylabel("estimate")
    rho = chk.get("spearman")
    ax.set_title(title or f"estimate vs exact (Spearman {rho:.2f}, n={chk['n_checked']})" if rho is not None
                 else f"estimate vs exact (n={chk['n_checked']})")
    ax.legend(loc="best")
    return fig

"""Two-hop reasoning through the logit lens (the cross-model plan section 2.1; Biran et al., "Hopping Too Late", ICLR 2025).

Per query of data/twohop/queries.json: does the model answer each single hop
(hop1_prompt -> bridge, hop2_prompt -> answer) and the two-hop prompt
(definition of "answers": mlxinterp.tasks.twohop); and, through the logit lens at
the two-hop prompt's last position, the rank of the bridge and of the answer
at every layer, the first layer each enters the top-k (k = 30, the cross-model plan's
choice), and the gap answer layer - bridge layer. A query is *sequential*
when the bridge enters strictly before the answer.

Control: the same ranks for a foil bridge and a foil answer (another query of
the same family, chosen a priori), so "the bridge enters the top 30" can be
compared with how often any same-type entity does.

Batching and resume: queries run `cfg.chunk` at a time in left-padded
batches; a chunk is the unit `ctx.map` checkpoints (at most one chunk is
redone after a kill). The per-query statuses are reused by the backpatch and
crossprompt experiments (`mlxinterp.tasks.twohop.statuses`).

Cost (Gemma 3 270M, 2 shared CPU cores): ~0.8-1.2 s per query (3 forwards,
an 18-layer x 262k lens); all 344 queries, the default (so backpatch and
crossprompt can reuse the statuses), took 6.6 min at load ~13.

Sizes: full by default, every query of data/twohop/queries.json (344; the cross-model
plan used 6 per model). The quick profile (24 queries) is for smoke tests.
Intervals: rates are Wilson; "bridge enters" vs "foil bridge enters" is a paired
0/1 difference per query (the control); mean entry layers and gaps are means
over queries (BCa bootstrap, t-interval below 20). No layer or item is chosen
from the data, so nothing needs a selection split. The pre-registered checks
(mlxinterp/data/preregistration.toml) are in `prereg`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import numpy as np

from mlxinterp.suite.summary import Summary
from mlxinterp.analysis.plotting import bars, ci_points, cross_model_figure, model_label, subplots
from mlxinterp.analysis.stats import mean_ci, paired_binary_diff_ci, proportion_ci
from mlxinterp.suite import experiment, preregistration
from mlxinterp.tasks import twohop as TH
from mlxinterp.tasks.twohop import ci_text

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

SUBSETS = ("all", "both_hops")  # every query; queries whose two single hops the model answers


@dataclass
class TwohopConfig:
    n: int = 344  # queries: all 344 of the data set (a seeded random sample when fewer)
    seed: int = 0
    top_k: int = 30
    chunk: int = 8  # queries per batched forward and per checkpoint


# ----------------------------------------------------------------- per query


def select(items: list[dict], n: int, rng: np.random.Generator) -> list[dict]:
    """All items in file order, or a random sample of n of them (kept in file order)."""
    if n <= 0:
        raise ValueError(f"n={n}: need at least one query")
    if n >= len(items):
        return list(items)
    keep = np.sort(rng.permutation(len(items))[:n])
    return [items[int(i)] for i in keep]


# ----------------------------------------------------------------- experiment


@experiment("twohop", TwohopConfig, quick={"n": 24})
def twohop(hm: HookedModel, cfg: TwohopConfig, ctx) -> dict:
    """Two-hop queries: single-hop and two-hop accuracy, when bridge and answer enter the lens top-k."""
    pool = TH.load_queries()
    items = select(pool, cfg.n, ctx.rng_for("sample"))
    pairs = TH.foil_pairs(hm, items, pool, ctx)
    done = ctx.map("queries", TH.chunked(pairs, cfg.chunk), lambda ch: TH.status_chunk(hm, ch, cfg.top_k))
    recs = [r for ch in done for r in ch]
    L = hm.info.n_layers
    analysis = {s: analyse(_subset(recs, s), cfg.top_k, L) for s in SUBSETS}
    analysis["both_hops_by_twohop_outcome"] = {
        "correct": analyse([r for r in _subset(recs, "both_hops") if r["twohop"]], cfg.top_k, L),
        "wrong": analyse([r for r in _subset(recs, "both_hops") if not r["twohop"]], cfg.top_k, L)}
    prereg = _prereg(analysis)
    entry = analysis["all"]["entry_layer_mean"]
    depth = {f"two-hop {nm} (mean entry layer)": 100.0 * entry[nm]["estimate"] / max(1, L - 1)
             for nm in ("bridge", "answer") if entry[nm].get("estimate") is not None}
    result = {**_summary(analysis, recs, prereg), "prereg": prereg, "definitions": DEFINITIONS, "n_layers": L,
              "depth": depth,
              "accuracy_by_family": _by_family(recs), "analysis": analysis, "queries": recs}
    _figures(recs, analysis, cfg, L, ctx)
    cross_model_figure(ctx, hm, "twohop", result, _cross_panels)
    return result


DEFINITIONS = {
    "answers": "top-1 next token after the prompt is the first token of ' ' + an alias (an alias 'the X' counts "
               "through X's first token, or when the greedy continuation is the whole ' the X'); mlxinterp.tasks.twohop",
    "twohop_full_sequence": "stricter: the greedy continuation reproduces every token of some answer alias",
    "rank": "tokens with a strictly larger logit than the best of the target's first tokens (0 = top-1)",
    "entry layer": "first layer whose logit-lens rank at the last position is < top_k (block output, final norm)",
    "gap": "answer entry layer - bridge entry layer (queries where both enter)",
    "sequential": "bridge enters strictly before the answer",
    "foil": "another query of the same family (no shared first token of bridge or answer), drawn a priori",
    "both_hops": "queries whose hop1_prompt yields the bridge and hop2_prompt the answer",
    "minus foil": "per query, 1[target enters top-k] - 1[foil target enters top-k]; mean over queries with a foil",
}


def _prereg(an: dict) -> dict:
    """The pre-registered checks (mlxinterp/data/preregistration.toml) on every query and on both-hops queries."""
    prereg = preregistration.load()
    return {"sha256": prereg.sha256, "primary": prereg.primary("twohop"),
            "checks": {"bridge_above_foil": prereg.check("twohop", "bridge_above_foil", an["all"]["entered_minus_foil"]["bridge"]),
                       "sequential_majority": prereg.check("twohop", "sequential_majority",
                                                           an["both_hops"]["sequential_of_both_entered"])}}


def _subset(recs: list[dict], name: str) -> list[dict]:
    return recs if name == "all" else [r for r in recs if r["hop1"] and r["hop2"]]


def analyse(recs: list[dict], k: int, n_layers: int) -> dict:
    """Entry rates, sequential share and gaps, with Wilson / bootstrap CIs."""
    n = len(recs)
    entry = lambda nm: [r["entry"].get(nm) for r in recs if nm in r["entry"]]  # noqa: E731
    entered = {nm: proportion_ci(sum(e is not None for e in entry(nm)), len(entry(nm)))
               for nm in ("bridge", "answer", "foil_bridge", "foil_answer")}
    both = [r for r in recs if r["entry"]["bridge"] is not None and r["entry"]["answer"] is not None]
    gaps = [r["entry"]["answer"] - r["entry"]["bridge"] for r in both]
    seq = sum(g > 0 for g in gaps)
    cats = {"bridge_first": seq, "same_layer": sum(g == 0 for g in gaps), "answer_first": sum(g < 0 for g in gaps),
            "only_bridge_enters": sum(r["entry"]["bridge"] is not None and r["entry"]["answer"] is None for r in recs),
            "only_answer_enters": sum(r["entry"]["bridge"] is None and r["entry"]["answer"] is not None for r in recs),
            "neither_enters": sum(r["entry"]["bridge"] is None and r["entry"]["answer"] is None for r in recs)}
    layer = lambda nm: [r["entry"][nm] for r in recs if r["entry"].get(nm) is not None]  # noqa: E731
    paired = [r for r in recs if "foil_bridge" in r["entry"]]  # queries with a foil (same-family control)
    minus_foil = {nm: paired_binary_diff_ci([float(r["entry"][nm] is not None) - float(r["entry"][f"foil_{nm}"] is not None)
                                             for r in paired]) for nm in ("bridge", "answer")}
    return {"n": n, "top_k": k,
            "accuracy": {h: proportion_ci(sum(r[h] for r in recs), n) for h in ("hop1", "hop2", "twohop", "twohop_full_sequence")},
            "entered_top_k": entered, "entered_minus_foil": minus_foil, "categories": cats,
            "sequential_of_both_entered": proportion_ci(seq, len(both)), "sequential_of_all": proportion_ci(seq, n),
            "gap_mean": mean_ci(gaps), "gap_median": float(np.median(gaps)) if gaps else None,
            "gap_mean_relative_depth": mean_ci(np.array(gaps, float) / max(1, n_layers - 1)),
            "entry_layer_mean": {nm: mean_ci(layer(nm)) for nm in ("bridge", "answer", "foil_bridge", "foil_answer")}}


def _by_family(recs: list[dict]) -> dict:
    fams = sorted({r["family"] for r in recs})
    out = {}
    for f in fams:
        rs = [r for r in recs if r["family"] == f]
        out[f] = {h: proportion_ci(sum(r[h] for r in rs), len(rs)) for h in ("hop1", "hop2", "twohop")}
        out[f]["both_hops"] = proportion_ci(sum(r["hop1"] and r["hop2"] for r in rs), len(rs))
    return out


def _summary(an: dict, recs: list[dict], prereg: dict) -> dict:
    a, b = an["all"], an["both_hops"]
    s = Summary()
    s.add("queries", "queries", len(recs))
    s.add("hop1_accuracy", "hop1 accuracy", ci_text(a["accuracy"]["hop1"]))
    s.add("hop2_accuracy", "hop2 accuracy", ci_text(a["accuracy"]["hop2"]))
    s.add("twohop_accuracy", "two-hop accuracy", ci_text(a["accuracy"]["twohop"]))
    s.add("twohop_accuracy_full_sequence", "two-hop accuracy (full answer sequence)",
          ci_text(a["accuracy"]["twohop_full_sequence"]))
    s.add("both_hops_answered", "both hops answered", f"{b['n']}/{a['n']}")
    s.add("twohop_accuracy_given_both_hops", "two-hop accuracy | both hops", ci_text(b["accuracy"]["twohop"]))
    for what in ("bridge", "foil_bridge", "answer", "foil_answer"):
        s.add(f"{what}_enters_top_k", f"{what.replace('_', ' ')} enters top-k (all)", ci_text(a["entered_top_k"][what]))
    s.add("sequential.all", "sequential, of both entered (all)", ci_text(a["sequential_of_both_entered"]))
    s.add("sequential.both_hops", "sequential, of both entered (both hops)", ci_text(b["sequential_of_both_entered"]))
    s.add("gap_mean.all", "mean gap, layers (all)", ci_text(a["gap_mean"]))
    s.add("gap_mean.both_hops", "mean gap, layers (both hops)", ci_text(b["gap_mean"]))
    for what in ("bridge", "answer"):
        s.add(f"{what}_minus_foil", f"{what} minus foil {what} entering top-k (all, paired)",
              ci_text(a["entered_minus_foil"][what]))
    s.add_checks(prereg)
    return s.to_result()


# ----------------------------------------------------------------- figures


def _figures(recs: list[dict], an: dict, cfg: TwohopConfig, L: int, ctx) -> None:
    fig, axes = subplots(1, 2, figsize=(12, 4.2), sharey=True)
    styles = {"bridge": ("tab:blue", "-"), "answer": ("tab:red", "-"),
              "foil_bridge": ("tab:blue", ":"), "foil_answer": ("tab:red", ":")}
    for ax, s in zip(axes, SUBSETS):
        rs = _subset(recs, s)
        for nm, (c, ls) in styles.items():
            m = np.array([r["ranks"][nm] for r in rs if nm in r.get("ranks", {})], float) + 1
            if not len(m):
                continue
            q1, med, q3 = np.percentile(m, [25, 50, 75], axis=0)
            ax.plot(range(L), med, color=c, ls=ls, label=f"{nm.replace('_', ' ')} (median)")
            if not nm.startswith("foil"):
                ax.fill_between(range(L), q1, q3, color=c, alpha=0.15)
        ax.axhline(cfg.top_k, color="grey", lw=0.8, ls="--")
        ax.set(yscale="log", xlabel="layer (block output)", title=f"{s.replace('_', ' ')} (n={len(rs)}): rank at last position")
    axes[0].set_ylabel("logit-lens rank + 1 (median, IQR shaded)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure("twohop_ranks", fig)

    fig, ax = subplots(figsize=(6.5, 4))
    bins = np.arange(-L, L + 1) - 0.5
    for s, c in zip(SUBSETS, ("tab:grey", "tab:green")):
        g = [r["entry"]["answer"] - r["entry"]["bridge"] for r in _subset(recs, s)
             if r["entry"]["answer"] is not None and r["entry"]["bridge"] is not None]
        ax.hist(g, bins=bins, alpha=0.6, color=c, label=f"{s.replace('_', ' ')} (n={len(g)} where both enter)")
    ax.axvline(0, color="k", lw=0.8)
    ax.set(xlabel="answer entry layer - bridge entry layer (> 0: sequential)", ylabel="queries",
           title=f"gap between entries into the lens top-{cfg.top_k}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    ctx.save_figure("twohop_gaps", fig)

    rows = [("hop1 answered", lambda a: a["accuracy"]["hop1"]), ("hop2 answered", lambda a: a["accuracy"]["hop2"]),
            ("two-hop answered", lambda a: a["accuracy"]["twohop"]),
            ("bridge enters top-k", lambda a: a["entered_top_k"]["bridge"]),
            ("foil bridge enters", lambda a: a["entered_top_k"]["foil_bridge"]),
            ("answer enters top-k", lambda a: a["entered_top_k"]["answer"]),
            ("foil answer enters", lambda a: a["entered_top_k"]["foil_answer"]),
            ("sequential | both enter", lambda a: a["sequential_of_both_entered"])]
    fig, ax = subplots(figsize=(11, 4))
    x = np.arange(len(rows))
    for j, (s, c) in enumerate(zip(SUBSETS, ("tab:grey", "tab:green"))):
        cis = [f(an[s]) for _, f in rows]
        bars(ax, x + (j - 0.5) * 0.38, cis, 0.38, c, f"{s.replace('_', ' ')} (n={an[s]['n']})")
    ax.set_xticks(x, [r for r, _ in rows], rotation=20, ha="right")
    ax.set(ylabel="proportion (95 % Wilson CI)", ylim=(0, 1.05), title="two-hop outcomes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    ctx.save_figure("twohop_rates", fig)


# ----------------------------------------------------------------- across models


def _cross_panels(models):
    fig, axes = subplots(1, 3, figsize=(15, 4))
    labels = [model_label(i) for i, _ in models]
    x = np.arange(len(models))
    for j, (s, c) in enumerate(zip(SUBSETS, ("tab:grey", "tab:green"))):
        off = x + (j - 0.5) * 0.38
        bars(axes[0], off, [r["analysis"][s]["accuracy"]["twohop"] for _, r in models], 0.38, c, s)
        bars(axes[1], off, [r["analysis"][s]["sequential_of_both_entered"] for _, r in models], 0.38, c, s)
        ci_points(axes[2], off, [r["analysis"][s]["gap_mean"] for _, r in models], fmt="o", color=c, capsize=3, label=s)
    for ax, t in zip(axes, ("two-hop accuracy", "sequential share (both entered)", "mean gap (layers)")):
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_title(t)
    axes[0].set_ylim(0, 1.05)
    axes[1].set_ylim(0, 1.05)
    axes[2].axhline(0, color="grey", lw=0.8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig

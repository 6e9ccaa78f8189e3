"""Back-patching (Biran et al., "Hopping Too Late", ICLR 2025; the cross-model plan section 2.2).

For two-hop queries the model gets wrong (the answer is not its top-1 token;
mlxinterp.tasks.twohop), take the last position's resid_post at every source layer
s and write it over the resid_post of every earlier target layer t < s (same
prompt, same position), then let the model run on: n(n-1)/2 = 153 (s, t)
pairs on an 18-layer model, all of one query in batched forwards
(mlxinterp.analysis.patching.run_variants; only the last position is unembedded).
A query is *fixed* by a pair when the answer becomes top-1.

Reported, with Wilson CIs and counts:
- oracle fix rate: fixed by at least one pair, the best pair chosen per query
  after the fact. This is how the paper counts ("up to 66 %"), and it is
  inflated by chance: 153 perturbations of a query whose answer is already
  at rank 1-5 often flip one. Hence two controls with the same pairs:
- donor control: the same 153 pairs, but the written vector comes from layer s
  of *another* query's two-hop prompt (same family, no shared first token of
  bridge or answer; drawn a priori). It carries the template and the layer
  but none of the query's own content;
- a priori pair: one pair per query drawn at random before measuring
  (own and donor), an unbiased single-pair rate;
- leave-one-out best pair: the pair that fixes most of the *other* queries,
  evaluated on this one (no selection on the query itself).

Subsets: `both_hops` (the model answers hop1 and hop2 alone: the paper's
setting) and `all_wrong`. Queries are patched in a seeded order, both_hops
first. Cost: 306 variants (own + donor) per query. Every patch is at the last
position, so with `reuse_prefix` (default) each variant runs one token on top
of the unpatched prompt's KV cache (run_variants; equal to full runs up to
float rounding). Measured on Gemma 3 270M, 2 shared CPU cores: ~4 s per query
under load (12 queries in 51 s).
Also reported: the share of pairs that fix a query (own vs donor), which
does not reward trying many pairs.

Sizes (full by default): n = 60 patches every wrong query that answers both
single hops (the paper's setting; 27 on Gemma 3 270M, all the data has; the
cross-model plan had 15) and then other wrong queries up to 60, so the
all-wrong estimates rest on >= 30 queries. All 247 wrong queries would take
~17 min. The quick profile (n = 6) is for smoke tests.

Intervals: fix rates are Wilson; own vs donor on the same queries is a paired
0/1 difference (paired_binary_diff_ci) beside the exact McNemar p; per-query
means (share of pairs fixing, log-prob changes) are mean_ci over queries.
A "best pair" is chosen on the selection half of the queries (even positions
in the seeded order) and its fix rate reported on the report half; the pair
that is best over all queries is listed without an interval (post hoc).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from scipy.stats import binomtest

from mlxinterp.suite.summary import Summary
from mlxinterp.analysis import patching as P
from mlxinterp.tasks import twohop as TH
from mlxinterp.analysis.stats import format_interval, mean_ci, paired_binary_diff_ci, proportion_ci
from mlxinterp.analysis.plotting import bars, cross_model_figure, model_label, subplots
from mlxinterp.suite import experiment, preregistration
from mlxinterp.tasks.twohop import choose_backpatch_queries, ci_text, statuses

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

PAPER_RATE = 0.66  # Biran et al.: up to 66 % of incorrect two-hop answers fixed (oracle over layer pairs)
PLAN_RATES = (0.60, 0.80)  # the cross-model plan: 9-12 of 15 cases per model
SUBSETS = ("both_hops", "all_wrong")


@dataclass
class BackpatchConfig:
    n: int = 60  # wrong queries patched (seeded order, those answering both single hops first): all of those,
    #              then others up to 60 so all_wrong has >= 30 (see the module doc)
    seed: int = 0
    control: bool = True  # donor control: the same pairs with another query's vectors
    batch_size: int = 32
    chunk: int = 8  # status chunking; equal to twohop's so its statuses are reused
    reuse_prefix: bool = True  # run only the last token per variant, the rest from the unpatched KV cache


@experiment("backpatch", BackpatchConfig, reuses=["twohop"], quick={"n": 6})
def backpatch(hm: HookedModel, cfg: BackpatchConfig, ctx) -> dict:
    """Back-patching later-layer states into earlier layers: fix rates (oracle, controls), per-pair map."""
    recs, source = statuses(hm, ctx, cfg.chunk)
    pool = {q["id"]: q for q in TH.load_queries()}
    chosen = choose_backpatch_queries(recs, cfg.n, ctx.rng_for("order"))
    L = hm.info.n_layers
    pairs = [(s, t) for s in range(L) for t in range(s)]
    jobs = []
    for r in chosen:
        q = pool[r["id"]]
        donor = TH.pick_foil(hm, q, list(pool.values()), TH.foil_rng(ctx.seed, q["id"])) if cfg.control else None
        jobs.append({"query": q, "donor": donor, "both_hops": bool(r["hop1"] and r["hop2"]),
                     "random_pair": int(ctx.rng_for("random_pair", q["id"]).integers(len(pairs)))})
    done = ctx.map("queries", jobs, lambda job: patch_query(hm, job, cfg.batch_size, cfg.reuse_prefix))
    an = {s: analyse([d for d in done if s == "all_wrong" or d["both_hops"]], pairs) for s in SUBSETS}
    prereg = _prereg(an)
    result = {**_summary(an, len(recs), sum(not r["twohop"] for r in recs), prereg), "prereg": prereg,
              "status_source": source,
              "definitions": DEFINITIONS, "pairs": pairs, "n_layers": L, "analysis": an,
              "eligible": {"wrong": sum(not r["twohop"] for r in recs),
                           "wrong_both_hops": sum((not r["twohop"]) and r["hop1"] and r["hop2"] for r in recs)},
              "queries": done}
    _figures(an, pairs, L, ctx)
    cross_model_figure(ctx, hm, "backpatch", result, _cross_panels)
    return result


DEFINITIONS = {
    "patch": "resid_post at the last position of layer t replaced by resid_post of layer s (> t) at the last position",
    "fixed": "the answer's first token (mlxinterp.tasks.twohop) becomes the top-1 next token",
    "oracle": "fixed by at least one of the pairs, chosen per query after the fact (the paper's count)",
    "donor control": "same pairs, written vector from another query's two-hop prompt (same family, layer s)",
    "a priori pair": "one (s, t) per query drawn at random before measuring",
    "leave-one-out best pair": "the pair with most fixes among the other queries, evaluated on this query",
    "McNemar p": "exact binomial test on the queries fixed by own-state pairs only vs by donor pairs only",
    "own minus donor": "per query, 1[fixed by own-state pairs] - 1[fixed by donor pairs]; mean over queries with both",
    "selection split": "queries at even positions of the patched order choose the best pair; it is evaluated on "
                       "the odd positions (report)",
}


def _prereg(an: dict) -> dict:
    """The pre-registered checks (mlxinterp/data/preregistration.toml) on the paper's subset (both hops answered)."""
    b = an["both_hops"]
    return {**preregistration.load().report("backpatch", {
        "own_beats_donor": b.get("oracle_own_minus_control"),
        "oracle_fix_rate": (b.get("own") or {}).get("oracle_fix_rate")}), "subset": "both_hops"}


def patch_query(hm: HookedModel, job: dict, batch_size: int, reuse_prefix: bool = True) -> dict:
    """All (s, t) back-patches of one query, and the donor control, in batched forwards."""
    q, donor = job["query"], job["donor"]
    ans = TH.target(hm, q["answer_aliases"])
    metric = TH.target_metric(ans)
    logits, resid = TH.last_states(hm, [q["prompt"]])
    base = np.array(metric(mx.array(logits)))[0].tolist()
    _, own = TH.backpatch_variants(resid[:, 0])
    variants = own
    if donor is not None:
        _, dres = TH.last_states(hm, [donor["prompt"]])
        _, ctrl = TH.backpatch_variants(resid[:, 0], dres[:, 0])
        variants = own + ctrl
    ids = hm.tokens(q["prompt"]).ids[0].tolist()
    out = P.run_variants(hm, ids, variants, metric, batch_size=batch_size, reuse_prefix=reuse_prefix)
    k = len(own)

    def pack(a: np.ndarray) -> dict:
        return {"logprob": np.round(a[:, 0], 4).tolist(), "rank": a[:, 1].astype(int).tolist(),
                "top1": a[:, 2].astype(int).tolist()}

    return {"id": q["id"], "family": q["family"], "both_hops": job["both_hops"], "donor": donor["id"] if donor else None,
            "random_pair": job["random_pair"], "baseline": {"logprob": round(base[0], 4), "rank": int(base[1])},
            "already_top1_unbatched": bool(base[2]), "own": pack(out[:k]),
            "control": pack(out[k:]) if donor is not None else None}


# ----------------------------------------------------------------- analysis


def fix_matrix(done: list[dict], arm: str) -> np.ndarray:
    """[queries, pairs] booleans: did the pair make the answer top-1? (queries already top-1 left out)."""
    rows = [d[arm]["top1"] for d in done if d.get(arm) and not d["already_top1_unbatched"]]
    if not rows:  # no query in this subset (e.g. none answers both single hops): an empty matrix, not a crash
        return np.zeros((0, 0), bool)
    return np.array(rows, bool)


def loo_best_pair(fixed: np.ndarray) -> np.ndarray:
    """Per query: fixed by the pair with most fixes among the *other* queries? (ties: lowest pair index)."""
    if fixed.shape[0] < 2:
        return np.zeros(fixed.shape[0], bool)
    totals = fixed.sum(axis=0)
    out = []
    for i in range(fixed.shape[0]):
        best = int(np.argmax(totals - fixed[i]))
        out.append(bool(fixed[i, best]))
    return np.array(out, bool)


def analyse(done: list[dict], pairs: list[tuple[int, int]]) -> dict:
    """Fix rates (oracle, a priori pair, leave-one-out best pair; own and donor), per-pair rates, log-prob changes."""
    kept = [d for d in done if not d["already_top1_unbatched"]]
    out = {"n": len(kept), "left_out_already_top1": len(done) - len(kept)}
    for arm in ("own", "control"):
        fx = fix_matrix(kept, arm)
        ds = [d for d in kept if d.get(arm)]
        if not len(ds):
            out[arm] = None
            continue
        n = len(ds)
        rand = [bool(d[arm]["top1"][d["random_pair"]]) for d in ds]
        sel, rep = fx[0::2], fx[1::2]
        best_sel = int(np.argmax(sel.sum(axis=0))) if len(sel) else 0
        per_pair = fx.sum(axis=0)
        dlp = np.array([np.array(d[arm]["logprob"]) - d["baseline"]["logprob"] for d in ds])
        out[arm] = {
            "oracle_fix_rate": proportion_ci(int(fx.any(axis=1).sum()), n),
            "a_priori_pair_fix_rate": proportion_ci(int(sum(rand)), n),
            "loo_best_pair_fix_rate": proportion_ci(int(loo_best_pair(fx).sum()), n),
            "best_pair_post_hoc": {"pair": list(pairs[int(np.argmax(per_pair))]), "k": int(per_pair.max()), "n": n,
                                   "note": "chosen on these queries: no interval"},
            "best_pair_split": {"pair": list(pairs[best_sel]), "selection_ids": [d["id"] for d in ds[0::2]],
                                "report_ids": [d["id"] for d in ds[1::2]],
                                "selection_fixes": int(sel[:, best_sel].sum()) if len(sel) else 0,
                                "report_fix_rate": proportion_ci(int(rep[:, best_sel].sum()) if len(rep) else 0, len(rep))},
            "mean_pair_fix_rate": float(fx.mean()) if fx.size else None,
            "share_of_pairs_fixing": mean_ci(fx.mean(axis=1)),  # per query, then mean with a CI over queries
            "pairs_fixing_per_query": [int(x) for x in fx.sum(axis=1)],
            "per_pair_fixes": [int(x) for x in per_pair],
            "delta_logprob_best_pair": mean_ci(dlp.max(axis=1)),
            "delta_logprob_mean_over_pairs": mean_ci(dlp.mean(axis=1)),
            "fixed_ids": [d["id"] for d, f in zip(ds, fx.any(axis=1)) if f],
        }
    ranks = np.array([d["baseline"]["rank"] for d in kept])
    if out.get("own") and out.get("control"):
        # paired comparisons only over queries with both arms (a query without a same-family donor has no control)
        paired = [d for d in kept if d.get("own") and d.get("control")]
        a, b = fix_matrix(paired, "own").any(axis=1), fix_matrix(paired, "control").any(axis=1)
        paired_ranks = np.array([d["baseline"]["rank"] for d in paired])
        own_only, ctl_only = int((a & ~b).sum()), int((~a & b).sum())
        out["oracle_own_vs_control"] = {
            "both": int((a & b).sum()), "own_only": own_only, "control_only": ctl_only, "neither": int((~a & ~b).sum()),
            "mcnemar_exact_p": float(binomtest(own_only, own_only + ctl_only).pvalue) if own_only + ctl_only else None}
        out["oracle_own_minus_control"] = paired_binary_diff_ci((a.astype(float) - b.astype(float)).tolist())
        ra = np.array([bool(d["own"]["top1"][d["random_pair"]]) for d in paired], float)
        rb = np.array([bool(d["control"]["top1"][d["random_pair"]]) for d in paired], float)
        out["a_priori_own_minus_control"] = paired_binary_diff_ci((ra - rb).tolist())
        out["oracle_by_baseline_rank"] = {  # answer already second (rank 1) vs further down
            name: {"own": proportion_ci(int(a[m].sum()), int(m.sum())), "control": proportion_ci(int(b[m].sum()), int(m.sum()))}
            for name, m in (("rank_1", paired_ranks <= 1), ("rank_2_or_more", paired_ranks > 1))}
    if out.get("own") and len(kept):
        fixed = fix_matrix(kept, "own").any(axis=1)
        out["baseline_rank_median"] = {"fixed": float(np.median(ranks[fixed])) if fixed.any() else None,
                                       "not_fixed": float(np.median(ranks[~fixed])) if (~fixed).any() else None}
    return out


def _summary(an: dict, n_queries: int, n_wrong: int, prereg: dict) -> dict:
    s = Summary()
    s.add("queries_wrong", "queries wrong (of all)", f"{n_wrong}/{n_queries}")
    for sub in SUBSETS:
        a = an[sub]
        if sub == "all_wrong" and a["n"] == an["both_hops"]["n"]:  # both-hops queries are patched first
            s.add(f"{sub}.patched", f"{sub}: patched", f"{a['n']} (the same queries as both_hops: raise --n past them)")
            continue
        s.add(f"{sub}.patched", f"{sub}: patched", a["n"])
        for arm, name in (("own", "own"), ("control", "donor control")):
            if a.get(arm):
                s.add(f"{sub}.{arm}.oracle_fix_rate", f"{sub}: oracle fix rate, {name}", ci_text(a[arm]["oracle_fix_rate"]))
                s.add(f"{sub}.{arm}.a_priori_pair_fix_rate", f"{sub}: a priori pair fix rate, {name}",
                      ci_text(a[arm]["a_priori_pair_fix_rate"]))
        if a.get("oracle_own_vs_control"):
            c = a["oracle_own_vs_control"]
            p = c["mcnemar_exact_p"]
            s.add(f"{sub}.oracle_own_vs_control", f"{sub}: oracle own-only / donor-only (McNemar p)",
                  f"{c['own_only']} / {c['control_only']} (p = {p:.3g})" if p is not None else "0 / 0")
        if a.get("oracle_own_minus_control"):
            s.add(f"{sub}.oracle_own_minus_control", f"{sub}: oracle fix rate, own minus donor (paired)",
                  ci_text(a["oracle_own_minus_control"]))
        if a.get("own"):
            s.add(f"{sub}.own.loo_best_pair_fix_rate", f"{sub}: leave-one-out best pair fix rate",
                  ci_text(a["own"]["loo_best_pair_fix_rate"]))
            bp = a["own"]["best_pair_split"]
            s.add(f"{sub}.own.best_pair_report_fix_rate",
                  f"{sub}: best pair {tuple(bp['pair'])} (chosen on selection half), fix rate on report half",
                  ci_text(bp["report_fix_rate"]))
        for arm, name in (("own", "own"), ("control", "donor")):
            if a.get(arm):
                s.add(f"{sub}.{arm}.share_of_pairs_fixing", f"{sub}: % of pairs that fix, {name}",
                      _pct(a[arm]["share_of_pairs_fixing"]))
    s.add("paper_oracle_rate", "paper (oracle, up to)", f"{PAPER_RATE:.0%}")
    s.add("earlier_plan_oracle_rates", "cross-model plan (oracle, 15 cases)",
          f"{PLAN_RATES[0]:.0%}-{PLAN_RATES[1]:.0%}")
    for name, c in prereg["checks"].items():
        v = c.get("value")
        s.add(f"prereg.{name}", f"pre-registered {name} (both hops)",
              f"{c['verdict']} ({v:.3f} {c['op']} {c['threshold']}, {c['bound']})" if v is not None else c["verdict"])
    return s.to_result()


def _pct(c: dict) -> str:
    return format_interval({**c, "k": None}, ".1f", pct=True, counts=True)


# ----------------------------------------------------------------- figures


def pair_grid(per_pair: list[int], n: int, pairs: list[tuple[int, int]], L: int) -> np.ndarray:
    """[source, target] fix rate (NaN where t >= s)."""
    g = np.full((L, L), np.nan)
    for (s, t), k in zip(pairs, per_pair):
        g[s, t] = k / n if n else np.nan
    return g


def _figures(an: dict, pairs, L: int, ctx) -> None:
    a = an["all_wrong"]
    arms = [arm for arm in ("own", "control") if a.get(arm)]
    if not arms:
        fig, ax = subplots(figsize=(5, 2))
        ax.text(0.5, 0.5, "no wrong query to patch", ha="center", va="center")
        ax.axis("off")
        ctx.save_figure("backpatch_pairs", fig)
    else:
        _pair_maps(a, arms, pairs, L, ctx)
    _rates_figure(an, ctx)


def _pair_maps(a: dict, arms: list[str], pairs, L: int, ctx) -> None:
    fig, axes = subplots(1, len(arms), figsize=(6 * len(arms), 5), squeeze=False)
    grids = {arm: pair_grid(a[arm]["per_pair_fixes"], a["n"], pairs, L) for arm in arms}
    top = max([0.05] + [float(np.nanmax(g)) for g in grids.values() if np.isfinite(g).any()])  # one scale for both
    for ax, arm in zip(axes[0], arms):
        im = ax.imshow(grids[arm], origin="lower", cmap="viridis", vmin=0, vmax=top)
        ax.set(xlabel="target layer t (overwritten)", ylabel="source layer s",
               title=f"{'own state' if arm == 'own' else 'donor control'}: fix rate per pair (n={a['n']})")
        fig.colorbar(im, ax=ax, label="share of queries fixed")
    fig.tight_layout()
    ctx.save_figure("backpatch_pairs", fig)


def _rates_figure(an: dict, ctx) -> None:
    rows = [("oracle, own", "own", "oracle_fix_rate"), ("oracle, donor", "control", "oracle_fix_rate"),
            ("LOO best pair, own", "own", "loo_best_pair_fix_rate"), ("LOO best pair, donor", "control", "loo_best_pair_fix_rate"),
            ("a priori pair, own", "own", "a_priori_pair_fix_rate"), ("a priori pair, donor", "control", "a_priori_pair_fix_rate")]
    fig, ax = subplots(figsize=(10, 4.2))
    x = np.arange(len(rows))
    empty = {"estimate": None, "low": None, "high": None}
    for j, (s, c) in enumerate(zip(SUBSETS, ("tab:green", "tab:grey"))):
        cis = [(an[s].get(arm) or {}).get(key, empty) for _, arm, key in rows]
        bars(ax, x + (j - 0.5) * 0.38, cis, 0.38, c, f"{s.replace('_', ' ')} (n={an[s]['n']})")
    ax.axhline(PAPER_RATE, color="tab:red", ls="--", lw=1, label="paper: up to 66 % (oracle)")
    ax.axhspan(*PLAN_RATES, color="tab:orange", alpha=0.15, label="the cross-model plan: 60-80 % (oracle, 15 cases)")
    ax.set_xticks(x, [r for r, _, _ in rows], rotation=15, ha="right")
    ax.set(ylim=(0, 1.05), ylabel="share of wrong queries fixed (95 % Wilson CI)", title="back-patching fix rates")
    ax.legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure("backpatch_rates", fig)


def _cross_panels(models):
    fig, ax = subplots(figsize=(max(6, 2.5 * len(models)), 4))
    x = np.arange(len(models))
    rows = [("oracle, own", "own", "oracle_fix_rate", "tab:green"), ("oracle, donor", "control", "oracle_fix_rate", "tab:grey"),
            ("LOO best pair, own", "own", "loo_best_pair_fix_rate", "tab:blue")]
    empty = {"estimate": None, "low": None, "high": None}
    for j, (name, arm, key, c) in enumerate(rows):
        cis = [(r["analysis"]["all_wrong"].get(arm) or {}).get(key, empty) for _, r in models]
        bars(ax, x + (j - 1) * 0.27, cis, 0.27, c, name)
    ax.axhline(PAPER_RATE, color="tab:red", ls="--", lw=1, label="paper 66 %")
    ax.set_xticks(x, [model_label(i) for i, _ in models], fontsize=7)
    ax.set(ylim=(0, 1.05), ylabel="fix rate, all wrong queries", title="back-patching across models")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig

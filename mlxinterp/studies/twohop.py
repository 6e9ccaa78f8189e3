"""Two-hop reasoning through the logit lens (seed 004 section 2.1; Biran et al., "Hopping Too Late", ICLR 2025).

Per query of data/twohop/queries.json: does the model answer each single hop
(hop1_prompt -> bridge, hop2_prompt -> answer) and the two-hop prompt
(definition of "answers": mlxinterp.tasks.twohop); and, through the logit lens at
the two-hop prompt's last position, the rank of the bridge and of the answer
at every layer, the first layer each enters the top-k (k = 30, seed 004's
choice), and the gap answer layer - bridge layer. A query is *sequential*
when the bridge enters strictly before the answer.

Control: the same ranks for a foil bridge and a foil answer (another query of
the same family, chosen a priori), so "the bridge enters the top 30" can be
compared with how often any same-type entity does.

Batching and resume: queries run `cfg.chunk` at a time in left-padded
batches; a chunk is the unit `ctx.map` checkpoints (at most one chunk is
redone after a kill). The per-query statuses are reused by the backpatch and
crossprompt experiments (`statuses`).

Cost (Gemma 3 270M, 2 shared CPU cores): ~0.8-1.2 s per query (3 forwards,
an 18-layer x 262k lens); all 344 queries, the default (so backpatch and
crossprompt can reuse the statuses), took 6.6 min at load ~13.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlxinterp.core import io
from mlxinterp.tasks import twohop as TH
from mlxinterp.analysis.stats import bootstrap_ci, proportion_ci
from mlxinterp.suite import experiment

SUBSETS = ("all", "both_hops")  # every query; queries whose two single hops the model answers


@dataclass
class TwohopConfig:
    n: int = 344  # queries (a seeded random sample when fewer than the data set's 344)
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


def chunked(xs: list, size: int) -> list[list]:
    return [xs[i : i + size] for i in range(0, len(xs), size)]


def status_chunk(hm, pairs: list[list[dict]], top_k: int | None) -> list[dict]:
    """Per (query, foil) pair: single-hop and two-hop outcomes; with top_k, logit-lens ranks too.

    One left-padded batch per prompt kind. With top_k None nothing is captured
    (statuses only: the outcomes are the same numbers either way).
    """
    items = [q for q, _ in pairs]
    dec = hm.tokenizer.decode
    ans = [TH.target(hm, q["answer_aliases"]) for q in items]
    bri = [TH.target(hm, q["bridge_aliases"]) for q in items]
    two = [q["prompt"] for q in items]
    logits, resid = TH.last_states(hm, two, batch_size=len(two), capture=top_k is not None)
    hop1, hop2 = _dedup_logits(hm, [q["hop1_prompt"] for q in items]), _dedup_logits(hm, [q["hop2_prompt"] for q in items])
    ok2 = TH.judge(hm, two, logits, ans)
    ok_h1 = TH.judge(hm, [q["hop1_prompt"] for q in items], hop1, bri)
    ok_h2 = TH.judge(hm, [q["hop2_prompt"] for q in items], hop2, ans)
    strict = [False] * len(items)
    idx = [i for i, ok in enumerate(ok2) if ok]
    if idx:
        full = TH.answers_fully(hm, [two[i] for i in idx], [ans[i].seqs for i in idx])
        for i, f in zip(idx, full):
            strict[i] = f
    out = []
    for i, (q, foil) in enumerate(pairs):
        rec = {"id": q["id"], "family": q["family"], "difficulty": q["difficulty"], "foil": foil["id"] if foil else None,
               "twohop": bool(ok2[i]), "twohop_full_sequence": bool(strict[i]), "hop1": bool(ok_h1[i]),
               "hop2": bool(ok_h2[i]), "top1": {"twohop": dec([int(np.argmax(logits[i]))]),
                                                "hop1": dec([int(np.argmax(hop1[i]))]), "hop2": dec([int(np.argmax(hop2[i]))])},
               "final_rank": {"answer": int(TH.ranks(logits[i], ans[i].first)),
                              "bridge": int(TH.ranks(logits[i], bri[i].first))}}
        out.append(rec)
    if top_k is not None:
        sets = []
        for q, foil in pairs:
            s = [TH.target(hm, q["bridge_aliases"]).first, TH.target(hm, q["answer_aliases"]).first]
            if foil:
                s += [TH.target(hm, foil["bridge_aliases"]).first, TH.target(hm, foil["answer_aliases"]).first]
            sets.append(s)
        width = max(map(len, sets))
        sets = [s + [s[0]] * (width - len(s)) for s in sets]  # pad rows without a foil, dropped below
        r = TH.lens_ranks(hm, resid, sets)
        for i, rec in enumerate(out):
            names = ["bridge", "answer"] + (["foil_bridge", "foil_answer"] if pairs[i][1] else [])
            rec["ranks"] = {nm: r[i, j].tolist() for j, nm in enumerate(names)}
            rec["entry"] = {nm: TH.first_entry(rec["ranks"][nm], top_k) for nm in names}
    return out


def _dedup_logits(hm, prompts: list[str]) -> np.ndarray:
    """Final last-position logits per prompt, running each distinct prompt once."""
    uniq = list(dict.fromkeys(prompts))
    logits, _ = TH.last_states(hm, uniq, batch_size=len(uniq), capture=False)
    where = {p: i for i, p in enumerate(uniq)}
    return logits[[where[p] for p in prompts]]


def foil_pairs(hm, items: list[dict], pool: list[dict], ctx) -> list[list[dict]]:
    """(query, foil) per query; the foil is drawn a priori with a per-query seed (stable under resume and n)."""
    return [[q, TH.pick_foil(hm, q, pool, TH.foil_rng(ctx.seed, q["id"]))] for q in items]


def statuses(hm, ctx, chunk: int = 8) -> tuple[list[dict], str]:
    """Every query's outcomes (answers hop1 / hop2 / two-hop), and where they came from.

    Reused from this model's twohop result when it covers every query with
    the same weights (same chunking, hence the same numbers); else computed
    here, checkpointed by ctx.map under the key "status".
    """
    pool = TH.load_queries()
    path = Path(ctx.out_dir).parent / "twohop" / "result.json"
    if path.exists():
        try:
            rec = io.read_json(path)
            res = rec["result"]
            same = (rec.get("model", {}).get("weights_hash") == hm.info.weights_hash
                    and rec.get("config", {}).get("chunk") == chunk and rec.get("seed") == ctx.seed)
            byid = {q["id"]: q for q in res["queries"]}
            if same and all(q["id"] in byid for q in pool):
                return [byid[q["id"]] for q in pool], f"reused from {path.parent.name}/result.json"
        except Exception as exc:  # noqa: BLE001 - any unreadable result just means we recompute
            ctx.log(f"not reusing {path}: {exc}")
    pairs = foil_pairs(hm, pool, pool, ctx)
    done = ctx.map("status", chunked(pairs, chunk), lambda ch: status_chunk(hm, ch, None))
    return [r for ch in done for r in ch], "computed (no matching twohop result)"


# ----------------------------------------------------------------- experiment


@experiment("twohop", TwohopConfig)
def twohop(hm, cfg: TwohopConfig, ctx) -> dict:
    """Two-hop queries: single-hop and two-hop accuracy, when bridge and answer enter the lens top-k."""
    pool = TH.load_queries()
    items = select(pool, cfg.n, ctx.rng_for("sample"))
    pairs = foil_pairs(hm, items, pool, ctx)
    done = ctx.map("queries", chunked(pairs, cfg.chunk), lambda ch: status_chunk(hm, ch, cfg.top_k))
    recs = [r for ch in done for r in ch]
    L = hm.info.n_layers
    analysis = {s: analyse(_subset(recs, s), cfg.top_k, L) for s in SUBSETS}
    analysis["both_hops_by_twohop_outcome"] = {
        "correct": analyse([r for r in _subset(recs, "both_hops") if r["twohop"]], cfg.top_k, L),
        "wrong": analyse([r for r in _subset(recs, "both_hops") if not r["twohop"]], cfg.top_k, L)}
    result = {"summary": _summary(analysis, recs), "definitions": DEFINITIONS, "n_layers": L,
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
}


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
    return {"n": n, "top_k": k,
            "accuracy": {h: proportion_ci(sum(r[h] for r in recs), n) for h in ("hop1", "hop2", "twohop", "twohop_full_sequence")},
            "entered_top_k": entered, "categories": cats,
            "sequential_of_both_entered": proportion_ci(seq, len(both)), "sequential_of_all": proportion_ci(seq, n),
            "gap_mean": bootstrap_ci(gaps), "gap_median": float(np.median(gaps)) if gaps else None,
            "gap_mean_relative_depth": bootstrap_ci(np.array(gaps, float) / max(1, n_layers - 1)),
            "entry_layer_mean": {nm: bootstrap_ci(layer(nm)) for nm in ("bridge", "answer", "foil_bridge", "foil_answer")}}


def _by_family(recs: list[dict]) -> dict:
    fams = sorted({r["family"] for r in recs})
    out = {}
    for f in fams:
        rs = [r for r in recs if r["family"] == f]
        out[f] = {h: proportion_ci(sum(r[h] for r in rs), len(rs)) for h in ("hop1", "hop2", "twohop")}
        out[f]["both_hops"] = proportion_ci(sum(r["hop1"] and r["hop2"] for r in rs), len(rs))
    return out


def ci_text(c: dict, pct: bool = True) -> str:
    """'27.3 % [22.9, 32.2] (94/344)' for a proportion, '+1.23 [0.80, 1.70] (n=40)' for a mean."""
    if c.get("estimate") is None:
        return f"n/a (n={c.get('n', 0)})"
    if "k" in c:
        f = 100.0 if pct else 1.0
        return f"{f * c['estimate']:.1f} % [{f * c['low']:.1f}, {f * c['high']:.1f}] ({c['k']}/{c['n']})"
    return f"{c['estimate']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}] (n={c['n']})"


def _summary(an: dict, recs: list[dict]) -> dict:
    a, b = an["all"], an["both_hops"]
    return {
        "queries": len(recs),
        "hop1 accuracy": ci_text(a["accuracy"]["hop1"]), "hop2 accuracy": ci_text(a["accuracy"]["hop2"]),
        "two-hop accuracy": ci_text(a["accuracy"]["twohop"]),
        "two-hop accuracy (full answer sequence)": ci_text(a["accuracy"]["twohop_full_sequence"]),
        "both hops answered": f"{b['n']}/{a['n']}",
        "two-hop accuracy | both hops": ci_text(b["accuracy"]["twohop"]),
        "bridge enters top-k (all)": ci_text(a["entered_top_k"]["bridge"]),
        "foil bridge enters top-k (all)": ci_text(a["entered_top_k"]["foil_bridge"]),
        "answer enters top-k (all)": ci_text(a["entered_top_k"]["answer"]),
        "foil answer enters top-k (all)": ci_text(a["entered_top_k"]["foil_answer"]),
        "sequential, of both entered (all)": ci_text(a["sequential_of_both_entered"]),
        "sequential, of both entered (both hops)": ci_text(b["sequential_of_both_entered"]),
        "mean gap, layers (all)": ci_text(a["gap_mean"]),
        "mean gap, layers (both hops)": ci_text(b["gap_mean"]),
    }


# ----------------------------------------------------------------- figures


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (the suite runs headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figures(recs: list[dict], an: dict, cfg: TwohopConfig, L: int, ctx) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
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

    fig, ax = plt.subplots(figsize=(6.5, 4))
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
    fig, ax = plt.subplots(figsize=(11, 4))
    x = np.arange(len(rows))
    for j, (s, c) in enumerate(zip(SUBSETS, ("tab:grey", "tab:green"))):
        cis = [f(an[s]) for _, f in rows]
        bars(ax, x + (j - 0.5) * 0.38, cis, 0.38, c, f"{s.replace('_', ' ')} (n={an[s]['n']})")
    ax.set_xticks(x, [r for r, _ in rows], rotation=20, ha="right")
    ax.set(ylabel="proportion (95 % Wilson CI)", ylim=(0, 1.05), title="two-hop outcomes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    ctx.save_figure("twohop_rates", fig)


def bars(ax, x, cis: list[dict], width: float, color, label: str) -> None:
    """Bars of proportion estimates with their CI whiskers (a missing estimate draws nothing)."""
    est = np.array([c["estimate"] if c["estimate"] is not None else np.nan for c in cis], float)
    lo = np.array([c["low"] if c["low"] is not None else np.nan for c in cis], float)
    hi = np.array([c["high"] if c["high"] is not None else np.nan for c in cis], float)
    ax.bar(x, np.nan_to_num(est), width, color=color, alpha=0.8, label=label)
    ax.errorbar(x, est, yerr=[est - lo, hi - est], fmt="none", ecolor="k", capsize=3, lw=0.8)


# ----------------------------------------------------------------- across models


def sibling_results(ctx, hm, name: str, current: dict) -> list[tuple[dict, dict]]:
    """(model info, result) of every model with a finished `name` result in this output dir, by n_params.

    The running model's result is `current` (its result.json is written after the experiment returns).
    """
    root = Path(ctx.out_dir).parent.parent
    me = Path(ctx.out_dir).parent.name
    found = [(hm.info.to_dict(), current)]
    for path in sorted(root.glob(f"*/{name}/result.json")):
        if path.parent.parent.name == me:
            continue
        try:
            rec = io.read_json(path)
        except Exception:  # noqa: BLE001 - a broken sibling is simply left out of the comparison
            continue
        if rec.get("status") == "complete" and isinstance(rec.get("result"), dict):
            found.append((rec.get("model") or {}, rec["result"]))
    return sorted(found, key=lambda mr: (mr[0].get("n_params") or 0, mr[0].get("slug", "")))


def cross_model_figure(ctx, hm, name: str, current: dict, panels) -> None:
    """`<name>_models.png` when results exist for two or more models: panels(models) draws it."""
    models = sibling_results(ctx, hm, name, current)
    if len(models) < 2:
        return
    plt = pyplot()
    fig = panels(plt, models)
    ctx.save_figure(f"{name}_models", fig)


def model_label(info: dict) -> str:
    """'slug' and its size on two lines, for cross-model axes."""
    p = info.get("n_params") or 0
    return f"{info.get('slug', '?')}\n{p / 1e9:.2f}B" if p >= 1e8 else f"{info.get('slug', '?')}\n{p / 1e6:.0f}M"


def _cross_panels(plt, models):
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    labels = [model_label(i) for i, _ in models]
    x = np.arange(len(models))
    for j, (s, c) in enumerate(zip(SUBSETS, ("tab:grey", "tab:green"))):
        off = x + (j - 0.5) * 0.38
        bars(axes[0], off, [r["analysis"][s]["accuracy"]["twohop"] for _, r in models], 0.38, c, s)
        bars(axes[1], off, [r["analysis"][s]["sequential_of_both_entered"] for _, r in models], 0.38, c, s)
        g = [r["analysis"][s]["gap_mean"] for _, r in models]
        est = np.array([v["estimate"] if v["estimate"] is not None else np.nan for v in g], float)
        lo = np.array([v["low"] if v["low"] is not None else np.nan for v in g], float)
        hi = np.array([v["high"] if v["high"] is not None else np.nan for v in g], float)
        axes[2].errorbar(off, est, yerr=[est - lo, hi - est], fmt="o", color=c, capsize=3, label=s)
    for ax, t in zip(axes, ("two-hop accuracy", "sequential share (both entered)", "mean gap (layers)")):
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_title(t)
    axes[0].set_ylim(0, 1.05)
    axes[1].set_ylim(0, 1.05)
    axes[2].axhline(0, color="grey", lw=0.8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig

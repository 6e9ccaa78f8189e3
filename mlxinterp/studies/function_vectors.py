"""Function vectors: layer mean (v1), ICL minus zero-shot (v2) and Todd et al.'s head-level FV (v3).

Protocol, fixed before the first run (mlxinterp.tasks.function_vectors has the method):

1. Per task, the pairs are shuffled with a seeded generator and split: `n_pool`
   pairs for demonstrations and AIE queries, the next `n_eval` held out as
   zero-shot queries. ICL prompts have `n_demos` demonstrations (Todd et al.'s
   "Q: x\\nA: y" template) drawn from the pool, never containing the query.
2. AIE (Todd et al. section 2): `n` ICL prompts per task; every head of every
   layer gets its mean clean `attn.hook_z` (last position) patched into each
   shuffled-label prompt; effect = P(first answer token) patched - unpatched.
   Heads are ranked by the AIE averaged over tasks on the *selection* prompts
   (even-numbered AIE prompts of every task; Todd et al.'s universal head set)
   and the top `top_k` (Todd et al.: 10) are summed into each task's FV (v3).
   The chosen heads' AIE is reported on the *report* prompts (odd-numbered),
   with a two-stage cluster bootstrap (prompts within tasks).
3. v1 = mean resid_post over the AIE ICL prompts (last position) at each layer;
   v2 = v1 - mean resid_post over the zero-shot prompts of the same queries.
4. Zero-shot evaluation on the held-out queries: each vector added (scale 1)
   to resid_post at the last position of "Q: x\\nA:", at every layer (one
   batched run per query, prefix shared). Score: is the answer's first token
   the top-1 next token; lift = with vector - without, per query.
5. Layer choice for each vector: the layer with the largest mean lift over
   tasks on the even-numbered held-out queries (selection); every reported lift
   is on the odd-numbered ones (report): at the chosen layer per task (paired
   0/1 differences) and pooled (cluster bootstrap, queries within tasks), and
   at every layer as a family (simultaneous Bonferroni intervals, Holm p-values).
6. Unrelated contexts (Todd et al. section 3.2): on the report queries, prompts
   `natural_templates` with and without v3 added at the chosen layer (last
   prompt token); a hit is the answer appearing (whole word, case/accent-
   insensitive) in `natural_tokens` greedy tokens.

Sizes (full by default, FunctionVectorsConfig): all 8 tasks; 12 AIE prompts per task
(48 selection + 48 report); 30 held-out queries per task (120 selection + 120 report).
The quick profile (2 tasks, 4 AIE prompts, 8 held-out queries) is for smoke tests.
Cost (Gemma 3 270M, 72 heads): per task 12 x 73 patched last-token rows for the AIE plus
30 x 55 for the layer sweep and 30 short generations; the result records the measured
time under `timings`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from safetensors.numpy import save as st_save

from mlxinterp.suite.summary import Summary
from mlxinterp.tasks import behaviour as B
from mlxinterp.analysis import directions
from mlxinterp.tasks import function_vectors as F
from mlxinterp.tasks.function_vectors import FunctionVectorsConfig, task_split
from mlxinterp.core import taps as T
from mlxinterp.analysis.patching import run_variants
from mlxinterp.analysis.stats import (cluster_mean_ci, family_cis, holm, p_value_mean, paired_binary_diff_ci,
                                      paired_diff_ci, proportion_ci)
from mlxinterp.analysis.plotting import plot_ci, subplots
from mlxinterp.suite import experiment, preregistration
from mlxinterp.core import names as H
from mlxinterp.core.errors import PromptError
from mlxinterp.core.io import atomic_write_bytes

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

VECTORS = ("v1", "v2", "v3")


def aie_task(hm: HookedModel, split: dict, cfg: FunctionVectorsConfig) -> dict:
    """Clean/corrupt accuracy, per-prompt head effects, mean head contributions, v1 and v2 for one task."""
    sets = split["aie"]
    targets = [F.answer_token(hm, s.query[1]) for s in sets]
    clean = F.last_activations(hm, [s.clean for s in sets])
    zero = directions.collect(hm, [F.zero_shot_prompt(s.query[0]) for s in sets],
                              [H.resid_post(l) for l in range(hm.info.n_layers)], "last")
    zero_resid = np.stack([zero[H.resid_post(l)] for l in range(hm.info.n_layers)], axis=1)
    z_mean = clean["z"].mean(0)
    lp_clean = B.last_logprobs(hm, [s.clean for s in sets])
    lp_corrupt = B.last_logprobs(hm, [s.corrupt for s in sets])
    effects = [F.indirect_effects(hm, s.corrupt, t, z_mean, cfg.batch_size) for s, t in zip(sets, targets)]
    v1 = clean["resid"].mean(0)
    rows = np.arange(len(sets))
    return {
        "queries": [list(s.query) for s in sets],
        "p_clean": np.exp(lp_clean[rows, targets]).tolist(), "p_corrupt": np.exp(lp_corrupt[rows, targets]).tolist(),
        "clean_top1": (lp_clean.argmax(-1) == targets).tolist(), "corrupt_top1": (lp_corrupt.argmax(-1) == targets).tolist(),
        "effects": [e["effect"].tolist() for e in effects],
        "contrib": F.mean_contributions(hm, clean).tolist(),
        "v1": v1.tolist(), "v2": (v1 - zero_resid.mean(0)).tolist(),
        "zero_resid_norm": np.linalg.norm(zero_resid, axis=-1).mean(0).tolist(),
    }


def zero_shot_task(hm: HookedModel, split: dict, vectors: dict[str, np.ndarray], cfg: FunctionVectorsConfig) -> list[dict]:
    """Per held-out query: ICL top-1, zero-shot top-1 and answer margin (logit of the answer minus the best other
    logit), and the same with each vector at each layer."""
    held, n = split["held"], hm.info.n_layers
    prompts = [F.zero_shot_prompt(x) for x, _ in held]
    acts = directions.collect(hm, prompts, [H.resid_post(l) for l in range(n)], "last")
    resid = np.stack([acts[H.resid_post(l)] for l in range(n)], axis=1)
    icl = B.last_logprobs(hm, [s.clean for s in split["eval_icl"]])
    out = []
    for i, ((x, y), prompt) in enumerate(zip(held, prompts)):
        target = F.answer_token(hm, y)
        variants, labels = F.addition_variants(resid[i], vectors, range(n))
        vals = run_variants(hm, hm.tokens(prompt).ids[0].tolist(), variants, F.answer_margin(target),
                            batch_size=cfg.batch_size, reuse_prefix=True)
        rec = {"query": x, "answer": y, "target_token": hm.tokenizer.decode([target]),
               "icl_top1": bool(icl[i].argmax() == target), "base_top1": bool(vals[0] > 0), "base_margin": float(vals[0]),
               "top1": {v: [None] * n for v in vectors}, "margin": {v: [None] * n for v in vectors}}
        for (name, l), m in zip(labels[1:], vals[1:]):
            rec["top1"][name][l], rec["margin"][name][l] = bool(m > 0), float(m)
        out.append(rec)
    return out


def natural_task(hm: HookedModel, split: dict, fv: np.ndarray, layer: int, cfg: FunctionVectorsConfig) -> list[dict]:
    """Test queries in unrelated templates, greedy continuations with and without v3 at `layer`."""
    test = split["held"][1::2]
    taps = {H.resid_post(layer): T.Add(fv.astype(np.float32), positions="last", when="prompt")}
    out = []
    for tpl in cfg.natural_templates:
        prompts = [tpl.format(x=x) for x, _ in test]
        base = hm.generate_batch(prompts, cfg.natural_tokens)
        steered = hm.generate_batch(prompts, cfg.natural_tokens, taps)
        for (x, y), p, g0, g1 in zip(test, prompts, base, steered):
            out.append({"template": tpl, "query": x, "answer": y, "base": g0.text, "fv": g1.text,
                        "base_hit": B.contains_answer(g0.text, y), "fv_hit": B.contains_answer(g1.text, y)})
    return out


# ----------------------------------------------------------------- experiment

QUICK = {"n": 4, "tasks": ("antonym", "country_capital"), "n_eval": 8, "natural_tokens": 4}


@experiment("function_vectors", FunctionVectorsConfig, quick=QUICK)
def function_vectors(hm: HookedModel, cfg: FunctionVectorsConfig, ctx) -> dict:
    """Function vectors: per-head AIE (every head), v1/v2/v3 zero-shot lift by layer, unrelated contexts."""
    tasks = list(cfg.tasks)
    for t in tasks:
        F.load_task(t)
    if cfg.n < 2:
        raise PromptError(f"function_vectors n={cfg.n}: need >= 2 AIE prompts per task (one to select heads, one to report)")
    n, H = hm.info.n_layers, hm.info.n_heads
    splits = {t: task_split(t, cfg, ctx) for t in tasks}
    aie_raw = dict(zip(tasks, ctx.map("aie", tasks, lambda t: aie_task(hm, splits[t], cfg))))
    aie = {t: np.mean(aie_raw[t]["effects"], axis=0) for t in tasks}  # [layers, H], all prompts (figure only)
    aie_mean = np.mean([aie[t] for t in tasks], axis=0)
    aie_select = np.mean([np.mean(aie_raw[t]["effects"][0::2], axis=0) for t in tasks], axis=0)
    k = min(cfg.top_k, n * H)
    heads = F.top_heads(aie_select, k)  # chosen on the selection prompts only
    vecs = {t: {"v1": np.array(aie_raw[t]["v1"]), "v2": np.array(aie_raw[t]["v2"]),
                "v3": F.function_vector(np.array(aie_raw[t]["contrib"]), heads)} for t in tasks}
    if ctx.world.is_root:
        _save_vectors(ctx, vecs, heads)
    zs = dict(zip(tasks, ctx.map("zero_shot", tasks, lambda t: zero_shot_task(hm, splits[t], vecs[t], cfg))))
    chosen = {v: _choose_layer(zs, v, n) for v in VECTORS}
    headline = _headline(zs, chosen)
    sweep = _sweep(zs, n)
    layer = chosen["v3"]["layer"]
    nat = dict(zip(tasks, ctx.map("natural", tasks, lambda t: natural_task(hm, splits[t], vecs[t]["v3"], layer, cfg))))
    natural = _natural_summary(nat)
    head_cells = [_head_cell(aie_raw, tasks, l, h, n, float(aie_select[l, h])) for l, h in heads]
    norms = {t: {"v3": float(np.linalg.norm(vecs[t]["v3"])),
                 "v2_at_layer": float(np.linalg.norm(vecs[t]["v2"][chosen["v2"]["layer"]])),
                 "v1_at_layer": float(np.linalg.norm(vecs[t]["v1"][chosen["v1"]["layer"]])),
                 "zero_shot_resid_norm_at_v3_layer": aie_raw[t]["zero_resid_norm"][layer],
                 "v3_pct_of_resid": 100 * float(np.linalg.norm(vecs[t]["v3"])) / aie_raw[t]["zero_resid_norm"][layer]}
             for t in tasks}
    result = {
        "summary": {},
        "tasks": tasks, "n_layers": n, "n_heads": H, "heads_total": n * H, "top_k": k,
        "icl_signal": {t: {"p_clean_mean": float(np.mean(aie_raw[t]["p_clean"])),
                           "p_corrupt_mean": float(np.mean(aie_raw[t]["p_corrupt"])),
                           "clean_minus_corrupt_p": paired_diff_ci(aie_raw[t]["p_clean"], aie_raw[t]["p_corrupt"]),
                           "clean_top1": proportion_ci(sum(aie_raw[t]["clean_top1"]), len(aie_raw[t]["clean_top1"])),
                           "corrupt_top1": proportion_ci(sum(aie_raw[t]["corrupt_top1"]), len(aie_raw[t]["corrupt_top1"]))}
                       for t in tasks},
        "aie": {"mean": aie_mean.tolist(), "mean_selection": aie_select.tolist(), "by_task": {t: aie[t].tolist() for t in tasks},
                "top_heads": head_cells, "prompts_per_task": cfg.n,
                "chosen_top_heads_report_aie": _pooled_head_aie(aie_raw, tasks, heads)},
        "chosen_layers": chosen, "headline": headline, "sweep": sweep, "natural": natural, "norms": norms,
        "splits": _splits(aie_raw, zs, tasks),
        "items": {t: {"aie_queries": aie_raw[t]["queries"], "p_clean": aie_raw[t]["p_clean"],
                      "p_corrupt": aie_raw[t]["p_corrupt"], "zero_shot": zs[t], "natural": nat[t]} for t in tasks},
        "counts": {"tasks": len(tasks), "aie_prompts_per_task": cfg.n, "eval_queries_per_task": cfg.n_eval,
                   "selection_queries_per_task": len(range(0, cfg.n_eval, 2)),
                   "test_queries_per_task": len(range(1, cfg.n_eval, 2)), "heads_patched_per_prompt": n * H},
        "scoring": "zero-shot accuracy = answer's first token is the top-1 next token after 'Q: x\\nA:'; "
                   "AIE metric = probability of that token; natural text = answer in the greedy continuation",
    }
    result["depth"] = {"function vector (v3 layer)": B.depth_pct(layer, n),
                       "FV heads (mean depth of top-k)": float(np.mean([c["depth_pct"] for c in head_cells]))}
    result["prereg"] = _prereg(headline)
    result.update(_summary(result))
    _figures(result, ctx)
    B.depth_figure(ctx, hm, "function_vectors", result)
    return result


def _head_cell(aie_raw: dict, tasks: list, l: int, h: int, n: int, selection_aie: float) -> dict:
    """A chosen head: its selection AIE (what ranked it; no interval) and its AIE on the report prompts
    (cluster bootstrap, prompts within tasks)."""
    vals, clusters = _report_effects(aie_raw, tasks, lambda e: e[l][h])
    return {"layer": l, "head": h, "depth_pct": B.depth_pct(l, n), "aie_selection": selection_aie,
            "aie_report": cluster_mean_ci(vals, clusters),
            "aie_by_task": {t: float(np.mean([e[l][h] for e in aie_raw[t]["effects"][1::2]])) for t in tasks}}


def _report_effects(aie_raw: dict, tasks: list, get) -> tuple[list[float], list[str]]:
    """`get(effect grid)` for every report (odd-numbered) AIE prompt, with its task as the cluster label."""
    vals, clusters = [], []
    for t in tasks:
        for e in aie_raw[t]["effects"][1::2]:
            vals.append(float(get(e)))
            clusters.append(t)
    return vals, clusters


def _pooled_head_aie(aie_raw: dict, tasks: list, heads: list) -> dict:
    """Mean AIE of the chosen heads together, per report prompt, with the cluster interval (prompts within tasks)."""
    vals, clusters = _report_effects(aie_raw, tasks, lambda e: np.mean([e[l][h] for l, h in heads]))
    return cluster_mean_ci(vals, clusters)


def _splits(aie_raw: dict, zs: dict, tasks: list) -> dict:
    """Which items chose what (selection) and which were reported on (report), per task."""
    return {"aie_prompts": {"rule": "even-numbered AIE prompts choose the FV heads; odd-numbered report their AIE",
                            **{t: {"selection": [q[0] for q in aie_raw[t]["queries"][0::2]],
                                   "report": [q[0] for q in aie_raw[t]["queries"][1::2]]} for t in tasks}},
            "held_out_queries": {"rule": "even-numbered held-out queries choose each vector's layer; odd-numbered "
                                         "report every lift (headline, per-layer family, unrelated contexts)",
                                 **{t: {"selection": [r["query"] for r in zs[t][0::2]],
                                        "report": [r["query"] for r in zs[t][1::2]]} for t in tasks}}}


def _save_vectors(ctx, vecs: dict, heads: list) -> None:
    arrays = {f"{t}.{v}": np.asarray(a, np.float32) for t, d in vecs.items() for v, a in d.items()}
    atomic_write_bytes(ctx.out_dir / "function_vectors.safetensors",
                       st_save(arrays, metadata={"heads": str(heads), "v1_v2": "[layers, d] at resid_post",
                                                 "v3": "[d], add at any layer's resid_post"}))


def _lift(recs: list[dict], vec: str, layer: int) -> np.ndarray:
    return np.array([float(r["top1"][vec][layer]) - float(r["base_top1"]) for r in recs])


def _sweep(zs: dict, n: int) -> dict:
    """Per vector and layer, on the report queries: per-task mean lift, and the pooled lift as a family over layers
    (simultaneous Bonferroni intervals, Holm-adjusted one-sample t p-values over queries)."""
    out = {}
    for v in VECTORS:
        pooled = [np.concatenate([_lift(recs[1::2], v, l) for recs in zs.values()]) for l in range(n)]
        raw_p = [p_value_mean(x) for x in pooled]
        finite = [i for i, p in enumerate(raw_p) if p is not None and np.isfinite(p)]
        adj = dict(zip(finite, holm([raw_p[i] for i in finite]))) if finite else {}
        out[v] = {"by_task_mean": {t: [float(_lift(recs[1::2], v, l).mean()) for l in range(n)] for t, recs in zs.items()},
                  "pooled_family": list(family_cis([x.tolist() for x in pooled])),
                  "p_raw": [None if p is None or not np.isfinite(p) else float(p) for p in raw_p],
                  "p_holm": [float(adj[i]) if i in adj else None for i in range(n)]}
    return out


def _choose_layer(zs: dict, vec: str, n: int) -> dict:
    """Layer with the largest mean lift over tasks on the selection (even-numbered) held-out queries."""
    val = [np.mean([_lift(recs[0::2], vec, l).mean() for recs in zs.values()]) for l in range(n)]
    layer = int(np.argmax(val))
    return {"layer": layer, "depth_pct": B.depth_pct(layer, n), "selection_mean_lift_by_layer": [float(x) for x in val]}


def _headline(zs: dict, chosen: dict) -> dict:
    """Report (odd-numbered) queries at each vector's chosen layer: per task and pooled accuracy and lift."""
    out = {}
    for v in VECTORS:
        l = chosen[v]["layer"]
        per, pooled, clusters = {}, [], []
        for t, recs in zs.items():
            test = recs[1::2]
            lift = _lift(test, v, l)
            pooled += lift.tolist()
            clusters += [t] * len(lift)
            k0, k1 = (sum(bool(r[key]) for r in test) for key in ("base_top1", "icl_top1"))
            per[t] = {"zero_shot": proportion_ci(k0, len(test)),
                      "with_vector": proportion_ci(sum(bool(r["top1"][v][l]) for r in test), len(test)),
                      "icl": proportion_ci(k1, len(test)), "lift": paired_binary_diff_ci(lift)}
        out[v] = {"layer": l, "by_task": per, "pooled_lift": cluster_mean_ci(pooled, clusters)}
    return out


def _natural_summary(nat: dict) -> dict:
    out = {}
    for t, recs in nat.items():
        b = np.array([r["base_hit"] for r in recs], float)
        f = np.array([r["fv_hit"] for r in recs], float)
        out[t] = {"base": proportion_ci(int(b.sum()), len(b)), "fv": proportion_ci(int(f.sum()), len(f)),
                  "lift": paired_binary_diff_ci(f - b)}
    allb = np.array([r["base_hit"] for recs in nat.values() for r in recs], float)
    allf = np.array([r["fv_hit"] for recs in nat.values() for r in recs], float)
    clusters = [t for t, recs in nat.items() for _ in recs]
    out["pooled"] = {"base": proportion_ci(int(allb.sum()), len(allb)), "fv": proportion_ci(int(allf.sum()), len(allf)),
                     "lift": cluster_mean_ci((allf - allb).tolist(), clusters)}
    return out


def _prereg(headline: dict) -> dict:
    """The pre-registered checks (mlxinterp/data/preregistration.toml) on the report-split lifts."""
    return preregistration.load().report("function_vectors", {
        "v3_zero_shot_lift": headline["v3"]["pooled_lift"], "v2_zero_shot_lift": headline["v2"]["pooled_lift"]})


def _summary(r: dict) -> dict:
    h = r["headline"]
    top = r["aie"]["top_heads"][:3]
    s = Summary()
    s.add("aie_heads_patched", "AIE: heads patched (all layers x heads)", r["heads_total"])
    s.add("aie_top_heads", "AIE top heads, chosen on selection prompts (layer.head: report AIE [95% cluster CI])",
          ", ".join(f"{c['layer']}.{c['head']}: {B.ci_text(c['aie_report'], '+.4f')}" for c in top))
    s.add("aie_chosen_heads_report", f"mean AIE of the {r['top_k']} chosen heads, report prompts [95% cluster CI]",
          B.ci_text(r["aie"]["chosen_top_heads_report_aie"], "+.4f"))
    s.add("v3_layer", "FV (v3) layer, chosen on selection queries (depth %)",
          f"{h['v3']['layer']} ({r['chosen_layers']['v3']['depth_pct']:.0f} %)")
    for v in VECTORS:
        s.add(f"{v}.pooled_lift", f"{v} zero-shot top-1 lift, report queries [95% cluster CI]",
              f"L{h[v]['layer']}: " + B.ci_text(h[v]["pooled_lift"]))
    for t in r["tasks"]:
        bt = h["v3"]["by_task"][t]
        s.add(f"{t}.icl_zero_shot_fv_top1", f"{t}: ICL / zero-shot / +FV top-1",
              f"{bt['icl']['estimate']:.2f} / {bt['zero_shot']['estimate']:.2f} / {bt['with_vector']['estimate']:.2f}")
    s.add("unrelated_contexts", "unrelated contexts: answer in continuation, base -> +FV",
          f"{r['natural']['pooled']['base']['k']}/{r['natural']['pooled']['base']['n']} -> "
          f"{r['natural']['pooled']['fv']['k']}/{r['natural']['pooled']['fv']['n']}")
    for name, c in r["prereg"]["checks"].items():
        s.add(f"prereg.{name}", f"pre-registered {name}", f"{c['verdict']} ({c['value']:+.3f} {c['op']} {c['threshold']})"
              if c.get("value") is not None else c["verdict"])
    return s.to_result()


def _figures(r: dict, ctx) -> None:
    tasks = r["tasks"]
    fig, ax = subplots(1, len(tasks) + 1, figsize=(3 * (len(tasks) + 1), 4.5), sharey=True)
    grids = [("mean over tasks", r["aie"]["mean"])] + [(t, r["aie"]["by_task"][t]) for t in tasks]
    lim = max(1e-6, max(float(np.max(np.abs(g))) for _, g in grids))
    for a, (title, g) in zip(ax, grids):
        im = a.imshow(np.array(g), aspect="auto", origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim)
        a.set(title=title, xlabel="head")
        a.set_xticks(range(r["n_heads"]))
    for c in r["aie"]["top_heads"]:
        ax[0].plot(c["head"], c["layer"], "k*", ms=6)
    ax[0].set_ylabel("layer")
    fig.colorbar(im, ax=list(ax), label="AIE: change in P(answer) (shuffled-label ICL)")
    fig.suptitle(f"average indirect effect of every head ({r['counts']['aie_prompts_per_task']} prompts/task); * = FV heads")
    ctx.save_figure("fv_aie_heads", fig)

    fig, ax = subplots(1, len(tasks) + 1, figsize=(3.4 * (len(tasks) + 1), 3.8), sharey=True)
    ax = np.atleast_1d(ax)
    colors = {"v1": "tab:grey", "v2": "tab:blue", "v3": "tab:red"}
    layers = list(range(r["n_layers"]))
    for v in VECTORS:
        plot_ci(ax[0], layers, r["sweep"][v]["pooled_family"], colors[v], v)
    ax[0].set(title="pooled (simultaneous 95 % CIs)", xlabel="layer the vector is added at")
    for a, t in zip(ax[1:], tasks):
        for v in VECTORS:
            a.plot(layers, r["sweep"][v]["by_task_mean"][t], color=colors[v], label=v)
        a.set(title=t, xlabel="layer the vector is added at")
    for a in ax:
        a.axhline(0, color="k", lw=0.6)
    ax[0].set_ylabel("zero-shot top-1 lift, report queries")
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure("fv_layer_sweep", fig)

    fig, ax = subplots(1, 2, figsize=(12, 4))
    x = np.arange(len(tasks))
    h = r["headline"]
    series = [("ICL", [h["v3"]["by_task"][t]["icl"] for t in tasks], "tab:green"),
              ("zero-shot", [h["v3"]["by_task"][t]["zero_shot"] for t in tasks], "k")]
    series += [(f"+{v} (L{h[v]['layer']})", [h[v]["by_task"][t]["with_vector"] for t in tasks], colors[v]) for v in VECTORS]
    w = 0.8 / len(series)
    for j, (lab, cis, c) in enumerate(series):
        xs = x + (j - len(series) / 2 + 0.5) * w
        est = np.array([ci["estimate"] for ci in cis], float)
        ax[0].bar(xs, est, w, color=c, alpha=0.75, label=lab)
        ax[0].errorbar(xs, est, yerr=[est - [ci["low"] for ci in cis], [ci["high"] for ci in cis] - est],
                       fmt="none", ecolor="k", capsize=2, lw=0.7)
    ax[0].set_xticks(x, tasks, fontsize=8)
    ax[0].set(ylabel="top-1 accuracy (test, Wilson 95 % CI)", ylim=(0, 1.05), title="held-out queries")
    ax[0].legend(fontsize=7)
    nat = r["natural"]
    names = tasks + ["pooled"]
    for j, (key, c) in enumerate((("base", "k"), ("fv", "tab:red"))):
        cis = [nat[t][key] for t in names]
        est = np.array([ci["estimate"] for ci in cis], float)
        xs = np.arange(len(names)) + (j - 0.5) * 0.38
        ax[1].bar(xs, est, 0.38, color=c, alpha=0.75, label="no vector" if key == "base" else f"+v3 (L{h['v3']['layer']})")
        ax[1].errorbar(xs, est, yerr=[est - [ci["low"] for ci in cis], [ci["high"] for ci in cis] - est],
                       fmt="none", ecolor="k", capsize=2, lw=0.7)
    ax[1].set_xticks(range(len(names)), names, fontsize=8)
    ax[1].set(ylabel="answer in continuation (Wilson 95 % CI)", ylim=(0, 1.05), title="unrelated contexts")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure("function_vectors", fig)

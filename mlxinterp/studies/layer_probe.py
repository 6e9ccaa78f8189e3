"""Layer-by-layer probe (the Qwen3-8B layer probe): entropy per layer, raw vs normed lens, attractors, paraphrases, temperature.

Facts: country -> capital pairs (data/function_vectors/country_capital.json), each
asked in three paraphrases. Per prompt and layer, the logit lens at the last token
in both modes (normed = final norm first, what the model does; raw = unembedding
of the raw residual): entropy, top-k, and the rank of the answer. The *answer
layer* is the first layer from which the answer stays top-1 to the end (None if
it never does). Attractors: tokens that are top-1 at a layer for >= `attractor_frac`
of prompts without being the answer (the Qwen3-8B layer probe's " Answer" at mid-depth).
Paraphrase consistency: spread of the answer layer across a fact's paraphrases.
Temperature sweep of the final distribution: answer probability and entropy.
Neuron trajectories: during greedy generation (mlx-lm's KV cache, a Capture tap),
the `mlp.hook_post` activations at one late layer of the neurons that vary most
over the recorded tokens, token by token (the Qwen3-VL-8B notes §5: probes averaged over a
population understate a neuron's dynamic range during generation).

Linear probes (mlxinterp.analysis.probes): at every layer, a logistic probe on the last
token's resid_post predicts whether the model's final top-1 will be the capital (does
the layer already carry "the model knows this fact"?), beside Hewitt & Liang's control
task (random labels fixed per token-ending type, probes.choose_types) and its
selectivity. Facts, not prompts, are the units: the facts are split in a seeded
order into a selection half and a report half; the peak layer (largest selectivity)
and the top attractor are chosen on the selection facts and reported on the report
facts only. Probe train/test splits keep a fact's three paraphrases together.

Sizes (full by default): all 79 facts x 3 paraphrases = 237 prompts (the Qwen3-8B layer
probe used 1 prompt and 2 consistency paraphrases); paraphrase consistency over all
79 facts. Intervals: rates over facts are Wilson; rates and means over prompts are
cluster intervals (prompts within facts); per-template differences are paired 0/1
differences over facts. The quick profile (n = 4 facts) is for smoke tests.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlxinterp.suite.summary import Summary
from mlxinterp.core import taps as T
from mlxinterp.tasks.data import load_json
from mlxinterp.core.hooks import ActivationCache, HookedModel
from mlxinterp.analysis.lens import entropy, layer_logits, target_id
from mlxinterp.analysis.patching import forward_last
from mlxinterp.analysis import directions
from mlxinterp.analysis.probes import ProbeError, choose_types, control_labels, fit_logistic, probe_layers, split
from mlxinterp.analysis.stats import cluster_mean_ci, mean_ci, paired_binary_diff_ci, proportion_ci
from mlxinterp.analysis.plotting import subplots
from mlxinterp.suite import experiment
from mlxinterp.suite.ranges import ranged
from mlxinterp.core import names as H

TEMPLATES = ("Question: What is the capital of {x}? Answer:", "The capital of {x} is", "{x}'s capital city is")


@dataclass
class LayerProbeConfig:
    n: int = 79  # facts (x 3 paraphrases): all 79 of data/function_vectors/country_capital.json
    seed: int = 0
    top_k: int = 5
    attractor_frac: float = 0.3
    temperatures: tuple = (0.1, 0.5, 1.0, 2.0)
    gen_tokens: int = 12
    n_traj_prompts: int = 3
    n_traj_neurons: int = 4
    traj_layer_frac: float = 0.75
    probe_steps: int = 200  # Adam steps of each logistic probe (probes.fit_logistic)
    # templates whose prompts also get the raw lens: the first template's 79 prompts (a 262k-vocabulary lens
    # costs ~1 s per prompt and mode on 2 CPU cores, and the raw lens is degenerate at this scale)
    raw_templates: tuple = ranged((0,), lo=0, hi=len(TEMPLATES) - 1)


@experiment("layer_probe", LayerProbeConfig, quick={"n": 4, "n_traj_prompts": 1})
def layer_probe(hm: HookedModel, cfg: LayerProbeConfig, ctx) -> dict:
    """Logit lens per layer (raw vs normed): entropy, top-k, attractor tokens, answer layer across paraphrases."""
    pairs = load_json("function_vectors/country_capital.json")["pairs"][: cfg.n]
    items = [{"country": c, "capital": a, "template": t} for c, a in pairs for t in range(len(TEMPLATES))]
    rows = ctx.map("prompts", items, lambda it: _probe(hm, it, cfg))
    nl = hm.info.n_layers
    facts = [r["country"] for r in rows]
    order = ctx.rng_for("fact_split").permutation(len(pairs))
    sel_facts = {pairs[i][0] for i in order[0::2]}  # selection half of the facts; the rest report
    is_sel = np.array([f in sel_facts for f in facts])
    out = {"modes": {}}
    for mode in ("normed", "raw"):
        mrows = [r for r in rows if mode in r]  # the raw lens runs on cfg.raw_templates only
        if not mrows:
            continue
        ent = np.array([r[mode]["entropy"] for r in mrows])
        out["modes"][mode] = {"prompts": len(mrows), "entropy_mean": ent.mean(0).round(4).tolist(),
                              "answer_layer": _answer_layers(mrows, mode),
                              "attractors": _attractors(mrows, mode, cfg, nl),
                              "answer_rank_median": np.median([r[mode]["rank"] for r in mrows], 0).tolist()}
    attractor = _attractor_split(rows, is_sel, nl)
    cons = _consistency(rows, pairs)
    temp = _temperature(rows, cfg)
    correct = [float(r["normed"]["rank"][-1] == 0) for r in rows]
    final_correct = cluster_mean_ci(correct, facts)
    probes = _probes(hm, rows, is_sel, cfg)
    traj = _trajectories(hm, [r["prompt"] for r in rows[: cfg.n_traj_prompts * len(TEMPLATES): len(TEMPLATES)]], cfg)
    _figure(ctx, out, rows, traj, temp, nl, probes)
    al = out["modes"]["normed"]["answer_layer"]
    s = Summary()
    s.add("final_top1_correct", "final top-1 is the capital, all prompts [95% cluster CI, prompts within facts]",
          final_correct)
    for t, c in cons["by_template"].items():
        s.add(f"template_{t}.top1_correct", f"final top-1 correct, template {t} ({TEMPLATES[int(t)]!r}) [Wilson over facts]", c)
    s.add("answer_layer_normed", "answer layer, normed lens (median over prompts that reach it)", al["median"])
    if "raw" in out["modes"]:
        s.add("answer_layer_raw", f"answer layer, raw lens (median; {out['modes']['raw']['prompts']} prompts)",
              out["modes"]["raw"]["answer_layer"]["median"])
    s.add("all_paraphrases_correct", "facts whose three paraphrases are all answered [Wilson over facts]",
          cons["all_correct"])
    s.add("paraphrases_agree", "facts whose three paraphrases agree on right/wrong [Wilson over facts]", cons["agree"])
    s.add("paraphrase_spread", "answer-layer range within a fact (facts where all three reach) [mean CI]",
          cons["range_ci"])
    if attractor:
        s.add("attractor_report", f"attractor {attractor['token']!r} at L{attractor['layer']} (chosen on selection "
                                  "facts), top-1 share on report prompts [95% cluster CI]", attractor["report_share"])
    if probes.get("report"):
        rp = probes["report"]
        s.add("probe_peak_layer", "correctness-probe peak layer (max selectivity on selection facts)", rp["layer"])
        s.add("probe_report_test_acc", "probe test accuracy at that layer, report facts [cluster CI]", rp["test_acc"])
        s.add("probe_report_selectivity", "probe selectivity (accuracy - control accuracy), report facts [cluster CI]",
              rp["selectivity"])
    else:
        s.add("probe_skipped", "correctness probe", probes.get("skipped", "not run"))
    s.add("attractor_tokens", "mid-layer attractor tokens (normed)",
          [a["token"] for a in out["modes"]["normed"]["attractors"]["top"][:5]])
    s.add("entropy_first_mid_last", "entropy, first / middle / last layer (normed)",
          [round(out["modes"]["normed"]["entropy_mean"][i], 2) for i in (0, nl // 2, nl - 1)])
    s.add("answer_prob_by_temperature", "answer prob at T=0.1 / 1 / 2",
          [round(temp[str(t)]["answer_prob"]["estimate"], 3) for t in (0.1, 1.0, 2.0) if str(t) in temp])
    splits = {"rule": "facts in a seeded order: even positions select (probe peak layer, attractor), odd positions report",
              "selection_facts": sorted(sel_facts), "report_facts": sorted({f for f in facts} - sel_facts)}
    return {**s.to_result(), **out, "paraphrase_consistency": cons, "temperature": temp,
            "final_top1_correct": final_correct, "templates": list(TEMPLATES), "trajectories": traj,
            "probes": probes, "attractor_split": attractor, "splits": splits,
            "per_prompt": [{"prompt": r["prompt"], "country": r["country"], "template": r["template"],
                            "final_rank": r["normed"]["rank"][-1], "answer_layer": _answer_layer(r["normed"]["rank"])}
                           for r in rows],
            "dumps": [{"prompt": r["prompt"], "answer": r["answer"], "top_normed": r["normed"]["top"],
                       "top_raw": (r.get("raw") or {}).get("top")} for r in rows[:3]], "n_facts": len(pairs)}


def _probes(hm: HookedModel, rows: list[dict], is_sel: np.ndarray, cfg) -> dict:
    """Correctness probes at every layer on the selection facts (choose the peak by selectivity), then the peak
    layer alone on the report facts. Each side trains on 3/4 of its facts and tests on the rest."""
    y = np.array([int(r["normed"]["rank"][-1] == 0) for r in rows])
    prompts = [r["prompt"] for r in rows]
    nl = hm.info.n_layers
    acts = directions.collect(hm, prompts, [H.resid_post(l) for l in range(nl)], "last")
    ids = [hm.tokens(p).ids[0].tolist() for p in prompts]
    n_types, types = choose_types(ids)
    facts = [r["country"] for r in rows]
    out: dict = {"label": "1 if the model's final top-1 (normed lens at the last layer = the model) is the capital",
                 "control": f"Hewitt & Liang control task, types = last {n_types} prompt tokens" if n_types
                            else "every prompt its own type", "positives": int(y.sum()), "n": len(y)}

    def run(mask: np.ndarray, layers: list[int], seed: int) -> list:
        idx = np.flatnonzero(mask)
        return probe_layers({l: acts[H.resid_post(l)][idx] for l in layers}, y[idx], [types[i] for i in idx],
                            [facts[i] for i in idx], seed=seed, steps=cfg.probe_steps)

    try:
        sel = run(is_sel, list(range(nl)), cfg.seed)
    except ProbeError as exc:
        return {**out, "skipped": f"selection facts: {exc}"}
    peak = int(max(sel, key=lambda p: (p.selectivity, -p.layer)).layer)
    out["selection"] = [p.to_dict() for p in sel]
    out["selection_peak_layer"] = peak
    try:
        out["report"] = {"layer": peak, **report_probe(acts[H.resid_post(peak)], y, types, facts, ~is_sel, cfg)}
    except ProbeError as exc:
        return {**out, "skipped": f"report facts: {exc}"}
    return out


def report_probe(X: np.ndarray, y: np.ndarray, types: list, facts: list, mask: np.ndarray, cfg) -> dict:
    """The chosen layer's probe and control probe on the report facts (the split and control labels of
    probes.probe_layers), with per-test-prompt outcomes: accuracy and selectivity (probe right - control
    right, per prompt), as cluster intervals over the test facts."""
    idx = np.flatnonzero(mask)
    Xr, yr = np.asarray(X, np.float64)[idx], y[idx]
    if set(np.unique(yr)) != {0, 1}:
        raise ProbeError(f"the report facts hold one class only ({sorted(set(yr.tolist()))})")
    tr, te = split(len(idx), [facts[i] for i in idx], 0.25, cfg.seed)
    if len(set(yr[tr])) < 2 or len(set(yr[te])) < 2:
        raise ProbeError("the train or test split of the report facts holds one class only")
    ctrl = control_labels([types[i] for i in idx], cfg.seed + 1, float(yr.mean()))

    def right(labels: np.ndarray) -> np.ndarray:
        w, b, mu, sd = fit_logistic(Xr[tr], labels[tr], steps=cfg.probe_steps)
        return (((Xr[te] - mu) / sd @ w + b > 0).astype(int) == labels[te]).astype(float)

    real, control = right(yr), right(ctrl)
    groups = [facts[idx[i]] for i in te]  # a fact's paraphrases are not independent test items
    return {"n_train": int(len(tr)), "n_test": int(len(te)), "test_acc": cluster_mean_ci(real, groups),
            "control_test_acc": cluster_mean_ci(control, groups),
            "selectivity": cluster_mean_ci(real - control, groups),
            "test_prompts": [int(idx[i]) for i in te], "probe_right": real.tolist(), "control_right": control.tolist()}


def _probe(hm: HookedModel, it: dict, cfg) -> dict:
    prompt = TEMPLATES[it["template"]].format(x=it["country"])
    ans = target_id(hm, " " + it["capital"])
    cache = ActivationCache(hm)
    names = [H.resid_post(l) for l in range(hm.info.n_layers)]
    forward_last(hm, hm.tokens(prompt), [(n, T.Capture(store=cache)) for n in names])  # unembeds one column
    out = {"prompt": prompt, "answer": it["capital"], "country": it["country"], "template": it["template"]}
    decode = hm.tokenizer.decode
    for mode in ("normed", "raw") if it["template"] in cfg.raw_templates else ("normed",):
        lg = layer_logits(hm, cache, -1, mode)  # [nl, V]
        ent = entropy(lg)
        part = mx.argpartition(-lg, kth=cfg.top_k - 1, axis=-1)[:, : cfg.top_k]  # a full argsort of 262k is slow
        order = mx.take_along_axis(part, mx.argsort(-mx.take_along_axis(lg, part, axis=-1), axis=-1), axis=-1)
        rank = mx.sum(lg > lg[:, ans: ans + 1], axis=-1)
        mx.eval(ent, order, rank)
        if mode == "normed":
            final = np.array(lg[-1], dtype=np.float64)
        out[mode] = {"entropy": np.array(ent).tolist(), "rank": np.array(rank).tolist(),
                     "top1": np.array(order[:, 0]).tolist(),
                     "top": [[decode([int(i)]) for i in row] for row in np.array(order)]}
    out["final"] = {str(t): _temp_stats(final, ans, t) for t in cfg.temperatures}
    return out


def _temp_stats(logits: np.ndarray, ans: int, t: float) -> dict:
    z = logits / t
    z = z - z.max()
    p = np.exp(z) / np.exp(z).sum()
    return {"answer_prob": float(p[ans]), "entropy": float(-(p[p > 0] * np.log(p[p > 0])).sum()),
            "top1_prob": float(p.max())}


def _answer_layer(ranks: list[int]) -> int | None:
    """First layer from which the answer is top-1 at every later layer."""
    r = np.array(ranks)
    for l in range(len(r)):
        if (r[l:] == 0).all():
            return l
    return None


def _answer_layers(rows, mode) -> dict:
    """Answer layer per prompt; the share that reaches one and the mean over those that do (prompts within facts)."""
    layers = [_answer_layer(r[mode]["rank"]) for r in rows]
    facts = [r["country"] for r in rows]
    got = [(l, f) for l, f in zip(layers, facts) if l is not None]
    return {"per_prompt": layers, "reached": cluster_mean_ci([float(l is not None) for l in layers], facts),
            "median": float(np.median([l for l, _ in got])) if got else None,
            "mean_ci": cluster_mean_ci([l for l, _ in got], [f for _, f in got]) if got else None}


def _attractors(rows, mode, cfg, nl) -> dict:
    decode_map = {}
    per_layer = []
    for l in range(nl):
        c = Counter()
        for r in rows:
            tid = r[mode]["top1"][l]
            if r[mode]["rank"][l] != 0:  # not the answer
                c[tid] += 1
                decode_map[tid] = r[mode]["top"][l][0]
        per_layer.append(c)
    top = []
    for l, c in enumerate(per_layer):
        for tid, k in c.most_common(3):
            if k >= cfg.attractor_frac * len(rows):
                top.append({"layer": l, "token": decode_map[tid], "id": int(tid), "fraction": round(k / len(rows), 3)})
    top.sort(key=lambda a: -a["fraction"])
    return {"threshold": cfg.attractor_frac, "top": top[:30],
            "by_layer_top1": [decode_map[c.most_common(1)[0][0]] if c else None for c in per_layer]}


def _attractor_split(rows: list[dict], is_sel: np.ndarray, nl: int) -> dict | None:
    """The (layer, token) that is most often a non-answer top-1 (normed lens) on the selection prompts, and how
    often it is top-1 at that layer on the report prompts (a cluster interval, prompts within facts)."""
    sel = [r for r, m in zip(rows, is_sel) if m]
    rep = [r for r, m in zip(rows, is_sel) if not m]
    counts = Counter((l, r["normed"]["top1"][l]) for r in sel for l in range(nl) if r["normed"]["rank"][l] != 0)
    if not counts or not rep:
        return None
    (layer, tid), k = counts.most_common(1)[0]
    token = next(r["normed"]["top"][layer][0] for r in sel if r["normed"]["top1"][layer] == tid)
    hits = [float(r["normed"]["top1"][layer] == tid and r["normed"]["rank"][layer] != 0) for r in rep]
    return {"layer": int(layer), "token": token, "id": int(tid), "selection_share": round(k / len(sel), 4),
            "report_share": cluster_mean_ci(hits, [r["country"] for r in rep])}


def _consistency(rows: list[dict], pairs: list) -> dict:
    """Paraphrase consistency over facts (the units): per template accuracy, all three right, agreement on
    right/wrong, pairwise template differences (paired over facts) and the answer-layer range within a fact."""
    by_fact: dict[str, dict[int, dict]] = {}
    for r in rows:
        by_fact.setdefault(r["country"], {})[r["template"]] = r
    facts = [c for c, _ in pairs if len(by_fact.get(c, {})) == len(TEMPLATES)]
    right = np.array([[float(by_fact[c][t]["normed"]["rank"][-1] == 0) for t in range(len(TEMPLATES))] for c in facts])
    layers = {c: [_answer_layer(by_fact[c][t]["normed"]["rank"]) for t in range(len(TEMPLATES))] for c in facts}
    ranges = [max(v) - min(v) for v in layers.values() if all(x is not None for x in v)]
    n = len(facts)
    return {"n_facts": n, "answer_layer_by_fact": layers,
            "by_template": {str(t): proportion_ci(int(right[:, t].sum()), n) for t in range(len(TEMPLATES))},
            "template_differences": {f"{a}-{b}": paired_binary_diff_ci(right[:, a] - right[:, b])
                                     for a in range(len(TEMPLATES)) for b in range(a + 1, len(TEMPLATES))},
            "all_correct": proportion_ci(int(right.all(axis=1).sum()), n),
            "agree": proportion_ci(int((right.min(axis=1) == right.max(axis=1)).sum()), n),
            "facts_where_all_paraphrases_reach": len(ranges),
            "mean_range": round(float(np.mean(ranges)), 3) if ranges else None,
            "range_ci": mean_ci(ranges) if ranges else None}


def _temperature(rows, cfg) -> dict:
    facts = [r["country"] for r in rows]
    return {str(t): {k: cluster_mean_ci([r["final"][str(t)][k] for r in rows], facts)
                     for k in ("answer_prob", "entropy", "top1_prob")} for t in cfg.temperatures}


def _trajectories(hm: HookedModel, prompts: list[str], cfg) -> dict:
    """mlp.hook_post of a few neurons at one layer, token by token through greedy generation."""
    layer = int(round(cfg.traj_layer_frac * (hm.info.n_layers - 1)))
    name = H.mlp_post(layer)
    runs = []
    for p in prompts:
        store = ActivationCache(hm)
        g = hm.generate(p, max_tokens=cfg.gen_tokens, taps={name: T.Capture(store=store)})
        runs.append((p, g, np.array(store[name][0].astype(mx.float32))))  # [L_total, d]
    allacts = np.concatenate([a for _, _, a in runs])
    pick = np.argsort(-allacts.std(0))[: cfg.n_traj_neurons]  # most variable neurons during generation
    decode = hm.tokenizer.decode
    return {"layer": layer, "neurons": pick.tolist(), "selection": "highest std of activation over all tokens",
            "runs": [{"prompt": p, "generated": g.text, "tokens": [decode([t]) for t in g.prompt_tokens + g.tokens][: len(a)],
                      "activations": a[:, pick].round(3).T.tolist(), "prompt_len": len(g.prompt_tokens)}
                     for p, g, a in runs]}


def _figure(ctx, out, rows, traj, temp, nl, probes) -> None:
    fig, ax = subplots(1, 5, figsize=(27, 4.6))
    for mode in out["modes"]:
        ax[0].plot(out["modes"][mode]["entropy_mean"], "o-", label=mode)
        ax[1].semilogy(np.array(out["modes"][mode]["answer_rank_median"]) + 1, "o-", label=mode)
    ax[0].set(xlabel="layer", ylabel="entropy (nats)", title="lens entropy, mean over prompts")
    ax[1].set(xlabel="layer", ylabel="median rank of answer + 1", title="answer rank")
    ax[0].legend()
    ax[1].legend()
    ts = sorted(temp, key=float)
    ax[2].plot([float(t) for t in ts], [temp[t]["answer_prob"]["estimate"] for t in ts], "o-", label="P(answer)")
    ax[2].plot([float(t) for t in ts], [temp[t]["entropy"]["estimate"] for t in ts], "s--", label="entropy")
    ax[2].set(xlabel="temperature", title="final distribution vs temperature", xscale="log")
    ax[2].legend()
    run = traj["runs"][0]
    for j, n in enumerate(traj["neurons"]):
        ax[3].plot(run["activations"][j], label=f"n{n}")
    ax[3].axvline(run["prompt_len"] - 0.5, color="grey", ls="--")
    ax[3].set(xlabel="token (prompt | generated)", title=f"L{traj['layer']} neuron trajectories")
    ax[3].legend(fontsize=7)
    if probes.get("selection"):
        sel = probes["selection"]
        ax[4].plot([p["layer"] for p in sel], [p["test_acc"] for p in sel], "o-", label="probe (selection facts)")
        ax[4].plot([p["layer"] for p in sel], [p["control_test_acc"] for p in sel], "s--", label="control task")
        ax[4].plot([p["layer"] for p in sel], [p["selectivity"] for p in sel], "^:", label="selectivity")
    if probes.get("report"):
        rp = probes["report"]
        for key, c in (("test_acc", "tab:blue"), ("selectivity", "tab:green")):
            iv = rp[key]
            if iv.get("low") is not None:
                ax[4].errorbar([rp["layer"] + 0.2], [iv["estimate"]], yerr=[[iv["estimate"] - iv["low"]], [iv["high"] - iv["estimate"]]],
                               fmt="D", color=c, capsize=3, label=f"report facts: {key.replace('_', ' ')}")
    ax[4].axhline(0, color="k", lw=0.6)
    ax[4].set(xlabel="layer", ylabel="held-out accuracy", title="probe: will the final top-1 be the capital?")
    ax[4].legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure("layer_probe", fig)

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
from mlxinterp.analysis.stats import bootstrap_ci, proportion_ci
from mlxinterp.analysis.plotting import subplots
from mlxinterp.suite import experiment
from mlxinterp.core import names as H

TEMPLATES = ("Question: What is the capital of {x}? Answer:", "The capital of {x} is", "{x}'s capital city is")


@dataclass
class LayerProbeConfig:
    n: int = 8  # facts (x 3 paraphrases); full run: 79
    seed: int = 0
    top_k: int = 5
    attractor_frac: float = 0.3
    temperatures: tuple = (0.1, 0.5, 1.0, 2.0)
    gen_tokens: int = 12
    n_traj_prompts: int = 3
    n_traj_neurons: int = 4
    traj_layer_frac: float = 0.75


@experiment("layer_probe", LayerProbeConfig)
def layer_probe(hm: HookedModel, cfg: LayerProbeConfig, ctx) -> dict:
    """Logit lens per layer (raw vs normed): entropy, top-k, attractor tokens, answer layer across paraphrases."""
    pairs = load_json("function_vectors/country_capital.json")["pairs"][: cfg.n]
    items = [{"country": c, "capital": a, "template": t} for c, a in pairs for t in range(len(TEMPLATES))]
    rows = ctx.map("prompts", items, lambda it: _probe(hm, it, cfg))
    nl = hm.info.n_layers
    out = {"modes": {}}
    for mode in ("normed", "raw"):
        ent = np.array([r[mode]["entropy"] for r in rows])
        out["modes"][mode] = {"entropy_mean": ent.mean(0).round(4).tolist(),
                              "answer_layer": _answer_layers(rows, mode),
                              "attractors": _attractors(rows, mode, cfg, nl),
                              "answer_rank_median": np.median([r[mode]["rank"] for r in rows], 0).tolist()}
    cons = _consistency(rows, len(pairs))
    temp = _temperature(rows, cfg)
    final_correct = proportion_ci(sum(r["normed"]["rank"][-1] == 0 for r in rows), len(rows))
    traj = _trajectories(hm, [r["prompt"] for r in rows[: cfg.n_traj_prompts * len(TEMPLATES): len(TEMPLATES)]], cfg)
    _figure(ctx, out, rows, traj, temp, nl)
    al = out["modes"]["normed"]["answer_layer"]
    s = Summary()
    s.add("final_top1_correct", "final top-1 is the capital [95% CI]", final_correct)
    s.add("answer_layer_normed", "answer layer, normed lens (median over prompts that reach it)", al["median"])
    s.add("answer_layer_raw", "answer layer, raw lens (median)", out["modes"]["raw"]["answer_layer"]["median"])
    s.add("paraphrase_spread", "paraphrase spread of answer layer (mean range within a fact)", cons["mean_range"])
    s.add("attractor_tokens", "mid-layer attractor tokens (normed)",
          [a["token"] for a in out["modes"]["normed"]["attractors"]["top"][:5]])
    s.add("entropy_first_mid_last", "entropy, first / middle / last layer (normed)",
          [round(out["modes"]["normed"]["entropy_mean"][i], 2) for i in (0, nl // 2, nl - 1)])
    s.add("answer_prob_by_temperature", "answer prob at T=0.1 / 1 / 2",
          [round(temp[str(t)]["answer_prob"]["estimate"], 3) for t in (0.1, 1.0, 2.0) if str(t) in temp])
    return {**s.to_result(), **out, "paraphrase_consistency": cons, "temperature": temp,
            "final_top1_correct": final_correct, "templates": list(TEMPLATES), "trajectories": traj,
            "dumps": [{"prompt": r["prompt"], "answer": r["answer"], "top_normed": r["normed"]["top"],
                       "top_raw": r["raw"]["top"]} for r in rows[:3]], "n_facts": len(pairs)}


def _probe(hm: HookedModel, it: dict, cfg) -> dict:
    prompt = TEMPLATES[it["template"]].format(x=it["country"])
    ans = target_id(hm, " " + it["capital"])
    cache = ActivationCache(hm)
    names = [H.resid_post(l) for l in range(hm.info.n_layers)]
    forward_last(hm, hm.tokens(prompt), [(n, T.Capture(store=cache)) for n in names])  # unembeds one column
    out = {"prompt": prompt, "answer": it["capital"], "country": it["country"], "template": it["template"]}
    decode = hm.tokenizer.decode
    for mode in ("normed", "raw"):
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
    layers = [_answer_layer(r[mode]["rank"]) for r in rows]
    got = [l for l in layers if l is not None]
    return {"per_prompt": layers, "reached": proportion_ci(len(got), len(layers)),
            "median": float(np.median(got)) if got else None, "ci": bootstrap_ci(got) if got else None}


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


def _consistency(rows, n_facts) -> dict:
    per_fact = {}
    for r in rows:
        per_fact.setdefault(r["country"], []).append(_answer_layer(r["normed"]["rank"]))
    ranges = [max(v) - min(v) for v in per_fact.values() if all(x is not None for x in v)]
    all_reach = sum(all(x is not None for x in v) for v in per_fact.values())
    return {"answer_layer_by_fact": per_fact, "facts_where_all_paraphrases_reach": all_reach,
            "mean_range": round(float(np.mean(ranges)), 3) if ranges else None,
            "range_ci": bootstrap_ci(ranges) if ranges else None}


def _temperature(rows, cfg) -> dict:
    return {str(t): {k: bootstrap_ci([r["final"][str(t)][k] for r in rows], seed=cfg.seed)
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


def _figure(ctx, out, rows, traj, temp, nl) -> None:
    fig, ax = subplots(1, 4, figsize=(22, 4.6))
    for mode in ("normed", "raw"):
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
    fig.tight_layout()
    ctx.save_figure("layer_probe", fig)

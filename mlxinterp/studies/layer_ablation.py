"""Layer ablation (the Qwen3-VL-8B notes §8, §11-12): which layers are causally necessary, per category; a steerability map.

Ablating layer l removes its whole residual update: `hook_attn_out` and
`hook_mlp_out` (what each sublayer adds, after Gemma's post-norms) are set to
zero, or to their mean over the baseline prompts' tokens, at every position.
Per prompt: KL(clean || ablated) of the next-token distribution at the last
prompt token, and a behavioural score: the change in mean log-prob of the
clean model's own greedy continuation (`continuation` tokens, teacher-forced).

Steerability map: for each (layer, category), the category direction
(category mean minus baseline mean of `hook_resid_post` at the last token) is
added at that layer to held-out baseline prompts with `steer_pct` % of the
residual norm; the score is how far the *final* layer's residual moves toward
the category, as a fraction of the category-baseline separation there
(0 = no move, 1 = as far as the category's own prompts); descriptive, no interval.

Sizes and statistics. `n` prompts per category (10 x 10 categories = 100 prompts; the
data has 30 per category, but 2 modes x every layer x 300 prompts is ~3x the suite's time
budget). Each category's prompts are split in half: the *selection* half chooses the
most / least critical layer, the *report* half measures it. Per layer, KL on the report
half has a cluster-bootstrap interval (prompts nested in categories) at the Bonferroni
level over layers (simultaneous); the behavioural change gets a p-value over the
categories (the independent units: one mean per category), Holm-adjusted over layers.
"""
from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlxinterp.suite.summary import Summary
from mlxinterp.analysis import neurons
from mlxinterp.core import taps as T
from mlxinterp.analysis.stats import cluster_mean_ci, format_interval, holm, p_value_mean, proportion_ci
from mlxinterp.analysis.plotting import subplots
from mlxinterp.suite import experiment, preregistration
from mlxinterp.tasks import categories
from mlxinterp.core import names as H
from mlxinterp.analysis.patching import forward_last
from mlxinterp.analysis.stats import kl_divergence
from mlxinterp.core.hooks import ActivationCache, HookedModel

MODES = ("zero", "mean")


@dataclass
class LayerAblationConfig:
    n: int = 10  # prompts per category (10 categories: 100 prompts, half selection, half report)
    seed: int = 0
    continuation: int = 3
    steer_pct: float = 8.0
    n_steer_prompts: int = 6  # baseline prompts steered (held out from the direction's baseline half)
    alpha: float = 0.05  # family-wise over layers


@experiment("layer_ablation", LayerAblationConfig, quick={"n": 4, "n_steer_prompts": 3})
def layer_ablation(hm: HookedModel, cfg: LayerAblationConfig, ctx) -> dict:
    """Zero/mean ablation of each layer: KL and behavioural change per category; steerability map."""
    cats = categories.categories(cfg.n)
    names = list(cats)
    nl = hm.info.n_layers
    prompts = [p for c in names for p in cats[c]]
    labels = np.array([i for i, c in enumerate(names) for _ in cats[c]])
    base_all = categories.baseline()
    base_dir, base_steer = base_all[: len(base_all) - cfg.n_steer_prompts], base_all[-cfg.n_steer_prompts:]
    means = _means(hm, base_dir)
    gens = hm.generate_batch(prompts, max_tokens=cfg.continuation)
    rows = [g.prompt_tokens + g.tokens for g in gens]
    plen = [len(g.prompt_tokens) for g in gens]
    clean_lp, clean_last = _score(hm, rows, plen, {})
    items = [(m, l) for m in MODES for l in range(nl)]

    def one(item) -> dict:
        mode, l = item
        taps = {H.name(l, h): T.Ablate(mode, mean=None if mode == "zero" else means[(l, h)])
                for h in ("hook_attn_out", "hook_mlp_out")}
        lp, last = _score(hm, rows, plen, taps)
        kl = _kl(clean_last, last)
        return {"kl": kl.tolist(), "delta_logprob": (lp - clean_lp).tolist(),
                "top1_kept": (last.argmax(-1) == clean_last.argmax(-1)).astype(float).tolist()}

    res = dict(zip(items, ctx.map("ablations", items, one)))
    table = {m: {k: np.array([[np.mean(np.array(res[(m, l)][k])[labels == i]) for l in range(nl)]
                              for i in range(len(names))]) for k in ("kl", "delta_logprob", "top1_kept")} for m in MODES}
    half = np.array([j < len(cats[c]) // 2 for c in names for j in range(len(cats[c]))])  # selection half per category
    sel, rep = np.nonzero(half)[0], np.nonzero(~half)[0]
    level = 1 - cfg.alpha / nl
    kl_ci = {m: [cluster_mean_ci(np.array(res[(m, l)]["kl"])[rep], labels[rep], level=level, seed=cfg.seed)
                 for l in range(nl)] for m in MODES}
    behaviour = {m: _behaviour(res, m, nl, labels, len(names)) for m in MODES}
    chosen = {m: _chosen(res, m, nl, labels, sel, rep, cfg) for m in MODES}
    steer = _steerability(hm, cats, names, base_dir, base_steer, cfg, ctx)
    crit = {m: _critical(table[m]["kl"], names) for m in MODES}
    _figure(ctx, names, table, steer, nl)
    z = chosen["zero"]
    kept = [proportion_ci(int(np.sum(np.array(res[("zero", l)]["top1_kept"])[rep])), int(rep.size)) for l in range(nl)]
    s = Summary()
    s.add("most_critical_zero", "most critical layer, zero ablation (chosen on selection half; KL on report half [95% CI])",
          f"L{z['most']['layer']}: {_fmt(z['most']['kl'])}")
    s.add("least_critical_zero", "least critical layer, zero ablation (chosen on selection half; report half)",
          f"L{z['least']['layer']}: {_fmt(z['least']['kl'])}")
    s.add("most_critical_mean", "most critical layer, mean ablation (chosen on selection half; report half)",
          f"L{chosen['mean']['most']['layer']}: {_fmt(chosen['mean']['most']['kl'])}")
    s.add("top1_kept_layers", "layers whose zero ablation keeps top-1 on >= 90% of report prompts",
          [l for l in range(nl) if kept[l]["estimate"] >= 0.9])
    s.add("behaviour_lost_layers_zero", "layers whose zero ablation lowers the continuation log-prob "
          "(Holm over layers, p over categories < 0.05)", behaviour["zero"]["significant_layers"])
    s.add("most_steerable_layer", "most steerable layer (median over categories; descriptive)",
          int(np.median(np.array(steer["score"]).argmax(0))))
    s.add("prompts", "prompts", f"{len(names)} categories x {cfg.n} ({sel.size} selection, {rep.size} report)")
    s.add("layer0_kl_zero", "layer 0 zero ablation, KL on the report half [simultaneous 95% CI]", _fmt(kl_ci["zero"][0]))
    prereg = preregistration.load().report("layer_ablation", {"layer0_critical": kl_ci["zero"][0]})
    s.add_checks(prereg)

    return {**s.to_result(), "modes": list(MODES), "categories": names,
            "kl_by_category": {m: table[m]["kl"].round(5).tolist() for m in MODES},
            "delta_logprob_by_category": {m: table[m]["delta_logprob"].round(5).tolist() for m in MODES},
            "top1_kept_by_category": {m: table[m]["top1_kept"].round(3).tolist() for m in MODES},
            "kl_report_simultaneous": kl_ci, "prereg": prereg, "top1_kept_report": kept, "behaviour": behaviour,
            "chosen": chosen,
            "critical_layers": crit, "steerability": steer,
            "splits": {"selection": sel.tolist(), "report": rep.tolist(),
                       "prompt_ids": [f"{c}:{j}" for c in names for j in range(len(cats[c]))]},
            "kl_per_prompt": {m: [np.round(res[(m, l)]["kl"], 6).tolist() for l in range(nl)] for m in MODES},
            "prompt_category": labels.tolist(),
            "behavioural_score": f"mean log-prob of the clean greedy {cfg.continuation}-token continuation, "
                                 "ablated minus clean (negative = behaviour lost)",
            "n_prompts": cfg.n}


def _behaviour(res: dict, mode: str, nl: int, labels: np.ndarray, n_cat: int) -> dict:
    """Per layer: the mean change in continuation log-prob, p over category means (independent units), Holm."""
    per_cat = [[float(np.mean(np.array(res[(mode, l)]["delta_logprob"])[labels == i])) for i in range(n_cat)]
               for l in range(nl)]
    p = [p_value_mean(v) for v in per_cat]
    adj = holm(p)
    return {"mean": [float(np.mean(v)) for v in per_cat], "p": p, "p_holm": adj,
            "significant_layers": [l for l in range(nl) if np.isfinite(adj[l]) and adj[l] < 0.05 and np.mean(per_cat[l]) < 0],
            "test": "one-sample t over the category means (10 independent units), Holm over layers"}


def _chosen(res: dict, mode: str, nl: int, labels: np.ndarray, sel: np.ndarray, rep: np.ndarray, cfg) -> dict:
    """Most and least critical layer by mean KL on the selection half; their KL measured on the report half."""
    sel_kl = np.array([np.mean(np.array(res[(mode, l)]["kl"])[sel]) for l in range(nl)])
    out = {"selection_mean_kl": sel_kl.round(5).tolist()}
    for key, l in (("most", int(sel_kl.argmax())), ("least", int(sel_kl.argmin()))):
        out[key] = {"layer": l, "kl": cluster_mean_ci(np.array(res[(mode, l)]["kl"])[rep], labels[rep], seed=cfg.seed)}
    return out


def _fmt(c: dict) -> str:
    return format_interval(c, ".3f")


def _means(hm: HookedModel, prompts: list[str]) -> dict:
    """Mean of hook_attn_out / hook_mlp_out over the baseline prompts' tokens (BOS excluded), per layer."""
    out = {}
    for h in ("hook_attn_out", "hook_mlp_out"):
        acts = neurons.pooled(hm, prompts, h)  # [N, nl, d] per-prompt token means
        for l in range(hm.info.n_layers):
            out[(l, h)] = acts[:, l].mean(0).astype(np.float32)
    return out


def _score(hm: HookedModel, rows: list[list[int]], plen: list[int], taps) -> tuple[np.ndarray, np.ndarray]:
    """(mean log-prob of each row's continuation, logits at the last prompt token [N, V]).

    Rows are left-padded, so every row ends at the last column; only the last
    max-continuation + 1 columns are unembedded (262k-vocab logits are the cost).
    """
    batch = hm.tokens(rows)
    L = batch.ids.shape[1]
    keep = max(len(r) - p for r, p in zip(rows, plen)) + 1
    cols = tuple(range(L - keep, L))
    logits = forward_last(hm, batch, list(taps.items()), read=cols)  # [B, keep, V]
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    lp, last = [], []
    for b, (row, p) in enumerate(zip(rows, plen)):
        cont = row[p:]
        first = keep - len(cont) - 1  # column (within kept) of the last prompt token
        if cont:
            idx = mx.array(list(range(first, keep - 1)))
            picked = mx.take_along_axis(logp[b, idx], mx.array(cont)[:, None], axis=-1)
            lp.append(float(mx.mean(picked).item()))
        else:
            lp.append(0.0)
        last.append(np.array(logits[b, first]))
    return np.array(lp), np.stack(last)


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    return kl_divergence(p_logits, q_logits)


def _critical(kl: np.ndarray, names: list[str]) -> dict:
    """Per category: the 3 layers with the highest KL, excluding the 2 layers critical for everyone."""
    universal = set(np.argsort(-kl.mean(0))[:2].tolist())
    return {"universal": sorted(universal),
            **{c: [int(l) for l in np.argsort(-kl[i]) if l not in universal][:3] for i, c in enumerate(names)}}


def _final_resid(hm: HookedModel, prompts: list[str], name: str, taps: dict) -> np.ndarray:
    """Last-token residual at `name` [N, d] (left padding: every prompt ends at column -1); unembeds one column."""
    store = ActivationCache(hm)
    forward_last(hm, hm.tokens(prompts), list(taps.items()) + [(name, T.Capture(store=store))])
    return np.array(store[name][:, -1].astype(mx.float32))


def _steerability(hm: HookedModel, cats, names, base_dir, base_steer, cfg, ctx) -> dict:
    nl = hm.info.n_layers
    last_name = H.resid_post(nl - 1)
    b_acts = neurons.pooled(hm, base_dir, "hook_resid_post", rule="last")  # [N, nl, d]
    resid_norm = np.linalg.norm(b_acts, axis=-1).mean(0)  # [nl]
    c_mean = {c: neurons.pooled(hm, cats[c], "hook_resid_post", rule="last").mean(0) for c in names}
    b_mean = b_acts.mean(0)
    clean_final = _final_resid(hm, base_steer, last_name, {})

    k = len(base_steer)

    def one(item) -> list[float]:
        """Every layer's steering in one batched forward: rows l*k .. l*k+k-1 are steered at layer l."""
        c = item
        diff = c_mean[c] - b_mean  # [nl, d]
        final_dir = diff[-1] / np.linalg.norm(diff[-1])
        sep = float(np.linalg.norm(diff[-1]))
        taps = {}
        for l in range(nl):
            v = np.zeros((nl * k, 1, diff.shape[-1]), np.float32)
            v[l * k:(l + 1) * k, 0] = cfg.steer_pct / 100 * resid_norm[l] * diff[l] / np.linalg.norm(diff[l])
            taps[H.resid_post(l)] = T.Add(v, 1.0)
        moved = (_final_resid(hm, base_steer * nl, last_name, taps) - np.tile(clean_final, (nl, 1))) @ final_dir
        return [float(moved[l * k:(l + 1) * k].mean() / sep) for l in range(nl)]

    score = ctx.map("steerability", names, one)
    return {"score": np.array(score).T.round(4).tolist(), "layers": list(range(nl)), "categories": names,
            "steer_pct_of_resid": cfg.steer_pct, "n_prompts": len(base_steer),
            "definition": "final-layer residual shift along the category direction / category-baseline "
                          "separation there; rows are layers, columns categories"}


def _figure(ctx, names, table, steer, nl) -> None:
    fig, ax = subplots(1, 4, figsize=(22, 4.8))
    for k, m in enumerate(MODES):
        im = ax[k].imshow(np.log10(table[m]["kl"] + 1e-4), aspect="auto", cmap="viridis")
        ax[k].set_yticks(range(len(names)), names, fontsize=8)
        ax[k].set(xlabel="layer ablated", title=f"log10 KL(clean||{m}-ablated)")
        fig.colorbar(im, ax=ax[k])
    ax[2].imshow(table["zero"]["delta_logprob"], aspect="auto", cmap="Reds_r")
    ax[2].set_yticks(range(len(names)), names, fontsize=8)
    ax[2].set(xlabel="layer ablated", title="behaviour: continuation log-prob change (zero)")
    im = ax[3].imshow(np.array(steer["score"]).T, aspect="auto", cmap="magma")
    ax[3].set_yticks(range(len(names)), names, fontsize=8)
    ax[3].set(xlabel="layer steered", title=f"steerability ({steer['steer_pct_of_resid']}% of resid norm)")
    fig.colorbar(im, ax=ax[3])
    fig.tight_layout()
    ctx.save_figure("layer_ablation", fig)

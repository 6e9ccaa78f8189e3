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
(0 = no move, 1 = as far as the category's own prompts).
"""
from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlxinterp.suite.summary import Summary
from mlxinterp.analysis import directions, neurons
from mlxinterp.core import taps as T
from mlxinterp.analysis.stats import bootstrap_ci, format_interval
from mlxinterp.analysis.plotting import subplots
from mlxinterp.suite import experiment
from mlxinterp.tasks import categories
from mlxinterp.core import names as H
from mlxinterp.analysis.patching import forward_last
from mlxinterp.analysis.stats import kl_divergence
from mlxinterp.core.hooks import ActivationCache, HookedModel

MODES = ("zero", "mean")


@dataclass
class LayerAblationConfig:
    n: int = 3  # prompts per category (full run: 30)
    seed: int = 0
    continuation: int = 3
    steer_pct: float = 8.0
    n_steer_prompts: int = 6  # baseline prompts steered (held out from the direction's baseline half)


@experiment("layer_ablation", LayerAblationConfig)
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
    kl_ci = {m: [bootstrap_ci(res[(m, l)]["kl"], seed=cfg.seed) for l in range(nl)] for m in MODES}
    steer = _steerability(hm, cats, names, base_dir, base_steer, cfg, ctx)
    crit = {m: _critical(table[m]["kl"], names) for m in MODES}
    _figure(ctx, names, table, steer, nl)
    zk = np.array([c["estimate"] for c in kl_ci["zero"]])
    s = Summary()
    s.add("most_critical_zero", "most critical layer, zero ablation (KL, all prompts [95% CI])",
          f"L{int(zk.argmax())}: {_fmt(kl_ci['zero'][int(zk.argmax())])}")
    s.add("least_critical_zero", "least critical layer, zero ablation",
          f"L{int(zk.argmin())}: {_fmt(kl_ci['zero'][int(zk.argmin())])}")
    s.add("most_critical_mean", "most critical layer, mean ablation", "L{}: {}".format(*_best(kl_ci["mean"])))
    s.add("top1_kept_layers", "layers whose zero ablation keeps top-1 on >= 90% of prompts",
          [l for l in range(nl) if np.mean(res[("zero", l)]["top1_kept"]) >= 0.9])
    s.add("most_steerable_layer", "most steerable layer (median over categories)",
          int(np.median(np.array(steer["score"]).argmax(0))))
    s.add("prompts", "prompts", f"{len(names)} categories x {cfg.n}")
    return {**s.to_result(), "modes": list(MODES), "categories": names,
            "kl_by_category": {m: table[m]["kl"].round(5).tolist() for m in MODES},
            "delta_logprob_by_category": {m: table[m]["delta_logprob"].round(5).tolist() for m in MODES},
            "top1_kept_by_category": {m: table[m]["top1_kept"].round(3).tolist() for m in MODES},
            "kl_all_prompts": kl_ci, "critical_layers": crit, "steerability": steer,
            "behavioural_score": f"mean log-prob of the clean greedy {cfg.continuation}-token continuation, "
                                 "ablated minus clean (negative = behaviour lost)",
            "n_prompts": cfg.n}


def _fmt(c: dict) -> str:
    return format_interval(c, ".3f")


def _best(cis: list[dict]) -> tuple[int, str]:
    i = int(np.argmax([c["estimate"] for c in cis]))
    return i, _fmt(cis[i])


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

    def one(item) -> list[float]:
        c = item
        diff = c_mean[c] - b_mean  # [nl, d]
        final_dir = diff[-1] / np.linalg.norm(diff[-1])
        sep = float(np.linalg.norm(diff[-1]))
        scores = []
        for l in range(nl):
            unit = diff[l] / np.linalg.norm(diff[l])
            taps = directions.steering_taps(unit, cfg.steer_pct / 100 * resid_norm[l], [l])
            moved = (_final_resid(hm, base_steer, last_name, taps) - clean_final) @ final_dir
            scores.append(float(moved.mean() / sep))
        return scores

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

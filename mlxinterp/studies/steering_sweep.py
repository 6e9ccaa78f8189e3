"""Steering sweep (the Qwen3-VL-8B notes §6-7 field-effect steering, the qwen3-steering style ActAdd): families x strength x layers.

Style directions (terse / formal / socratic / dry-wit, data/styles/styles.json): per
layer, difference of means of `hook_resid_post` at the last token of
"Instruction: <positive>..." minus "Instruction: <negative>..." over the
direction questions. Steering adds them, at every position while the model
answers held-out questions with *no* instruction. Strength is a perturbation in
% of the mean residual norm (the qwen3-steering: ~8 % steers, > 12 % collapses); multi-layer
profiles split that budget over layers (weights sum to 1).

Families: static (one layer), flat / donut / gaussian (mid-peak) / bell profiles,
connectome-informed (weights = per-layer separation d' of the positive and negative
prompts along the direction), ablation-informed (weights = KL of zero-ablating the
layer on the positive prompts), svd_k3 (mean difference projected onto the top-3
singular directions of the per-question differences), and a logits-processor
baseline (a fixed logit bias: the mean next-token log-prob difference between the
positive and negative prompts on the union of both sides' 200 most probable tokens,
added at `hook_logits`).

Scores per condition, each with a 95 % CI over prompts:
- style score: mean per-token log P(answer | positive instruction) - log P(answer |
  negative instruction) under the unsteered model (the model as its own style judge),
  and its paired change vs the unsteered answers;
- marker rate: regex style markers (data/styles) per generation, and length in words;
- fluency: mean per-token log P(answer | question) under the unsteered model;
  *collapse* = fluency below baseline - `collapse_nats` or < 30 % distinct tokens;
- entropy of the first answer token; collateral KL on unrelated prompts; bleed:
  marker rates on unrelated prompts.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import re
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlxinterp.suite.summary import Summary
from mlxinterp.analysis import directions
from mlxinterp.core import taps as T
from mlxinterp.tasks.data import load_json
from mlxinterp.analysis.lens import entropy
from mlxinterp.analysis.patching import forward_last
from mlxinterp.analysis.stats import bootstrap_ci, format_interval, kl_divergence, proportion_ci
from mlxinterp.analysis.plotting import subplots
from mlxinterp.suite import experiment
from mlxinterp.suite import cost as C
from mlxinterp.core import names as H

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

FAMILIES = ("static", "flat", "donut", "gaussian", "bell", "connectome", "ablation", "svd_k3")


@dataclass
class SteeringSweepConfig:
    n: int = 5  # held-out eval questions (full run: 12)
    seed: int = 0
    n_dir: int = 12  # questions for direction extraction
    styles: tuple = ("terse", "formal", "socratic", "dry-wit")
    static_pcts: tuple = (4.0, 8.0, 16.0, 24.0)  # every style, static ActAdd
    family_style: str = "terse"
    families: tuple = FAMILIES
    family_pct: float = 8.0
    layer_sweep_n: int = 4  # static at family_pct on family_style, at this many evenly spaced layers
    static_depth: float = 0.4  # static layer = round(static_depth * (n_layers - 1))
    logit_beta: float = 1.0
    logit_top: int = 200  # bias the union of both sides' top-200 tokens by probability
    # 16 / 12 tokens keep the default run ~6.5 min on 2 cores. A 40 / 32-token run (results/full/)
    # did not make the regex markers informative (this base model does not write them; 0/5 in 33 of
    # 35 conditions), halved the per-token style score (the model repeats itself) and under-called collapse.
    max_tokens: int = 16
    n_bleed: int = 5
    bleed_tokens: int = 12
    collapse_nats: float = 2.0


def style_data() -> dict:
    return load_json("styles/styles.json")


def markers(text: str, patterns: list[str]) -> int:
    """Number of regex style-marker hits in text (case-insensitive)."""
    return sum(len(re.findall(p, text, flags=re.IGNORECASE)) for p in patterns)


def profile_weights(kind: str, nl: int, static_layer: int, sep: np.ndarray | None = None,
                    abl: np.ndarray | None = None) -> np.ndarray:
    """Per-layer weights summing to 1 for one family (static: all weight on one layer)."""
    if kind in ("static", "svd_k3"):
        w = np.zeros(nl)
        w[static_layer] = 1.0
    elif kind == "connectome":
        w = np.clip(np.asarray(sep, float), 0, None)
    elif kind == "ablation":
        w = np.clip(np.asarray(abl, float), 0, None)
    else:
        w = directions.layer_profile(kind, nl)
    if not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"profile {kind!r} has no positive weight")
    return w / w.sum()


def _cost(cfg: SteeringSweepConfig, hm) -> C.Cost:
    """What steering_sweep computes (see the function below), token-rows counted with left padding."""
    sd = style_data()
    tok = lambda texts: max(hm.tokens(list(texts)).lengths)  # noqa: E731  (a batch is padded to its longest)
    qs = sd["questions"][: cfg.n_dir + cfg.n]
    st = sd["styles"][cfg.styles[0]]
    fit_tok = tok(sd["template"].format(instruction=st["positive"], question=q) for q in qs)
    eval_tok = tok(sd["eval_template"].format(question=q) for q in qs)
    bleed_tok = tok(sd["bleed_prompts"][: cfg.n_bleed])
    nl = hm.info.n_layers
    # directions.collect (8 per batch) and forward_last on each side, then the per-layer ablation KL
    fit = 2 * (C.forward(cfg.n_dir, fit_tok, batch=8) + C.forward(cfg.n_dir, fit_tok)) + nl * C.forward(cfg.n_dir, fit_tok)
    score = 3 * C.forward(cfg.n, fit_tok + cfg.max_tokens, unembed_each=cfg.max_tokens + 1)
    gen = C.generation(cfg.n, eval_tok, cfg.max_tokens) + C.generation(cfg.n_bleed, bleed_tok, cfg.bleed_tokens)
    conds = _conditions(cfg, int(round(cfg.static_depth * (nl - 1))), nl)
    steered = sum(c["family"] != "none" for c in conds)
    per_cond = score + C.forward(cfg.n, eval_tok) + C.forward(cfg.n_bleed, bleed_tok)
    total = (len(cfg.styles) * (fit + score) + gen + C.forward(cfg.n_bleed, bleed_tok)
             + len(conds) * per_cond + steered * gen)
    return total.with_items(len(conds))


@experiment("steering_sweep", SteeringSweepConfig, cost=_cost)
def steering_sweep(hm: HookedModel, cfg: SteeringSweepConfig, ctx) -> dict:
    """Style steering: ActAdd families x strength x layer vs a logits processor; style, fluency, bleed, collapse."""
    sd = style_data()
    unknown = [s for s in cfg.styles if s not in sd["styles"]]
    if unknown or cfg.family_style not in sd["styles"]:
        raise ValueError(f"unknown style(s) {unknown or cfg.family_style}; allowed: {list(sd['styles'])}")
    nl = hm.info.n_layers
    static_layer = int(round(cfg.static_depth * (nl - 1)))
    qs = sd["questions"]
    dir_q, eval_q = qs[: cfg.n_dir], qs[cfg.n_dir: cfg.n_dir + cfg.n]
    evals = [sd["eval_template"].format(question=q) for q in eval_q]
    bleed = sd["bleed_prompts"][: cfg.n_bleed]
    fit = {s: _fit_style(hm, sd, s, dir_q, cfg) for s in cfg.styles}
    conds = _conditions(cfg, static_layer, nl)
    base_gen = hm.generate_batch(evals, max_tokens=cfg.max_tokens)
    base_bleed = hm.generate_batch(bleed, max_tokens=cfg.bleed_tokens)
    base_last = np.array(forward_last(hm, hm.tokens(bleed))[:, 0])
    ref = {s: _score_texts(hm, sd, s, eval_q, base_gen) for s in cfg.styles}

    def one(cond: dict) -> dict:
        s = cond["style"]
        taps = _taps(hm, fit[s], cond, nl, static_layer, cfg)
        gen = hm.generate_batch(evals, max_tokens=cfg.max_tokens, taps=taps) if taps else base_gen
        sc = _score_texts(hm, sd, s, eval_q, gen)
        bl = hm.generate_batch(bleed, max_tokens=cfg.bleed_tokens, taps=taps) if taps else base_bleed
        last_eval = np.array(forward_last(hm, hm.tokens(evals), taps)[:, 0])
        last_bleed = np.array(forward_last(hm, hm.tokens(bleed), taps)[:, 0])
        pats = sd["styles"][s]["markers"]
        return {**cond, **sc, "style_delta": (np.array(sc["style_lp"]) - np.array(ref[s]["style_lp"])).tolist(),
                "entropy_first": np.array(entropy(mx.array(last_eval))).tolist(),
                "collateral_kl": kl_divergence(base_last, last_bleed).tolist(),
                "bleed_markers": [markers(g.text, pats) for g in bl],
                "examples": [g.text for g in gen[:2]], "perturbation_pct_total": cond.get("pct", 0.0)}

    rows = ctx.map("conditions", conds, one)
    table = [_summarise(r, ref[r["style"]], cfg) for r in rows]
    for r in table:  # the family comparison: every family at family_pct on family_style (static at its layer)
        r["family_compare"] = bool(r["style"] == cfg.family_style and r["family"] in cfg.families
                                   and r["pct"] == cfg.family_pct and r["layer"] in (None, static_layer))
    collapse = _collapse_threshold(table, cfg, static_layer)
    _figure(ctx, table, cfg, static_layer)
    return {**_summary(table, collapse, cfg, static_layer), "static_layer": static_layer, "conditions": table, "collapse": collapse,
            "directions": {s: {k: v for k, v in fit[s].items() if k in ("relative_norm", "split_half", "sep")}
                           for s in cfg.styles},
            "baseline_examples": [g.text for g in base_gen[:3]], "n_eval": len(evals), "n_bleed": len(bleed),
            "raw": rows}


def sweep_layers(nl: int, k: int) -> list[int]:
    """k evenly spaced layers from 0 to nl - 1 (fewer when the model has fewer layers)."""
    return sorted({int(round(x)) for x in np.linspace(0, nl - 1, k)})


def _conditions(cfg, static_layer: int, nl: int) -> list[dict]:
    out = [{"style": s, "family": "none", "pct": 0.0, "layer": None} for s in cfg.styles]
    out += [{"style": s, "family": "static", "pct": p, "layer": static_layer} for s in cfg.styles for p in cfg.static_pcts]
    out += [{"style": cfg.family_style, "family": f, "pct": cfg.family_pct, "layer": None}
            for f in cfg.families if not (f == "static" and cfg.family_pct in cfg.static_pcts)]
    out += [{"style": cfg.family_style, "family": "static", "pct": cfg.family_pct, "layer": l}
            for l in sweep_layers(nl, cfg.layer_sweep_n) if l != static_layer]
    out += [{"style": s, "family": "logits", "pct": 0.0, "layer": None, "beta": cfg.logit_beta} for s in cfg.styles]
    return out


def _fit_style(hm: HookedModel, sd, style: str, qs: list[str], cfg) -> dict:
    """Per-layer directions, residual norms, separation d', ablation KL, SVD direction and logit bias."""
    st = sd["styles"][style]
    pos = [sd["template"].format(instruction=st["positive"], question=q) for q in qs]
    neg = [sd["template"].format(instruction=st["negative"], question=q) for q in qs]
    nl = hm.info.n_layers
    names = [H.resid_post(l) for l in range(nl)]
    ap, an = directions.collect(hm, pos, names), directions.collect(hm, neg, names)
    vecs, norms, split, sep = [], [], [], []
    for n in names:
        d = directions.diff_of_means(ap[n], an[n], n, np.random.default_rng(cfg.seed))
        vecs.append(d.vector)
        norms.append(d.resid_norm)
        split.append(d.split_half_cosine)
        u = d.unit()
        pp, pn = ap[n] @ u, an[n] @ u
        sep.append(float((pp.mean() - pn.mean()) / np.sqrt((pp.var(ddof=1) + pn.var(ddof=1)) / 2 + 1e-12)))
    diffs = ap[names[int(round(cfg.static_depth * (nl - 1)))]] - an[names[int(round(cfg.static_depth * (nl - 1)))]]
    _, _, vt = np.linalg.svd(diffs - 0, full_matrices=False)
    basis = vt[:3]
    svd_vec = basis.T @ (basis @ diffs.mean(0))
    lp = forward_last(hm, hm.tokens(pos))[:, 0]
    ln = forward_last(hm, hm.tokens(neg))[:, 0]
    logit_bias = _logit_bias(lp, ln, cfg.logit_top)
    abl = _ablation_kl(hm, pos, lp)
    return {"vectors": np.stack(vecs), "resid_norm": np.array(norms), "split_half": split, "sep": sep,
            "relative_norm": [float(np.linalg.norm(v) / r) for v, r in zip(vecs, norms)], "svd": svd_vec,
            "logit_bias": logit_bias.astype(np.float32), "ablation_kl": abl}


def _logit_bias(lp: mx.array, ln: mx.array, top: int) -> np.ndarray:
    """Mean log-prob difference (positive - negative prompts) on the head of the distribution.

    Only tokens in either side's `top` by mean probability get a bias: the
    largest log-prob differences sit on tokens at -20 nats that sampling never
    reaches, and biasing those does nothing (the first run's baseline moved
    nothing: collateral KL 5e-5 nats, BUGFIX.md).
    """
    lpp, lpn = lp - mx.logsumexp(lp, -1, keepdims=True), ln - mx.logsumexp(ln, -1, keepdims=True)
    bias = np.array(mx.mean(lpp - lpn, 0))
    head = np.union1d(np.argsort(-np.array(mx.mean(mx.exp(lpp), 0)))[:top],
                      np.argsort(-np.array(mx.mean(mx.exp(lpn), 0)))[:top])
    out = np.zeros_like(bias)
    out[head] = bias[head]
    return out


def _ablation_kl(hm: HookedModel, prompts: list[str], clean: mx.array) -> list[float]:
    out = []
    for l in range(hm.info.n_layers):
        taps = {H.name(l, h): T.Ablate("zero") for h in ("hook_attn_out", "hook_mlp_out")}
        abl = forward_last(hm, hm.tokens(prompts), taps)[:, 0]
        out.append(float(kl_divergence(np.array(clean), np.array(abl)).mean()))
    return out


def _taps(hm: HookedModel, fit: dict, cond: dict, nl: int, static_layer: int, cfg) -> dict:
    fam = cond["family"]
    if fam == "none":
        return {}
    if fam == "logits":
        return {"hook_logits": T.Add(fit["logit_bias"], cond["beta"])}
    layer = cond["layer"] if cond["layer"] is not None else static_layer
    w = profile_weights(fam, nl, layer, fit["sep"], fit["ablation_kl"])
    taps = {}
    for l in np.nonzero(w)[0]:
        v = fit["svd"] if fam == "svd_k3" else fit["vectors"][l]
        unit = v / np.linalg.norm(v)
        alpha = cond["pct"] / 100 * w[l] * fit["resid_norm"][l]
        taps.update(directions.steering_taps(unit, alpha, [int(l)]))
    return taps


def _score_texts(hm: HookedModel, sd, style: str, qs: list[str], gens) -> dict:
    """Style log-prob ratio, fluency, markers, length and distinct-token ratio per generation."""
    st = sd["styles"][style]
    eos = set(getattr(hm.tokenizer, "eos_token_ids", None) or [hm.tokenizer.eos_token_id])
    conts = [[t for t in g.tokens if t not in eos] or [g.tokens[0]] for g in gens]
    prefixes = {k: [sd["template"].format(instruction=st[k], question=q) for q in qs] for k in ("positive", "negative")}
    prefixes["plain"] = [sd["eval_template"].format(question=q) for q in qs]
    lp = {k: _cont_logprob(hm, v, conts) for k, v in prefixes.items()}
    words = [len(g.text.split()) for g in gens]
    return {"style_lp": (lp["positive"] - lp["negative"]).tolist(), "fluency": lp["plain"].tolist(),
            "markers": [markers(g.text, st["markers"]) for g in gens], "words": words,
            "distinct": [len(set(c)) / len(c) for c in conts]}


def _cont_logprob(hm: HookedModel, prefixes: list[str], conts: list[list[int]]) -> np.ndarray:
    """Mean per-token log P(continuation | prefix), teacher-forced, one batch."""
    rows = [hm.tokens(p).ids[0].tolist() + c for p, c in zip(prefixes, conts)]
    batch = hm.tokens(rows)
    L = batch.ids.shape[1]
    keep = max(map(len, conts)) + 1
    logits = forward_last(hm, batch, None, read=tuple(range(L - keep, L)))
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    out = []
    for b, c in enumerate(conts):
        idx = mx.array(list(range(keep - len(c) - 1, keep - 1)))
        out.append(float(mx.mean(mx.take_along_axis(logp[b, idx], mx.array(c)[:, None], axis=-1)).item()))
    return np.array(out)


def _summarise(r: dict, ref: dict, cfg) -> dict:
    n = len(r["style_lp"])
    fl_drop = float(np.mean(ref["fluency"]) - np.mean(r["fluency"]))
    collapsed = bool(fl_drop > cfg.collapse_nats or np.mean(r["distinct"]) < 0.3)
    has = sum(m > 0 for m in r["markers"])
    return {**{k: r[k] for k in ("style", "family", "pct", "layer")}, "beta": r.get("beta"),
        "style_score": bootstrap_ci(r["style_lp"], seed=cfg.seed),
        "style_delta": bootstrap_ci(r["style_delta"], seed=cfg.seed),
        "marker_rate": proportion_ci(has, n), "markers_per_100_words": 100 * sum(r["markers"]) / max(1, sum(r["words"])),
        "words": bootstrap_ci(r["words"], seed=cfg.seed), "fluency": bootstrap_ci(r["fluency"], seed=cfg.seed),
        "fluency_drop_nats": fl_drop, "distinct_ratio": float(np.mean(r["distinct"])), "collapsed": collapsed,
        "entropy_first": bootstrap_ci(r["entropy_first"], seed=cfg.seed),
        "collateral_kl": bootstrap_ci(r["collateral_kl"], seed=cfg.seed),
        "bleed_marker_rate": proportion_ci(sum(m > 0 for m in r["bleed_markers"]), len(r["bleed_markers"])),
        "examples": r["examples"]}


def _strength_rows(table: list[dict], style: str, cfg, static_layer: int) -> list[dict]:
    """One style's static-ActAdd strength sweep at the static layer, by strength.

    The layer-sweep rows are static too, at the same 8 %, but at other layers:
    mixing them in put five "8 %" points into terse's collapse list and curve.
    """
    return sorted((r for r in table if r["style"] == style and r["family"] == "static"
                   and r["layer"] == static_layer and r["pct"] in cfg.static_pcts), key=lambda r: r["pct"])


def _collapse_threshold(table: list[dict], cfg, static_layer: int) -> dict:
    """Per style: the smallest static strength (% of residual norm) whose answers collapse, or None."""
    out = {}
    for s in cfg.styles:
        rows = _strength_rows(table, s, cfg, static_layer)
        hit = [r["pct"] for r in rows if r["collapsed"]]
        out[s] = {"collapse_pct": hit[0] if hit else None, "tested_pcts": [r["pct"] for r in rows],
                  "fluency_drop_nats": [round(r["fluency_drop_nats"], 3) for r in rows]}
    return out


def _ci(c: dict) -> str:
    return format_interval(c, "+.2f")


def _summary(table, collapse, cfg, static_layer: int) -> dict:
    out = Summary()
    for s in cfg.styles:
        best = max((r for r in _strength_rows(table, s, cfg, static_layer) if not r["collapsed"]),
                   key=lambda r: r["style_delta"]["estimate"], default=None)
        key = s.replace("-", "_")
        if best:
            out.add(f"{key}.best_static", f"{s}: best non-collapsed static (pct, style-score change [95% CI])",
                    f"{best['pct']:g}%: {_ci(best['style_delta'])}")
        out.add(f"{key}.collapse_pct", f"{s}: collapse threshold (% of resid norm)", collapse[s]["collapse_pct"])
    fam = [r for r in table if r["family_compare"]]
    if fam:
        top = max(fam, key=lambda r: r["style_delta"]["estimate"])
        out.add("best_family", f"{cfg.family_style}: best family at {cfg.family_pct:g}%", f"{top['family']}: {_ci(top['style_delta'])}")
    lg = [r for r in table if r["family"] == "logits"]
    out.add("logits_processor", "logits-processor style change, per style", {r["style"]: _ci(r["style_delta"]) for r in lg})
    out.add("eval_prompts", "eval prompts per condition", table[0]["style_score"]["n"])
    return out.to_result()


def _figure(ctx, table, cfg, static_layer: int) -> None:
    fig, ax = subplots(1, 4, figsize=(22, 4.6))
    for s in cfg.styles:
        rows = [r for r in table if r["style"] == s and r["family"] == "none"] + _strength_rows(table, s, cfg, static_layer)
        x = [r["pct"] for r in rows]
        ax[0].errorbar(x, [r["style_delta"]["estimate"] for r in rows], fmt="o-", label=s,
                       yerr=np.array([[r["style_delta"]["estimate"] - r["style_delta"]["low"],
                                       r["style_delta"]["high"] - r["style_delta"]["estimate"]] for r in rows]).T)
        ax[1].plot(x, [r["fluency_drop_nats"] for r in rows], "o-", label=s)
    ax[0].axhline(0, color="grey", lw=0.8)
    ax[0].set(xlabel="static ActAdd, % of residual norm", ylabel="style-score change (95% CI)", title="target style")
    ax[0].legend(fontsize=7)
    ax[1].axhline(cfg.collapse_nats, color="red", ls="--", lw=0.8, label="collapse")
    ax[1].set(xlabel="% of residual norm", ylabel="fluency drop (nats/token)", title="collapse")
    ax[1].legend(fontsize=7)
    fam = [r for r in table if r["family_compare"]]
    ax[2].bar([r["family"] for r in fam], [r["style_delta"]["estimate"] for r in fam],
              yerr=np.array([[r["style_delta"]["estimate"] - r["style_delta"]["low"],
                              r["style_delta"]["high"] - r["style_delta"]["estimate"]] for r in fam]).T)
    ax[2].tick_params(axis="x", rotation=45)
    ax[2].set(ylabel="style-score change", title=f"{cfg.family_style}: families at {cfg.family_pct:g}%")
    ls = sorted([r for r in table if r["style"] == cfg.family_style and r["family"] == "static" and r["pct"] == cfg.family_pct],
                key=lambda r: r["layer"])
    ax[3].plot([r["layer"] for r in ls], [r["style_delta"]["estimate"] for r in ls], "o-", label="style change")
    ax[3].plot([r["layer"] for r in ls], [r["collateral_kl"]["estimate"] for r in ls], "s--", label="collateral KL")
    ax[3].set(xlabel="layer (static)", title=f"{cfg.family_style}: layer sweep at {cfg.family_pct:g}%")
    ax[3].legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure("steering_sweep", fig)

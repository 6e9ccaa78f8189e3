"""Steering sweep (the qwen3-steering ActAdd write-up and the Qwen3-VL-8B notes §6-7): style steering with controls.

Style directions (terse / formal / socratic / dry-wit, data/styles/styles.json): per
layer, difference of means of `hook_resid_post` at the last token of
"Instruction: <positive>..." minus "Instruction: <negative>..." over the
direction questions (0-11). Steering adds a direction at every position while the
model answers questions with *no* instruction. Strength is a perturbation in % of
R_l, the mean last-token residual norm of the unsteered evaluation prompts at the
layer (the qwen3-steering: ~8 % steers, > 12 % collapses); multi-layer profiles
split that budget over layers (weights sum to 1). Every steering vector of one
strength has the same norm at each layer, so the control is exact: a **random
direction of the same norm** (one seeded Gaussian direction per layer, scaled
like the style vector) runs at every strength of the sweep.

Splits. Questions 12-23 are the *selection* split: only the strength sweep and the
layer sweep run there, and the best strength and best layer are chosen on it.
Questions 24-53 are the *report* split (n = 30 independent prompts per condition):
every reported effect is measured there, including the chosen strength and layer.

Conditions (report split unless noted; one batched generation, per-row taps):
- baseline (no steering); static ActAdd at `primary_pct` (pre-registered, 8 %) for
  every style, with the random control; the strength sweep `static_pcts` on
  `family_style` with a random control at each strength;
- the qwen3-steering conditions on `family_style`: a unit vector at alpha =
  `unit_alpha` (0.2: the write-up's "zero effect" row, ~0.04 % of the residual);
  alpha parity (-primary_pct: steering toward the negative pole; asymmetry =
  change(+) + change(-), 0 when symmetric); bimodal injection (the prompt-level
  controls: answers to the positive- and negative-instruction prompts, the two
  modes injection is compared with);
- the Qwen3-VL-8B notes' families at `primary_pct` on `family_style`: layer
  profiles (flat, donut, gaussian, bell, connectome = per-layer separation d',
  ablation = KL of zero-ablating the layer), svd_k3 (mean difference projected onto
  the top-3 principal directions of the *centred* per-question differences; the
  uncentred SVD reproduced the mean itself, so svd_k3 was static under another
  name), field-effect kernels (the per-dimension mean difference at the static
  layer re-weighted by k(|z|) of its per-dimension separation z: linear |z|,
  quadratic z^2, sigmoid 1 / (1 + exp(-2(|z| - 2))), i.e. "z^2 weighting amplifies
  high-impact neurons"), and logit processors (field: the mean next-token log-prob
  difference, positive minus negative prompt, on the union of both sides' top
  `logit_top` tokens; binary: the sign of the field on the same tokens at the
  field's mean absolute size), alone and on top of static ActAdd;
- the layer sweep: static at `primary_pct` on `family_style` at `layer_sweep_n`
  evenly spaced layers (selection split); the best is re-run on the report split.

Scores per (condition, question), all under the unsteered model (the model as its
own judge, teacher-forced on the generated answer):
- style score: mean per-token log P(answer | positive instruction) - log P(answer |
  negative instruction); its change vs the unsteered answer to the same question
  (paired) and vs the random control at the same strength (paired);
- fluency: the mean of the two instructed log-probs (one forward fewer than a
  third, uninstructed prompt); *collapse* = fluency below baseline by more than
  `collapse_nats` or < 30 % distinct tokens;
- regex markers, words, whether the greedy text differs from the baseline's;
- bleed: the 12-lens evaluation (data/styles/lenses.json) on 32 neutral topics
  answered at `bleed_tokens` tokens, lens hits per 100 words, steered minus
  unsteered per topic (Holm over lenses x conditions); collateral KL of the next
  token at the topics' last prompt token.

Grid and cost. The full grid of the earlier design (every style x every strength x
every family) at 30 prompts is ~4x the suite's time budget; the sweep over
strengths runs on `family_style` only and the other styles at `primary_pct` only.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import copy
import re
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlxinterp.suite.summary import Summary
from mlxinterp.analysis import directions
from mlxinterp.core import taps as T
from mlxinterp.tasks.data import load_json
from mlxinterp.analysis.patching import forward_last
from mlxinterp.analysis.stats import (family_cis, format_interval, holm, kl_divergence, mean_ci, p_value_mean,
                                      paired_diff_ci, proportion_ci)
from mlxinterp.analysis.plotting import subplots
from mlxinterp.suite import experiment, preregistration
from mlxinterp.suite import cost as C
from mlxinterp.core import names as H

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

PROFILES = ("flat", "donut", "gaussian", "bell", "connectome", "ablation")
FAMILIES = PROFILES + ("svd_k3",)
KERNELS = ("linear", "quadratic", "sigmoid")
PROCESSORS = ("field_lp", "binary_lp", "static+field_lp", "static+binary_lp")
N_DIR_QUESTIONS = 12  # questions 0-11 extract directions, 12-23 select, 24-53 report (styles.json provenance)


@dataclass
class SteeringSweepConfig:
    n: int = 30  # report-split questions per condition (24-53): >= 30 independent prompts per estimated effect
    n_select: int = 12  # selection-split questions (12-23): choose the best strength and layer, nothing reported
    seed: int = 0
    n_dir: int = 12  # direction-extraction questions (0-11)
    styles: tuple = ("terse", "formal", "socratic", "dry-wit")
    primary_pct: float = 8.0  # pre-registered strength (the qwen3-steering: ~8 % of the residual norm steers)
    static_pcts: tuple = (4.0, 8.0, 16.0, 24.0)  # strength sweep on family_style, a random control at each
    family_style: str = "terse"  # the qwen3-steering's headline style: sweep, families, kernels, parity, injection
    families: tuple = ("flat", "donut", "connectome", "ablation", "svd_k3")  # gaussian / bell: the notes' §7
    # disappointments, left out of the default grid for cost (FAMILIES lists every family the code runs)
    kernels: tuple = KERNELS
    processors: tuple = PROCESSORS
    layer_sweep_n: int = 4  # static at primary_pct on family_style at this many evenly spaced layers (selection)
    static_depth: float = 0.4  # static layer = round(static_depth * (n_layers - 1))
    unit_alpha: float = 0.2  # the qwen3-steering's unit-vector row (alpha on a unit vector)
    logit_beta: float = 1.0
    logit_top: int = 200  # bias the union of both sides' top-200 tokens by probability
    max_tokens: int = 12  # answer tokens scored per condition (12: the grid at 30 prompts fits ~10 min idle)
    n_bleed: int = 30  # neutral lens topics (data/styles/lenses.json has 32)
    bleed_tokens: int = 40  # ~25-30 words: long enough for a lens rate per 100 words
    collapse_nats: float = 2.0
    batch_rows: int = 48  # rows per batched generation / scoring forward (48 x 262k-vocab logits ~ 0.6 GB)


def style_data() -> dict:
    return load_json("styles/styles.json")


def lens_data() -> dict:
    return load_json("styles/lenses.json")


def markers(text: str, patterns: list[str] | str) -> int:
    """Number of regex marker hits in text (case-insensitive)."""
    pats = [patterns] if isinstance(patterns, str) else patterns
    return sum(len(re.findall(p, text, flags=re.IGNORECASE)) for p in pats)


def profile_weights(kind: str, nl: int, static_layer: int, sep: np.ndarray | None = None,
                    abl: np.ndarray | None = None) -> np.ndarray:
    """Per-layer weights summing to 1 for one family (single-layer families: all weight on one layer)."""
    if kind == "connectome":
        w = np.clip(np.asarray(sep, float), 0, None)
    elif kind == "ablation":
        w = np.clip(np.asarray(abl, float), 0, None)
    elif kind in PROFILES:
        w = directions.layer_profile(kind, nl)
    else:
        w = np.zeros(nl)
        w[static_layer] = 1.0
    if not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"profile {kind!r} has no positive weight")
    return w / w.sum()


def kernel_weights(kind: str, z: np.ndarray) -> np.ndarray:
    """Per-dimension weight k(|z|) of a field-effect kernel (linear |z|, quadratic z^2, sigmoid gate at |z| = 2)."""
    a = np.abs(np.asarray(z, np.float64))
    if kind == "linear":
        return a
    if kind == "quadratic":
        return a ** 2
    if kind == "sigmoid":
        return 1.0 / (1.0 + np.exp(-2.0 * (a - 2.0)))
    raise ValueError(f"unknown kernel {kind!r}; allowed: {list(KERNELS)}")


def sweep_layers(nl: int, k: int) -> list[int]:
    """k evenly spaced layers from 0 to nl - 1 (fewer when the model has fewer layers)."""
    return sorted({int(round(x)) for x in np.linspace(0, nl - 1, k)})


def splits(cfg: SteeringSweepConfig) -> dict[str, list[int]]:
    """Question indices of the direction, selection and report splits (disjoint)."""
    n_q = len(style_data()["questions"])
    sel0 = max(cfg.n_dir, N_DIR_QUESTIONS)
    rep0 = sel0 + 12  # the report split starts at question 24 whatever n_select is: its items never move
    if cfg.n_select > 12 or rep0 + cfg.n > n_q:
        raise ValueError(f"n_select={cfg.n_select} (max 12) / n={cfg.n} (max {n_q - rep0}) exceed the "
                         f"{n_q} questions of styles.json")
    return {"direction": list(range(cfg.n_dir)), "selection": list(range(sel0, sel0 + cfg.n_select)),
            "report": list(range(rep0, rep0 + cfg.n))}


def _cost(cfg: SteeringSweepConfig, hm) -> C.Cost:
    """What steering_sweep computes (see the functions below): forwards exact, token-rows from each set's longest prompt."""
    sd, ld = style_data(), lens_data()
    tok = lambda texts: max(hm.tokens(list(texts)).lengths)  # noqa: E731  (a batch is padded to its longest)
    sp = splits(cfg)
    qs = [sd["questions"][i] for i in sp["direction"] + sp["selection"] + sp["report"]]
    st = sd["styles"][cfg.styles[0]]
    fit_tok = tok(sd["template"].format(instruction=st["positive"], question=q) for q in qs)
    eval_tok = tok(sd["eval_template"].format(question=q) for q in qs)
    bleed_tok = tok(ld["template"].format(question=q) for q in ld["topics"][: cfg.n_bleed])
    nl, B = hm.info.n_layers, cfg.batch_rows
    static_layer = int(round(cfg.static_depth * (nl - 1)))
    sel, rep, bleed = _plan(cfg, static_layer, nl, None)
    total = C.forward(cfg.n_select + cfg.n, eval_tok, batch=8)
    total += len(cfg.styles) * (2 * C.forward(cfg.n_dir, fit_tok, batch=8) + 2 * C.forward(cfg.n_dir, fit_tok))
    total += nl * C.forward(cfg.n_dir, fit_tok)  # ablation KL, family_style only
    for conds, n in ((sel, cfg.n_select), (rep, cfg.n)):
        total += C.generation(len(conds) * n, eval_tok, cfg.max_tokens, batch=B)
        per = max(1, B // n)
        for s in cfg.styles:  # cont_logprob_shared: the prefixes once, then groups of continuations on their cache
            k = sum(s in c["score_styles"] for c in conds)
            total += 2 * (C.forward(n, fit_tok, batch=n) + C.forward(k * n, cfg.max_tokens - 1, batch=per * n,
                                                                      unembed_each=cfg.max_tokens - 1))
    total += C.generation(len(bleed) * cfg.n_bleed, bleed_tok, cfg.bleed_tokens, batch=B)
    steered = sum(_steers(c) for c in rep)
    per = max(1, B // max(1, cfg.n_bleed))
    total += C.forward(cfg.n_bleed, bleed_tok, batch=cfg.n_bleed) + C.Cost(
        forwards=-(-steered // per), tokens=steered * cfg.n_bleed * bleed_tok, unembedded=steered * cfg.n_bleed)
    return total.with_items(len(sel) + len(rep) + len(bleed))


# ------------------------------------------------------------------------------------------------ the plan


def _cond(style: str, family: str, pct: float = 0.0, layer: int | None = None, sign: int = 1,
          score_styles: tuple | None = None) -> dict:
    return {"id": f"{style}|{family}|{pct:g}|{layer}|{sign:+d}", "style": style, "family": family, "pct": pct,
            "layer": layer, "sign": sign, "score_styles": list(score_styles or (style,))}


def _plan(cfg: SteeringSweepConfig, static_layer: int, nl: int, static_layer_chosen: int | None) -> tuple:
    """(selection conditions, report conditions, bleed conditions). The report's chosen-layer row is added later."""
    fs, P = cfg.family_style, cfg.primary_pct
    pcts = sorted(set(cfg.static_pcts) | {P})
    base = _cond(fs, "none", score_styles=cfg.styles)
    sel = [base] + [_cond(fs, "static", p, static_layer) for p in cfg.static_pcts]
    sel += [_cond(fs, "static", P, l) for l in sweep_layers(nl, cfg.layer_sweep_n) if l != static_layer]
    if not any(c["family"] == "static" and c["pct"] == P and c["layer"] == static_layer for c in sel):
        sel.append(_cond(fs, "static", P, static_layer))
    rep = [base]
    rep += [_cond(fs, "static", p, static_layer) for p in pcts]
    rep += [_cond(s, "static", P, static_layer) for s in cfg.styles if s != fs]
    rep += [_cond(fs, "random", p, static_layer, score_styles=cfg.styles if p == P else (fs,)) for p in pcts]
    rep += [_cond(fs, "static", P, static_layer, sign=-1), _cond(fs, "unit", 0.0, static_layer),
            _cond(fs, "prompt_pos"), _cond(fs, "prompt_neg")]
    rep += [_cond(fs, f, P, static_layer) for f in cfg.families]
    rep += [_cond(fs, f"kernel_{k}", P, static_layer) for k in cfg.kernels]
    rep += [_cond(fs, f, P if f.startswith("static") else 0.0, static_layer) for f in cfg.processors]
    if static_layer_chosen is not None and static_layer_chosen != static_layer:
        rep.append(_cond(fs, "static", P, static_layer_chosen))
    bleed = [_cond(fs, "none")] + [_cond(s, "static", P, static_layer) for s in cfg.styles] + [
        _cond(fs, "random", P, static_layer)]
    return sel, rep, bleed


# ------------------------------------------------------------------------------------------------ the experiment


@experiment("steering_sweep", SteeringSweepConfig, cost=_cost,
            quick={"n": 4, "n_select": 3, "n_dir": 4, "styles": ("terse", "formal"), "static_pcts": (8.0, 24.0),
                   "families": ("flat", "svd_k3"), "kernels": ("quadratic",), "processors": ("field_lp",),
                   "layer_sweep_n": 2, "n_bleed": 3, "max_tokens": 4, "bleed_tokens": 6})
def steering_sweep(hm: HookedModel, cfg: SteeringSweepConfig, ctx) -> dict:
    """Style ActAdd with a same-norm random control at every strength; families, kernels, processors; 12-lens bleed."""
    sd, ld = style_data(), lens_data()
    unknown = [s for s in (*cfg.styles, cfg.family_style) if s not in sd["styles"]]
    if unknown or cfg.family_style not in cfg.styles:
        raise ValueError(f"unknown style(s) {unknown or cfg.family_style} (family_style must be one of styles); "
                         f"allowed: {list(sd['styles'])}")
    nl = hm.info.n_layers
    static_layer = int(round(cfg.static_depth * (nl - 1)))
    sp = splits(cfg)
    q = {k: [sd["questions"][i] for i in v] for k, v in sp.items()}
    topics = ld["topics"][: cfg.n_bleed]
    names = [H.resid_post(l) for l in range(nl)]
    evals = [sd["eval_template"].format(question=x) for x in q["selection"] + q["report"]]
    ev = directions.collect(hm, evals, names)
    R = np.array([float(np.linalg.norm(ev[n], axis=1).mean()) for n in names])  # reference residual norm per layer
    fit = {s: _fit_style(hm, sd, s, q["direction"], cfg, static_layer, ablation=s == cfg.family_style) for s in cfg.styles}
    rand = _random_dirs(ctx.rng_for("random_direction"), nl, hm.info.d_model)
    env = {"fit": fit, "R": R, "random": rand, "nl": nl, "static_layer": static_layer, "cfg": cfg, "sd": sd}

    sel_conds, _, _ = _plan(cfg, static_layer, nl, None)
    sel = _evaluate(hm, env, sel_conds, q["selection"], "selection", ctx)
    choice = _choose(sel, cfg, static_layer)
    _, rep_conds, bleed_conds = _plan(cfg, static_layer, nl, choice["layer"]["layer"])
    rep = _evaluate(hm, env, rep_conds, q["report"], "report", ctx)
    bleed = _bleed(hm, env, bleed_conds, topics, ld, ctx)
    kl = _collateral(hm, env, [c for c in rep_conds if _steers(c)], topics, ld, ctx)
    analysis = _analyse(rep, choice, kl, cfg, static_layer)
    analysis["unit_alpha"]["perturbation_pct_of_resid"] = 100 * cfg.unit_alpha / float(R[static_layer])
    prereg = _prereg(analysis, cfg)
    _figure(ctx, analysis, bleed, cfg)
    return {**_summary(analysis, bleed, choice, prereg, cfg), "prereg": prereg, "analysis": analysis,
            "bleed": bleed, "choice": choice, "static_layer": static_layer,
            "reference_resid_norm": R.round(3).tolist(),
            "splits": {k: {"question_ids": v, "questions": q[k]} for k, v in sp.items()},
            "lens_topics": topics,
            "directions": {s: {k: v for k, v in fit[s].items() if k in ("relative_norm", "split_half", "sep",
                                                                         "svd_cosine_to_static", "kernel_cosine_to_static")}
                           for s in cfg.styles},
            "selection_records": sel, "report_records": rep,
            "n_report": len(q["report"]), "n_selection": len(q["selection"]), "n_bleed": len(topics)}


def _steers(c: dict) -> bool:
    return c["family"] not in ("none", "prompt_pos", "prompt_neg")


def _random_dirs(rng: np.random.Generator, nl: int, d: int) -> np.ndarray:
    """One seeded Gaussian unit direction per layer [nl, d]: the same-norm control of every steering vector."""
    v = rng.standard_normal((nl, d))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _fit_style(hm: HookedModel, sd, style: str, qs: list[str], cfg, static_layer: int, ablation: bool) -> dict:
    """Per-layer directions, separation d', svd_k3 and kernel vectors, logit biases, ablation KL."""
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
    a, b = ap[names[static_layer]].astype(np.float64), an[names[static_layer]].astype(np.float64)
    svd_vec = svd_k_direction(a - b, 3)
    z = (a.mean(0) - b.mean(0)) / np.sqrt((a.var(0, ddof=1) + b.var(0, ddof=1)) / 2 + 1e-12)
    mean_diff = a.mean(0) - b.mean(0)
    kern = {k: (mean_diff * kernel_weights(k, z)).astype(np.float32) for k in KERNELS}
    lp = forward_last(hm, hm.tokens(pos))[:, 0]
    ln = forward_last(hm, hm.tokens(neg))[:, 0]
    field = _logit_bias(lp, ln, cfg.logit_top)
    cos = lambda x, y: float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-30))  # noqa: E731
    return {"vectors": np.stack(vecs), "resid_norm": np.array(norms), "split_half": split, "sep": sep,
            "relative_norm": [float(np.linalg.norm(v) / r) for v, r in zip(vecs, norms)], "svd": svd_vec,
            "svd_cosine_to_static": cos(svd_vec, mean_diff), "kernels": kern,
            "kernel_cosine_to_static": {k: cos(v, mean_diff) for k, v in kern.items()},
            "field": field.astype(np.float32), "binary": binary_bias(field).astype(np.float32),
            "ablation_kl": _ablation_kl(hm, pos, lp) if ablation else None}


def svd_k_direction(diffs: np.ndarray, k: int) -> np.ndarray:
    """Mean of the per-item differences projected onto the top-k principal directions of the *centred* differences.

    Centring matters: the uncentred top singular vector of differences that share a
    large common offset is that offset, so projecting the mean onto it returns the
    mean (cosine ~1 with the static direction: the same steering under another name).
    """
    d = np.asarray(diffs, np.float64)
    _, _, vt = np.linalg.svd(d - d.mean(0), full_matrices=False)
    basis = vt[:k]
    return (basis.T @ (basis @ d.mean(0))).astype(np.float32)


def _logit_bias(lp: mx.array, ln: mx.array, top: int) -> np.ndarray:
    """Field processor: mean log-prob difference (positive - negative prompts) on the head of the distribution.

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


def binary_bias(field: np.ndarray) -> np.ndarray:
    """Binary processor: sign of the field bias on the same tokens, at the field's mean absolute size."""
    on = field != 0
    out = np.zeros_like(field)
    if on.any():
        out[on] = np.sign(field[on]) * np.abs(field[on]).mean()
    return out


def _ablation_kl(hm: HookedModel, prompts: list[str], clean: mx.array) -> list[float]:
    out = []
    for l in range(hm.info.n_layers):
        taps = {H.name(l, h): T.Ablate("zero") for h in ("hook_attn_out", "hook_mlp_out")}
        abl = forward_last(hm, hm.tokens(prompts), taps)[:, 0]
        out.append(float(kl_divergence(np.array(clean), np.array(abl)).mean()))
    return out


def steering_plan(env: dict, cond: dict) -> tuple[dict[int, np.ndarray], np.ndarray | None]:
    """({layer: vector added at hook_resid_post}, logit bias or None) of one condition."""
    fam, cfg, fit = cond["family"], env["cfg"], env["fit"][cond["style"]]
    R, nl, layer = env["R"], env["nl"], cond["layer"]
    if fam in ("none", "prompt_pos", "prompt_neg"):
        return {}, None
    if fam in ("field_lp", "binary_lp"):
        return {}, cfg.logit_beta * fit["field" if fam == "field_lp" else "binary"]
    bias = None
    if fam.startswith("static+"):
        bias = cfg.logit_beta * fit["field" if fam.endswith("field_lp") else "binary"]
    if fam == "unit":  # alpha on a unit vector: the write-up's absolute scale, not a % of the residual
        v = fit["vectors"][layer]
        return {layer: (cfg.unit_alpha * v / np.linalg.norm(v)).astype(np.float32)}, None
    w = profile_weights(fam, nl, layer, fit["sep"], fit["ablation_kl"]) if fam in PROFILES else profile_weights("static", nl, layer)
    out = {}
    for l in np.nonzero(w)[0]:
        if fam == "random":
            v = env["random"][l]
        elif fam == "svd_k3":
            v = fit["svd"]
        elif fam.startswith("kernel_"):
            v = fit["kernels"][fam.removeprefix("kernel_")]
        else:
            v = fit["vectors"][l]
        alpha = cond["sign"] * cond["pct"] / 100 * w[l] * R[l]
        out[int(l)] = (alpha * v / np.linalg.norm(v)).astype(np.float32)
    return out, bias


def row_taps(plans: list[tuple[dict, np.ndarray | None]], d: int, vocab: int) -> dict:
    """One Add per hook carrying a per-row vector [B, 1, ...] (zero for rows without steering there)."""
    taps = {}
    for l in sorted({l for p, _ in plans for l in p}):
        v = np.zeros((len(plans), 1, d), np.float32)
        for i, (p, _) in enumerate(plans):
            if l in p:
                v[i, 0] = p[l]
        taps[H.resid_post(l)] = T.Add(v, 1.0)
    if any(b is not None for _, b in plans):
        v = np.zeros((len(plans), 1, vocab), np.float32)
        for i, (_, b) in enumerate(plans):
            if b is not None:
                v[i, 0] = b
        taps["hook_logits"] = T.Add(v, 1.0)
    return taps


def _prompt(sd: dict, cond: dict, question: str) -> str:
    if cond["family"] in ("prompt_pos", "prompt_neg"):
        side = "positive" if cond["family"] == "prompt_pos" else "negative"
        return sd["template"].format(instruction=sd["styles"][cond["style"]][side], question=question)
    return sd["eval_template"].format(question=question)


def _generate(hm: HookedModel, env: dict, rows: list[tuple[dict, str]], max_tokens: int, key: str, ctx) -> list[dict]:
    """Greedy answers for (condition, prompt) rows, batch_rows at a time, each row with its own steering."""
    cfg = env["cfg"]
    chunks = [rows[i: i + cfg.batch_rows] for i in range(0, len(rows), cfg.batch_rows)]
    vocab = hm.info.vocab_size

    def one(k: int) -> list[dict]:
        chunk = chunks[k]
        taps = row_taps([steering_plan(env, c) for c, _ in chunk], hm.info.d_model, vocab)
        gens = hm.generate_batch([p for _, p in chunk], max_tokens=max_tokens, taps=taps or None)
        return [{"text": g.text, "tokens": g.tokens} for g in gens]

    # the item names its rows, so a checkpoint from another grid is never reloaded as this one's
    items = [f"{k}:" + ",".join(sorted({c['id'] for c, _ in ch})) + f":{len(ch)}" for k, ch in enumerate(chunks)]
    return [g for part in ctx.map(key, items, lambda it: one(int(it.split(":")[0]))) for g in part]


def _evaluate(hm: HookedModel, env: dict, conds: list[dict], questions: list[str], split: str, ctx) -> list[dict]:
    """Per-condition records: answers and their per-question scores under the unsteered model."""
    sd, cfg = env["sd"], env["cfg"]
    rows = [(c, _prompt(sd, c, qq)) for c in conds for qq in questions]
    gens = _generate(hm, env, rows, cfg.max_tokens, f"generate_{split}", ctx)
    eos = set(getattr(hm.tokenizer, "eos_token_ids", None) or [hm.tokenizer.eos_token_id])
    conts = [[t for t in g["tokens"] if t not in eos] or [g["tokens"][0]] for g in gens]
    jobs = [(s, side) for s in cfg.styles for side in ("positive", "negative")]
    needed = {(s, side): [i for i, (c, _) in enumerate(rows) if s in c["score_styles"]] for s, side in jobs}

    Q = len(questions)

    def score(job) -> list[float]:
        """Row order of needed[job]: condition by condition, questions in order (so [K, Q] flattens to it)."""
        s, side = job
        ks = [k for k, c in enumerate(conds) if s in c["score_styles"]]
        pre = [sd["template"].format(instruction=sd["styles"][s][side], question=q) for q in questions]
        return cont_logprob_shared(hm, pre, [conts[k * Q:(k + 1) * Q] for k in ks], cfg.batch_rows).ravel().tolist()

    lps = dict(zip([f"{s}|{side}" for s, side in jobs], ctx.map(f"score_{split}", [f"{s}|{side}" for s, side in jobs],
                                                                  lambda j: score(tuple(j.split("|"))))))
    where = {k: {row: j for j, row in enumerate(v)} for k, v in needed.items()}
    base_text = [g["text"] for g in gens[: len(questions)]]  # conds[0] is the baseline
    out = []
    for k, c in enumerate(conds):
        sl = slice(k * len(questions), (k + 1) * len(questions))
        rec = {**{x: c[x] for x in ("id", "style", "family", "pct", "layer", "sign")},
               "texts": [g["text"] for g in gens[sl]],
               "words": [len(g["text"].split()) for g in gens[sl]],
               "distinct": [len(set(t)) / len(t) for t in conts[sl]],
               "changed": [int(g["text"] != b) for g, b in zip(gens[sl], base_text)],
               "markers": [markers(g["text"], sd["styles"][c["style"]]["markers"]) for g in gens[sl]], "scores": {}}
        for s in c["score_styles"]:
            pos = [lps[f"{s}|positive"][where[(s, 'positive')][i]] for i in range(sl.start, sl.stop)]
            neg = [lps[f"{s}|negative"][where[(s, 'negative')][i]] for i in range(sl.start, sl.stop)]
            rec["scores"][s] = {"style_lp": (np.array(pos) - np.array(neg)).tolist(),
                                "fluency": ((np.array(pos) + np.array(neg)) / 2).tolist()}
        out.append(rec)
    return out


def cont_logprob_shared(hm: HookedModel, prefixes: list[str], conts: list[list[list[int]]],
                        batch_rows: int = 48) -> np.ndarray:
    """Mean per-token log P(continuation | prefix) of K continuations of each of Q prefixes: [K, Q].

    The same as `cont_logprob` row by row (tests check it), but the prefixes run once:
    a left-padded batch into mlx-lm's batch KV caches, then each group of
    continuations runs on a copy of those caches tiled over the group (`filter`
    makes new arrays, so the originals stay intact), so the ~45-token instruction
    prefix is not recomputed for every condition scored against it.
    """
    Q, K = len(prefixes), len(conts)
    batch = hm.tokens(list(prefixes))
    cache = hm.padded_cache(batch.left_padding)
    first = forward_last(hm, batch.ids, None, read=(-1,), cache=cache)[:, 0]  # predicts each continuation's token 0
    first = np.array(first - mx.logsumexp(first, axis=-1, keepdims=True))
    out = np.zeros((K, Q))
    per = max(1, batch_rows // max(1, Q))
    for g0 in range(0, K, per):
        group = list(range(g0, min(K, g0 + per)))
        rows = [[int(t) for t in conts[k][q]] for k in group for q in range(Q)]
        lp = [[float(first[i % Q, c[0]])] for i, c in enumerate(rows)]
        width = max(len(c) for c in rows) - 1
        if width > 0:  # right-padded: a row's padding comes after its tokens, so causal attention ignores it
            ids = np.zeros((len(rows), width), np.int32)
            for i, c in enumerate(rows):
                ids[i, : len(c) - 1] = c[:-1]
            tiled = [copy.copy(c) for c in cache]
            for c in tiled:
                c.filter(mx.array(np.tile(np.arange(Q), len(group))))
            logits = forward_last(hm, mx.array(ids), None, read=tuple(range(width)), cache=tiled)
            logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            for i, c in enumerate(rows):
                if len(c) > 1:
                    picked = mx.take_along_axis(logp[i, : len(c) - 1], mx.array(c[1:])[:, None], axis=-1)[:, 0]
                    lp[i] += np.array(picked).tolist()
        for j, k in enumerate(group):
            out[k] = [float(np.mean(lp[j * Q + q])) for q in range(Q)]
    return out


def cont_logprob(hm: HookedModel, prefixes: list[str], conts: list[list[int]], batch_rows: int = 48) -> np.ndarray:
    """Mean per-token log P(continuation | prefix), teacher-forced, batch_rows rows per forward."""
    out = []
    for i in range(0, len(prefixes), batch_rows):
        pre, cs = prefixes[i: i + batch_rows], conts[i: i + batch_rows]
        rows = [hm.tokens(p).ids[0].tolist() + c for p, c in zip(pre, cs)]
        batch = hm.tokens(rows)
        L = batch.ids.shape[1]
        keep = max(map(len, cs)) + 1
        logits = forward_last(hm, batch, None, read=tuple(range(L - keep, L)))
        logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        for b, c in enumerate(cs):
            idx = mx.array(list(range(keep - len(c) - 1, keep - 1)))
            out.append(float(mx.mean(mx.take_along_axis(logp[b, idx], mx.array(c)[:, None], axis=-1)).item()))
    return np.array(out)


def _choose(sel: list[dict], cfg, static_layer: int) -> dict:
    """Best strength and best layer by mean style change on the selection split (never reported from it)."""
    fs = cfg.family_style
    base = np.array(sel[0]["scores"][fs]["style_lp"])
    bfl = np.mean(sel[0]["scores"][fs]["fluency"])

    def gain(r):
        return float(np.mean(np.array(r["scores"][fs]["style_lp"]) - base))

    def ok(r):
        return not _collapsed(np.mean(r["scores"][fs]["fluency"]), bfl, np.mean(r["distinct"]), cfg)

    strengths = [r for r in sel if r["family"] == "static" and r["layer"] == static_layer and r["pct"] in cfg.static_pcts]
    best = max((r for r in strengths if ok(r)), key=gain, default=None)
    layers = [r for r in sel if r["family"] == "static" and r["pct"] == cfg.primary_pct]
    best_l = max(layers, key=gain)
    return {"strength": {"pct": best["pct"] if best else None,
                         "selection_gain": {f"{r['pct']:g}": round(gain(r), 4) for r in strengths},
                         "rule": "largest mean style-score change among non-collapsed strengths, selection split"},
            "layer": {"layer": best_l["layer"], "selection_gain": {str(r["layer"]): round(gain(r), 4) for r in layers},
                      "rule": f"largest mean style-score change at {cfg.primary_pct:g} %, selection split"}}


def _collapsed(fluency: float, base_fluency: float, distinct: float, cfg) -> bool:
    return bool(base_fluency - fluency > cfg.collapse_nats or distinct < 0.3)


# ------------------------------------------------------------------------------------------------ bleed


def _bleed(hm: HookedModel, env: dict, conds: list[dict], topics: list[str], ld: dict, ctx) -> dict:
    """12-lens bleed: lens hits per 100 words of long answers to neutral topics, steered minus unsteered."""
    cfg = env["cfg"]
    prompts = [ld["template"].format(question=t) for t in topics]
    rows = [(c, p) for c in conds for p in prompts]
    gens = _generate(hm, env, rows, cfg.bleed_tokens, "generate_bleed", ctx)
    lenses = ld["lenses"]
    rates = {}
    for k, c in enumerate(conds):
        texts = [g["text"] for g in gens[k * len(topics): (k + 1) * len(topics)]]
        words = [max(1, len(t.split())) for t in texts]
        rates[c["id"]] = {"texts": texts, "words": words,
                          "rate": {name: [100 * markers(t, pat) / w for t, w in zip(texts, words)]
                                   for name, pat in lenses.items()}}
    base = rates[conds[0]["id"]]
    tests, out = [], {"conditions": [], "lenses": list(lenses), "topics_n": len(topics),
                      "rate_unit": "lens regex hits per 100 words of the answer",
                      "thresholds_of_the_source": {"clean": "< 1", "ambient": "1-3", "captured": "3-5", "full": "> 5"}}
    for c in conds:
        r = rates[c["id"]]
        row = {"id": c["id"], "style": c["style"], "family": c["family"], "pct": c["pct"],
               "words": mean_ci(r["words"]), "rate": {n: mean_ci(r["rate"][n]) for n in lenses}, "texts": r["texts"],
               "rates_per_topic": {n: np.round(r["rate"][n], 3).tolist() for n in lenses}}
        if c["family"] != "none":
            row["minus_baseline"] = {n: paired_diff_ci(r["rate"][n], base["rate"][n]) for n in lenses}
            for n in lenses:
                d = np.array(r["rate"][n]) - np.array(base["rate"][n])
                tests.append((c["id"], n, p_value_mean(d) if np.any(d != 0) else 1.0))
        out["conditions"].append(row)
    adj = holm([t[2] for t in tests])
    out["holm"] = [{"condition": cid, "lens": n, "p": p, "p_holm": a} for (cid, n, p), a in zip(tests, adj)]
    out["significant_increases"] = [h for h in out["holm"] if h["p_holm"] < 0.05 and next(
        r for r in out["conditions"] if r["id"] == h["condition"])["minus_baseline"][h["lens"]]["estimate"] > 0]
    return out


def _collateral(hm: HookedModel, env: dict, conds: list[dict], topics: list[str], ld: dict, ctx) -> dict:
    """KL(unsteered || steered) of the next token at each topic's last prompt token, per steering condition."""
    cfg = env["cfg"]
    prompts = [ld["template"].format(question=t) for t in topics]
    clean = np.array(forward_last(hm, hm.tokens(prompts))[:, 0])
    per = max(1, cfg.batch_rows // len(prompts))
    groups = [conds[i: i + per] for i in range(0, len(conds), per)]

    def one(k: int) -> list[list[float]]:
        g = groups[k]
        plans = [steering_plan(env, c) for c in g for _ in prompts]
        taps = row_taps(plans, hm.info.d_model, hm.info.vocab_size)
        lg = np.array(forward_last(hm, hm.tokens(prompts * len(g)), taps)[:, 0])
        return [kl_divergence(clean, lg[j * len(prompts): (j + 1) * len(prompts)]).tolist() for j in range(len(g))]

    vals = [v for part in ctx.map("collateral_kl", list(range(len(groups))), one) for v in part]
    return {c["id"]: v for c, v in zip(conds, vals)}


# ------------------------------------------------------------------------------------------------ analysis


def _analyse(rep: list[dict], choice: dict, kl: dict, cfg, static_layer: int) -> dict:
    """Report-split effects: every comparison paired by question, families of rows with simultaneous intervals."""
    fs, P = cfg.family_style, cfg.primary_pct
    by = {r["id"]: r for r in rep}
    base = rep[0]

    def get(style, family, pct, layer=static_layer, sign=1):
        return by.get(_cond(style, family, pct, layer, sign)["id"])

    def lp(r, s=fs):
        return np.array(r["scores"][s]["style_lp"])

    def fl(r, s=fs):
        return np.array(r["scores"][s]["fluency"])

    def row(r, s=fs) -> dict:
        out = {"id": r["id"], "style": s, "family": r["family"], "pct": r["pct"], "layer": r["layer"], "sign": r["sign"],
               "style_score": mean_ci(lp(r, s)), "style_change": paired_diff_ci(lp(r, s), lp(base, s)),
               "fluency_drop_nats": float(np.mean(fl(base, s)) - np.mean(fl(r, s))),
               "distinct_ratio": float(np.mean(r["distinct"])), "words": mean_ci(r["words"]),
               "words_change": paired_diff_ci(r["words"], base["words"]),
               "text_changed": proportion_ci(int(sum(r["changed"])), len(r["changed"])),
               "marker_rate": proportion_ci(int(sum(m > 0 for m in r["markers"])), len(r["markers"])),
               "examples": r["texts"][:2]}
        out["collapsed"] = _collapsed(float(np.mean(fl(r, s))), float(np.mean(fl(base, s))), out["distinct_ratio"], cfg)
        if r["id"] in kl:
            out["collateral_kl"] = mean_ci(kl[r["id"]])
        return out

    pcts = sorted(set(cfg.static_pcts) | {P})
    a: dict = {"baseline": {s: {"style_score": mean_ci(lp(base, s)), "words": mean_ci(base["words"])} for s in cfg.styles}}
    # primary: static minus the same-norm random direction at the pre-registered strength, every style
    rnd = get(fs, "random", P)
    a["static_minus_random"] = {}
    for s in cfg.styles:
        st = get(s, "static", P)
        a["static_minus_random"][s] = paired_diff_ci(lp(st, s), lp(rnd, s))
    a["static"] = {s: row(get(s, "static", P), s) for s in cfg.styles}
    a["random"] = {s: row(rnd, s) for s in cfg.styles}
    # strength sweep with the random control at every strength: simultaneous intervals over strengths
    sw_st = [get(fs, "static", p) for p in pcts]
    sw_rd = [get(fs, "random", p) for p in pcts]
    ch_st = family_cis([lp(r) - lp(base) for r in sw_st])
    ch_rd = family_cis([lp(r) - lp(base) for r in sw_rd])
    minus = family_cis([lp(x) - lp(y) for x, y in zip(sw_st, sw_rd)])
    a["strength_sweep"] = [{"pct": p, "static": row(x), "random": row(y), "static_change_simultaneous": c1,
                            "random_change_simultaneous": c2, "static_minus_random_simultaneous": c3}
                           for p, x, y, c1, c2, c3 in zip(pcts, sw_st, sw_rd, ch_st, ch_rd, minus)]
    hit = [s["pct"] for s in a["strength_sweep"] if s["static"]["collapsed"]]
    a["collapse_pct"] = hit[0] if hit else None
    # the strength and the layer chosen on the selection split, measured here
    bp = choice["strength"]["pct"]
    if bp is not None:
        x = get(fs, "static", bp)
        a["chosen_strength"] = {"pct": bp, "static_change": row(x)["style_change"],
                                "static_minus_random": paired_diff_ci(lp(x), lp(get(fs, "random", bp)))}
    bl = choice["layer"]["layer"]
    a["chosen_layer"] = {"layer": bl, **{k: v for k, v in row(get(fs, "static", P, bl)).items()
                                         if k in ("style_change", "fluency_drop_nats", "collateral_kl")}}
    # the qwen3-steering conditions
    unit = get(fs, "unit", 0.0)
    a["unit_alpha"] = {"alpha": cfg.unit_alpha, "perturbation_pct_of_resid": None, **row(unit)}
    neg = get(fs, "static", P, sign=-1)
    pos = get(fs, "static", P)
    a["parity"] = {"plus": row(pos), "minus": row(neg),
                   "asymmetry": paired_diff_ci(lp(pos) - lp(base), lp(base) - lp(neg)),
                   "asymmetry_definition": "change(+alpha) - (-change(-alpha)) per question: 0 when pushing toward "
                                           "either pole moves the style score equally",
                   "words_asymmetry": paired_diff_ci(np.array(pos["words"]) - base["words"],
                                                     np.array(base["words"]) - neg["words"])}
    pp, pn = get(fs, "prompt_pos", 0.0, None), get(fs, "prompt_neg", 0.0, None)
    a["bimodal_injection"] = {
        "prompt_pos": row(pp), "prompt_neg": row(pn),
        "injection_plus_minus_prompt_pos": paired_diff_ci(lp(pos), lp(pp)),
        "injection_minus_minus_prompt_neg": paired_diff_ci(lp(neg), lp(pn)),
        "prompt_modes_gap": paired_diff_ci(lp(pp), lp(pn)),
        "definition": "the two prompt-level modes (positive / negative instruction in the prompt) against injection "
                      f"of +/-{P:g} % at layer {static_layer}: 0 = injection lands on the prompt mode, > 0 overshoots it"}
    # families, kernels and processors at the same budget, against static at that budget
    fam_rows = [get(fs, f, P) for f in cfg.families] + [get(fs, f"kernel_{k}", P) for k in cfg.kernels] + [
        get(fs, f, P if f.startswith("static") else 0.0) for f in cfg.processors]
    fam_rows = [r for r in fam_rows if r is not None]
    sim = family_cis([lp(r) - lp(pos) for r in fam_rows])
    a["families"] = [{**row(r), "minus_static_simultaneous": c} for r, c in zip(fam_rows, sim)]
    return a


def _prereg(a: dict, cfg) -> dict:
    """Pre-registered checks (mlxinterp/data/preregistration.toml): static beats random per style; unit alpha inert."""
    prereg = preregistration.load()
    checks = {f"static_beats_random_{s.replace('-', '_')}": prereg.check(
        "steering_sweep", f"static_beats_random_{s.replace('-', '_')}", a["static_minus_random"][s]) for s in cfg.styles
        if s.replace("-", "_") in ("terse", "formal", "socratic", "dry_wit")}
    checks["unit_alpha_inert"] = prereg.check("steering_sweep", "unit_alpha_inert", a["unit_alpha"]["text_changed"])
    return {"sha256": prereg.sha256, "primary": prereg.primary("steering_sweep"), "checks": checks}


def _ci(c: dict) -> str:
    return format_interval(c, "+.3f")


def _summary(a: dict, bleed: dict, choice: dict, prereg: dict, cfg) -> dict:
    fs, P = cfg.family_style, cfg.primary_pct
    s = Summary()
    for st in cfg.styles:
        key = st.replace("-", "_")
        s.add(f"{key}.static_minus_random", f"{st}: static {P:g}% minus same-norm random, style score [95% CI]",
              _ci(a["static_minus_random"][st]))
        s.add(f"{key}.static_change", f"{st}: static {P:g}% style-score change vs unsteered", _ci(a["static"][st]["style_change"]))
    s.add("random_change", f"{fs}: same-norm random direction at {P:g}%, style-score change", _ci(a["random"][fs]["style_change"]))
    s.add("collapse_pct", f"{fs}: smallest collapsing strength (% of resid norm)", a["collapse_pct"])
    if "chosen_strength" in a:
        cs = a["chosen_strength"]
        s.add("chosen_strength", f"{fs}: strength chosen on selection, report split (static minus random)",
              f"{cs['pct']:g}%: {_ci(cs['static_minus_random'])}")
    cl = a["chosen_layer"]
    s.add("chosen_layer", f"{fs}: layer chosen on selection, report split (change)", f"L{cl['layer']}: {_ci(cl['style_change'])}")
    s.add("unit_alpha.text_changed", f"unit vector alpha={cfg.unit_alpha:g} "
          f"({a['unit_alpha']['perturbation_pct_of_resid']:.3f}% of the residual): answers changed",
          format_interval(a["unit_alpha"]["text_changed"], ".3f", counts=True))
    s.add("parity.asymmetry", f"alpha parity: change(+) + change(-) at {P:g}%", _ci(a["parity"]["asymmetry"]))
    s.add("bimodal.injection_minus_prompt", "injection (+) minus positive-prompt mode, style score",
          _ci(a["bimodal_injection"]["injection_plus_minus_prompt_pos"]))
    if a["families"]:
        top = max(a["families"], key=lambda r: r["style_change"]["estimate"])
        s.add("best_family", f"{fs}: family with the largest change at {P:g}% (descriptive; simultaneous CI vs static)",
              f"{top['family']}: {_ci(top['minus_static_simultaneous'])}")
    s.add("bleed_significant_increases", "12-lens bleed: lens increases significant after Holm (condition, lens)",
          [f"{h['condition'].split('|')[0]}|{h['condition'].split('|')[1]}:{h['lens']}" for h in bleed["significant_increases"]])
    s.add("eval_prompts", "report-split prompts per condition", a["baseline"][fs]["style_score"]["n"])
    s.add_checks(prereg)
    return s.to_result()


# ------------------------------------------------------------------------------------------------ figure


def _err(cs: list[dict]) -> np.ndarray:
    return np.array([[c["estimate"] - c["low"], c["high"] - c["estimate"]] if c["low"] is not None else [0, 0]
                     for c in cs]).T


def _figure(ctx, a: dict, bleed: dict, cfg) -> None:
    fig, ax = subplots(1, 4, figsize=(24, 5))
    sw = a["strength_sweep"]
    x = [r["pct"] for r in sw]
    for k, lab in (("static_change_simultaneous", "style direction"), ("random_change_simultaneous", "random, same norm")):
        cs = [r[k] for r in sw]
        ax[0].errorbar(x, [c["estimate"] for c in cs], yerr=_err(cs), fmt="o-", capsize=3, label=lab)
    ax[0].axhline(0, color="grey", lw=0.8)
    ax[0].set(xlabel="% of residual norm", ylabel="style-score change (simultaneous 95% CI)",
              title=f"{cfg.family_style}: strength sweep, report split")
    ax[0].legend(fontsize=7)
    ax0b = ax[0].twinx()
    ax0b.plot(x, [r["static"]["fluency_drop_nats"] for r in sw], "r:", label="fluency drop")
    ax0b.axhline(cfg.collapse_nats, color="red", lw=0.6, ls="--")
    ax0b.set_ylabel("fluency drop (nats/token)", color="red")
    fam = a["families"]
    cs = [r["minus_static_simultaneous"] for r in fam]
    ax[1].bar(range(len(fam)), [c["estimate"] for c in cs], yerr=_err(cs), capsize=3)
    ax[1].set_xticks(range(len(fam)), [r["family"] for r in fam], rotation=60, ha="right", fontsize=8)
    ax[1].axhline(0, color="grey", lw=0.8)
    ax[1].set(ylabel="minus static (simultaneous 95% CI)", title=f"families, kernels, processors at {cfg.primary_pct:g}%")
    labels = ["unit a=0.2", "+static", "-static", "prompt +", "prompt -"]
    rows = [a["unit_alpha"], a["parity"]["plus"], a["parity"]["minus"], a["bimodal_injection"]["prompt_pos"],
            a["bimodal_injection"]["prompt_neg"]]
    cs = [r["style_change"] for r in rows]
    ax[2].bar(labels, [c["estimate"] for c in cs], yerr=_err(cs), capsize=3, color=["grey", "C0", "C1", "C2", "C3"])
    ax[2].axhline(0, color="grey", lw=0.8)
    ax[2].set(ylabel="style-score change vs unsteered (95% CI)", title="unit alpha, parity, prompt modes")
    conds = [r for r in bleed["conditions"] if "minus_baseline" in r]
    lenses = bleed["lenses"]
    m = np.array([[r["minus_baseline"][n]["estimate"] for n in lenses] for r in conds])
    lim = float(np.abs(m).max()) or 1.0
    im = ax[3].imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax[3].set_xticks(range(len(lenses)), lenses, rotation=60, ha="right", fontsize=7)
    ax[3].set_yticks(range(len(conds)), [f"{r['style']} {r['family']}" for r in conds], fontsize=7)
    ax[3].set_title("12-lens bleed: steered - unsteered (hits / 100 words)")
    fig.colorbar(im, ax=ax[3])
    fig.tight_layout()
    ctx.save_figure("steering_sweep", fig)

"""Validation: five sanity checks that must pass before any other result is trusted (the cross-model plan, Phase 0).

Every criterion is pre-registered in mlxinterp/data/preregistration.toml ([checks.validation.*]) with its
threshold and the reason for it; the result reports each as PASS/FAIL with its numbers (`prereg`), and a
check passes only when all its pre-registered criteria do.

(a) steering: alpha 0 is bit-identical, a random vector of 50 % of the residual norm moves the next-token
    distribution by KL > 0.1 nats at every layer tried, and different layers act differently;
(b) logit lens: on fact prompts where the model's own top-1 is the target, the final-layer lens gives the
    same top-1, and the target's rank falls with depth (Spearman <= -0.5);
(c) refusal direction (fixed layer at 60 % depth, the cross-model plan): finite and non-zero; split-half
    consistent (2.5th percentile of random half splits >= 0.5, and above a label-flip null); the score separates
    harmful from harmless held-out prompts (a base model that does not separate them FAILS here); adding
    the unit direction at 8 % of the residual norm (the qwen3-steering source's operating point) raises the
    score more than a random unit direction at the same strength;
(d) tokenization: BOS exactly once where needed, chat template, round trip;
(e) numerics: no NaN/inf at any hook; 4-bit (MLX affine, group 64) vs the model as loaded: top-1 agreement
    at the last position (Wilson, low end >= 0.9) and KL at the last position and over all positions.

Sizes: the refusal direction uses all 112 English pairs (56 for the direction, 56 held out for the
scores: >= 30 per effect); the lens and quantization checks use the 8 fact prompts of `LENS_PROMPTS` plus
4 numerics prompts (12 prompts; positions are nested in prompts, so all-position rates get cluster
intervals). `--quick` uses 8 + 8 pairs.

Why validation's 4-bit KL and the quantization study's differed (0.46 vs 1.37 nats in the old runs): the
old check averaged KL over *every position* of 4 prompts (BOS and easy early positions included), the
quantization study measures the *last position* of two-hop prompts. Both now report what they measure:
`kl_last` (last position, comparable to the quantization study's `kl`) and `kl_all_positions`.
"""
from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from mlx_lm.utils import quantize_model
from scipy import stats as sps

from mlxinterp.suite.summary import Summary
from mlxinterp.tasks import data
from mlxinterp.analysis import directions, scoring
from mlxinterp.analysis.lens import logit_lens, target_id
from mlxinterp.analysis.stats import cluster_mean_ci, format_interval, kl_divergence, mean_ci, paired_diff_ci, proportion_ci
from mlxinterp.analysis.plotting import subplots
from mlxinterp.suite import experiment, preregistration
from mlxinterp.core import names as H
from mlxinterp.core.tokenization import encode
from mlxinterp.core.hooks import HookedModel
from mlxinterp.core.loading import LoadedModel
from mlxinterp.core.quantize import dequantize

CHECKS = ("steering", "logit_lens", "refusal_direction", "tokenization", "numerics")
# Pre-registered criteria of each check (mlxinterp/data/preregistration.toml [checks.validation.<name>]).
CRITERIA = {"steering": ("steering_alpha0_identical", "steering_changes_output", "steering_layers_differ"),
            "logit_lens": ("lens_final_top1", "lens_rank_improves"),
            "refusal_direction": ("refusal_finite_nonzero", "refusal_split_half", "refusal_split_half_above_null",
                                  "refusal_separates", "refusal_steering_raises"),
            "tokenization": ("tokenization",),
            "numerics": ("numerics_finite", "quantized_top1_agreement")}
LENS_PROMPTS = (("The capital of France is", " Paris"), ("The capital of Japan is", " Tokyo"),
                ("The capital of Italy is", " Rome"), ("The capital of Germany is", " Berlin"),
                ("The Eiffel Tower is located in the city of", " Paris"),
                ("The largest planet in the solar system is", " Jupiter"),
                ("Water is made of hydrogen and", " oxygen"),
                ("The first president of the United States was George", " Washington"))
NUMERICS_PROMPTS = ("The quick brown fox jumps over the", "def add(a, b):\n    return",
                    "巴黎是法国的首都。", "Der Eiffelturm steht in Paris, und")


@dataclass
class ValidationConfig:
    n: int = 56  # refusal pairs for the direction (items 0..n-1); the next n_heldout are held out (all 112)
    n_heldout: int = 56  # held-out pairs for the separation and steering scores (>= 30 independent units)
    seed: int = 0
    lens_top_k: int = 10
    # Refusal steering strength as % of the mean residual norm at the layer: 8 % is the qwen3-steering
    # source's operating point, fixed from the source before any run.
    steer_pct: float = 8.0
    random_steer_pct: float = 50.0  # random vector norm for the steering sanity check, % of the residual norm
    n_null: int = 200  # label-flip draws for the split-half null
    quant_bits: int = 4  # 0 disables the 4-bit comparison
    quant_group_size: int = 64  # as the quantization study and '@4bit' loading


QUICK = {"n": 8, "n_heldout": 8, "n_null": 50}


@experiment("validation", ValidationConfig, quick=QUICK)
def validation(hm: HookedModel, cfg: ValidationConfig, ctx) -> dict:
    """Five sanity checks against pre-registered criteria: steering, logit lens, refusal direction, tokenization, numerics."""
    runners = {"steering": _steering, "logit_lens": _lens, "refusal_direction": _refusal,
               "tokenization": _tokenization, "numerics": _numerics}
    results = ctx.map("checks", list(CHECKS), lambda name: runners[name](hm, cfg, ctx))
    checks = dict(zip(CHECKS, results))
    prereg = preregistration.load()
    verdicts = {}
    for name, c in checks.items():
        verdicts[name] = {k: prereg.check("validation", k, _metric(c, k)) for k in CRITERIA[name]}
        c["pass"] = all(v["verdict"] == "PASS" for v in verdicts[name].values())
    _figure(checks, ctx)
    out = {"checks": checks, "prereg": {"sha256": prereg.sha256, "primary": prereg.primary("validation"),
                                        "checks": {k: v for d in verdicts.values() for k, v in d.items()}},
           "passed": sum(c["pass"] for c in checks.values()), "total": len(checks),
           "all_pass": all(c["pass"] for c in checks.values())}
    return {**_summary(out), **out}


def _metric(c: dict, criterion: str):
    """The value a pre-registered criterion reads: the metric path after 'checks.<check>.' in the toml."""
    key = {"steering_alpha0_identical": "alpha0_max_abs_diff", "steering_changes_output": "min_kl_over_layers",
           "steering_layers_differ": "distinct_kl_share", "lens_final_top1": "final_top1_matches",
           "lens_rank_improves": "spearman_layer_vs_rank", "refusal_finite_nonzero": "finite_nonzero",
           "refusal_split_half": "split_half_cosine", "refusal_split_half_above_null": "split_half_minus_null",
           "refusal_separates": "baseline_harmful_minus_harmless", "refusal_steering_raises": "steer_minus_random",
           "tokenization": "ok", "numerics_finite": "finite_everywhere",
           "quantized_top1_agreement": "quantized.top1_agreement_last"}[criterion]
    v = c
    for part in key.split("."):
        v = (v or {}).get(part) if isinstance(v, dict) else None
    return float(v) if isinstance(v, (bool, int, float)) else v


def _summary(out: dict) -> dict:
    """Key numbers for the report, first."""
    checks = out["checks"]
    ref, lens = checks["refusal_direction"], checks["logit_lens"]
    q = checks["numerics"].get("quantized") or {}
    s = Summary()
    for name, c in checks.items():
        s.add(f"{name}.pass", f"{name} pass (all pre-registered criteria)", c["pass"])
    for k, v in out["prereg"]["checks"].items():
        s.add(f"prereg.{k}", f"{k}: {v['op']} {v['threshold']:g} ({v['bound']})", v["verdict"])
    s.add("lens_final_top1_matches", "lens: final-layer top-1 = target where the model's top-1 is (eligible prompts)",
          format_interval(lens["final_top1_matches"], ".2f", counts=True))
    s.add("refusal_split_half_cosine", "refusal dir: split-half cosine [95% CI]; label-flip null 95th pct",
          f"{_ci(ref['split_half_cosine'])}; {ref['split_half_null95']:+.3f}")
    s.add("refusal_harmful_minus_harmless", "refusal score, harmful - harmless (no steering) [95% CI]",
          _ci(ref["baseline_harmful_minus_harmless"]))
    s.add("refusal_steer_minus_random", f"refusal score: direction - random at {ref['steer_pct']:g} % [95% CI]",
          _ci(ref["steer_minus_random"]))
    if "top1_agreement_last" in q:
        s.add("quantized_top1_agreement", "4-bit vs float top-1 agreement, last position [95% CI]",
              format_interval(q["top1_agreement_last"], ".3f", counts=True))
        s.add("quantized_kl_last", "4-bit vs float KL, last position (nats) [95% CI]", _ci(q["kl_last"]))
        s.add("quantized_kl_all_positions", "4-bit vs float KL, all positions (nats) [95% cluster CI]",
              _ci(q["kl_all_positions"]))
    return s.to_result()


def _ci(c: dict) -> str:
    return format_interval(c, "+.3f")


def _last_logits(hm: HookedModel, prompt: str, taps=None) -> np.ndarray:
    with hm.hooks(taps or {}):
        out = hm(prompt)
    return np.array(out[0, -1].astype(mx.float32))


def _steering(hm: HookedModel, cfg, ctx) -> dict:
    prompt = LENS_PROMPTS[0][0]
    base = _last_logits(hm, prompt)
    _, cache = hm.run_with_cache(prompt, names="hook_resid_post")
    rng = ctx.rng_for("steering")
    v = rng.normal(size=hm.info.d_model).astype(np.float32)
    v /= np.linalg.norm(v)
    mid = hm.info.n_layers // 2
    layers = sorted({max(1, hm.info.n_layers // 4), mid, hm.info.n_layers - 2})
    resid = {l: float(np.linalg.norm(np.array(cache[H.resid_post(l)][0, -1]))) for l in layers}
    zero = _last_logits(hm, prompt, directions.steering_taps(v, 0.0, [mid]))
    kls, top1 = {}, {}
    for l in layers:
        alpha = cfg.random_steer_pct / 100 * resid[l]
        steered = _last_logits(hm, prompt, directions.steering_taps(v, alpha, [l]))
        kls[l] = float(kl_divergence(base, steered))
        top1[l] = int(steered.argmax())
    return {"alpha0_max_abs_diff": float(np.abs(zero - base).max()), "min_kl_over_layers": min(kls.values()),
            "distinct_kl_share": len(set(np.round(list(kls.values()), 4))) / len(layers),
            "kl_by_layer": {str(l): kls[l] for l in layers}, "top1_by_layer": {str(l): top1[l] for l in layers},
            "base_top1": int(base.argmax()), "perturbation_pct_of_resid": cfg.random_steer_pct}


def _lens(hm: HookedModel, cfg, ctx) -> dict:
    rows = []
    for prompt, target in LENS_PROMPTS:
        res = logit_lens(hm, prompt, targets=[target], top_k=cfg.lens_top_k)
        ranks = [L.target_rank for L in res.layers]
        tid = target_id(hm, target)
        own = int(_last_logits(hm, prompt).argmax())
        rows.append({"prompt": prompt, "target": target, "model_top1_is_target": own == tid,
                     "lens_final_top1_is_target": res.layers[-1].top_tokens[0]["id"] == tid,
                     "lens_final_top1_equals_model_top1": res.layers[-1].top_tokens[0]["id"] == own,
                     "ranks": ranks, "spearman_layer_vs_rank": float(sps.spearmanr(np.arange(len(ranks)), ranks).statistic),
                     "top1_by_layer": [L.top_tokens[0]["token"] for L in res.layers]})
    ok = [r for r in rows if r["model_top1_is_target"]]
    rhos = [r["spearman_layer_vs_rank"] for r in ok if np.isfinite(r["spearman_layer_vs_rank"])]
    return {"final_top1_matches": proportion_ci(sum(r["lens_final_top1_is_target"] for r in ok), len(ok)),
            "spearman_layer_vs_rank": float(np.mean(rhos)) if rhos else None,
            "eligible_prompts": len(ok), "prompts": len(rows),
            "final_top1_equals_model_top1_all_prompts": proportion_ci(
                sum(r["lens_final_top1_equals_model_top1"] for r in rows), len(rows)),
            "by_prompt": rows, "top_k": cfg.lens_top_k}


def _refusal(hm: HookedModel, cfg, ctx) -> dict:
    harmful = data.prompts("refusal/harmful_en.json")
    harmless = data.prompts("refusal/harmless_en.json")
    if min(cfg.n, cfg.n_heldout) < 4 or cfg.n + cfg.n_heldout > len(harmful):
        raise ValueError(f"validation: n={cfg.n} + n_heldout={cfg.n_heldout} must be >= 4 each and fit {len(harmful)} pairs")
    fmt = lambda ps: [scoring.instruction(hm, p)[0] for p in ps]  # noqa: E731
    chat = hm.info.has_chat_template
    layer = int(round(0.6 * (hm.info.n_layers - 1)))  # the cross-model plan: refusal localises at 60-65 % depth
    names = [H.name(l, "hook_resid_post") for l in range(hm.info.n_layers)]
    ah = directions.collect(hm, fmt(harmful[: cfg.n]), names, "last", chat)
    al = directions.collect(hm, fmt(harmless[: cfg.n]), names, "last", chat)
    diffs = {l: (ah[hm.point(n).name] - al[hm.point(n).name]).astype(np.float64) for l, n in enumerate(names)}
    d = directions.diff_of_means(ah[hm.point(names[layer]).name], al[hm.point(names[layer]).name], names[layer],
                                 np.random.default_rng(cfg.seed))
    norms = [float(np.linalg.norm(diffs[l].mean(0))) for l in range(hm.info.n_layers)]
    finite = all(np.isfinite(x) for x in norms) and all(x > 0 for x in norms)
    split = directions.split_half_ci(diffs[layer], seed=cfg.seed)
    null = directions.sign_flip_null(diffs[layer], None, cfg.n_null, seed=cfg.seed)
    held = slice(cfg.n, cfg.n + cfg.n_heldout)
    held_harmful, held_harmless = harmful[held], harmless[held]
    base = scoring.refusal_score(hm, held_harmless)
    base_harmful = scoring.refusal_score(hm, held_harmful)
    rand = ctx.rng_for("refusal_random").normal(size=hm.info.d_model)
    rand = (rand / np.linalg.norm(rand)).astype(np.float32)
    alpha = cfg.steer_pct / 100 * d.resid_norm
    steered = scoring.refusal_score(hm, held_harmless, directions.steering_taps(d.unit(), alpha, [layer]))
    steered_rand = scoring.refusal_score(hm, held_harmless, directions.steering_taps(rand, alpha, [layer]))
    return {"layer": layer, "depth_pct": 100 * layer / (hm.info.n_layers - 1), "finite_nonzero": finite,
            "norm": d.norm, "relative_norm": d.relative_norm, "split_half_cosine": split,
            "split_half_null95": null,
            "split_half_minus_null": {**split.to_dict(), "estimate": split.estimate - null,
                                      "low": None if split.low is None else split.low - null,
                                      "high": None if split.high is None else split.high - null,
                                      "method": split.method + " minus the label-flip null's 95th percentile"},
            "norm_by_layer": norms, "relative_norm_by_layer": [norms[l] / float(np.linalg.norm(np.concatenate(
                [ah[hm.point(n).name], al[hm.point(n).name]]), axis=1).mean()) for l, n in enumerate(names)],
            "split_half_by_layer": [directions.split_half_cosine(diffs[l], np.zeros_like(diffs[l]),
                                                                 np.random.default_rng(cfg.seed))
                                    for l in range(hm.info.n_layers)],
            "n_per_side": cfg.n, "held_out_per_side": cfg.n_heldout,
            "split_items": {"direction": list(range(cfg.n)), "held_out": list(range(cfg.n, cfg.n + cfg.n_heldout))},
            "baseline_harmful_minus_harmless": paired_diff_ci(base_harmful, base, seed=cfg.seed),
            "baseline_refusal_score_harmless": mean_ci(base, seed=cfg.seed),
            "steer_pct": cfg.steer_pct,
            "steer_effect": paired_diff_ci(steered, base, seed=cfg.seed),
            "random_steer_effect": paired_diff_ci(steered_rand, base, seed=cfg.seed),
            "steer_minus_random": paired_diff_ci(steered, steered_rand, seed=cfg.seed),
            "items": [{"id": cfg.n + i, "harmless": float(b), "harmful": float(h), "steered": float(s_),
                       "steered_random": float(r)} for i, (b, h, s_, r) in enumerate(zip(base, base_harmful, steered,
                                                                                          steered_rand))],
            "scoring": "refusal score = mean per-token log-prob of a refusal phrase minus a compliance phrase, "
                       "teacher-forced after the prompt (mlxinterp.analysis.scoring); steering adds the unit direction "
                       "(or a random unit direction) x (steer_pct/100 x mean residual norm) at every position of the "
                       "held-out harmless prompts; direction = difference of means at the last prompt token",
            "base_model_note": None if chat else "base model (no chat template): it has no refusal behaviour; "
            "baseline_harmful_minus_harmless says whether the score even separates harmful from harmless prompts, "
            "and the check fails when it does not"}


def _tokenization(hm: HookedModel, cfg, ctx) -> dict:
    info, tok = hm.info, hm.tokenizer
    ids = encode(tok, info, "Hello world")
    bos = info.bos_token_id
    bos_ok = (ids.count(bos) == 1 and ids[0] == bos) if info.needs_bos else (bos is None or bos not in ids[:1])
    samples = ["Hello world", "Der Eiffelturm steht in Paris.", "巴黎是法国的首都。", "naïve café – 3.14 🙂"]
    trips = {s: tok.decode(tok.encode(s, add_special_tokens=False)) == s for s in samples}
    chat = None
    if info.has_chat_template:
        cids = encode(tok, info, "What is 2+2?", chat=True)
        text = tok.decode(cids)
        chat = {"contains_prompt": "What is 2+2?" in text, "bos_once": (cids.count(bos) == 1) if bos is not None else True}
    chat_ok = chat is None or all(chat.values())
    return {"ok": bool(bos_ok and all(trips.values()) and chat_ok), "needs_bos": info.needs_bos,
            "bos_exactly_once": bos_ok, "round_trip": trips, "has_chat_template": info.has_chat_template,
            "chat_template": chat}


def _numerics(hm: HookedModel, cfg, ctx) -> dict:
    prompts = [p for p, _ in LENS_PROMPTS] + list(NUMERICS_PROMPTS)
    bad = []
    for p in prompts:
        _, cache = hm.run_with_cache(p)
        for name in cache.keys():
            a = cache[name]
            if not bool(mx.all(mx.isfinite(a.astype(mx.float32))).item()):
                bad.append(f"{p[:20]!r}:{name}")
    out = {"finite_everywhere": not bad, "non_finite_at": bad[:20], "prompts": len(prompts), "dtype": hm.info.dtype}
    if cfg.quant_bits:
        out["quantized"] = _quant_agreement(hm, prompts, cfg.quant_bits, cfg.quant_group_size, cfg.seed)
    return out


def _quant_agreement(hm: HookedModel, prompts, bits: int, group_size: int, seed: int) -> dict:
    """Top-1 agreement and KL(model as loaded || MLX-quantized copy): at the last position of each prompt (one
    unit per prompt, as the quantization study measures) and over every position (nested in prompts)."""
    if hm.info.quantization:
        return {"skipped": "model is already quantized; compare against a float load instead"}
    ref = [np.array(hm(p)[0].astype(mx.float32)) for p in prompts]
    hm.remove_hooks()
    try:
        qmodel = copy.deepcopy(hm.model)
    finally:
        hm.install_hooks()
    with contextlib.redirect_stdout(io.StringIO()):  # quantize_model prints "[INFO] ... bits per weight"
        qmodel, _ = quantize_model(qmodel, {}, group_size=group_size, bits=bits)
    # On a CPU the copy computes with its quantized weights expanded to float, as the quantization study and
    # '@4bit' loading do there: the same weights, ~7x faster than MLX's CPU quantized kernels.
    compute = "dequantized" if mx.default_device() == mx.cpu else "native"
    if compute == "dequantized":
        qmodel = dequantize(qmodel)
    qhm = HookedModel(LoadedModel(qmodel, hm.tokenizer, hm.info))
    got = [np.array(qhm(p)[0].astype(mx.float32)) for p in prompts]
    agree = [r.argmax(-1) == g.argmax(-1) for r, g in zip(ref, got)]
    kl = [kl_divergence(r, g) for r, g in zip(ref, got)]
    prompt_of = np.concatenate([np.full(len(a), i) for i, a in enumerate(agree)])
    last_agree = [bool(a[-1]) for a in agree]
    return {"bits": bits, "group_size": group_size, "compute": compute, "reference_dtype": hm.info.dtype,
            "prompts": len(prompts),
            "positions": int(prompt_of.size),
            "top1_agreement_last": proportion_ci(sum(last_agree), len(last_agree)),
            "kl_last": mean_ci([float(k[-1]) for k in kl], seed=seed),
            "top1_agreement_all_positions": cluster_mean_ci(np.concatenate(agree).astype(float), prompt_of, seed=seed),
            "kl_all_positions": cluster_mean_ci(np.concatenate(kl), prompt_of, seed=seed),
            "per_prompt": [{"prompt": p, "top1_agree_last": la, "kl_last": float(k[-1]), "kl_mean": float(k.mean()),
                            "positions": int(len(k))} for p, la, k in zip(prompts, last_agree, kl)],
            "measures": "KL(model as loaded || 4-bit copy) in nats; *_last: the last position of each prompt "
                        "(the quantization study's definition); *_all_positions: every position, BOS included, "
                        "intervals clustered by prompt"}


def _figure(checks: dict, ctx) -> None:
    def title(ax, name: str, text: str) -> None:
        ok = checks[name]["pass"]
        ax.set_title(f"{text}: {'PASS' if ok else 'FAIL'}", color="tab:green" if ok else "tab:red", fontsize=10)

    fig, axes = subplots(1, 4, figsize=(17, 3.8))
    st = checks["steering"]
    layers = list(st["kl_by_layer"])
    axes[0].bar(layers, [st["kl_by_layer"][l] for l in layers])
    axes[0].set(xlabel="layer steered (random vector)", ylabel="KL(base || steered), nats")
    title(axes[0], "steering", "(a) steering sanity")
    for r in checks["logit_lens"]["by_prompt"]:
        axes[1].semilogy(range(len(r["ranks"])), np.array(r["ranks"]) + 1, "o-" if r["model_top1_is_target"] else ":",
                         ms=3, lw=1 if r["model_top1_is_target"] else 0.6)
    axes[1].set(xlabel="layer", ylabel="rank of target + 1 (log); solid: eligible prompts")
    title(axes[1], "logit_lens", "(b) lens: target rank by layer")
    ref = checks["refusal_direction"]
    axes[2].plot(ref["relative_norm_by_layer"], "o-", label="norm / residual norm")
    axes[2].plot(ref["split_half_by_layer"], "s--", label="split-half cosine")
    axes[2].axhline(ref["split_half_null95"], color="tab:orange", lw=0.6, ls=":", label="label-flip null, 95th pct")
    axes[2].axvline(ref["layer"], color="grey", lw=0.8)
    axes[2].set(xlabel="layer", ylim=(-1, 1.05))
    axes[2].legend(fontsize=7)
    title(axes[2], "refusal_direction", "(c) refusal direction")
    keys = ["baseline_harmful_minus_harmless", "steer_effect", "random_steer_effect", "steer_minus_random"]
    est = np.array([ref[k]["estimate"] for k in keys])
    err = np.array([[ref[k]["estimate"] - ref[k]["low"], ref[k]["high"] - ref[k]["estimate"]] for k in keys]).T
    axes[3].errorbar(range(len(keys)), est, yerr=err, fmt="o", capsize=4)
    axes[3].set_xticks(range(len(keys)), ["harmful-\nharmless", "direction", "random", "direction-\nrandom"], fontsize=8)
    axes[3].axhline(0, color="grey", lw=0.8)
    axes[3].set(ylabel=f"refusal score change at {ref['steer_pct']:g} % (95 % CI)")
    title(axes[3], "refusal_direction", f"(c) held-out scores, layer {ref['layer']}")
    fig.tight_layout()
    ctx.save_figure("validation", fig)

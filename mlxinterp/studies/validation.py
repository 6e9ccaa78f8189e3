"""Validation: five sanity checks that must pass before any other result is trusted (the cross-model plan, Phase 0).

(a) steering: alpha 0 is bit-identical, a large alpha changes the output,
    different layers change it differently;
(b) logit lens: " Paris" reaches the final layers' top-k for "The capital of
    France is", early layers predict something else, rank improves with depth;
(c) refusal direction: finite, non-zero, split-half consistent, and steering
    along it raises the refusal score (with a bootstrap CI);
(d) tokenization: BOS exactly once where needed, chat template, round trip;
(e) numerics: no NaN/inf at any hook in float32; 4-bit vs float agreement.
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
from mlxinterp.analysis.lens import logit_lens
from mlxinterp.analysis.stats import bootstrap_ci, format_interval, kl_divergence
from mlxinterp.analysis.plotting import subplots
from mlxinterp.suite import experiment
from mlxinterp.core import names as H
from mlxinterp.core.tokenization import encode
from mlxinterp.core.hooks import HookedModel
from mlxinterp.core.loading import LoadedModel

CHECKS = ("steering", "logit_lens", "refusal_direction", "tokenization", "numerics")


@dataclass
class ValidationConfig:
    n: int = 24  # prompts per side for the refusal direction
    seed: int = 0
    lens_prompt: str = "The capital of France is"
    lens_target: str = " Paris"
    lens_top_k: int = 10
    # Refusal steering strength as % of the mean residual norm at the layer. 8 % is
    # qwen3-steering's operating point (decides pass/fail); 4 and 16 % are reported beside it.
    steer_pcts: tuple = (4.0, 8.0, 16.0)
    steer_pass_pct: float = 8.0
    random_steer_pct: float = 50.0  # random vector norm, % of the residual norm
    quant_bits: int = 4  # 0 disables the 4-bit comparison
    quant_prompts: int = 4


@experiment("validation", ValidationConfig)
def validation(hm: HookedModel, cfg: ValidationConfig, ctx) -> dict:
    """Five sanity checks: steering, logit lens, refusal direction, tokenization, numerics."""
    runners = {"steering": _steering, "logit_lens": _lens, "refusal_direction": _refusal,
               "tokenization": _tokenization, "numerics": _numerics}
    results = ctx.map("checks", list(CHECKS), lambda name: runners[name](hm, cfg, ctx))
    checks = dict(zip(CHECKS, results))
    _figure(checks, ctx)
    return {**_summary(checks), "checks": checks, "passed": sum(c["pass"] for c in checks.values()),
            "total": len(checks), "all_pass": all(c["pass"] for c in checks.values())}


def _summary(checks: dict) -> dict:
    """Key numbers for the report, first."""
    ref = checks["refusal_direction"]
    d = ref["steering_delta_by_pct_of_resid"][str(ref["decisive_pct"])]
    b = ref["baseline_harmful_minus_harmless"]
    q = checks["numerics"].get("quantized") or {}
    s = Summary()
    for name, c in checks.items():
        s.add(f"{name}.pass", f"{name} pass", c["pass"])
    s.add("lens_final_rank", "lens: final-layer rank of target", checks["logit_lens"]["final_rank"])
    s.add("refusal_split_half_cosine", "refusal dir: split-half cosine", round(ref["split_half_cosine"], 3))
    s.add("refusal_score_change", f"refusal score change at {ref['decisive_pct']}% [95% CI]", _ci(d))
    s.add("refusal_harmful_minus_harmless", "refusal score, harmful - harmless (no steering)", _ci(b))
    if "top1_agreement" in q:
        s.add("quantized_top1_agreement", "4-bit vs float top-1 agreement", round(q["top1_agreement"], 3))
        s.add("quantized_kl", "4-bit vs float KL (nats)", _ci(q["kl_ci"]))
    return s.to_result()


def _ci(c: dict) -> str:
    return format_interval(c, "+.3f")


def _last_logits(hm: HookedModel, prompt: str, taps=None) -> np.ndarray:
    with hm.hooks(taps or {}):
        out = hm(prompt)
    return np.array(out[0, -1].astype(mx.float32))


def _steering(hm: HookedModel, cfg, ctx) -> dict:
    prompt = cfg.lens_prompt
    base = _last_logits(hm, prompt)
    _, cache = hm.run_with_cache(prompt, names="hook_resid_post")
    rng = ctx.rng_for("steering")
    v = rng.normal(size=hm.info.d_model).astype(np.float32)
    v /= np.linalg.norm(v)
    mid = hm.info.n_layers // 2
    layers = sorted({max(1, hm.info.n_layers // 4), mid, hm.info.n_layers - 2})
    resid = {l: float(np.linalg.norm(np.array(cache[H.resid_post(l)][0, -1]))) for l in layers}
    zero = _last_logits(hm, prompt, directions.steering_taps(v, 0.0, [mid]))
    identical = bool(np.array_equal(zero, base))
    kls, top1 = {}, {}
    for l in layers:
        alpha = cfg.random_steer_pct / 100 * resid[l]
        steered = _last_logits(hm, prompt, directions.steering_taps(v, alpha, [l]))
        kls[l] = float(kl_divergence(base, steered))
        top1[l] = int(steered.argmax())
    changed = any(k > 0.1 for k in kls.values())
    differ = len(set(np.round(list(kls.values()), 4))) == len(layers)
    return {"pass": identical and changed and differ, "alpha0_bit_identical": identical,
            "large_alpha_changes_output": changed, "layers_differ": differ,
            "kl_by_layer": {str(l): kls[l] for l in layers}, "top1_by_layer": {str(l): top1[l] for l in layers},
            "base_top1": int(base.argmax()), "perturbation_pct_of_resid": cfg.random_steer_pct}


def _lens(hm: HookedModel, cfg, ctx) -> dict:
    res = logit_lens(hm, cfg.lens_prompt, targets=[cfg.lens_target], top_k=cfg.lens_top_k)
    ranks = [L.target_rank for L in res.layers]
    n = len(ranks)
    final_in_topk = ranks[-1] < cfg.lens_top_k
    early = ranks[: max(1, n // 3)]
    generic_early = all(r > 0 for r in early)
    rho = float(sps.spearmanr(np.arange(n), ranks).statistic)
    improving = ranks[-1] < float(np.median(ranks[: n // 2])) and rho < 0
    return {"pass": bool(final_in_topk and generic_early and improving), "final_rank": ranks[-1],
            "final_in_top_k": final_in_topk, "top_k": cfg.lens_top_k, "early_layers_not_target": generic_early,
            "rank_improves_with_depth": bool(improving), "spearman_layer_vs_rank": rho, "ranks": ranks,
            "top1_by_layer": [L.top_tokens[0]["token"] for L in res.layers],
            "entropy_by_layer": [round(L.entropy, 4) for L in res.layers]}


def _refusal(hm: HookedModel, cfg, ctx) -> dict:
    harmful = data.prompts("refusal/harmful_en.json")
    harmless = data.prompts("refusal/harmless_en.json")
    fmt = lambda ps: [scoring.instruction(hm, p)[0] for p in ps]  # noqa: E731
    chat = hm.info.has_chat_template
    dirs = directions.extract(hm, fmt(harmful[: cfg.n]), fmt(harmless[: cfg.n]), position="last", chat=chat, seed=cfg.seed)
    layer = int(round(0.6 * (hm.info.n_layers - 1)))  # the cross-model plan: refusal localises at 60-65 % depth
    d = dirs[layer]
    finite = all(np.isfinite(x.norm) for x in dirs.values())
    nonzero = all(x.norm > 0 for x in dirs.values())
    held_harmful, held_harmless = harmful[cfg.n : cfg.n + 16], harmless[cfg.n : cfg.n + 16]
    base = scoring.refusal_score(hm, held_harmless)
    base_harmful = scoring.refusal_score(hm, held_harmful)
    sweep = {}
    for pct in cfg.steer_pcts:
        taps = directions.steering_taps(d.unit(), pct / 100 * d.resid_norm, [layer])
        sweep[str(pct)] = bootstrap_ci(scoring.refusal_score(hm, held_harmless, taps) - base, seed=cfg.seed)
    decisive = sweep[str(cfg.steer_pass_pct)]
    raises = decisive["low"] is not None and decisive["low"] > 0
    consistent = d.split_half_cosine is not None and d.split_half_cosine > 0
    return {"pass": bool(finite and nonzero and consistent and raises), "layer": layer,
            "depth_pct": 100 * layer / (hm.info.n_layers - 1), "finite": finite, "nonzero": nonzero,
            "norm": d.norm, "relative_norm": d.relative_norm, "split_half_cosine": d.split_half_cosine,
            "norm_by_layer": [dirs[l].norm for l in sorted(dirs)],
            "relative_norm_by_layer": [dirs[l].relative_norm for l in sorted(dirs)],
            "split_half_by_layer": [dirs[l].split_half_cosine for l in sorted(dirs)],
            "n_per_side": cfg.n, "held_out_per_side": len(held_harmless),
            "baseline_harmful_minus_harmless": bootstrap_ci(base_harmful - base, seed=cfg.seed),
            "baseline_refusal_score_harmless": float(base.mean()),
            "steering_delta_by_pct_of_resid": sweep, "decisive_pct": cfg.steer_pass_pct,
            "steering_raises_refusal_score": raises,
            "scoring": "refusal score = mean per-token log-prob of a refusal phrase minus a compliance phrase, "
                       "teacher-forced after the prompt (mlxinterp.analysis.scoring); steering adds the unit direction x "
                       "(pct/100 x mean residual norm) at every position of held-out harmless prompts",
            "protocol_note": "the decisive strength (8 % of the residual norm, qwen3-steering's operating point) was "
            "fixed after a first run that steered with 8x the direction's norm (~27 % of the residual norm on "
            "Gemma 3 270M), which lowered the score: -0.54 [-0.63, -0.45]; 16 % is reported beside it",
            "base_model_note": None if chat else "base model (no chat template): it has no refusal behaviour; "
            "baseline_harmful_minus_harmless says whether the score even separates harmful from harmless prompts"}


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
    return {"pass": bool(bos_ok and all(trips.values()) and chat_ok), "needs_bos": info.needs_bos,
            "bos_exactly_once": bos_ok, "round_trip": trips, "has_chat_template": info.has_chat_template,
            "chat_template": chat}


def _numerics(hm: HookedModel, cfg, ctx) -> dict:
    prompts = [cfg.lens_prompt, "The Eiffel Tower is located in the city of", "def add(a, b):\n    return",
               "巴黎是法国的首都。"]
    bad = []
    for p in prompts:
        _, cache = hm.run_with_cache(p)
        for name in cache.keys():
            a = cache[name]
            if not bool(mx.all(mx.isfinite(a.astype(mx.float32))).item()):
                bad.append(f"{p[:20]!r}:{name}")
    out = {"finite_everywhere": not bad, "non_finite_at": bad[:20], "prompts": len(prompts), "dtype": hm.info.dtype}
    if cfg.quant_bits:
        out["quantized"] = _quant_agreement(hm, prompts[: cfg.quant_prompts], cfg.quant_bits)
    q = out.get("quantized") or {}
    out["pass"] = bool(not bad and (not q or q.get("top1_agreement", 0) >= 0.5))
    return out


def _quant_agreement(hm: HookedModel, prompts, bits: int) -> dict:
    """Next-token top-1 agreement and KL between this model and its MLX-quantized copy, all positions."""
    if hm.info.quantization:
        return {"skipped": "model is already quantized; compare against a float load instead"}
    ref = [np.array(hm(p)[0].astype(mx.float32)) for p in prompts]
    hm.remove_hooks()
    try:
        qmodel = copy.deepcopy(hm.model)
    finally:
        hm.install_hooks()
    with contextlib.redirect_stdout(io.StringIO()):  # quantize_model prints "[INFO] ... bits per weight"
        qmodel, _ = quantize_model(qmodel, {}, group_size=64, bits=bits)
    qhm = HookedModel(LoadedModel(qmodel, hm.tokenizer, hm.info))
    got = [np.array(qhm(p)[0].astype(mx.float32)) for p in prompts]
    agree = np.concatenate([r.argmax(-1) == g.argmax(-1) for r, g in zip(ref, got)])
    kl = np.concatenate([kl_divergence(r, g) for r, g in zip(ref, got)])
    return {"bits": bits, "group_size": 64, "positions": int(agree.size), "top1_agreement": float(agree.mean()),
            "kl_mean": float(kl.mean()), "kl_ci": bootstrap_ci(kl)}


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
    ranks = checks["logit_lens"]["ranks"]
    axes[1].semilogy(range(len(ranks)), np.array(ranks) + 1, "o-")
    axes[1].set(xlabel="layer", ylabel="rank of target + 1 (log)")
    title(axes[1], "logit_lens", "(b) lens: rank of ' Paris'")
    ref = checks["refusal_direction"]
    axes[2].plot(ref["relative_norm_by_layer"], "o-", label="norm / residual norm")
    axes[2].plot(ref["split_half_by_layer"], "s--", label="split-half cosine")
    axes[2].axvline(ref["layer"], color="grey", lw=0.8)
    axes[2].set(xlabel="layer", ylim=(-1, 1.05))
    axes[2].legend(fontsize=7)
    title(axes[2], "refusal_direction", "(c) refusal direction")
    sweep = ref["steering_delta_by_pct_of_resid"]
    pcts = sorted(sweep, key=float)
    est = np.array([sweep[p]["estimate"] for p in pcts])
    err = np.array([[sweep[p]["estimate"] - sweep[p]["low"], sweep[p]["high"] - sweep[p]["estimate"]] for p in pcts]).T
    axes[3].errorbar([float(p) for p in pcts], est, yerr=err, fmt="o-", capsize=4)
    axes[3].axhline(0, color="grey", lw=0.8)
    axes[3].set(xlabel="steering strength, % of residual norm", ylabel="refusal score change (95 % CI)")
    title(axes[3], "refusal_direction", f"(c) steering layer {ref['layer']}")
    fig.tight_layout()
    ctx.save_figure("validation", fig)

"""Where does 4-bit quantization break a finding? Precision patching per layer and sublayer.

The quantization study found that 4-bit (MLX, group size 64) changes findings on
the default model that 8-bit keeps. Here each finding is measured on the float
model, on the quantized model, and on the quantized model with one module (a
block's attention or MLP, or the embedding) restored to float, and on the float
model with one module quantized (analysis/precision.py). Per module: the share of
the float-vs-quantized gap it restores / causes, with bootstrap CIs over prompts.

Findings (metrics per prompt):
  lens      the logit-lens top-1 path on factual prompts (the two-hop queries' second
            hops, as the quantization study): fraction of the last third of layers whose
            lens top-1 token is the float model's; and the next-token KL(float || model)
            (the quantization study's next_token finding), from the same forward passes.
  steering  the refusal-direction steering effect, measured as the quantization study
            does: difference-of-means direction at the refusal study's layer extracted on
            the model as it is (train pairs), added at +steer_pct % of the residual norm
            to held-out harmless prompts; value = steered - unsteered refusal score.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlxinterp.suite.summary import Summary
from mlxinterp.analysis import scoring
from mlxinterp.analysis.precision import (
    DIRECTIONS,
    GRANULARITIES,
    PrecisionSwitch,
    evaluate,
    group_share,
    plot_shares,
    summarise,
)
from mlxinterp.analysis.patching import forward_last
from mlxinterp.analysis.stats import format_interval, kl_divergence, mean_ci
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.core.hooks import ActivationCache, HookedModel, load
from mlxinterp.core.quantize import parse_precision
from mlxinterp.core.specs import parse_spec
from mlxinterp.core.taps import Capture
from mlxinterp.suite import experiment, preregistration
from mlxinterp.tasks import data
from mlxinterp.tasks.refusal import (
    RefusalConfig,
    add_taps,
    formatted,
    layer_directions,
    post_instruction_k,
    reuse_or_select,
    split,
)

FINDINGS = ("lens", "direction", "steering")


@dataclass
class PrecisionPatchingConfig:
    n: int = 30  # factual prompts for the lens finding (>= 30 independent units per estimated effect)
    seed: int = 0
    variants: tuple = ("4bit", "4bit-g32")
    findings: tuple = ("steering", "lens", "direction")  # the steering map first: the newest finding
    granularity: str = "sublayer"  # layer | sublayer | projection
    directions: tuple = DIRECTIONS  # restore (float module in the quantized model) and/or quantize
    reverse_findings: tuple = ("lens", "direction")  # findings that also get the "quantize" direction
    n_refusal: int = 32  # refusal train pairs: the direction finding's units and the steering direction's data
    n_steer: int = 30  # held-out harmless prompts steered (the refusal study's report split)
    steer_pct: float = 8.0
    share_prefix: bool = True  # replay the blocks before a module from the reference run (same values, faster)


QUICK = {"n": 4, "n_refusal": 4, "n_steer": 4, "variants": ("4bit",)}


def lens_metric(hm: HookedModel, prompts: list[str], batch_size: int = 16):
    """Per prompt: lens top-1 agreement with the float path over the last third of layers, and next-token
    KL(float || model). The float reference is taken on the first call (precision_patch starts all-float).

    Only the last position is unembedded, and only the last third of layers is captured: a capture
    earlier in the network would force the blocks before a module to run even when precision
    patching replays their output (analysis.precision.PrefixShare).
    """
    n = hm.info.n_layers
    names = [f"blocks.{l}.hook_resid_post" for l in range(2 * n // 3, n)]
    ref: dict = {}

    def metric(model) -> dict[str, np.ndarray]:
        last, tops = [], []
        for s in range(0, len(prompts), batch_size):
            batch = model.tokens(prompts[s : s + batch_size])
            cache = ActivationCache(model, batch.left_padding)
            out = forward_last(model, batch, [(nm, Capture(store=cache)) for nm in names])[:, 0]
            resid = mx.stack([cache[nm][:, -1] for nm in names]).astype(mx.float32)  # [tail layers, B, d]
            tops.append(np.array(mx.argmax(model.unembed(resid), axis=-1)).T)  # [B, tail layers]
            last.append(np.array(out))
        last, top = np.concatenate(last), np.concatenate(tops)
        if not ref:
            ref.update(top=top, last=last)
        return {"lens_top1_agreement": (top == ref["top"]).mean(1),
                "next_token_kl": kl_divergence(ref["last"], last)}

    return metric


def direction_metric(hm: HookedModel, cfg: PrecisionPatchingConfig, layer: int):
    """Per refusal train pair: cosine between its harmful - harmless activation difference (resid_post at
    `layer`, mean over the post-instruction positions: the terms whose mean is the refusal direction) on the
    model as it is and on the float model (1 by construction on the float model)."""
    sp = split(RefusalConfig(seed=cfg.seed))
    harmful, harmless = sp["train"]["harmful"][: cfg.n_refusal], sp["train"]["harmless"][: cfg.n_refusal]
    k = post_instruction_k(hm, harmful + harmless)
    texts, chat = formatted(hm, harmful + harmless)
    name = f"blocks.{layer}.hook_resid_post"
    ref: dict = {}

    def metric(model) -> dict[str, np.ndarray]:
        batch = model.tokens(texts, chat=chat)
        cache = ActivationCache(model, batch.left_padding)
        with model.hooks([(name, Capture(store=cache))]):
            model.forward(batch)  # the logits stay unevaluated: MLX is lazy, so blocks after `layer` never run
        pooled = np.array(cache[name][:, -k:].astype(mx.float32).mean(axis=1))
        diff = pooled[: len(harmful)] - pooled[len(harmful):]
        if not ref:
            ref["diff"] = diff
        cos = np.sum(diff * ref["diff"], 1) / (np.linalg.norm(diff, axis=1) * np.linalg.norm(ref["diff"], axis=1))
        return {"refusal_pair_cosine": cos}

    return metric


def steering_metric(hm: HookedModel, cfg: PrecisionPatchingConfig, layer: int):
    """Per steered prompt: refusal-score change when the model's own refusal direction is added at `layer`."""
    sp = split(RefusalConfig(seed=cfg.seed))
    harmful, harmless = sp["train"]["harmful"][: cfg.n_refusal], sp["train"]["harmless"][: cfg.n_refusal]
    steer = sp["test"]["harmless"][: cfg.n_steer]
    k = post_instruction_k(hm, harmful + harmless)

    def metric(model) -> dict[str, np.ndarray]:
        d = layer_directions(model, harmful, harmless, k, cfg.seed, [layer])[layer]
        base = scoring.refusal_score(model, steer)
        steered = scoring.refusal_score(model, steer, add_taps(d.unit(), layer, cfg.steer_pct / 100 * d.resid_norm))
        return {"steering_effect": steered - base}

    return metric


def _check(cfg: PrecisionPatchingConfig) -> None:
    if bad := [f for f in cfg.findings if f not in FINDINGS]:
        raise MlxInterpError(f"precision_patching.findings: {bad[0]!r} is not one of {', '.join(FINDINGS)}")
    if cfg.granularity not in GRANULARITIES:
        raise MlxInterpError(f"precision_patching.granularity {cfg.granularity!r} is not one of "
                             f"{', '.join(GRANULARITIES)}")
    for v in cfg.variants:
        if parse_precision(v) is None:
            raise MlxInterpError(f"precision_patching.variants: {v!r} is not a quantization (e.g. 4bit, 4bit-g32)")


def _key(precision: str, metric: str) -> str:
    return f"q{re.sub(r'[^a-z0-9]+', '_', precision.lower())}.{metric}"


def _sublayers(units: list[str], kind: str) -> list[str]:
    return [u for u in units if u.startswith("blocks.") and u.split(".")[2:3] == [kind]]


@experiment("precision_patching", PrecisionPatchingConfig, reuses=["refusal"], quick=QUICK,
            whole_model="it quantizes the whole model's modules one at a time, in one process")
def precision_patching(hm: HookedModel, cfg: PrecisionPatchingConfig, ctx) -> dict:
    """Which module's quantization changes a finding: float restored (or quantized) one module at a time."""
    _check(cfg)
    if hm.info.quantization:  # the study quantizes modules itself: start from the float weights
        hm = load(parse_spec(hm.info.spec)[0] + "@f32")
    items = data.load_json("twohop/queries.json")["items"]
    rng = np.random.default_rng(cfg.seed)
    prompts = [items[i]["hop2_prompt"] for i in sorted(rng.choice(len(items), size=cfg.n, replace=False))]
    layer, layer_source = (reuse_or_select(hm, ctx, RefusalConfig(seed=cfg.seed)) if "steering" in cfg.findings
                           else (None, None))
    direction_layer = round(0.6 * (hm.info.n_layers - 1))  # the quantization study's directions layer
    jobs = [(v, f) for v in cfg.variants for f in cfg.findings]  # every finding at one precision, then the next

    def one(job) -> dict:
        variant, finding = job
        bits, gs = parse_precision(variant)
        sw = PrecisionSwitch(hm, bits, gs, cfg.granularity)
        metric = (lens_metric(hm, prompts) if finding == "lens" else direction_metric(hm, cfg, direction_layer)
                  if finding == "direction" else steering_metric(hm, cfg, layer))
        dirs = [d for d in cfg.directions if d == "restore" or finding in cfg.reverse_findings]
        units = sw.units
        if finding == "direction":  # modules after the direction's layer (or an untied unembedding) cannot move it
            units = [u for u in units if u == "embed" or (u.startswith("blocks.")
                                                          and int(u.split(".")[1]) <= direction_layer)]
        raw = evaluate(hm, metric, switch=sw, directions=dirs, units=units, share_prefix=cfg.share_prefix,
                       progress=lambda msg: ctx.log(f"{variant} {finding}: {msg}"))
        sec = raw.pop("seconds")  # wall-clock time goes to the log only: results must not vary between runs
        ctx.log(f"{variant} {finding}: {sec['evaluations']} evaluations in {sec['total']:.0f} s wall "
                f"({sec['per_evaluation']:.1f} s wall, {sec['cpu_per_evaluation']:.1f} s CPU each; prefix calls "
                f"replayed {sec['prefix_calls_replayed']}), load average {os.getloadavg()[0]:.1f}")
        return {"variant": variant, "finding": finding, **raw}

    raws = ctx.map("maps", jobs, one)  # per-prompt values only: intervals are computed below, from them
    rows = [{"variant": r["variant"], "finding": r["finding"], **summarise(r, cfg.seed)} for r in raws]
    s, headline = Summary(), {}
    for raw, r in zip(raws, rows):
        for metric, m in r["metrics"].items():
            tag, key = f"{r['precision']} {metric}", _key(r["precision"], metric)
            f, q = m["float"], m["quantized"]
            h = headline.setdefault(key.split(".")[0], {}).setdefault(metric, {})
            h.update(float=mean_ci(f, seed=cfg.seed).to_dict(), quantized=mean_ci(q, seed=cfg.seed).to_dict(),
                     gap=m["gap"])
            s.add(f"{key}.float", f"{tag}: float [95% CI]", format_interval(h["float"]))
            s.add(f"{key}.quantized", f"{tag}: quantized [95% CI]", format_interval(h["quantized"]))
            s.add(f"{key}.gap", f"{tag}: gap float - quantized [95% CI]", format_interval(m["gap"]))
            for d in r["directions"]:
                split_ = {"plus": _sublayers(r["units"], "mlp"), "minus": _sublayers(r["units"], "attn")}
                h[f"mlp_minus_attn_{d}_share"] = group_share(raw["values"][metric], split_, d, seed=cfg.seed)
                top = top_units(m[d], 3)
                s.add(f"{key}.top_{d}", f"{tag}: top {d} shares (simultaneous {r['level_per_unit']:.2%} CIs in maps)",
                      ", ".join(f"{u} {v:.2f}" for u, v in top))
                s.add(f"{key}.mlp_minus_attn_{d}_share", f"{tag}: MLPs' summed {d} share minus attention's [95% CI]",
                      format_interval(h[f"mlp_minus_attn_{d}_share"]))
                ctx.save_figure(f"shares_{r['precision']}_{metric}_{d}", plot_shares(r, metric, d))
    g64 = headline.get("q4bit_g64", {}).get("steering_effect", {})
    prereg = preregistration.load().report("precision_patching", {
        "steering_gap_positive": g64.get("gap"), "steering_mlps_carry_more": g64.get("mlp_minus_attn_restore_share")})
    return {**s.to_result(), "headline": headline, "preregistration": prereg, "prompts": prompts, "direction_layer": direction_layer,
            "steer_layer": layer, "steer_layer_source": layer_source,
            "steer_prompts": split(RefusalConfig(seed=cfg.seed))["test"]["harmless"][: cfg.n_steer]
            if "steering" in cfg.findings else [], "maps": rows}


def top_units(rows: dict, k: int) -> list[tuple[str, float]]:
    """The k units with the largest share estimate."""
    vals = [(u, r["share"]["estimate"]) for u, r in rows.items() if r["share"]["estimate"] is not None]
    return sorted(vals, key=lambda t: -t[1])[:k]

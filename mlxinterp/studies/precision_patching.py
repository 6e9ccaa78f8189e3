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
    plot_shares,
    precision_patch,
)
from mlxinterp.analysis.stats import kl_divergence
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.core.hooks import ActivationCache, HookedModel, load
from mlxinterp.core.quantize import parse_precision
from mlxinterp.core.specs import parse_spec
from mlxinterp.core.taps import Capture
from mlxinterp.suite import experiment
from mlxinterp.tasks import data
from mlxinterp.tasks import twohop as TH
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
    n: int = 12  # factual prompts for the lens finding
    seed: int = 0
    variants: tuple = ("4bit", "4bit-g32")
    findings: tuple = ("lens", "direction")  # "steering" too: ~10x a lens evaluation (full-vocabulary scoring)
    granularity: str = "sublayer"  # layer | sublayer | projection
    directions: tuple = DIRECTIONS  # restore (float module in the quantized model) and/or quantize
    reverse_findings: tuple = ("lens", "direction")  # findings that also get the "quantize" direction
    n_refusal: int = 16  # refusal train pairs for the direction (as the quantization study)
    n_steer: int = 12  # held-out harmless prompts steered
    steer_pct: float = 8.0


def lens_metric(hm: HookedModel, prompts: list[str]):
    """Per prompt: lens top-1 agreement with the float path over the last third of layers, and next-token
    KL(float || model). The float reference is taken on the first call (precision_patch starts all-float).

    tasks.twohop.last_states unembeds only the last position, so a call costs the blocks' forward
    plus one unembedding per lens layer and prompt.
    """
    n = hm.info.n_layers
    tail = slice(2 * n // 3, n)
    ref: dict = {}

    def metric(model) -> dict[str, np.ndarray]:
        last, resid = TH.last_states(model, prompts)
        lens = model.unembed(mx.array(resid[tail]))  # [tail layers, prompts, vocab]
        top = np.array(mx.argmax(lens, axis=-1)).T  # [prompts, tail layers]
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


@experiment("precision_patching", PrecisionPatchingConfig, reuses=["refusal"])
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
    jobs = [(v, f) for f in cfg.findings for v in cfg.variants]  # every variant of a finding, then the next

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
        res = precision_patch(hm, metric, switch=sw, directions=dirs, units=units, seed=cfg.seed,
                              progress=lambda msg: ctx.log(f"{variant} {finding}: {msg}"))
        seconds = res.pop("seconds")  # wall-clock time goes to the log only: results must not vary between runs
        n_units = len(res["units"])
        ctx.log(f"{variant} {finding}: {seconds['evaluations']} evaluations, {seconds['per_evaluation']:.1f} s wall "
                f"({seconds['cpu_per_evaluation']:.1f} s CPU) each: {seconds['per_evaluation'] * (n_units + 2):.0f} s "
                f"wall per map of {n_units} modules, load average {os.getloadavg()[0]:.1f}")
        return {"variant": variant, "finding": finding, "directions": dirs, **res}

    rows = ctx.map("maps", jobs, one)
    s = Summary()
    for r in rows:
        for metric, m in r["metrics"].items():
            tag, key = f"{r['precision']} {metric}", f"q{re.sub(r'[^a-z0-9]+', '_', r['precision'].lower())}.{metric}"
            s.add(f"{key}.float", f"{tag}: float", float(np.mean(m["float"])))
            s.add(f"{key}.quantized", f"{tag}: quantized", float(np.mean(m["quantized"])))
            for d in r["directions"]:
                top = top_units(m[d], 3)
                s.add(f"{key}.top_{d}", f"{tag}: top {d} shares", ", ".join(f"{u} {v:.2f}" for u, v in top))
                ctx.save_figure(f"shares_{r['precision']}_{metric}_{d}", plot_shares(r, metric, d))
    return {**s.to_result(), "prompts": prompts, "direction_layer": direction_layer, "steer_layer": layer, "steer_layer_source": layer_source,
            "maps": rows}


def top_units(rows: dict, k: int) -> list[tuple[str, float]]:
    """The k units with the largest share estimate."""
    vals = [(u, r["share"]["estimate"]) for u, r in rows.items() if r["share"]["estimate"] is not None]
    return sorted(vals, key=lambda t: -t[1])[:k]

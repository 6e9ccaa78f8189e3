"""Cross-prompt patching: write the bridge entity's representation from a one-hop prompt into the two-hop prompt.

Source (cfg.source):
- "bridge_token" (default): the residual stream at the bridge's last token in
  hop2_prompt, which names the bridge ("The capital of France is" at " France"):
  how the model represents the entity when it reads it;
- "hop1_last": the last position of hop1_prompt ("The Eiffel Tower is located
  in the country of"), where the model is about to say the bridge.
The source vector of layer l (hook_resid_pre, as patch_sweep) replaces layer
l's resid_pre of the two-hop prompt at one position: a layer x position
sweep, every cell a row of a batched forward (mlxinterp.analysis.patching.run_variants).

Metric: logit(answer) - logit(foil answer) at the last position; the foil
is the answer of another query of the same family (no shared first token,
drawn a priori). Normalised = (patched - corrupt) / (clean - corrupt) with
*corrupt* = the unpatched two-hop prompt and *clean* = hop2_prompt, i.e. the
model told the bridge explicitly: 0 = no change, 1 = as good as naming the
bridge. Only queries whose hop2_prompt the model answers and whose clean -
corrupt difference is >= cfg.min_gap are used (others are listed as excluded).

Control: the same cells patched with the *foil's* bridge (same source kind):
a bridge-specific effect should be positive for the query's bridge and
negative (toward the foil answer) for the foil's.

Positions are summarised by role in the two-hop prompt: BOS, template before
the first-hop entity, entity (all but its last token), entity last token,
template after it, last token (mlxinterp.tasks.twohop.E1_PATTERNS).

Queries: those whose hop2_prompt the model answers, in a seeded order, those
it gets wrong in two hops first (52 of them on Gemma 3 270M), then the rest.

Timing: on the same cells of the first swept query, in the same run: a
one-forward-per-patch loop (`with hm.hooks({hook: Replace(...)}): hm(ids)`,
full logits), run_variants batched, and batched with `reuse_prefix` (the
default for the sweep: positions before a patch come from the unpatched KV
cache); factor = loop time / batched time, plus the largest difference.
Cost on Gemma 3 270M: 2 x 18 layers x ~13 positions = ~470 patches per query,
~25-55 s on 2 shared CPU cores; default n = 4 in 3.6 min; --n 16 in 6.6 min;
--n 144 (every query answering hop2) ~1 h estimated.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import os
import time
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlxinterp.suite.summary import Summary
from mlxinterp.analysis import patching as P
from mlxinterp.core import taps as T
from mlxinterp.tasks import twohop as TH
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.analysis.stats import bootstrap_ci
from mlxinterp.analysis.plotting import ci_points, cross_model_figure, model_label, subplots
from mlxinterp.tasks.twohop import ci_text, statuses
from mlxinterp.suite import experiment
from mlxinterp.core import names as H

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

SOURCES = ("bridge_token", "hop1_last")
ROLES = ("bos", "prefix", "entity", "entity_last", "suffix", "last")
HOOK = "hook_resid_pre"


@dataclass
class CrosspromptConfig:
    n: int = 4  # queries swept (seeded order among those answering hop2_prompt, two-hop wrong first)
    seed: int = 0
    source: str = "bridge_token"  # or "hop1_last"
    control: bool = True  # also patch the foil query's bridge into the same cells
    min_gap: float = 1.0  # clean - corrupt logit difference (nats) needed to normalise
    loop_cells: int = 64  # cells of the first swept query timed three ways (loop, batched, batched + prefix)
    batch_size: int = 32
    chunk: int = 8  # status chunking; equal to twohop's so its statuses are reused
    reuse_prefix: bool = True  # positions before a patch come from the unpatched KV cache (run_variants)


@experiment("crossprompt", CrosspromptConfig, reuses=["twohop"])
def crossprompt(hm: HookedModel, cfg: CrosspromptConfig, ctx) -> dict:
    """Cross-prompt patching of the bridge into the two-hop prompt: layer x position sweep, control, speed."""
    if cfg.source not in SOURCES:
        raise MlxInterpError(f"crossprompt source={cfg.source!r} is not allowed", hint=f"use one of {SOURCES}")
    recs, source = statuses(hm, ctx, cfg.chunk)
    pool = TH.load_queries()
    byid = {q["id"]: q for q in pool}
    order = choose(recs, cfg.n, ctx.rng_for("order"))
    jobs = []
    for r in order:
        q = byid[r["id"]]
        foil = TH.pick_foil(hm, q, pool, TH.foil_rng(ctx.seed, q["id"]))
        if foil is not None:
            jobs.append({"query": q, "foil": foil})
    done = ctx.map("queries", jobs, lambda job: sweep_query(hm, job, cfg))
    timed = [j for j, d in zip(jobs, done) if d["used"]][:1] or jobs[:1]  # a swept query when there is one
    timing = ctx.map("timing", timed, lambda job: time_loop(hm, job, cfg))
    used = [d for d in done if d["used"]]
    an = analyse(used, hm.info.n_layers)
    result = {**_summary(an, done, timing[0] if timing else None, cfg), "status_source": source,
              "definitions": DEFINITIONS, "source": cfg.source, "hook": HOOK, "roles": list(ROLES),
              "analysis": an, "timing": timing[0] if timing else None,
              "excluded": [{"id": d["id"], "reason": d["reason"]} for d in done if not d["used"]], "queries": done}
    _figure(an, hm.info.n_layers, cfg, ctx)
    cross_model_figure(ctx, hm, "crossprompt", result, _cross_panels)
    return result


def choose(recs: list[dict], n: int, rng: np.random.Generator) -> list[dict]:
    """Queries whose hop2_prompt the model answers, in a seeded order: two-hop wrong first (room to improve), then right."""
    wrong = [r for r in recs if r["hop2"] and not r["twohop"]]
    right = [r for r in recs if r["hop2"] and r["twohop"]]
    return ([wrong[i] for i in rng.permutation(len(wrong))] + [right[i] for i in rng.permutation(len(right))])[:n]


DEFINITIONS = {
    "metric": "logit(answer first token) - logit(foil answer first token) at the last position",
    "corrupt": "the unpatched two-hop prompt",
    "clean": "hop2_prompt (names the bridge explicitly)",
    "normalised": "(patched - corrupt) / (clean - corrupt)",
    "source bridge_token": "resid_pre of layer l at the bridge's last token in hop2_prompt",
    "source hop1_last": "resid_pre of layer l at the last token of hop1_prompt",
    "control": "the foil query's source vector patched into the same cells",
    "peak": "per role, the layer with the largest mean normalised effect (chosen after the fact); its CI is "
            "across queries at that layer",
}


def source_vectors(hm: HookedModel, item: dict, kind: str) -> np.ndarray:
    """[n_layers, d_model] resid_pre of the bridge's representation in a one-hop prompt."""
    prompt, pos = (item["hop2_prompt"], TH.bridge_position(hm, item)) if kind == "bridge_token" else (item["hop1_prompt"], -1)
    names = [H.name(l, HOOK) for l in range(hm.info.n_layers)]
    _, cache = hm.run_with_cache(prompt, names=names)
    return np.array(cache.stack(HOOK)[:, 0, pos].astype(mx.float32))


def roles(hm: HookedModel, item: dict) -> list[str]:
    """Role of every position of the two-hop prompt (ROLES)."""
    ids = hm.tokens(item["prompt"]).ids[0].tolist()
    first, last = TH.e1_span(hm, item)
    bos = 1 if hm.info.needs_bos else 0
    out = []
    for p in range(len(ids)):
        if p == len(ids) - 1:
            out.append("last")
        elif p < bos:
            out.append("bos")
        elif p < first:
            out.append("prefix")
        elif p < last:
            out.append("entity")
        elif p == last:
            out.append("entity_last")
        else:
            out.append("suffix")
    return out


def cells(n_layers: int, n_pos: int) -> list[tuple[int, int]]:
    return [(l, p) for l in range(n_layers) for p in range(n_pos)]


def sweep_variants(src: np.ndarray, grid: list[tuple[int, int]]) -> list[list[P.Patch]]:
    return [[P.Patch(H.name(l, HOOK), p, src[l])] for l, p in grid]


def metric_for(hm: HookedModel, item: dict, foil: dict) -> P.Metric:
    """logit(answer) - logit(foil answer), first tokens (articles stripped, as in mlxinterp.tasks.twohop)."""
    a = TH.target(hm, [item["answer"]]).first[0]
    f = TH.target(hm, [foil["answer"]]).first[0]
    return P.logit_diff(hm, a, f)


def clean_corrupt(hm: HookedModel, item: dict, metric) -> tuple[float, float]:
    """Metric on hop2_prompt (clean) and on the unpatched two-hop prompt (corrupt), each run alone (no padding)."""
    clean, _ = TH.last_states(hm, [item["hop2_prompt"]], capture=False)
    corrupt, _ = TH.last_states(hm, [item["prompt"]], capture=False)
    return float(np.array(metric(mx.array(clean)))[0]), float(np.array(metric(mx.array(corrupt)))[0])


def sweep_query(hm: HookedModel, job: dict, cfg: CrosspromptConfig) -> dict:
    """One query: bridge (and foil-bridge) patches at every layer x position of the two-hop prompt."""
    q, foil = job["query"], job["foil"]
    metric = metric_for(hm, q, foil)
    clean, corrupt = clean_corrupt(hm, q, metric)
    rec = {"id": q["id"], "family": q["family"], "foil": foil["id"], "clean": round(clean, 4), "corrupt": round(corrupt, 4)}
    if clean - corrupt < cfg.min_gap:
        return {**rec, "used": False, "reason": f"clean - corrupt = {clean - corrupt:.2f} < min_gap {cfg.min_gap}"}
    ids = hm.tokens(q["prompt"]).ids[0].tolist()
    L = hm.info.n_layers
    grid = cells(L, len(ids))
    variants = sweep_variants(source_vectors(hm, q, cfg.source), grid)
    n_own = len(variants)
    if cfg.control:
        variants += sweep_variants(source_vectors(hm, foil, cfg.source), grid)
    t0 = time.perf_counter()
    vals = P.run_variants(hm, ids, variants, metric, batch_size=cfg.batch_size, reuse_prefix=cfg.reuse_prefix)
    secs = time.perf_counter() - t0
    norm = (vals - corrupt) / (clean - corrupt)
    shape = (L, len(ids))
    return {**rec, "used": True, "reason": None, "roles": roles(hm, q),
            "tokens": [hm.tokenizer.decode([t]) for t in ids],
            "normalised": np.round(norm[:n_own].reshape(shape), 4).tolist(),
            "control": np.round(norm[n_own:].reshape(shape), 4).tolist() if cfg.control else None,
            "batched": {"patches": len(variants), "seconds": round(secs, 3)}}


def time_loop(hm: HookedModel, job: dict, cfg: CrosspromptConfig) -> dict:
    """Same cells three ways: one full forward per patch (loop), run_variants, run_variants with reuse_prefix.

    The cells are split into rounds of `batch_size`; each round runs all three
    methods in a rotated order, so load changes on a shared machine hit them alike.
    """
    q, foil = job["query"], job["foil"]
    metric = metric_for(hm, q, foil)
    ids = hm.tokens(q["prompt"]).ids[0].tolist()
    src = source_vectors(hm, q, cfg.source)
    grid = cells(hm.info.n_layers, len(ids))
    pick = [grid[int(i)] for i in np.linspace(0, len(grid) - 1, min(cfg.loop_cells, len(grid))).round()]
    methods = {
        "loop": lambda cs: loop_sweep(hm, ids, src, cs, metric),
        "batched": lambda cs: P.run_variants(hm, ids, sweep_variants(src, cs), metric, batch_size=cfg.batch_size),
        "batched_reuse_prefix": lambda cs: P.run_variants(hm, ids, sweep_variants(src, cs), metric,
                                                          batch_size=cfg.batch_size, reuse_prefix=True)}
    secs = dict.fromkeys(methods, 0.0)
    vals: dict[str, list] = {m: [] for m in methods}
    names = list(methods)
    for r, k in enumerate(range(0, len(pick), cfg.batch_size)):
        cs = pick[k : k + cfg.batch_size]
        for m in names[r % 3:] + names[: r % 3]:
            t0 = time.perf_counter()
            vals[m].append(methods[m](cs))
            secs[m] += time.perf_counter() - t0
    loop = np.concatenate(vals["loop"])
    out = {"id": q["id"], "cells": len(pick), "tokens": len(ids), "loop_seconds": round(secs["loop"], 3),
           "loop_patches_per_second": round(len(pick) / secs["loop"], 2), "load_average": list(os.getloadavg())}
    for m in ("batched", "batched_reuse_prefix"):
        out[m] = {"seconds": round(secs[m], 3), "patches_per_second": round(len(pick) / secs[m], 2),
                  "speedup_vs_loop": round(secs["loop"] / secs[m], 2),
                  "max_abs_difference": float(np.max(np.abs(np.concatenate(vals[m]) - loop)))}
    return out


def loop_sweep(hm: HookedModel, ids: list[int], src: np.ndarray, grid: list[tuple[int, int]], metric) -> np.ndarray:
    """The reference: one forward per patch with a Replace tap, full logits."""
    x = mx.array([ids])
    out = []
    for l, p in grid:
        with hm.hooks({H.name(l, HOOK): T.Replace(mx.array(src[l]), positions=p)}):
            logits = hm(x)
        out.append(float(metric(logits[:, -1].astype(mx.float32))[0]))
    return np.array(out)


# ----------------------------------------------------------------- analysis


def role_means(grid: list[list[float]], rl: list[str]) -> np.ndarray:
    """[n_layers, len(ROLES)] mean normalised effect over the positions of each role (NaN: role absent)."""
    g = np.array(grid, float)
    out = np.full((g.shape[0], len(ROLES)), np.nan)
    for j, r in enumerate(ROLES):
        cols = [p for p, x in enumerate(rl) if x == r]
        if cols:
            out[:, j] = g[:, cols].mean(axis=1)
    return out


def analyse(used: list[dict], n_layers: int) -> dict:
    """Mean role x layer maps; per role the peak layer and its effect with a bootstrap CI across queries."""
    out = {"n": len(used)}
    for arm in ("normalised", "control"):
        stacks = [role_means(d[arm], d["roles"]) for d in used if d.get(arm) is not None]
        if not stacks:
            out[arm] = None
            continue
        m = np.stack(stacks)  # [q, layers, roles]
        mean = np.nanmean(m, axis=0) if len(m) else np.full((n_layers, len(ROLES)), np.nan)
        peaks = {}
        for j, r in enumerate(ROLES):
            if np.isfinite(mean[:, j]).any():
                l = int(np.nanargmax(mean[:, j]))
                peaks[r] = {"layer": l, **bootstrap_ci(m[:, l, j])}
        out[arm] = {"mean_by_layer_role": np.round(mean, 4).tolist(), "peak_by_role": peaks}
    if out.get("normalised") and out.get("control"):
        diff = {}
        own = np.stack([role_means(d["normalised"], d["roles"]) for d in used])
        ctl = np.stack([role_means(d["control"], d["roles"]) for d in used])
        for r, pk in out["normalised"]["peak_by_role"].items():
            j = ROLES.index(r)
            diff[r] = {"layer": pk["layer"], **bootstrap_ci(own[:, pk["layer"], j] - ctl[:, pk["layer"], j])}
        out["own_minus_control_at_own_peak"] = diff
    return out


def _summary(an: dict, done: list[dict], timing: dict | None, cfg: CrosspromptConfig) -> dict:
    s = Summary()
    s.add("source", "source", cfg.source)
    s.add("queries_swept", "queries swept", an["n"])
    s.add("excluded", "excluded (clean - corrupt < min_gap)", sum(not d["used"] for d in done))
    for r in ("entity_last", "last", "prefix"):
        pk = ((an.get("normalised") or {}).get("peak_by_role") or {}).get(r)
        if pk:
            s.add(f"{r}.peak_normalised_effect", f"peak normalised effect at {r} (layer {pk['layer']})", ci_text(pk))
        d = (an.get("own_minus_control_at_own_peak") or {}).get(r)
        if d:
            s.add(f"{r}.bridge_minus_foil", f"bridge - foil-bridge at {r} (layer {d['layer']})", ci_text(d))
    if timing:
        s.add("loop_patches_per_second", "loop patches/s (one full forward per patch)", timing["loop_patches_per_second"])
        for name in ("batched", "batched_reuse_prefix"):
            t = timing[name]
            s.add(f"{name}.patches_per_second", f"{name} patches/s (x loop)",
                  f"{t['patches_per_second']} (x{t['speedup_vs_loop']})")
            s.add(f"{name}.max_abs_difference", f"{name} vs loop max |difference|", f"{t['max_abs_difference']:.2e}")
    return s.to_result()


# ----------------------------------------------------------------- figures


def _figure(an: dict, L: int, cfg: CrosspromptConfig, ctx) -> None:
    arms = [a for a in ("normalised", "control") if an.get(a)]
    if not arms:
        fig, ax = subplots(figsize=(5, 2))
        ax.text(0.5, 0.5, "no query passed the min_gap filter", ha="center", va="center")
        ax.axis("off")
        ctx.save_figure("crossprompt_sweep", fig)
        return
    mats = [np.array(an[a]["mean_by_layer_role"], float) for a in arms]
    if len(mats) == 2:
        mats.append(mats[0] - mats[1])
    titles = ["bridge patched", "foil bridge patched (control)", "bridge - control"][: len(mats)]
    lim = max(0.1, max(float(np.nanmax(np.abs(m))) for m in mats if np.isfinite(m).any()))
    fig, axes = subplots(1, len(mats), figsize=(4.6 * len(mats), 5), squeeze=False)
    for ax, m, t in zip(axes[0], mats, titles):
        im = ax.imshow(m, origin="lower", aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_xticks(range(len(ROLES)), [r.replace("_", " ") for r in ROLES], rotation=35, ha="right")
        ax.set(ylabel=f"layer ({HOOK})", title=f"{t} (n={an['n']})")
    fig.colorbar(im, ax=axes[0].tolist(), label="normalised logit diff (1 = as if the bridge were named)")
    fig.suptitle(f"cross-prompt patching, source: {cfg.source}", fontsize=10)
    ctx.save_figure("crossprompt_sweep", fig)


def _cross_panels(models):
    fig, ax = subplots(figsize=(max(6, 2.5 * len(models)), 4))
    x = np.arange(len(models))
    for j, (r, c) in enumerate((("entity_last", "tab:blue"), ("last", "tab:red"))):
        pk = [((res["analysis"].get("normalised") or {}).get("peak_by_role") or {}).get(r) or {} for _, res in models]
        ci_points(ax, x + (j - 0.5) * 0.2, pk, fmt="o", color=c, capsize=3, label=f"peak at {r}")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(x, [model_label(i) for i, _ in models], fontsize=7)
    ax.set(ylabel="normalised effect (95 % CI)", title="cross-prompt patching across models")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig

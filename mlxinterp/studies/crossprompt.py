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
it gets wrong in two hops first (52 of them on Gemma 3 270M), then the rest;
those passing min_gap are split in that order:
- selection (`n_select` queries): the full layer x position sweep, own and
  control; per role, the layer with the largest mean normalised effect is
  chosen here (the maps in the figure are these queries);
- report (the next `n` queries): patched only at the chosen layers (every
  position), own and control; every reported effect is from these queries,
  per role as a family (simultaneous Bonferroni intervals, Holm p-values for
  own minus control), so the peak is not reported from the data that found it.
Sizes (full by default): n = 30 report queries (>= 30 independent units),
n_select = 8 (the full grid is ~16x the cost of the chosen layers). The quick
profile (n = 2, n_select = 2) is for smoke tests.

Timing: on the same cells of the first swept query, in the same run: a
one-forward-per-patch loop (`with hm.hooks({hook: Replace(...)}): hm(ids)`,
full logits), run_variants batched, and batched with `reuse_prefix` (the
default for the sweep: positions before a patch come from the unpatched KV
cache); factor = loop time / batched time, plus the largest difference.
Cost on Gemma 3 270M: a selection query is 2 x 18 layers x ~13 positions = ~470
patches, ~25-55 s on 2 shared CPU cores; a report query ~2 x (<= 6 layers) x 13.
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
from mlxinterp.analysis.stats import family_cis, holm, p_value_mean
from mlxinterp.analysis.plotting import ci_points, cross_model_figure, model_label, subplots
from mlxinterp.tasks.twohop import ci_text, statuses
from mlxinterp.suite import experiment, preregistration
from mlxinterp.core import names as H

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

SOURCES = ("bridge_token", "hop1_last")
ROLES = ("bos", "prefix", "entity", "entity_last", "suffix", "last")
HOOK = "hook_resid_pre"
SPARE = 10  # queries beyond n_select + n whose gap is measured, to replace those failing min_gap


@dataclass
class CrosspromptConfig:
    n: int = 30  # report queries (patched at the chosen layers): >= 30 independent units per effect
    n_select: int = 8  # selection queries (full layer x position sweep; choose each role's peak layer)
    seed: int = 0
    source: str = "bridge_token"  # or "hop1_last"
    control: bool = True  # also patch the foil query's bridge into the same cells
    min_gap: float = 1.0  # clean - corrupt logit difference (nats) needed to normalise
    loop_cells: int = 64  # cells of the first swept query timed three ways (loop, batched, batched + prefix)
    batch_size: int = 32
    chunk: int = 8  # status chunking; equal to twohop's so its statuses are reused
    reuse_prefix: bool = True  # positions before a patch come from the unpatched KV cache (run_variants)


@experiment("crossprompt", CrosspromptConfig, reuses=["twohop"], quick={"n": 2, "n_select": 2})
def crossprompt(hm: HookedModel, cfg: CrosspromptConfig, ctx) -> dict:
    """Cross-prompt patching of the bridge into the two-hop prompt: layer x position sweep, control, speed."""
    if cfg.source not in SOURCES:
        raise MlxInterpError(f"crossprompt source={cfg.source!r} is not allowed", hint=f"use one of {SOURCES}")
    recs, source = statuses(hm, ctx, cfg.chunk)
    pool = TH.load_queries()
    byid = {q["id"]: q for q in pool}
    jobs = []
    for r in choose(recs, len(recs), ctx.rng_for("order")):
        q = byid[r["id"]]
        foil = TH.pick_foil(hm, q, pool, TH.foil_rng(ctx.seed, q["id"]))
        if foil is not None:
            jobs.append({"query": q, "foil": foil})
    jobs = jobs[: cfg.n_select + cfg.n + SPARE]  # enough to fill both splits after the min_gap filter, usually
    gaps = ctx.map("gaps", jobs, lambda job: gap_of(hm, job))
    passing = [j for j, g in zip(jobs, gaps) if g["clean"] - g["corrupt"] >= cfg.min_gap]
    excluded = [{**g, "reason": f"clean - corrupt = {g['clean'] - g['corrupt']:.2f} < min_gap {cfg.min_gap}"}
                for g in gaps if g["clean"] - g["corrupt"] < cfg.min_gap]
    sel_jobs, rep_jobs = passing[: cfg.n_select], passing[cfg.n_select : cfg.n_select + cfg.n]
    L = hm.info.n_layers
    selected = ctx.map("selection", sel_jobs, lambda job: sweep_query(hm, job, cfg, range(L)))
    sel = analyse(selected, L)
    peaks = {r: pk["layer"] for r, pk in ((sel.get("normalised") or {}).get("peak_by_role") or {}).items()}
    layers = sorted(set(peaks.values()))
    reported = ctx.map("report", rep_jobs, lambda job: sweep_query(hm, job, cfg, layers)) if layers else []
    rep = report(reported, peaks)
    timed = (rep_jobs or sel_jobs)[:1]
    timing = ctx.map("timing", timed, lambda job: time_loop(hm, job, cfg))
    prereg = _prereg(rep)
    result = {**_summary(sel, rep, len(excluded), timing[0] if timing else None, cfg, prereg), "prereg": prereg,
              "status_source": source, "definitions": DEFINITIONS, "source": cfg.source, "hook": HOOK,
              "roles": list(ROLES), "selection": sel, "report": rep, "chosen_layers": peaks,
              "splits": {"rule": "queries passing min_gap in the seeded order: the first n_select choose each role's "
                                 "layer (full sweep), the next n report at those layers",
                         "selection_ids": [d["id"] for d in selected], "report_ids": [d["id"] for d in reported]},
              "timing": timing[0] if timing else None, "excluded": excluded,
              "queries": {"selection": selected, "report": reported}}
    _figure(sel, rep, L, cfg, ctx)
    cross_model_figure(ctx, hm, "crossprompt", result, _cross_panels)
    return result


def gap_of(hm: HookedModel, job: dict) -> dict:
    """Clean and corrupt metric of one query (the min_gap filter), without patching."""
    q, foil = job["query"], job["foil"]
    clean, corrupt = clean_corrupt(hm, q, metric_for(hm, q, foil))
    return {"id": q["id"], "clean": round(clean, 4), "corrupt": round(corrupt, 4)}


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
    "peak": "per role, the layer with the largest mean normalised effect over the selection queries; its effect "
            "is reported on the report queries (simultaneous 95 % intervals over the roles)",
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


def sweep_query(hm: HookedModel, job: dict, cfg: CrosspromptConfig, layers) -> dict:
    """One query: bridge (and foil-bridge) patches at `layers` x every position of the two-hop prompt."""
    q, foil = job["query"], job["foil"]
    metric = metric_for(hm, q, foil)
    clean, corrupt = clean_corrupt(hm, q, metric)
    layers = [int(l) for l in layers]
    rec = {"id": q["id"], "family": q["family"], "foil": foil["id"], "clean": round(clean, 4), "corrupt": round(corrupt, 4),
           "layers": layers}
    ids = hm.tokens(q["prompt"]).ids[0].tolist()
    grid = [(l, p) for l in layers for p in range(len(ids))]
    variants = sweep_variants(source_vectors(hm, q, cfg.source), grid)
    n_own = len(variants)
    if cfg.control:
        variants += sweep_variants(source_vectors(hm, foil, cfg.source), grid)
    t0 = time.perf_counter()
    vals = P.run_variants(hm, ids, variants, metric, batch_size=cfg.batch_size, reuse_prefix=cfg.reuse_prefix)
    secs = time.perf_counter() - t0
    norm = (vals - corrupt) / (clean - corrupt) if clean != corrupt else np.full(len(vals), np.nan)
    shape = (len(layers), len(ids))
    return {**rec, "roles": roles(hm, q), "tokens": [hm.tokenizer.decode([t]) for t in ids],
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
    """Selection queries (full sweep): mean role x layer maps and, per role, the layer with the largest mean
    normalised effect (no interval: it is chosen here)."""
    out = {"n": len(used)}
    for arm in ("normalised", "control"):
        stacks = [role_means(d[arm], d["roles"]) for d in used if d.get(arm) is not None]
        if not stacks:
            out[arm] = None
            continue
        with np.errstate(all="ignore"):
            mean = np.nanmean(np.stack(stacks), axis=0)
        peaks = {}
        for j, r in enumerate(ROLES):
            if np.isfinite(mean[:, j]).any():
                l = int(np.nanargmax(mean[:, j]))
                peaks[r] = {"layer": l, "selection_mean": float(mean[l, j])}
        out[arm] = {"mean_by_layer_role": np.round(mean, 4).tolist(), "peak_by_role": peaks}
    return out


def report(reported: list[dict], peaks: dict[str, int]) -> dict:
    """Report queries at each role's chosen layer: own, control and own - control, each a family over the roles
    (simultaneous Bonferroni intervals over queries; Holm-adjusted p of own - control)."""
    roles_ = [r for r in ROLES if r in peaks]
    vals: dict[str, dict[str, list]] = {arm: {r: [] for r in roles_} for arm in ("own", "control", "own_minus_control")}
    for d in reported:
        own = role_means(d["normalised"], d["roles"])
        ctl = role_means(d["control"], d["roles"]) if d.get("control") is not None else None
        for r in roles_:
            i, j = d["layers"].index(peaks[r]), ROLES.index(r)
            if np.isfinite(own[i, j]):
                vals["own"][r].append(float(own[i, j]))
                if ctl is not None and np.isfinite(ctl[i, j]):
                    vals["control"][r].append(float(ctl[i, j]))
                    vals["own_minus_control"][r].append(float(own[i, j] - ctl[i, j]))
    out: dict = {"n": len(reported), "layers": {r: peaks[r] for r in roles_}}
    for arm, by_role in vals.items():
        cis = family_cis([by_role[r] for r in roles_]) if roles_ else []
        out[arm] = {r: {"layer": peaks[r], **ci} for r, ci in zip(roles_, cis)}
    raw = [p_value_mean(vals["own_minus_control"][r]) if len(vals["own_minus_control"][r]) > 1 else None for r in roles_]
    ok = [i for i, p in enumerate(raw) if p is not None and np.isfinite(p)]
    adj = dict(zip(ok, holm([raw[i] for i in ok]))) if ok else {}
    out["own_minus_control_p_holm"] = {r: (float(adj[i]) if i in adj else None) for i, r in enumerate(roles_)}
    out["values"] = vals
    return out


def _prereg(rep: dict) -> dict:
    """The pre-registered check (mlxinterp/data/preregistration.toml): own minus foil bridge at entity_last."""
    return preregistration.load().report("crossprompt", {
        "bridge_specific": (rep.get("own_minus_control") or {}).get("entity_last")})


def _summary(sel: dict, rep: dict, n_excluded: int, timing: dict | None, cfg: CrosspromptConfig, prereg: dict) -> dict:
    s = Summary()
    s.add("source", "source", cfg.source)
    s.add("queries_selection", "selection queries (full sweep)", sel["n"])
    s.add("queries_report", "report queries (chosen layers)", rep["n"])
    s.add("excluded", "excluded (clean - corrupt < min_gap)", n_excluded)
    for r in ("entity_last", "last", "prefix"):
        pk = (rep.get("own") or {}).get(r)
        if pk:
            s.add(f"{r}.peak_normalised_effect", f"normalised effect at {r}, layer {pk['layer']} (chosen on selection), "
                                                 "report queries [simultaneous 95% CI]", ci_text(pk))
        d = (rep.get("own_minus_control") or {}).get(r)
        if d:
            s.add(f"{r}.bridge_minus_foil", f"bridge - foil-bridge at {r} (layer {d['layer']}), report queries",
                  ci_text(d))
    if timing:
        s.add("loop_patches_per_second", "loop patches/s (one full forward per patch)", timing["loop_patches_per_second"])
        for name in ("batched", "batched_reuse_prefix"):
            t = timing[name]
            s.add(f"{name}.patches_per_second", f"{name} patches/s (x loop)",
                  f"{t['patches_per_second']} (x{t['speedup_vs_loop']})")
            s.add(f"{name}.max_abs_difference", f"{name} vs loop max |difference|", f"{t['max_abs_difference']:.2e}")
    s.add_checks(prereg)
    return s.to_result()


# ----------------------------------------------------------------- figures


def _figure(sel: dict, rep: dict, L: int, cfg: CrosspromptConfig, ctx) -> None:
    arms = [a for a in ("normalised", "control") if sel.get(a)]
    if not arms:
        fig, ax = subplots(figsize=(5, 2))
        ax.text(0.5, 0.5, "no query passed the min_gap filter", ha="center", va="center")
        ax.axis("off")
        ctx.save_figure("crossprompt_sweep", fig)
        return
    mats = [np.array(sel[a]["mean_by_layer_role"], float) for a in arms]
    if len(mats) == 2:
        mats.append(mats[0] - mats[1])
    titles = ["bridge patched", "foil bridge patched (control)", "bridge - control"][: len(mats)]
    lim = max(0.1, max(float(np.nanmax(np.abs(m))) for m in mats if np.isfinite(m).any()))
    fig, axes = subplots(1, len(mats) + 1, figsize=(4.6 * (len(mats) + 1), 5), squeeze=False)
    for ax, m, t in zip(axes[0], mats, titles):
        im = ax.imshow(m, origin="lower", aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_xticks(range(len(ROLES)), [r.replace("_", " ") for r in ROLES], rotation=35, ha="right")
        ax.set(ylabel=f"layer ({HOOK})", title=f"{t}\n(selection queries, n={sel['n']})")
    for r, pk in ((sel.get("normalised") or {}).get("peak_by_role") or {}).items():
        axes[0][0].plot(ROLES.index(r), pk["layer"], "k*", ms=8)
    fig.colorbar(im, ax=axes[0][: len(mats)].tolist(), label="normalised logit diff (1 = as if the bridge were named)")
    ax = axes[0][-1]
    names = [r for r in ROLES if r in (rep.get("own") or {})]
    x = np.arange(len(names))
    for j, (arm, c) in enumerate((("own", "tab:blue"), ("control", "tab:grey"))):
        ci_points(ax, x + (j - 0.5) * 0.25, [rep[arm].get(r, {}) for r in names], fmt="o", color=c, capsize=3,
                  label="bridge" if arm == "own" else "foil bridge (control)")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, [f"{r.replace('_', ' ')}\nL{rep['layers'][r]}" for r in names], rotation=35, ha="right", fontsize=7)
    ax.set(ylabel="normalised effect (simultaneous 95 % CI)", title=f"report queries at the * layers (n={rep['n']})")
    ax.legend(fontsize=7)
    fig.suptitle(f"cross-prompt patching, source: {cfg.source}", fontsize=10)
    ctx.save_figure("crossprompt_sweep", fig)


def _cross_panels(models):
    fig, ax = subplots(figsize=(max(6, 2.5 * len(models)), 4))
    x = np.arange(len(models))
    for j, (r, c) in enumerate((("entity_last", "tab:blue"), ("last", "tab:red"))):
        pk = [((res.get("report") or {}).get("own") or {}).get(r) or {} for _, res in models]
        ci_points(ax, x + (j - 0.5) * 0.2, pk, fmt="o", color=c, capsize=3, label=f"peak at {r}")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(x, [model_label(i) for i, _ in models], fontsize=7)
    ax.set(ylabel="normalised effect (95 % CI)", title="cross-prompt patching across models")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig

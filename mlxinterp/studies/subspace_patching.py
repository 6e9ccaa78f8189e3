"""Experiment A, `subspace_patching`: is the attention kernel's Z subspace causal?

Part of the cross-lingual subspace study (paired English / Chinese prompts, data/crosslingual/pairs.json;
the shared prompts, activations and Z bases are in mlxinterp.tasks.language_pairs).

Patch the English run's residual (hook_resid_pre of the layer, i.e. what that layer's attention
reads) with Chinese content in Z, in Z-perp, or in full, aligned by mean broadcast or per-token
optimal transport; greedy generation; answer change, output language and correctness per
condition, against the Qwen2.5-3B subspace notes' success / partial / null criteria.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import re
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlxinterp.suite.summary import Summary
from mlxinterp.analysis import subspace as S
from mlxinterp.analysis.plotting import subplots
from mlxinterp.analysis.stats import bootstrap_ci, format_interval
from mlxinterp.core import io
from mlxinterp.core import names as H
from mlxinterp.core import taps as T
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.suite import experiment
from mlxinterp.tasks.language_pairs import SEED_FRACS, activations, content, layers_at, load_pairs, prompt, z_basis

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")
_NUM = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class PatchingConfig:
    n: int = 8  # prompt pairs (the full set has 48)
    seed: int = 0
    ks: tuple = (20, 50)
    layer_fracs: tuple = SEED_FRACS
    max_tokens: int = 12  # answers sit on the first line; <= 100
    alignments: tuple = ("mean", "ot")


@experiment("subspace_patching", PatchingConfig)
def subspace_patching(hm: HookedModel, cfg: PatchingConfig, ctx) -> dict:
    """Experiment A: Z / Z-perp / full patching en<-zh (mean broadcast and OT alignment), greedy generation."""
    if not 1 <= cfg.max_tokens <= 100:
        raise MlxInterpError(f"max_tokens={cfg.max_tokens} must be between 1 and 100")
    bad = [a for a in cfg.alignments if a not in ("mean", "ot")]
    if bad:
        raise MlxInterpError(f"alignments {bad} not allowed; use 'mean' and/or 'ot'")
    layers = layers_at(cfg.layer_fracs, hm.info.n_layers)
    ks = [k for k in cfg.ks if k < hm.info.d_model]
    bases = {(l, k): z_basis(hm, l, k) for l in layers for k in ks}
    conds = _conditions(layers, ks, cfg.alignments)
    pairs = load_pairs(cfg.n)
    ctx.log(f"layers {layers}, k {ks}, {len(conds)} conditions x {len(pairs)} pairs, {cfg.max_tokens} tokens each")
    items = ctx.map("pairs", pairs, lambda p: _patch_pair(hm, p, conds, bases, cfg.max_tokens))
    stats = {c["name"]: _condition_stats(items, c["name"], cfg.seed) for c in conds if c["kind"] != "none"}
    verdicts = {f"L{l} k={k} {a}": _verdict(stats, l, k, a, cfg.seed, items)
                for l in layers for k in ks for a in cfg.alignments}
    main = f"L{layers[0]} k={max(ks)} mean"
    table = _table(items, layers[0], max(ks), "mean")
    io.atomic_write_text(ctx.out_dir / "table.md", table)
    s = Summary()
    s.add("layers", "layers", layers)
    s.add("pairs", "pairs", len(pairs))
    s.add("primary_config", "primary config", main)
    for name in ("Z", "Zperp", "full"):
        st = stats[f"{name} L{layers[0]}" + ("" if name == "full" else f" k={max(ks)}") + " mean"]
        s.add(f"{name.lower()}.answer_change", f"{name}-patch answer change [95% CI]", _pct_text(st["answer_change"]))
        s.add(f"{name.lower()}.language_en", f"{name}-patch output English [95% CI]", _pct_text(st["language_en"]))
    s.add("baseline_correct", "baseline correct (en, zh)",
          f"{np.mean([i['rows']['none']['correct'] for i in items]):.2f}, "
          f"{np.mean([i['zh_baseline']['correct'] for i in items]):.2f}")
    s.add("verdicts", "verdicts", {k: v["verdict"] for k, v in verdicts.items()})
    _patching_figure(stats, layers, ks, cfg.alignments, ctx)
    return {**s.to_result(), "layers": layers, "ks": ks, "max_tokens": cfg.max_tokens,
            "conditions": conds, "stats": stats, "verdicts": verdicts, "table_primary": table, "items": items,
            "definitions": {
                "patch site": "blocks.{l}.hook_resid_pre of the English run, prompt positions after BOS, when='prompt'",
                "Z-patch": "h_en <- P_Zperp h_en + P_Z src", "Zperp-patch": "h_en <- P_Z h_en + P_Zperp src",
                "full-patch": "h_en <- src",
                "src (mean)": "mean over Chinese content tokens of h_zh, broadcast to every English position",
                "src (ot)": "sum_s pi[s,t]/b_t h_zh[s], pi = ot.emd plan (uniform marginals, squared-Euclidean cost on h)",
                "extracted answer": "first non-empty line of the generation; arithmetic: its last number; factual: the "
                                    "canonical answer when any accepted alias occurs in that line, else the line itself",
                "language": "CJK share of CJK+Latin letters in the whole generation: en < 0.2 <= mixed <= 0.8 < zh",
                "answer_change": "extracted answer differs from the unpatched English run's",
                "language_changed": "language label differs from the unpatched English run's"}}


def _conditions(layers, ks, alignments) -> list[dict]:
    out = [{"name": "none", "kind": "none", "layer": None, "k": None, "align": None}]
    for l in layers:
        for a in alignments:
            out.append({"name": f"full L{l} {a}", "kind": "full", "layer": l, "k": None, "align": a})
            for k in ks:
                for kind in ("Z", "Zperp"):
                    out.append({"name": f"{kind} L{l} k={k} {a}", "kind": kind, "layer": l, "k": k, "align": a})
    return out


def _patch_pair(hm: HookedModel, pair: dict, conds: list[dict], bases: dict, max_tokens: int) -> dict:
    """Generate every condition for one pair in one batch: one Fn tap per patched layer, one row per condition."""
    en, zh = prompt(pair, "en"), prompt(pair, "zh")
    a_en, a_zh = activations(hm, en), activations(hm, zh)
    s, T_en = a_en["start"], a_en["resid"].shape[1]
    d = hm.info.d_model
    taps, ot_info = {}, {}
    for l in sorted({c["layer"] for c in conds if c["layer"] is not None}):
        h_en, h_zh = content(a_en, l), content(a_zh, l)
        plan = S.ot_plan(h_zh, h_en)
        src = {"mean": np.broadcast_to(h_zh.mean(0), h_en.shape), "ot": S.ot_transport(h_zh, plan)}
        ot_info[str(l)] = {"plan_entropy_ratio": float(-(plan[plan > 0] * np.log(plan[plan > 0])).sum() / np.log(plan.size)),
                           "mean_vs_ot_src_cos": float(np.mean(np.sum(src["mean"] * src["ot"], 1) / (
                               np.linalg.norm(src["mean"], axis=1) * np.linalg.norm(src["ot"], axis=1))))}
        keep, sign, add, V = [], [], [], []
        kmax = max(len(b) for b in bases.values())
        for c in conds:
            Vb = np.zeros((kmax, d))
            if c["layer"] != l:  # untouched row
                keep.append(1.0), sign.append(0.0), add.append(np.zeros((T_en - s, d)))
            elif c["kind"] == "full":
                keep.append(0.0), sign.append(0.0), add.append(src[c["align"]])
            else:
                B = bases[(l, c["k"])]
                Vb[: len(B)] = B
                P, Pp = S.projectors(B)
                z, zp = src[c["align"]] @ P, src[c["align"]] @ Pp
                if c["kind"] == "Z":  # h <- h - P_Z h + P_Z src
                    keep.append(1.0), sign.append(-1.0), add.append(z)
                else:  # h <- P_Z h + P_Zperp src
                    keep.append(0.0), sign.append(1.0), add.append(zp)
            V.append(Vb)
        full_add = np.zeros((len(conds), T_en, d), np.float32)
        full_add[:, s:] = np.stack(add)
        taps[H.resid_pre(l)] = T.Fn(_row_patch(np.array(keep), np.array(sign), np.stack(V), full_add, T_en),
                                                  positions=list(range(s, T_en)), when="prompt")
    gens = hm.generate_batch([en] * len(conds), max_tokens=max_tokens, taps=taps)
    zh_gen = hm.generate_batch([zh], max_tokens=max_tokens)[0]
    rows = {c["name"]: _score(g.text, pair) for c, g in zip(conds, gens)}
    base = rows["none"]
    for r in rows.values():
        r["answer_change"] = r["answer"] != base["answer"]
        r["language_changed"] = r["language"] != base["language"]
    return {"id": pair["id"], "kind": pair["kind"], "gold": pair["answer"], "tokens_en": T_en,
            "tokens_zh": a_zh["resid"].shape[1], "ot": ot_info, "zh_baseline": _score(zh_gen.text, pair), "rows": rows}


def _row_patch(keep, sign, V, add, T_len):
    """new[b] = keep[b] * h + sign[b] * (h V_b^T) V_b + add[b]  (prompt chunk only; generated chunks pass through)."""
    keep_m = mx.array(keep.astype(np.float32))[:, None, None]
    sign_m = mx.array(sign.astype(np.float32))[:, None, None]
    V_m, add_m = mx.array(V.astype(np.float32)), mx.array(add)
    Vt = V_m.transpose(0, 2, 1)

    def fn(a, ctx):
        if a.shape[1] != T_len or a.shape[0] != keep_m.shape[0]:
            return a  # a generated token: the tap is prompt-only, this value is masked out anyway
        x = a.astype(mx.float32)
        return keep_m * x + sign_m * ((x @ Vt) @ V_m) + add_m

    return fn


def _first_line(text: str) -> str:
    for line in text.splitlines():
        line = re.sub(r"^\s*(Answer:|答案[:：])\s*", "", line).strip()
        if line:
            return line
    return ""


def language_of(text: str) -> tuple[str, float | None]:
    """('en' | 'zh' | 'mixed' | 'none', CJK share of CJK + Latin letters)."""
    cjk, lat = len(_CJK.findall(text)), len(_LATIN.findall(text))
    if cjk + lat == 0:
        return "none", None
    f = cjk / (cjk + lat)
    return ("en" if f < 0.2 else "zh" if f > 0.8 else "mixed"), f


def _score(text: str, pair: dict) -> dict:
    line = _first_line(text)
    if pair["kind"] == "arithmetic":
        nums = _NUM.findall(line)
        answer = nums[-1] if nums else line[:40].lower()
        correct = (bool(nums) and float(nums[-1]) == float(pair["answer"])) or any(
            a in line for a in pair["aliases"] if not a.isdigit())
    else:  # a known alias counts as the canonical answer, so paraphrases ("The capital ... is Paris.") match "Paris"
        correct = any(a.lower() in line.lower() for a in pair["aliases"])
        answer = pair["answer"].lower() if correct else re.sub(r"[\s.。!！,，]+$", "", line[:40].lower())
    lang, frac = language_of(text)
    return {"text": text, "answer": answer, "correct": bool(correct), "language": lang, "cjk_fraction": frac}


def _condition_stats(items: list[dict], name: str, seed: int) -> dict:
    rows = [i["rows"][name] for i in items]
    base = [i["rows"]["none"] for i in items]
    arr = lambda key: np.array([float(r[key]) for r in rows])  # noqa: E731
    return {"answer_change": bootstrap_ci(arr("answer_change"), seed=seed),
            "language_changed": bootstrap_ci(arr("language_changed"), seed=seed),
            "language_en": bootstrap_ci(np.array([float(r["language"] == "en") for r in rows]), seed=seed),
            "correct": bootstrap_ci(arr("correct"), seed=seed),
            "correct_change_vs_none": bootstrap_ci(arr("correct") - np.array([float(b["correct"]) for b in base]), seed=seed)}


def _verdict(stats: dict, l: int, k: int, a: str, seed: int, items: list[dict]) -> dict:
    """The Qwen2.5-3B subspace notes' criteria. Success: Z changes answers (CI > 0) while >= 80 % stay English, and Z-perp
    changes the language (CI > 0) while changing <= 20 % of answers. Partial: Z changes answers more
    than Z-perp (paired CI of the difference > 0). Null: that CI contains 0; 'reversed' if it lies below."""
    zs, zp, full = stats[f"Z L{l} k={k} {a}"], stats[f"Zperp L{l} k={k} {a}"], stats[f"full L{l} {a}"]
    diff = bootstrap_ci([float(i["rows"][f"Z L{l} k={k} {a}"]["answer_change"]) - float(i["rows"][f"Zperp L{l} k={k} {a}"]["answer_change"])
                         for i in items], seed=seed)
    success = (zs["answer_change"]["low"] > 0 and zs["language_en"]["estimate"] >= 0.8
               and zp["language_changed"]["low"] > 0 and zp["answer_change"]["estimate"] <= 0.2)
    if success:
        verdict = "success (double dissociation)"
    elif diff["low"] is not None and diff["low"] > 0:
        verdict = "partial (Z changes answers more than Z-perp)"
    elif diff["high"] is not None and diff["high"] < 0:
        verdict = "reversed (Z-perp changes answers more than Z)"
    else:
        verdict = "null (no difference between Z and Z-perp)"
    prof = lambda s: np.array([s["answer_change"]["estimate"], s["language_changed"]["estimate"]])  # noqa: E731
    dz, dp = np.abs(prof(full) - prof(zs)).sum(), np.abs(prof(full) - prof(zp)).sum()
    return {"verdict": verdict, "answer_change_Z_minus_Zperp": diff,
            "full_patch_resembles": "Z-patch" if dz < dp else "Z-perp-patch" if dp < dz else "both equally",
            "full_profile_distance_to_Z": float(dz), "full_profile_distance_to_Zperp": float(dp)}


def _cell(r: dict) -> str:
    t = r["text"].replace("\n", " ⏎ ").replace("|", "\\|")[:60]
    return f"{t} [{r['answer']}; {r['language']}; {'✓' if r['correct'] else '✗'}]"


def _table(items, l, k, a) -> str:
    head = ("| problem | gold | original (en) | Z-patched (en<-zh) | Z-perp-patched | full-patched | zh prompt (reference) |\n"
            "|---|---|---|---|---|---|---|\n")
    lines = [f"| {i['id']} | {i['gold']} | {_cell(i['rows']['none'])} | {_cell(i['rows'][f'Z L{l} k={k} {a}'])} | "
             f"{_cell(i['rows'][f'Zperp L{l} k={k} {a}'])} | {_cell(i['rows'][f'full L{l} {a}'])} | {_cell(i['zh_baseline'])} |"
             for i in items]
    return f"Layer {l}, k={k}, {a} alignment. Cells: generation [extracted answer; language; correct].\n\n" + head + "\n".join(lines) + "\n"


def _patching_figure(stats, layers, ks, aligns, ctx) -> None:
    fig, axes = subplots(1, 2, figsize=(14, 4.2), sharey=True)
    for ax, metric, title in ((axes[0], "answer_change", "answer changed vs unpatched"),
                              (axes[1], "language_changed", "output language changed vs unpatched")):
        labels, est, lo, hi, colors = [], [], [], [], []
        for l in layers:
            for a in aligns:
                for name, color in ([(f"Z L{l} k={k} {a}", "tab:blue") for k in ks]
                                    + [(f"Zperp L{l} k={k} {a}", "tab:orange") for k in ks]
                                    + [(f"full L{l} {a}", "tab:grey")]):
                    c = stats[name][metric]
                    labels.append(name), est.append(c["estimate"]), lo.append(c["low"]), hi.append(c["high"]), colors.append(color)
        est, lo, hi = map(np.array, (est, lo, hi))
        ax.bar(range(len(labels)), est, yerr=[est - lo, hi - est], color=colors, capsize=2)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
        ax.set(title=f"{title} (95% bootstrap CI)", ylim=(0, 1.05))
    fig.tight_layout()
    ctx.save_figure("subspace_patching", fig)




def _pct_text(ci: dict) -> str:
    return format_interval(ci, ".0f", pct=True)

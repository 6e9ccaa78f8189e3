"""Experiment A, `subspace_patching`: is the attention kernel's Z subspace causal?

Part of the cross-lingual subspace study (paired English / Chinese prompts, data/crosslingual/pairs.json;
the shared prompts, activations and Z bases are in mlxinterp.tasks.language_pairs).

Patch the English run's residual (hook_resid_pre of the layer, i.e. what that layer's attention
reads) with Chinese content in Z, in Z-perp, or in full, aligned by mean broadcast or per-token
optimal transport; greedy generation; answer change, output language and correctness per
condition, against the Qwen2.5-3B subspace notes' success / partial / null criteria.

Sizes and choices (all fixed before any run, none chosen on the data):
- pairs: all 48 pairs of the data file (the notes' bar is >= 15 problems); every pair is a report
  unit, since nothing is selected on the data.
- layers: the notes' primary L32 and secondary L33 of 36, as fractions of depth (SEED_FRACS);
  k: the notes' primary 50 and secondary 20; mean broadcast is the notes' primary alignment, OT
  the one to try "before declaring null" (at the primary layer and k; `ot_everywhere` for the whole
  grid). Primary config: first layer, largest k, mean.
- controls at the primary config, per pair: `n_matched` random k-subspaces R whose share of the
  patched difference's energy equals Z's on that pair (R-patch mirrors the Z-patch, R-perp the
  Z-perp patch: the same perturbation size), and `n_uniform` uniformly random k-subspaces (their
  energy share reported beside Z's). 3 + 3 per pair over 48 pairs = 144 draws of each kind; each
  draw patches one pair, and the random rate per pair (mean over its draws) is the unit of the
  paired comparison with Z.
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
from mlxinterp.analysis.stats import format_interval, mean_ci, paired_binary_diff_ci, paired_diff_ci, proportion_ci
from mlxinterp.core import io
from mlxinterp.core import names as H
from mlxinterp.core import taps as T
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.suite import experiment, preregistration
from mlxinterp.tasks.language_pairs import SEED_FRACS, activations, content, layers_at, load_pairs, prompt, z_basis

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")
_NUM = re.compile(r"-?\d+(?:\.\d+)?")
CONTROL_KINDS = ("R", "Rperp", "U")  # energy-matched random (and its complement), uniformly random


@dataclass
class PatchingConfig:
    n: int = 48  # prompt pairs: all 48 of data/crosslingual/pairs.json (the source's bar is >= 15 problems)
    seed: int = 0
    ks: tuple = (20, 50)  # the source's k = 50 (primary) and 20 (secondary check); fixed in advance
    layer_fracs: tuple = SEED_FRACS  # the source's L32 (primary) and L33 of 36 layers, as fractions of depth
    max_tokens: int = 12  # answers sit on the first line; <= 100
    alignments: tuple = ("mean", "ot")  # mean broadcast (the source's primary); OT (the source: try before declaring null)
    ot_everywhere: bool = False  # False: alignments after the first only at the primary layer and k (a third of the cost)
    n_matched: int = 3  # energy-matched random subspaces per pair at the primary config (x 48 pairs = 144 >= 100 draws)
    n_uniform: int = 3  # uniformly random k-subspaces per pair at the primary config (x 48 pairs = 144 draws)


@experiment("subspace_patching", PatchingConfig, quick={"n": 4, "alignments": ("mean",), "n_matched": 1, "n_uniform": 1})
def subspace_patching(hm: HookedModel, cfg: PatchingConfig, ctx) -> dict:
    """Experiment A: Z / Z-perp / full patching en<-zh (mean broadcast and OT alignment), greedy generation,
    with energy-matched and uniformly random subspaces of the same k as controls."""
    if not 1 <= cfg.max_tokens <= 100:
        raise MlxInterpError(f"max_tokens={cfg.max_tokens} must be between 1 and 100")
    bad = [a for a in cfg.alignments if a not in ("mean", "ot")]
    if bad or not cfg.alignments:
        raise MlxInterpError(f"alignments {bad or list(cfg.alignments)} not allowed; use 'mean' and/or 'ot'")
    if cfg.n_matched < 0 or cfg.n_uniform < 0:
        raise MlxInterpError(f"n_matched={cfg.n_matched}, n_uniform={cfg.n_uniform}: give whole numbers >= 0")
    layers = layers_at(cfg.layer_fracs, hm.info.n_layers)
    ks = [k for k in cfg.ks if k < hm.info.d_model]
    if not ks:
        raise MlxInterpError(f"ks={cfg.ks}: no k below d_model={hm.info.d_model}")
    bases = {(l, k): z_basis(hm, l, k) for l in layers for k in ks}
    align0 = "mean" if "mean" in cfg.alignments else cfg.alignments[0]
    primary = {"layer": layers[0], "k": max(ks), "align": align0}
    grid = _grid(layers, ks, cfg.alignments, primary, cfg.ot_everywhere)
    conds = _conditions(grid, primary, cfg.n_matched, cfg.n_uniform)
    pairs = load_pairs(cfg.n)
    ctx.log(f"layers {layers}, k {ks}, {len(conds)} rows x {len(pairs)} pairs, {cfg.max_tokens} tokens each")
    items = ctx.map("pairs", pairs, lambda p: _patch_pair(hm, p, conds, bases, cfg.max_tokens, primary,
                                                        ctx.rng_for("controls", p["id"])))
    stats = {c["name"]: _condition_stats(items, c["name"], cfg.seed) for c in conds
             if c["kind"] not in ("none", *CONTROL_KINDS)}
    verdicts = {f"L{l} k={k} {a}": _verdict(stats, l, k, a, cfg.seed, items) for l, k, a in grid}
    main = f"L{primary['layer']} k={primary['k']} {primary['align']}"
    controls = _control_stats(items, main, cfg.seed) if cfg.n_matched or cfg.n_uniform else None
    energy = _energy_stats(items, main, primary["k"], hm.info.d_model, cfg.seed)
    table = _table(items, primary["layer"], primary["k"], primary["align"])
    io.atomic_write_text(ctx.out_dir / "table.md", table)
    prereg = _prereg(verdicts[main], controls)
    s = Summary()
    s.add("layers", "layers", layers)
    s.add("pairs", "pairs", len(pairs))
    s.add("primary_config", "primary config (fixed in advance from the source)", main)
    for name in ("Z", "Zperp", "full"):
        st = stats[f"{name} L{primary['layer']}" + ("" if name == "full" else f" k={primary['k']}") + f" {primary['align']}"]
        s.add(f"{name.lower()}.answer_change", f"{name}-patch answer change [95% Wilson CI]", _pct_text(st["answer_change"]))
        s.add(f"{name.lower()}.language_en", f"{name}-patch output English [95% Wilson CI]", _pct_text(st["language_en"]))
        s.add(f"{name.lower()}.language_changed", f"{name}-patch output language changed [95% Wilson CI]",
              _pct_text(st["language_changed"]))
    s.add("z_minus_zperp.answer_change", "Z minus Z-perp answer change, paired over pairs [95% CI]",
          verdicts[main]["answer_change_Z_minus_Zperp"])
    s.add("z_energy_share.patched_difference", "share of the patched difference's energy in Z (mean over pairs) [95% CI]",
          energy["Z"]["share"])
    s.add("z_energy_ratio_to_chance.patched_difference", "the same share / chance k/d [95% CI]", energy["Z"]["ratio_to_chance"])
    s.add("z_energy_share.english_residual", "share of the English residual's energy in Z (mean over pairs) [95% CI]",
          energy["residual_in_Z"]["share"])
    s.add("z_energy_ratio_to_chance.english_residual", "the same share / chance k/d [95% CI]",
          energy["residual_in_Z"]["ratio_to_chance"])
    if controls:
        for key in ("R", "Rperp", "U"):
            if controls.get(key):
                s.add(f"{key.lower()}.answer_change", f"{_CONTROL_LABEL[key]} answer change, mean over pairs of the "
                      "per-pair rate [95% CI]", controls[key]["answer_change"])
        for key in ("Z_minus_R", "Zperp_minus_Rperp", "Z_minus_U"):
            if controls.get(key):
                s.add(f"{key.lower()}.answer_change", f"{key.replace('_', ' ')} answer change, paired over pairs [95% CI]",
                      controls[key]["answer_change"])
        if controls.get("U"):
            s.add("u_energy_share.patched_difference", "uniformly random subspaces: share of the patched difference's "
                  "energy (mean over pairs) [95% CI]", energy["U"]["share"])
    s.add("baseline_correct", "baseline correct (en, zh) [95% Wilson CI]",
          {"en": _pct_text(_rate(items, lambda i: i["rows"]["none"]["correct"])),
           "zh": _pct_text(_rate(items, lambda i: i["zh_baseline"]["correct"]))})
    s.add("verdicts", "verdicts", {k: v["verdict"] for k, v in verdicts.items()})
    s.add("prereg", "pre-registered checks", {k: v["verdict"] for k, v in prereg["checks"].items()})
    _patching_figure(stats, controls, grid, main, ctx)
    return {**s.to_result(), "layers": layers, "ks": ks, "max_tokens": cfg.max_tokens, "primary": primary,
            "conditions": conds, "stats": stats, "verdicts": verdicts, "controls": controls, "energy": energy,
            "prereg": prereg, "table_primary": table,
            "design": {"choices": "layers, k, alignment and the primary config are the source's, fixed before any run; "
                                  "nothing is selected on these pairs, so every pair is a report unit",
                       "selection_ids": [], "report_ids": [i["id"] for i in items]},
            "items": items,
            "definitions": {
                "patch site": "blocks.{l}.hook_resid_pre of the English run, prompt positions after BOS, when='prompt'",
                "Z-patch": "h_en <- P_Zperp h_en + P_Z src", "Zperp-patch": "h_en <- P_Z h_en + P_Zperp src",
                "full-patch": "h_en <- src",
                "src (mean)": "mean over Chinese content tokens of h_zh, broadcast to every English position",
                "src (ot)": "sum_s pi[s,t]/b_t h_zh[s], pi = ot.emd plan (uniform marginals, squared-Euclidean cost on h)",
                "patched difference": "D = src - h_en over the English content tokens; a B-patch adds P_B D",
                "energy_share": "|D P_B|_F^2 / |D|_F^2 for the patched subspace B (Z, R, U; 1 - that for the perp patches); "
                                "ratio_to_chance divides by k/d, the expected share of a uniformly random k-subspace",
                "R (energy-matched)": "span of W + t G orthonormalised: W k random directions orthogonal to D's rows, G k "
                                      "random directions in D's row space, t solved so the energy share equals Z's on that pair",
                "U (uniform)": "a uniformly random k-dim subspace (mlxinterp.analysis.subspace.random_basis)",
                "control rates": "per pair, the mean outcome over its draws; intervals over pairs (mean_ci), Z minus "
                                 "control paired by pair (paired_diff_ci)",
                "extracted answer": "first non-empty line of the generation; arithmetic: its last number; factual: the "
                                    "canonical answer when any accepted alias occurs in that line, else the line itself",
                "language": "CJK share of CJK+Latin letters in the whole generation: en < 0.2 <= mixed <= 0.8 < zh",
                "answer_change": "extracted answer differs from the unpatched English run's",
                "language_changed": "language label differs from the unpatched English run's"}}


_CONTROL_LABEL = {"R": "energy-matched random R-patch", "Rperp": "energy-matched R-perp patch",
                  "U": "uniformly random k-subspace patch"}


def _grid(layers, ks, alignments, primary: dict, everywhere: bool) -> list[tuple[int, int, str]]:
    """(layer, k, alignment) of every Z / Z-perp pair of conditions: the first alignment everywhere, the others
    at the primary layer and k only unless `everywhere`."""
    return [(l, k, a) for l in layers for a in alignments for k in ks
            if everywhere or a == alignments[0] or (l == primary["layer"] and k == primary["k"])]


def _conditions(grid, primary: dict, n_matched: int, n_uniform: int) -> list[dict]:
    out = [{"name": "none", "kind": "none", "layer": None, "k": None, "align": None}]
    for l, a in dict.fromkeys((l, a) for l, _, a in grid):
        out.append({"name": f"full L{l} {a}", "kind": "full", "layer": l, "k": None, "align": a})
        for _, k, _ in [g for g in grid if g[0] == l and g[2] == a]:
            for kind in ("Z", "Zperp"):
                out.append({"name": f"{kind} L{l} k={k} {a}", "kind": kind, "layer": l, "k": k, "align": a})
    main = f"L{primary['layer']} k={primary['k']} {primary['align']}"
    for kind, count in (("R", n_matched), ("Rperp", n_matched), ("U", n_uniform)):
        out += [{"name": f"{kind} {main} #{j}", "kind": kind, "layer": primary["layer"], "k": primary["k"],
                 "align": primary["align"], "draw": j} for j in range(count)]
    return out


def matched_basis(D: np.ndarray, k: int, share: float, rng: np.random.Generator, tol: float = 1e-3) -> np.ndarray:
    """A random k-dim subspace (orthonormal rows) holding `share` of D's energy: |D B^T|^2 / |D|^2 = share.

    B = rows of QR(W + t G): W k random directions orthogonal to D's row space (share 0), G k random
    directions inside it (share 1 once k >= rank D); t is found by bisection on log t, so the energy is
    spread over D's row space at random, like a random subspace of that size would, and matches Z's.
    """
    D = np.asarray(D, np.float64)
    d = D.shape[1]
    _, sv, Vt = np.linalg.svd(D, full_matrices=False)
    U = Vt[sv > sv[0] * 1e-10][: d - k]  # D's row space (its top d - k directions when it is wider), r x d
    W = rng.normal(size=(k, d))
    W -= (W @ U.T) @ U
    G = rng.normal(size=(k, len(U))) @ U
    total = float((D ** 2).sum())

    def basis(t: float) -> np.ndarray:
        return np.linalg.qr((W + t * G).T)[0].T

    def energy(t: float) -> float:
        return float(((D @ basis(t).T) ** 2).sum() / total)

    lo, hi = -12.0, 12.0
    if not energy(10 ** lo) <= share <= energy(10 ** hi):
        raise MlxInterpError(f"matched_basis: share {share:.3g} is outside the reachable [{energy(10 ** lo):.3g}, "
                             f"{energy(10 ** hi):.3g}]")
    for _ in range(80):
        mid = (lo + hi) / 2
        e = energy(10 ** mid)
        if abs(e - share) <= tol * max(share, 1e-12):
            break
        lo, hi = (mid, hi) if e < share else (lo, mid)
    return basis(10 ** mid)


def _patch_pair(hm: HookedModel, pair: dict, conds: list[dict], bases: dict, max_tokens: int, primary: dict,
                rng: np.random.Generator) -> dict:
    """Generate every condition for one pair in one batch: one Fn tap per patched layer, one row per condition."""
    en, zh = prompt(pair, "en"), prompt(pair, "zh")
    a_en, a_zh = activations(hm, en), activations(hm, zh)
    s, T_en = a_en["start"], a_en["resid"].shape[1]
    d = hm.info.d_model
    taps, ot_info, energy = {}, {}, {}
    kmax = max([len(b) for b in bases.values()] + [c["k"] or 0 for c in conds])
    for l in sorted({c["layer"] for c in conds if c["layer"] is not None}):
        h_en, h_zh = content(a_en, l), content(a_zh, l)
        plan = S.ot_plan(h_zh, h_en)
        src = {"mean": np.broadcast_to(h_zh.mean(0), h_en.shape), "ot": S.ot_transport(h_zh, plan)}
        ot_info[str(l)] = {"plan_entropy_ratio": float(-(plan[plan > 0] * np.log(plan[plan > 0])).sum() / np.log(plan.size)),
                           "mean_vs_ot_src_cos": float(np.mean(np.sum(src["mean"] * src["ot"], 1) / (
                               np.linalg.norm(src["mean"], axis=1) * np.linalg.norm(src["ot"], axis=1))))}
        ctrl = {}
        if l == primary["layer"]:
            D = src[primary["align"]] - h_en
            Z = bases[(l, primary["k"])]
            z_share = float(((D @ Z.T) ** 2).sum() / (D ** 2).sum())
            energy["residual_in_Z"] = float(S.energy_fraction(h_en, Z).mean())
            for c in conds:
                if c["kind"] in ("R", "U") and c["layer"] == l:
                    B = (matched_basis(D, c["k"], z_share, rng) if c["kind"] == "R" else S.random_basis(rng, c["k"], d))
                    ctrl[c["name"]] = B
                    if c["kind"] == "R":  # its complement patch uses the same draw
                        ctrl["Rperp" + c["name"][1:]] = B
        keep, sign, add, V = [], [], [], []
        for c in conds:
            Vb = np.zeros((kmax, d))
            if c["layer"] != l:  # untouched row
                keep.append(1.0), sign.append(0.0), add.append(np.zeros((T_en - s, d)))
            elif c["kind"] == "full":
                keep.append(0.0), sign.append(0.0), add.append(src[c["align"]])
            else:
                B = ctrl[c["name"]] if c["kind"] in CONTROL_KINDS else bases[(l, c["k"])]
                Vb[: len(B)] = B
                P, Pp = S.projectors(B)
                z, zp = src[c["align"]] @ P, src[c["align"]] @ Pp
                Dc = src[c["align"]] - h_en
                inside = float(((Dc @ B.T) ** 2).sum() / (Dc ** 2).sum())
                if c["kind"] in ("Z", "R", "U"):  # h <- h - P_B h + P_B src
                    keep.append(1.0), sign.append(-1.0), add.append(z)
                    energy[c["name"]] = inside
                else:  # h <- P_B h + P_Bperp src
                    keep.append(0.0), sign.append(1.0), add.append(zp)
                    energy[c["name"]] = 1.0 - inside
            V.append(Vb)
        full_add = np.zeros((len(conds), T_en, d), np.float32)
        full_add[:, s:] = np.stack(add)
        taps[H.resid_pre(l)] = T.Fn(_row_patch(np.array(keep), np.array(sign), np.stack(V), full_add, T_en),
                                    positions=list(range(s, T_en)), when="prompt")
    gens = hm.generate_batch([en] * len(conds), max_tokens=max_tokens, taps=taps)
    zh_gen = hm.generate_batch([zh], max_tokens=max_tokens)[0]
    rows = {c["name"]: _score(g.text, pair) for c, g in zip(conds, gens)}
    base = rows["none"]
    for name, r in rows.items():
        r["answer_change"] = r["answer"] != base["answer"]
        r["language_changed"] = r["language"] != base["language"]
        if name in energy:
            r["energy_share"] = energy[name]
    return {"id": pair["id"], "kind": pair["kind"], "gold": pair["answer"], "tokens_en": T_en,
            "tokens_zh": a_zh["resid"].shape[1], "ot": ot_info, "residual_energy_share_in_Z": energy.get("residual_in_Z"),
            "zh_baseline": _score(zh_gen.text, pair), "rows": rows}


def _row_patch(keep, sign, V, add, T_len):
    """new[b] = keep[b] * h + sign[b] * (h V_b^T) V_b + add[b, pos]  (prompt positions; generated ones pass through).

    `add` is indexed by each column's position in the sequence (ctx.seq_pos), so the patch is the
    same however the prompt is split into forwards (generation fills the cache with all but the
    last prompt token, then runs that token alone).
    """
    keep_m = mx.array(keep.astype(np.float32))[:, None, None]
    sign_m = mx.array(sign.astype(np.float32))[:, None, None]
    V_m, add_m = mx.array(V.astype(np.float32)), mx.array(add)
    Vt = V_m.transpose(0, 2, 1)

    def fn(a, ctx):
        pos = np.asarray(ctx.seq_pos)
        if a.shape[0] != keep_m.shape[0] or pos.shape[0] != a.shape[0] or not (pos == pos[0]).all():
            raise MlxInterpError(f"row patch built for {keep_m.shape[0]} identical unpadded rows got a chunk of shape "
                                 f"{tuple(a.shape)}")
        cols = pos[0]
        if not (cols < T_len).any():
            return a  # a generated token: the tap is prompt-only
        idx = mx.array(np.clip(cols, 0, T_len - 1).astype(np.int32))
        x = a.astype(mx.float32)
        return (keep_m * x + sign_m * ((x @ Vt) @ V_m) + add_m[:, idx]).astype(a.dtype)

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


def _rate(items: list[dict], pick) -> dict:
    """Wilson interval of a 0/1 outcome over pairs."""
    v = [bool(pick(i)) for i in items]
    return proportion_ci(sum(v), len(v))


def _condition_stats(items: list[dict], name: str, seed: int) -> dict:
    """Rates of one condition over pairs (Wilson), and its correctness change vs the unpatched run (paired)."""
    rows = [i["rows"][name] for i in items]
    base = [i["rows"]["none"] for i in items]
    rate = lambda f: proportion_ci(sum(bool(f(r)) for r in rows), len(rows))  # noqa: E731
    return {"answer_change": rate(lambda r: r["answer_change"]),
            "language_changed": rate(lambda r: r["language_changed"]),
            "language_en": rate(lambda r: r["language"] == "en"),
            "correct": rate(lambda r: r["correct"]),
            "correct_change_vs_none": paired_binary_diff_ci(
                [float(r["correct"]) - float(b["correct"]) for r, b in zip(rows, base)], seed=seed)}


def _per_pair_control(items: list[dict], kind: str, main: str, key: str) -> np.ndarray:
    """Per pair: the mean outcome `key` over that pair's draws of control `kind` (NaN when it has none)."""
    out = []
    for i in items:
        v = [float(r[key]) for name, r in i["rows"].items() if name.startswith(f"{kind} {main} #")]
        out.append(np.mean(v) if v else np.nan)
    return np.array(out)


def _control_stats(items: list[dict], main: str, seed: int) -> dict:
    """Controls at the primary config: per-pair random rates (mean over draws), their mean over pairs, and
    Z (Z-perp) minus the energy-matched R (R-perp) and Z minus the uniform U, paired by pair."""
    out: dict = {}
    own = {k: {key: np.array([float(i["rows"][f"{k} {main}"][key]) for i in items])
               for key in ("answer_change", "language_changed")} for k in ("Z", "Zperp")}
    for kind in CONTROL_KINDS:
        per = {key: _per_pair_control(items, kind, main, key) for key in ("answer_change", "language_changed")}
        if np.isnan(per["answer_change"]).all():
            continue
        draws = sum(1 for i in items for name in i["rows"] if name.startswith(f"{kind} {main} #"))
        out[kind] = {"draws": draws, **{key: mean_ci(v, seed=seed) for key, v in per.items()}, "per_pair": per}
    for name, a, b in (("Z_minus_R", "Z", "R"), ("Zperp_minus_Rperp", "Zperp", "Rperp"), ("Z_minus_U", "Z", "U")):
        if b in out:
            out[name] = {key: paired_diff_ci(own[a][key], out[b]["per_pair"][key], seed=seed)
                         for key in ("answer_change", "language_changed")}
    return out


def _energy_stats(items: list[dict], main: str, k: int, d: int, seed: int) -> dict:
    """Energy share of the patched difference in each patched subspace (mean over pairs) and that share / (k/d).

    The share and its ratio to chance are separate fields: a ratio of 0.01 at k/d = 0.078 is a share of
    0.0008, not 1 %.
    """
    chance = k / d

    def both(values) -> dict:
        v = np.asarray(values, np.float64)
        return {"share": mean_ci(v, seed=seed), "ratio_to_chance": mean_ci(v / chance, seed=seed)}

    out = {"chance": chance, "Z": both([i["rows"][f"Z {main}"]["energy_share"] for i in items]),
           "Zperp": both([i["rows"][f"Zperp {main}"]["energy_share"] for i in items]),
           "residual_in_Z": both([i["residual_energy_share_in_Z"] for i in items])}
    for kind in CONTROL_KINDS:
        per = _per_pair_control(items, kind, main, "energy_share") if any(
            n.startswith(f"{kind} {main} #") for n in items[0]["rows"]) else None
        if per is not None:
            out[kind] = both(per)
    return out


def _verdict(stats: dict, l: int, k: int, a: str, seed: int, items: list[dict]) -> dict:
    """The Qwen2.5-3B subspace notes' criteria. Success: Z changes answers (CI > 0) while >= 80 % stay English, and Z-perp
    changes the language (CI > 0) while changing <= 20 % of answers. Partial: Z changes answers more
    than Z-perp (paired CI of the difference > 0). Null: that CI contains 0; 'reversed' if it lies below."""
    zs, zp, full = stats[f"Z L{l} k={k} {a}"], stats[f"Zperp L{l} k={k} {a}"], stats[f"full L{l} {a}"]
    diff = paired_binary_diff_ci([float(i["rows"][f"Z L{l} k={k} {a}"]["answer_change"])
                                  - float(i["rows"][f"Zperp L{l} k={k} {a}"]["answer_change"]) for i in items], seed=seed)
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


def _prereg(verdict: dict, controls: dict | None) -> dict:
    """The pre-registered checks (mlxinterp/data/preregistration.toml) at the primary config."""
    prereg = preregistration.load()
    empty = {"estimate": None, "low": None, "high": None, "n": 0}
    vs_r = (controls or {}).get("Z_minus_R", {}).get("answer_change", empty)
    return {"sha256": prereg.sha256, "primary": prereg.primary("subspace_patching"),
            "checks": {"z_beats_zperp": prereg.check("subspace_patching", "z_beats_zperp",
                                                     verdict["answer_change_Z_minus_Zperp"]),
                       "z_beats_energy_matched": prereg.check("subspace_patching", "z_beats_energy_matched", vs_r)}}


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


def _patching_figure(stats, controls, grid, main, ctx) -> None:
    fig, axes = subplots(1, 2, figsize=(15, 4.4), sharey=True)
    for ax, metric, title in ((axes[0], "answer_change", "answer changed vs unpatched"),
                              (axes[1], "language_changed", "output language changed vs unpatched")):
        labels, est, lo, hi, colors = [], [], [], [], []
        for l, a in dict.fromkeys((l, a) for l, _, a in grid):
            ks = [k for gl, k, ga in grid if gl == l and ga == a]
            for name, color in ([(f"Z L{l} k={k} {a}", "tab:blue") for k in ks]
                                + [(f"Zperp L{l} k={k} {a}", "tab:orange") for k in ks]
                                + [(f"full L{l} {a}", "tab:grey")]):
                c = stats[name][metric]
                labels.append(name), est.append(c["estimate"]), lo.append(c["low"]), hi.append(c["high"]), colors.append(color)
        for kind, color in (("R", "tab:cyan"), ("Rperp", "tab:olive"), ("U", "tab:purple")):
            if controls and controls.get(kind):
                c = controls[kind][metric]
                labels.append(f"{kind} {main} (mean of {controls[kind]['draws']} draws)")
                est.append(c["estimate"]), lo.append(c["low"]), hi.append(c["high"]), colors.append(color)
        est, lo, hi = map(np.array, (est, lo, hi))
        ax.bar(range(len(labels)), est, yerr=[est - lo, hi - est], color=colors, capsize=2)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
        ax.set(title=f"{title} (95% CI; R: energy-matched random, U: uniform random)", ylim=(0, 1.05))
    fig.tight_layout()
    ctx.save_figure("subspace_patching", fig)


def _pct_text(ci: dict) -> str:
    return format_interval(ci, ".0f", pct=True)

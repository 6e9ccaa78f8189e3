"""Cross-lingual subspace study (seed 001, issue 7): is the attention kernel's Z subspace causal?

Five experiments over paired English / Chinese prompts (data/crosslingual/pairs.json):

- `subspace_structure`: per layer, the Z mask (top-k right singular vectors of the stacked
  multi-head attention kernel, mlxinterp.analysis.subspace), each head's effective rank, adjacent-layer
  subspace similarity, and how much of the MLP's output lands in Z vs chance (k/d).
- `subspace_patching` (experiment A): patch the English run's residual (hook_resid_pre of the
  layer, i.e. what that layer's attention reads) with Chinese content in Z, in Z-perp, or in full,
  aligned by mean broadcast or per-token optimal transport; greedy generation; answer change,
  output language and correctness per condition, against seed 001's success / partial / null criteria.
- `update_decomposition` (B): R(l) = |P_Z mean(dh_l)| / |P_Zperp mean(dh_l)| per layer, per language,
  against random subspaces of the same k.
- `ard_mmd` (C): ARD-RBF lengthscales fitted to the two languages' token clouds with an L1 penalty
  on inverse lengthscales (Adam, mx.grad, mx.compile): "power" maximises the biased MMD^2 (selects
  language-discriminating coordinates); "seed" minimises the unbiased MMD^2 as seed 001 specifies (degenerate).
- `linear_bridge` (D): least-squares map between the languages' Z-projected means.

Layers are given as fractions of depth: seed 001's L32 / L33 of Qwen2.5-3B's 36 layers are
32/35 and 33/35, which map back to exactly 32 and 33 on that model. The BOS position (identical
in both languages at every layer, and an outlier in norm) is left out of every mean, cloud and patch.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlxinterp.tasks import data
from mlxinterp.core import io
from mlxinterp.analysis import subspace as S
from mlxinterp.core import taps as T
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.analysis.stats import bootstrap_ci
from mlxinterp.suite import experiment

PAIRS_FILE = "crosslingual/pairs.json"
SEED_FRACS = (32 / 35, 33 / 35)  # seed 001's L32 (approach) and L33 (bottleneck) of 36 layers
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")
_NUM = re.compile(r"-?\d+(?:\.\d+)?")


# ------------------------------------------------------------------ shared pieces


def load_pairs(n: int | None = None) -> list[dict]:
    """The prompt pairs, arithmetic and factual interleaved so any prefix mixes both kinds."""
    raw = data.load_json(PAIRS_FILE)
    kinds = {}
    for p in raw["pairs"]:
        kinds.setdefault(p["kind"], []).append(p)
    groups = list(kinds.values())
    mixed = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]
    if n is not None and not 2 <= n <= len(mixed):
        raise MlxInterpError(f"n={n} pairs requested; data/{PAIRS_FILE} has {len(mixed)} (need >= 2)")
    return mixed[:n] if n else mixed


def prompt(pair: dict, lang: str) -> str:
    return data.load_json(PAIRS_FILE)["templates"][lang].format(q=pair[lang])


def layers_at(fracs, n_layers: int) -> list[int]:
    """Layer indices round(f * (L - 1)); colliding layers are moved down so they stay distinct."""
    bad = [f for f in fracs if not 0 <= f <= 1]
    if bad:
        raise MlxInterpError(f"layer fractions {bad} must lie in [0, 1] (fractions of depth)")
    out: list[int] = []
    for f in sorted(fracs, reverse=True):
        l = int(round(f * (n_layers - 1)))
        while l in out and l > 0:
            l -= 1
        out.append(l)
    return sorted(set(out))


_ACTS: dict[tuple, dict] = {}


def activations(hm, text: str) -> dict:
    """Residual stream before every block plus the final output ([L+1, T, d]) and MLP outputs ([L, T, d]).

    Cached per (model, prompt) for the process, so the five experiments share one forward per prompt.
    `start` is the first content position (1 when the prompt starts with BOS).
    """
    key = (hm.info.weights_hash, hm.info.spec, text)
    if key not in _ACTS:
        L = hm.info.n_layers
        names = [f"blocks.{i}.hook_resid_pre" for i in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]
        names += [f"blocks.{i}.hook_mlp_out" for i in range(L)]
        _, cache = hm.run_with_cache(text, names=names)
        grab = lambda n: np.array(cache[n][0].astype(mx.float32))  # noqa: E731
        resid = np.stack([grab(n) for n in names[: L + 1]])
        mlp = np.stack([grab(n) for n in names[L + 1 :]])
        ids = hm.tokens(text).ids[0].tolist()
        start = 1 if hm.info.bos_token_id is not None and ids[0] == hm.info.bos_token_id else 0
        _ACTS[key] = {"resid": resid, "mlp": mlp, "start": start}
    return _ACTS[key]


_GRAMS: dict[tuple, np.ndarray] = {}


def gram(hm, layer: int, parts=S.KERNEL_PARTS) -> np.ndarray:
    """The stacked kernel's Gram matrix of a layer, computed once per process (the experiments share it)."""
    key = (hm.info.weights_hash, hm.info.spec, layer, tuple(parts))
    if key not in _GRAMS:
        _GRAMS[key] = S.kernel_gram(S.head_weights(hm, layer), parts)
    return _GRAMS[key]


_EIG: dict[tuple, np.ndarray] = {}


def z_basis(hm, layer: int, k: int, parts=S.KERNEL_PARTS) -> np.ndarray:
    """V_Z (k x d) of a layer, from one cached eigendecomposition of its kernel Gram matrix."""
    key = (hm.info.weights_hash, hm.info.spec, layer, tuple(parts))
    if key not in _EIG:
        _EIG[key] = S.z_basis_from_gram(gram(hm, layer, parts), hm.info.d_model)
    if not 0 < k <= hm.info.d_model:
        raise MlxInterpError(f"k={k} must be between 1 and d_model={hm.info.d_model}")
    return _EIG[key][:k].copy()


def _content(acts: dict, layer: int) -> np.ndarray:
    return acts["resid"][layer, acts["start"] :].astype(np.float64)


def _pct(ci: dict) -> str:
    if ci.get("estimate") is None:
        return "n/a"
    return f"{100 * ci['estimate']:.0f}% [{100 * ci['low']:.0f}, {100 * ci['high']:.0f}]"


def _num(ci: dict, fmt: str = "+.3f") -> str:
    if ci.get("estimate") is None:
        return "n/a"
    return f"{ci['estimate']:{fmt}} [{ci['low']:{fmt}}, {ci['high']:{fmt}}]"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ------------------------------------------------------------------ structure


@dataclass
class StructureConfig:
    n: int = 8  # prompt pairs whose MLP outputs are projected
    seed: int = 0
    ks: tuple = (20, 50)
    parts: tuple = S.KERNEL_PARTS


@experiment("subspace_structure", StructureConfig)
def subspace_structure(hm, cfg: StructureConfig, ctx) -> dict:
    """Attention-kernel Z mask per layer: head effective ranks, adjacent similarity, MLP output in Z vs chance."""
    L, d = hm.info.n_layers, hm.info.d_model
    ks = [k for k in cfg.ks if k < d]
    texts = [prompt(p, lang) for p in load_pairs(cfg.n) for lang in ("en", "zh")]
    records = ctx.map("layers", list(range(L)), lambda l: _structure_layer(hm, l, ks, cfg.parts, texts))
    kmain = max(ks)
    sim = [r["similarity_next"][str(kmain)] for r in records[:-1]]
    drops = [sim[i] - sim[i + 1] for i in range(len(sim) - 1)]
    mlp_same = [r["mlp_energy_ratio_same"][str(kmain)]["estimate"] for r in records]
    summary = {
        "kernel": "stacked per-head QK, QK^T and OV blocks (unit Frobenius), norm gain folded in; Z = top-k right singular vectors",
        f"adjacent similarity k={kmain}: max (layers)": f"{max(sim):.3f} (L{int(np.argmax(sim))}-L{int(np.argmax(sim)) + 1}); chance {kmain / d:.3f}",
        f"adjacent similarity k={kmain}: median": round(float(np.median(sim)), 3),
        "largest similarity drop (layers)": f"{max(drops):.3f} at L{int(np.argmax(drops)) + 1}-L{int(np.argmax(drops)) + 2}" if drops else "n/a",
        f"MLP output energy in own layer's Z / chance, k={kmain}: min": f"{min(mlp_same):.2f} at L{int(np.argmin(mlp_same))}",
        f"MLP output energy in own layer's Z / chance, k={kmain}: max": f"{max(mlp_same):.2f} at L{int(np.argmax(mlp_same))}",
        "QK effective rank per head: mean over layers and heads": round(float(np.mean([r["eff_rank_qk"] for r in records])), 1),
        "head_dim": hm.info.head_dim,
    }
    _structure_figure(records, ks, d, hm.info.head_dim, ctx)
    return {"summary": summary, "d_model": d, "ks": ks, "prompts": len(texts), "layers": records,
            "definitions": {
                "effective_rank": "exp(entropy of normalised singular values) of each head's QK_h and OV_h (max head_dim)",
                "similarity_next": "|V_l V_{l+1}^T|_F^2 / k (mean squared cosine of principal angles); chance k/d",
                "mlp_energy_ratio": "mean over prompts of mean over content tokens of |P_Z m|^2/|m|^2 for hook_mlp_out m, "
                                    "divided by k/d; 'same' uses layer l's Z, 'next' layer l+1's (the first attention "
                                    "that reads it); resid_energy_ratio is the same for hook_resid_pre, as a reference"}}


def _structure_layer(hm, l: int, ks: list[int], parts, texts: list[str]) -> dict:
    L, d = hm.info.n_layers, hm.info.d_model
    w = S.head_weights(hm, l)
    g = gram(hm, l, parts)
    sv = S.kernel_singular_values(w)
    spectrum = np.sqrt(np.clip(np.linalg.eigvalsh(g)[::-1], 0, None))
    V = {k: z_basis(hm, l, k, parts) for k in ks}
    Vn = {k: z_basis(hm, l + 1, k, parts) for k in ks} if l + 1 < L else None
    acts = [activations(hm, t) for t in texts]

    def ratio(basis, which, layer_idx):
        per_prompt = [S.energy_fraction(a[which][layer_idx, a["start"]:], basis).mean() for a in acts]
        return bootstrap_ci(np.array(per_prompt) / (len(basis) / d))

    return {
        "layer": l,
        "eff_rank_qk_per_head": [S.effective_rank(s) for s in sv["qk"]],
        "eff_rank_ov_per_head": [S.effective_rank(s) for s in sv["ov"]],
        "eff_rank_qk": float(np.mean([S.effective_rank(s) for s in sv["qk"]])),
        "eff_rank_ov": float(np.mean([S.effective_rank(s) for s in sv["ov"]])),
        "eff_rank_qk_cv": float(np.std([S.effective_rank(s) for s in sv["qk"]]) / np.mean([S.effective_rank(s) for s in sv["qk"]])),
        "stacked_kernel_singular_values_top64": spectrum[:64],
        "stacked_kernel_eff_rank": S.effective_rank(spectrum),
        "similarity_next": {str(k): S.subspace_similarity(V[k], Vn[k]) for k in ks} if Vn else None,
        "mlp_energy_ratio_same": {str(k): ratio(V[k], "mlp", l) for k in ks},
        "mlp_energy_ratio_next": {str(k): ratio(Vn[k], "mlp", l) for k in ks} if Vn else None,
        "resid_energy_ratio": {str(k): ratio(V[k], "resid", l) for k in ks},
    }


def _structure_figure(records, ks, d, dh, ctx) -> None:
    plt = _plt()
    kmain = max(ks)
    x = [r["layer"] for r in records]
    fig, ax = plt.subplots(1, 4, figsize=(19, 3.8))
    for h in range(len(records[0]["eff_rank_qk_per_head"])):
        ax[0].plot(x, [r["eff_rank_qk_per_head"][h] for r in records], "o-", ms=3, alpha=0.6, label=f"QK head {h}" if h < 8 else None)
    ax[0].plot(x, [r["eff_rank_ov"] for r in records], "k--", label="OV (mean over heads)")
    ax[0].set(xlabel="layer", ylabel="effective rank", title=f"per-head kernel effective rank (max {dh})")
    ax[0].legend(fontsize=6)
    for k in ks:
        ax[1].plot(x[:-1], [r["similarity_next"][str(k)] for r in records[:-1]], "o-", label=f"k={k}")
        ax[1].axhline(k / d, ls=":", color="grey")
    ax[1].set(xlabel="layer l", ylabel="sim(Z_l, Z_l+1)", title="adjacent-layer Z similarity (dotted: chance k/d)")
    ax[1].legend(fontsize=7)
    for key, lab in (("mlp_energy_ratio_same", "MLP out in Z_l"), ("mlp_energy_ratio_next", "MLP out in Z_l+1"),
                     ("resid_energy_ratio", "resid_pre in Z_l")):
        rows = [r for r in records if r[key]]
        est = np.array([r[key][str(kmain)]["estimate"] for r in rows])
        lo = np.array([r[key][str(kmain)]["low"] for r in rows])
        hi = np.array([r[key][str(kmain)]["high"] for r in rows])
        ax[2].errorbar([r["layer"] for r in rows], est, yerr=[est - lo, hi - est], fmt="o-", ms=3, capsize=2, label=lab)
    ax[2].axhline(1, color="grey", ls=":")
    ax[2].set(xlabel="layer", ylabel="energy share / chance (k/d)", yscale="log", title=f"energy in Z vs chance, k={kmain} (95% CI)")
    ax[2].legend(fontsize=7)
    for r in records[:: max(1, len(records) // 6)]:
        s = np.asarray(r["stacked_kernel_singular_values_top64"])
        ax[3].semilogy(s / s[0], label=f"L{r['layer']}")
    ax[3].set(xlabel="index", ylabel="singular value / largest", title="stacked kernel spectrum")
    ax[3].legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure("subspace_structure", fig)


# ------------------------------------------------------------------ patching (experiment A)


@dataclass
class PatchingConfig:
    n: int = 8  # prompt pairs (the full set has 48)
    seed: int = 0
    ks: tuple = (20, 50)
    layer_fracs: tuple = SEED_FRACS
    max_tokens: int = 12  # answers sit on the first line; <= 100
    alignments: tuple = ("mean", "ot")


@experiment("subspace_patching", PatchingConfig)
def subspace_patching(hm, cfg: PatchingConfig, ctx) -> dict:
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
    summary = {"layers": layers, "pairs": len(pairs), "primary config": main}
    for name in ("Z", "Zperp", "full"):
        st = stats[f"{name} L{layers[0]}" + ("" if name == "full" else f" k={max(ks)}") + " mean"]
        summary[f"{name}-patch answer change [95% CI]"] = _pct(st["answer_change"])
        summary[f"{name}-patch output English [95% CI]"] = _pct(st["language_en"])
    summary["baseline correct (en, zh)"] = (f"{np.mean([i['rows']['none']['correct'] for i in items]):.2f}, "
                                            f"{np.mean([i['zh_baseline']['correct'] for i in items]):.2f}")
    summary["verdicts"] = {k: v["verdict"] for k, v in verdicts.items()}
    _patching_figure(stats, layers, ks, cfg.alignments, ctx)
    return {"summary": summary, "layers": layers, "ks": ks, "max_tokens": cfg.max_tokens,
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


def _patch_pair(hm, pair: dict, conds: list[dict], bases: dict, max_tokens: int) -> dict:
    """Generate every condition for one pair in one batch: one Fn tap per patched layer, one row per condition."""
    en, zh = prompt(pair, "en"), prompt(pair, "zh")
    a_en, a_zh = activations(hm, en), activations(hm, zh)
    s, T_en = a_en["start"], a_en["resid"].shape[1]
    d = hm.info.d_model
    taps, ot_info = {}, {}
    for l in sorted({c["layer"] for c in conds if c["layer"] is not None}):
        h_en, h_zh = _content(a_en, l), _content(a_zh, l)
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
        taps[f"blocks.{l}.hook_resid_pre"] = T.Fn(_row_patch(np.array(keep), np.array(sign), np.stack(V), full_add, T_en),
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
    """Seed 001's criteria. Success: Z changes answers (CI > 0) while >= 80 % stay English, and Z-perp
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
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.2), sharey=True)
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


# ------------------------------------------------------------------ update decomposition (B)


@dataclass
class UpdateConfig:
    n: int = 48  # prompt pairs (all)
    seed: int = 0
    k: int = 50
    layer_fracs: tuple = SEED_FRACS  # the fixed Z basis is the first of these (seed: L32's, the "Rosetta stone")
    n_random: int = 16


@experiment("update_decomposition", UpdateConfig)
def update_decomposition(hm, cfg: UpdateConfig, ctx) -> dict:
    """Experiment B: R(l) = |P_Z mean dh_l| / |P_Zperp mean dh_l| per layer and language vs random subspaces."""
    d, L = hm.info.d_model, hm.info.n_layers
    zl = layers_at(cfg.layer_fracs, L)[0]  # the same layer experiment A calls its primary
    V = z_basis(hm, zl, cfg.k)
    rng = ctx.rng_for("random-bases")
    rand = [S.random_basis(rng, cfg.k, d) for _ in range(cfg.n_random)]
    items = ctx.map("pairs", load_pairs(cfg.n), lambda p: {lang: _update_ratios(activations(hm, prompt(p, lang)), V, rand)
                                                          for lang in ("en", "zh")})
    curves = {}
    for lang in ("en", "zh"):
        R = np.array([i[lang]["R"] for i in items])  # [N, L]
        Rr = np.array([i[lang]["R_random"] for i in items])
        curves[lang] = {"R": [bootstrap_ci(R[:, l], seed=cfg.seed) for l in range(L)],
                        "R_random": [bootstrap_ci(Rr[:, l], seed=cfg.seed) for l in range(L)],
                        "R_over_random": [bootstrap_ci(R[:, l] / Rr[:, l], seed=cfg.seed) for l in range(L)]}
    diff = [bootstrap_ci(np.array([i["zh"]["R"][l] - i["en"]["R"][l] for i in items]), seed=cfg.seed) for l in range(L)]
    both = [(np.mean([c["R_over_random"][l]["estimate"] for c in curves.values()])) for l in range(L)]
    chance = float(np.sqrt(cfg.k / (d - cfg.k)))
    summary = {"Z basis": f"layer {zl}, k={cfg.k}", "chance R for a random k-subspace ~ sqrt(k/(d-k))": round(chance, 3),
               "max R/R_random (layer)": f"{max(both):.2f} (transition {int(np.argmax(both))}->{int(np.argmax(both)) + 1})",
               "min R/R_random (layer)": f"{min(both):.2f} (transition {int(np.argmin(both))}->{int(np.argmin(both)) + 1})",
               "transitions with R > 1 (en, zh)": (sum(c["estimate"] > 1 for c in curves["en"]["R"]), sum(c["estimate"] > 1 for c in curves["zh"]["R"])),
               "transitions where R_zh - R_en CI excludes 0": [l for l, c in enumerate(diff) if c["low"] is not None and (c["low"] > 0 or c["high"] < 0)],
               "pairs": len(items)}
    _update_figure(curves, zl, cfg.k, ctx)
    return {"summary": summary, "z_layer": zl, "k": cfg.k, "curves": curves, "R_zh_minus_en": diff, "items": items,
            "definition": "dh_l = resid_pre(l+1) - resid_pre(l) (resid_post for the last block), mean over content "
                          "tokens; R per prompt, then mean over prompts with a bootstrap CI; R_random is the mean R "
                          "over n_random uniformly random k-dim subspaces"}


def _update_ratios(acts: dict, V: np.ndarray, rand: list[np.ndarray]) -> dict:
    r = acts["resid"][:, acts["start"]:].astype(np.float64)
    delta = (r[1:] - r[:-1]).mean(1)  # [L, d]

    def ratio(B):
        inside = np.linalg.norm(delta @ B.T, axis=1)
        return inside / np.sqrt(np.maximum(np.linalg.norm(delta, axis=1) ** 2 - inside ** 2, 1e-30))

    return {"R": ratio(V), "R_random": np.mean([ratio(B) for B in rand], 0)}


def _update_figure(curves, zl, k, ctx) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for lang, color in (("en", "tab:blue"), ("zh", "tab:red")):
        c = curves[lang]["R"]
        x = np.arange(len(c))
        est = np.array([v["estimate"] for v in c])
        ax.fill_between(x, [v["low"] for v in c], [v["high"] for v in c], color=color, alpha=0.2)
        ax.plot(x, est, "o-", color=color, ms=3, label=f"R ({lang})")
        ax.plot(x, [v["estimate"] for v in curves[lang]["R_random"]], ":", color=color, label=f"random k-subspace ({lang})")
    ax.axhline(1, color="grey", lw=0.8)
    ax.set(xlabel="layer transition l -> l+1", ylabel="|P_Z mean dh| / |P_Zperp mean dh|", yscale="log",
           title=f"update decomposition in layer {zl}'s Z (k={k}); bands: 95% CI")
    ax.legend(fontsize=8)
    fig.tight_layout()
    ctx.save_figure("update_decomposition", fig)


# ------------------------------------------------------------------ ARD-MMD (C)

_PRIMARY_INIT = {"power": "uniform", "seed": "svd"}  # "power" starts uninformed so overlap with SVD-Z is not inherited
_OTHER_INIT = {"uniform": "svd", "svd": "uniform"}


@dataclass
class ARDConfig:
    n: int = 6  # prompt pairs in the objective (kept small for the suite's 10-minute budget)
    seed: int = 0
    layer_fracs: tuple = (0.5, *SEED_FRACS)  # full run: (0.25, 0.5, 0.75, *SEED_FRACS)
    objective: tuple = ("power", "seed")  # subset of mlxinterp.analysis.subspace.ARD_OBJECTIVES; "power" is the primary
    lambdas: tuple = (0.001, 0.01, 0.1)  # "seed" grid (seed 001's)
    power_lambdas: tuple = (0.01, 0.1, 0.3, 1.0)  # "power" grid: its MMD^2 sum is O(pairs), so the penalty needs larger lambda to bite
    steps: int = 500
    lr: float = 0.01
    tol: float = 1e-4
    k: int = 50  # SVD-Z used for the warm start and the overlap
    control_lambda: float | None = 0.01  # per layer and objective, one run from the other init; "power" also
    # gets one run on label-shuffled clouds (the MMD^2 a fit reaches when the languages are exchangeable)
    active_factor: float = 10.0  # coordinate j is selected (in D or Z) when ell_j < active_factor * sqrt(d) (standardised units)


def _ard_lambdas(cfg: ARDConfig, objective: str) -> tuple:
    return cfg.power_lambdas if objective == "power" else cfg.lambdas


def _ard_runs(cfg: ARDConfig, layers: list[int]) -> list[dict]:
    """Every (objective, layer, lambda, init, labels) fit: the lambda grid from the objective's primary init, plus controls."""
    objectives = [S.check_objective(o) for o in cfg.objective]
    if not objectives or len(set(objectives)) != len(objectives):
        raise MlxInterpError(f"objective={cfg.objective!r}: give a non-empty tuple without repeats from {tuple(S.ARD_OBJECTIVES)}")
    runs = []
    for obj in objectives:
        init = _PRIMARY_INIT[obj]
        runs += [{"objective": obj, "layer": l, "lambda": lam, "init": init, "labels": "true"}
                 for l in layers for lam in _ard_lambdas(cfg, obj)]
        if cfg.control_lambda is not None:
            runs += [{"objective": obj, "layer": l, "lambda": cfg.control_lambda, "init": _OTHER_INIT[init], "labels": "true"}
                     for l in layers]
            if obj == "power":
                runs += [{"objective": obj, "layer": l, "lambda": cfg.control_lambda, "init": init, "labels": "shuffled"}
                         for l in layers]
    return runs


@experiment("ard_mmd", ARDConfig)
def ard_mmd(hm, cfg: ARDConfig, ctx) -> dict:
    """Experiment C: ARD-RBF lengthscales fitted to en/zh token clouds with L1 on 1/ell (Adam, mx.grad, mx.compile).

    "power" (primary) maximises the biased MMD^2 minus the penalty: its short-lengthscale set D is a sparse set
    of language-discriminating coordinates, which seed 001's Z hypothesis predicts to be disjoint from SVD-Z.
    "seed" minimises the unbiased MMD^2 plus the penalty as seed 001 specifies; it is degenerate (its MMD^2
    goes negative and it does not converge) and is kept only so that finding is reproducible (BUGFIX 22).
    """
    d, L = hm.info.d_model, hm.info.n_layers
    layers = layers_at(cfg.layer_fracs, L)
    pairs = load_pairs(cfg.n)
    items = ctx.map("runs", _ard_runs(cfg, layers), lambda r: _ard_run(hm, r, pairs, cfg, ctx))
    tau = cfg.active_factor * np.sqrt(d)
    for it in items:
        it.update(_ard_selection(np.array(it["log_ell"]), (z_basis(hm, it["layer"], cfg.k) ** 2).sum(0), tau))
        it["n_shrunk"] = int((np.array(it["log_ell"]) < np.array(it["log_ell_init"])).sum())  # threshold-free companion
    main_l = layers_at(SEED_FRACS, L)[0]
    summary = {"layers": layers, "pairs": len(pairs), "selected if ell <": f"{cfg.active_factor:g} sqrt(d) = {tau:.0f} (standardised units)",
               "columns": "|set| (coordinates whose ell ended below its start), overlap with SVD-Z's top-|set| coordinates (chance |set|/d; P(X<=x), P(X>=x) hypergeometric), "
                          "sum MMD2 biased start->end, unbiased start->end, converged (steps, relative loss change "
                          f"over the last 100 steps vs tol {cfg.tol:g})"}
    summary.update({_ard_label(it): _ard_line(it) for it in items})
    summary[f"layer {main_l}: per-pair mean MMD2 change end - start, 95% bootstrap CI over {len(pairs)} pairs"] = \
        _ard_change_summary(items, main_l)
    contrast = _ard_shuffle_contrast(items, cfg.seed)
    summary["power, true minus shuffled labels: per-pair mean end MMD2, 95% bootstrap CI over pairs"] = {
        name: ("n/a: no true-label run at this lambda (control_lambda not in power_lambdas)" if ci is None
               else ", ".join(f"{e} {_num(ci[e], '+.4f')}" for e in S.MMD_ESTIMATORS)) for name, ci in contrast.items()}
    _ard_figure(items, main_l, tau, cfg, ctx)
    return {"summary": summary, "layers": layers, "runs": items, "shuffle_contrast": contrast, "standardisation":
            "each coordinate standardised by the pooled mean/std over both languages' content tokens of the pairs at that layer",
            "objective": {"power": "maximise sum over pairs of biased (V-statistic) ARD-RBF MMD^2 - lambda * sum_j 1/ell_j "
                                   "(plain MMD^2, not the MMD^2/std test-power ratio); primary; init uniform ell = sqrt(d)",
                          "seed": "minimise sum over pairs of unbiased ARD-RBF MMD^2 + lambda * sum_j 1/ell_j (seed 001 verbatim; "
                                  "degenerate: ell -> inf minimises both terms); init SVD warm start"},
            "controls": "per layer at control_lambda: the other init; for power also the languages' token labels shuffled "
                        "within each pair (same sizes), the MMD^2 reachable without a language difference"}


def _ard_clouds(hm, layer: int, pairs: list[dict], rng: np.random.Generator | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(zh, en) content-token clouds per pair, standardised by pooled stats; rng given: tokens re-split at random."""
    clouds = [(_content(activations(hm, prompt(p, "zh")), layer), _content(activations(hm, prompt(p, "en")), layer)) for p in pairs]
    pooled = np.concatenate([c for pair in clouds for c in pair])
    mu, sd = pooled.mean(0), pooled.std(0) + 1e-6
    out = []
    for x, y in clouds:
        if rng is not None:
            both = np.concatenate([x, y])[rng.permutation(len(x) + len(y))]
            x, y = both[: len(x)], both[len(x):]
        out.append(((x - mu) / sd, (y - mu) / sd))
    return out


def _ard_run(hm, run: dict, pairs: list[dict], cfg: ARDConfig, ctx) -> dict:
    t0 = time.perf_counter()
    l, d = run["layer"], hm.info.d_model
    rng = ctx.rng_for("shuffle", l) if run["labels"] == "shuffled" else None
    X, Y, wx, wy = S.pad_clouds(_ard_clouds(hm, l, pairs, rng))
    init = (S.svd_warm_start(z_basis(hm, l, cfg.k), np.sqrt(d)) if run["init"] == "svd"
            else np.full(d, np.log(np.sqrt(d))))
    tag = _ard_label(run)
    fit = S.fit_ard(X, Y, wx, wy, init, run["lambda"], objective=run["objective"], lr=cfg.lr, steps=cfg.steps, tol=cfg.tol,
                    on_log=lambda h: ctx.log(f"{tag} step {h['step']}: loss {h['loss']:.5f}, sum MMD2 {h['mmd2_sum']:.5f}")
                    if h["step"] % 250 == 0 or h["step"] == 1 else None)
    ctx.log(f"{tag}: {fit.steps} steps, converged {fit.converged}, {time.perf_counter() - t0:.1f} s")
    return {**run, "log_ell": np.round(fit.log_ell, 4), "log_ell_init": np.round(init, 4), "history": fit.history,
            "mmd2_start": fit.mmd2_start, "mmd2_end": fit.mmd2_end, **_ard_pair_records(fit, pairs, cfg.seed),
            "steps": fit.steps, "converged": fit.converged, "window_change": fit.window_change}


def _ard_pair_records(fit: S.ARDFit, pairs: list[dict], seed: int) -> dict:
    """Per-pair MMD^2 at the start and end lengthscales, and a bootstrap CI over pairs of the mean change (end - start).

    The objective is a sum over pairs, so one pair could carry the whole gain; the per-pair
    values and the CI over pairs show whether the change is shared.
    """
    records = [{"id": p["id"], **{f"{e}_{when}": float(v[i]) for e in S.MMD_ESTIMATORS
                                  for when, v in (("start", fit.mmd2_start_pairs[e]), ("end", fit.mmd2_end_pairs[e]))}}
               for i, p in enumerate(pairs)]
    ci = {e: bootstrap_ci(fit.mmd2_end_pairs[e] - fit.mmd2_start_pairs[e], seed=seed) for e in S.MMD_ESTIMATORS}
    return {"pairs": records, "mmd2_change_ci": ci}


def _ard_change_summary(items: list[dict], layer: int) -> dict:
    """Summary lines for one layer: mean per-pair MMD^2 change with its 95% CI over pairs, per run."""
    return {_ard_label(it): ", ".join(f"{e} {_num(it['mmd2_change_ci'][e], '+.4f')}" for e in S.MMD_ESTIMATORS)
            for it in items if it["layer"] == layer}


def _ard_shuffle_contrast(items: list[dict], seed: int) -> dict:
    """Per layer: per-pair end MMD^2 of the power fit on true labels minus the same fit on shuffled labels, CI over pairs.

    Same lambda and init, pairs matched by position: a gain that is a language difference, not
    the V-statistic's self-similarity, gives an interval above 0.
    """
    out = {}
    for sh in [it for it in items if it["labels"] == "shuffled"]:
        true = next((it for it in items if it["labels"] == "true" and it["layer"] == sh["layer"]
                     and it["objective"] == sh["objective"] and it["lambda"] == sh["lambda"] and it["init"] == sh["init"]), None)
        out[f"L{sh['layer']} lambda={sh['lambda']}"] = None if true is None else {  # None: control_lambda not in power_lambdas
            e: bootstrap_ci([t[f"{e}_end"] - u[f"{e}_end"] for t, u in zip(true["pairs"], sh["pairs"])], seed=seed)
            for e in S.MMD_ESTIMATORS}
    return out


def _ard_selection(log_ell: np.ndarray, z_energy: np.ndarray, tau: float) -> dict:
    """The selected set (ell < tau) against SVD-Z's top coordinates of the same size, with a hypergeometric null."""
    from scipy.stats import hypergeom

    d = len(log_ell)
    active = np.flatnonzero(np.exp(log_ell) < tau)
    a = len(active)
    top = set(np.argsort(-z_energy)[:a].tolist())
    x = len(top & set(active.tolist()))
    return {"n_active": int(a), "overlap_with_svd_top": float(x / a) if a else None, "overlap_chance": float(a / d),
            "overlap_p_low": float(hypergeom.cdf(x, d, a, a)) if a else None,
            "overlap_p_high": float(hypergeom.sf(x - 1, d, a, a)) if a else None,
            "svd_energy_in_active": float(z_energy[active].sum() / z_energy.sum()) if a else 0.0}


def _ard_label(it: dict) -> str:
    return (f"{it['objective']} L{it['layer']} lambda={it['lambda']} {it['init']}-init"
            + (" shuffled-labels" if it["labels"] == "shuffled" else ""))


def _ard_line(it: dict) -> str:
    ov = "-" if it["overlap_with_svd_top"] is None else (
        f"{it['overlap_with_svd_top']:.2f} (chance {it['overlap_chance']:.2f}; p {it['overlap_p_low']:.2g}, {it['overlap_p_high']:.2g})")
    s, e = it["mmd2_start"], it["mmd2_end"]
    change = "n/a" if it["window_change"] is None else f"{it['window_change']:.1e}"
    return (f"{it['n_active']} (shrunk below init: {it['n_shrunk']}), {ov}, biased {s['biased']:.4f}->{e['biased']:.4f}, unbiased {s['unbiased']:.4f}->{e['unbiased']:.4f}, "
            f"{it['converged']} ({it['steps']} steps, last-100-step change {change} of scale)")


def _ard_figure(items, main_l, tau, cfg, ctx) -> None:
    plt = _plt()
    objectives = [o for o in cfg.objective]
    fig, ax = plt.subplots(1, 1 + len(objectives), figsize=(5.5 * (1 + len(objectives)), 4))
    for obj, style in zip(objectives, ("o-", "s--")):
        for lam in _ard_lambdas(cfg, obj):
            rows = [it for it in items if it["objective"] == obj and it["lambda"] == lam
                    and it["init"] == _PRIMARY_INIT[obj] and it["labels"] == "true"]
            ax[0].plot([r["layer"] for r in rows], [r["n_active"] for r in rows], style, label=f"{obj} lambda={lam}")
    ax[0].set(xlabel="layer", ylabel="|D| (power) or |Z| (seed): coords with ell < tau", title="ARD selected-set size per layer")
    ax[0].legend(fontsize=7)
    for a, obj in zip(ax[1:], objectives):
        for it in [it for it in items if it["layer"] == main_l and it["objective"] == obj]:
            le = np.sort(np.array(it["log_ell"]) / np.log(10))
            a.plot(le, label=_ard_label(it).split(f"L{main_l} ")[1])
        a.axhline(np.log10(tau), color="grey", ls=":")
        a.set(xlabel="coordinate (sorted)", ylabel="log10 ell", title=f"{obj}: lengthscale spectrum, layer {main_l}")
        a.legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure("ard_mmd", fig)


# ------------------------------------------------------------------ linear bridge (D)


@dataclass
class BridgeConfig:
    n: int = 48
    seed: int = 0
    ks: tuple = (20, 50)
    layer_fracs: tuple = SEED_FRACS  # the first is used (experiment A's primary layer)
    n_shuffles: int = 20
    n_boot: int = 200  # bootstrap resamples of the pairs for the LOO R^2 CIs (bridge_loo_cis)


@experiment("linear_bridge", BridgeConfig)
def linear_bridge(hm, cfg: BridgeConfig, ctx) -> dict:
    """Experiment D: least-squares W* mapping English to Chinese Z-projected means; R^2, orthogonality, LOO R^2."""
    d = hm.info.d_model
    l = layers_at(cfg.layer_fracs, hm.info.n_layers)[0]
    ks = [k for k in cfg.ks if k < d]
    rng = ctx.rng_for("random-bases")
    bases = {k: {"Z": z_basis(hm, l, k), "random": S.random_basis(rng, k, d)} for k in ks}
    items = ctx.map("pairs", load_pairs(cfg.n), lambda p: _bridge_coords(hm, p, l, bases))
    perm_rng = ctx.rng_for("shuffles")
    perms = [perm_rng.permutation(len(items)) for _ in range(cfg.n_shuffles)]
    fits = {}
    for k in ks:
        for which in ("Z", "random"):
            E, C = _bridge_matrices(items, which, k)
            fits[f"{which} k={k}"] = {**bridge_fit(E, C), "loo_r2_shuffled_pairs": float(np.mean([loo_r2(E[p], C) for p in perms]))}
    # the refit diagnostic only where a resample's ~63% distinct pairs still outnumber k (elsewhere it is costly and moot)
    cis = {m: {k: bridge_loo_cis(*_bridge_matrices(items, "Z", k), *_bridge_matrices(items, "random", k), method=m,
                                 n_resamples=cfg.n_boot, seed=cfg.seed)
               for k in ks if m == "heldout" or 0.632 * len(items) > k} for m in BRIDGE_CI_METHODS}
    for m, per_k in cis.items():
        suffix = "" if m == "heldout" else f"_{m}"
        for k, ci in per_k.items():
            fits[f"Z k={k}"][f"loo_r2_ci{suffix}"], fits[f"random k={k}"][f"loo_r2_ci{suffix}"] = ci["Z"], ci["random"]
    summary = {"layer": l, "pairs": len(items)}
    for name, f in fits.items():
        summary[f"{name}: R2 / LOO R2 / LOO R2 shuffled pairs / orth. error"] = (
            f"{f['r2']:.3f} / {f['loo_r2']:.3f} / {f['loo_r2_shuffled_pairs']:.3f} / {f['orthogonality_error']:.3f}")
    for m, per_k in cis.items():
        summary[f"LOO R2, 95% bootstrap CI over pairs ({m}, {cfg.n_boot} resamples): Z / random / Z - random"] = {
            f"k={k}": " / ".join(_num(ci[w]) for w in ("Z", "random", "Z - random")) for k, ci in per_k.items()}
    _bridge_figure(fits, ctx)
    return {"summary": summary, "layer": l, "fits": fits,
            "loo_r2_difference_ci": {m: {f"k={k}": ci["Z - random"] for k, ci in per_k.items()} for m, per_k in cis.items()},
            "items": items,
            "definitions": {"W*": "argmin_W |C - E W|_F (numpy lstsq, no intercept), E/C = en/zh mean-pooled content "
                                  "tokens projected on the k basis vectors (N x k)",
                            "r2": "1 - |C - E W*|^2 / |C - mean(C)|^2", "orthogonality_error": "|W*^T W* - I|_F / k",
                            "loo_r2": "same R^2 with each row predicted by a W fitted without it",
                            "loo_r2_ci": "percentile bootstrap over pairs (mlxinterp.analysis.stats.bootstrap_ci, n_boot resamples, "
                                         "Z / random / Z - random on the same resamples): the pairs' (truth, LOO prediction) "
                                         "rows resampled, R^2 recomputed (primary: every map fitted on n - 1 pairs)",
                            "loo_r2_ci_refit": "diagnostic: each resample refitted and its LOO R^2 recomputed, copies of a pair "
                                               "held out together; biased because a resample has ~63% distinct pairs; "
                                               "only for k < 0.632 n",
                            "random": "a uniformly random k-dim subspace, as a control"}}


def _bridge_coords(hm, pair, l, bases) -> dict:
    m = {lang: _content(activations(hm, prompt(pair, lang)), l).mean(0) for lang in ("en", "zh")}
    return {f"{w}{k}": {lang: bases[k][w] @ m[lang] for lang in m} for k in bases for w in ("Z", "random")}


def _bridge_matrices(items: list[dict], which: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(E, C): the en and zh coordinates of every pair in basis `which` of size k, rows in pair order."""
    return tuple(np.array([i[f"{which}{k}"][lang] for i in items]) for lang in ("en", "zh"))


def bridge_fit(E: np.ndarray, C: np.ndarray) -> dict:
    """W* = lstsq(E, C); in-sample and leave-one-out R^2, orthogonality error, singular values."""
    W, *_ = np.linalg.lstsq(E, C, rcond=None)
    k = W.shape[0]
    return {"r2": _r2(C, E @ W), "loo_r2": loo_r2(E, C), "orthogonality_error": float(np.linalg.norm(W.T @ W - np.eye(k)) / k),
            "singular_values": np.linalg.svd(W, compute_uv=False), "n": len(E), "k": k,
            "underdetermined": bool(len(E) <= k)}


def _r2(C, pred) -> float:
    return float(1 - ((C - pred) ** 2).sum() / ((C - C.mean(0)) ** 2).sum())


def loo_predictions(E: np.ndarray, C: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Held-out predictions: each group of rows (default: each row) predicted by a W fitted without it.

    Groups matter for bootstrap resamples: a duplicated pair left in the training set would
    leak its own answer, so every copy of a pair is held out together.
    """
    g = np.arange(len(E)) if groups is None else np.asarray(groups)
    pred = np.empty_like(C)
    for u in np.unique(g):
        out = g == u
        W, *_ = np.linalg.lstsq(E[~out], C[~out], rcond=None)
        pred[out] = E[out] @ W
    return pred


def loo_r2(E: np.ndarray, C: np.ndarray, groups: np.ndarray | None = None) -> float:
    """R^2 of loo_predictions."""
    return _r2(C, loo_predictions(E, C, groups))


BRIDGE_CI_METHODS = ("heldout", "refit")


def bridge_loo_cis(E: np.ndarray, C: np.ndarray, E_ref: np.ndarray, C_ref: np.ndarray, *, method: str = "heldout",
                   n_resamples: int = 200, seed: int = 0) -> dict:
    """Bootstrap CIs over pairs of LOO R^2 for (E, C) ("Z"), (E_ref, C_ref) ("random") and their difference.

    Rows are pairs (same order in both); the same seed gives all three the same resamples (paired).
    "heldout" (primary): the LOO predictions of the full data are fixed and the pairs' (truth, held-out
    prediction) rows are resampled, so every R^2 comes from maps fitted on n - 1 pairs like the estimate.
    "refit": a resample is refitted and its LOO R^2 recomputed (copies of a pair held out together); a
    resample holds only ~63 % distinct pairs, so with k parameters per column its maps are fitted on far
    fewer pairs than the estimate's and the interval is biased (for k near n it can miss the estimate).
    """
    if method not in BRIDGE_CI_METHODS:
        raise MlxInterpError(f"bridge CI method {method!r} not allowed; use one of {BRIDGE_CI_METHODS}")
    if len(E) != len(E_ref):
        raise MlxInterpError(f"bridge CIs need the same pairs in both conditions; got {len(E)} and {len(E_ref)} rows")
    held = {"Z": (C, loo_predictions(E, C)), "random": (C_ref, loo_predictions(E_ref, C_ref))} if method == "heldout" else {}
    data = {"Z": (E, C), "random": (E_ref, C_ref)}

    def on(idx: np.ndarray, which: str) -> float:
        i = idx.astype(int)
        if method == "heldout":
            truth, pred = held[which]
            return _r2(truth[i], pred[i])
        E_, C_ = data[which]
        return loo_r2(E_[i], C_[i], groups=i)

    idx = np.arange(len(E))
    stats = {"Z": lambda i: on(i, "Z"), "random": lambda i: on(i, "random"),
             "Z - random": lambda i: on(i, "Z") - on(i, "random")}
    return {name: bootstrap_ci(idx, f, n_resamples=n_resamples, seed=seed) for name, f in stats.items()}


def _bridge_figure(fits, ctx) -> None:
    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(12, 4))
    for name, f in fits.items():
        s = np.asarray(f["singular_values"])
        ax[0].semilogy(s, "o-" if name.startswith("Z") else ":", ms=3, label=name)
    ax[0].set(xlabel="index", ylabel="singular value of W*", title="bridge spectrum")
    ax[0].legend(fontsize=7)
    names = list(fits)
    x = np.arange(len(names))
    for off, key in ((-0.25, "r2"), (0, "loo_r2"), (0.25, "loo_r2_shuffled_pairs")):
        ax[1].bar(x + off, [max(fits[n][key], -1) for n in names], width=0.25, label=key)
    ax[1].set_xticks(x, names, fontsize=8)
    ax[1].axhline(0, color="grey", lw=0.8)
    ax[1].set(ylabel="R^2 (clipped at -1)", title="bridge fit")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure("linear_bridge", fig)

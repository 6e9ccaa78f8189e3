"""Does quantization change the science? The same measurements on the float model and its MLX-quantized variants.

For each variant (default: 8-bit and 4-bit, group size 64) against the float
reference, on the same prompts: next-token KL and top-1 agreement; logit-lens
agreement per layer (top-1 agreement, Spearman correlation of the reference's
top-k logits, rate of "odd" tokens); cosine between refusal and sycophancy
directions extracted on each; the refusal steering effect; an activation
patching map; and two-hop outcomes. Thresholds for "the finding survives" are
fixed here, before any run (VERDICT_RULES), not tuned to the results.

4-bit matmuls are slow on MLX's CPU backend (~75 ms per token for the default
model vs ~10 ms in float32), so defaults are small; raise --n on Metal.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from scipy import stats as sps

from mlxinterp import data, directions, scoring
from mlxinterp import patching as P
from mlxinterp.lens import layer_logits
from mlxinterp.stats import bootstrap_ci, kl_divergence, proportion_ci
from mlxinterp.suite import experiment

ARCHAIC = set("ſꝛþƿȝꝑꝓꝗꞇ")  # long s, r rotunda, thorn, wynn, yogh, scribal abbreviations
# (clean, corrupt, target, foil); the first pair whose prompts tokenize to equal lengths is used
PATCH_PAIRS = (
    ("The Eiffel Tower is located in the city of", "The Colosseum is located in the city of", " Paris", " Rome"),
    ("The capital of France is", "The capital of Italy is", " Paris", " Rome"),
    ("Paris is the capital of", "Rome is the capital of", " France", " Italy"),
)
VERDICT_RULES = {
    "next_token": "top-1 agreement >= 0.90 (survives if the 95% CI's low end clears it, changes if its high end "
                  "misses it, else inconclusive)",
    "logit_lens": "top-1 agreement over the last third of layers >= 0.80 (same CI rule)",
    "directions": "cosine with the float direction at the 60%-depth layer >= 0.90 (refusal and sycophancy)",
    "steering": "refusal-score change under steering: same sign and overlapping 95% CIs; inconclusive when the "
                "float effect's CI contains 0 (nothing to preserve)",
    "patching": "Spearman correlation of the normalised patching map >= 0.90",
    "twohop": "agreement on whether the two-hop answer is top-1 >= 0.90 (same CI rule as next_token)",
}


@dataclass
class QuantizationConfig:
    n: int = 6  # prompts for next-token and lens agreement
    seed: int = 0
    variants: tuple = ("8bit", "4bit")
    top_k: int = 20
    n_directions: int = 8  # prompts per side for each direction
    steer_pct: float = 8.0
    patch_layer_step: int = 4  # patching map over every k-th layer (4-bit is slow on CPU)
    n_twohop: int = 12


def is_odd_token(token: str) -> bool:
    """Rare-script, archaic or fragment tokens (seed 004's "houſe", "religieuses" artefacts).

    Odd when the token has a letter outside the Latin script, an archaic Latin
    letter, or is a bare word fragment (no leading space, 1-2 letters).
    """
    text = token.replace("▁", " ")
    letters = [c for c in text if c.isalpha()]
    if any(c in ARCHAIC for c in letters):
        return True
    if any(not unicodedata.name(c, "").startswith("LATIN") for c in letters):
        return True
    stripped = text.strip()
    return bool(letters) and not text.startswith(" ") and len(stripped) <= 2 and stripped.isalpha()


@experiment("quantization", QuantizationConfig)
def quantization(hm, cfg: QuantizationConfig, ctx) -> dict:
    """Same findings on float, 8-bit and 4-bit variants of one model: agreement and verdicts."""
    from mlxinterp.hooks import load

    ref = hm if not hm.info.quantization else load(_base(hm.info.spec) + "@f32")
    inputs = _inputs(cfg)
    reference = _measure(ref, cfg, inputs)

    def one(variant: str) -> dict:
        from mlxinterp.suite import free_memory

        q = load(f"{_base(ref.info.spec)}@{variant}")
        result = _compare(reference, _measure(q, cfg, inputs), cfg) | {"variant": variant, "slug": q.info.slug}
        del q
        free_memory()
        return result

    per_variant = ctx.map("variants", list(cfg.variants), one)
    verdicts = {r["variant"]: r["verdict"] for r in per_variant}
    _figure(reference, per_variant, ctx)
    summary = {f"{v}: {k}": verdict for v, ver in verdicts.items() for k, verdict in ver.items()}
    for r in per_variant:
        summary[f"{r['variant']}: next-token top-1 agreement"] = _fmt(r["next_token"]["top1_agreement"])
        summary[f"{r['variant']}: next-token KL (nats)"] = _fmt(r["next_token"]["kl"])
    shown = ("layer", "steering_delta", "patch_map", "patch_pair", "twohop_correct", "odd_rate_by_layer")
    return {"summary": summary, "verdict_rules": VERDICT_RULES, "verdicts": verdicts,
            "reference": {"slug": ref.info.slug, **{k: reference[k] for k in shown}}, "variants": per_variant}


def _base(spec: str) -> str:
    from mlxinterp.loading import parse_spec

    return parse_spec(spec)[0]


def _inputs(cfg) -> dict:
    items = data.load_json("twohop/queries.json")["items"]
    rng = np.random.default_rng(cfg.seed)
    pick = [items[i] for i in sorted(rng.choice(len(items), size=max(cfg.n, cfg.n_twohop), replace=False))]
    syc = data.load_json("directions/sycophancy.json")
    return {
        "prompts": [it["hop2_prompt"] for it in pick[: cfg.n]],
        "twohop": pick[: cfg.n_twohop],
        "harmful": data.prompts("refusal/harmful_en.json"),
        "harmless": data.prompts("refusal/harmless_en.json"),
        "syc_pos": syc["positive"][: cfg.n_directions],
        "syc_neg": syc["negative"][: cfg.n_directions],
    }


def _measure(hm, cfg, inp) -> dict:
    """Everything the comparison needs, from one model."""
    n = hm.info.n_layers
    layer = int(round(0.6 * (n - 1)))
    last, lens = [], []
    for p in inp["prompts"]:
        logits, cache = hm.run_with_cache(p, names="hook_resid_post")
        last.append(np.array(logits[0, -1].astype(mx.float32)))
        lens.append(np.array(layer_logits(hm, cache, -1, "normed")))  # [n_layers, V]
    fmt = lambda ps: [scoring.instruction(hm, x)[0] for x in ps]  # noqa: E731
    k = cfg.n_directions
    ref_dirs = directions.extract(hm, fmt(inp["harmful"][:k]), fmt(inp["harmless"][:k]), seed=cfg.seed)
    syc_dirs = directions.extract(hm, inp["syc_pos"], inp["syc_neg"], seed=cfg.seed)
    d = ref_dirs[layer]
    held = inp["harmless"][k : k + 6]
    base = scoring.refusal_score(hm, held)
    steered = scoring.refusal_score(hm, held, directions.steering_taps(d.unit(), cfg.steer_pct / 100 * d.resid_norm, [layer]))
    pair = next((p for p in PATCH_PAIRS if hm.tokens(p[0]).ids.shape[1] == hm.tokens(p[1]).ids.shape[1]), None)
    sweep = None if pair is None else P.patch_sweep(hm, pair[0], pair[1], P.logit_diff(hm, pair[2], pair[3]),
                                                    layers=list(range(0, n, cfg.patch_layer_step)))
    twohop = []
    for it in inp["twohop"]:
        logits = P.forward_last(hm, hm.tokens(it["prompt"]).ids)[0, 0]
        answer = hm.tokenizer.encode(" " + it["answer"], add_special_tokens=False)[0]
        twohop.append(int(mx.argmax(logits).item()) == answer)
    decode = hm.tokenizer.decode
    return {
        "layer": layer,
        "_private": {"last": last, "lens": lens},
        "refusal_dirs": {l: ref_dirs[l].unit() for l in ref_dirs},
        "syc_dirs": {l: syc_dirs[l].unit() for l in syc_dirs},
        "steering_delta": bootstrap_ci(steered - base, seed=cfg.seed),
        "patch_map": None if sweep is None else sweep.normalised,
        "patch_pair": pair,
        "twohop_correct": twohop,
        "odd_rate_by_layer": [float(np.mean([is_odd_token(decode([int(i)])) for L in lens for i in np.argsort(-L[l])[:5]]))
                              for l in range(n)],
    }


def _compare(ref: dict, q: dict, cfg) -> dict:
    """Agreement of a variant with the reference, per quantity, and the verdict per finding."""
    rl, ql = ref["_private"], q["_private"]
    agree = [int(a.argmax() == b.argmax()) for a, b in zip(rl["last"], ql["last"])]
    kls = [float(kl_divergence(a, b)) for a, b in zip(rl["last"], ql["last"])]
    n_layers = len(rl["lens"][0])
    lens_top1 = np.array([[a[l].argmax() == b[l].argmax() for l in range(n_layers)] for a, b in zip(rl["lens"], ql["lens"])])
    rho = np.array([[_topk_spearman(a[l], b[l], cfg.top_k) for l in range(n_layers)] for a, b in zip(rl["lens"], ql["lens"])])
    cos = lambda x, y: float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)))  # noqa: E731
    ref_cos = [cos(ref["refusal_dirs"][l], q["refusal_dirs"][l]) for l in sorted(ref["refusal_dirs"])]
    syc_cos = [cos(ref["syc_dirs"][l], q["syc_dirs"][l]) for l in sorted(ref["syc_dirs"])]
    patch = {"skipped": "no clean/corrupt pair tokenizes to equal lengths"}
    patch_rho = float("nan")
    if ref["patch_map"] is not None and q["patch_map"] is not None:
        a, b = np.array(ref["patch_map"], float).ravel(), np.array(q["patch_map"], float).ravel()
        patch_rho = float(sps.spearmanr(a, b).statistic)
        patch = {"spearman": patch_rho, "max_abs_diff": float(np.nanmax(np.abs(a - b))), "pair": ref["patch_pair"]}
    th_agree = [int(x == y) for x, y in zip(ref["twohop_correct"], q["twohop_correct"])]
    sr, sq = ref["steering_delta"], q["steering_delta"]
    tail = slice(2 * n_layers // 3, n_layers)
    L = ref["layer"]
    out = {
        "next_token": {"top1_agreement": proportion_ci(sum(agree), len(agree)), "kl": bootstrap_ci(kls, seed=cfg.seed),
                       "per_prompt": [{"top1_agree": bool(x), "kl": y} for x, y in zip(agree, kls)]},
        "logit_lens": {"top1_agreement_by_layer": lens_top1.mean(0).tolist(),
                       "spearman_topk_by_layer": np.nanmean(rho, 0).tolist(),
                       "top1_agreement_last_third": proportion_ci(int(lens_top1[:, tail].sum()), lens_top1[:, tail].size),
                       "odd_rate_by_layer": q["odd_rate_by_layer"], "odd_rate_by_layer_float": ref["odd_rate_by_layer"]},
        "directions": {"refusal_cosine_by_layer": ref_cos, "sycophancy_cosine_by_layer": syc_cos, "layer": L},
        "steering": {"float": sr, "quantized": sq},
        "patching": patch,
        "twohop": {"agreement": proportion_ci(sum(th_agree), len(th_agree)),
                   "accuracy_float": proportion_ci(sum(ref["twohop_correct"]), len(th_agree)),
                   "accuracy_quantized": proportion_ci(sum(q["twohop_correct"]), len(th_agree))},
    }
    out["verdict"] = {
        "next_token": _ci_verdict(out["next_token"]["top1_agreement"], 0.90),
        "logit_lens": _ci_verdict(out["logit_lens"]["top1_agreement_last_third"], 0.80),
        "directions": _verdict(ref_cos[L] >= 0.90 and syc_cos[L] >= 0.90),
        "steering": _steering_verdict(sr, sq),
        "patching": "inconclusive" if np.isnan(patch_rho) else _verdict(patch_rho >= 0.90),
        "twohop": _ci_verdict(out["twohop"]["agreement"], 0.90),
    }
    return out


def _verdict(ok: bool) -> str:
    return "survives" if ok else "changes"


def _ci_verdict(ci: dict, threshold: float) -> str:
    if ci["low"] >= threshold:
        return "survives"
    return "changes" if ci["high"] < threshold else "inconclusive"


def _steering_verdict(a: dict, b: dict) -> str:
    if a["estimate"] is None or b["estimate"] is None or a["low"] <= 0 <= a["high"]:
        return "inconclusive"
    same = np.sign(a["estimate"]) == np.sign(b["estimate"]) and a["low"] <= b["high"] and b["low"] <= a["high"]
    return _verdict(bool(same))


def _topk_spearman(ref_logits: np.ndarray, q_logits: np.ndarray, k: int) -> float:
    idx = np.argsort(-ref_logits)[:k]
    return float(sps.spearmanr(ref_logits[idx], q_logits[idx]).statistic)


def _fmt(c: dict) -> str:
    return f"{c['estimate']:.3f} [{c['low']:.3f}, {c['high']:.3f}]" if c.get("estimate") is not None else "n/a"


def _figure(ref: dict, rows: list[dict], ctx) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    for r in rows:
        lens = r["logit_lens"]
        axes[0].plot(lens["top1_agreement_by_layer"], "o-", label=r["variant"])
        axes[1].plot(lens["odd_rate_by_layer"], "o-", label=r["variant"])
        axes[2].plot(r["directions"]["refusal_cosine_by_layer"], "o-", label=f"{r['variant']} refusal")
        axes[2].plot(r["directions"]["sycophancy_cosine_by_layer"], "s--", label=f"{r['variant']} sycophancy")
    axes[1].plot(rows[0]["logit_lens"]["odd_rate_by_layer_float"] if rows else [], "k:", label="float")
    axes[0].set(xlabel="layer", ylabel="lens top-1 agreement with float", ylim=(-0.05, 1.05), title="logit lens")
    axes[1].set(xlabel="layer", ylabel="odd-token rate in lens top-5", title="odd tokens (rare script, archaic, fragments)")
    axes[2].set(xlabel="layer", ylabel="cosine with float direction", title="directions")
    names = list(VERDICT_RULES)
    level = {"changes": 0.0, "inconclusive": 0.5, "survives": 1.0}
    grid = np.array([[level[r["verdict"][k]] for k in names] for r in rows]) if rows else np.zeros((0, len(names)))
    axes[3].imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for i, r in enumerate(rows):
        for j, k in enumerate(names):
            axes[3].text(j, i, r["verdict"][k], ha="center", va="center", fontsize=7)
    axes[3].set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes[3].set_yticks(range(len(rows)), [r["variant"] for r in rows])
    axes[3].set_title("verdict per finding (rules in result.json)")
    for ax in axes[:3]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure("quantization", fig)

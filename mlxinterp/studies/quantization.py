"""Does quantization change the science? The same measurements on the float model and its MLX-quantized variants.

For each variant (default: 8-bit and 4-bit, group size 64) against the float
reference, on the same prompts: next-token KL and top-1 agreement; logit-lens
agreement per layer (top-1 agreement, Spearman correlation of the reference's
top-k logits, rate of "odd" tokens); cosine between directions extracted on
each (refusal, sycophancy, and a function vector per task: Todd et al.'s
simple v2 = mean resid_post at the last position of ICL prompts minus
zero-shot prompts, built from the function-vector study's prompts); the
refusal steering effect, measured as the refusal study measures it; an
activation patching map; two-hop outcomes; and back-patching outcomes on a
few wrong two-hop queries. Thresholds for "the finding survives" are in
VERDICT_RULES (fixed before the first run; the function-vector and
back-patching rules were added with those measurements, see the discussion).

Steering protocol (the refusal study's, so the float model has the effect the
refusal study found to preserve): refusal direction = difference of means of
resid_post over the post-instruction positions (tasks.refusal.layer_directions)
on the refusal study's train pairs; added, as a unit vector times 8 % of the
mean residual norm, at every position of the refusal study's chosen layer
(tasks.refusal.reuse_or_select, read from the float model's refusal result
when present) to its held-out harmless test prompts; score =
scoring.refusal_score; effect = paired steered - unsteered (behaviour.paired_effect).

MLX's CPU quantized matmul is ~7x slower than float32 with OpenBLAS, so on a CPU
the variants compute with their quantized weights expanded to float32 once, as
loading does for every '@Nbit' variant (`compute`; the default model's numbers
match native kernels to 1.1e-5).
What the next-token numbers are, exactly: KL(reference || variant) in nats and
top-1 agreement of the next-token distribution at the LAST position of each of
`n` prompts (the hop2_prompt of a seeded sample of the two-hop queries, e.g.
"The capital of France is"); reference = the model as loaded (float32 for the
default model), variant = `<model>@<variant>` (MLX affine quantization, group 64)
computed as configured (`compute`). The same KL averaged over every position of
each prompt (BOS included) is reported beside it (`kl_all_positions`), because
an all-positions average over other prompts is what the validation study's
quantization check measures, and early positions are easy to predict.

Verdicts: the three-level rule and its thresholds are pre-registered in
mlxinterp/data/preregistration.toml ([checks.quantization.*]): a finding
*survives* when its `<finding>_survives` check passes (e.g. the 95 % CI's low end
of an agreement clears the threshold), *changes* when its `<finding>_changes`
check passes (the CI's high end misses it), else it is *inconclusive*; a bare
number (cosine, Spearman) survives or changes on its estimate; steering is
inconclusive when the float effect's CI contains 0 (nothing to preserve).

Sizes (full by default; the quick profile keeps the old small ones for smoke
tests): 48 prompts for next-token and lens agreement; 120 two-hop queries;
every wrong two-hop query the float model answers both hops of (27 on the
default model; the back-patching study's set); the refusal study's 40 train
pairs and its 24 held-out harmless prompts; all 64 sycophancy pairs; 12 ICL /
zero-shot prompts for each of the 8 function-vector tasks; patching over every
layer. The back-patching grid stays every 3rd layer (21 of 153 pairs): the
verdict is about whether the same queries are fixed, not about the full map.
"""
from __future__ import annotations

import unicodedata
import dataclasses
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from scipy import stats as sps

from mlxinterp.suite.summary import Summary
from mlxinterp.analysis import directions, scoring
from mlxinterp.analysis import patching as P
from mlxinterp.analysis.lens import layer_logits
from mlxinterp.analysis.plotting import bars, subplots
from mlxinterp.analysis.stats import format_interval, kl_divergence, mean_ci, paired_diff_ci, proportion_ci
from mlxinterp.core.errors import MlxInterpError, PromptError
from mlxinterp.core.hooks import HookedModel, load
from mlxinterp.core.loading import load_model, parse_spec
from mlxinterp.core.quantize import dequantize
from mlxinterp.suite import experiment, free_memory, preregistration
from mlxinterp.tasks import data
from mlxinterp.tasks import function_vectors as F
from mlxinterp.tasks import twohop as TH
from mlxinterp.tasks.function_vectors import FunctionVectorsConfig, task_split
from mlxinterp.tasks.refusal import (RefusalConfig, add_taps, layer_directions, post_instruction_k, reuse_or_select,
                                     split)
from mlxinterp.tasks.twohop import choose_backpatch_queries, statuses

ARCHAIC = set("ſꝛþƿȝꝑꝓꝗꞇ")  # long s, r rotunda, thorn, wynn, yogh, scribal abbreviations
# (clean, corrupt, target, foil); the first pair whose prompts tokenize to equal lengths is used
PATCH_PAIRS = (
    ("The Eiffel Tower is located in the city of", "The Colosseum is located in the city of", " Paris", " Rome"),
    ("The capital of France is", "The capital of Italy is", " Paris", " Rome"),
    ("Paris is the capital of", "Rome is the capital of", " France", " Italy"),
)
VERDICT_RULE = ("three levels, pre-registered in mlxinterp/data/preregistration.toml [checks.quantization.*]: "
                "survives when <finding>_survives passes, changes when <finding>_changes passes, else inconclusive; "
                "bare numbers (directions, patching) survive or change on the estimate; steering is inconclusive "
                "when steering_float_effect fails (the float effect's CI does not exclude 0)")
VERDICT_RULES = {
    "next_token": "top-1 agreement: survives if the 95% CI's low end >= 0.90, changes if its high end < 0.90",
    "logit_lens": "top-1 agreement over the last third of layers: survives if low >= 0.80, changes if high < 0.80",
    "directions": "cosine with the float direction at the 60%-depth layer >= 0.90 for every direction (refusal, "
                  "sycophancy, function vector v2 of each task)",
    "steering": "refusal-score change under steering: inconclusive unless the float effect's low end > 0; then "
                "survives if the quantized effect's low end > 0, changes if its high end < 0",
    "patching": "Spearman correlation of the normalised patching map >= 0.90",
    "twohop": "agreement on whether the two-hop answer is top-1: survives if low >= 0.90, changes if high < 0.90",
    "backpatch": "agreement on whether a wrong two-hop query is fixed by some grid pair: survives if low >= 0.90, "
                 "changes if high < 0.90",
}


@dataclass
class QuantizationConfig:
    n: int = 48  # prompts for next-token and lens agreement (>= 30 independent prompts for the KL and agreement)
    seed: int = 0
    variants: tuple = ("8bit", "4bit")
    # auto: "dequantized" on a CPU (the MLX-quantized weights expanded back to float32 once, so every matmul
    # uses exactly the quantized weights but float kernels: MLX's CPU quantized matmul is ~7x slower),
    # "native" (QuantizedLinear kernels) on Metal. Either can be forced.
    compute: str = "auto"
    top_k: int = 20
    n_directions: int = 64  # sycophancy contrast pairs per side (all of data/directions/sycophancy.json)
    n_refusal: int = 40  # refusal-study train pairs for the refusal direction (all 40 the refusal study uses)
    n_steer: int = 24  # refusal-study held-out harmless test prompts steered (all 24 of its test split)
    steer_pct: float = 8.0  # % of the mean residual norm at the steering layer
    fv_tasks: tuple = F.TASKS  # every function-vector task
    n_fv: int = 12  # ICL / zero-shot prompt pairs per task for the v2 function vector (the FV study's AIE prompts)
    fv_demos: int = 5  # demonstrations per ICL prompt (the function-vector study's default)
    patch_layer_step: int = 1  # patching map over every k-th layer
    n_twohop: int = 120  # two-hop queries for answer agreement (>= 30; all 344 would triple the cost)
    n_backpatch: int = 1000  # wrong two-hop queries whose hops the float model answers: all of them (27 on the default model)
    backpatch_layer_step: int = 3  # (s, t) grid over every k-th layer and the last; 1 = all n(n-1)/2 pairs
    batch_size: int = 32


def is_odd_token(token: str) -> bool:
    """Rare-script, archaic or fragment tokens (the cross-model plan's "houſe", "religieuses" artefacts).

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


COMPUTE_MODES = ("auto", "native", "dequantized")


def compute_mode(mode: str) -> str:
    """'native' or 'dequantized' for the variants (see QuantizationConfig.compute)."""
    if mode not in COMPUTE_MODES:
        raise MlxInterpError(f"quantization.compute must be one of {', '.join(COMPUTE_MODES)}, not {mode!r}")
    if mode != "auto":
        return mode
    return "dequantized" if mx.default_device() == mx.cpu else "native"


def load_variant(spec: str, compute: str):
    """A quantized variant with hooks; 'dequantized' computes with its quantized weights expanded to float.

    Why this is the same model: dequantize(quantize(W)) is exactly the weight the
    quantized kernel multiplies by; only the kernel (and so float rounding order)
    differs. On a CPU loading does this itself for every '@Nbit' variant
    (core/specs.plan_dtype); an explicit dtype keeps MLX's quantized kernels.
    tests/test_quantization.py checks the logits agree.
    """
    # automatic dtype: on a CPU loading quantizes float32 weights and dequantizes; "float32" casts first too
    # but keeps MLX's quantized kernels; on Metal both keep the kernels
    cpu = mx.default_device() == mx.cpu
    lm = load_model(spec, dtype="float32" if compute == "native" and cpu else None)
    if compute == "dequantized" and (lm.info.quantization or {}).get("compute") != "dequantized":
        lm = dataclasses.replace(lm, model=dequantize(lm.model))  # Metal: loading kept the quantized kernels
        mx.eval(lm.model.parameters())
    return HookedModel(lm)


QUICK = {"n": 6, "n_directions": 8, "n_refusal": 16, "n_steer": 12, "fv_tasks": ("antonym", "country_capital"),
         "n_fv": 6, "patch_layer_step": 4, "n_twohop": 12, "n_backpatch": 4}


@experiment("quantization", QuantizationConfig, reuses=["refusal", "twohop"], quick=QUICK,
            whole_model="it loads float, 8-bit and 4-bit copies of the whole model")
def quantization(hm: HookedModel, cfg: QuantizationConfig, ctx) -> dict:
    """Same findings on float, 8-bit and 4-bit variants of one model: agreement and verdicts."""
    ref = hm if not hm.info.quantization else load(_base(hm.info.spec) + "@f32")
    inputs = _inputs(cfg, ctx)
    inputs["steer_layer"], inputs["steer_layer_source"] = reuse_or_select(ref, ctx, RefusalConfig(seed=cfg.seed))
    inputs["backpatch"] = _backpatch_queries(ref, cfg, ctx)
    reference = _measure(ref, cfg, inputs)

    def one(variant: str) -> dict:
        q = load_variant(f"{_base(ref.info.spec)}@{variant}", compute)
        result = _compare(reference, _measure(q, cfg, inputs, reference), cfg) | {"variant": variant, "slug": q.info.slug}
        del q
        free_memory()
        return result

    compute = compute_mode(cfg.compute)
    per_variant = ctx.map("variants", list(cfg.variants), one)
    verdicts = {r["variant"]: r["verdict"] for r in per_variant}
    _figures(reference, per_variant, ctx)
    s = Summary()
    for v, ver in verdicts.items():
        for k, verdict in ver.items():
            s.add(f"{_key(v)}.verdict.{k}", f"{v}: {k}", verdict)
    for r in per_variant:
        v, key = r["variant"], _key(r["variant"])
        s.add(f"{key}.top1_agreement", f"{v}: next-token top-1 agreement", _fmt(r["next_token"]["top1_agreement"]))
        s.add(f"{key}.kl", f"{v}: next-token KL(float || {v}), nats, last position of {len(inputs['prompts'])} prompts",
              _fmt(r["next_token"]["kl"]))
        s.add(f"{key}.kl_all_positions", f"{v}: the same KL averaged over every position of the same prompts",
              _fmt(r["next_token"]["kl_all_positions"]))
        s.add(f"{key}.steering", f"{v}: steering effect, float / quantized",
              f"{_fmt(r['steering']['float'])} / {_fmt(r['steering']['quantized'])}")
        s.add(f"{key}.twohop_accuracy_change", f"{v}: two-hop accuracy change", _fmt(r["twohop"]["accuracy_change"]))
        s.add(f"{key}.backpatch_fix_rate_change", f"{v}: back-patching fix-rate change",
              _fmt(r["backpatch"]["fix_rate_change"]))
    shown = ("layer", "steer_layer", "steer_layer_source", "steering_delta", "steering_items", "patch_map",
             "patch_pair", "twohop_correct", "odd_rate_by_layer", "backpatch")
    s.add("variant_compute", "variant compute", compute)
    prereg = preregistration.load()
    return {**s.to_result(), "verdict_rules": VERDICT_RULES, "verdicts": verdicts, "compute": compute,
            "prereg": {"sha256": prereg.sha256, "rule": VERDICT_RULE},
            "what_is_measured": {
                "next_token": f"KL(reference || variant) in nats and top-1 agreement of the next-token distribution at "
                              f"the last position of {len(inputs['prompts'])} prompts (hop2_prompt of a seeded sample of "
                              f"data/twohop/queries.json); kl_all_positions: the same KL averaged over every position "
                              f"of each prompt (BOS included), then over prompts",
                "reference": f"{ref.info.spec} as loaded (dtype {ref.info.dtype})",
                "variants": {v: f"{_base(ref.info.spec)}@{v} (MLX affine quantization), computed {compute}"
                             for v in cfg.variants},
                "prompts": inputs["prompts"]},
            "reference": {"slug": ref.info.slug, "dtype": ref.info.dtype, **{k: reference[k] for k in shown}},
            "backpatch_eligible": inputs["backpatch"]["eligible"], "variants": per_variant}


def _key(variant: str) -> str:
    """A variant name ('4bit', '8bit-g32') as a summary key part: 'q4bit', 'q8bit_g32'."""
    return "q" + variant.replace("-", "_")


def _base(spec: str) -> str:
    return parse_spec(spec)[0]


def _inputs(cfg, ctx) -> dict:
    """Prompts shared by every variant (drawn once, from the float side)."""
    items = data.load_json("twohop/queries.json")["items"]
    rng = np.random.default_rng(cfg.seed)
    pick = [items[i] for i in sorted(rng.choice(len(items), size=max(cfg.n, cfg.n_twohop), replace=False))]
    syc = data.load_json("directions/sycophancy.json")
    sp = split(RefusalConfig(seed=cfg.seed))  # the refusal study's train / val / test pairs
    if not 2 <= cfg.n_refusal <= len(sp["train"]["harmful"]) or not 2 <= cfg.n_steer <= len(sp["test"]["harmless"]):
        raise PromptError(f"n_refusal={cfg.n_refusal} must be in [2, {len(sp['train']['harmful'])}] and "
                         f"n_steer={cfg.n_steer} in [2, {len(sp['test']['harmless'])}] (the refusal study's split)")
    fcfg = FunctionVectorsConfig(n=cfg.n_fv, n_demos=cfg.fv_demos, seed=cfg.seed)
    fv = {}
    for task in cfg.fv_tasks:
        sets = task_split(task, fcfg, ctx)["aie"]
        fv[task] = {"icl": [s.clean for s in sets], "zero": [F.zero_shot_prompt(s.query[0]) for s in sets]}
    return {
        "prompts": [it["hop2_prompt"] for it in pick[: cfg.n]],
        "twohop": pick[: cfg.n_twohop],
        "harmful": sp["train"]["harmful"][: cfg.n_refusal],
        "harmless": sp["train"]["harmless"][: cfg.n_refusal],
        "steer_prompts": sp["test"]["harmless"][: cfg.n_steer],
        "syc_pos": syc["positive"][: cfg.n_directions],
        "syc_neg": syc["negative"][: cfg.n_directions],
        "fv": fv,
    }


def _backpatch_queries(ref, cfg, ctx) -> dict:
    """Wrong two-hop queries whose two single hops the float model answers, in a seeded order; the first n.

    Statuses come from the float model's twohop result when it matches (tasks.twohop.statuses),
    the order from the back-patching study's rule (tasks.twohop.choose_backpatch_queries).
    """
    recs, source = statuses(ref, ctx)
    ordered = [r for r in choose_backpatch_queries(recs, len(recs), ctx.rng_for("backpatch_order")) if r["hop1"] and r["hop2"]]
    pool = {q["id"]: q for q in TH.load_queries()}
    return {"queries": [pool[r["id"]] for r in ordered[: cfg.n_backpatch]], "eligible": len(ordered),
            "status_source": source}


def grid_pairs(n_layers: int, step: int) -> list[tuple[int, int]]:
    """(source s, target t < s) over every step-th layer and the last one; step 1 gives all n(n-1)/2 pairs."""
    if step < 1:
        raise PromptError(f"backpatch_layer_step={step} must be >= 1")
    layers = sorted(set(range(0, n_layers, step)) | {n_layers - 1})
    return [(s, t) for s in layers for t in layers if t < s]


def backpatch_outcomes(hm: HookedModel, queries: list[dict], pairs: list[tuple[int, int]], batch_size: int = 32) -> list[dict]:
    """Per query: is the answer top-1 unpatched, and after each back-patch (s, t) in `pairs` (the model's own states).

    The patches are mlxinterp.tasks.twohop.backpatch_variants restricted to `pairs`, run with the prompt's KV cache reused.
    """
    out = []
    for q in queries:
        _, resid = TH.last_states(hm, [q["prompt"]])
        all_pairs, variants = TH.backpatch_variants(resid[:, 0])
        index = {p: i for i, p in enumerate(all_pairs)}
        chosen = [[]] + [variants[index[p]] for p in pairs]
        vals = P.run_variants(hm, hm.tokens(q["prompt"]).ids[0].tolist(), chosen,
                              TH.target_metric(TH.target(hm, q["answer_aliases"])), batch_size=batch_size,
                              reuse_prefix=True)
        fixed = [bool(v) for v in vals[1:, 2]]
        out.append({"id": q["id"], "base_top1": bool(vals[0, 2]), "fixed_by_pair": fixed, "fixed": any(fixed),
                    "best_logprob_gain": float(np.max(vals[1:, 0]) - vals[0, 0])})
    return out


def lens_summary(lens: np.ndarray, k: int, ref: dict | None = None) -> dict:
    """What the lens comparison needs from one prompt's [n_layers, vocab] lens logits, without keeping them:
    top-1 per layer, the top-5 (odd-token rate), and the logits at the reference's top-k tokens (the reference's
    own top-k when `ref` is None)."""
    idx = np.argsort(-lens, axis=-1)[:, :k] if ref is None else np.asarray(ref["idx"])
    return {"top1": lens.argmax(-1), "top5": np.argsort(-lens, axis=-1)[:, :5], "idx": idx,
            "vals": np.take_along_axis(lens, idx, axis=-1)}


def _measure(hm: HookedModel, cfg, inp, ref: dict | None = None) -> dict:
    """Everything the comparison needs, from one model (a variant also gets its KL against the reference `ref`)."""
    n = hm.info.n_layers
    layer = int(round(0.6 * (n - 1)))
    last, lens, every, kl_positions = [], [], [], []
    for i, p in enumerate(inp["prompts"]):
        logits, cache = hm.run_with_cache(p, names="hook_resid_post")
        all_pos = np.array(logits[0].astype(mx.float32))  # [T, V]
        last.append(all_pos[-1])
        lens.append(lens_summary(np.array(layer_logits(hm, cache, -1, "normed")), cfg.top_k,
                                 None if ref is None else ref["_private"]["lens"][i]))
        if ref is None:
            every.append(all_pos)  # the reference keeps every position for the variants' KL
        else:
            kl_positions.append(kl_divergence(ref["_private"]["every"][i], all_pos).tolist())
    k = post_instruction_k(hm, inp["harmful"] + inp["harmless"])
    ref_dirs = layer_directions(hm, inp["harmful"], inp["harmless"], k, cfg.seed)
    syc_dirs = directions.extract(hm, inp["syc_pos"], inp["syc_neg"], seed=cfg.seed)
    fv_dirs = {t: directions.extract(hm, s["icl"], s["zero"], seed=cfg.seed) for t, s in inp["fv"].items()}
    sl = inp["steer_layer"]
    d = ref_dirs[sl]
    base = scoring.refusal_score(hm, inp["steer_prompts"])
    steered = scoring.refusal_score(hm, inp["steer_prompts"], add_taps(d.unit(), sl, cfg.steer_pct / 100 * d.resid_norm))
    pair = next((p for p in PATCH_PAIRS if hm.tokens(p[0]).ids.shape[1] == hm.tokens(p[1]).ids.shape[1]), None)
    sweep = None if pair is None else P.patch_sweep(hm, pair[0], pair[1], P.logit_diff(hm, pair[2], pair[3]),
                                                    layers=list(range(0, n, cfg.patch_layer_step)))
    th_prompts = [it["prompt"] for it in inp["twohop"]]
    th_logits, _ = TH.last_states(hm, th_prompts, capture=False)
    twohop = TH.judge(hm, th_prompts, th_logits, [TH.target(hm, it["answer_aliases"]) for it in inp["twohop"]])
    pairs = grid_pairs(n, cfg.backpatch_layer_step)
    decode = hm.tokenizer.decode
    return {
        "layer": layer,
        "steer_layer": sl, "steer_layer_source": inp["steer_layer_source"],
        "_private": {"last": last, "lens": lens, "every": every, "kl_positions": kl_positions},
        "refusal_dirs": {l: ref_dirs[l].unit() for l in ref_dirs},
        "syc_dirs": {l: syc_dirs[l].unit() for l in syc_dirs},
        "fv_dirs": {t: {l: v[l].unit() for l in v} for t, v in fv_dirs.items()},
        "steering_delta": paired_diff_ci(steered, base, seed=cfg.seed),
        "steering_items": (steered - base).tolist(),
        "patch_map": None if sweep is None else sweep.normalised,
        "patch_pair": pair,
        "twohop_correct": [bool(x) for x in twohop],
        "backpatch": {"pairs": [list(p) for p in pairs],
                      "queries": backpatch_outcomes(hm, inp["backpatch"]["queries"], pairs, cfg.batch_size)},
        "odd_rate_by_layer": [float(np.mean([is_odd_token(decode([int(i)])) for L in lens for i in L["top5"][l]]))
                              for l in range(n)],
    }


def _cosines(a: dict, b: dict) -> list[float]:
    """Cosine per layer between two {layer: vector} maps."""
    return [float(np.dot(a[l], b[l]) / (np.linalg.norm(a[l]) * np.linalg.norm(b[l]))) for l in sorted(a)]


def compare_backpatch(ref: dict, q: dict, seed: int = 0) -> dict:
    """Per-query agreement on "fixed by the best pair", fix rates and their paired change (quantized - float)."""
    rf = [r["fixed"] for r in ref["queries"]]
    qf = [r["fixed"] for r in q["queries"]]
    cells = [a == b for r, s in zip(ref["queries"], q["queries"]) for a, b in zip(r["fixed_by_pair"], s["fixed_by_pair"])]
    return {
        "per_query": [{"id": r["id"], "fixed_float": r["fixed"], "fixed_quantized": s["fixed"],
                       "base_top1_float": r["base_top1"], "base_top1_quantized": s["base_top1"]}
                      for r, s in zip(ref["queries"], q["queries"])],
        "agreement": proportion_ci(sum(a == b for a, b in zip(rf, qf)), len(rf)),
        "pair_agreement": proportion_ci(int(sum(cells)), len(cells)),
        "fix_rate_float": proportion_ci(int(sum(rf)), len(rf)),
        "fix_rate_quantized": proportion_ci(int(sum(qf)), len(qf)),
        "fix_rate_change": paired_diff_ci(np.array(qf, float), np.array(rf, float), seed=seed),
        "pairs": ref["pairs"],
    }


def _compare(ref: dict, q: dict, cfg) -> dict:
    """Agreement of a variant with the reference, per quantity, and the verdict per finding."""
    rl, ql = ref["_private"], q["_private"]
    agree = [int(a.argmax() == b.argmax()) for a, b in zip(rl["last"], ql["last"])]
    kls = [float(kl_divergence(a, b)) for a, b in zip(rl["last"], ql["last"])]
    kl_all = [float(np.mean(k)) for k in ql["kl_positions"]]
    n_layers = len(rl["lens"][0]["top1"])
    lens_top1 = np.array([a["top1"] == b["top1"] for a, b in zip(rl["lens"], ql["lens"])])
    rho = np.array([[float(sps.spearmanr(a["vals"][l], b["vals"][l]).statistic) for l in range(n_layers)]
                    for a, b in zip(rl["lens"], ql["lens"])])
    ref_cos = _cosines(ref["refusal_dirs"], q["refusal_dirs"])
    syc_cos = _cosines(ref["syc_dirs"], q["syc_dirs"])
    fv_cos = {t: _cosines(ref["fv_dirs"][t], q["fv_dirs"][t]) for t in ref["fv_dirs"]}
    patch = {"skipped": "no clean/corrupt pair tokenizes to equal lengths"}
    patch_rho = float("nan")
    if ref["patch_map"] is not None and q["patch_map"] is not None:
        a, b = np.array(ref["patch_map"], float).ravel(), np.array(q["patch_map"], float).ravel()
        patch_rho = float(sps.spearmanr(a, b).statistic)
        patch = {"spearman": patch_rho, "max_abs_diff": float(np.nanmax(np.abs(a - b))), "pair": ref["patch_pair"],
                 "map": q["patch_map"]}
    rc, qc = ref["twohop_correct"], q["twohop_correct"]
    th_agree = [int(x == y) for x, y in zip(rc, qc)]
    sr, sq = ref["steering_delta"], q["steering_delta"]
    tail = slice(2 * n_layers // 3, n_layers)
    L = ref["layer"]
    bp = compare_backpatch(ref["backpatch"], q["backpatch"], cfg.seed)
    at_L = [ref_cos[L], syc_cos[L]] + [c[L] for c in fv_cos.values()]
    out = {
        "next_token": {"top1_agreement": proportion_ci(sum(agree), len(agree)), "kl": mean_ci(kls, seed=cfg.seed),
                       "kl_all_positions": mean_ci(kl_all, seed=cfg.seed),
                       "per_prompt": [{"top1_agree": bool(x), "kl": y, "kl_all_positions": z}
                                      for x, y, z in zip(agree, kls, kl_all)]},
        "logit_lens": {"top1_agreement_by_layer": lens_top1.mean(0).tolist(),
                       "spearman_topk_by_layer": np.nanmean(rho, 0).tolist(),
                       "top1_agreement_last_third": proportion_ci(int(lens_top1[:, tail].sum()), lens_top1[:, tail].size),
                       "odd_rate_by_layer": q["odd_rate_by_layer"], "odd_rate_by_layer_float": ref["odd_rate_by_layer"]},
        "directions": {"refusal_cosine_by_layer": ref_cos, "sycophancy_cosine_by_layer": syc_cos,
                       "function_vector_cosine_by_layer": fv_cos, "layer": L, "min_cosine_at_layer": float(min(at_L))},
        "steering": {"float": sr, "quantized": sq, "layer": ref["steer_layer"], "pct_of_resid": cfg.steer_pct,
                     "quantized_minus_float": paired_diff_ci(q["steering_items"], ref["steering_items"], seed=cfg.seed),
                     "items_quantized": q["steering_items"]},
        "patching": patch,
        "twohop": {"agreement": proportion_ci(sum(th_agree), len(th_agree)),
                   "accuracy_float": proportion_ci(sum(rc), len(rc)),
                   "accuracy_quantized": proportion_ci(sum(qc), len(qc)),
                   "accuracy_change": paired_diff_ci(np.array(qc, float), np.array(rc, float), seed=cfg.seed),
                   "correct_quantized": qc},
        "backpatch": bp,
    }
    out["verdict"], out["checks"] = verdicts(out, sr, sq, float(min(at_L)), patch_rho)
    return out


def verdicts(out: dict, float_effect: dict, quantized_effect: dict, min_cosine: float,
             patch_rho: float) -> tuple[dict, dict]:
    """The pre-registered three-level verdict per finding (module doc) and the checks behind it."""
    prereg = preregistration.load()
    checks: dict[str, dict] = {}

    def check(name: str, value) -> bool:
        checks[name] = prereg.check("quantization", name, value)
        return checks[name]["verdict"] == "PASS"

    def three(finding: str, value) -> str:
        if value is None or value.get("low") is None:
            return "inconclusive"
        if check(f"{finding}_survives", value):
            return "survives"
        return "changes" if check(f"{finding}_changes", value) else "inconclusive"

    def steering() -> str:
        if float_effect.get("low") is None or not check("steering_float_effect", float_effect):
            return "inconclusive"  # nothing to preserve
        return three("steering", quantized_effect)

    verdict = {
        "next_token": three("next_token", out["next_token"]["top1_agreement"]),
        "logit_lens": three("logit_lens", out["logit_lens"]["top1_agreement_last_third"]),
        "directions": "survives" if check("directions_survives", min_cosine) else "changes",
        "steering": steering(),
        "patching": "inconclusive" if not np.isfinite(patch_rho) else
                    ("survives" if check("patching_survives", patch_rho) else "changes"),
        "twohop": three("twohop", out["twohop"]["agreement"]),
        "backpatch": three("backpatch", out["backpatch"]["agreement"]),
    }
    return verdict, checks


def _fmt(c: dict) -> str:
    return format_interval(c, ".3f")


# ----------------------------------------------------------------- figures (one per quantity, plus the verdicts)


def _figures(ref: dict, rows: list[dict], ctx) -> None:
    if not rows:
        return
    names = [r["variant"] for r in rows]
    x = np.arange(len(rows))

    fig, axes = subplots(1, 2, figsize=(10, 3.8))
    bars(axes[0], x, [r["next_token"]["top1_agreement"] for r in rows], 0.6, "tab:blue", "top-1 agreement")
    axes[0].set(ylim=(0, 1.05), ylabel="next-token top-1 agreement with float (Wilson CI)", title="next token")
    axes[0].set_xticks(x, names)
    for i, r in enumerate(rows):
        axes[1].plot(np.full(len(r["next_token"]["per_prompt"]), i), [p["kl"] for p in r["next_token"]["per_prompt"]], "o")
    axes[1].set(yscale="symlog", ylabel="KL(float || variant), nats, per prompt", title="next-token KL")
    axes[1].set_xticks(x, names)
    _save(ctx, "quantization_next_token", fig)

    fig, axes = subplots(1, 3, figsize=(15, 3.8))
    for r in rows:
        lens = r["logit_lens"]
        axes[0].plot(lens["top1_agreement_by_layer"], "o-", label=r["variant"])
        axes[1].plot(lens["spearman_topk_by_layer"], "o-", label=r["variant"])
        axes[2].plot(lens["odd_rate_by_layer"], "o-", label=r["variant"])
    axes[2].plot(ref["odd_rate_by_layer"], "k:", label="float")
    axes[0].set(xlabel="layer", ylabel="lens top-1 agreement with float", ylim=(-0.05, 1.05), title="logit lens: top-1")
    axes[1].set(xlabel="layer", ylabel="Spearman of float's top-k logits", title="logit lens: top-k rank correlation")
    axes[2].set(xlabel="layer", ylabel="odd-token rate in lens top-5", title="odd tokens (rare script, archaic, fragments)")
    _save(ctx, "quantization_logit_lens", fig, legend=axes)

    fig, ax = subplots(figsize=(8, 4))
    for r in rows:
        d = r["directions"]
        line = ax.plot(d["refusal_cosine_by_layer"], "o-", label=f"{r['variant']} refusal")[0]
        ax.plot(d["sycophancy_cosine_by_layer"], "s--", color=line.get_color(), label=f"{r['variant']} sycophancy")
        for t, c in d["function_vector_cosine_by_layer"].items():
            ax.plot(c, "^:", color=line.get_color(), label=f"{r['variant']} FV v2 {t}")
    ax.axvline(ref["layer"], color="grey", lw=0.8)
    ax.axhline(0.9, color="tab:red", ls="--", lw=0.8)
    ax.set(xlabel="layer", ylabel="cosine with the float direction", title="directions (grey: 60 % depth)")
    _save(ctx, "quantization_directions", fig, legend=[ax])

    fig, ax = subplots(figsize=(6, 4))
    effects = [ref["steering_delta"]] + [r["steering"]["quantized"] for r in rows]
    est = np.array([e["estimate"] for e in effects], float)
    ax.errorbar(np.arange(len(effects)), est, yerr=[est - [e["low"] for e in effects], [e["high"] for e in effects] - est],
                fmt="o", capsize=4)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(effects)), ["float"] + names)
    ax.set(ylabel="refusal-score change (95 % CI)",
           title=f"steering: +{rows[0]['steering']['pct_of_resid']:g} % of resid at layer {ref['steer_layer']}")
    _save(ctx, "quantization_steering", fig)

    maps = [("float", ref["patch_map"])] + [(r["variant"], r["patching"].get("map")) for r in rows]
    maps = [(n, m) for n, m in maps if m is not None]
    if maps:
        fig, axes = subplots(1, len(maps), figsize=(4 * len(maps), 3.6), squeeze=False)
        for ax, (n, m) in zip(axes[0], maps):
            ax.imshow(np.array(m, float), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
            ax.set(xlabel="position", ylabel="layer index (sampled)", title=f"patching map: {n}")
        _save(ctx, "quantization_patching", fig)

    fig, axes = subplots(1, 2, figsize=(11, 4))
    acc = [rows[0]["twohop"]["accuracy_float"]] + [r["twohop"]["accuracy_quantized"] for r in rows]
    bars(axes[0], np.arange(len(acc)), acc, 0.6, "tab:green", "two-hop accuracy")
    axes[0].set_xticks(range(len(rows) + 1), ["float"] + names)
    axes[0].set(ylim=(0, 1.05), ylabel="two-hop answer top-1 (Wilson CI)", title="two-hop accuracy")
    bp = [rows[0]["backpatch"]["fix_rate_float"]] + [r["backpatch"]["fix_rate_quantized"] for r in rows]
    bars(axes[1], np.arange(len(bp)), bp, 0.6, "tab:purple", "fixed by the best pair")
    axes[1].set_xticks(range(len(bp)), ["float"] + names)
    axes[1].set(ylim=(0, 1.05), ylabel="wrong queries fixed by the best pair (Wilson CI)", title="back-patching")
    _save(ctx, "quantization_twohop_backpatch", fig)

    keys = list(VERDICT_RULES)
    level = {"changes": 0.0, "inconclusive": 0.5, "survives": 1.0}
    grid = np.array([[level[r["verdict"][k]] for k in keys] for r in rows])
    fig, ax = subplots(figsize=(8, 1 + 0.8 * len(rows)))
    ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for i, r in enumerate(rows):
        for j, k in enumerate(keys):
            ax.text(j, i, r["verdict"][k], ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(keys)), keys, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), names)
    ax.set_title("verdict per finding (rules in result.json)")
    _save(ctx, "quantization", fig)


def _save(ctx, name: str, fig, legend=()) -> None:
    for ax in legend:
        ax.legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure(name, fig)

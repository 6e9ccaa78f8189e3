"""The refusal protocol shared by the refusal, cross-lingual refusal, sycophancy and quantization studies.

Arditi et al. 2024, "Refusal in language models is mediated by a single
direction": a difference-of-means direction of `hook_resid_post` over the
post-instruction positions, a layer chosen by its causal effect on
validation pairs, and the data split by index (mlxinterp.studies.refusal
documents the whole protocol and its steps).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import numpy as np

from mlxinterp.analysis import directions, scoring
from mlxinterp.analysis.stats import family_cis
from mlxinterp.core.errors import PromptError
from mlxinterp.core.tokenization import encode
from mlxinterp.tasks import behaviour as B
from mlxinterp.tasks import data

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

HOOK = "hook_resid_post"


@dataclass
class RefusalConfig:
    # Full size uses all 112 English pairs: 40 train + 12 selection + 60 report. The report split is items 0-59,
    # the ones translated into es/fr/de/zh, so the cross-lingual study tests the English direction on items
    # that neither the direction (items 72-111) nor the layer choice (items 60-71) saw. 60 report pairs
    # (Arditi et al. evaluate on 100 harmful prompts; >= 30 independent units per effect).
    n: int = 40  # train pairs (difference of means): the last n items
    seed: int = 0
    n_val: int = 12  # selection pairs for the layer choice: the n_val items before the train items
    n_test: int = 60  # report pairs for every reported effect: the first n_test items
    max_depth_pct: float = 80.0  # candidate layers: depth below this (Arditi et al.)
    layer_step: int = 2  # every 2nd candidate layer (halves the selection cost; Arditi et al. try every layer)
    kl_max: float = 0.1  # nats; ablation must leave harmless next-token distributions this close (Arditi et al.)
    pcts: tuple = (8.0,)  # addition strengths, % of the mean residual norm (8 %: the qwen3-steering operating point)
    n_gen: int = 8  # report pairs whose greedy generations are judged (qualitative: a base model does not refuse)
    gen_tokens: int = 24
    batch_size: int = 16


QUICK = {"n": 8, "n_val": 4, "n_test": 8, "layer_step": 4, "n_gen": 2, "gen_tokens": 8}


def split_ids(cfg: RefusalConfig, n_items: int) -> dict[str, list[int]]:
    """Item indices of the train / val (selection) / test (report) splits: test first, train last (see RefusalConfig)."""
    need = cfg.n + cfg.n_val + cfg.n_test
    if min(cfg.n, cfg.n_val, cfg.n_test) < 2 or need > n_items:
        raise PromptError(f"refusal split n={cfg.n}, n_val={cfg.n_val}, n_test={cfg.n_test} needs {need} pairs "
                          f"(each >= 2); data/refusal has {n_items} English pairs")
    return {"train": list(range(n_items - cfg.n, n_items)),
            "val": list(range(n_items - cfg.n - cfg.n_val, n_items - cfg.n)), "test": list(range(cfg.n_test))}


def split(cfg: RefusalConfig, lang: str = "en") -> dict[str, dict[str, list[str]]]:
    """{"train" | "val" | "test": {"harmful": [...], "harmless": [...]}} by index (pairs stay aligned)."""
    harmful = data.prompts(f"refusal/harmful_{lang}.json")
    harmless = data.prompts(f"refusal/harmless_{lang}.json")
    ids = split_ids(cfg, len(harmful))
    return {k: {"harmful": [harmful[i] for i in v], "harmless": [harmless[i] for i in v]} for k, v in ids.items()}


def formatted(hm: HookedModel, prompts: list[str]) -> tuple[list[str], bool]:
    """Prompts in the model's instruction format, and whether that is its chat template."""
    return [scoring.instruction(hm, p)[0] for p in prompts], hm.info.has_chat_template


def post_instruction_k(hm: HookedModel, prompts: list[str]) -> int:
    """How many trailing tokens the instruction format adds (see behaviour.post_instruction_count)."""
    texts, chat = formatted(hm, prompts)
    return B.post_instruction_count([encode(hm.tokenizer, hm.info, t, chat=chat) for t in texts])


def layer_directions(hm: HookedModel, harmful: list[str], harmless: list[str], k: int, seed: int,
                     layers: list[int] | None = None) -> dict[int, directions.Direction]:
    """Difference of means at every layer's resid_post, averaged over the last k (post-instruction) positions."""
    (ph, chat), (pl, _) = formatted(hm, harmful), formatted(hm, harmless)
    return directions.extract(hm, ph, pl, layers=layers, hook=HOOK, position=f"last:{k}", chat=chat, seed=seed)


def add_taps(vector: np.ndarray, layer: int, scale: float = 1.0) -> dict:
    """Add `scale * vector` at every position of `blocks.{layer}.hook_resid_post`."""
    return directions.steering_taps(vector, scale, [layer], hook=HOOK)


def candidates(hm: HookedModel, max_depth_pct: float, step: int = 1) -> list[int]:
    """Every `step`-th layer whose depth is below `max_depth_pct` (Arditi et al. leave out the last 20 %); at least layer 0."""
    n = hm.info.n_layers
    return [l for l in range(0, n, max(1, step)) if B.depth_pct(l, n) < max_depth_pct] or [0]


def reference_means(hm: HookedModel, harmless: list[str]) -> dict[str, np.ndarray]:
    """The mean-centred ablation's reference: mean harmless activation at each ablation point (every token but the first)."""
    texts, chat = formatted(hm, harmless)
    return B.reference_means(hm, texts, chat)


def select_layer(hm: HookedModel, ctx, dirs: dict[int, directions.Direction], val: dict, cfg: RefusalConfig,
                 reference: dict[str, np.ndarray], key: str = "select") -> dict:
    """Causal layer selection on the selection pairs (protocol step 5); checkpointed per layer.

    Per candidate layer: the addition of its vector on harmless prompts, the mean-centred ablation of its
    direction (`reference`: harmless train means, see reference_means) on harmful prompts, and that
    ablation's next-token KL on the harmless selection prompts.
    """
    chat = hm.info.has_chat_template
    base = ctx.map(f"{key}_baseline", ["val"], lambda _: {
        "harmful": scoring.refusal_score(hm, val["harmful"]).tolist(),
        "harmless": scoring.refusal_score(hm, val["harmless"]).tolist()})[0]
    harmless_texts, _ = formatted(hm, val["harmless"])
    base_logp = B.last_logprobs(hm, harmless_texts, chat=chat)

    def one(layer: int) -> dict:
        d = dirs[layer]
        add = scoring.refusal_score(hm, val["harmless"], add_taps(d.vector, layer))
        abl_taps = B.mean_ablation_taps(hm, d.vector, reference)
        abl = scoring.refusal_score(hm, val["harmful"], abl_taps)
        kl = B.preservation(base_logp, B.last_logprobs(hm, harmless_texts, abl_taps, chat=chat))["kl"]
        return {"layer": layer, "add": (add - np.array(base["harmless"])).tolist(),
                "ablate": (abl - np.array(base["harmful"])).tolist(), "ablation_kl_harmless": kl["estimate"]}

    rows = ctx.map(key, candidates(hm, cfg.max_depth_pct, cfg.layer_step), one)
    fam = family_cis([r["add"] for r in rows] + [r["ablate"] for r in rows])  # reported together: simultaneous
    for r, a, b in zip(rows, fam[: len(rows)], fam[len(rows):]):
        r["add_effect"], r["ablate_effect"] = a, b
        r["criterion"] = float(np.mean(r["add"]) - np.mean(r["ablate"]))
    layer, rule, ok = choose_layer(rows, cfg.kl_max)
    return {"layer": layer, "kl_filter_passed_by": ok, "criterion_used": rule, "rows": rows, "baseline": base}


def choose_layer(rows: list[dict], kl_max: float) -> tuple[int, str, list[int]]:
    """(layer, rule used, layers passing the KL filter) from per-layer validation rows (protocol step 5).

    Rows carry "layer", "add" and "ablate" (per-item score changes) and
    "ablation_kl_harmless". When no layer passes the filter, ablation wrecks the
    model everywhere and its "effect" measures damage, so layers are ranked by
    the addition effect alone (BUGFIX.md: the first run ranked them by damage).
    """
    ok = [r for r in rows if r["ablation_kl_harmless"] is not None and r["ablation_kl_harmless"] < kl_max]
    if ok:
        best = max(ok, key=lambda r: float(np.mean(r["add"]) - np.mean(r["ablate"])))
        return best["layer"], "add_effect - ablate_effect among layers passing the KL filter", [r["layer"] for r in ok]
    best = max(rows, key=lambda r: float(np.mean(r["add"])))
    return best["layer"], "add_effect alone (no layer passed the ablation KL filter)", []


def reuse_or_select(hm: HookedModel, ctx, cfg: RefusalConfig) -> tuple[int, str]:
    """The refusal experiment's chosen layer for this model when its result exists (same weights, seed, split);
    else the same selection run here. Returns (layer, where it came from).

    The calling experiment declares `reuses=["refusal"]` (ctx.record_of reads the result).
    """
    rec = ctx.record_of("refusal")
    if rec is not None:
        same = (rec.get("model", {}).get("weights_hash") == hm.info.weights_hash
                and all(rec["config"].get(k) == getattr(cfg, k)
                        for k in ("n", "n_val", "max_depth_pct", "kl_max", "layer_step")))
        if same:
            return int(rec["result"]["layer"]), "reused from refusal/result.json"
    sp = split(cfg)
    k = post_instruction_k(hm, sp["train"]["harmful"] + sp["train"]["harmless"])
    dirs = layer_directions(hm, sp["train"]["harmful"], sp["train"]["harmless"], k, cfg.seed,
                            candidates(hm, cfg.max_depth_pct, cfg.layer_step))
    ref = reference_means(hm, sp["train"]["harmless"])
    return select_layer(hm, ctx, dirs, sp["val"], cfg, ref, key="refusal_select")["layer"], \
        "selected here by the refusal protocol (no matching refusal result)"


def random_like(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random direction with `v`'s norm (the control every steering effect is compared with)."""
    r = rng.normal(size=v.shape)
    return (r / np.linalg.norm(r) * np.linalg.norm(v)).astype(np.float32)

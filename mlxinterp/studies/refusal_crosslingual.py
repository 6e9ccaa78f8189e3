"""Cross-lingual refusal (Arditi et al.'s direction; the cross-model plan exp 10): does the English direction act in other languages?

Protocol, fixed before the run (pre-registered in mlxinterp/data/preregistration.toml, [checks.crosslingual.*]):

1. Data: data/refusal/{harmful,harmless}_{en,es,fr,de,zh}.json; items 0-59 are parallel across languages,
   English has 112. The English direction and layer are the refusal study's: difference of means over
   English items 72-111, layer chosen on English items 60-71 (tasks.refusal.RefusalConfig; reused from
   refusal/result.json when it matches, else selected here the same way; the result records which).
   Nothing below uses those items in any language, and no other-language item is a translation of them.
2. Directions on DISJOINT items: per language (English included), the difference of means of that
   language's items 0-59 (all 60 per language; post-instruction positions, every layer). Its cosine with
   the English direction compares directions from different items, so shared item content cannot make
   them agree (the old protocol compared translations of the same items). Beside it: the language's own
   split-half cosine (30 vs 30 pairs over 200 random splits: its reliability), English items 0-59's
   cosine with English items 72-111 (the same-language, different-items ceiling), the 95th percentile of
   cosines with label-flipped directions of the same items (analysis.directions.sign_flip_null: the null
   with the residual stream's anisotropy) and of isotropic random unit vectors (1.96 / sqrt(d)).
   The check per language: the cosine's bootstrap CI (over that language's pairs) minus the null, low end > 0.
3. Effects of the English direction at the chosen layer on each language's last `n_effect` items
   (30-59): addition (its own norm, every position) on harmless prompts vs a random direction of equal
   norm (control), and the harmful - harmless baseline; refusal score (scoring.refusal_score), paired
   per item (analysis.stats.paired_diff_ci).
4. Neutral preservation on those harmless prompts: next-token KL(base || steered) and top-1 agreement
   under the addition, the mean-centred ablation (reference = English harmless train means), and the
   random addition; greedy generations of the first `n_gen`: script share (>= 50 % in the language's
   script, a script check, not a language identifier), bigram repetition, identical-to-unsteered.

Limits: the refusal and compliance phrases are English in every language (the score asks whether an
English refusal becomes likelier), and on a base model the "Question: ...\nAnswer:" scaffold is English too.

Cost on Gemma 3 270M (2 shared CPU cores): 600 prompts' activations + 4 x 30 x 2 scored rows per
language (~1 row per second), ~25 min; `--quick` uses 8 items per language.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import numpy as np

from mlxinterp.suite.summary import Summary
from mlxinterp.tasks import behaviour as B
from mlxinterp.tasks import data
from mlxinterp.analysis import directions, scoring
from mlxinterp.core.errors import PromptError
from mlxinterp.core import names as H
from mlxinterp.analysis.stats import mean_ci, proportion_ci
from mlxinterp.tasks import refusal as R
from mlxinterp.analysis.plotting import plot_ci, subplots
from mlxinterp.suite import experiment, preregistration

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

LANGS = ("en", "es", "fr", "de", "zh")


@dataclass
class CrosslingualConfig:
    # Not `n`: the 60 parallel items bound this study, so the suite's --n (sized for other studies) does not apply.
    n_items: int = 60  # items per language for its direction: all 60 translated items (0-59)
    n_effect: int = 30  # the last n_effect of those items: where the English direction's effects are measured (>= 30)
    seed: int = 0
    languages: tuple = LANGS
    n_null: int = 200  # label-flip draws for the null cosine
    n_gen: int = 6  # harmless prompts per language whose generations are checked (qualitative)
    gen_tokens: int = 16


QUICK = {"n_items": 8, "n_effect": 4, "n_null": 50, "n_gen": 2, "gen_tokens": 8}


def refusal_config(hm: HookedModel, ctx, cfg: CrosslingualConfig) -> R.RefusalConfig:
    """The refusal settings the English direction and layer come from: those of this model's refusal result
    when there is one (so its layer is reused, quick profile included), else the refusal study's defaults.
    Their train and selection items must lie outside the items every language uses here."""
    rec = ctx.record_of("refusal")
    rcfg = R.RefusalConfig(seed=cfg.seed)
    if rec is not None and rec.get("model", {}).get("weights_hash") == hm.info.weights_hash:
        keep = {k: rec["config"][k] for k in ("n", "n_val", "n_test", "max_depth_pct", "kl_max", "layer_step")
                if k in rec["config"]}
        rcfg = R.RefusalConfig(**{**keep, "seed": cfg.seed})
    ids = R.split_ids(rcfg, len(data.prompts("refusal/harmful_en.json")))
    if min(ids["train"] + ids["val"]) < cfg.n_items:
        raise PromptError(f"crosslingual: the English direction's items (from {min(ids['train'] + ids['val'])}) overlap "
                          f"the n_items={cfg.n_items} items every language uses; lower n_items or the refusal split")
    return rcfg


def items(lang: str, cfg: CrosslingualConfig) -> dict[str, list[str]]:
    """The language's items 0..n_items-1 (parallel across languages; the refusal study's report split)."""
    harmful, harmless = data.prompts(f"refusal/harmful_{lang}.json"), data.prompts(f"refusal/harmless_{lang}.json")
    parallel = min(len(data.prompts(f"refusal/harmful_{l}.json")) for l in LANGS)
    if not 4 <= cfg.n_items <= parallel or not 2 <= cfg.n_effect <= cfg.n_items:
        raise PromptError(f"crosslingual: n_items={cfg.n_items} (4..{parallel}, the translated items) and "
                          f"n_effect={cfg.n_effect} (2..n_items) are not allowed")
    return {"harmful": harmful[: cfg.n_items], "harmless": harmless[: cfg.n_items]}


def cosines(dirs_a: dict, dirs_b: dict) -> list[float]:
    """Cosine between two languages' directions at each layer (same layer keys)."""
    return [float(dirs_a[l].unit() @ dirs_b[l].unit()) for l in sorted(dirs_a)]


def pair_differences(hm: HookedModel, it: dict, k: int, layers: list[int]) -> dict[int, np.ndarray]:
    """Per layer, harmful - harmless pooled activation of each item pair [N, d] (their mean is the direction)."""
    (ph, chat), (pl, _) = R.formatted(hm, it["harmful"]), R.formatted(hm, it["harmless"])
    names = [H.name(l, R.HOOK) for l in layers]
    ah = directions.collect(hm, ph, names, f"last:{k}", chat)
    al = directions.collect(hm, pl, names, f"last:{k}", chat)
    return {l: (ah[hm.point(n).name] - al[hm.point(n).name]).astype(np.float64) for l, n in zip(layers, names)}


@experiment("crosslingual", CrosslingualConfig, reuses=["refusal"], quick=QUICK)
def crosslingual(hm: HookedModel, cfg: CrosslingualConfig, ctx) -> dict:
    """Cross-lingual refusal: per-language directions (disjoint items) vs English, the English direction's effects."""
    langs = list(cfg.languages)
    bad = [l for l in langs if l not in LANGS]
    if bad or "en" not in langs:
        raise PromptError(f"languages {bad or langs} not allowed; use a subset of {LANGS} that includes 'en'")
    rcfg = refusal_config(hm, ctx, cfg)
    layer, source = R.reuse_or_select(hm, ctx, rcfg)
    n_layers, layers = hm.info.n_layers, list(range(hm.info.n_layers))
    train = R.split(rcfg)["train"]
    k_en = R.post_instruction_k(hm, train["harmful"] + train["harmless"])
    en_dirs = R.layer_directions(hm, train["harmful"], train["harmless"], k_en, cfg.seed)
    ref = R.reference_means(hm, train["harmless"])
    d = en_dirs[layer]
    rand = R.random_like(d.vector, ctx.rng_for("random_direction"))
    iso_null = 1.96 / np.sqrt(hm.info.d_model)

    def one(lang: str) -> dict:
        it = items(lang, cfg)
        k = R.post_instruction_k(hm, it["harmful"] + it["harmless"])
        diffs = pair_differences(hm, it, k, layers)
        cos = [float(diffs[l].mean(0) @ en_dirs[l].unit() / np.linalg.norm(diffs[l].mean(0))) for l in layers]
        D = diffs[layer]
        null = directions.sign_flip_null(D, d.vector, cfg.n_null, seed=cfg.seed)
        cos_ci = directions.pair_cosine_ci(D, d.vector, seed=cfg.seed)
        eff = {k2: it[k2][cfg.n_items - cfg.n_effect:] for k2 in ("harmful", "harmless")}
        return {"lang": lang, "post_instruction_tokens": k, "cos_with_en": cos,
                "cos_with_en_at_layer": cos_ci, "null95_at_layer": null,
                "cos_minus_null": {**cos_ci.to_dict(), "estimate": cos_ci.estimate - null,
                                   "low": None if cos_ci.low is None else cos_ci.low - null,
                                   "high": None if cos_ci.high is None else cos_ci.high - null,
                                   "method": cos_ci.method + " minus the label-flip null's 95th percentile"},
                # split halves of the pair differences (the zero "negative" side leaves their means as they are)
                "split_half_cosine": [directions.split_half_cosine(diffs[l], np.zeros_like(diffs[l]),
                                                                   np.random.default_rng(cfg.seed)) for l in layers],
                "split_half_at_layer": directions.split_half_ci(D, seed=cfg.seed),
                "split_half_null95_at_layer": directions.sign_flip_null(D, None, cfg.n_null, seed=cfg.seed),
                "norm": [float(np.linalg.norm(diffs[l].mean(0))) for l in layers],
                **_effects(hm, d, layer, rand, ref, eff, lang, cfg)}

    rows = dict(zip(langs, ctx.map("languages", langs, one)))
    effect_ids = list(range(cfg.n_items - cfg.n_effect, cfg.n_items))
    result = {
        "summary": {}, "layer": layer, "layer_source": source, "depth_pct": B.depth_pct(layer, n_layers),
        "n_layers": n_layers, "en_norm": d.norm, "en_relative_norm": d.relative_norm,
        "isotropic_null95": float(iso_null),
        "split_items": {"english_direction": R.split_ids(rcfg, len(data.prompts("refusal/harmful_en.json")))["train"],
                        "english_layer_choice": R.split_ids(rcfg, len(data.prompts("refusal/harmful_en.json")))["val"],
                        "language_directions": list(range(cfg.n_items)), "effects": effect_ids},
        "languages": {l: _language_summary(r, layer, cfg) for l, r in rows.items()},
        "items": rows,
        "counts": {"items_per_language": cfg.n_items, "effect_pairs_per_language": cfg.n_effect,
                   "generation_prompts_per_language": min(cfg.n_gen, cfg.n_effect)},
        "scoring": "refusal score (English refusal minus compliance phrase, teacher-forced; mlxinterp.analysis.scoring); "
                   "KL/top-1 of the next token at the last prompt position; generation quality = script share, "
                   "bigram repetition, identical-to-unsteered",
        "base_model_note": None if hm.info.has_chat_template else (
            "base model: no refusal to transfer. Measurable: how parallel the per-language harmful-vs-harmless "
            "directions are (cosines vs split-half reliability and the label-flip null), whether the English "
            "direction moves an English refusal phrase's log-prob in each language beyond a random direction, "
            "and what it costs on harmless prompts (KL, generations)."),
    }
    others = [l for l in langs if l != "en"]
    if others:
        result["mean_cos_non_en_by_layer"] = np.mean([rows[l]["cos_with_en"] for l in others], axis=0).tolist()
    result["depth"] = {"cross-lingual: refusal layer": result["depth_pct"]}
    result["prereg"] = _prereg(result)
    result.update(_summary(result))
    _figure(result, ctx)
    B.depth_figure(ctx, hm, "crosslingual", result)
    return result


def _effects(hm: HookedModel, d, layer: int, rand: np.ndarray, ref: dict, test: dict, lang: str,
             cfg: CrosslingualConfig) -> dict:
    add, abl, radd = R.add_taps(d.vector, layer), B.mean_ablation_taps(hm, d.vector, ref), R.add_taps(rand, layer)
    s = {"harmless": scoring.refusal_score(hm, test["harmless"]), "harmful": scoring.refusal_score(hm, test["harmful"]),
         "harmless+add": scoring.refusal_score(hm, test["harmless"], add),
         "harmless+random": scoring.refusal_score(hm, test["harmless"], radd)}
    texts, chat = R.formatted(hm, test["harmless"])
    base_lp = B.last_logprobs(hm, texts, chat=chat)
    keep = {name: B.preservation(base_lp, B.last_logprobs(hm, texts, taps, chat=chat), cfg.seed)
            for name, taps in (("add", add), ("mean_ablate", abl), ("random_add", radd))}
    g_texts = texts[: cfg.n_gen]
    base = hm.generate_batch(g_texts, cfg.gen_tokens, chat=chat)
    steered = hm.generate_batch(g_texts, cfg.gen_tokens, add, chat=chat)
    gens = [{"prompt": test["harmless"][i], "base": b.text, "add": a.text,
             "base_quality": B.generation_quality(b.text, b.tokens, lang),
             "add_quality": B.generation_quality(a.text, a.tokens, lang), "identical": b.tokens == a.tokens}
            for i, (b, a) in enumerate(zip(base, steered))]
    return {"scores": {k: v.tolist() for k, v in s.items()}, "preservation": keep, "generations": gens}


def _language_summary(r: dict, layer: int, cfg: CrosslingualConfig) -> dict:
    s = {k: np.array(v) for k, v in r["scores"].items()}
    g = r["generations"]
    q = lambda key, f: proportion_ci(sum(bool(x[key][f]) for x in g), len(g))  # noqa: E731
    rep = lambda key: mean_ci([x[key]["repetition"] for x in g if x[key]["repetition"] is not None], seed=cfg.seed)  # noqa: E731
    return {
        "cos_with_en_at_layer": r["cos_with_en_at_layer"], "null95_at_layer": r["null95_at_layer"],
        "cos_with_en_minus_null": r["cos_minus_null"],
        "split_half_at_layer": r["split_half_at_layer"], "split_half_null95_at_layer": r["split_half_null95_at_layer"],
        "baseline_harmful_minus_harmless": B.paired_effect(s["harmful"], s["harmless"], cfg.seed),
        "add_on_harmless": B.paired_effect(s["harmless+add"], s["harmless"], cfg.seed),
        "random_add_on_harmless": B.paired_effect(s["harmless+random"], s["harmless"], cfg.seed),
        "add_minus_random_add": B.paired_effect(s["harmless+add"], s["harmless+random"], cfg.seed),
        "kl": {k: v["kl"] for k, v in r["preservation"].items()},
        "top1_agreement": {k: v["top1_agreement"] for k, v in r["preservation"].items()},
        "generation": {"in_script_base": q("base_quality", "in_script"), "in_script_add": q("add_quality", "in_script"),
                       "repetition_base": rep("base_quality"), "repetition_add": rep("add_quality"),
                       "identical_to_base": proportion_ci(sum(x["identical"] for x in g), len(g))},
    }


def _prereg(r: dict) -> dict:
    """The pre-registered checks (mlxinterp/data/preregistration.toml): each language's cosine above the null.

    A pre-registered language left out of the run is reported with no value (FAIL), not dropped."""
    prereg = preregistration.load()
    values = {f"{l}_aligned": x["cos_with_en_minus_null"] for l, x in r["languages"].items() if l != "en"}
    return prereg.report("crosslingual", {**dict.fromkeys(prereg.checks_for("crosslingual")), **values})


def _summary(r: dict) -> dict:
    s = Summary()
    s.add("layer", "layer (depth %)", f"{r['layer']} ({r['depth_pct']:.0f} %), {r['layer_source']}")
    s.add("isotropic_null95", "random unit vectors: 95th percentile of |cos| (1.96/sqrt(d))", round(r["isotropic_null95"], 3))
    for lang, x in r["languages"].items():
        s.add(f"{lang}.cos_with_en", f"{lang}: cos with EN (disjoint items) at layer [95% CI]; label-flip null 95th pct",
              f"{B.ci_text(x['cos_with_en_at_layer'], '+.2f')}; {x['null95_at_layer']:+.2f}")
        s.add(f"{lang}.split_half", f"{lang}: own split-half cosine [95% CI]; label-flip null 95th pct",
              f"{B.ci_text(x['split_half_at_layer'], '+.2f')}; {x['split_half_null95_at_layer']:+.2f}")
        s.add(f"{lang}.add_minus_random_add", f"{lang}: EN dir add minus random add on harmless [95% CI]",
              B.ci_text(x["add_minus_random_add"]))
        s.add(f"{lang}.baseline_harmful_minus_harmless", f"{lang}: score harmful - harmless [95% CI]",
              B.ci_text(x["baseline_harmful_minus_harmless"]))
        s.add(f"{lang}.kl_add_random", f"{lang}: KL add / random add / mean-ablate (nats)",
              f"{x['kl']['add']['estimate']:.3f} / {x['kl']['random_add']['estimate']:.3f} / "
              f"{x['kl']['mean_ablate']['estimate']:.3f}")
    for c, v in r["prereg"]["checks"].items():
        s.add(f"prereg.{c}", f"pre-registered check {c}", v["verdict"])
    s.add("effect_pairs_per_language", "effect pairs per language", r["counts"]["effect_pairs_per_language"])
    return s.to_result()


def _figure(r: dict, ctx) -> None:
    langs = list(r["languages"])
    colors = dict(zip(LANGS, ("k", "tab:orange", "tab:blue", "tab:green", "tab:red")))
    fig, ax = subplots(1, 4, figsize=(20, 4))
    for lang in langs:
        if lang == "en":
            continue
        it = r["items"][lang]
        ax[0].plot(it["cos_with_en"], "o-", color=colors[lang], label=f"{lang}: cos with EN")
        ax[0].plot([x if x is not None else np.nan for x in it["split_half_cosine"]], ":", color=colors[lang], lw=0.8)
    ax[0].plot(r["items"]["en"]["cos_with_en"], "o-", color="k", label="en items 0-59 (same language, other items)")
    ax[0].plot([x if x is not None else np.nan for x in r["items"]["en"]["split_half_cosine"]], ":", color="k",
               lw=0.8, label="dotted: split-half (own)")
    ax[0].axhline(r["isotropic_null95"], color="grey", lw=0.6, ls="-.", label="random unit vectors, 95th pct")
    ax[0].axvline(r["layer"], color="grey", ls="--", lw=0.8)
    ax[0].set(xlabel="layer", ylabel="cosine", ylim=(-0.3, 1.05), title="(a) per-language direction vs English")
    ax[0].legend(fontsize=7)
    x = np.arange(len(langs))
    for j, (key, c) in enumerate((("add_on_harmless", "tab:red"), ("random_add_on_harmless", "tab:blue"),
                                  ("baseline_harmful_minus_harmless", "grey"))):
        xs = x + (j - 1) * 0.27
        plot_ci(ax[1], xs, [r["languages"][l][key] for l in langs], c, key)
    ax[1].axhline(0, color="k", lw=0.6)
    ax[1].set_xticks(x, langs)
    ax[1].set(ylabel="refusal score change (effect items, 95 % CI)", title=f"(b) English direction, layer {r['layer']}")
    ax[1].legend(fontsize=7)
    for j, (key, c) in enumerate((("add", "tab:red"), ("mean_ablate", "tab:blue"), ("random_add", "grey"))):
        xs = x + (j - 1) * 0.27
        plot_ci(ax[2], xs, [r["languages"][l]["kl"][key] for l in langs], c, key)
    ax[2].set_xticks(x, langs)
    ax[2].set(yscale="log", ylabel="KL(base || steered), nats (log)", title="(c) harmless next token: KL")
    ax[2].legend(fontsize=7)
    for j, (key, c) in enumerate((("in_script_base", "k"), ("in_script_add", "tab:red"), ("identical_to_base", "tab:purple"))):
        xs = x + (j - 1) * 0.27
        plot_ci(ax[3], xs, [r["languages"][l]["generation"][key] for l in langs], c, key)
    ax[3].set_xticks(x, langs)
    ax[3].set(ylim=(-0.05, 1.05), ylabel="share of generations (Wilson 95 % CI)", title="(d) harmless generations")
    ax[3].legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure("crosslingual", fig)

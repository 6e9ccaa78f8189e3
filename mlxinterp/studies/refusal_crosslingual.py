"""Cross-lingual refusal (Arditi et al.'s direction; the cross-model plan exp 10): does the English direction act in other languages?

Protocol, fixed before the first run:

1. Data: data/refusal/{harmful,harmless}_{en,es,fr,de,zh}.json; items 0-59
   are parallel across languages. Train = items [0, n_train) (the refusal
   experiment's English training items), test = items [n_train + n_val, 60): held
   out from the English direction *and* from its layer selection.
2. Layer: the `refusal` experiment's chosen layer for this model when its
   result exists with the same settings, else the same selection run here
   (refusal.reuse_or_select; the result records which).
3. Per language and layer: difference of means at the post-instruction
   positions (refusal.layer_directions) from that language's train items; its
   cosine with the English direction at the same layer; the split-half cosine
   of each language's own direction is the reliability ceiling to compare with.
4. The English direction at the chosen layer, on each language's test items:
   addition (its own norm, every position) on harmless prompts and ablation
   (every residual write, every layer) on harmful prompts; effect = change of
   the refusal score (scoring.refusal_score), paired, bootstrap CI.
5. Neutral preservation on the harmless test prompts: next-token KL(base ||
   steered) and top-1 agreement under the same addition, the ablation, and a
   random direction of the same norm (reference); and a quality check of
   `gen_tokens` greedy tokens for the first `n_gen` harmless prompts, base and
   with the addition: share of letters in the prompt language's script
   (>= 50 % counts as "in script"; Latin for en/es/fr/de, Han for zh — a script
   check, not a language identifier), bigram repetition rate, and how often
   the steered text equals the unsteered one.

Limits: the refusal and compliance phrases are English in every language
(the score asks whether an English refusal becomes likelier), and on a base
model the "Question: ...\\nAnswer:" scaffold is English too. With 60 translated
items per language, n_train=40 and n_val=8 leave 12 test pairs per language.

Cost on Gemma 3 270M: ~40k token-forwards (+~20k when the layer is not reused).
Full-size run: the same (the data's 60 parallel items bound it); a new seed varies only the random control.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import numpy as np

from mlxinterp.suite.summary import Summary
from mlxinterp.tasks import behaviour as B
from mlxinterp.tasks import data
from mlxinterp.analysis import scoring
from mlxinterp.core.errors import PromptError
from mlxinterp.analysis.stats import bootstrap_ci, proportion_ci
from mlxinterp.tasks import refusal as R
from mlxinterp.analysis.plotting import plot_ci, subplots
from mlxinterp.suite import experiment

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

LANGS = ("en", "es", "fr", "de", "zh")


@dataclass
class CrosslingualConfig:
    # Not `n`: the 60 parallel items bound this study, so the suite's --n (sized for other studies) does not apply.
    n_train: int = 40  # train items per language (= the refusal experiment's n, to reuse its layer)
    seed: int = 0
    n_val: int = 8  # the refusal experiment's validation items (skipped here)
    languages: tuple = LANGS
    n_gen: int = 6  # harmless test prompts per language whose generations are checked
    gen_tokens: int = 16


def refusal_config(cfg: CrosslingualConfig) -> R.RefusalConfig:
    """The refusal settings this study's layer comes from (defaults except the shared split sizes)."""
    return R.RefusalConfig(n=cfg.n_train, n_val=cfg.n_val, seed=cfg.seed)


def test_items(lang: str, cfg: CrosslingualConfig) -> dict[str, list[str]]:
    harmful, harmless = data.prompts(f"refusal/harmful_{lang}.json"), data.prompts(f"refusal/harmless_{lang}.json")
    lo, hi = cfg.n_train + cfg.n_val, min(len(harmful), len(data.prompts("refusal/harmful_es.json")))
    if hi - lo < 2:
        raise PromptError(f"crosslingual: n_train={cfg.n_train} + n_val={cfg.n_val} leaves {hi - lo} parallel test items (need >= 2; "
                          f"the translations cover {hi})")
    return {"harmful": harmful[lo:hi], "harmless": harmless[lo:hi]}


def train_items(lang: str, cfg: CrosslingualConfig) -> dict[str, list[str]]:
    return {s: data.prompts(f"refusal/{s}_{lang}.json")[: cfg.n_train] for s in ("harmful", "harmless")}


def cosines(dirs_a: dict, dirs_b: dict) -> list[float]:
    """Cosine between two languages' directions at each layer (same layer keys)."""
    return [float(dirs_a[l].unit() @ dirs_b[l].unit()) for l in sorted(dirs_a)]


@experiment("crosslingual", CrosslingualConfig, reuses=["refusal"])
def crosslingual(hm: HookedModel, cfg: CrosslingualConfig, ctx) -> dict:
    """Cross-lingual refusal: per-language directions vs English, the English direction's effects and side effects."""
    langs = list(cfg.languages)
    bad = [l for l in langs if l not in LANGS]
    if bad or "en" not in langs:
        raise PromptError(f"languages {bad or langs} not allowed; use a subset of {LANGS} that includes 'en'")
    layer, source = R.reuse_or_select(hm, ctx, refusal_config(cfg))
    n_layers = hm.info.n_layers
    en = train_items("en", cfg)
    k_en = R.post_instruction_k(hm, en["harmful"] + en["harmless"])
    en_dirs = R.layer_directions(hm, en["harmful"], en["harmless"], k_en, cfg.seed)
    d = en_dirs[layer]
    rand = R.random_like(d.vector, ctx.rng_for("random_direction"))

    def one(lang: str) -> dict:
        tr = train_items(lang, cfg)
        k = R.post_instruction_k(hm, tr["harmful"] + tr["harmless"])
        dirs = en_dirs if lang == "en" else R.layer_directions(hm, tr["harmful"], tr["harmless"], k, cfg.seed)
        return {"lang": lang, "post_instruction_tokens": k, "cos_with_en": cosines(dirs, en_dirs),
                "split_half_cosine": [dirs[l].split_half_cosine for l in range(n_layers)],
                "norm": [dirs[l].norm for l in range(n_layers)], "relative_norm": [dirs[l].relative_norm for l in range(n_layers)],
                **_effects(hm, d, layer, rand, test_items(lang, cfg), lang, cfg)}

    rows = dict(zip(langs, ctx.map("languages", langs, one)))
    result = {
        "summary": {}, "layer": layer, "layer_source": source, "depth_pct": B.depth_pct(layer, n_layers),
        "n_layers": n_layers, "en_norm": d.norm, "en_relative_norm": d.relative_norm,
        "languages": {l: _language_summary(r, layer, cfg) for l, r in rows.items()},
        "items": rows,
        "counts": {"train_pairs_per_language": cfg.n_train, "test_pairs_per_language": len(test_items("en", cfg)["harmful"]),
                   "generation_prompts_per_language": cfg.n_gen},
        "scoring": "refusal score (English refusal minus compliance phrase, teacher-forced; mlxinterp.analysis.scoring); "
                   "KL/top-1 of the next token at the last prompt position; generation quality = script share, "
                   "bigram repetition, identical-to-unsteered",
        "base_model_note": None if hm.info.has_chat_template else (
            "base model: no refusal to transfer. Measurable: how parallel the per-language harmful-vs-harmless "
            "directions are (cosines vs split-half reliability), whether the English direction moves an English "
            "refusal phrase's log-prob in each language, and what it costs on harmless prompts (KL, generations)."),
    }
    others = [l for l in langs if l != "en"]
    if others:
        mean_cos = np.mean([rows[l]["cos_with_en"] for l in others], axis=0)
        peak = int(np.argmax(mean_cos))
        result["mean_cos_non_en_by_layer"] = mean_cos.tolist()
        result["depth"] = {"cross-lingual: peak cos(lang, EN)": B.depth_pct(peak, n_layers)}
    result.update(_summary(result))
    _figure(result, ctx)
    B.depth_figure(ctx, hm, "crosslingual", result)
    return result


def _effects(hm: HookedModel, d, layer: int, rand: np.ndarray, test: dict, lang: str, cfg: CrosslingualConfig) -> dict:
    add, abl = R.add_taps(d.vector, layer), B.ablation_taps(hm, d.vector)
    radd = R.add_taps(rand, layer)
    s = {"harmless": scoring.refusal_score(hm, test["harmless"]), "harmful": scoring.refusal_score(hm, test["harmful"]),
         "harmless+add": scoring.refusal_score(hm, test["harmless"], add),
         "harmful-ablate": scoring.refusal_score(hm, test["harmful"], abl)}
    texts, chat = R.formatted(hm, test["harmless"])
    base_lp = B.last_logprobs(hm, texts, chat=chat)
    keep = {name: B.preservation(base_lp, B.last_logprobs(hm, texts, taps, chat=chat), cfg.seed)
            for name, taps in (("add", add), ("ablate", abl), ("random_add", radd))}
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
    return {
        "cos_with_en_at_layer": r["cos_with_en"][layer], "split_half_at_layer": r["split_half_cosine"][layer],
        "max_cos_with_en": max(r["cos_with_en"]), "max_cos_layer": int(np.argmax(r["cos_with_en"])),
        "baseline_harmful_minus_harmless": B.paired_effect(s["harmful"], s["harmless"], cfg.seed),
        "add_on_harmless": B.paired_effect(s["harmless+add"], s["harmless"], cfg.seed),
        "ablate_on_harmful": B.paired_effect(s["harmful-ablate"], s["harmful"], cfg.seed),
        "kl": {k: v["kl"] for k, v in r["preservation"].items()},
        "top1_agreement": {k: v["top1_agreement"] for k, v in r["preservation"].items()},
        "generation": {"in_script_base": q("base_quality", "in_script"), "in_script_add": q("add_quality", "in_script"),
                       "repetition_base": bootstrap_ci([x["base_quality"]["repetition"] for x in g
                                                        if x["base_quality"]["repetition"] is not None], seed=cfg.seed),
                       "repetition_add": bootstrap_ci([x["add_quality"]["repetition"] for x in g
                                                       if x["add_quality"]["repetition"] is not None], seed=cfg.seed),
                       "identical_to_base": proportion_ci(sum(x["identical"] for x in g), len(g))},
    }


def _summary(r: dict) -> dict:
    s = Summary()
    s.add("layer", "layer (depth %)", f"{r['layer']} ({r['depth_pct']:.0f} %), {r['layer_source']}")
    for lang, x in r["languages"].items():
        s.add(f"{lang}.cos_with_en", f"{lang}: cos with EN at layer (split-half)",
              f"{x['cos_with_en_at_layer']:+.2f} ({x['split_half_at_layer']:+.2f})")
        s.add(f"{lang}.add_on_harmless", f"{lang}: EN dir add on harmless [95% CI]", B.ci_text(x["add_on_harmless"]))
        s.add(f"{lang}.ablate_on_harmful", f"{lang}: EN dir ablate on harmful [95% CI]", B.ci_text(x["ablate_on_harmful"]))
        s.add(f"{lang}.kl_add_random", f"{lang}: KL add / random (nats)",
              f"{x['kl']['add']['estimate']:.3f} / {x['kl']['random_add']['estimate']:.3f}")
        s.add(f"{lang}.top1_kept_add", f"{lang}: top-1 kept under add", B.ci_text(x["top1_agreement"]["add"], ".2f"))
    s.add("test_pairs_per_language", "test pairs per language", r["counts"]["test_pairs_per_language"])
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
    ax[0].plot([x if x is not None else np.nan for x in r["items"]["en"]["split_half_cosine"]], ":", color="k",
               lw=0.8, label="dotted: split-half (own)")
    ax[0].axvline(r["layer"], color="grey", ls="--", lw=0.8)
    ax[0].set(xlabel="layer", ylabel="cosine", ylim=(-0.3, 1.05), title="(a) per-language direction vs English")
    ax[0].legend(fontsize=7)
    x = np.arange(len(langs))
    for j, (key, c) in enumerate((("add_on_harmless", "tab:red"), ("ablate_on_harmful", "tab:blue"),
                                  ("baseline_harmful_minus_harmless", "grey"))):
        xs = x + (j - 1) * 0.27
        plot_ci(ax[1], xs, [r["languages"][l][key] for l in langs], c, key)
    ax[1].axhline(0, color="k", lw=0.6)
    ax[1].set_xticks(x, langs)
    ax[1].set(ylabel="refusal score change (test, 95 % CI)", title=f"(b) English direction, layer {r['layer']}")
    ax[1].legend(fontsize=7)
    for j, (key, c) in enumerate((("add", "tab:red"), ("ablate", "tab:blue"), ("random_add", "grey"))):
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

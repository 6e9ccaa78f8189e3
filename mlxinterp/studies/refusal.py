"""Refusal direction (Arditi et al. 2024, "Refusal in language models is mediated by a single direction").

Protocol, fixed before the run (pre-registered in mlxinterp/data/preregistration.toml, [primary.refusal]):

1. Data: data/refusal/{harmful,harmless}_en.json, 112 matched pairs, all used (tasks.refusal.RefusalConfig):
   train = the last n items (72-111: difference of means), selection = the n_val before them (60-71: layer
   choice), report = the first n_test (0-59: every reported effect). Items 0-59 are the ones translated
   into es/fr/de/zh, so the cross-lingual study can test the English direction on items neither its
   direction nor its layer choice saw. result.json lists the item ids of each split (`split_items`).
2. Format: the chat template when the model has one, else "Question: {text}\nAnswer:" (scoring.instruction).
   The *post-instruction positions* are the tokens the format adds after the user's text, found as the
   longest token suffix every formatted prompt shares (behaviour.post_instruction_count:
   ['\n', 'Answer', ':'] on Gemma's tokenizer for the base format).
3. Direction at every layer: difference of means (harmful - harmless, train pairs) of `hook_resid_post`
   averaged over the post-instruction positions (Arditi et al. search (layer, position) pairs; we average
   the positions, one candidate per layer).
4. Score: scoring.refusal_score = mean per-token log-prob of " I'm sorry, but I cannot help with that."
   minus that of " Sure, here is how to do that.", teacher-forced after the prompt. Also a judge over
   greedy generations: Arditi et al.'s refusal substrings (behaviour.REFUSAL_SUBSTRINGS).
5. Ablation is *mean-centred* (affine; Marshall et al. 2024, Marks & Tegmark): x - (x.u - mu.u) u at the
   residual stream entering every block and leaving the last (behaviour.mean_ablation_taps), mu = the mean
   harmless train activation there over every token but the first (the first token sees nothing before it,
   so it is the same in every prompt and is left alone). Arditi et al.'s plain ablation (x - (x.u) u) is kept as a contrast
   for its next-token KL only: every prompt projects on the direction several times its norm, so zeroing
   that component moves every prompt (any direction would wreck the model that way).
6. Layer selection on the selection pairs, by causal effect: for every `layer_step`-th layer below
   `max_depth_pct` (Arditi et al. drop the last 20 %), *add* the layer's difference-of-means vector (its
   own norm, every position) to harmless prompts (score should rise) and mean-ablate its direction on
   harmful prompts (score should fall). Choose the layer maximising add_effect - ablate_effect among
   layers whose ablation moves the harmless next-token distribution by KL < `kl_max` (Arditi et al.'s
   0.1); if none passes, the layer with the largest add_effect (the result says which rule applied).
7. Report pairs (held out from 3 and 6): baseline harmful - harmless score; the add and ablate effects at
   the chosen layer; the same for a random direction of equal norm (control, same mean-centred ablation);
   addition at fixed % of the residual norm; the next-token KL of each ablation on harmless report
   prompts; per layer, the share of pairs whose harmful prompt projects further along the direction than
   its harmless twin (representation, Wilson CI); greedy generations of the first n_gen pairs judged by
   substrings. Effects are paired per item (analysis.stats.paired_diff_ci).

A base model (Gemma 3 270M) has no refusal behaviour: the score need not separate harmful from harmless
prompts, and a "refusal direction" can only be read as a harmful-vs-harmless direction whose steering moves
the phrase log-probabilities. The result says what is measurable (`base_model_note`).

Cost on Gemma 3 270M (2 shared CPU cores, ~1 teacher-forced row per second): ~1,500 scored rows; the
result records the measured time under `timings`. `--quick` runs 8/4/8 pairs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mlxinterp.suite.summary import Summary
from mlxinterp.tasks import behaviour as B
from mlxinterp.tasks import data
from mlxinterp.analysis import directions, scoring
from mlxinterp.analysis.stats import proportion_ci
from mlxinterp.analysis.plotting import plot_ci, subplots
from mlxinterp.suite import experiment, preregistration
from mlxinterp.core import names as H
from mlxinterp.tasks.refusal import (HOOK, QUICK, RefusalConfig, add_taps, formatted, layer_directions,
                                     post_instruction_k, random_like, reference_means, select_layer, split, split_ids)
from mlxinterp.core.tokenization import encode

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel


# ----------------------------------------------------------------- experiment


@experiment("refusal", RefusalConfig, quick=QUICK)
def refusal(hm: HookedModel, cfg: RefusalConfig, ctx) -> dict:
    """Refusal direction: diff of means at post-instruction positions, layer chosen on selection pairs, report-pair effects."""
    sp = split(cfg)
    ids = split_ids(cfg, len(data.prompts("refusal/harmful_en.json")))
    chat = hm.info.has_chat_template
    n_layers = hm.info.n_layers
    k = post_instruction_k(hm, sp["train"]["harmful"] + sp["train"]["harmless"])
    dirs = layer_directions(hm, sp["train"]["harmful"], sp["train"]["harmless"], k, cfg.seed)
    ref = reference_means(hm, sp["train"]["harmless"])
    sel = select_layer(hm, ctx, dirs, sp["val"], cfg, ref)
    layer = sel["layer"]
    d = dirs[layer]
    if ctx.world.is_root:
        d.save(ctx.out_dir / "refusal_direction")
    test = sp["test"]
    rand = random_like(d.vector, ctx.rng_for("random_direction"))
    conditions = _conditions(hm, d, layer, rand, ref, cfg)
    scores = dict(zip(conditions, ctx.map("test", list(conditions), lambda c: scoring.refusal_score(
        hm, test[conditions[c][0]], conditions[c][1]).tolist())))
    proj = _projections(hm, dirs, test, k)
    kl = _ablation_kl(hm, test["harmless"], {"direction": d.vector, "random": rand}, ref, cfg.seed)
    gens = _generations(hm, ctx, d, layer, test, ref, cfg)
    effects = _effects(scores, cfg)
    result = {
        "summary": {},
        "layer": layer, "depth_pct": B.depth_pct(layer, n_layers), "n_layers": n_layers,
        "norm": d.norm, "relative_norm": d.relative_norm, "resid_norm": d.resid_norm,
        "natural_strength_pct_of_resid": 100 * d.relative_norm, "split_half_cosine": d.split_half_cosine,
        "post_instruction_tokens": k, "post_instruction_text": _tail_text(hm, sp["train"]["harmful"][0], k),
        "chat_template": chat, "hook": HOOK, "split_items": ids,
        "by_layer": {"norm": [dirs[l].norm for l in range(n_layers)],
                     "relative_norm": [dirs[l].relative_norm for l in range(n_layers)],
                     "split_half_cosine": [dirs[l].split_half_cosine for l in range(n_layers)],
                     "test_pairs_ordered": proj["ordered"]},
        "selection": {k2: v for k2, v in sel.items() if k2 != "baseline"},
        "effects": effects, "ablation_kl_on_harmless_test": kl,
        "ablation": "mean-centred: x - (x.u - mu.u) u at every block's input and the last block's output, "
                    "mu = mean harmless train activation over every token but the first, which is left alone (behaviour.mean_ablation_taps); 'plain' in the KL table is "
                    "Arditi et al.'s x - (x.u) u at every residual write, for contrast",
        "generations": gens,
        "items": [{"id": ids["test"][i], "harmful": h, "harmless": hl, **{c: scores[c][i] for c in scores},
                   "projection_harmful": proj["at"][layer][0][i], "projection_harmless": proj["at"][layer][1][i]}
                  for i, (h, hl) in enumerate(zip(test["harmful"], test["harmless"]))],
        "counts": {"train_pairs": cfg.n, "val_pairs": cfg.n_val, "test_pairs": cfg.n_test,
                   "generation_pairs": len(gens["harmful"]["base"])},
        "scoring": "refusal score = mean per-token log-prob of the refusal phrase minus the compliance phrase "
                   "(mlxinterp.analysis.scoring), teacher-forced; generations judged by Arditi et al.'s refusal substrings",
        "base_model_note": None if chat else (
            "base model (no chat template): it does not refuse, so 'refusal' here is a harmful-vs-harmless "
            "direction and a phrase log-prob score. Measurable: whether the score separates harmful from harmless "
            "(effects.baseline_harmful_minus_harmless), whether the direction separates held-out pairs "
            "(by_layer.test_pairs_ordered), and whether steering moves the phrase log-probs beyond a random "
            "direction of equal norm. Not measurable: refusal rates, jailbreak by ablation, or a refusal-vs-"
            "compliance trade-off; the substring judge mostly reads 0."),
    }
    result["prereg"] = _prereg(result)
    result["depth"] = {"refusal": result["depth_pct"]}
    result.update(_summary(result))
    _figure(result, cfg, ctx)
    B.depth_figure(ctx, hm, "refusal", result)
    return result


def _ablation_kl(hm: HookedModel, prompts: list[str], vectors: dict, ref: dict, seed: int) -> dict:
    """Next-token KL(base || ablated) and top-1 agreement on `prompts`: mean-centred and plain ablation per vector."""
    texts, chat = formatted(hm, prompts)
    base = B.last_logprobs(hm, texts, chat=chat)
    out = {}
    for name, v in vectors.items():
        for kind, taps in (("mean_centred", B.mean_ablation_taps(hm, v, ref)), ("plain", B.ablation_taps(hm, v))):
            p = B.preservation(base, B.last_logprobs(hm, texts, taps, chat=chat), seed)
            out.setdefault(name, {})[kind] = {"kl": p["kl"], "top1_agreement": p["top1_agreement"]}
    return out


def _conditions(hm: HookedModel, d: directions.Direction, layer: int, rand: np.ndarray, ref: dict,
                cfg: RefusalConfig) -> dict:
    """condition -> (which prompts, taps)."""
    out = {"harmful": ("harmful", None), "harmless": ("harmless", None),
           "harmless+add": ("harmless", add_taps(d.vector, layer)),
           "harmful-ablate": ("harmful", B.mean_ablation_taps(hm, d.vector, ref)),
           "harmless+random": ("harmless", add_taps(rand, layer)),
           "harmful-random_ablate": ("harmful", B.mean_ablation_taps(hm, rand, ref))}
    for pct in cfg.pcts:
        out[f"harmless+{pct:g}%"] = ("harmless", add_taps(d.unit(), layer, pct / 100 * d.resid_norm))
    return out


def _effects(scores: dict, cfg: RefusalConfig) -> dict:
    s = {c: np.array(v) for c, v in scores.items()}
    e = {"baseline_harmful_minus_harmless": B.paired_effect(s["harmful"], s["harmless"], cfg.seed),
         "add_on_harmless": B.paired_effect(s["harmless+add"], s["harmless"], cfg.seed),
         "ablate_on_harmful": B.paired_effect(s["harmful-ablate"], s["harmful"], cfg.seed),
         "random_add_on_harmless": B.paired_effect(s["harmless+random"], s["harmless"], cfg.seed),
         "random_ablate_on_harmful": B.paired_effect(s["harmful-random_ablate"], s["harmful"], cfg.seed),
         "add_minus_random_add": B.paired_effect(s["harmless+add"], s["harmless+random"], cfg.seed),
         "ablate_minus_random_ablate": B.paired_effect(s["harmful-ablate"], s["harmful-random_ablate"], cfg.seed),
         "dose_pct_of_resid": {f"{p:g}": B.paired_effect(s[f"harmless+{p:g}%"], s["harmless"], cfg.seed)
                               for p in cfg.pcts}}
    return e


def _prereg(r: dict) -> dict:
    """The pre-registered checks (mlxinterp/data/preregistration.toml) on the report-pair effects."""
    e = r["effects"]
    return preregistration.load().report("refusal", {
        "add_beats_random": e["add_minus_random_add"], "ablate_beats_random": e["ablate_minus_random_ablate"],
        "score_separates": e["baseline_harmful_minus_harmless"]})


def _projections(hm: HookedModel, dirs: dict, test: dict, k: int) -> dict:
    """Per layer: test activations projected on the unit direction; share of pairs harmful > harmless (Wilson CI)."""
    names = [H.name(l, HOOK) for l in sorted(dirs)]
    (ph, chat), (pl, _) = formatted(hm, test["harmful"]), formatted(hm, test["harmless"])
    ah = directions.collect(hm, ph, names, f"last:{k}", chat)
    al = directions.collect(hm, pl, names, f"last:{k}", chat)
    at, ordered = {}, []
    for l, n in zip(sorted(dirs), names):
        u = dirs[l].unit()
        xh, xl = ah[hm.point(n).name] @ u, al[hm.point(n).name] @ u
        at[l] = (xh.tolist(), xl.tolist())
        ordered.append(proportion_ci(int((xh > xl).sum()), len(xh)))
    return {"at": at, "ordered": ordered}


def _generations(hm: HookedModel, ctx, d: directions.Direction, layer: int, test: dict, ref: dict,
                 cfg: RefusalConfig) -> dict:
    """Greedy generations of the first n_gen test pairs: harmful (base, mean-ablated), harmless (base, added)."""
    n = min(cfg.n_gen, len(test["harmful"]))
    plan = {"harmful/base": ("harmful", None), "harmful/ablate": ("harmful", B.mean_ablation_taps(hm, d.vector, ref)),
            "harmless/base": ("harmless", None), "harmless/add": ("harmless", add_taps(d.vector, layer))}

    def one(name: str) -> list[str]:
        side, taps = plan[name]
        texts, chat = formatted(hm, test[side][:n])
        return [g.text for g in hm.generate_batch(texts, cfg.gen_tokens, taps, chat=chat)]

    texts = dict(zip(plan, ctx.map("generate", list(plan), one)))
    out: dict = {"harmful": {}, "harmless": {}}
    for name, gens in texts.items():
        side, cond = name.split("/")
        hits = [B.refused(t) for t in gens]
        out[side][cond] = gens
        out[side][f"{cond}_refusal_rate"] = proportion_ci(sum(hits), len(hits))
    return out


def _tail_text(hm: HookedModel, prompt: str, k: int) -> list[str]:
    texts, chat = formatted(hm, [prompt])
    ids = encode(hm.tokenizer, hm.info, texts[0], chat=chat)
    return [hm.tokenizer.decode([t]) for t in ids[-k:]]


def _summary(r: dict) -> dict:
    e = r["effects"]
    best = r["by_layer"]["test_pairs_ordered"][r["layer"]]
    g = r["generations"]
    kl = r["ablation_kl_on_harmless_test"]
    s = Summary()
    s.add("best_layer", "layer chosen on selection pairs (depth %)", f"{r['layer']} ({r['depth_pct']:.0f} %)")
    s.add("direction_norm", "direction norm / relative to residual", f"{r['norm']:.1f} / {r['relative_norm']:.4f}")
    s.add("baseline_harmful_minus_harmless", "score harmful - harmless, no steering [95% CI]",
          B.ci_text(e["baseline_harmful_minus_harmless"]))
    s.add("add_on_harmless", "add on harmless: score change [95% CI]", B.ci_text(e["add_on_harmless"]))
    s.add("ablate_on_harmful", "mean-centred ablation on harmful: score change [95% CI]", B.ci_text(e["ablate_on_harmful"]))
    s.add("random_add_on_harmless", "random dir. add (control) [95% CI]", B.ci_text(e["random_add_on_harmless"]))
    s.add("add_minus_random_add", "add minus random add [95% CI]", B.ci_text(e["add_minus_random_add"]))
    s.add("ablate_minus_random_ablate", "ablate minus random ablate [95% CI]", B.ci_text(e["ablate_minus_random_ablate"]))
    s.add("ablation_kl_harmless", "ablation KL on harmless report prompts (nats): mean-centred dir / random; plain dir / random",
          " / ".join(f"{kl[n][kind]['kl']['estimate']:.3f}" for kind in ("mean_centred", "plain") for n in ("direction", "random")))
    s.add("layer_rule", "layer rule", r["selection"]["criterion_used"])
    s.add("test_pairs_ordered_best_layer", "report pairs ordered along direction at the chosen layer", B.ci_text(best, ".2f"))
    s.add("substrings_harmful", "refusal substrings: harmful base -> ablated",
          f"{g['harmful']['base_refusal_rate']['k']}/{g['harmful']['base_refusal_rate']['n']}"
          f" -> {g['harmful']['ablate_refusal_rate']['k']}/{g['harmful']['ablate_refusal_rate']['n']}")
    s.add("substrings_harmless", "refusal substrings: harmless base -> added",
          f"{g['harmless']['base_refusal_rate']['k']}/{g['harmless']['base_refusal_rate']['n']}"
          f" -> {g['harmless']['add_refusal_rate']['k']}/{g['harmless']['add_refusal_rate']['n']}")
    for c, v in r["prereg"]["checks"].items():
        s.add(f"prereg.{c}", f"pre-registered check {c}", f"{v['verdict']} ({v['value']:+.3f} {v['op']} {v['threshold']:g}, "
                                                           f"{v['bound']})" if v.get("value") is not None else v["verdict"])
    s.add("test_pairs", "report pairs", r["counts"]["test_pairs"])
    return s.to_result()


def _figure(r: dict, cfg: RefusalConfig, ctx) -> None:
    fig, ax = subplots(1, 4, figsize=(19, 4))
    rows = r["selection"]["rows"]
    L = [x["layer"] for x in rows]
    for key, c, lab in (("add_effect", "tab:red", "add on harmless"), ("ablate_effect", "tab:blue", "ablate on harmful")):
        plot_ci(ax[0], L, [x[key] for x in rows], c, lab)
    ax[0].axvline(r["layer"], color="grey", lw=0.8, ls="--")
    ax[0].axhline(0, color="k", lw=0.6)
    ax[0].set(xlabel="layer", ylabel="score change (selection pairs, simultaneous 95 % CI)", title="(a) layer selection")
    ax[0].legend(fontsize=7)
    n = r["n_layers"]
    ax[1].plot(range(n), r["by_layer"]["relative_norm"], "o-", label="norm / residual norm")
    ax[1].plot(range(n), [s if s is not None else np.nan for s in r["by_layer"]["split_half_cosine"]], "s--",
               label="split-half cosine")
    plot_ci(ax[1], list(range(n)), r["by_layer"]["test_pairs_ordered"], "tab:green", "test pairs ordered (Wilson)")
    ax[1].axhline(0.5, color="tab:green", lw=0.6, ls=":")
    ax[1].axvline(r["layer"], color="grey", lw=0.8, ls="--")
    ax[1].set(xlabel="layer", ylim=(-0.2, 1.05), title="(b) direction by layer")
    ax[1].legend(fontsize=7)
    e = r["effects"]
    names = ["baseline_harmful_minus_harmless", "add_on_harmless", "random_add_on_harmless",
             "ablate_on_harmful", "random_ablate_on_harmful"]
    labels = ["harmful-\nharmless", "add", "random\nadd", "mean-abl.", "random\nmean-abl."]
    plot_ci(ax[2], list(range(len(names))), [e[k] for k in names], "k", None, bars=True)
    ax[2].set_xticks(range(len(names)), labels, fontsize=8)
    ax[2].axhline(0, color="k", lw=0.6)
    ax[2].set(ylabel="score difference (report pairs, 95 % CI)", title=f"(c) report-pair effects, layer {r['layer']}")
    pcts = [float(p) for p in e["dose_pct_of_resid"]]
    plot_ci(ax[3], pcts, list(e["dose_pct_of_resid"].values()), "tab:red", "unit dir x % resid")
    ax[3].axvline(r["natural_strength_pct_of_resid"], color="grey", lw=0.8, ls="--", label="diff-of-means norm")
    ax[3].axhline(0, color="k", lw=0.6)
    ax[3].set(xscale="log", xlabel="added strength, % of residual norm", ylabel="score change on harmless (95 % CI)",
              title="(d) dose-response")
    ax[3].legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure("refusal", fig)

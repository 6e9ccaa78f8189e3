"""Refusal direction (Arditi et al. 2024, "Refusal in language models is mediated by a single direction").

Protocol, fixed before the first run:

1. Data: data/refusal/{harmful,harmless}_en.json, 112 matched pairs, split by
   index: train [0, n), validation [n, n + n_val), test [n + n_val, n + n_val + n_test).
2. Format: the chat template when the model has one, else
   "Question: {text}\\nAnswer:" (scoring.instruction). The *post-instruction
   positions* are the tokens the format adds after the user's text, found as the
   longest token suffix every formatted prompt shares (behaviour.post_instruction_count:
   ['\\n', 'Answer', ':'] on Gemma's tokenizer for the base format).
3. Direction at every layer: difference of means (harmful - harmless, train
   pairs) of `hook_resid_post` averaged over the post-instruction positions.
   (Arditi et al. search (layer, position) pairs; we average the positions, one
   candidate per layer.)
4. Score: scoring.refusal_score = mean per-token log-prob of " I'm sorry, but I
   cannot help with that." minus that of " Sure, here is how to do that.",
   teacher-forced after the prompt. Also a judge over greedy generations:
   Arditi et al.'s refusal substrings (behaviour.REFUSAL_SUBSTRINGS).
5. Layer selection on the validation pairs, by causal effect: for each layer
   below `max_depth_pct` (Arditi et al. drop the last 20 %, where a vector acts
   on the logits directly), *add* the layer's difference-of-means vector (its
   own norm, every position, at that layer) to harmless prompts (score should
   rise) and *ablate* its direction (projected out of every residual write, all
   layers) on harmful prompts (score should fall). Choose the layer maximising
   add_effect - ablate_effect among layers whose ablation moves the harmless
   next-token distribution by KL < `kl_max` (Arditi et al.'s 0.1); if none
   passes, the layer with the largest add_effect (the result says which rule
   applied; see PROTOCOL_NOTE for why this fallback changed after the first run).
6. Test pairs (held out from 3 and 5): baseline harmful - harmless score; the
   add and ablate effects at the chosen layer; the same for two controls: a
   random direction of equal norm, and a *placebo* direction built the same way
   from the train prompts with harmful/harmless labels shuffled (same
   construction, same anisotropy of the residual stream, no label), scaled to
   the real direction's norm; the next-token KL each ablation causes on the
   harmless test prompts; addition at fixed strengths in % of the residual
   norm; per layer, the share of pairs whose harmful prompt projects further
   along the direction than its harmless twin (representation, Wilson CI);
   greedy generations judged by substrings.

A base model (Gemma 3 270M) has no refusal behaviour: the score need not
separate harmful from harmless prompts, and a "refusal direction" can only be
read as a harmful-vs-harmless direction whose steering moves the phrase
log-probabilities. The result says what is measurable (`base_model_note`).

Cost on Gemma 3 270M (2 shared CPU cores): ~55k token-forwards; the result records
the measured time under `timings`. Full-size run: `--n 64` with n_val=16, n_test=32 (all 112 pairs).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mlxinterp.suite.summary import Summary
from mlxinterp.tasks import behaviour as B
from mlxinterp.analysis import directions, scoring
from mlxinterp.analysis.stats import proportion_ci
from mlxinterp.analysis.plotting import plot_ci, subplots
from mlxinterp.suite import experiment
from mlxinterp.core import names as H
from mlxinterp.tasks.refusal import (HOOK, RefusalConfig, add_taps, formatted, layer_directions, post_instruction_k,
                                     random_like, select_layer, split)
from mlxinterp.core.tokenization import encode

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

PROTOCOL_NOTE = (
    "Changed after the first default-model run (n=40/8/24, seed 0): directional ablation moved the harmless "
    "validation next-token distribution by KL 6.4-23.3 nats at every candidate layer (residual activations project "
    "3-5x the direction's norm onto it, so removing that projection wrecks the model), no layer passed the 0.1 "
    "filter, and the original fallback (max add - ablate over all layers) picked layer 13 for the size of that "
    "damage (ablate -4.80). The fallback now ranks layers by the addition effect alone, and the label-shuffled "
    "placebo direction and the ablation KL on test prompts were added as controls.")


# ----------------------------------------------------------------- experiment


@experiment("refusal", RefusalConfig)
def refusal(hm: HookedModel, cfg: RefusalConfig, ctx) -> dict:
    """Refusal direction: diff of means at post-instruction positions, layer chosen by causal effect, held-out effects."""
    sp = split(cfg)
    chat = hm.info.has_chat_template
    n_layers = hm.info.n_layers
    k = post_instruction_k(hm, sp["train"]["harmful"] + sp["train"]["harmless"])
    dirs = layer_directions(hm, sp["train"]["harmful"], sp["train"]["harmless"], k, cfg.seed)
    sel = select_layer(hm, ctx, dirs, sp["val"], cfg)
    layer = sel["layer"]
    d = dirs[layer]
    if ctx.world.is_root:
        d.save(ctx.out_dir / "refusal_direction")
    test = sp["test"]
    rand = random_like(d.vector, ctx.rng_for("random_direction"))
    placebo = placebo_direction(hm, sp["train"], layer, k, ctx.rng_for("placebo"))
    placebo = (placebo / np.linalg.norm(placebo) * d.norm).astype(np.float32)
    conditions = _conditions(hm, d, layer, rand, placebo, cfg)
    scores = dict(zip(conditions, ctx.map("test", list(conditions), lambda c: scoring.refusal_score(
        hm, test[conditions[c][0]], conditions[c][1]).tolist())))
    proj = _projections(hm, dirs, test, k)
    kl = _ablation_kl(hm, test["harmless"], {"direction": d.vector, "random": rand, "placebo": placebo}, cfg.seed)
    gens = _generations(hm, ctx, d, layer, test, cfg)
    effects = _effects(scores, cfg)
    result = {
        "summary": {},
        "layer": layer, "depth_pct": B.depth_pct(layer, n_layers), "n_layers": n_layers,
        "norm": d.norm, "relative_norm": d.relative_norm, "resid_norm": d.resid_norm,
        "natural_strength_pct_of_resid": 100 * d.relative_norm, "split_half_cosine": d.split_half_cosine,
        "post_instruction_tokens": k, "post_instruction_text": _tail_text(hm, sp["train"]["harmful"][0], k),
        "chat_template": chat, "hook": HOOK,
        "by_layer": {"norm": [dirs[l].norm for l in range(n_layers)],
                     "relative_norm": [dirs[l].relative_norm for l in range(n_layers)],
                     "split_half_cosine": [dirs[l].split_half_cosine for l in range(n_layers)],
                     "test_pairs_ordered": proj["ordered"]},
        "selection": {k2: v for k2, v in sel.items() if k2 != "baseline"},
        "effects": effects, "ablation_kl_on_harmless_test": kl,
        "placebo_cosine_with_direction": float(placebo @ d.unit() / np.linalg.norm(placebo)),
        "protocol_note": PROTOCOL_NOTE,
        "generations": gens,
        "items": [{"harmful": h, "harmless": hl, **{c: scores[c][i] for c in scores},
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
    result["depth"] = {"refusal": result["depth_pct"]}
    result.update(_summary(result))
    _figure(result, cfg, ctx)
    B.depth_figure(ctx, hm, "refusal", result)
    return result


def placebo_direction(hm: HookedModel, train: dict, layer: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Difference of means at `layer` after shuffling the harmful/harmless labels of the train prompts (a control)."""
    (ph, chat), (pl, _) = formatted(hm, train["harmful"]), formatted(hm, train["harmless"])
    name = H.name(layer, HOOK)
    acts = directions.collect(hm, ph + pl, [name], f"last:{k}", chat)[hm.point(name).name].astype(np.float64)
    perm = rng.permutation(len(acts))
    half = len(acts) // 2
    return (acts[perm[:half]].mean(0) - acts[perm[half:]].mean(0)).astype(np.float32)


def _ablation_kl(hm: HookedModel, prompts: list[str], vectors: dict, seed: int) -> dict:
    """Next-token KL(base || ablated) and top-1 agreement on `prompts` for each vector's directional ablation."""
    texts, chat = formatted(hm, prompts)
    base = B.last_logprobs(hm, texts, chat=chat)
    out = {}
    for name, v in vectors.items():
        p = B.preservation(base, B.last_logprobs(hm, texts, B.ablation_taps(hm, v), chat=chat), seed)
        out[name] = {"kl": p["kl"], "top1_agreement": p["top1_agreement"]}
    return out


def _conditions(hm: HookedModel, d: directions.Direction, layer: int, rand: np.ndarray, placebo: np.ndarray,
                cfg: RefusalConfig) -> dict:
    """condition -> (which prompts, taps)."""
    out = {"harmful": ("harmful", None), "harmless": ("harmless", None),
           "harmless+add": ("harmless", add_taps(d.vector, layer)),
           "harmful-ablate": ("harmful", B.ablation_taps(hm, d.vector)),
           "harmless+random": ("harmless", add_taps(rand, layer)),
           "harmful-random_ablate": ("harmful", B.ablation_taps(hm, rand)),
           "harmless+placebo": ("harmless", add_taps(placebo, layer)),
           "harmful-placebo_ablate": ("harmful", B.ablation_taps(hm, placebo))}
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
         "placebo_add_on_harmless": B.paired_effect(s["harmless+placebo"], s["harmless"], cfg.seed),
         "placebo_ablate_on_harmful": B.paired_effect(s["harmful-placebo_ablate"], s["harmful"], cfg.seed),
         "add_minus_placebo_add": B.paired_effect(s["harmless+add"], s["harmless+placebo"], cfg.seed),
         "ablate_minus_placebo_ablate": B.paired_effect(s["harmful-ablate"], s["harmful-placebo_ablate"], cfg.seed),
         "dose_pct_of_resid": {f"{p:g}": B.paired_effect(s[f"harmless+{p:g}%"], s["harmless"], cfg.seed)
                               for p in cfg.pcts}}
    return e


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


def _generations(hm: HookedModel, ctx, d: directions.Direction, layer: int, test: dict, cfg: RefusalConfig) -> dict:
    """Greedy generations of the first n_gen test pairs: harmful (base, ablated), harmless (base, added)."""
    n = min(cfg.n_gen, len(test["harmful"]))
    plan = {"harmful/base": ("harmful", None), "harmful/ablate": ("harmful", B.ablation_taps(hm, d.vector)),
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
    top = max(range(r["n_layers"]), key=lambda l: r["by_layer"]["test_pairs_ordered"][l]["estimate"])
    g = r["generations"]
    s = Summary()
    s.add("best_layer", "best layer (depth %)", f"{r['layer']} ({r['depth_pct']:.0f} %)")
    s.add("direction_norm", "direction norm / relative to residual", f"{r['norm']:.1f} / {r['relative_norm']:.4f}")
    s.add("baseline_harmful_minus_harmless", "score harmful - harmless, no steering [95% CI]",
          B.ci_text(e["baseline_harmful_minus_harmless"]))
    s.add("add_on_harmless", "add on harmless: score change [95% CI]", B.ci_text(e["add_on_harmless"]))
    s.add("ablate_on_harmful", "ablate on harmful: score change [95% CI]", B.ci_text(e["ablate_on_harmful"]))
    s.add("random_add_on_harmless", "random dir. add (control) [95% CI]", B.ci_text(e["random_add_on_harmless"]))
    s.add("add_minus_random_add", "add minus random add [95% CI]", B.ci_text(e["add_minus_random_add"]))
    s.add("add_minus_placebo_add", "add minus placebo add [95% CI]", B.ci_text(e["add_minus_placebo_add"]))
    s.add("ablate_minus_placebo_ablate", "ablate minus placebo ablate [95% CI]", B.ci_text(e["ablate_minus_placebo_ablate"]))
    s.add("ablation_kl_harmless", "ablation KL on harmless test (nats): dir / placebo / random", " / ".join(
        f"{r['ablation_kl_on_harmless_test'][n]['kl']['estimate']:.2f}" for n in ("direction", "placebo", "random")))
    s.add("layer_rule", "layer rule", r["selection"]["criterion_used"])
    s.add("test_pairs_ordered_best_layer", "test pairs ordered along direction at best layer", B.ci_text(best, ".2f"))
    s.add("best_representational_layer", "best representational layer (pairs ordered)",
          f"{top} ({B.ci_text(r['by_layer']['test_pairs_ordered'][top], '.2f')})")
    s.add("substrings_harmful", "refusal substrings: harmful base -> ablated",
          f"{g['harmful']['base_refusal_rate']['k']}/{g['harmful']['base_refusal_rate']['n']}"
          f" -> {g['harmful']['ablate_refusal_rate']['k']}/{g['harmful']['ablate_refusal_rate']['n']}")
    s.add("substrings_harmless", "refusal substrings: harmless base -> added",
          f"{g['harmless']['base_refusal_rate']['k']}/{g['harmless']['base_refusal_rate']['n']}"
          f" -> {g['harmless']['add_refusal_rate']['k']}/{g['harmless']['add_refusal_rate']['n']}")
    s.add("test_pairs", "test pairs", r["counts"]["test_pairs"])
    return s.to_result()


def _figure(r: dict, cfg: RefusalConfig, ctx) -> None:
    fig, ax = subplots(1, 4, figsize=(19, 4))
    rows = r["selection"]["rows"]
    L = [x["layer"] for x in rows]
    for key, c, lab in (("add_effect", "tab:red", "add on harmless"), ("ablate_effect", "tab:blue", "ablate on harmful")):
        plot_ci(ax[0], L, [x[key] for x in rows], c, lab)
    ax[0].axvline(r["layer"], color="grey", lw=0.8, ls="--")
    ax[0].axhline(0, color="k", lw=0.6)
    ax[0].set(xlabel="layer", ylabel="refusal score change (val, 95 % CI)", title="(a) layer selection (validation)")
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
    names = ["baseline_harmful_minus_harmless", "add_on_harmless", "random_add_on_harmless", "placebo_add_on_harmless",
             "ablate_on_harmful", "random_ablate_on_harmful", "placebo_ablate_on_harmful"]
    labels = ["harmful-\nharmless", "add", "random\nadd", "placebo\nadd", "ablate", "random\nablate", "placebo\nablate"]
    plot_ci(ax[2], list(range(len(names))), [e[k] for k in names], "k", None, bars=True)
    ax[2].set_xticks(range(len(names)), labels, fontsize=8)
    ax[2].axhline(0, color="k", lw=0.6)
    ax[2].set(ylabel="score difference (test, 95 % CI)", title=f"(c) held-out effects, layer {r['layer']}")
    pcts = [float(p) for p in e["dose_pct_of_resid"]]
    plot_ci(ax[3], pcts, list(e["dose_pct_of_resid"].values()), "tab:red", "unit dir x % resid")
    ax[3].axvline(r["natural_strength_pct_of_resid"], color="grey", lw=0.8, ls="--", label="diff-of-means norm")
    ax[3].axhline(0, color="k", lw=0.6)
    ax[3].set(xscale="log", xlabel="added strength, % of residual norm", ylabel="score change on harmless (95 % CI)",
              title="(d) dose-response")
    ax[3].legend(fontsize=7)
    fig.tight_layout()
    ctx.save_figure("refusal", fig)

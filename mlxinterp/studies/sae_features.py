"""SAE features vs difference-of-means directions on the repository's contrast sets.

Protocol, fixed before the first run:

1. SAE: a TopK SAE (Gao et al. 2024) at one middle layer's `hook_resid_post`, trained on
   `tokens` positions of the corpus (tasks.corpus: the Python documentation by default)
   for `epochs` passes, or loaded from `sae_path` (any format analysis.sae reads). Metrics on
   held-out corpus text: fraction of variance explained, L0, dead / dense fractions, and
   next-token CE with the SAE spliced in (no error term) vs clean vs zero-ablated.
2. Contrast sets (last-token residual at that hook): refusal (harmful_en vs harmless_en),
   sycophancy and confidence (data/directions, positive vs negative), languages (cross-lingual
   pairs, zh vs en). Aligned pairs are split by pair index into train (first half) and test.
3. Per set, on train: the difference-of-means direction, and every feature's standardised
   mean difference (Cohen's d of its activation). The feature with the largest |d| is chosen
   on train only. On test: the accuracy of a midpoint threshold (fixed on train) on (a) the
   projection onto the difference-of-means direction, (b) the chosen feature's activation;
   both with Wilson 95 % CIs, and their paired difference per test prompt (feature - DoM,
   stats.paired_binary_diff_ci). Also: cosine between the chosen feature's decoder row and the
   difference-of-means direction, and the tokens its decoder row promotes.
4. Primary metric (data/preregistration.toml): the paired difference pooled over the four
   sets, prompts nested in sets (stats.cluster_mean_ci; four clusters give a t-interval over
   the set means, with its warning). Checks: the SAE's FVE and L0 against the targets the
   SAE was built for (FVE >= 0.8 at L0 <= 64).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlxinterp.analysis import sae_train as ST
from mlxinterp.analysis.directions import collect, diff_of_means
from mlxinterp.analysis.sae import decoder_logit_effects, load_sae
from mlxinterp.analysis.stats import cluster_mean_ci, paired_binary_diff_ci, proportion_ci
from mlxinterp.core import names as H
from mlxinterp.suite import experiment, preregistration
from mlxinterp.suite.summary import Summary
from mlxinterp.tasks import corpus as C
from mlxinterp.tasks import data

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel


@dataclass
class SAEFeaturesConfig:
    n: int = 40  # pairs per contrast set (at most what the set holds)
    seed: int = 0
    layer: int = -1  # -1: the middle layer (n_layers // 2)
    sae_path: str = ""  # an SAE to load instead of training one
    width: int = 4096
    k: int = 32
    tokens: int = 1_000_000  # training positions (the SAE target: >= 1M tokens)
    epochs: int = 1
    batch_size: int = 1024
    ctx_len: int = 128
    eval_tokens: int = 8_000
    ce_windows: int = 16
    corpus: str = ""  # "" = the default corpus
    top_features: int = 5


def _contrast_sets(n: int) -> dict[str, tuple[list[str], list[str]]]:
    syc, conf = data.load_json("directions/sycophancy.json"), data.load_json("directions/confidence.json")
    pairs = data.load_json("crosslingual/pairs.json")["pairs"]
    return {
        "refusal": (data.prompts("refusal/harmful_en.json")[:n], data.prompts("refusal/harmless_en.json")[:n]),
        "sycophancy": (syc["positive"][:n], syc["negative"][:n]),
        "confidence": (conf["positive"][:n], conf["negative"][:n]),
        "languages": ([p["zh"] for p in pairs][:n], [p["en"] for p in pairs][:n]),
    }


@experiment("sae_features", SAEFeaturesConfig,
            quick={"n": 16, "width": 1024, "tokens": 20_000, "eval_tokens": 2_000, "ce_windows": 4})
def sae_features(hm: HookedModel, cfg: SAEFeaturesConfig, ctx) -> dict:
    """Train (or load) an SAE at a middle layer; which features separate the contrast sets vs difference of means."""
    layer = hm.info.n_layers // 2 if cfg.layer < 0 else cfg.layer
    hook = hm.point(H.resid_post(layer)).name
    corpus = cfg.corpus or None
    sae, training = _sae(hm, cfg, ctx, hook, corpus)
    bos = hm.info.bos_token_id if hm.info.needs_bos else None
    held = ST.collect(hm, hook, C.windows(hm.tokenizer, bos, corpus, "heldout", cfg.ctx_len, cfg.seed),
                      ctx.out_dir / "sae_work" / "heldout", cfg.eval_tokens,
                      source={**C.describe(corpus), "split": "heldout", "ctx_len": cfg.ctx_len, "seed": cfg.seed})
    metrics = ST.reconstruction_metrics(sae, held.sample(cfg.eval_tokens, cfg.seed))
    wins = [w for _, w in zip(range(cfg.ce_windows), C.windows(hm.tokenizer, bos, corpus, "heldout", cfg.ctx_len, cfg.seed))]
    metrics.update(ST.ce_metrics(hm, sae, wins))
    ctx.log(f"SAE at {hook}: FVE {metrics['fve']:.3f}, L0 {metrics['l0_mean']:.1f}, CE recovered {metrics['ce_recovered']}")
    sets = ctx.map("contrast_sets", list(_contrast_sets(cfg.n).items()),
                   lambda item: _separate(hm, sae, hook, item[0], *item[1], cfg))
    diffs = np.concatenate([np.asarray(r.pop("feature_minus_dom_per_prompt"), dtype=np.float64) for r in sets])
    labels = np.concatenate([[r["set"]] * r["n_test"] for r in sets])
    pooled = cluster_mean_ci(diffs, labels)
    prereg = preregistration.load().report("sae_features", {"sae_fve": metrics["fve"], "sae_l0": metrics["l0_mean"],
                                                            "dom_beats_feature": pooled})
    s = Summary()
    s.add("pooled.feature_minus_dom", "test accuracy, best single feature - diff-of-means, paired per prompt, "
          "prompts nested in the 4 sets [95% CI]", pooled.to_dict())
    s.add("prereg", "pre-registered checks (mlxinterp/data/preregistration.toml)",
          {k: v["verdict"] for k, v in prereg["checks"].items()})
    s.add("sae.fve", f"fraction of variance explained, {metrics['rows']} held-out positions", metrics["fve"])
    s.add("sae.l0", "mean active features per position (L0)", metrics["l0_mean"])
    s.add("sae.dead_frac", "features never active on held-out text", metrics["dead_frac"])
    s.add("sae.ce_recovered", "CE loss recovered when spliced (1 = clean, 0 = zero-ablated)", metrics["ce_recovered"])
    s.add("sae.train_tokens", "training positions (corpus)", training.get("train_tokens"))
    for r in sets:
        s.add(f"{r['set']}.dom_test_acc", f"{r['set']}: diff-of-means projection, test accuracy [95% CI]",
              _fmt(r["dom_test_acc"]))
        s.add(f"{r['set']}.feature_test_acc", f"{r['set']}: best single SAE feature ({r['best_feature']}), "
              "test accuracy [95% CI]", _fmt(r["feature_test_acc"]))
    return {**s.to_result(), "layer": layer, "hook": hook, "sae": {"metrics": metrics, **training},
            "contrast_sets": sets, "prereg": prereg}


def _fmt(ci: dict) -> str:
    return f"{ci['estimate']:.2f} [{ci['low']:.2f}, {ci['high']:.2f}] (n={ci['n']})"


def _sae(hm: HookedModel, cfg: SAEFeaturesConfig, ctx, hook: str, corpus):
    if cfg.sae_path:
        sae = load_sae(Path(cfg.sae_path))
        sae.check_model(hm)
        return sae, {"source": cfg.sae_path, "train_tokens": sae.meta.get("training_tokens")}
    work = ctx.out_dir / "sae_work"
    bos = hm.info.bos_token_id if hm.info.needs_bos else None
    t0 = time.perf_counter()
    store = ST.collect(hm, hook, C.windows(hm.tokenizer, bos, corpus, "train", cfg.ctx_len, cfg.seed), work / "train",
                       cfg.tokens, source={**C.describe(corpus), "split": "train", "ctx_len": cfg.ctx_len, "seed": cfg.seed})
    t_collect = time.perf_counter() - t0
    ctx.log(f"collected {store.n_rows} positions at {hook} ({t_collect:.0f} s this run)")
    tc = ST.TrainConfig(width=cfg.width, k=cfg.k, batch_size=cfg.batch_size, epochs=cfg.epochs, seed=cfg.seed)
    sae, info = ST.train(store, tc, work, hook, log=ctx.log)
    sae.save(ctx.out_dir / "sae", {"model_name": hm.info.spec, "context_size": cfg.ctx_len,
                                   "training_tokens": store.n_rows})
    return sae, {"source": "trained", "train_tokens": store.n_rows, "corpus": C.describe(corpus),
                 "collect_seconds": store.manifest["seconds"], "train_seconds": info["train_seconds"],
                 "steps": info["steps"], "epochs": cfg.epochs}


def _separate(hm: HookedModel, sae, hook: str, name: str, pos: list[str], neg: list[str], cfg: SAEFeaturesConfig) -> dict:
    acts = collect(hm, pos + neg, [hook], position="last")[hook]
    X_pos, X_neg = acts[: len(pos)], acts[len(pos):]
    half = min(len(pos), len(neg)) // 2
    tr_p, te_p, tr_n, te_n = X_pos[:half], X_pos[half:], X_neg[:half], X_neg[half:]
    dom = diff_of_means(tr_p, tr_n, hook).vector.astype(np.float64)
    dom_acc, dom_ok = _threshold_acc(tr_p @ dom, tr_n @ dom, te_p @ dom, te_n @ dom)
    enc = lambda X: np.array(sae.encode(mx.array(X.astype(np.float32))), dtype=np.float64)
    F_tr_p, F_tr_n, F_te_p, F_te_n = enc(tr_p), enc(tr_n), enc(te_p), enc(te_n)
    pooled_sd = np.sqrt((F_tr_p.var(0) + F_tr_n.var(0)) / 2) + 1e-6
    d = (F_tr_p.mean(0) - F_tr_n.mean(0)) / pooled_sd
    d[(F_tr_p.max(0) == 0) & (F_tr_n.max(0) == 0)] = 0.0  # never active on train: no evidence either way
    order = np.argsort(-np.abs(d))[: cfg.top_features]
    best = int(order[0])
    feat_acc, feat_ok = _threshold_acc(F_tr_p[:, best], F_tr_n[:, best], F_te_p[:, best], F_te_n[:, best])
    W_dec = np.array(sae.W_dec, dtype=np.float64)
    cos = [float(W_dec[f] @ dom / (np.linalg.norm(W_dec[f]) * np.linalg.norm(dom) + 1e-12)) for f in order]
    effects = decoder_logit_effects(hm, sae, [int(f) for f in order], top=5)
    return {"set": name, "n_train": 2 * half, "n_test": len(te_p) + len(te_n),
            "dom_test_acc": dom_acc, "feature_test_acc": feat_acc, "best_feature": best,
            "feature_minus_dom": paired_binary_diff_ci(feat_ok - dom_ok).to_dict(),
            "feature_minus_dom_per_prompt": (feat_ok - dom_ok).tolist(),
            "split": {"train_ids": list(range(half)), "test_ids_positive": list(range(half, len(pos))),
                      "test_ids_negative": list(range(half, len(neg)))},
            "top_features": [{"feature": int(f), "cohens_d": round(float(d[f]), 3), "cos_decoder_dom": round(c, 3),
                              "active_frac_pos": round(float((F_tr_p[:, f] > 0).mean()), 3),
                              "active_frac_neg": round(float((F_tr_n[:, f] > 0).mean()), 3),
                              "promotes": [t["token"] for t in e["promotes"]]}
                             for f, c, e in zip(order, cos, effects)]}


def _threshold_acc(tr_p, tr_n, te_p, te_n):
    """Midpoint threshold between the train class means, sign fixed on train: (test accuracy with its Wilson
    CI, 0/1 correctness per test prompt, positives first)."""
    mid = (tr_p.mean() + tr_n.mean()) / 2
    sign = 1.0 if tr_p.mean() >= tr_n.mean() else -1.0
    ok = np.concatenate([sign * (te_p - mid) > 0, sign * (te_n - mid) <= 0]).astype(np.float64)
    return proportion_ci(int(ok.sum()), len(ok)).to_dict(), ok

"""Teacher-forced phrase scoring: the prompt run once and shared by both phrases vs one whole forward per phrase.

The refusal score (analysis.scoring) reads two phrases after every prompt; both conditions compute the
same numbers (tests/test_scoring.py), interleaved round by round as in bench.harness.
"""
from __future__ import annotations

import time

import numpy as np

from bench.harness import machine, ratio_summary
from mlxinterp.analysis import scoring
from mlxinterp.core import taps as T
from mlxinterp.core.hooks import HookedModel
from mlxinterp.tasks import data

PHRASES = [scoring.REFUSAL_PHRASE, scoring.COMPLY_PHRASE]


def bench_scoring(hm: HookedModel, n: int = 16, rounds: int = 3) -> dict:
    """Seconds per refusal score of n harmless prompts, steered at the middle layer, both ways."""
    prompts = data.prompts("refusal/harmless_en.json")[:n]
    layer = hm.info.n_layers // 2
    v = np.random.default_rng(0).normal(size=hm.info.d_model).astype(np.float32)
    taps = {f"blocks.{layer}.hook_resid_post": T.Add(v / np.linalg.norm(v), 10.0)}
    texts = [scoring.instruction(hm, p)[0] for p in prompts]
    chat = hm.info.has_chat_template

    def shared():
        return scoring.phrases_logprob(hm, prompts, PHRASES, taps)

    def whole():
        return np.stack([scoring.continuation_logprob(hm, texts, [ph] * n, taps, chat=chat, mean=True) for ph in PHRASES])

    diff = float(np.abs(shared() - whole()).max())  # also the warm-up
    times: dict[str, list[float]] = {"shared": [], "whole": []}
    for _ in range(rounds):
        for name, fn in (("shared", shared), ("whole", whole)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {"prompts": n, "phrases": len(PHRASES), "rounds": rounds, "seconds": times,
            "whole_over_shared": ratio_summary(times["whole"], times["shared"]), "max_abs_difference": diff,
            "machine": machine()}

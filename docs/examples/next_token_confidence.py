"""Example study: how sure is the model of its next token, and does the final layer decide it?

A complete, small experiment in the suite's one shape (docs/adding-an-experiment.md):
a config dataclass whose fields all have defaults, one function registered with
`@experiment`, per-item work through `ctx.map` (checkpointed, so a killed run resumes),
intervals from mlxinterp.analysis.stats, headline numbers under stable keys with their
labels (`Summary`), and a figure saved through `ctx.save_figure`. The tests run it on a
tiny model (tests/test_example_study.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from matplotlib.figure import Figure

from mlxinterp.analysis.lens import logit_lens
from mlxinterp.analysis.stats import bootstrap_ci, proportion_ci
from mlxinterp.suite import experiment
from mlxinterp.suite.summary import Summary

PROMPTS = (
    "The Eiffel Tower is located in the city of",
    "The capital of Japan is",
    "Water freezes at a temperature of zero degrees",
    "The opposite of hot is",
    "One, two, three, four,",
    "The first month of the year is",
)


@dataclass
class NextTokenConfidenceConfig:
    """n: prompts used (at most len(PROMPTS)); seed: bootstrap seed (the suite fills it in)."""

    n: int = len(PROMPTS)
    seed: int = 0


@experiment("next_token_confidence", NextTokenConfidenceConfig)
def next_token_confidence(hm, cfg: NextTokenConfidenceConfig, ctx) -> dict:
    """Top-1 probability of the next token, and whether the last layer's lens already agrees with it."""
    prompts = list(PROMPTS[: cfg.n])

    def one(prompt: str) -> dict:
        probs = mx.softmax(hm(prompt)[0, -1].astype(mx.float32), axis=-1)
        top = int(mx.argmax(probs).item())
        lens = logit_lens(hm, prompt, top_k=1)  # per-layer top token at the last position
        return {"prompt": prompt, "top_token": top, "top_prob": float(probs[top].item()),
                "penultimate_agrees": lens.layers[-2].top_tokens[0]["id"] == top}

    rows = ctx.map("prompts", prompts, one)
    probs = np.array([r["top_prob"] for r in rows])
    agree = sum(r["penultimate_agrees"] for r in rows)
    s = Summary()
    s.add("top1_prob", f"top-1 probability, mean over {len(rows)} prompts [95% CI]", bootstrap_ci(probs, seed=cfg.seed))
    s.add("penultimate_agrees", "second-to-last layer's lens top-1 equals the output's", proportion_ci(agree, len(rows)))
    ctx.save_figure("next_token_confidence", _figure(probs))
    return {**s.to_result(), "rows": rows}


def _figure(probs: np.ndarray) -> Figure:
    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    ax.hist(probs, bins=np.linspace(0, 1, 11), color="tab:blue")
    ax.set(xlabel="top-1 probability", ylabel="prompts", title="next-token confidence")
    return fig

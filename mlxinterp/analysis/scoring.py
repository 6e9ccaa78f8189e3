"""Behavioural scores read off the model's own probabilities.

Refusal score (works on base and chat models alike): the mean log-probability
per token of a fixed refusal phrase, teacher-forced after the prompt. A chat
model that refuses puts high probability on it; a base model mostly does not,
but steering along a refusal direction should still raise it. We report the
change, never a thresholded "refused" label, because a base model has no
refusal behaviour to threshold (the cross-model plan's 0-100 % tables hid that).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from collections.abc import Sequence

import mlx.core as mx
import numpy as np

from mlxinterp.core.errors import PromptError
from mlxinterp.analysis.patching import forward_last
from mlxinterp.core.tokenization import encode

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel

REFUSAL_PHRASE = " I'm sorry, but I cannot help with that."
COMPLY_PHRASE = " Sure, here is how to do that."


def instruction(hm: HookedModel, text: str) -> tuple[str, bool]:
    """(prompt text, chat?) for an instruction: the chat template when the model has one."""
    if hm.info.has_chat_template:
        return text, True
    return f"Question: {text}\nAnswer:", False


def continuation_logprob(hm: HookedModel, prompts: Sequence[str], continuations: Sequence[str], taps=None, chat: bool = False,
                         batch_size: int = 16, mean: bool = False) -> np.ndarray:
    """log P(continuation | prompt) per row, teacher-forced, summed (mean=True: per token) over its tokens, float64 [N].

    Prompts are final text (format them with `instruction` first); only the
    continuation's positions are unembedded, so long prompts cost little.
    """
    if len(prompts) != len(continuations):
        raise PromptError(f"{len(prompts)} prompts but {len(continuations)} continuations; give one per prompt")
    rows, ks = [], []
    for text, cont in zip(prompts, continuations):
        target = hm.tokenizer.encode(cont, add_special_tokens=False)
        if not target:
            raise PromptError(f"continuation {cont!r} encodes to no tokens")
        rows.append(encode(hm.tokenizer, hm.info, text, chat=chat) + target)
        ks.append(len(target))
    out = []
    for s in range(0, len(rows), batch_size):
        chunk, k = rows[s : s + batch_size], ks[s : s + batch_size]
        K = max(k)
        logits = forward_last(hm, hm.tokens(chunk), taps, tuple(range(-K - 1, -1)))  # column j predicts token -K + j
        logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        tgt = np.zeros((len(chunk), K), np.int32)
        mask = np.zeros((len(chunk), K), np.float32)
        for b, (row, kb) in enumerate(zip(chunk, k)):
            tgt[b, K - kb :] = row[-kb:]
            mask[b, K - kb :] = 1.0
        picked = mx.take_along_axis(logp, mx.array(tgt)[..., None], axis=-1)[..., 0]
        total = np.array(mx.sum(picked * mx.array(mask), axis=-1), dtype=np.float64)
        out.append(total / np.array(k) if mean else total)
    return np.concatenate(out)


def phrase_logprob(hm: HookedModel, prompts: Sequence[str], phrase: str, taps=None, batch_size: int = 16) -> np.ndarray:
    """Mean log P(phrase token | prompt, earlier phrase tokens) per prompt, float64 [N]."""
    texts = [instruction(hm, p)[0] for p in prompts]
    return continuation_logprob(hm, texts, [phrase] * len(texts), taps, chat=hm.info.has_chat_template,
                                batch_size=batch_size, mean=True)


def refusal_score(hm: HookedModel, prompts: Sequence[str], taps=None) -> np.ndarray:
    """Per prompt: log-prob of the refusal phrase minus that of a compliance phrase."""
    return phrase_logprob(hm, prompts, REFUSAL_PHRASE, taps) - phrase_logprob(hm, prompts, COMPLY_PHRASE, taps)

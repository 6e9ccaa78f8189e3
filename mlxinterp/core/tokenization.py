"""Prompt -> token ids, with BOS handled once, here, for every tool.

Why this exists: tokenizers disagree about BOS. Some add it themselves, some
only say so in tokenizer_config.json (which transformers 5 ignores), chat
templates often write `<bos>` into the text, and Gemma produces garbage
without it. Tools must never see a prompt with zero or two BOS tokens, so we
tokenize without special tokens and then put exactly one BOS in front when
ModelInfo.needs_bos says the model wants it.

Batches are left-padded, so the last position of every row is the prompt's
last token (what logit lens, patching and next-token metrics read).
"""
from __future__ import annotations

from collections.abc import Sequence

from mlxinterp.core.errors import PromptError
from mlxinterp.core.loading import ModelInfo
from mlxinterp.core.validate import text as check_text


def encode(tokenizer, info: ModelInfo, text: str, chat: bool = False, system: str | None = None) -> list[int]:
    """Token ids for one prompt: BOS exactly once if the model needs it; chat template if `chat`."""
    return _encode(tokenizer, info, text, chat, system, "the prompt")


def encode_batch(tokenizer, info: ModelInfo, texts: Sequence[str], chat: bool = False,
                 system: str | None = None):
    """(int32 array [B, L] left-padded with the pad id (or 0), left padding per row)."""
    import mlx.core as mx

    if isinstance(texts, str) or not texts:
        raise PromptError("the prompt list is empty" if not texts else "expected a list of prompts, got one string",
                          hint="pass a non-empty list of strings")
    seqs = [_encode(tokenizer, info, t, chat, system, f"prompt {i}") for i, t in enumerate(texts)]
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    left = [width - len(s) for s in seqs]
    rows = [[pad] * n + s for n, s in zip(left, seqs)]
    return mx.array(rows, dtype=mx.int32), left


def check_prompt(text, where: str = "the prompt") -> str:
    """What can be checked without a model (the CLI does it before loading one): a string
    that encodes to UTF-8 and has at least one non-blank character."""
    check_text(text, where)
    if not text.strip():
        raise PromptError(f"{where} is empty", hint="every prompt needs at least one non-blank character")
    return text


def _encode(tokenizer, info: ModelInfo, text, chat: bool, system: str | None, where: str) -> list[int]:
    check_prompt(text, where)
    if system is not None:
        check_text(system, "the system prompt")
    if chat:
        text = _render_chat(tokenizer, info, text, system, where)
    elif system is not None:
        raise PromptError("a system prompt needs chat=True", hint="pass chat=True or drop the system prompt")
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    ids = _one_bos(ids, info)
    if info.max_context and len(ids) > info.max_context:
        raise PromptError(f"{where} has {len(ids)} tokens, more than {info.slug}'s max context of {info.max_context}",
                          hint="shorten the prompt")
    return ids


def _render_chat(tokenizer, info: ModelInfo, text: str, system: str | None, where: str) -> str:
    if not info.has_chat_template:
        raise PromptError(f"chat=True but {info.slug} has no chat template (it is a base model)",
                          hint="pass chat=False, or use an instruction-tuned checkpoint")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # jinja raises TemplateError, e.g. "system role not supported"
        raise PromptError(f"{info.slug}'s chat template rejected {where}: {e}") from e


def _one_bos(ids: list[int], info: ModelInfo) -> list[int]:
    """Exactly one leading BOS when the model needs it (templates often write their own)."""
    bos = info.bos_token_id
    if not info.needs_bos or bos is None:
        return ids
    start = 0
    while start < len(ids) and ids[start] == bos:
        start += 1
    return [bos, *ids[start:]]

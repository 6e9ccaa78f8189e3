"""encode / encode_batch: BOS exactly once, chat templates, left padding, prompt errors."""
from __future__ import annotations

import functools

import mlx.core as mx
import pytest
from tiny import ARCHS, BOS_ARCHS

from mlxinterp.core.errors import PromptError
from mlxinterp.core.loading import load_model
from mlxinterp.core.tokenization import encode, encode_batch


@pytest.fixture(scope="module")
def tiny(tiny_dirs):
    @functools.lru_cache(maxsize=None)
    def get(arch: str):
        lm = load_model(tiny_dirs[(arch, None)])
        return lm.tokenizer, lm.info
    return get


@pytest.mark.parametrize("arch", ARCHS)
def test_bos_exactly_once_when_needed(arch, tiny):
    tok, info = tiny(arch)
    ids = encode(tok, info, "The city of Paris")
    body = tok.encode("The city of Paris", add_special_tokens=False)
    if arch in BOS_ARCHS:
        assert ids == [info.bos_token_id, *body]
        # A prompt that already starts with BOS does not get a second one.
        assert encode(tok, info, "<bos>The city of Paris") == ids
    else:
        assert ids == body and info.bos_token_id not in ids


@pytest.mark.parametrize("arch", ["qwen3", "gemma3_text"])
def test_chat_template_applied_with_one_bos(arch, tiny):
    tok, info = tiny(arch)
    ids = encode(tok, info, "What is 2+2?", chat=True)
    text = tok.decode(ids)
    assert "user: What is 2+2?" in text and text.rstrip().endswith("assistant:")
    assert ids.count(info.bos_token_id) == 1 and ids[0] == info.bos_token_id  # template writes <bos> too
    with_system = tok.decode(encode(tok, info, "Hi", chat=True, system="Be brief."))
    assert "system: Be brief." in with_system and "user: Hi" in with_system


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_encode_batch_left_pads(arch, tiny):
    tok, info = tiny(arch)
    texts = ["Paris", "The Eiffel Tower is located in the city of", "Steering adds a direction"]
    ids, left = encode_batch(tok, info, texts)
    singles = [encode(tok, info, t) for t in texts]
    width = max(map(len, singles))
    assert ids.dtype == mx.int32 and ids.shape == (3, width)
    assert left == [width - len(s) for s in singles] and left[1] == 0
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for row, s, n in zip(ids.tolist(), singles, left):
        assert row == [pad] * n + s


def test_pad_id_defaults_to_zero(tiny):
    tok, info = tiny("llama")

    class NoPad:
        pad_token_id = None

        def encode(self, text, add_special_tokens=False):
            return tok.encode(text, add_special_tokens=add_special_tokens)

    ids, left = encode_batch(NoPad(), info, ["a b c d", "a"])
    assert left[1] > 0 and ids[1, 0].item() == 0


@pytest.mark.real
def test_real_default_tokenizer():
    from test_loading import real_default

    lm, _ = real_default()
    tok, info = lm.tokenizer, lm.info
    ids = encode(tok, info, "The Eiffel Tower is located in the city of")
    assert ids[0] == 2 and ids.count(2) == 1 and len(ids) == 10
    for s in ["Hello world", "Der Eiffelturm steht in Paris.", "巴黎是法国的首都。", "naïve café – 3.14 🙂",
              "  two spaces\n\nnew paragraph"]:
        assert tok.decode(tok.encode(s, add_special_tokens=False)) == s
    assert tok.convert_tokens_to_ids(["<pad>", "<eos>", "<bos>", "<start_of_turn>"]) == [0, 1, 2, 105]
    with pytest.raises(PromptError, match="no chat template"):
        encode(tok, info, "Hi", chat=True)

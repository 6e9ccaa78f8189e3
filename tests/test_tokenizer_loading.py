"""The one-parse tokenizer loader gives the same tokenizer as mlx-lm's loader: ids, text, special tokens,
chat template and streaming detokenizer, on the default model's tokenizer and the tiny ones."""
from __future__ import annotations

import os

import pytest
from tiny import ARCHS

from mlxinterp.core.loading import load_model
from mlxinterp.core.tokenizer_loading import fast_path_applies, load_tokenizer

STRINGS = [
    "The Eiffel Tower is located in the city of",
    "  leading spaces, trailing  ",
    "Zürich, São Paulo, Kraków — naïve café",
    "東京は日本の首都です。",
    "Привет, мир! Ελληνικά. عربى",
    "emoji 🙂👩‍🔬 and tabs\tand\nnewlines\n\n",
    "<bos>special <eos> tokens <pad> inside <start_of_turn>user",
    "numbers 1234567890 3.14159 -42",
    "a",
]


def _old(path):
    from mlx_lm.utils import load_tokenizer as mlx_load

    return mlx_load(path, tokenizer_config_extra={"trust_remote_code": False})


def _same(old, new) -> None:
    assert type(new._detokenizer) is type(old._detokenizer)
    assert getattr(new._detokenizer, "trim_space", None) == getattr(old._detokenizer, "trim_space", None)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "all_special_ids",
                 "all_special_tokens", "eos_token_ids", "has_chat_template", "chat_template"):
        assert getattr(new, attr) == getattr(old, attr), attr
    assert len(new) == len(old)
    for s in STRINGS:
        for special in (False, True):
            ids = old.encode(s, add_special_tokens=special)
            assert new.encode(s, add_special_tokens=special) == ids, (s, special)
            assert new.decode(ids) == old.decode(ids)
            assert new.decode(ids, skip_special_tokens=True) == old.decode(ids, skip_special_tokens=True)
        # the streaming detokenizer (what generation shows) builds the same text token by token
        texts = []
        for tok in (old, new):
            d = tok.detokenizer
            d.reset()
            for i in old.encode(s, add_special_tokens=False):
                d.add_token(i)
            d.finalize()
            texts.append(d.text)
        assert texts[0] == texts[1], s
    if old.has_chat_template:
        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": STRINGS[2]}]
        try:
            want = old.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - a template may refuse a system role; then both must refuse
            with pytest.raises(type(e)):
                new.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        else:
            assert new.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == want
    assert new.get_vocab() == old.get_vocab()
    n = len(old)
    assert new.convert_ids_to_tokens(list(range(n))) == old.convert_ids_to_tokens(list(range(n)))


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_tokenizers_match_mlx_lm(arch, tiny_dirs):
    path = tiny_dirs[(arch, None)]
    # qwen2's tokenizer class is chosen by transformers from the model family (Qwen2Tokenizer): mlx-lm's path
    assert fast_path_applies(path, arch) == (arch != "qwen2")
    if arch != "qwen2":
        _same(_old(path), load_tokenizer(path))
    _same(_old(path), load_model(path).tokenizer)  # the path load_model takes, whichever it is


@pytest.mark.real
def test_default_model_tokenizer_matches_mlx_lm():
    if os.environ.get("MLXINTERP_SKIP_REAL"):
        pytest.skip("MLXINTERP_SKIP_REAL is set")
    from mlxinterp.core.loading import default_model_dir

    path = default_model_dir()
    assert fast_path_applies(path, "gemma3_text")
    _same(_old(path), load_tokenizer(path, eos_token_ids=1))


def test_other_tokenizer_classes_take_mlx_lm_path(tmp_path, tiny_dirs):
    import shutil

    src = tiny_dirs[("llama", None)]
    for f in src.iterdir():
        shutil.copy(f, tmp_path / f.name)
    cfg = tmp_path / "tokenizer_config.json"
    text = cfg.read_text().replace('"tokenizer_class"', '"_was"')
    cfg.write_text(text.replace("{", '{"tokenizer_class": "LlamaTokenizer",', 1))
    assert not fast_path_applies(tmp_path, "llama")
    (tmp_path / "tokenizer_config.json").write_text('{"chat_template_type": "x"}')
    assert not fast_path_applies(tmp_path, "llama")

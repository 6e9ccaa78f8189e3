"""Load a model directory's tokenizer as mlx-lm's TokenizerWrapper, parsing tokenizer.json once.

Why not mlx-lm's own `load_tokenizer`: for a large vocabulary it spends most of a
model load on repeated work. Gemma 3's tokenizer.json is 33 MB (262,144 tokens,
514,906 BPE merges); mlx-lm parses it with Python's json to pick a streaming
detokenizer, transformers' `AutoTokenizer.from_pretrained` parses it again
several times (format conversion checks) before the Rust `Tokenizer.from_file`
parse, and the wrapper then asks for the whole vocabulary three times
(`get_vocab`, to look for thinking and tool-call tokens) and converts every id to
its token once (the streaming detokenizer's table). Measured on the default
model: 12.5 s, of which one Rust parse is the only part that is needed.

Here the generic fast tokenizer class (the one `AutoTokenizer` picks for
`tokenizer_class` "TokenizersBackend" / "PreTrainedTokenizerFast") is built
directly from tokenizer.json (one Rust parse), the vocabulary is read once and
kept, and the detokenizer is chosen from the parsed decoder. Everything that
encodes or decodes is the same object as on mlx-lm's path, so ids and text are
identical (tests/test_tokenizer_loading.py compares both paths on the default
model and the tiny ones). Directories this shortcut does not cover (another
tokenizer class, extra special-token files, config keys whose handling is not
mirrored here, such as mlx-lm chat-template or tool-parser settings) go through
mlx-lm's loader unchanged.

Not carried over: mlx-lm's tool-call parser inference (mlxinterp never parses
tool calls); `tool_parser` is None on this path.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

# tokenizer_config.json classes that AutoTokenizer maps to the generic fast tokenizer (no custom __init__)
GENERIC_CLASSES = {None, "TokenizersBackend", "PreTrainedTokenizerFast"}
# files or settings that AutoTokenizer / mlx-lm would read on top of tokenizer.json and tokenizer_config.json
_EXTRA_FILES = ("special_tokens_map.json", "added_tokens.json", "chat_template.json", "tokenizer_config_extra.json")
# tokenizer_config.json keys whose handling by transformers' from_pretrained is mirrored here; any other key
# (extra or model-specific special tokens, added_tokens_decoder, auto_map, ...) takes mlx-lm's path
_KNOWN_KEYS = {"backend", "tokenizer_class", "bos_token", "eos_token", "pad_token", "unk_token", "model_max_length",
               "add_bos_token", "add_eos_token", "chat_template", "clean_up_tokenization_spaces", "padding_side",
               "truncation_side", "model_input_names"}


def fast_path_applies(path: Path, model_type: str) -> bool:
    """Whether `load_tokenizer` may build this directory's tokenizer directly (else mlx-lm's loader).

    model_type: config.json's; AutoTokenizer overrides a generic `tokenizer_class` with the model family's own
    class for the families it lists as declaring the wrong class (e.g. qwen2 -> Qwen2Tokenizer, whose __init__
    sets its own special tokens), so those take mlx-lm's path.
    """
    from transformers.models.auto.tokenization_auto import (MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS,
                                                            TOKENIZER_MAPPING_NAMES)

    path = Path(path)
    if not (path / "tokenizer.json").is_file() or any((path / f).exists() for f in _EXTRA_FILES):
        return False
    family_class = (TOKENIZER_MAPPING_NAMES.get(model_type) or "TokenizersBackend").removesuffix("Fast")
    if model_type in MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS and family_class not in GENERIC_CLASSES:
        return False
    cfg = _config(path)
    return (cfg is not None and cfg.get("tokenizer_class") in GENERIC_CLASSES and set(cfg) <= _KNOWN_KEYS
            and all(isinstance(cfg.get(k), (str, type(None))) for k in ("bos_token", "eos_token", "pad_token",
                                                                        "unk_token", "chat_template")))


def _config(path: Path) -> dict | None:
    f = path / "tokenizer_config.json"
    if not f.is_file():
        return {}
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # let mlx-lm's loader report the damage in its own words
    return cfg if isinstance(cfg, dict) else None


@functools.cache
def _vocab_cached_class() -> type:
    """The generic fast tokenizer with its vocabulary read from Rust once (transformers imported lazily:
    it takes seconds and only model loading needs it)."""
    from transformers import PreTrainedTokenizerFast

    class VocabCachedTokenizer(PreTrainedTokenizerFast):
        """`get_vocab` (a full copy of the vocabulary out of Rust per call) cached while the size is unchanged,
        and whole-vocabulary `convert_ids_to_tokens` answered from the cached inverse."""

        _mi_vocab: dict[str, int] | None = None
        _mi_tokens: list[str] | None = None

        def get_vocab(self) -> dict[str, int]:
            if self._mi_vocab is None or len(self._mi_vocab) != len(self):
                self._mi_vocab = super().get_vocab()
                self._mi_tokens = None
            return dict(self._mi_vocab)

        def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
            if isinstance(ids, int) or skip_special_tokens or len(ids) < 4096:
                return super().convert_ids_to_tokens(ids, skip_special_tokens=skip_special_tokens)
            if self._mi_tokens is None or len(self._mi_tokens) != len(self):
                vocab = self._mi_vocab if self._mi_vocab is not None and len(self._mi_vocab) == len(self) \
                    else self.get_vocab()
                inverse = {i: t for t, i in vocab.items()}
                if len(inverse) != len(self) or set(inverse) != set(range(len(self))):
                    return super().convert_ids_to_tokens(ids)  # ids with gaps or shared: ask Rust per id
                self._mi_tokens = [inverse[i] for i in range(len(self))]
            toks = self._mi_tokens
            return [toks[int(i)] for i in ids]

    return VocabCachedTokenizer


def load_tokenizer(path: Path, eos_token_ids: Any = None):
    """mlx-lm's TokenizerWrapper for the tokenizer in `path` (see the module docstring).

    Raises what transformers / tokenizers raise for damaged files; the caller
    (core.loading) turns those into ModelFileError.
    """
    from mlx_lm.tokenizer_utils import (BPEStreamingDetokenizer, NaiveStreamingDetokenizer,
                                        SPMStreamingDetokenizer, TokenizerWrapper)

    path = Path(path)
    cfg = dict(_config(path) or {})
    # As transformers' from_pretrained does when a tokenizer.json exists: the file's post-processor decides
    # whether encode(add_special_tokens=True) adds BOS/EOS, not the config's flags (tokenization.py adds BOS itself)
    for key in ("add_bos_token", "add_eos_token", "tokenizer_class"):
        cfg.pop(key, None)
    jinja = path / "chat_template.jinja"
    if jinja.is_file():  # transformers 5 keeps the template beside the config; it wins over the config's key
        cfg["chat_template"] = jinja.read_text(encoding="utf-8")
    cls = _vocab_cached_class()
    tok = cls(tokenizer_file=str(path / "tokenizer.json"), name_or_path=str(path), is_local=True,
              local_files_only=True, **cfg)
    decoder = _decoder_json(tok)
    if _is_spm(decoder, strip=True):
        detok: Any = SPMStreamingDetokenizer
    elif _is_spm(decoder, strip=False):
        detok = functools.partial(SPMStreamingDetokenizer, trim_space=False)
    elif isinstance(decoder, dict) and decoder.get("type") == "ByteLevel":
        detok = BPEStreamingDetokenizer
    else:
        detok = NaiveStreamingDetokenizer
    if isinstance(eos_token_ids, int):
        eos_token_ids = [eos_token_ids]
    return TokenizerWrapper(tok, detok, eos_token_ids=eos_token_ids)


def _decoder_json(tok) -> dict | None:
    """The decoder section of tokenizer.json, serialised from the parsed tokenizer (not re-read from disk)."""
    dec = tok.backend_tokenizer.decoder
    return None if dec is None else json.loads(dec.__getstate__())


# The decoders mlx-lm recognises as SentencePiece-style (mlx_lm.tokenizer_utils: _is_spm_decoder and
# _is_spm_decoder_no_space): replace the metaspace, byte fallback, fuse, and (first form) strip one leading space.
_SPM_STEPS = [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
              {"type": "ByteFallback"}, {"type": "Fuse"}]
_SPM_STRIP = {"type": "Strip", "content": " ", "start": 1, "stop": 0}


def _is_spm(decoder: Any, strip: bool) -> bool:
    want = {"type": "Sequence", "decoders": _SPM_STEPS + ([_SPM_STRIP] if strip else [])}
    return decoder == want

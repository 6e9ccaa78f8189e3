"""`info` and `hooks` read metadata without loading weights (core/metadata.py): every field and every
hook point (name, order, shape) equals what the loaded model reports, on every tiny architecture,
float and 4-bit, with the automatic dtype policy and as stored."""
from __future__ import annotations

import json

import pytest

from conftest import VARIANT_IDS, VARIANTS
from mlxinterp.core import metadata
from mlxinterp.core.errors import ModelFileError
from mlxinterp.core.hooks import load


@pytest.mark.parametrize("dtype", [None, "native"])
@pytest.mark.parametrize("arch, bits", VARIANTS, ids=VARIANT_IDS)
def test_metadata_equals_the_loaded_model(arch, bits, dtype, tiny_dirs):
    path = str(tiny_dirs[(arch, bits)])
    meta = metadata.describe(path, dtype)
    hm = load(path, dtype=dtype)
    info = hm.info.to_dict()
    same = {k for k in meta if k in info}
    assert same >= {"arch", "n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_mlp", "vocab_size", "dtype",
                    "quantization", "has_chat_template", "max_context", "weights_hash", "n_params", "slug", "source"}
    for k in same:
        if k == "needs_bos" and meta[k] is None:  # decided by the tokenizer itself: needs a load
            continue
        assert meta[k] == info[k], (k, meta[k], info[k])
    assert list(meta["hook_shapes"]) == hm.hook_names
    assert all(tuple(meta["hook_shapes"][n]) == tuple(hm.hook_shape(n)) for n in hm.hook_names)


def test_cli_info_and_hooks_answer_without_loading(tiny_dirs, capsys, monkeypatch):
    from mlxinterp.cli import main
    from mlxinterp.core import loading

    def no_load(*a, **k):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(loading, "_load_mlx", no_load)
    path = str(tiny_dirs[("gemma3_text", None)])
    main(["info", "--model", path, "--json"])
    d = json.loads(capsys.readouterr().out)
    assert d["arch"] == "gemma3_text" and "blocks.0.attn.hook_z" in d["hook_points"]
    main(["hooks", "--model", path, "--filter", "resid_post", "--json"])
    shapes = json.loads(capsys.readouterr().out)
    assert list(shapes) == [f"blocks.{i}.hook_resid_post" for i in range(d["n_layers"])]


def test_integer_weights_are_refused_from_the_headers(tmp_path, tiny_dirs):
    """The header check mirrors check_parameter_dtypes (one message, before any load)."""
    import shutil

    import numpy as np
    from safetensors.numpy import load_file, save_file

    src = tiny_dirs[("llama", None)]
    dst = tmp_path / "int-weights"
    shutil.copytree(src, dst)
    weights = load_file(str(dst / "model.safetensors"))
    weights["model.norm.weight"] = weights["model.norm.weight"].astype(np.int32)
    save_file(weights, str(dst / "model.safetensors"))
    with pytest.raises(ModelFileError, match="weight model.norm.weight has dtype int32"):
        metadata.describe(str(dst))

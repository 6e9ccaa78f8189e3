"""Users' cached mlx-community checkpoints (the 4-bit instruct models listed in REPOS), when present in the local HF cache.

Each is skipped with the reason when it is not cached: nothing is downloaded.
"""
from __future__ import annotations

import mlx.core as mx
import pytest

from mlxinterp.core.errors import ModelSpecError

pytestmark = pytest.mark.cached
REPOS = [
    "mlx-community/gemma-2-2b-it-4bit",
    "mlx-community/Llama-3.2-3B-Instruct-4bit",
    "mlx-community/Qwen2.5-7B-Instruct-4bit",
    "mlx-community/Llama-3.1-8B-Instruct-4bit",
    "mlx-community/gemma-3-1b-it-4bit",
    "mlx-community/Qwen3-0.6B-4bit",
]


@pytest.fixture(params=REPOS, scope="module")
def cached(request, monkeypatch_module):
    from mlxinterp.core.hooks import load
    from mlxinterp.core.loading import hf_cache_dir, hf_snapshot

    monkeypatch_module.delenv("MLXINTERP_ALLOW_DOWNLOAD", raising=False)
    try:
        hf_snapshot(request.param)
    except ModelSpecError:
        pytest.skip(f"{request.param} is not in the local Hugging Face cache ({hf_cache_dir()}); nothing is downloaded")
    return load(request.param, dtype="native")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_noop_taps_bit_identical(cached):
    ids = cached.tokens("The capital of France is").ids
    ref = cached.model(ids)
    logits, cache = cached.run_with_cache(ids)
    assert mx.array_equal(logits, ref)
    n = cached.info.n_layers
    assert mx.allclose(cached.unembed(cache[f"blocks.{n - 1}.hook_resid_post"]), logits.astype(mx.float32), atol=1e-2)


def test_capital_of_france(cached):
    logits = cached("The capital of France is")
    top = [cached.tokenizer.decode([int(i)]) for i in mx.argsort(-logits[0, -1])[:10].tolist()]
    assert any("Paris" in t for t in top), top

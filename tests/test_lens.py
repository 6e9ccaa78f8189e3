"""Logit lens against an independent numpy computation from the weights."""
from __future__ import annotations

import numpy as np
import pytest

from mlxinterp.analysis.lens import logit_lens, plot_lens

PROMPT = "The Eiffel Tower is located in the city of"


def _np_rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * w


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma2", "gemma3_text"])
@pytest.mark.parametrize("mode", ["normed", "raw"])
def test_lens_matches_numpy(tiny_hooked, arch, mode):
    hm = tiny_hooked(arch, None)
    res = logit_lens(hm, PROMPT, targets=[" Paris", " city"], top_k=5, mode=mode)
    _, cache = hm.run_with_cache(PROMPT, names="hook_resid_post")
    inner = hm.model.model
    norm_w = np.array(inner.norm.weight) + (1.0 if hm.spec.family == "gemma" else 0.0)
    W = np.array(hm.model.lm_head.weight) if "lm_head" in hm.model else np.array(inner.embed_tokens.weight)
    paris = hm.tokenizer.encode(" Paris", add_special_tokens=False)[0]
    for layer in res.layers:
        h = np.array(cache[f"blocks.{layer.layer}.hook_resid_post"][0, -1]).astype(np.float64)
        x = _np_rms(h, norm_w, inner.norm.eps) if mode == "normed" else h
        logits = W.astype(np.float64) @ x
        if arch == "gemma2":
            logits = np.tanh(logits / 30.0) * 30.0
        p = np.exp(logits - logits.max())
        p /= p.sum()
        assert [t["id"] for t in layer.top_tokens][:3] == list(np.argsort(-logits)[:3])
        assert layer.top_tokens[0]["prob"] == pytest.approx(p.max(), rel=1e-3)
        assert layer.entropy == pytest.approx(float(-(p * np.log(p + 1e-30)).sum()), abs=1e-3)
        assert layer.target_rank == int((logits > logits[paris]).sum())


def test_lens_grid_and_figure(tiny_hooked, tmp_path):
    hm = tiny_hooked("gemma3_text", 4)
    res = logit_lens(hm, PROMPT, grid=True)
    assert len(res.grid_tokens) == hm.info.n_layers and len(res.grid_tokens[0]) == len(res.tokens)
    png = plot_lens(res, tmp_path / "lens.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.real
def test_real_lens_eiffel_paris(real_hm):
    res = logit_lens(real_hm, PROMPT, targets=[" Paris"])
    assert res.layers[-1].target_rank == 0
    assert res.layers[-1].top_tokens[0]["token"] == " Paris"
    assert res.layers[0].target_rank > 0  # early layers predict something else


def test_lens_at_a_chosen_position(tiny_hooked):
    from mlxinterp.core.errors import PromptError

    hm = tiny_hooked("llama", None)
    res = logit_lens(hm, PROMPT, position=2, grid=True)
    assert res.position == 2
    assert [L.top_tokens[0]["token"] for L in res.layers] == [row[2] for row in res.grid_tokens]
    with pytest.raises(PromptError, match="position 99 is out of range"):
        logit_lens(hm, PROMPT, position=99)

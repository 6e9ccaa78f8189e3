"""Teacher-forced phrase scores: one prompt forward shared by several phrases equals one whole forward per phrase."""
import numpy as np
import pytest

from conftest import VARIANT_IDS, VARIANTS
from mlxinterp.analysis import scoring
from mlxinterp.core import taps as T

PROMPTS = ["How do I bake bread?", "Tell me a story about a very small cat", "Why?"]  # different lengths: padding
PHRASES = [scoring.REFUSAL_PHRASE, scoring.COMPLY_PHRASE, " ok"]  # a one-token phrase has no continuation pass


def _whole(hm, taps):
    """One forward per phrase over prompt + phrase (the reference the shared prompt must reproduce)."""
    texts = [scoring.instruction(hm, p)[0] for p in PROMPTS]
    return np.stack([scoring.continuation_logprob(hm, texts, [ph] * len(texts), taps, chat=hm.info.has_chat_template,
                                                  mean=True) for ph in PHRASES])


def _steer(hm, layer: int, seed: int = 0, **kw) -> dict:
    v = np.random.default_rng(seed).normal(size=hm.info.d_model).astype(np.float32)
    return {f"blocks.{layer}.hook_resid_post": T.Add(v, 0.5, **kw)}


@pytest.mark.parametrize("arch,bits", VARIANTS, ids=VARIANT_IDS)
def test_shared_prompt_equals_a_whole_forward_per_phrase(tiny_hooked, arch, bits):
    hm = tiny_hooked(arch, bits)
    for taps in (None, _steer(hm, hm.info.n_layers // 2)):
        got = scoring.phrases_logprob(hm, PROMPTS, PHRASES, taps, batch_size=2)
        want = _whole(hm, taps)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * (1 + np.abs(want).max()))
        np.testing.assert_allclose(scoring.refusal_score(hm, PROMPTS, taps), want[0] - want[1],
                                   rtol=1e-4, atol=1e-4 * (1 + np.abs(want).max()))


def test_a_position_dependent_tap_gets_whole_forwards(tiny_hooked):
    """positions='last' means the last column of the forward: a split forward would move it, so none is made."""
    hm = tiny_hooked("llama", None)
    taps = _steer(hm, 1, positions="last")
    np.testing.assert_array_equal(scoring.phrases_logprob(hm, PROMPTS, PHRASES, taps), _whole(hm, taps))
    assert not scoring._position_free(hm, "blocks.1.hook_resid_post", T.Ablate("mean"))  # batch mean over the forward
    assert scoring._position_free(hm, "blocks.1.hook_resid_post", T.Ablate("zero"))


@pytest.mark.real
def test_shared_prompt_on_the_default_model(real_hm):
    """Gemma 3's sliding-window layers (window 512) keep the shared cache; steered and plain scores match."""
    hm = real_hm
    for taps in (None, _steer(hm, 6)):
        got = scoring.phrases_logprob(hm, PROMPTS, PHRASES[:2], taps)
        texts = [scoring.instruction(hm, p)[0] for p in PROMPTS]
        want = np.stack([scoring.continuation_logprob(hm, texts, [ph] * 3, taps, chat=hm.info.has_chat_template, mean=True)
                         for ph in PHRASES[:2]])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * (1 + np.abs(want).max()))

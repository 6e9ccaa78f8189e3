"""Tuned lens: identity start equals the logit lens; training lowers held-out KL; files and errors."""
from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxinterp.analysis import tuned_lens as TL
from mlxinterp.analysis.lens import layer_logits, logit_lens


def _windows(hm, tmp_path, split, n, ctx_len=16):
    import tiny

    from mlxinterp.tasks.corpus import windows

    d = tmp_path / "corpus"
    if not d.exists():
        d.mkdir()
        for i, line in enumerate(tiny.CORPUS[:6] * 4):  # 24 files so both splits are non-empty
            (d / f"doc{i:02d}.txt").write_text((line + " ") * 6)
    bos = hm.info.bos_token_id if hm.info.needs_bos else None
    return [w for _, w in zip(range(n), windows(hm.tokenizer, bos, d, split, ctx_len))]


def _kl_numpy(hm, h_layer, h_last):
    """KL(final || lens) by hand from hm.unembed logits."""
    def logsoft(x):
        x = np.array(x, dtype=np.float64)
        m = x.max(-1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))
    lp, lq = logsoft(hm.unembed(mx.array(h_last))), logsoft(hm.unembed(mx.array(h_layer)))
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())


@pytest.mark.parametrize("arch", ["gemma3_text", "qwen3"])
def test_tuned_lens_beats_logit_lens_on_heldout(tiny_hooked, tmp_path, arch):
    hm = tiny_hooked(arch, None)
    h_train, ids = TL.residuals(hm, _windows(hm, tmp_path, "train", 24))
    h_eval, _ = TL.residuals(hm, _windows(hm, tmp_path, "heldout", 6))
    identity = TL.TunedLens.identity(hm.info.n_layers, hm.info.d_model)
    ev0 = TL.evaluate(hm, identity, h_eval)
    assert ev0["kl_tuned_lens"] == ev0["kl_logit_lens"]  # identity translators = the logit lens
    assert ev0["kl_logit_lens"][1] == pytest.approx(_kl_numpy(hm, h_eval[1], h_eval[-1]), rel=1e-4, abs=1e-6)
    lens, info = TL.train(hm, h_train, steps=150, batch=64, lr=3e-2, text_ids=ids)
    assert 0 < info["final_mass_in_subset"] <= 1
    # The saved translators (converted from the training parametrisation) reproduce the validation KL
    # that selected them, layer by layer.
    v = np.array(info["validation_index"])
    got = TL.layer_kls(hm, lens.apply(mx.array(h_train[:, v])), mx.array(h_train[-1, v])).mean(axis=1)[:-1]
    np.testing.assert_allclose(got, info["validation_kl_best"], rtol=1e-3, atol=1e-4)
    ev = TL.evaluate(hm, lens, h_eval)
    assert ev["kl_tuned_lens"][-1] == pytest.approx(ev["kl_logit_lens"][-1]) == pytest.approx(0, abs=1e-5)
    assert ev["tuned_lower_at_every_layer_but_last"], ev


def test_targets_match_full_vocabulary(tiny_hooked):
    """prepare_targets (filled chunk by chunk) keeps the exact log p on the subset and the exact rest mass."""
    hm = tiny_hooked("gemma3_text", None)
    rng = np.random.default_rng(1)
    h_last = (rng.normal(size=(37, hm.info.d_model)) * 3).astype(np.float32)
    tg = TL.prepare_targets(hm, h_last, np.array([5, 9, 5]), top_per_pos=4, batch=8)  # 37 rows: a partial last chunk
    full = np.array(hm.unembed(mx.array(h_last)), dtype=np.float64)
    logp = full - np.log(np.exp(full - full.max(-1, keepdims=True)).sum(-1, keepdims=True)) - full.max(-1, keepdims=True)
    assert {5, 9} <= set(tg["vocab"].tolist())
    assert set(np.argsort(-full, axis=1)[:, :4].reshape(-1).tolist()) <= set(tg["vocab"].tolist())
    np.testing.assert_allclose(tg["logp"], logp[:, tg["vocab"]], rtol=1e-4, atol=1e-4)
    rest = np.setdiff1d(np.arange(full.shape[1]), tg["vocab"])
    np.testing.assert_allclose(np.exp(tg["log_p_other"]), np.exp(logp[:, rest]).sum(-1), rtol=1e-3, atol=1e-6)


def test_subset_covering_the_vocabulary(tiny_hooked, tmp_path):
    """When the subset is the whole vocabulary there is no 'other' bucket to sample: the KL is exact."""
    hm = tiny_hooked("llama", None)
    h, _ = TL.residuals(hm, _windows(hm, tmp_path, "train", 8))
    lens, info = TL.train(hm, h, steps=4, batch=16, lr=1e-2, text_ids=np.arange(hm.info.vocab_size))
    assert info["vocab_subset"] == hm.info.vocab_size and info["other_sample"] == 0
    assert info["final_mass_in_subset"] == pytest.approx(1.0, abs=1e-5)
    assert np.isfinite(info["validation_kl_best"]).all() and np.isfinite(np.array(lens.A)).all()


def test_save_load_and_lens_integration(tiny_hooked, tmp_path):
    hm = tiny_hooked("llama", None)
    rng = np.random.default_rng(0)
    n, d = hm.info.n_layers, hm.info.d_model
    lens = TL.TunedLens(mx.array(rng.normal(scale=0.05, size=(n, d, d)).astype(np.float32)),
                        mx.array(rng.normal(scale=0.05, size=(n, d)).astype(np.float32)), {"model": "tiny"})
    path = lens.save(tmp_path / "lens.safetensors")
    back = TL.TunedLens.load(path)
    np.testing.assert_array_equal(np.array(back.A), np.array(lens.A))
    assert back.meta == {"model": "tiny"}
    back.check_model(hm)
    _, cache = hm.run_with_cache("The capital of France is", names="hook_resid_post")
    h = np.array(cache.stack("hook_resid_post")[:, 0, -1], dtype=np.float64)
    want = h + np.einsum("ld,lde->le", h, np.array(lens.A, dtype=np.float64)) + np.array(lens.b)
    got = layer_logits(hm, cache, -1, tuned=back)
    np.testing.assert_allclose(np.array(got), np.array(hm.unembed(mx.array(want.astype(np.float32)))), rtol=1e-4, atol=1e-4)
    res = logit_lens(hm, "The capital of France is", tuned=back)
    assert res.mode == "tuned"


def test_bad_files(tiny_hooked, tmp_path):
    from safetensors.numpy import save_file

    hm = tiny_hooked("llama", None)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(TL.TunedLensError, match="cannot read tuned lens"):
        TL.TunedLens.load(tmp_path / "junk.safetensors")
    save_file({"direction": np.zeros(4, np.float32)}, str(tmp_path / "dir.safetensors"))
    with pytest.raises(TL.TunedLensError, match="is not a tuned lens"):
        TL.TunedLens.load(tmp_path / "dir.safetensors")
    TL.TunedLens.identity(3, 8).save(tmp_path / "small.safetensors")
    with pytest.raises(TL.TunedLensError, match="3 layers of width 8"):
        TL.TunedLens.load(tmp_path / "small.safetensors").check_model(hm)

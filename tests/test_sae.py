"""SAEs and transcoders: formats, activations, and taps checked against numpy on tiny models of every arch."""
from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from mlxinterp.analysis.sae import (SAE, FeatureEdit, FeatureStore, SAEError, gemma_scope_site, load_sae, map_hook,
                                    sae_taps)
from mlxinterp.core import taps as T

PROMPT = "The capital of France is Paris"


def make_sae(d_in, d_sae, activation="relu", seed=0, hook="blocks.1.hook_resid_post", k=None, d_out=None,
             hook_out=None, apply_b_dec=True):
    """Random weights whose pre-activations straddle zero, so every activation rule keeps some and drops some."""
    rng = np.random.default_rng(seed)
    d_out = d_out or d_in
    W_enc = rng.normal(size=(d_in, d_sae)).astype(np.float32) / np.sqrt(d_in)
    W_dec = rng.normal(size=(d_sae, d_out)).astype(np.float32) / np.sqrt(d_sae)
    b_enc = rng.normal(scale=0.1, size=d_sae).astype(np.float32)
    b_dec = rng.normal(scale=0.1, size=d_out).astype(np.float32)
    thr = np.abs(rng.normal(scale=0.3, size=d_sae)).astype(np.float32) if activation == "jumprelu" else None
    return SAE(mx.array(W_enc), mx.array(b_enc), mx.array(W_dec), mx.array(b_dec), activation, hook, hook_out, k,
               None if thr is None else mx.array(thr), apply_b_dec)


def np_encode(sae: SAE, x: np.ndarray) -> np.ndarray:
    """Hand computation of the feature map, independent of the MLX code."""
    W = np.array(sae.W_enc, dtype=np.float64)
    x = x.astype(np.float64)
    if sae.apply_b_dec_to_input and not sae.is_transcoder:
        x = x - np.array(sae.b_dec)
    pre = x @ W + np.array(sae.b_enc)
    if sae.activation == "relu":
        return np.maximum(pre, 0)
    if sae.activation == "jumprelu":
        return np.where(pre > np.array(sae.threshold), pre, 0)
    out = np.zeros_like(pre)
    top = np.argsort(-pre, axis=-1)[..., : sae.k]
    np.put_along_axis(out, top, np.maximum(np.take_along_axis(pre, top, -1), 0), -1)
    return out


@pytest.mark.parametrize("activation,k", [("relu", None), ("jumprelu", None), ("topk", 5)])
def test_encode_matches_numpy(activation, k):
    sae = make_sae(16, 40, activation, k=k)
    x = np.random.default_rng(1).normal(size=(3, 7, 16)).astype(np.float32)
    f = np.array(sae.encode(mx.array(x)))
    ref = np_encode(sae, x)
    np.testing.assert_allclose(f, ref, atol=1e-5)
    assert 0 < (ref > 0).mean() < 1  # the rule really drops some features
    if activation == "topk":
        assert ((f > 0).sum(-1) <= k).all()
    recon = np.array(sae.decode(mx.array(f)))
    np.testing.assert_allclose(recon, ref @ np.array(sae.W_dec) + np.array(sae.b_dec), atol=1e-4)


def test_fold_decoder_norm_is_exact_for_jumprelu():
    sae = make_sae(16, 30, "jumprelu")
    folded = sae.fold_decoder_norm()
    np.testing.assert_allclose(np.array(folded.decoder_norms()), 1.0, atol=1e-5)
    x = mx.array(np.random.default_rng(2).normal(size=(5, 16)).astype(np.float32))
    np.testing.assert_allclose(np.array(folded(x)), np.array(sae(x)), atol=1e-4)
    with pytest.raises(SAEError, match="TopK"):
        make_sae(16, 30, "topk", k=3).fold_decoder_norm()


# ---------------------------------------------------------------- files
def test_saelens_roundtrip(tmp_path):
    sae = make_sae(16, 24, "topk", k=4)
    sae.save(tmp_path / "s")
    back = load_sae(tmp_path / "s")
    assert (back.activation, back.k, back.hook, back.apply_b_dec_to_input) == ("topk", 4, sae.hook, True)
    x = mx.array(np.random.default_rng(3).normal(size=(4, 16)).astype(np.float32))
    np.testing.assert_array_equal(np.array(back(x)), np.array(sae(x)))


def test_saelens_cfg_variants(tmp_path):
    sae = make_sae(16, 24, "jumprelu")
    sae.save(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    cfg.pop("hook_name")
    cfg.update(hook_point="blocks.2.hook_mlp_in", architecture="jumprelu", activation_fn_str="relu")
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    back = load_sae(tmp_path / "s")
    assert back.hook == "blocks.2.ln2.hook_normalized" and back.activation == "jumprelu"
    cfg.update(architecture="gated")
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEError, match="architecture='gated'"):
        load_sae(tmp_path / "s")
    cfg.update(architecture="standard", normalize_activations="expected_average_only_in")
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEError, match="normalize_activations"):
        load_sae(tmp_path / "s")


def _gemma_scope_params(sae: SAE) -> dict:
    return {n: np.array(getattr(sae, n)) for n in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}


def test_gemma_scope_npz_and_safetensors(tmp_path):
    from safetensors.numpy import save_file

    sae = make_sae(16, 24, "jumprelu", apply_b_dec=False)
    d = tmp_path / "gemma-scope-2b-pt-res" / "layer_3" / "width_16k" / "average_l0_50"
    d.mkdir(parents=True)
    np.savez(d / "params.npz", **_gemma_scope_params(sae))
    back = load_sae(d)
    assert back.hook == "blocks.3.hook_resid_post" and back.activation == "jumprelu"
    assert back.apply_b_dec_to_input is False
    x = mx.array(np.random.default_rng(4).normal(size=(4, 16)).astype(np.float32))
    np.testing.assert_allclose(np.array(back.encode(x)), np_encode(sae, np.array(x)), atol=1e-5)
    t = tmp_path / "transcoder" / "layer_1_width_16k_l0_small"
    t.mkdir(parents=True)
    save_file(_gemma_scope_params(sae), str(t / "params.safetensors"))
    tc = load_sae(t / "params.safetensors")
    assert (tc.hook, tc.hook_out) == ("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out")
    assert gemma_scope_site(tmp_path / "gemma-scope-9b-pt-att/layer_20/params.npz") == ("attn.hook_z", None, 20)
    assert map_hook("blocks.9.hook_resid_post") == "blocks.9.hook_resid_post"


def test_bad_files(tmp_path):
    sae = make_sae(16, 24, "jumprelu")
    p = _gemma_scope_params(sae)
    (tmp_path / "a").mkdir()
    np.savez(tmp_path / "a" / "params.npz", **{k: v for k, v in p.items() if k != "b_dec"})
    with pytest.raises(SAEError, match="lacks b_dec"):
        load_sae(tmp_path / "a" / "params.npz", hook="blocks.0.hook_resid_post")
    bad = dict(p, W_dec=p["W_dec"].copy())
    bad["W_dec"][3, 2] = np.nan
    np.savez(tmp_path / "nan.npz", **bad)
    with pytest.raises(SAEError, match="W_dec contains NaN"):
        load_sae(tmp_path / "nan.npz", hook="blocks.0.hook_resid_post")
    np.savez(tmp_path / "shape.npz", **dict(p, b_enc=p["b_enc"][:5]))
    with pytest.raises(SAEError, match=r"b_enc has shape \(5,\)"):
        load_sae(tmp_path / "shape.npz", hook="blocks.0.hook_resid_post")
    np.savez(tmp_path / "obj.npz", W_enc=np.array([{"a": 1}], dtype=object))
    with pytest.raises(SAEError, match="cannot read"):
        load_sae(tmp_path / "obj.npz", hook="blocks.0.hook_resid_post")
    with pytest.raises(SAEError, match="cannot tell which hook"):
        load_sae(tmp_path / "a" / "params.npz")
    (tmp_path / "x.pt").write_bytes(b"\x80\x04")
    with pytest.raises(SAEError, match="never loaded"):
        load_sae(tmp_path / "x.pt")
    with pytest.raises(SAEError, match="activation 'gelu'"):
        make_sae(16, 24, "gelu")
    with pytest.raises(SAEError, match="k in 1..24"):
        make_sae(16, 24, "topk", k=0)


# ---------------------------------------------------------------- taps on tiny models
def _resid_sae(hm, activation="topk", layer=1):
    d = hm.info.d_model
    return make_sae(d, 3 * d, activation, hook=f"blocks.{layer}.hook_resid_post", k=8 if activation == "topk" else None)


def test_splice_keeps_logits(hm):
    """Splicing with the error term kept: logits equal the plain model's within 1e-4 relative."""
    sae = _resid_sae(hm, "jumprelu")
    sae.check_model(hm)
    plain = np.array(hm(PROMPT))
    with hm.hooks(sae_taps(sae)):
        spliced = np.array(hm(PROMPT))
    scale = np.abs(plain).max()
    assert np.abs(spliced - plain).max() <= 1e-4 * scale
    with hm.hooks(sae_taps(sae, keep_error=False)):  # without it the SAE really replaces the activation
        replaced = np.array(hm(PROMPT))
    assert np.abs(replaced - plain).max() > 1e-2 * scale


@pytest.mark.parametrize("arch", ["gemma3_text", "llama"])
def test_capture_matches_numpy(tiny_hooked, arch):
    hm = tiny_hooked(arch, None)
    sae = _resid_sae(hm, "topk", layer=2)
    _, cache = hm.run_with_cache([PROMPT, "Hi"], names=[sae.hook])
    x = np.array(cache[sae.hook])
    store = FeatureStore()
    with hm.hooks(sae_taps(sae, splice=False, store=store, top_k=8)):
        hm([PROMPT, "Hi"])
    ref = np_encode(sae, x)
    ids, vals = store.ids[0], store.values[0]
    got = np.zeros_like(ref)
    np.put_along_axis(got, ids, vals, -1)
    np.testing.assert_allclose(got, ref, atol=1e-4 * max(1.0, np.abs(ref).max()))
    assert (np.diff(vals, axis=-1) <= 0).all()  # sorted, largest first
    assert (store.seq_pos[0][1] < 0).sum() > 0  # the short prompt is left-padded


@pytest.mark.parametrize("mode,value", [("ablate", 0.0), ("clamp", 3.0), ("add", -2.0), ("scale", 2.5)])
def test_feature_edits_match_hand_computation(tiny_hooked, mode, value):
    hm = tiny_hooked("qwen3", None)
    sae = _resid_sae(hm, "relu", layer=1)
    _, cache = hm.run_with_cache(PROMPT, names=[sae.hook])
    x = np.array(cache[sae.hook], dtype=np.float64)
    f = np_encode(sae, x)
    i = int(np.argmax(f[0, -1]))  # a feature that is active at the last position
    got = {}
    edited = T.Capture(store=_Dict(got))
    with hm.hooks(sae_taps(sae, [FeatureEdit(i, mode, value)]) + [(sae.hook, edited)]):
        hm(PROMPT)
    new_fi = {"ablate": 0.0, "clamp": value, "add": f[..., i] + value, "scale": f[..., i] * value}[mode]
    want = x + (new_fi - f[..., i])[..., None] * np.array(sae.W_dec)[i]
    np.testing.assert_allclose(got[sae.hook], want, atol=1e-4 * np.abs(x).max())


def test_edit_only_at_positions(tiny_hooked):
    hm = tiny_hooked("gemma2", None)
    sae = _resid_sae(hm, "relu")
    got = {}
    with hm.hooks(sae_taps(sae, [FeatureEdit(0, "add", 5.0)], positions=[-1]) + [(sae.hook, T.Capture(store=_Dict(got)))]):
        hm(PROMPT)
    _, cache = hm.run_with_cache(PROMPT, names=[sae.hook])
    diff = got[sae.hook] - np.array(cache[sae.hook])
    np.testing.assert_allclose(diff[0, :-1], 0, atol=1e-4)
    np.testing.assert_allclose(diff[0, -1], 5.0 * np.array(sae.W_dec)[0], atol=1e-4)


def test_transcoder_splice(tiny_hooked):
    hm = tiny_hooked("gemma3_text", 4)
    d = hm.info.d_model
    tc = make_sae(d, 2 * d, "relu", hook="blocks.1.ln2.hook_normalized", hook_out="blocks.1.hook_mlp_out")
    assert tc.is_transcoder
    plain = np.array(hm(PROMPT))
    with hm.hooks(sae_taps(tc)):
        same = np.array(hm(PROMPT))
    assert np.abs(same - plain).max() <= 1e-4 * np.abs(plain).max()
    _, cache = hm.run_with_cache(PROMPT, names=[tc.hook, tc.hook_out])
    f = np_encode(tc, np.array(cache[tc.hook]))
    i = int(np.argmax(f[0, -1]))
    got = {}
    with hm.hooks(sae_taps(tc, [FeatureEdit(i)]) + [(tc.hook_out, T.Capture(store=_Dict(got)))]):
        hm(PROMPT)
    want = np.array(cache[tc.hook_out]) - f[..., i][..., None] * np.array(tc.W_dec)[i]
    np.testing.assert_allclose(got[tc.hook_out], want, atol=1e-4 * np.abs(want).max())


def test_per_head_hook_and_model_mismatch(tiny_hooked):
    hm = tiny_hooked("llama", None)
    width = hm.info.n_heads * hm.info.head_dim
    sae = make_sae(width, 32, "relu", hook="blocks.0.attn.hook_z")
    sae.check_model(hm)
    plain = np.array(hm(PROMPT))
    with hm.hooks(sae_taps(sae)):
        assert np.abs(np.array(hm(PROMPT)) - plain).max() <= 1e-4 * np.abs(plain).max()
    wrong = make_sae(hm.info.d_model + 1, 8, "relu", hook="blocks.0.hook_resid_post")
    with pytest.raises(SAEError, match="d_in = 65 but blocks.0.hook_resid_post"):
        wrong.check_model(hm)
    with pytest.raises(SAEError, match="does not fit"):
        with hm.hooks(sae_taps(wrong)):
            pass
    with pytest.raises(SAEError, match="out of range"):
        with hm.hooks(sae_taps(sae, [FeatureEdit(99)])):
            pass


class _Dict:
    """A Capture store that keeps the last value per hook as numpy."""

    def __init__(self, d):
        self.d = d

    def append(self, name, a, seq_pos):
        self.d[name] = np.array(a, dtype=np.float64)

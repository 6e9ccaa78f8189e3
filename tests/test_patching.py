"""Batched patching equals the one-patch-per-forward loop, and known cells give known answers."""
from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxinterp.analysis import patching as P
from mlxinterp.core import taps as T
from mlxinterp.core.errors import TapError

CLEAN = [1, 287, 414, 417, 279, 280, 300, 301]
CORRUPT = [1, 290, 414, 417, 279, 280, 300, 301]  # differs at position 1 only


def metric(logits):
    return logits[:, 5] - logits[:, 7]


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3_text"])
@pytest.mark.parametrize("bits", [None, 4])
def test_batched_sweep_equals_one_forward_per_patch(tiny_hooked, arch, bits):
    hm = tiny_hooked(arch, bits)
    res = P.patch_sweep(hm, CLEAN, CORRUPT, metric, hook="hook_resid_pre", batch_size=7)
    _, cache = hm.run_with_cache(mx.array([CLEAN]))
    for li, l in enumerate(res.layers):
        for pi, p in enumerate(res.positions):
            name = f"blocks.{l}.hook_resid_pre"
            with hm.hooks({name: T.Replace(cache[name][0, p], positions=p)}):
                full = hm(mx.array([CORRUPT]))
            assert abs(float(metric(full[:, -1])[0]) - res.metric[li][pi]) < 1e-3
    grid = np.array(res.normalised)
    assert np.allclose(grid[:, 0], 0, atol=1e-4)  # position 0 is the same token (BOS) in both runs
    assert np.allclose(grid[0, 2:], 0, atol=1e-4)  # layer-0 embeddings of identical tokens
    assert abs(grid[0, 1] - 1) < 1e-3  # patching the only differing embedding restores the clean run


def test_last_layer_last_position_restores_clean(tiny_hooked):
    hm = tiny_hooked("qwen3", None)
    res = P.patch_sweep(hm, CLEAN, CORRUPT, metric, hook="hook_resid_post", layers=[-1], positions=[-1])
    assert res.normalised[0][0] == pytest.approx(1.0, abs=1e-4)


def test_forward_last_matches_full_logits(tiny_hooked):
    hm = tiny_hooked("gemma2", 4)
    full = hm(mx.array([CLEAN]))
    last = P.forward_last(hm, mx.array([CLEAN]), read=(-1, 2))
    assert last.shape == (1, 2, 512)
    assert mx.allclose(last[:, 0], full[:, -1], atol=1e-5) and mx.allclose(last[:, 1], full[:, 2], atol=1e-5)


@pytest.mark.real
def test_real_eiffel_colosseum_sweep(real_hm, tmp_path):
    m = P.logit_diff(real_hm, " Paris", " Rome")
    res = P.patch_sweep(real_hm, "The Eiffel Tower is located in the city of",
                        "The Colosseum is located in the city of", m)
    assert res.clean == pytest.approx(7.06, abs=0.05) and res.corrupt == pytest.approx(-11.92, abs=0.05)
    grid = np.array(res.normalised)
    assert grid[0, 2:4].max() > 0.5  # layer 0: one subject token alone restores most of the answer
    assert abs(grid[-1, -1] - 1) < 0.05  # the last position at the last layer carries it
    P.plot_sweep(res, tmp_path / "sweep.png")


def test_per_head_patches_match_a_manual_head_replace(tiny_hooked):
    hm = tiny_hooked("gemma3_text", None)
    _, cache = hm.run_with_cache(mx.array([CLEAN]))
    z = np.array(cache["blocks.1.attn.hook_z"][0])  # [L, H, Dh]
    variants = [[P.Patch("blocks.1.attn.hook_z", -1, z[-1, h], head=h)] for h in range(hm.info.n_heads)]
    got = P.run_variants(hm, CORRUPT, variants, metric, batch_size=3)
    for h in range(hm.info.n_heads):
        with hm.hooks({"blocks.1.attn.hook_z": T.Replace(mx.array(z[-1]), positions=-1, heads=[h])}):
            want = float(metric(hm(mx.array([CORRUPT]))[:, -1])[0])
        assert got[h] == pytest.approx(want, abs=1e-4)
    with pytest.raises(TapError, match="head=9"):
        P.run_variants(hm, CORRUPT, [[P.Patch("blocks.1.attn.hook_z", -1, z[-1, 0], head=9)]], metric)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma2", "gemma3_text"])
@pytest.mark.parametrize("bits", [None, 4])
def test_reused_prefix_equals_full_runs(tiny_hooked, arch, bits):
    """Variants starting from the unpatched run's KV cache give the full runs' metric, at any position and read."""
    hm = tiny_hooked(arch, bits)
    _, cache = hm.run_with_cache(mx.array([CLEAN]))
    z = np.array(cache["blocks.1.attn.hook_z"][0])
    r = np.array(cache["blocks.0.hook_resid_post"][0])
    variants = [[P.Patch("blocks.0.hook_resid_post", p, r[p])] for p in (0, 1, 3, 6, -1)]
    variants += [[P.Patch("blocks.1.attn.hook_z", 4, z[4, 1], head=1), P.Patch("blocks.0.hook_resid_post", 2, r[2])], []]
    for read in (-1, 5):
        full = P.run_variants(hm, CORRUPT, variants, metric, read=read, batch_size=3)
        reused = P.run_variants(hm, CORRUPT, variants, metric, read=read, batch_size=3, reuse_prefix=True)
        assert np.allclose(full, reused, atol=1e-4), (read, full, reused)
    assert abs(full[3] - full[-1]) < 1e-4  # read at 5: a patch at position 6 changes nothing


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3_text"])
@pytest.mark.parametrize("bits", [None, 4])
def test_vocab_rows_match_full_unembedding(tiny_hooked, arch, bits):
    hm = tiny_hooked(arch, bits)
    vocab = [7, 5, 0, hm.info.vocab_size - 1]
    full = P.forward_last(hm, mx.array([CLEAN, CORRUPT]), read=(-1, 2))
    rows = P.forward_last(hm, mx.array([CLEAN, CORRUPT]), read=(-1, 2), vocab=vocab)
    assert rows.shape == (2, 2, 4)
    assert mx.allclose(rows, full[..., vocab], atol=1e-4)
    m = P.logit_diff(hm, 5, 7)
    assert mx.allclose(m(full[:, 0]), m.on_vocab(P.forward_last(hm, mx.array([CLEAN, CORRUPT]), vocab=m.vocab)[:, 0]),
                       atol=1e-4)
    with pytest.raises(Exception, match="token ids"):
        hm.unembed(full[:, 0, :8], normed=False, vocab=[hm.info.vocab_size])


def test_sweep_levers_do_not_change_the_grid(tiny_hooked):
    """Prefix reuse, skipping identical cells and the two-row unembedding are speed levers only: same grid as
    full runs of full logits."""
    hm = tiny_hooked("gemma3_text", None)
    vm = P.logit_diff(hm, 5, 7)
    plain = P.patch_sweep(hm, CLEAN, CORRUPT, metric, batch_size=5, reuse_prefix=False, skip_identical=False)
    fast = P.patch_sweep(hm, CLEAN, CORRUPT, vm, batch_size=5)
    assert np.allclose(plain.metric, fast.metric, atol=1e-4)
    assert fast.clean == pytest.approx(plain.clean, abs=1e-4) and fast.corrupt == pytest.approx(plain.corrupt, abs=1e-4)
    # skipped: position 0 in every layer, and every position but 1 in layer 0 (embeddings of identical tokens)
    assert plain.meta["skipped"] == 0 and fast.meta["skipped"] == hm.info.n_layers + len(CLEAN) - 2
    seen = []
    P.patch_sweep(hm, CLEAN, CORRUPT, vm, batch_size=5, progress=seen.append)
    assert sum(seen) == hm.info.n_layers * len(CLEAN)  # the extra unpatched row is not counted


def test_chunks_group_rows_by_start():
    """Rows run from their chunk's smallest start: a later group joins only when that is cheaper than a forward."""
    starts = [0] * 18 + [1] * 18 + [9] * 3
    chunks = P._chunks(starts, batch_size=64)
    assert [(len(r), s) for r, s in chunks] == [(36, 0), (3, 9)]  # 18 extra token-rows < a forward; 3 x 9 = 27 is not
    assert sorted(i for r, _ in chunks for i in r) == list(range(len(starts)))
    assert [(len(r), s) for r, s in P._chunks(starts, batch_size=20)] == [(18, 0), (18, 1), (3, 9)]

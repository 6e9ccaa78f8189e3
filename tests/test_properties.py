"""Property-based tests of tap algebra on every tiny architecture (float and 4-bit).

Hypothesis draws the architecture, the hook point, the vector (from a seed and a
scale), and the positions spec; the properties are exact statements about taps:

- inverses restore the activation: Add v then Add -v; Scale f then Scale 1/f;
  Project onto + Project out = the activation;
- any composition of no-op taps, on any hooks and positions, leaves the logits
  bit-identical to plain mlx-lm;
- patching a run with its own activations is the identity (taps and run_variants);
- a positions spec (int, subset, per-item lists, mask; left-padded batch) changes
  exactly the chosen cells and leaves every other cell bit-identical.

Derandomized with modest example counts: same examples on every run, well under a minute.
"""
from __future__ import annotations

import mlx.core as mx
import numpy as np
from conftest import VARIANTS
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mlxinterp.analysis import patching as P
from mlxinterp.core import taps as T

SETTINGS = settings(max_examples=60, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
ROWS = [[1, 287, 414, 417, 279, 280, 300, 301], [1, 290, 291, 292, 293]]  # lengths 8 and 5: row 1 is left-padded
SUFFIXES = ["hook_resid_pre", "hook_resid_mid", "hook_resid_post", "attn.hook_q", "attn.hook_k", "attn.hook_z",
            "hook_attn_out", "mlp.hook_post", "hook_mlp_out", "ln1.hook_normalized"]

variants = st.sampled_from(VARIANTS)
hooks = st.one_of(st.just("hook_embed"), st.builds(lambda l, s: f"blocks.{l}.{s}", st.integers(-4, 3),
                                                    st.sampled_from(SUFFIXES)))
seeds = st.integers(0, 2**16)
scales = st.floats(0.1, 20.0)


def _positions(lengths=(8, 5), width=8):
    """Every kind of positions spec, valid for the batch ROWS (ints may exceed the shorter row)."""
    n_max = max(lengths)
    ints = st.integers(-n_max, n_max - 1)
    per_item = st.tuples(*[st.lists(st.integers(-n, n - 1), max_size=4) for n in lengths]).map(list).map(
        lambda rows: [list(r) for r in rows])
    mask = st.lists(st.booleans(), min_size=len(lengths) * width, max_size=len(lengths) * width).map(
        lambda bits: np.array(bits).reshape(len(lengths), width))
    return st.one_of(st.none(), st.just("last"), ints, st.lists(ints, max_size=5), per_item, mask)


def _chosen(positions, lengths=(8, 5), width=8) -> np.ndarray:
    """Bool [B, width]: the cells a spec should touch, computed independently of taps.py."""
    out = np.zeros((len(lengths), width), bool)
    for b, n in enumerate(lengths):
        pad = width - n
        for j in range(pad, width):
            p = j - pad
            if positions is None:
                hit = True
            elif isinstance(positions, str):
                hit = p == n - 1
            elif isinstance(positions, np.ndarray):
                hit = bool(positions[b, j])
            else:
                want = [positions] if isinstance(positions, int) else positions
                want = want[b] if want and isinstance(want[0], list) else want
                hit = any(-n <= k < n and k % n == p for k in want)
            out[b, j] = hit
    return out


def _in_range_somewhere(positions, lengths=(8, 5)) -> bool:
    """Shared int/list specs must exist in at least one row (else taps.py rightly refuses them)."""
    if positions is None or isinstance(positions, (str, np.ndarray)):
        return True
    ks = [positions] if isinstance(positions, int) else positions
    if ks and isinstance(ks[0], list):
        return True
    return all(any(-n <= k < n for n in lengths) for k in ks)


def _vector(hm, name: str, seed: int, scale: float) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=hm.hook_shape(name)) * scale).astype(np.float32)


def _captured(hm, name: str, taps=None, rows=ROWS) -> np.ndarray:
    _, cache = hm.run_with_cache(rows, names=[name], taps=taps or [])
    return np.array(cache[name])


def _real(lengths=(8, 5), width=8) -> np.ndarray:
    return np.array([[j >= width - n for j in range(width)] for n in lengths])


@SETTINGS
@given(variant=variants, name=hooks, seed=seeds, scale=scales)
def test_add_then_subtract_restores_the_activation(tiny_hooked, variant, name, seed, scale):
    hm = tiny_hooked(*variant)
    v = _vector(hm, name, seed, scale)
    plain = _captured(hm, name)
    back = _captured(hm, name, [(name, T.Add(v)), (name, T.Add(-v))])
    tol = 1e-5 * (np.abs(plain).max() + np.abs(v).max())
    real = _real()
    np.testing.assert_allclose(back[real], plain[real], atol=tol, rtol=0)
    assert np.array_equal(back[~real], plain[~real])  # padding is never touched


@SETTINGS
@given(variant=variants, name=hooks, factor=st.one_of(st.floats(0.05, 20.0), st.floats(-20.0, -0.05)))
def test_scale_then_inverse_scale_restores_the_activation(tiny_hooked, variant, name, factor):
    hm = tiny_hooked(*variant)
    plain = _captured(hm, name)
    back = _captured(hm, name, [(name, T.Scale(factor)), (name, T.Scale(1.0 / factor))])
    np.testing.assert_allclose(back, plain, rtol=1e-6, atol=1e-6 * np.abs(plain).max())


@SETTINGS
@given(variant=variants, name=hooks, seed=seeds, k=st.integers(1, 6))
def test_project_onto_plus_project_out_is_the_activation(tiny_hooked, variant, name, seed, k):
    hm = tiny_hooked(*variant)
    d = hm.hook_shape(name)[-1]
    basis = np.random.default_rng(seed).normal(size=(min(k, d), d))
    plain = _captured(hm, name)
    onto = _captured(hm, name, [(name, T.Project(basis, "onto"))])
    out = _captured(hm, name, [(name, T.Project(basis, "out"))])
    twice = _captured(hm, name, [(name, T.Project(basis, "onto")), (name, T.Project(basis, "onto"))])
    tol, real = 1e-5 * np.abs(plain).max(), _real()
    np.testing.assert_allclose(onto[real] + out[real], plain[real], atol=tol, rtol=0)
    np.testing.assert_allclose(twice, onto, atol=tol, rtol=0)  # a projection is idempotent
    q, _ = np.linalg.qr(basis.T)
    np.testing.assert_allclose(out[real] @ q, 0, atol=tol)  # nothing of the subspace is left
    assert np.array_equal(onto[~real], plain[~real]) and np.array_equal(out[~real], plain[~real])  # padding


def _noop(kind: str, hm, name: str, positions):
    shape = hm.hook_shape(name)
    return {
        "scale1": lambda: T.Scale(1.0, positions=positions),
        "add0": lambda: T.Add(np.zeros(shape, np.float32), scale=3.0, positions=positions),
        "fn": lambda: T.Fn(fn=lambda a, ctx: a, positions=positions),
        "capture": lambda: T.Capture(store=_Sink()),
    }[kind]()


class _Sink:
    def append(self, *args):
        pass


@SETTINGS
@given(variant=variants,
       taps=st.lists(st.tuples(hooks, st.sampled_from(["scale1", "add0", "fn", "capture"]), _positions()),
                     min_size=1, max_size=8))
def test_any_composition_of_noop_taps_is_bit_identical(tiny_hooked, variant, taps):
    hm = tiny_hooked(*variant)
    taps = [(name, kind, pos) for name, kind, pos in taps if _in_range_somewhere(pos)]
    batch = hm.tokens(ROWS)
    plain = hm.forward(batch)
    with hm.hooks([(name, _noop(kind, hm, name, pos)) for name, kind, pos in taps]):
        tapped = hm.forward(batch)
    assert mx.array_equal(tapped, plain)


@SETTINGS
@given(variant=variants, names=st.lists(hooks, min_size=1, max_size=4), positions=_positions())
def test_patching_a_run_with_its_own_activations_is_the_identity(tiny_hooked, variant, names, positions):
    hm = tiny_hooked(*variant)
    assume(_in_range_somewhere(positions))
    plain, cache = hm.run_with_cache(ROWS, names=names)
    own = [(n, T.Replace(cache[n], positions=positions)) for n in dict.fromkeys(hm.point(n).name for n in names)]
    with hm.hooks(own):
        patched = hm.forward(hm.tokens(ROWS))
    assert mx.array_equal(patched, plain)


@SETTINGS
@given(variant=variants, cells=st.lists(st.tuples(hooks, st.integers(-8, 7)), min_size=1, max_size=6))
def test_run_variants_with_own_activations_equals_the_clean_metric(tiny_hooked, variant, cells):
    hm = tiny_hooked(*variant)
    ids = ROWS[0]
    names = [hm.point(n).name for n, _ in cells]
    plain, cache = hm.run_with_cache([ids], names=names)
    variants_ = [[P.Patch(n, p, np.array(cache[n][0, p]))] for n, (_, p) in zip(names, cells)]
    variants_.append([P.Patch(n, p, np.array(cache[n][0, p])) for n, (_, p) in zip(names, cells)])  # all at once
    got = P.run_variants(hm, ids, variants_, lambda logits: logits[:, 5] - logits[:, 7], batch_size=3)
    clean = float(plain[0, -1, 5] - plain[0, -1, 7])
    np.testing.assert_allclose(got, clean, rtol=0, atol=1e-4 * max(1.0, abs(clean)))


@SETTINGS
@given(variant=variants, name=hooks, seed=seeds, positions=_positions())
def test_positions_touch_exactly_the_chosen_cells(tiny_hooked, variant, name, seed, positions):
    hm = tiny_hooked(*variant)
    assume(_in_range_somewhere(positions))
    v = _vector(hm, name, seed, 5.0)
    plain = _captured(hm, name)
    steered = _captured(hm, name, [(name, T.Add(v, positions=positions))])
    chosen = _chosen(positions)
    assert np.array_equal(steered[~chosen], plain[~chosen])  # untouched cells are bit-identical
    np.testing.assert_allclose(steered[chosen] - plain[chosen], np.broadcast_to(v, steered[chosen].shape),
                               atol=1e-5 * (np.abs(plain).max() + 5.0 * np.abs(v).max()))

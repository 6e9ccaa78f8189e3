"""Per-row taps (`rows=`, per-row Add scales and vectors) on every tiny architecture x {float, 4-bit}.

Row i of a batched, left-padded forward or greedy generation with per-row taps
must equal running prompt i alone with its own tap: that is what lets a
steering sweep run as one batch.
"""
from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxinterp.core import taps as T
from mlxinterp.core.errors import TapError

PROMPTS = [[1, 287, 414, 417, 279, 280, 300, 301, 302, 303, 304, 305], [1, 290, 291, 292], [1, 310, 311, 312, 313, 314]]
HOOK = "blocks.1.hook_resid_post"
TOL = 1e-4  # stated tolerance: float32 attention over masked (padded) columns, as in test_hooks


def _vectors(hm) -> list[mx.array]:
    return [mx.random.normal((hm.info.d_model,), key=mx.random.key(k)) * 8 for k in (11, 12)]


def _maxdiff(a, b) -> float:
    return float(mx.abs(a.astype(mx.float32) - b.astype(mx.float32)).max())


def test_per_row_generation_equals_each_prompt_alone(hm):
    v0, v1 = _vectors(hm)
    per_row = {HOOK: [T.Add(v0, 2.0, rows=[0]), T.Add(v1, -1.5, rows=[1])]}  # row 2: no tap
    rows = hm.generate_batch(PROMPTS, max_tokens=6, taps=per_row)
    alone = [hm.generate(PROMPTS[0], max_tokens=6, taps={HOOK: T.Add(v0, 2.0)}),
             hm.generate(PROMPTS[1], max_tokens=6, taps={HOOK: T.Add(v1, -1.5)}),
             hm.generate(PROMPTS[2], max_tokens=6)]
    for got, want in zip(rows, alone):
        assert got.tokens == want.tokens[: len(got.tokens)] and got.tokens
    # the steering acts: the steered rows differ from the unsteered batch somewhere (else the test proves nothing)
    plain = hm.generate_batch(PROMPTS, max_tokens=6)
    assert plain[2].tokens == rows[2].tokens
    assert plain[0].tokens != rows[0].tokens or plain[1].tokens != rows[1].tokens


def test_per_row_logits_equal_each_prompt_alone(hm):
    v0, v1 = _vectors(hm)
    with hm.hooks({HOOK: [T.Add(v0, 2.0, rows=[0]), T.Add(v1, -1.5, rows=[1])]}):
        batch = hm.tokens(PROMPTS)
        logits = hm.forward(batch)
    for b, (v, s) in enumerate([(v0, 2.0), (v1, -1.5), (None, 0.0)]):
        taps = {HOOK: T.Add(v, s)} if v is not None else None
        with hm.hooks(taps):
            single = hm(mx.array([PROMPTS[b]]))
        pad = batch.left_padding[b]
        assert _maxdiff(logits[b, pad:], single[0]) < TOL


def test_per_row_scale_and_vectors_equal_row_selected_taps(hm):
    """One Add with a per-row scale, or with [B, 1, d] vectors, is the same computation as one Add per row."""
    v0, v1 = _vectors(hm)
    ids = mx.array([PROMPTS[0], PROMPTS[0], PROMPTS[0]])
    with hm.hooks({HOOK: [T.Add(v0, 2.0, rows=[0]), T.Add(v0, -1.5, rows=[1])]}):
        by_rows = hm(ids)
    with hm.hooks({HOOK: T.Add(v0, [2.0, -1.5, 0.0])}):
        by_scale = hm(ids)
    with hm.hooks({HOOK: T.Add(mx.stack([v0 * 2.0, v0 * -1.5, mx.zeros_like(v0)])[:, None], 1.0)}):
        by_vector = hm(ids)
    assert _maxdiff(by_scale, by_rows) == 0.0
    assert _maxdiff(by_vector, by_rows) < TOL  # (2 v) * 1 vs 1 * (2 v) + a: one float32 rounding apart at most
    gens = hm.generate_batch([PROMPTS[0], PROMPTS[2]], max_tokens=5, taps={HOOK: T.Add(v1, [3.0, 0.0])})
    assert gens[0].tokens == hm.generate(PROMPTS[0], max_tokens=5, taps={HOOK: T.Add(v1, 3.0)}).tokens[: len(gens[0].tokens)]
    assert gens[1].tokens == hm.generate(PROMPTS[2], max_tokens=5).tokens[: len(gens[1].tokens)]


@pytest.mark.parametrize("hm", [("llama", None)], indirect=True, ids=["llama-float"])
def test_rows_combine_with_positions_and_phase(hm):
    """rows= narrows positions / when rather than replacing them: row 1 steered at its last prompt token only."""
    v0, _ = _vectors(hm)
    with hm.hooks({HOOK: T.Add(v0, 3.0, rows=[1], positions="last")}):
        batched = hm(PROMPTS[:2])
    with hm.hooks({HOOK: T.Add(v0, 3.0, positions="last")}):
        single = hm(mx.array([PROMPTS[1]]))
    plain = hm(mx.array([PROMPTS[0]]))
    pad = len(PROMPTS[0]) - len(PROMPTS[1])
    assert _maxdiff(batched[1, pad:], single[0]) < TOL
    assert _maxdiff(batched[0], plain[0]) < TOL


@pytest.mark.parametrize("hm", [("llama", None)], indirect=True, ids=["llama-float"])
@pytest.mark.parametrize("tap, msg", [
    (lambda v: T.Add(v, 1.0, rows=[3]), "names row 3; this forward has 2 rows"),
    (lambda v: T.Add(v, [1.0, 2.0, 3.0]), "3 per-row scales"),
    (lambda v: T.Add(v, 1.0, rows="0"), "rows='0' is not allowed"),
    (lambda v: T.Add(v, 1.0, rows=[]), "rows=[] is not allowed"),
    (lambda v: T.Scale(2.0, rows=[True]), "is not allowed"),
    (lambda v: T.Add(v, [1.0, float("nan")]), "scale=nan is not allowed"),
    (lambda v: T.Add(v, []), "scale=[] is not allowed"),
    (lambda v: T.Add(mx.stack([v, v, v])[:, None], 1.0), "batch size 3; this forward has 2 rows"),
    (lambda v: T.Capture(store=[], rows=[0]), "rows= is not allowed; it records every row"),
])
def test_bad_rows_and_scales_name_the_value(hm, tap, msg):
    v = mx.ones((hm.info.d_model,))
    with pytest.raises(TapError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        with hm.hooks({HOOK: tap(v)}):
            hm(PROMPTS[:2])
    assert hm._state.n_taps == 0


def test_per_row_scale_describes_itself():
    tap = T.Add(np.ones(3, np.float32), np.array([1.0, 2.5]))
    tap.validate((3,), "blocks.0.hook_resid_post")
    assert tap.scale == (1.0, 2.5) and tap.describe().startswith("Add(scale=[1, 2.5]")


@pytest.mark.parametrize("hm", [("llama", None)], indirect=True, ids=["llama-float"])
def test_generate_batch_runs_no_forward_nobody_reads(hm):
    """The prompt but its last token only fills the cache; no forward after the last token (BUGFIX.md)."""
    calls = []
    store = type("Calls", (), {"append": lambda self, name, a, seq_pos: calls.append(tuple(a.shape[:2]))})()
    with hm.hooks({"hook_embed": T.Capture(store=store)}):
        gens = hm.generate_batch(PROMPTS, max_tokens=5)
    L = max(map(len, PROMPTS))
    assert all(len(g.tokens) == 5 for g in gens)  # no row stopped early, so every step ran
    assert calls == [(3, L - 1), (3, 1)] + [(3, 1)] * 4

"""The cost model (mlxinterp.suite.cost): counts, rates measured on a tiny model, the reference fallback,
and a declared cost checked against what the study really runs."""
from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console

from mlxinterp.core import taps as T
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.suite import cost as C
from mlxinterp.suite.registry import experiment, get, make_config, register_builtin


def test_generation_and_forward_counts():
    g = C.generation(rows=8, prompt_tokens=10, max_tokens=32)
    assert (g.forwards, g.tokens, g.generated, g.unembedded) == (33, 8 * 42, 256, 256)
    f = C.forward(rows=70, tokens_each=20, batch=32, unembed_each=0)
    assert (f.forwards, f.tokens, f.unembedded) == (3, 1400, 0)
    total = (2 * g + f).with_items(4)
    assert total.forwards == 69 and total.per_item()["forwards"] == 17.2
    rates = C.Rates(forward_s=0.5, token_s=0.01, unembed_s=0.1)
    assert total.seconds(rates) == pytest.approx(69 * 0.5 + total.tokens * 0.01 + 512 * 0.1)


def test_a_cost_that_is_not_callable_is_refused():
    with pytest.raises(MlxInterpError, match="cost=3 is not callable"):
        experiment("cost_probe_bad", type("Cfg", (), {"__dataclass_fields__": {}}), cost=3)


def test_rates_on_a_tiny_model_are_positive(tiny_hooked):
    r = C.measure_rates(tiny_hooked("llama", None), tokens=16, rounds=2)
    assert r.forward_s > 0 and r.token_s >= 0 and r.unembed_s > 0 and np.isfinite([r.forward_s, r.token_s, r.unembed_s]).all()


def test_reference_timings_fall_back_scaled_by_n(tmp_path, tiny_hooked):
    hm = tiny_hooked("llama", None)
    register_builtin()
    exp = get("validation")
    cfg = make_config(exp, n=6)
    (tmp_path / hm.info.slug / "validation").mkdir(parents=True)
    (tmp_path / hm.info.slug / "validation" / "result.json").write_text(
        json.dumps({"timings": {"seconds": 30.0}, "config": {"n": 3}}))
    est = C.suite_estimate([exp], {"validation": cfg}, hm, None, tmp_path)
    assert est["experiments"]["validation"] == {"source": "reference timings", "estimated_seconds": 60.0}
    assert est["total_seconds"] == 60.0
    none = C.suite_estimate([exp], {"validation": cfg}, hm, None, tmp_path / "absent")
    assert none["unestimated"] == ["validation"] and none["total_seconds"] == 0
    assert C.summary_line(est).startswith("estimated 1 min for 1 experiment on ")
    assert C.summary_line(none).startswith("no time estimate for validation on ")  # not "estimated 0 s"


class _Counter:
    """A Capture store that counts model calls and token-rows (at the embedding) instead of keeping arrays."""

    def __init__(self):
        self.forwards = self.tokens = 0

    def append(self, name, a, seq_pos):
        self.forwards += 1
        self.tokens += int(a.shape[0] * a.shape[1])


# A small steering sweep (every kind of condition once) keeps the real run short.
SMALL = ("steering_sweep.styles=('terse', 'formal')", "steering_sweep.static_pcts=(8.0,)",
         "steering_sweep.families=('flat', 'svd_k3')", "steering_sweep.kernels=('quadratic',)",
         "steering_sweep.processors=('static+binary_lp',)", "steering_sweep.layer_sweep_n=2",
         "steering_sweep.n_dir=4", "steering_sweep.n_select=2", "steering_sweep.n_bleed=2",
         "steering_sweep.max_tokens=4", "steering_sweep.bleed_tokens=3")


def test_steering_sweep_declared_cost_matches_what_it_runs(tiny_hooked, tmp_path):
    """The declared forwards are exact; token-rows are estimated from each prompt set's longest prompt
    (the continuations scored have their own lengths), so within 1.5x."""
    from mlxinterp.suite import run_all
    from mlxinterp.suite.registry import parse_overrides

    hm = tiny_hooked("gemma3_text", None)
    register_builtin()
    exp = get("steering_sweep")
    config = make_config(exp, n=2, overrides=parse_overrides(SMALL, ["steering_sweep"])["steering_sweep"])
    declared = C.declared(exp, config, hm)
    counter = _Counter()
    with hm.hooks({"hook_embed": T.Capture(store=counter)}):
        run_all(["tiny"], only="steering_sweep", out=tmp_path, n=2, load_fn=lambda spec: hm, sets=SMALL,
                console=Console(file=open("/dev/null", "w")))
    # run_all's own rate measurement (C.measure_rates: a 64-token warm-up, then 3 rounds of 1 and 64 tokens)
    runs, tokens = counter.forwards - 7, counter.tokens - 4 * 64 - 3
    assert runs == declared.forwards, (runs, declared)
    assert 1 / 1.5 < declared.tokens / tokens < 1.5, (tokens, declared)
    timings = json.loads((tmp_path / hm.info.slug / "steering_sweep" / "result.json").read_text())["timings"]
    assert timings["estimate"]["source"] == "declared" and timings["estimate"]["forwards"] == declared.forwards

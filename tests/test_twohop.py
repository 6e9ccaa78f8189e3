"""Two-hop studies: entry layers, fix-rate arithmetic, batched vs loop cross-prompt sweeps, resume."""
from __future__ import annotations

import json
import math

import mlx.core as mx
import numpy as np
import pytest

from mlxinterp.analysis import patching as P
from mlxinterp import suite
from mlxinterp.core import taps as T
from mlxinterp.tasks import twohop as TH
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.analysis.stats import proportion_ci
from mlxinterp.studies import backpatch as BP
from mlxinterp.studies import crossprompt as CP
from mlxinterp.studies import twohop as TW

QUERIES = TH.load_queries()
BY_ID = {q["id"]: q for q in QUERIES}


# ------------------------------------------------------------ entry layers, ranks


def test_first_entry_on_a_hand_made_rank_matrix():
    ranks = np.array([[900, 120, 29, 45, 3, 0],    # enters at 2 (then leaves, still 2)
                      [900, 800, 700, 30, 31, 12],  # 30 is not < 30: enters at 5
                      [5000] * 6])                  # never
    assert [TH.first_entry(r, 30) for r in ranks] == [2, 5, None]
    assert TH.first_entry(ranks[0], 1) == 5 and TH.first_entry(ranks[1], 1000) == 0


def test_ranks_count_strictly_larger_logits_and_take_the_best_alias():
    logits = np.array([[1.0, 5.0, 3.0, 5.0, 3.0]])
    assert TH.ranks(logits, [2])[0] == 2  # ties with token 4 do not count
    assert TH.ranks(logits, [0, 2])[0] == 2 and TH.ranks(logits, [1])[0] == 0 and TH.ranks(logits, [0])[0] == 4


def _rec(i, bridge, answer, hop=True, two=False):
    return {"id": f"q{i}", "hop1": hop, "hop2": hop, "twohop": two, "twohop_full_sequence": two,
            "entry": {"bridge": bridge, "answer": answer}}


def test_analyse_counts_sequential_queries_and_gaps():
    recs = [_rec(0, 3, 7), _rec(1, 5, 5), _rec(2, 9, 4), _rec(3, 2, 10, hop=False), _rec(4, None, 6), _rec(5, None, None)]
    a = TW.analyse(recs, k=30, n_layers=18)
    assert a["categories"] == {"bridge_first": 2, "same_layer": 1, "answer_first": 1, "only_bridge_enters": 0,
                               "only_answer_enters": 1, "neither_enters": 1}
    assert a["sequential_of_both_entered"] == proportion_ci(2, 4) and a["sequential_of_all"] == proportion_ci(2, 6)
    assert a["gap_mean"]["estimate"] == pytest.approx((4 + 0 - 5 + 8) / 4) and a["gap_median"] == 2.0
    assert a["entered_top_k"]["bridge"]["k"] == 4 and a["entered_top_k"]["answer"]["k"] == 5
    assert a["entered_top_k"]["foil_bridge"]["n"] == 0  # no foil ranks: not counted as "never entered"
    both = TW._subset(recs, "both_hops")
    assert [r["id"] for r in both] == ["q0", "q1", "q2", "q4", "q5"]


def test_select_is_all_in_file_order_or_a_seeded_sample():
    items = [{"id": i} for i in range(10)]
    assert TW.select(items, 10, np.random.default_rng(0)) == items
    a, b = (TW.select(items, 4, np.random.default_rng(s)) for s in (1, 1))
    assert a == b and len(a) == 4 and [x["id"] for x in a] == sorted(x["id"] for x in a)
    with pytest.raises(ValueError, match="n=0"):
        TW.select(items, 0, np.random.default_rng(0))


# ------------------------------------------------------------ fix rates and CIs


def _done(qid, own, ctrl, rnd, rank=3, already=False):
    mk = lambda top: {"top1": top, "logprob": [-1.0 + x for x in top], "rank": [0 if x else 5 for x in top]}  # noqa: E731
    return {"id": qid, "family": "f", "both_hops": True, "random_pair": rnd, "already_top1_unbatched": already,
            "baseline": {"logprob": -2.0, "rank": rank}, "own": mk(own), "control": mk(ctrl)}


def test_backpatch_fix_rates_oracle_controls_and_leave_one_out():
    pairs = [(1, 0), (2, 0), (2, 1)]
    done = [_done("a", [0, 1, 0], [0, 0, 0], 0), _done("b", [0, 1, 1], [1, 0, 0], 2),
            _done("c", [0, 0, 0], [0, 0, 0], 1, rank=40), _done("d", [1, 1, 1], [1, 1, 1], 0, already=True)]
    a = BP.analyse(done, pairs)
    assert a["n"] == 3 and a["left_out_already_top1"] == 1
    own, ctl = a["own"], a["control"]
    assert own["oracle_fix_rate"] == proportion_ci(2, 3) and ctl["oracle_fix_rate"] == proportion_ci(1, 3)
    assert own["a_priori_pair_fix_rate"]["k"] == 1 and ctl["a_priori_pair_fix_rate"]["k"] == 0
    assert own["per_pair_fixes"] == [0, 2, 1] and own["pairs_fixing_per_query"] == [1, 2, 0]
    assert own["loo_best_pair_fix_rate"]["k"] == 2  # a and b are each fixed by the pair the others favour
    assert own["best_pair_post_hoc"]["pair"] == [2, 0] and own["best_pair_post_hoc"]["k"] == 2
    assert "low" not in own["best_pair_post_hoc"]  # chosen on these queries: no interval
    split = own["best_pair_split"]  # chosen on a (queries 0, 2), reported on b (query 1)
    assert split["selection_ids"] == ["a", "c"] and split["report_ids"] == ["b"] and split["pair"] == [2, 0]
    assert split["report_fix_rate"] == proportion_ci(1, 1)
    # own minus donor oracle, paired per query: a 1-0, b 1-1, c 0-0
    assert a["oracle_own_minus_control"]["estimate"] == pytest.approx(1 / 3) and a["oracle_own_minus_control"]["n"] == 3
    assert a["oracle_own_vs_control"] == {"both": 1, "own_only": 1, "control_only": 0, "neither": 1, "mcnemar_exact_p": 1.0}
    assert a["oracle_by_baseline_rank"]["rank_2_or_more"]["own"] == proportion_ci(2, 3)
    assert own["delta_logprob_best_pair"]["estimate"] == pytest.approx((2 + 2 + 1) / 3)
    assert a["baseline_rank_median"] == {"fixed": 3.0, "not_fixed": 40.0}
    assert own["fixed_ids"] == ["a", "b"]
    assert own["share_of_pairs_fixing"]["estimate"] == pytest.approx(1 / 3) and own["mean_pair_fix_rate"] == pytest.approx(1 / 3)
    # Wilson interval for 2/3 by hand
    z, p, n = 1.959963984540054, 2 / 3, 3
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert own["oracle_fix_rate"]["low"] == pytest.approx(centre - half) and own["oracle_fix_rate"]["high"] == pytest.approx(centre + half)
    grid = BP.pair_grid(own["per_pair_fixes"], 3, pairs, 3)
    assert grid[2, 0] == pytest.approx(2 / 3) and np.isnan(grid[0, 2]) and np.isnan(grid[1, 1])


def test_leave_one_out_never_uses_the_query_itself():
    fixed = np.array([[1, 0], [0, 1], [0, 1], [0, 1]], bool)  # pair 1 wins on the others for query 0: not fixed
    assert BP.loo_best_pair(fixed).tolist() == [False, True, True, True]
    assert BP.loo_best_pair(np.array([[1, 0], [0, 1], [0, 1]], bool)).tolist() == [False, False, False]  # ties: lowest pair
    assert BP.loo_best_pair(fixed[:1]).tolist() == [False]


def test_choose_puts_wrong_queries_answering_both_hops_first():
    recs = [{"id": str(i), "twohop": i % 3 == 0, "hop1": i < 6, "hop2": True} for i in range(12)]
    got = TH.choose_backpatch_queries(recs, 20, np.random.default_rng(0))
    assert all(not r["twohop"] for r in got) and len(got) == 8
    assert {r["id"] for r in got[:4]} == {"1", "2", "4", "5"}


# ------------------------------------------------------------ tiny models


def test_targets_strip_articles_and_keep_full_sequences(tiny_hooked):
    hm = tiny_hooked("llama", None)
    t = TH.target(hm, ["the Netherlands", "Holland"])
    enc = lambda s: hm.tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    assert t.first == tuple(dict.fromkeys([enc(" Netherlands")[0], enc(" Holland")[0]]))
    assert t.seqs == (tuple(enc(" the Netherlands")), tuple(enc(" Holland")))
    assert t.article_seqs == (tuple(enc(" the Netherlands")),)


def test_last_states_match_single_prompt_runs_and_lens_ranks_match_logits(tiny_hooked):
    hm = tiny_hooked("gemma3_text", None)
    prompts = [q["prompt"] for q in QUERIES[:3]]
    logits, resid = TH.last_states(hm, prompts, batch_size=3)
    for i, p in enumerate(prompts):
        full = np.array(hm(p)[0, -1].astype(mx.float32))
        assert np.allclose(logits[i], full, atol=1e-4)
    r = TH.lens_ranks(hm, resid, [[[5], [7, 9]]] * 3)
    assert r.shape == (3, 2, hm.info.n_layers)
    assert r[0, 0, -1] == TH.ranks(logits[0], [5]) and r[2, 1, -1] == TH.ranks(logits[2], [7, 9])


def test_answers_fully_is_the_greedy_continuation(tiny_hooked):
    hm = tiny_hooked("qwen3", None)
    prompt = QUERIES[0]["prompt"]
    greedy = hm.generate(prompt, max_tokens=3).tokens
    other = [(greedy[0] + 1) % 512, greedy[1]]
    assert TH.answers_fully(hm, [prompt, prompt], [[tuple(greedy[:3])], [tuple(other)]]) == [True, False]


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_crossprompt_batched_sweep_equals_one_forward_per_patch(tiny_hooked, arch):
    hm = tiny_hooked(arch, None)
    q = BY_ID["landmark_capital_001"]
    foil = BY_ID["landmark_capital_002"]
    metric = CP.metric_for(hm, q, foil)
    ids = hm.tokens(q["prompt"]).ids[0].tolist()
    src = CP.source_vectors(hm, q, "bridge_token")
    grid = CP.cells(hm.info.n_layers, len(ids))
    batched = P.run_variants(hm, ids, CP.sweep_variants(src, grid), metric, batch_size=7)
    reused = P.run_variants(hm, ids, CP.sweep_variants(src, grid), metric, batch_size=7, reuse_prefix=True)
    loop = CP.loop_sweep(hm, ids, src, grid, metric)
    assert np.allclose(batched, loop, atol=1e-3) and np.allclose(reused, loop, atol=1e-3)
    clean, corrupt = CP.clean_corrupt(hm, q, metric)
    assert corrupt == pytest.approx(float(metric(hm(q["prompt"])[:, -1].astype(mx.float32))[0]), abs=1e-3)
    # layer 0 at the entity's last token with the bridge vector: a real change somewhere in the sweep
    assert np.abs(batched - corrupt).max() > 1e-4
    timing = CP.time_loop(hm, {"query": q, "foil": foil}, CP.CrosspromptConfig(loop_cells=20, batch_size=8))
    assert timing["cells"] == 20 and timing["loop_patches_per_second"] > 0
    for m in ("batched", "batched_reuse_prefix"):
        assert timing[m]["max_abs_difference"] < 1e-3 and timing[m]["speedup_vs_loop"] > 0


def test_roles_and_spans_on_every_query(tiny_hooked):
    hm = tiny_hooked("llama", None)
    for q in QUERIES:
        rl = CP.roles(hm, q)
        assert rl[0] == "bos" and rl[-1] == "last" and rl.count("entity_last") == 1, q["id"]
        first, last = TH.e1_span(hm, q)
        assert rl[first:last + 1] == ["entity"] * (last - first) + ["entity_last"], q["id"]
        b = TH.bridge_position(hm, q)
        ids = hm.tokens(q["hop2_prompt"]).ids[0].tolist()
        assert hm.tokenizer.decode(ids[1:b + 1]).endswith(q["bridge"]), q["id"]


def test_backpatch_analysis_of_an_empty_subset_is_empty_not_a_crash():
    """A model that answers no query's two single hops leaves the "both_hops" subset empty (BUGFIX.md)."""
    an = BP.analyse([], [(1, 0), (2, 0), (2, 1)])
    assert an == {"n": 0, "left_out_already_top1": 0, "own": None, "control": None}


def test_backpatch_paired_counts_skip_a_query_without_a_donor():
    """A query with no same-family donor has no control arm: own-vs-control counts use the paired queries only."""
    pairs = [(1, 0), (2, 0), (2, 1)]
    lone = {**_done("c", [0, 1, 0], [0, 0, 0], 0), "control": None}
    a = BP.analyse([_done("a", [0, 1, 0], [0, 0, 0], 0), _done("b", [0, 0, 0], [1, 0, 0], 2, rank=1), lone], pairs)
    assert a["own"]["oracle_fix_rate"] == proportion_ci(2, 3) and a["control"]["oracle_fix_rate"] == proportion_ci(1, 2)
    assert a["oracle_own_vs_control"] == {"both": 0, "own_only": 1, "control_only": 1, "neither": 0, "mcnemar_exact_p": 1.0}
    assert a["oracle_by_baseline_rank"]["rank_1"]["control"] == proportion_ci(1, 1)
    assert a["oracle_by_baseline_rank"]["rank_2_or_more"]["own"] == proportion_ci(1, 1)


def test_backpatch_variants_write_the_source_layer_into_the_target(tiny_hooked):
    hm = tiny_hooked("qwen2", None)
    q = QUERIES[5]
    _, resid = TH.last_states(hm, [q["prompt"]])
    pairs, variants = TH.backpatch_variants(resid[:, 0])
    L = hm.info.n_layers
    assert len(pairs) == L * (L - 1) // 2 and all(t < s for s, t in pairs)
    tgt = TH.target(hm, q["answer_aliases"])
    ids = hm.tokens(q["prompt"]).ids[0].tolist()
    got = P.run_variants(hm, ids, variants, TH.target_metric(tgt), batch_size=4, reuse_prefix=True)
    full = P.run_variants(hm, ids, variants, TH.target_metric(tgt), batch_size=4)
    assert got.shape == (len(pairs), 3) and np.allclose(got[:, 0], full[:, 0], atol=1e-4)
    s, t = pairs[-1]
    with hm.hooks({f"blocks.{t}.hook_resid_post": T.Replace(mx.array(resid[s, 0]), positions=-1)}):
        logits = hm(q["prompt"])[:, -1].astype(mx.float32)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    best = max(float(logp[0, i]) for i in tgt.first)
    assert got[-1, 0] == pytest.approx(best, abs=1e-4)
    assert got[-1, 1] == float(TH.ranks(np.array(logits), tgt.first)[0]) and got[-1, 2] == float(got[-1, 1] == 0)


def test_unknown_family_and_source_are_clear_errors(tiny_hooked):
    with pytest.raises(MlxInterpError, match=r"(?s)unknown two-hop families.*allowed: landmark_capital"):
        TH.load_queries(["landmarks"])
    with pytest.raises(MlxInterpError, match="no entity pattern"):
        TH.e1_span(tiny_hooked("llama", None), {**QUERIES[0], "family": "new_family"})


# ------------------------------------------------------------ resume


def _run(tmp_path, model, monkeypatch=None, fail_at=None):
    calls = []
    real = TH.status_chunk

    def counting(hm, pairs, top_k):
        calls.append(len(calls))
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt
        return real(hm, pairs, top_k)

    if monkeypatch is not None:
        monkeypatch.setattr(TH, "status_chunk", counting)
    suite.run_all([model], only="twohop", out=tmp_path, n=12, seed=1)
    return calls


def test_twohop_resumes_after_an_interruption_without_redoing_chunks(tiny_dirs, tmp_path, monkeypatch):
    model = str(tiny_dirs[("gemma3_text", None)])
    ref, out = tmp_path / "ref", tmp_path / "out"
    _run(ref, model)
    slug = next(p.name for p in ref.iterdir() if p.is_dir())
    expected = json.loads((ref / slug / "twohop" / "result.json").read_text())
    with pytest.raises(KeyboardInterrupt):
        _run(out, model, monkeypatch, fail_at=2)  # chunk 1 finished, chunk 2 interrupted
    calls = _run(out, model, monkeypatch)
    assert len(calls) == 1  # 12 queries / chunk 8 = 2 chunks; only the unfinished one ran again
    got = json.loads((out / slug / "twohop" / "result.json").read_text())
    assert got["timings"]["maps"]["queries"]["reloaded"] == 1
    got.pop("timings"), expected.pop("timings")
    assert got == expected
    _check_twohop_numbers(got["result"])
    assert (out / slug / "twohop" / "twohop_ranks.png").read_bytes() == (ref / slug / "twohop" / "twohop_ranks.png").read_bytes()


def _check_twohop_numbers(r: dict) -> None:
    """Rates, the paired bridge-vs-foil difference and the gap recomputed by hand from the per-query records."""
    recs = r["queries"]
    a = r["analysis"]["all"]
    assert a["accuracy"]["twohop"]["k"] == sum(q["twohop"] for q in recs) and a["accuracy"]["twohop"]["n"] == len(recs)
    paired = [q for q in recs if "foil_bridge" in q["entry"]]
    d = [float(q["entry"]["bridge"] is not None) - float(q["entry"]["foil_bridge"] is not None) for q in paired]
    got = a["entered_minus_foil"]["bridge"]
    assert got["n"] == len(d) and got["estimate"] == pytest.approx(np.mean(d) if d else 0.0)
    gaps = [q["entry"]["answer"] - q["entry"]["bridge"] for q in recs
            if q["entry"]["answer"] is not None and q["entry"]["bridge"] is not None]
    if gaps:
        assert a["gap_mean"]["estimate"] == pytest.approx(np.mean(gaps)) and a["gap_mean"]["n"] == len(gaps)
    assert a["sequential_of_both_entered"]["k"] == sum(g > 0 for g in gaps)
    assert set(r["prereg"]["checks"]) == {"bridge_above_foil", "sequential_majority"}


def test_statuses_reuse_a_full_twohop_result_and_equal_a_fresh_computation(tiny_dirs, tmp_path):
    from rich.progress import Progress

    model = str(tiny_dirs[("llama", None)])
    suite.run_all([model], only="twohop", out=tmp_path, n=len(QUERIES), seed=0)
    slug = next(p.name for p in tmp_path.iterdir() if p.is_dir())
    from mlxinterp.core.hooks import load

    hm = load(model, dtype="native")
    with Progress() as progress:
        reused, how = TH.statuses(hm, suite.Context("backpatch", tmp_path / slug / "backpatch", 0, progress))
        fresh, how2 = TH.statuses(hm, suite.Context("backpatch", tmp_path / "other" / "backpatch", 0, progress))
    assert how.startswith("reused") and how2.startswith("computed") and len(reused) == len(QUERIES)
    keys = ("id", "twohop", "hop1", "hop2", "twohop_full_sequence", "top1", "final_rank")
    assert [{k: r[k] for k in keys} for r in reused] == [{k: r[k] for k in keys} for r in fresh]


def test_cross_model_figure_appears_with_a_second_model(tiny_dirs, tmp_path):
    for arch in ("llama", "gemma3_text"):
        suite.run_all([str(tiny_dirs[(arch, None)])], only="twohop", out=tmp_path, n=8, seed=0)
    made = sorted(p.parent.name for p in tmp_path.glob("*/twohop/twohop_models.png"))
    assert len(made) == 1  # only the run that found another model's result draws the comparison
    rec = json.loads(next(tmp_path.glob("*/twohop/twohop_models.png")).with_name("result.json").read_text())
    assert "twohop_models.png" in rec["figures"]


def test_backpatch_and_crossprompt_end_to_end_on_a_tiny_model(tiny_hooked, tmp_path, monkeypatch):
    from rich.progress import Progress

    hm = tiny_hooked("gemma3_text", None)
    recs = [{"id": q["id"], "twohop": False, "hop1": True, "hop2": True} for q in QUERIES[:40]]
    monkeypatch.setattr(BP, "statuses", lambda hm, ctx, chunk: (recs, "test"))
    monkeypatch.setattr(CP, "statuses", lambda hm, ctx, chunk: (recs, "test"))
    with Progress() as progress:
        ctx = suite.Context("backpatch", tmp_path / "m" / "backpatch", 0, progress)
        bp = BP.backpatch(hm, BP.BackpatchConfig(n=3), ctx)
        ctx2 = suite.Context("crossprompt", tmp_path / "m" / "crossprompt", 0, progress)
        cp = CP.crossprompt(hm, CP.CrosspromptConfig(n=3, n_select=2, min_gap=-1e9, loop_cells=8, batch_size=8), ctx2)
    L = hm.info.n_layers
    assert len(bp["queries"]) == 3 and len(bp["pairs"]) == L * (L - 1) // 2
    assert all(len(q["own"]["top1"]) == len(bp["pairs"]) == len(q["control"]["top1"]) for q in bp["queries"])
    assert sorted(ctx.figures) == ["backpatch_pairs.png", "backpatch_rates.png"]
    # independent recomputation from the per-query records: oracle fix rates and their paired difference
    kept = [q for q in bp["queries"] if not q["already_top1_unbatched"]]
    own = np.array([any(q["own"]["top1"]) for q in kept], float)
    ctl = np.array([any(q["control"]["top1"]) for q in kept], float)
    an = bp["analysis"]["all_wrong"]
    assert an["own"]["oracle_fix_rate"]["k"] == own.sum() and an["control"]["oracle_fix_rate"]["k"] == ctl.sum()
    if kept:
        assert an["oracle_own_minus_control"]["estimate"] == pytest.approx(float((own - ctl).mean()))
    assert bp["prereg"]["checks"]["own_beats_donor"]["verdict"] in ("PASS", "FAIL")
    sel, rep = cp["queries"]["selection"], cp["queries"]["report"]
    assert cp["selection"]["n"] == 2 and cp["report"]["n"] == 3 and cp["timing"]["cells"] == 8
    assert ctx2.figures == ["crossprompt_sweep.png"]
    assert not {d["id"] for d in sel} & {d["id"] for d in rep}  # chosen on one split, reported on the other
    assert np.array(sel[0]["normalised"]).shape == (L, len(sel[0]["roles"]))
    # each role's layer is the argmax of the selection queries' mean role map; its report value recomputed by hand
    for role, layer in cp["chosen_layers"].items():
        j = CP.ROLES.index(role)
        sel_mean = np.nanmean([CP.role_means(d["normalised"], d["roles"])[:, j] for d in sel], axis=0)
        assert layer == int(np.nanargmax(sel_mean))
        vals = [CP.role_means(d["normalised"], d["roles"])[d["layers"].index(layer), j] for d in rep]
        vals = [v for v in vals if np.isfinite(v)]
        assert cp["report"]["own"][role]["estimate"] == pytest.approx(np.mean(vals), abs=1e-9)
        assert cp["report"]["own"][role]["n"] == len(vals) and "Bonferroni" in cp["report"]["own"][role]["method"]
    with pytest.raises(MlxInterpError, match="source='nowhere'"):
        CP.crossprompt(hm, CP.CrosspromptConfig(source="nowhere"), ctx2)


def test_registration_order_runs_twohop_before_the_studies_that_reuse_it():
    suite.register_builtin()
    names = [e.name for e in suite.select(["crossprompt", "backpatch", "twohop"])]
    assert names == ["twohop", "backpatch", "crossprompt"]


# ------------------------------------------------------------ the real model


@pytest.mark.real
def test_real_statuses_lens_and_spans(real_hm):
    hm = real_hm
    qs = [BY_ID["landmark_language_001"], BY_ID["capital_continent_001"]]
    pairs = [[q, TH.pick_foil(hm, q, QUERIES, TH.foil_rng(0, q["id"]))] for q in qs]
    recs = TH.status_chunk(hm, pairs, top_k=30)
    eiffel = recs[0]
    assert eiffel["hop1"] and eiffel["top1"]["hop1"] == " France"  # "The Eiffel Tower is located in the country of"
    for r in recs:
        # the lens at the last layer is the model's own output
        assert r["ranks"]["answer"][-1] == r["final_rank"]["answer"]
        assert r["ranks"]["bridge"][-1] == r["final_rank"]["bridge"]
        assert (r["final_rank"]["answer"] == 0) == r["twohop"]  # no article aliases in these two families
        if r["twohop"]:
            assert r["entry"]["answer"] is not None and r["entry"]["answer"] <= hm.info.n_layers - 1
    for q in QUERIES:  # the entity and bridge positions exist for every query on the real tokenizer
        TH.e1_span(hm, q), TH.bridge_position(hm, q)

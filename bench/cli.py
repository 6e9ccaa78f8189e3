"""`python -m bench ...`: the benchmarks, run from a checkout (they are not part of the installed package).

Ratios measured in one run, conditions interleaved round by round; torch / nnsight /
TransformerLens rows need the optional extra (pip install -e '.[bench]').
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mlxinterp.cli.common import DTYPE_OPT, MODEL_OPT, console, load_model, out, print_json
from mlxinterp.core import names as H
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.core.io import read_json, write_json
from mlxinterp.core.hooks import check_generation
from mlxinterp.core.validate import whole

bench_app = typer.Typer(help="Benchmarks: ratios measured in one run, conditions interleaved round by round "
                             "(torch / nnsight / TransformerLens rows need the optional extra: pip install -e '.[bench]').",
                        no_args_is_help=True)
SAVE_OPT = typer.Option(None, "--save", help="directory to write <benchmark>.json into (e.g. bench/results)")


def _bench_done(name: str, res: dict, as_json: bool, save: Optional[Path], load_before, line: str) -> None:
    from bench.harness import save_result

    if save is not None:
        path = save_result(name, res, save, load_before)
        console.print(f"wrote {path}", highlight=False)
    if as_json:
        print_json(res)
    else:
        out.print(line, highlight=False, markup=False)


def _status_progress(status):
    return lambda msg: status.update(f"benchmarking: {msg}")


@bench_app.command("taps")
def bench_taps_cmd(model: str = MODEL_OPT, dtype: Optional[str] = DTYPE_OPT, rounds: int = typer.Option(7, "--rounds"),
                   as_json: bool = typer.Option(False, "--json"), save: Optional[Path] = SAVE_OPT) -> None:
    """Tap overhead: bare mlx-lm forward vs no-op taps and capture on every hook point.

    Example: [bold]python -m bench taps --model default --json[/bold]
    """
    import os

    from bench.harness import bench_taps

    load = os.getloadavg()
    hm = load_model(model, dtype)
    with console.status("benchmarking ..."):
        res = bench_taps(hm, rounds=rounds)
    res["model"] = hm.info.to_dict()
    _bench_done("taps", res, as_json, save, load,
                f"noop_overhead {res['noop_overhead']:+.3%}  capture_all_overhead {res['capture_all_overhead']:+.3%}  "
                f"(bare {res['median_seconds']['bare']:.3f} s, {res['prompt_tokens']} tokens, median of {rounds})")


@bench_app.command("generate")
def bench_generate_cmd(model: str = MODEL_OPT, dtype: Optional[str] = DTYPE_OPT, rounds: int = typer.Option(5, "--rounds"),
                       max_tokens: int = typer.Option(64, "--max-tokens"),
                       layer: Optional[int] = typer.Option(None, "--layer", help="layer of the Add tap (default: middle)"),
                       as_json: bool = typer.Option(False, "--json"), save: Optional[Path] = SAVE_OPT) -> None:
    """Steered generation tokens/s: mlx-lm's stream_generate vs hm.generate with an Add tap on one layer.

    Example: [bold]python -m bench generate --rounds 5 --json[/bold]
    """
    import os

    from bench.harness import bench_generate

    load = os.getloadavg()
    hm, layer = _steering_setup(model, dtype, max_tokens, layer)
    with console.status("benchmarking ..."):
        res = bench_generate(hm, rounds=rounds, max_tokens=max_tokens, layer=layer)
    res["model"] = hm.info.to_dict()
    r = res["steered_vs_mlx_lm"]
    _bench_done("generate", res, as_json, save, load,
                f"steered / mlx-lm tokens/s {r['median']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] "
                f"(mlx-lm {res['median_tokens_per_second']['mlx_lm']:.1f} tok/s, median of {rounds})")


def _steering_setup(model: str, dtype: Optional[str], max_tokens: int, layer: Optional[int]):
    """The model and the steered layer (checked: a layer out of range is a clear error, before any timing)."""
    check_generation(max_tokens)
    hm = load_model(model, dtype)
    if layer is not None:
        hm.point(H.resid_post(layer))
        layer %= hm.info.n_layers
    return hm, layer


@bench_app.command("batchgen")
def bench_batchgen_cmd(model: str = MODEL_OPT, dtype: Optional[str] = DTYPE_OPT, rounds: int = typer.Option(5, "--rounds"),
                       max_tokens: int = typer.Option(32, "--max-tokens"),
                       layer: Optional[int] = typer.Option(None, "--layer", help="layer of the Add tap (default: middle)"),
                       as_json: bool = typer.Option(False, "--json"), save: Optional[Path] = SAVE_OPT) -> None:
    """Steering sweep of 8 prompts (one strength each): one generate_batch with a per-row Add scale vs 8
    sequential hm.generate calls, tokens/s (target >= 4x).

    Example: [bold]python -m bench batchgen --rounds 5 --json[/bold]
    """
    import os

    from bench.harness import bench_batchgen

    load = os.getloadavg()
    hm, layer = _steering_setup(model, dtype, max_tokens, layer)
    with console.status("benchmarking ...") as st:
        res = bench_batchgen(hm, rounds=rounds, max_tokens=max_tokens, layer=layer, progress=_status_progress(st))
    res["model"] = hm.info.to_dict()
    r = res["batched_vs_sequential"]
    _bench_done("batchgen", res, as_json, save, load,
                f"batched / sequential tokens/s {r['median']:.2f}x [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] "
                f"({res['prompts']} prompts x {max_tokens} tokens, {res['rows_token_identical']}/{res['prompts']} rows "
                f"token-identical, sequential {res['median_tokens_per_second']['sequential']:.1f} tok/s, "
                f"median of {rounds})")


@bench_app.command("precision")
def bench_precision_cmd(model: str = MODEL_OPT, rounds: int = typer.Option(3, "--rounds"),
                        full_map: bool = typer.Option(True, "--map/--no-map", help="also time one full 18 x 2 map "
                                                      "of the lens finding, with and without the shared prefix"),
                        n: int = typer.Option(12, "--n", help="prompts of the timed map (1-100)"),
                        map_rounds: int = typer.Option(1, "--map-rounds", help="timed maps per condition (1-5)"),
                        as_json: bool = typer.Option(False, "--json"), save: Optional[Path] = SAVE_OPT) -> None:
    """Precision patching: swapping one module's weights in place vs reloading at a mixed precision, and the
    wall time of one full per-layer, per-sublayer map (target <= 5 min on the default model).

    Example: [bold]python -m bench precision --save bench/results[/bold]
    """
    import os

    from bench.precision import bench_map, bench_precision

    if not 1 <= n <= 100 or not 1 <= map_rounds <= 5:
        raise MlxInterpError(f"--n {n} / --map-rounds {map_rounds} not allowed; use 1-100 and 1-5")
    load = os.getloadavg()
    with console.status("benchmarking ...") as st:
        res = bench_precision(model, rounds=rounds)
        if full_map:
            res["map"] = bench_map(model, n, map_rounds, progress=_status_progress(st))
    m = res["median_seconds"]
    line = (f"reload / swap {res['reload_over_swap']['median']:.0f}x  (reload {m['reload']:.2f} s, swap "
            f"{m['swap'] * 1e3:.2f} ms, forward {m['forward']:.3f} s, median of {rounds})")
    if full_map:
        mp = res["map"]
        line += (f"\nfull map ({mp['modules']} modules + float + quantized, {n} prompts): shared prefix "
                 f"{mp['median']['shared']['wall_seconds']:.0f} s wall ({mp['median']['shared']['cpu_seconds']:.0f} s CPU), "
                 f"without {mp['median']['unshared']['wall_seconds']:.0f} s ({mp['median']['unshared']['cpu_seconds']:.0f} s CPU)"
                 f" = {mp['unshared_over_shared_wall']:.2f}x; identical values: {mp['identical_values']}; target <= 300 s: "
                 f"{'met' if mp['median']['shared']['wall_seconds'] <= 300 else 'missed'} (load average "
                 f"{mp['load_average'][0][0]:.1f} -> {mp['load_average'][-1][0]:.1f})")
    _bench_done("precision", res, as_json, save, load, line)


def _int_list(text: str, what: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        vals = []
    if not vals or any(v < 1 for v in vals):
        raise MlxInterpError(f"{what} {text!r} is not allowed; use whole numbers >= 1 separated by commas, e.g. 32,64")
    return vals


@bench_app.command("scoring")
def bench_scoring_cmd(model: str = MODEL_OPT, n: int = typer.Option(16, "--n", help="prompts scored (1-112)"),
                      rounds: int = typer.Option(3, "--rounds"), as_json: bool = typer.Option(False, "--json"),
                      save: Optional[Path] = SAVE_OPT) -> None:
    """Refusal score (two teacher-forced phrases per prompt, steered): the prompt's forward shared by both
    phrases through a KV cache vs one whole forward per phrase.

    Example: [bold]python -m bench scoring --save bench/results[/bold]
    """
    import os

    from bench.scoring import bench_scoring

    if not 1 <= n <= 112 or not 1 <= rounds <= 20:
        raise MlxInterpError(f"--n {n} / --rounds {rounds} not allowed; use 1-112 and 1-20")
    load = os.getloadavg()
    hm = load_model(model, None)
    with console.status("benchmarking ..."):
        res = bench_scoring(hm, n, rounds)
    r = res["whole_over_shared"]
    _bench_done("scoring", res, as_json, save, load,
                f"whole forward per phrase / shared prompt: {r['median']:.2f}x [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] "
                f"({n} prompts, median of {rounds}; max |difference| {res['max_abs_difference']:.2g})")


@bench_app.command("sae-step")
def bench_sae_step_cmd(rounds: int = typer.Option(5, "--rounds"), as_json: bool = typer.Option(False, "--json"),
                       save: Optional[Path] = SAVE_OPT) -> None:
    """One TopK SAE training step at the 1M-token recipe's shapes (d 640, width 4096, k 32, batch 1024):
    dense decoding of the k chosen activations vs gathering the k decoder rows per position.

    Example: [bold]python -m bench sae-step --save bench/results[/bold]
    """
    import os

    from bench.sae_step import bench_sae_step

    if not 1 <= rounds <= 20:
        raise MlxInterpError(f"--rounds {rounds} not allowed; use 1-20")
    load = os.getloadavg()
    with console.status("benchmarking ..."):
        res = bench_sae_step(rounds=rounds)
    r, t = res["gather_over_dense"], res["seconds_per_step"]
    _bench_done("sae_step", res, as_json, save, load,
                f"gather / dense decoder step: {r['median']:.2f}x [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] "
                f"(dense {min(t['dense']):.3f} s, gather {min(t['gather']):.3f} s per step; "
                f"max gradient difference {res['max_gradient_difference']:.2g})")


@bench_app.command("patching")
def bench_patching_cmd(rounds: int = typer.Option(3, "--rounds"),
                       batch_sizes: str = typer.Option("32,64", "--batch-sizes", help="patch_sweep batch sizes; "
                                                       "the first is the reference the ratios are taken to"),
                       loops: bool = typer.Option(True, "--loops/--no-loops", help="include the one-forward-per-patch "
                                                  "loops (~40 s each per round)"),
                       torch_side: bool = typer.Option(True, "--torch/--no-torch", help="include nnsight, "
                                                       "TransformerLens and torch hooks (needs the bench extra)"),
                       as_json: bool = typer.Option(False, "--json"), save: Optional[Path] = SAVE_OPT) -> None:
    """Activation-patching sweep (default model, every layer x position, Eiffel Tower -> Colosseum,
    logit(Paris) - logit(Rome)): mlxinterp's patch_sweep vs loops, nnsight and TransformerLens, same weights.

    Example: [bold]python -m bench patching --rounds 3 --save bench/results[/bold]
    """
    import os

    from bench.harness import bench_patching

    sizes = _int_list(batch_sizes, "--batch-sizes")
    load = os.getloadavg()
    with console.status("benchmarking ...") as st:
        res = bench_patching(rounds=rounds, batch_sizes=sizes, loops=loops, torch_side=torch_side, out=save,
                             progress=_status_progress(st))
    best = res["reference"]
    lines = [f"{best}: {res['median_seconds'][best]:.2f} s ({res['n_patches']} patches)"]
    lines += [f"{k}: {res['median_seconds'][k]:.2f} s = {r['median']:.2f} x" for k, r in res["ratios_vs_reference"].items()]
    _bench_done("patching", res, as_json, save, load, "\n".join(lines))


@bench_app.command("forward")
def bench_forward_cmd(rounds: int = typer.Option(5, "--rounds"),
                      blas: Optional[str] = typer.Option(None, "--blas", help="comma-separated BLAS variants "
                                                         "(default: every one installed here)"),
                      torch_side: bool = typer.Option(True, "--torch/--no-torch"),
                      as_json: bool = typer.Option(False, "--json"), save: Optional[Path] = SAVE_OPT) -> None:
    """Forward time on 41 tokens (default model): MLX under each interposable BLAS and mx.compile vs torch CPU;
    run_with_cache on every hook point vs TransformerLens's run_with_cache.

    Example: [bold]python -m bench forward --blas openblas-pthread,openblas-pthread-avx512[/bold]
    """
    import os

    from bench.harness import bench_forward

    names = [b.strip() for b in blas.split(",") if b.strip()] if blas else None
    load = os.getloadavg()
    with console.status("benchmarking ...") as st:
        res = bench_forward(rounds=rounds, blas=names, torch_side=torch_side, out=save, progress=_status_progress(st))
    lines = [f"{k}: {v:.3f} s" for k, v in res["median_seconds"].items()]
    _bench_done("forward", res, as_json, save, load, "\n".join(lines))


@bench_app.command("agreement")
def bench_agreement_cmd(as_json: bool = typer.Option(False, "--json"), save: Optional[Path] = SAVE_OPT) -> None:
    """Numerical agreement with transformers on the same weights: per-layer hidden states and logits.

    Example: [bold]python -m bench agreement --json[/bold]
    """
    import os

    from bench.harness import bench_agreement

    load = os.getloadavg()
    hm = load_model("default", None)
    with console.status("comparing with transformers ..."):
        res = bench_agreement(hm)
    a = res["mlx_embed_scale"]
    _bench_done("agreement", res, as_json, save, load,
                f"logits max abs diff {a['logits_max_abs_diff']:.2e}, top-1 agreement {a['top1_agreement']:.3f} "
                f"over {a['positions']} positions (transformers' own embedding scale: "
                f"{res['hf_embed_scale']['logits_max_abs_diff']:.2e})")


@bench_app.command("memory")
def bench_memory_cmd(as_json: bool = typer.Option(False, "--json"), save: Optional[Path] = SAVE_OPT) -> None:
    """Peak RSS of a fresh process (default model): loaded, after a forward, after capture on every hook point.

    Example: [bold]python -m bench memory --json[/bold]
    """
    import os

    from bench.harness import bench_memory

    load = os.getloadavg()
    with console.status("measuring ..."):
        res = bench_memory(out=save)
    c, f = res["capture_all"], res["forward"]
    gb = lambda b: f"{b / 1e9:.2f} GB" if b is not None else "n/a"  # noqa: E731
    _bench_done("memory", res, as_json, save, load,
                f"after loading: RSS {gb(res['after_load']['rss_bytes'])} (peak {gb(res['after_load']['peak_rss_bytes'])}); "
                f"MLX peak during a forward {gb(f['mlx_peak_bytes'])}, during capture-all {gb(c['mlx_peak_bytes'])} "
                f"({c['captured_bytes'] / 1e6:.1f} MB captured, RSS {gb(c['rss_bytes'])})")


@bench_app.command("attribution")
def bench_attribution_cmd(model: str = MODEL_OPT, dtype: Optional[str] = DTYPE_OPT, rounds: int = typer.Option(5, "--rounds"),
                          as_json: bool = typer.Option(False, "--json"), save: Optional[Path] = SAVE_OPT) -> None:
    """Attribution patching over every hook x position for one prompt pair vs one forward (target <= 4x).

    Example: [bold]python -m bench attribution --rounds 5 --json[/bold]
    """
    import os

    from bench.harness import bench_attribution

    load = os.getloadavg()
    hm = load_model(model, dtype)
    with console.status("benchmarking ..."):
        res = bench_attribution(hm, rounds=rounds)
    res["model"] = hm.info.to_dict()
    r = res["atp_all_over_forward"]
    _bench_done("attribution", res, as_json, save, load,
                f"AtP (every hook x position, {res['n_cells']['atp_all']} cells) / one forward: {r['median']:.2f}x "
                f"(95% CI {r['ci95'][0]:.2f}-{r['ci95'][1]:.2f}); standard hooks "
                f"{res['atp_standard_over_forward']['median']:.2f}x; median of {rounds} rounds")


@bench_app.command("atp_nnsight")
def bench_atp_nnsight_cmd(rounds: int = typer.Option(5, "--rounds"),
                          torch_threads: int = typer.Option(1, "--torch-threads", help="torch's thread count (1: "
                                                            "fastest on 2 shared cores)"),
                          as_json: bool = typer.Option(False, "--json"), save: Optional[Path] = SAVE_OPT) -> None:
    """AtP for resid_post at every layer x position (default model): mlxinterp vs nnsight's gradient idiom
    and plain torch hooks, same weights (target: >= 2x faster than nnsight).

    Example: [bold]python -m bench atp_nnsight --rounds 5 --json[/bold]
    """
    import os

    from bench.atp import bench_atp_nnsight

    whole(torch_threads, "--torch-threads", 1, 256)
    load = os.getloadavg()
    with console.status("benchmarking ...") as st:
        res = bench_atp_nnsight(rounds=rounds, torch_threads=torch_threads, out=save, progress=_status_progress(st))
    res["load_average_before"] = list(load)
    res["load_average_after"] = list(os.getloadavg())
    lines = [f"mlxinterp attribute: {res['median_seconds']['mlx/atp_resid_post']:.2f} s (grid {res['grid_shape']})"]
    lines += [f"{k}: {res['median_seconds'][k]:.2f} s = {r['median']:.2f}x slower (95% CI {r['ci95'][0]:.2f}-"
              f"{r['ci95'][1]:.2f}); max |diff| {res['max_abs_diff_vs_mlx'][k]:.2g}"
              for k, r in res["speedup_vs_mlx"].items()]
    _bench_done("atp_nnsight", res, as_json, save, load, "\n".join(lines))


@bench_app.command("replicas")
def bench_replicas_cmd(like: Optional[list[str]] = typer.Option(None, "--like", help="catalogue shapes (default: "
                                                                 "Gemma-2-2B, Llama-3.2-3B, Qwen2.5-7B, Gemma-2-9B, 4-bit)"),
                       save: Optional[Path] = SAVE_OPT,
                       readme: Optional[Path] = typer.Option(None, "--readme", help="put the table into this README"),
                       merge: bool = typer.Option(False, "--merge", help="keep the other shapes' rows of the "
                                                  "replicas.json under --save; replace only the shapes measured now"),
                       as_json: bool = typer.Option(False, "--json")) -> None:
    """Real-size random-weight replicas, one at a time: load time, peak memory (forward, capture-all, patch
    sweep) and tokens/s next to the planner's prediction. Needs several GB free; not for CI.

    Example: [bold]python -m bench replicas --save bench/results --readme bench/README.md[/bold]
    """
    from bench import replicas
    from mlxinterp.suite import catalogue

    if merge and save is None:
        raise MlxInterpError("--merge needs --save DIR (the replicas.json whose other rows are kept)")
    shapes = [catalogue.get(s).repo.split("/", 1)[1] for s in like] if like else list(replicas.SHAPES)
    old = read_json(Path(save) / "replicas.json") if merge and (Path(save) / "replicas.json").exists() else None
    res = replicas.run(shapes, log=lambda line: console.print(line, highlight=False), save=None if old else save)
    if old is not None:
        from datetime import datetime, timezone

        res = replicas.merge(old, res, datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
        write_json(Path(save) / "replicas.json", res)
    if save is not None:
        console.print(f"wrote {Path(save) / 'replicas.json'}", highlight=False)
    if readme is not None:
        replicas.update_readme(readme, replicas.markdown(res))
    if as_json:
        print_json(res)
    else:
        out.print(replicas.markdown(res), highlight=False, markup=False)


@bench_app.command("serve")
def bench_serve_cmd(model: str = MODEL_OPT, dtype: Optional[str] = DTYPE_OPT,
                    rounds: int = typer.Option(3, "--rounds", help="lens views after the first one"),
                    moves: int = typer.Option(5, "--moves", help="steering slider moves after the first request"),
                    vector: Optional[Path] = typer.Option(None, "--vector", help="a steering vector file (default: "
                                                          "a direction from two small prompt sets)"),
                    as_json: bool = typer.Option(False, "--json"), save: Optional[Path] = SAVE_OPT) -> None:
    """`mlxinterp serve` latencies on a live server: first full-vocabulary lens view of a 20-token prompt (beside
    the unembedding alone and the machine's matmul rate) and the steering playground's first token.

    Example: [bold]python -m bench serve --save bench/results[/bold]
    """
    import os

    from bench.serve import bench_serve
    from mlxinterp.core.io import write_json

    if not 1 <= rounds <= 3 or not 1 <= moves <= 50:
        raise MlxInterpError(f"--rounds {rounds} / --moves {moves} not allowed; use 1-3 and 1-50")
    load = os.getloadavg()
    hm = load_model(model, dtype)
    with console.status("benchmarking ...") as st:
        res = bench_serve(hm, rounds, moves, vector, progress=_status_progress(st))
    res["load_average_before"] = list(load)
    if save is not None:
        from bench.harness import machine

        console.print(f"wrote {write_json(Path(save) / 'serve.json', {**res, 'machine': machine()})}", highlight=False)
    if as_json:
        print_json(res)
        return
    lens, st = res["lens"], res["steering"]
    out.print(f"lens, first view: {lens['first_view']['wall_seconds']:.2f} s ({lens['first_view']['tokens']} tokens, "
              f"{lens['unembed_gflop']:.0f} GFLOP unembedding: {lens['unembed_seconds']:.2f} s alone = "
              f"{lens['unembed_gflops']:.0f} GFLOP/s; machine matmul {lens['machine_matmul_gflops_512']:.0f} GFLOP/s at 512, "
              f"{lens['machine_matmul_gflops_2048']:.0f} at 2048; the whole first view = "
              f"{lens['first_view_gflops']:.0f} GFLOP/s = {lens['first_view_share_of_matmul_rate']:.0%} of the 2048 rate); "
              f"later views median "
              f"{lens['later_median_wall_seconds']:.2f} s\n"
              f"steering first token: first request {st['first_request']['first_token_seconds']:.3f} s, slider moves "
              f"median {st['slider_median_first_token_seconds']:.3f} s = "
              f"{st['slider_median_first_token_over_mlx_lm']:.2f} x mlx-lm's own first token (no taps, no server) "
              f"(load average {res['load_average_start'][0]:.1f} at the start, {res['load_average_end'][0]:.1f} at the end)\n"
              + "; ".join(f"{k} {t['value']:.3f} s (target <= {t['target']:g} s: {'met' if t['met'] else 'missed'})"
                          for k, t in res["targets"].items()),
              highlight=False, markup=False)


@bench_app.command("all")
def bench_all_cmd(out_dir: Path = typer.Option(Path("bench/results"), "--out"),
                  readme: Path = typer.Option(Path("bench/README.md"), "--readme"),
                  quick: bool = typer.Option(False, "--quick", help="1 round each and no loops: a smoke run, "
                                             "not for the table")) -> None:
    """Every benchmark in one run (default model), each written to OUT/<name>.json, then the README table.

    Example: [bold]python -m bench all[/bold]
    """
    from bench.harness import run_all

    with console.status("benchmarking ...") as st:
        results = run_all(out_dir, readme if not quick else None, quick=quick, progress=_status_progress(st))
    console.print(f"wrote {', '.join(sorted(results))} into {out_dir}" + ("" if quick else f"; table in {readme}"),
                  highlight=False)


@bench_app.command("table")
def bench_table_cmd(out_dir: Path = typer.Option(Path("bench/results"), "--out"),
                    readme: Optional[Path] = typer.Option(None, "--readme", help="also put the table into this README")) -> None:
    """Render the table from OUT/*.json (and update the README between its markers).

    Example: [bold]python -m bench table --readme bench/README.md[/bold]
    """
    from bench.harness import load_results, render_table, update_readme

    results = load_results(out_dir)
    if not results:
        raise MlxInterpError(f"no benchmark results in {out_dir}", hint="run `python -m bench all` first")
    if readme:
        update_readme(readme, results)
    out.print(render_table(results), highlight=False)



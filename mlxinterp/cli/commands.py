"""`mlxinterp` command line. Every expected failure is one clear line and exit code 2 (cli.common.run).

Commands import their analyses inside the command function, on purpose: `mlxinterp --help` must not load
MLX, mlx-lm or matplotlib (tests/test_layers.py checks that importing the CLI leaves them unloaded).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from mlxinterp.cli.common import DTYPE_OPT, MODEL_OPT, console, load_model, out, print_json, run, shown_text
from mlxinterp.cli import attribute as attribute_cli
from mlxinterp.cli import compare as compare_cli
from mlxinterp.cli import cost as cost_cli
from mlxinterp.cli import plan as plan_cli
from mlxinterp.cli import replica as replica_cli
from mlxinterp.cli import sae as sae_cli
from mlxinterp.cli import readouts as readouts_cli
from mlxinterp.cli import serve as serve_cli
from mlxinterp.core.errors import MlxInterpError
from mlxinterp.core.platform import SUITE_OUT, USER_OUT

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Look inside mlx-lm models: hooks, taps, logit lens, steering, patching, experiment suite.")


@app.command()
def models(catalogue: bool = typer.Option(False, "--catalogue", help="also list known mlx-community checkpoints"),
           memory: Optional[str] = typer.Option(None, "--memory", help="machine memory to check against, e.g. 64GB (default: this machine's)"),
           context: int = typer.Option(1024, "--context", help="tokens of KV cache to budget for"),
           prompts: int = typer.Option(256, "--prompts", help="captured prompts in the activation estimate"),
           positions: int = typer.Option(64, "--positions", help="captured positions per prompt in the activation estimate"),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """List models available locally, with size on disk and memory needed; --catalogue adds the known
    Gemma / Llama / Qwen mlx-community checkpoints with their shapes and estimated memory.

    Examples:
      [bold]mlxinterp models[/bold]
      [bold]mlxinterp models --catalogue --memory 64GB[/bold]
    """
    from mlxinterp.core.loading import list_local_models

    rows = list_local_models()
    cat = _catalogue(memory, context, prompts, positions) if catalogue else None
    if as_json:
        print_json({"local": rows, **({"catalogue": cat} if cat else {})})
        return
    table = Table("spec", "present", "size on disk", "memory needed", "path")
    for r in rows:
        table.add_row(str(r.get("spec")), "yes" if r.get("present") else "no (imported on first use)",
                      _gb(r.get("size_bytes")), _gb(r.get("memory_bytes")), str(r.get("path") or ""))
    out.print(table)
    if cat:
        _print_catalogue(cat)


def _catalogue(memory: str | None, context: int, prompts: int, positions: int) -> dict:
    from mlxinterp.suite import catalogue
    from mlxinterp.core import memory as mem
    from mlxinterp.core.platform import parse_bytes, total_memory_bytes

    try:
        limit = parse_bytes(memory) if memory else total_memory_bytes()
    except ValueError:
        raise MlxInterpError(f"--memory {memory!r} is not a size; use e.g. 64GB, 512MB or a number of bytes") from None
    if limit <= 0 or context < 0:
        raise MlxInterpError(f"--memory must be > 0 and --context >= 0 (got {memory!r}, {context})")
    acts = mem.ActivationPlan(prompts=prompts, positions=positions)
    return {"memory_limit": limit, "memory_label": memory or mem.gb(limit), "context": context,
            "batch": mem.SUITE_BATCH, "activations": acts.describe(),
            "formula": "see mlxinterp/memory.py", "rows": catalogue.rows(limit, context, mem.SUITE_BATCH, acts)}


def _print_catalogue(cat: dict) -> None:
    fits = lambda ok, ram: ("yes" if ram else "yes*") if ok else "[red]no[/red]"  # noqa: E731
    table = Table("checkpoint", "seed\n004", "params", "layers", "d_model", "heads\nq/kv", "head\ndim", "vocab",
                  "weights", f"KV cache\n{cat['batch']}x{cat['context']} tok", "model\n+margin", "captures",
                  f"fits in\n{cat['memory_label']}", "model as\nfloat32", "runs here as\n(dtype=None)",
                  title="Known mlx-community checkpoints: estimated memory as stored"
                  + (" (as Metal runs them)" if sys.platform == "darwin" else " (as a Mac with Metal runs them)")
                  + "; 'fits' is for how this machine runs them ('runs here as')")
    table.columns[0].no_wrap = True
    for r in cat["rows"]:
        m, f = r["memory_as_stored"], r["memory_float32"]
        table.add_row(r["repo"].split("/", 1)[1], "yes" if r["in_seed_004"] else "", f"{r['n_params'] / 1e9:.2f}B",
                      str(r["n_layers"]), str(r["d_model"]), f"{r['n_heads']}/{r['n_kv_heads']}", str(r["head_dim"]),
                      str(r["vocab_size"]), _gb(m["weights"]), _gb(m["kv_cache"]), _gb(m["model"]),
                      _gb(m["activations"]), fits(r["fits_here"], r["captures_in_ram_here"]),
                      _gb(f["model"]) + ("" if r["fits_float32"] else " [red](no)[/red]"),
                      r["runs_here_as"] + ("" if r["fits_here"] else " [red](no)[/red]"))
    # complete rows (greppable) rather than names folded to an 80-column terminal
    Console(file=out.file, width=max(out.width, 170)).print(table)
    console.print(
        f"captures: {cat['activations']}. model = weights + margin (10 % + 256 MB) + KV cache: what must fit "
        "(run-suite refuses a model that does not); captures that do not fit beside it stream to disk (yes*). "
        "'as float32' is how a CPU (Linux) runs them (dequantized at load) when that fits; otherwise they run "
        "as stored with MLX's native quantized kernels ('runs here as'; --dtype overrides).\n"
        "Sources: layers/d_model/heads/head_dim/vocab from each upstream config.json as published (recorded "
        "offline; Gemma 3 270M read from this machine's GGUF); params computed from them (published counts in "
        "--json); memory computed (formula: mlxinterp/memory.py). Gemma 3 4B+ counts the text decoder only.",
        highlight=False)


def _gb(n) -> str:
    return f"{n / 1e9:.2f} GB" if n else "-"


@app.command()
def info(model: str = MODEL_OPT, dtype: Optional[str] = DTYPE_OPT,
         as_json: bool = typer.Option(False, "--json", help="print JSON (arch, n_layers, d_model, n_heads, vocab_size, hook_points, ...)"),
         load: bool = typer.Option(False, "--load", help="load the weights and tokenizer for every field (slower); "
                                   "by default read from config.json and the weight files' headers")) -> None:
    """Model metadata and its hook points (read without loading the weights).

    Examples:
      [bold]mlxinterp info --model default --json[/bold]
      [bold]mlxinterp info --model default --load[/bold]
    """
    data, shapes = _metadata(model, dtype, load)
    if as_json:
        print_json({**data, "hook_points": list(shapes)})
        return
    table = Table("field", "value")
    for k, v in data.items():
        table.add_row(k, str(v))
    table.add_row("hook points", f"{len(shapes)} (see `mlxinterp hooks --model {model}`)")
    out.print(table)


@app.command()
def hooks(model: str = MODEL_OPT, dtype: Optional[str] = DTYPE_OPT,
          filter: Optional[str] = typer.Option(None, "--filter", help="substring, e.g. resid_post or blocks.3."),
          as_json: bool = typer.Option(False, "--json")) -> None:
    """List hook points with their per-position shapes (read without loading the weights).

    Example: [bold]mlxinterp hooks --model default --filter resid[/bold]
    """
    from mlxinterp.core.errors import HookNameError

    _, shapes = _metadata(model, dtype, False)
    names = [n for n in shapes if filter in n] if filter else list(shapes)
    if not names:
        raise HookNameError(f"no hook point matches {filter!r}", hint="try 'resid_post', 'attn.hook_z' or 'blocks.3.'")
    if as_json:
        print_json({n: list(shapes[n]) for n in names})
        return
    table = Table("hook point", "shape per position")
    for n in names:  # attention scores / patterns: heads x keys, the key count growing with the sequence
        table.add_row(n, f"({shapes[n][0]}, n_keys)" if n.endswith(("attn.hook_pattern", "attn.hook_attn_scores"))
                      else str(tuple(shapes[n])))
    out.print(table)


def _metadata(model: str, dtype: str | None, load: bool) -> tuple[dict, dict]:
    """(info fields, {hook point: shape}) from the files (core/metadata.py), or from the loaded model when
    asked or when the hook points depend on the modules (mixture of experts)."""
    from mlxinterp.core import metadata

    if not load:
        try:
            data = metadata.describe(model, dtype)
            return {k: v for k, v in data.items() if k != "hook_shapes"}, data["hook_shapes"]
        except metadata.NotStatic:
            pass
    hm = load_model(model, dtype)
    return hm.info.to_dict(), {n: hm.hook_shape(n) for n in hm.hook_names}


@app.command()
def generate(prompt: str = typer.Argument(..., help="the prompt"), model: str = MODEL_OPT, dtype: Optional[str] = DTYPE_OPT,
             max_tokens: int = typer.Option(32, "--max-tokens"), chat: bool = typer.Option(False, "--chat", help="apply the chat template"),
             temperature: float = typer.Option(0.0, "--temperature"),
             as_json: bool = typer.Option(False, "--json", help="prompt, text (special tokens kept) and token ids")) -> None:
    """Generate text (greedy by default) with mlx-lm's generate. Special tokens are hidden from the text
    shown (kept with --json).

    Examples:
      [bold]mlxinterp generate "The Eiffel Tower is located in" --max-tokens 8[/bold]
      [bold]mlxinterp generate "The Eiffel Tower is located in" --max-tokens 8 --json[/bold]
    """
    from mlxinterp.core.hooks import check_generation  # here, not at the top: `--help` stays fast
    from mlxinterp.core.tokenization import check_prompt

    check_prompt(prompt)  # argument checks before the model loads
    check_generation(max_tokens, temperature)
    hm = load_model(model, dtype)
    g = hm.generate(prompt, max_tokens=max_tokens, chat=chat, temperature=temperature)
    if as_json:
        print_json({"prompt": prompt, "text": g.text, "shown": shown_text(hm, g), "tokens": g.tokens})
        return
    out.print(prompt + shown_text(hm, g), highlight=False, markup=False)


@app.command()
def lens(prompt: str = typer.Argument(..., help="the prompt"), model: str = MODEL_OPT, dtype: Optional[str] = DTYPE_OPT,
         target: Optional[List[str]] = typer.Option(None, "--target", help='token to track, e.g. " Paris" (repeatable)'),
         top_k: int = typer.Option(5, "--top-k"), mode: str = typer.Option("normed", "--mode", help="normed (final norm first) | raw"),
         as_json: bool = typer.Option(False, "--json"), out_dir: Path = typer.Option(USER_OUT / "lens", "--out", help="where the heatmap PNG goes"),
         chat: bool = typer.Option(False, "--chat"),
         position: int = typer.Option(-1, "--position", help="token position to read (negative from the end)"),
         tuned: Optional[Path] = typer.Option(None, "--tuned", help="a tuned lens (.safetensors from `mlxinterp tuned-lens`)")) -> None:
    """Logit lens: per layer, top tokens, entropy, and the rank of --target tokens; writes a heatmap PNG.

    Example: [bold]mlxinterp lens --model default "The Eiffel Tower is located in the city of" --target " Paris"[/bold]
    """
    from mlxinterp.analysis import tuned_lens
    from mlxinterp.analysis.lens import check_lens_args, logit_lens, plot_lens
    from mlxinterp.core.tokenization import check_prompt

    check_prompt(prompt)  # argument checks before the model loads
    check_lens_args(target, top_k, mode, position)
    lens_file = tuned_lens.TunedLens.load(tuned) if tuned else None
    hm = load_model(model, dtype)
    if lens_file is not None:
        lens_file.check_model(hm)
    res = logit_lens(hm, prompt, targets=target, top_k=top_k, mode=mode, chat=chat, grid=True, position=position,
                     tuned=lens_file)
    png = plot_lens(res, Path(out_dir) / f"lens-{hm.info.slug}.png")
    if as_json:
        d = res.to_dict()
        for layer in d["layers"]:
            if layer["target_rank"] is None:
                layer.pop("target_rank")
        d["figure"] = str(png)
        print_json(d)
        return
    table = Table("layer", "top tokens (prob)", "entropy", *(f"rank {t!r}" for t in target or []))
    for L in res.layers:
        tops = ", ".join(f"{t['token']!r} {t['prob']:.2f}" for t in L.top_tokens)
        table.add_row(str(L.layer), tops, f"{L.entropy:.2f}", *(str(L.targets[t]["rank"]) for t in target or []))
    out.print(table)
    console.print(f"heatmap: {png}")


@app.command("run-suite")
def run_suite(model: Optional[List[str]] = typer.Option(None, "--model", "-m", help="model spec (repeatable); default: default"),
              only: Optional[str] = typer.Option(None, "--only", help="comma-separated experiments to run"),
              skip: Optional[str] = typer.Option(None, "--skip", help="comma-separated experiments to skip"),
              out_dir: Path = typer.Option(SUITE_OUT, "--out", help="results directory"),
              reference: Optional[Path] = typer.Option(None, "--reference", help="a finished run to compare with "
                                                       "at the end (e.g. results, the committed reference)"),
              n: Optional[int] = typer.Option(None, "--n", help="items per experiment (smaller = faster)"),
              seed: int = typer.Option(0, "--seed"),
              resume: bool = typer.Option(True, "--resume/--no-resume", help="skip finished experiments and items"),
              sets: Optional[List[str]] = typer.Option(None, "--set", help="config override exp.field=value or "
                                                       "field=value (repeatable; see --list --fields)"),
              quant_check: Optional[str] = typer.Option(None, "--quant-check", help="also run each model at this "
                                                        "MLX quantization (4, 8, 4bit-g32, ...) and give a verdict per "
                                                        "primary metric (docs/precision.md)"),
              list_only: bool = typer.Option(False, "--list", help="list the experiments and exit"),
              fields: bool = typer.Option(False, "--fields", help="with --list: each experiment's config fields "
                                          "and defaults"),
              cost: bool = typer.Option(False, "--cost", help="with --list: each experiment's forwards, tokens and "
                                        "estimated time on this machine (loads each --model)"),
              quick: bool = typer.Option(False, "--quick", help="each experiment's quick profile (small sizes, "
                                         "a smoke test); defaults are the full-size runs"),
              shard: str = typer.Option("items", "--shard", help="under mlx.launch: items (each rank runs its share "
                                        "of the items) or layers (the model's layers split across the ranks, "
                                        "for a model bigger than one machine; `mlxinterp plan`)"),
              as_json: bool = typer.Option(False, "--json", help="print the run's summary as JSON on stdout "
                                           "(runs, statuses, report paths, comparison); with --list --cost: "
                                           "the estimates")) -> None:
    """Run the experiment suite; JSON, figures and report.md/report.html under --out.

    Examples:
      [bold]mlxinterp run-suite --model default[/bold]  (into ./mlxinterp-out/suite)
      [bold]mlxinterp run-suite --model default --only validation --reference results[/bold]
      [bold]mlxinterp run-suite --model default --quick --out mlxinterp-out/quick[/bold]  (small sizes: a smoke test)
      [bold]mlxinterp run-suite --model default --only ard_mmd --set ard_mmd.steps=1000 --out mlxinterp-out/ard-full[/bold]
      [bold]mlxinterp run-suite --model default --only twohop --quant-check 4[/bold]  (does it survive 4-bit?)
      [bold]mlxinterp run-suite --list --fields[/bold]
      [bold]mlxinterp run-suite --list --cost --model default --json[/bold]  (estimated seconds per experiment)
      [bold]mlxinterp run-suite --model default --only validation --json[/bold]  (summary as JSON on stdout)
    A run with --set has its own config, so give it its own --out (or --no-resume).
    Interrupted? Run the same command again: finished work is reused (--resume is the default).
    """
    from mlxinterp.suite.distributed import world

    world()  # under mlx.launch, meet the other ranks before the slow imports (the ring waits ~30 s)
    from mlxinterp.suite import config_fields, list_experiments, run_all

    if list_only and cost:
        cost_cli.print_cost(model or ["default"], only, skip, n, seed, sets or (), reference, as_json, quick)
        return
    if list_only:
        table = Table("experiment", "config fields (defaults)" if fields else "what it does")
        for name, doc in list_experiments():
            table.add_row(name, config_fields(name) if fields else doc)
        out.print(table)
        return
    summary = run_all(model or ["default"], only=only, skip=skip, out=out_dir, n=n, seed=seed, resume=resume,
                      console=console, sets=sets or (), quant_check=quant_check, quick=quick, shard=shard)
    if as_json:  # rank 0 has the report; the others print their share of the runs
        print_json({**summary, "comparison": compare_cli.comparison_dict(out_dir, reference)
                    if summary["report"] else None})
        return
    if summary["report"]:  # rank 0 (or the only process) writes the report
        compare_cli.print_comparison(out_dir, reference, console)
        console.print(f"report: {summary['report']['md']} and {summary['report']['html']}", highlight=False,
                      soft_wrap=True)


@app.command()
def steer(prompt: str = typer.Argument(..., help="the prompt"), model: str = MODEL_OPT, dtype: Optional[str] = DTYPE_OPT,
          vector: Path = typer.Option(..., "--vector", help="direction saved by Direction.save (.safetensors + .json), "
                                      "or per-layer vectors written by `mlxinterp import-vector`"),
          alpha: float = typer.Option(..., "--alpha", help="scale, in units of the vector as saved"),
          layers: Optional[str] = typer.Option(None, "--layers", help="e.g. 6 | 4,5,6 | 3-9 (needed for a single "
                                               "direction; a per-layer file defaults to all its layers)"),
          profile: str = typer.Option("flat", "--profile", help="flat | gaussian | bell | donut (weights over --layers)"),
          max_tokens: int = typer.Option(32, "--max-tokens"), chat: bool = typer.Option(False, "--chat"),
          as_json: bool = typer.Option(False, "--json")) -> None:
    """Generate steered and baseline text side by side.

    Examples:
      [bold]mlxinterp steer "I think that" --vector tutorial/happy_L10 --alpha 4 --layers 8-11[/bold]  (docs/tutorial.md step 3 saves it)
      [bold]mlxinterp steer "I think that" --vector tutorial/happy-layers.safetensors --alpha 1[/bold]  (from import-vector)
    """
    from mlxinterp.analysis.controlvec import is_layer_vectors, load_vectors
    from mlxinterp.analysis.directions import Direction, layer_profile, perturbation_pct, steering_taps
    from mlxinterp.core.hooks import check_generation
    from mlxinterp.core.tokenization import check_prompt

    check_prompt(prompt)  # argument and file checks before the model loads
    check_generation(max_tokens)
    direction = None
    if not is_layer_vectors(vector):
        if layers is None:
            raise MlxInterpError("--layers is needed with a single direction", hint="e.g. --layers 8-11")
        direction = Direction.load(vector)
    hm = load_model(model, dtype)
    n = hm.info.n_layers
    if is_layer_vectors(vector):  # per-layer vectors (import-vector): each at its own blocks.N.hook_resid_post
        lv = load_vectors(vector, _parse_layers(layers, n) if layers else None)
        ls, vectors, hook, d = _parse_layers(",".join(map(str, lv.layers)), n), lv.vectors, "hook_resid_post", None
    elif layers is None:
        raise MlxInterpError("--layers is needed with a single direction", hint="e.g. --layers 8-11")
    else:
        d = direction
        ls, vectors = _parse_layers(layers, n), d.vector
        hook = d.hook.split(".", 2)[-1] if d.hook.startswith("blocks.") else "hook_resid_post"
    full = layer_profile(profile, n, center=float(np.mean(ls)), lo=min(ls), hi=max(ls))
    weights = [float(full[l]) for l in ls]
    taps = steering_taps(vectors, alpha, ls, weights, hook=hook)
    base = hm.generate(prompt, max_tokens=max_tokens, chat=chat)
    steered = hm.generate(prompt, max_tokens=max_tokens, chat=chat, taps=taps)
    pct = perturbation_pct(d.norm, alpha * max(weights), d.resid_norm) if d else None
    if as_json:
        print_json({"prompt": prompt, "baseline": base.text, "steered": steered.text, "alpha": alpha, "layers": ls,
                     "weights": weights, "perturbation_pct_of_resid": pct})
        return
    size = f"; ~{pct:.1f}% of residual norm" if pct is not None else ""
    table = Table("baseline", f"steered (alpha {alpha}, layers {layers or ls}, {profile}{size})")
    table.add_row(prompt + shown_text(hm, base), prompt + shown_text(hm, steered))
    out.print(table)


def _parse_layers(text: str, n_layers: int) -> list[int]:
    from mlxinterp.core.errors import HookNameError

    layers: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                a, b = part.rsplit("-", 1)
                layers += list(range(int(a), int(b) + 1))
            else:
                layers.append(int(part))
    except ValueError:
        raise HookNameError(f"--layers {text!r} is not a layer list; use e.g. 6, 4,5,6 or 3-9") from None
    bad = [l for l in layers if not -n_layers <= l < n_layers]
    if bad:
        raise HookNameError(f"layers {bad} out of range; this model has layers 0..{n_layers - 1}")
    return [l % n_layers for l in layers]


@app.command("export-vector")
def export_vector(file: Path = typer.Argument(..., help="a Direction (NAME.safetensors + NAME.json) or a per-layer file"),
                  fmt: str = typer.Option("llama-cpp", "--format", help="llama-cpp (the only format so far)"),
                  out_file: Path = typer.Option(..., "--out", help="the .gguf to write"),
                  layers: Optional[str] = typer.Option(None, "--layers", help="e.g. 6 | 4,5,6 | 3-9: a single direction is "
                                                       "copied to each; a per-layer file keeps only these"),
                  scale: float = typer.Option(1.0, "--scale", help="multiply the vectors before writing"),
                  model_hint: Optional[str] = typer.Option(None, "--model-hint", help="controlvector.model_hint "
                                                           "(default: the model the vector came from)"),
                  as_json: bool = typer.Option(False, "--json")) -> None:
    """Write a direction as a llama.cpp control vector (GGUF: direction.N added to block N's output).

    Examples:
      [bold]mlxinterp export-vector tutorial/happy_L10 --format llama-cpp --out mlxinterp-out/happy.gguf[/bold]
      [bold]mlxinterp export-vector tutorial/happy_L10 --layers 8-11 --scale 4 --out mlxinterp-out/happy.gguf[/bold]
    (tutorial/happy_L10 is the direction docs/tutorial.md step 3 saves.)
    Then: [bold]llama-cli -m MODEL.gguf --control-vector-scaled mlxinterp-out/happy.gguf 1.0[/bold]
    """
    from mlxinterp.analysis.controlvec import export_llama_cpp, load_vectors

    if fmt != "llama-cpp":
        raise MlxInterpError(f"--format {fmt!r} is not supported; allowed: llama-cpp")
    if layers and any(part.strip().startswith("-") for part in layers.split(",")):
        raise MlxInterpError(f"--layers {layers!r}: without a model, layers count from 0 (no negative layers)")
    wanted = _parse_layers(layers, 1 << 30) if layers else None
    lv = load_vectors(file, wanted)
    path = export_llama_cpp(lv, out_file, scale=scale, model_hint=model_hint)
    info = {"out": str(path), "layers": lv.layers, "d_model": lv.d_model, "scale": scale,
            "norms": {l: n * abs(scale) for l, n in lv.norms().items()},
            "model_hint": lv.model_hint if model_hint is None else model_hint}
    if as_json:
        print_json(info)
        return
    console.print(f"wrote {path}: direction.N for layers {lv.layers} (d_model {lv.d_model}), added by llama.cpp to "
                  f"the output of block N.\n  llama-cli -m MODEL.gguf --control-vector-scaled {path} 1.0", highlight=False)


@app.command("import-vector")
def import_vector(file: Path = typer.Argument(..., help="a llama.cpp control-vector .gguf (ours, cvector-generator, repeng)"),
                  out_file: Path = typer.Option(..., "--out", help="per-layer vectors to write (.safetensors)"),
                  as_json: bool = typer.Option(False, "--json")) -> None:
    """Read a llama.cpp control vector into per-layer vectors (layer.N at blocks.N.hook_resid_post).

    Examples:
      [bold]mlxinterp import-vector tutorial/happy.gguf --out tutorial/happy-layers.safetensors[/bold]
      [bold]mlxinterp steer "I feel" --vector tutorial/happy-layers.safetensors --alpha 1[/bold]  (as llama.cpp at strength 1)
    """
    from mlxinterp.analysis.controlvec import import_llama_cpp

    lv = import_llama_cpp(file)
    path = lv.save(out_file)
    info = {"out": str(path), "layers": lv.layers, "d_model": lv.d_model, "model_hint": lv.model_hint,
            "norms": lv.norms(), **lv.meta}
    if as_json:
        print_json(info)
        return
    console.print(f"wrote {path}: layers {lv.layers}, d_model {lv.d_model}, model hint {lv.model_hint!r}"
                  + (f" ({lv.meta['note']})" if "note" in lv.meta else "")
                  + f"\n  mlxinterp steer \"PROMPT\" --vector {path} --alpha 1", highlight=False)


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json")) -> None:
    """Report the platform (MLX device, BLAS in use and measured matmul speed, memory, cache, models)
    and what to fix.

    Examples:
      [bold]mlxinterp doctor[/bold]
      [bold]mlxinterp doctor --json[/bold]
    """
    import os

    from mlxinterp.core.loading import list_local_models
    from mlxinterp.core.platform import describe, matmul_gflops

    d = describe()
    d["matmul_gflops_512"] = round(matmul_gflops(), 1)
    cache = Path(d["cache_dir"])
    existing = next((p for p in (cache, *cache.parents) if p.exists()), cache)
    d["cache_writable"] = os.access(existing, os.W_OK)
    d["models"] = [r["spec"] for r in list_local_models(estimate=False) if r.get("present")]
    advice = []
    if d["device"] == "cpu" and sys.platform == "linux" and not d["openblas_interposed"]:
        if d["openblas_available"]:
            advice.append(f"OpenBLAS is installed but not preloaded in this process: float32 matmuls are ~15x slower. "
                          f"The `mlxinterp` command preloads it; for your own scripts run "
                          f"`export LD_PRELOAD={d['openblas_available']}` first.")
        else:
            advice.append("OpenBLAS is not installed: float32 matmuls are ~15x slower. "
                          "Run `apt-get install libopenblas0-pthread` (or `bash scripts/run.sh`, which does).")
    if d["device"] == "cpu":
        advice.append("No Metal GPU: models run in float32 on the CPU (4-bit checkpoints are dequantized at load).")
    if not d["cache_writable"]:
        advice.append(f"The cache directory {cache} is not writable: set MLXINTERP_CACHE to a writable directory.")
    if d["memory_available_bytes"] is not None and d["memory_available_bytes"] < 2 * 1024**3:
        advice.append(f"Only {_gb(d['memory_available_bytes'])} of memory is free: close other programs; "
                      "`mlxinterp models` shows what each model needs.")
    if not d["models"]:
        advice.append("No model imported yet: `mlxinterp info --model default` imports Gemma 3 270M (~30 s).")
    d["advice"] = advice
    if as_json:
        print_json(d)
        return
    table = Table("check", "value")
    for k, v in d.items():
        if k != "advice":
            table.add_row(k, _gb(v) if k.startswith("memory") else str(v))
    out.print(table)
    for a in advice:
        console.print(f"[yellow]- {a}[/yellow]")


app.command()(compare_cli.compare)
app.add_typer(sae_cli.app, name="sae")
app.command("tuned-lens")(readouts_cli.tuned_lens)
app.command("probe")(readouts_cli.probe)
app.command()(attribute_cli.attribute)
app.command()(attribute_cli.circuit)
app.command()(replica_cli.replica)
app.command()(plan_cli.plan)
app.command()(serve_cli.serve)


def main(argv: list[str] | None = None) -> None:
    """The `mlxinterp` entry point."""
    run(app, argv)


if __name__ == "__main__":
    main()

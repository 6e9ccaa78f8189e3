"""`mlxinterp sae train|inspect|metrics`: sparse autoencoders on a model's activations."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Optional

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mlxinterp.cli.common import DTYPE_OPT, MODEL_OPT, console, load_model, print_json
from mlxinterp.core.errors import MlxInterpError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Sparse autoencoders: train (TopK or JumpReLU, in MLX), inspect features, measure splice quality.")

# Batches collected at once on separate streams: MLX's CPU back end runs one stream's element-wise ops on
# one thread, so a second stream overlaps them with the other batch's matmuls (docs/sae.md, measured).
STREAMS = 2
CORPUS_OPT = typer.Option(None, "--corpus", help="text file or directory (default: the Python docs from "
                          "`apt-get install python3.11-doc`)")


def parse_count(text: str, what: str = "--tokens") -> int:
    """'1M', '100k', '250000' -> int."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", str(text))
    if not m:
        raise MlxInterpError(f"{what}={text!r} is not allowed; use a count such as 100k, 1M or 250000")
    n = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2).lower()]
    if n < 1:
        raise MlxInterpError(f"{what}={text!r} is not allowed; use a count >= 1")
    return int(n)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console)


class _Bars:
    """One rich bar per stage ('collect', 'train'), driven by the library's (stage, done, total) callback."""

    def __init__(self, progress: Progress):
        self.p, self.tasks = progress, {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.p.add_task(stage, total=total)
        self.p.update(self.tasks[stage], completed=done, total=total)


@app.command()
def train(model: str = MODEL_OPT, dtype: Optional[str] = DTYPE_OPT,
          hook: str = typer.Option(..., "--hook", help="e.g. blocks.9.hook_resid_post"),
          width: int = typer.Option(4096, "--width"), k: int = typer.Option(32, "--k", help="TopK: active latents"),
          architecture: str = typer.Option("topk", "--architecture", help="topk (Gao et al. 2024) or jumprelu "
                                           "(Gemma Scope: learned thresholds + L0 penalty)"),
          l0_coef: float = typer.Option(1e-3, "--l0-coef", help="jumprelu: L0 penalty per active latent"),
          threshold_init: float = typer.Option(0.001, "--threshold-init", help="jumprelu: initial threshold "
                                               "(units of E||x||^2 = 1, as Gemma Scope)"),
          tokens: str = typer.Option("1M", "--tokens", help="training tokens to collect (BOS excluded), e.g. 100k, 1M"),
          epochs: int = typer.Option(1, "--epochs"), batch_size: int = typer.Option(1024, "--batch-size"),
          lr: Optional[float] = typer.Option(None, "--lr", help="default 2e-4 * sqrt(16384 / width)"),
          ctx_len: int = typer.Option(128, "--ctx-len"), corpus: Optional[Path] = CORPUS_OPT,
          eval_tokens: str = typer.Option("16k", "--eval-tokens", help="held-out tokens for FVE / L0 / dead fraction"),
          ce_windows: int = typer.Option(32, "--ce-windows", help="held-out windows for the CE-loss comparison"),
          streams: int = typer.Option(STREAMS, "--streams", help="batches collected at once, each on its own "
                                      "stream (1-4; same activations, overlapped work)"),
          work: Optional[Path] = typer.Option(None, "--work", help="activation shards + checkpoints "
                                              "(default OUT/work); rerun with the same options to resume"),
          out_dir: Path = typer.Option(..., "--out", help="where the SAE (cfg.json + sae_weights.safetensors) goes"),
          seed: int = typer.Option(0, "--seed"), as_json: bool = typer.Option(False, "--json")) -> None:
    """Train a TopK or JumpReLU SAE at one hook on a text corpus; writes the SAE and metrics.json.

    Example: [bold]mlxinterp sae train --hook blocks.9.hook_resid_post --width 4096 --k 32 --tokens 1M --out sae9[/bold]
    """
    from mlxinterp.analysis import sae_train as ST
    from mlxinterp.core.io import write_json
    from mlxinterp.tasks import corpus as C

    n_tokens, n_eval = parse_count(tokens), parse_count(eval_tokens, "--eval-tokens")
    cfg = ST.TrainConfig(width=width, k=k, batch_size=batch_size, epochs=epochs, lr=lr, seed=seed,
                         architecture=architecture, l0_coef=l0_coef, threshold_init=threshold_init)
    ST.check_config(cfg)  # bad options fail before the model loads
    if not 1 <= streams <= 4:
        raise MlxInterpError(f"--streams {streams} not allowed; use 1-4")
    C.corpus_files(corpus, "all")  # fail on a bad corpus before the model loads
    hm = load_model(model, dtype)
    name = hm.point(hook).name
    work = Path(work) if work else Path(out_dir) / "work"
    desc = C.describe(corpus)
    bos = hm.info.bos_token_id if hm.info.needs_bos else None
    t0 = time.perf_counter()
    with _progress() as p:
        bars = _Bars(p)
        train_store = ST.collect(hm, name, C.windows(hm.tokenizer, bos, corpus, "train", ctx_len, seed), work / "train",
                                 n_tokens, progress=bars, source={**desc, "split": "train", "ctx_len": ctx_len, "seed": seed},
                                 log=console.print, streams=streams)
        held_store = ST.collect(hm, name, C.windows(hm.tokenizer, bos, corpus, "heldout", ctx_len, seed), work / "heldout",
                                n_eval, source={**desc, "split": "heldout", "ctx_len": ctx_len, "seed": seed},
                                streams=streams)
        t_collect = time.perf_counter() - t0
        sae, info = ST.train(train_store, cfg, work, name, progress=bars, log=console.print)
    t_train = time.perf_counter() - t0 - t_collect
    with console.status("evaluating on held-out text ..."):
        metrics = ST.reconstruction_metrics(sae, held_store.sample(n_eval, seed))
        windows = [w for _, w in zip(range(ce_windows), C.windows(hm.tokenizer, bos, corpus, "heldout", ctx_len, seed))]
        metrics.update(ST.ce_metrics(hm, sae, windows))
    report = {"model": hm.info.spec, "hook": name, "architecture": architecture, "width": width,
              "k": k if architecture == "topk" else None, "corpus": desc,
              "train_tokens": train_store.n_rows, "heldout_tokens": held_store.n_rows, "epochs": epochs,
              "metrics": metrics, "training": {k_: v for k_, v in info.items() if k_ != "history"},
              "seconds": {"collect_this_run": round(t_collect, 1), "collect_total": round(train_store.manifest["seconds"]
                                                                                        + held_store.manifest["seconds"], 1),
                          "train": info["train_seconds"], "train_this_run": round(t_train, 1)},
              "history": info["history"]}
    sae.save(out_dir, {"model_name": hm.info.spec, "context_size": ctx_len, "training_tokens": train_store.n_rows,
                       "dataset_path": desc["path"], "metrics": metrics})
    write_json(Path(out_dir) / "metrics.json", report)
    if as_json:
        print_json(report)
        return
    m = metrics
    console.print(f"SAE -> {out_dir}: FVE {m['fve']:.3f}, L0 {m['l0_mean']:.1f}, dead {m['dead_frac']:.3f}, "
                  f"dense {m['dense_frac']:.3f}; CE clean {m['ce_clean']:.3f} / spliced {m['ce_spliced']:.3f} / "
                  f"zero-ablated {m['ce_zero_ablated']:.3f} (recovered {m['ce_recovered']})")


@app.command()
def inspect(sae_path: Path = typer.Argument(..., help="SAE directory or Gemma Scope params file"),
            model: str = MODEL_OPT, dtype: Optional[str] = DTYPE_OPT,
            hook: Optional[str] = typer.Option(None, "--hook", help="override the SAE's hook"),
            tokens: str = typer.Option("50k", "--tokens", help="held-out tokens to scan for top contexts"),
            features: Optional[str] = typer.Option(None, "--features", help="e.g. 3,17,100-120 (default: the most active)"),
            n_features: int = typer.Option(50, "--n-features"), top_n: int = typer.Option(8, "--top-n"),
            corpus: Optional[Path] = CORPUS_OPT, ctx_len: int = typer.Option(128, "--ctx-len"),
            work: Optional[Path] = typer.Option(None, "--work", help="activation shards (default OUT/work)"),
            out_dir: Path = typer.Option(..., "--out", help="writes features.html and features.json here"),
            seed: int = typer.Option(0, "--seed")) -> None:
    """Top-activating contexts and decoder logit effects per feature, as standalone HTML and JSON.

    Example: [bold]mlxinterp sae inspect sae9 --out sae9/inspect[/bold]
    """
    from mlxinterp.analysis import sae_train as ST
    from mlxinterp.analysis.sae import load_sae
    from mlxinterp.analysis.sae_inspect import inspect as run_inspect
    from mlxinterp.analysis.sae_inspect import write_html
    from mlxinterp.core.io import write_json
    from mlxinterp.tasks import corpus as C

    n_tokens = parse_count(tokens)
    sae = load_sae(sae_path, hook=hook)
    chosen = _parse_features(features, sae.d_sae) if features else None
    C.corpus_files(corpus, "all")
    hm = load_model(model, dtype)
    sae.check_model(hm)
    bos = hm.info.bos_token_id if hm.info.needs_bos else None
    work = Path(work) if work else Path(out_dir) / "work"
    with _progress() as p:
        store = ST.collect(hm, sae.hook, C.windows(hm.tokenizer, bos, corpus, "heldout", ctx_len, seed), work, n_tokens,
                           progress=_Bars(p), source={**C.describe(corpus), "split": "heldout", "ctx_len": ctx_len, "seed": seed})
    with console.status("scanning features ..."):
        report = run_inspect(hm, sae, store, chosen, n_features, top_n)
    write_json(Path(out_dir) / "features.json", report)
    page = write_html(report, Path(out_dir) / "features.html", f"SAE features at {sae.hook} ({hm.info.spec})")
    console.print(f"{len(report['features'])} features -> {page} and {Path(out_dir) / 'features.json'}")


def _parse_features(text: str, d_sae: int) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise MlxInterpError(f"--features {text!r} is not allowed; use e.g. 3,17,100-120")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        out.extend(range(a, b + 1))
    bad = [f for f in out if f >= d_sae]
    if bad:
        raise MlxInterpError(f"feature {bad[0]} is out of range; this SAE has features 0..{d_sae - 1}")
    return out

"""`mlxinterp tuned-lens` (train + evaluate a tuned lens) and `mlxinterp probe` (linear probes with controls)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import os
import resource
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from mlxinterp.cli.common import (
    DTYPE_OPT,
    MODEL_OPT,
    console,
    load_model,
    out,
    print_json,
)
from mlxinterp.core.errors import MlxInterpError

if TYPE_CHECKING:  # for annotations only: the hooked model type
    from mlxinterp.core.hooks import HookedModel


def tuned_lens(model: str = MODEL_OPT, dtype: Optional[str] = DTYPE_OPT,
               out_file: Path = typer.Option(..., "--out", help="the tuned lens (.safetensors); metrics go beside it as .json"),
               train_windows: int = typer.Option(48, "--train-windows", help="training windows of --ctx-len tokens"),
               eval_windows: int = typer.Option(4, "--eval-windows", help="held-out windows for the KL comparison"),
               ctx_len: int = typer.Option(64, "--ctx-len"), steps: int = typer.Option(300, "--steps"),
               batch: int = typer.Option(64, "--batch"),
               lr: float = typer.Option(1e-2, "--lr", help="Adam step size: the largest change one step makes to a "
                                        "translated residual, relative to the layer's RMS"),
               corpus: Optional[Path] = typer.Option(None, "--corpus", help="text file or directory (default: Python docs)"),
               seed: int = typer.Option(0, "--seed"), as_json: bool = typer.Option(False, "--json")) -> None:
    """Train a tuned lens on corpus text and compare per-layer KL to the final distribution with the logit lens.

    Example: [bold]mlxinterp tuned-lens --out results/tuned-lens-default.safetensors[/bold], then
    [bold]mlxinterp lens "The capital of France is" --tuned results/tuned-lens-default.safetensors[/bold]
    """
    from mlxinterp.analysis import tuned_lens as TL
    from mlxinterp.core.io import write_json
    from mlxinterp.tasks import corpus as C

    for name, v in (("--train-windows", train_windows), ("--eval-windows", eval_windows), ("--steps", steps), ("--batch", batch)):
        if v < 1:
            raise MlxInterpError(f"{name}={v} is not allowed; use a whole number >= 1")
    if not lr > 0:
        raise MlxInterpError(f"--lr={lr} is not allowed; use a number > 0")
    C.corpus_files(corpus, "all")
    t0, load_start = time.perf_counter(), os.getloadavg()
    hm = load_model(model, dtype)
    bos = hm.info.bos_token_id if hm.info.needs_bos else None
    take = lambda split, n: [w for _, w in zip(range(n), C.windows(hm.tokenizer, bos, corpus, split, ctx_len, seed))]
    with console.status("reading residuals ..."):
        h_train, ids = TL.residuals(hm, take("train", train_windows))
        h_eval, _ = TL.residuals(hm, take("heldout", eval_windows))
    with Progress(TextColumn("train tuned lens"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as p:
        task = p.add_task("train", total=steps)
        lens, info = TL.train(hm, h_train, steps, batch, lr, text_ids=ids, seed=seed,
                              progress=lambda d, t: p.update(task, completed=d))
    lens.meta["corpus"] = C.describe(corpus)
    lens.save(out_file)
    with console.status("held-out KL, full vocabulary ..."):
        per_window = h_eval.shape[1] // max(1, eval_windows)  # positions are nested in windows: intervals over windows
        ev = TL.evaluate(hm, lens, h_eval, clusters=[i // per_window for i in range(h_eval.shape[1])])
    # Wall time, load average (1/5/15 min) and peak resident memory of the whole command: timings on a shared machine mean little without them.
    run = {"seconds": round(time.perf_counter() - t0, 1), "load_average_start": [round(x, 2) for x in load_start],
           "load_average_end": [round(x, 2) for x in os.getloadavg()],
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    report = {"model": hm.info.spec, "lens": str(out_file), "training": info, "heldout": ev, "corpus": lens.meta["corpus"],
              "run": run}
    write_json(Path(out_file).with_suffix(".json"), report)
    if as_json:
        print_json(report)
        return
    table = Table("layer", "KL logit lens", "KL tuned lens")
    for l, (a, b) in enumerate(zip(ev["kl_logit_lens"], ev["kl_tuned_lens"])):
        table.add_row(str(l), f"{a:.3f}", f"{b:.3f}")
    out.print(table)
    console.print(f"tuned lens -> {out_file}; lower KL than the logit lens at {ev['layers_tuned_lower']} of "
                  f"{hm.info.n_layers - 1} layers ({ev['positions']} held-out positions)")


def probe(model: str = MODEL_OPT, dtype: Optional[str] = DTYPE_OPT,
          contrast: Optional[str] = typer.Option(None, "--contrast", help="data file with positive/negative lists, "
                                                 "e.g. directions/sycophancy.json"),
          pos: Optional[str] = typer.Option(None, "--pos", help="prompt file for label 1, e.g. refusal/harmful_en.json"),
          neg: Optional[str] = typer.Option(None, "--neg", help="prompt file for label 0, e.g. refusal/harmless_en.json"),
          layers: Optional[str] = typer.Option(None, "--layers", help="e.g. 3,6,9 (default: every layer)"),
          test_frac: float = typer.Option(0.25, "--test-frac"), seed: int = typer.Option(0, "--seed"),
          as_json: bool = typer.Option(False, "--json")) -> None:
    """Logistic probes at every layer (last token) with a held-out split and a control task (selectivity).

    Example: [bold]mlxinterp probe --pos refusal/harmful_en.json --neg refusal/harmless_en.json[/bold]
    """
    from mlxinterp.tasks.data import load_json
    from mlxinterp.tasks.data import prompts as read_prompts

    if contrast:
        d = load_json(contrast)
        positive, negative = list(d["positive"]), list(d["negative"])
    elif pos and neg:
        positive, negative = read_prompts(pos), read_prompts(neg)
    else:
        raise MlxInterpError("give --contrast FILE, or both --pos FILE and --neg FILE",
                             hint="e.g. --pos refusal/harmful_en.json --neg refusal/harmless_en.json")
    if not 0 < test_frac < 1:
        raise MlxInterpError(f"--test-frac={test_frac} is not allowed; use a number between 0 and 1")
    hm = load_model(model, dtype)
    chosen = list(range(hm.info.n_layers)) if layers is None else [int(x) for x in layers.split(",")]
    res = run_probes(hm, positive, negative, chosen, test_frac, seed)
    if as_json:
        print_json({"model": hm.info.spec, "n_pos": len(positive), "n_neg": len(negative), "layers": res})
        return
    table = Table("layer", "test acc", "control test acc", "selectivity", "cos(probe, diff-of-means)")
    for r in res:
        table.add_row(str(r["layer"]), f"{r['test_acc']:.3f}", f"{r['control_test_acc']:.3f}", f"{r['selectivity']:+.3f}",
                      f"{r['cos_diff_of_means']:.3f}")
    out.print(table)


def run_probes(hm: HookedModel, positive: List[str], negative: List[str], layers: List[int], test_frac: float, seed: int) -> list[dict]:
    """Last-token activations at each layer's output; pairs grouped when the sets are aligned; control types from
    `probes.choose_types` (the shortest prompt ending that makes the control task non-trivial)."""
    from mlxinterp.analysis.directions import collect
    from mlxinterp.analysis.probes import choose_types, probe_layers
    from mlxinterp.core import names as H

    prompts = positive + negative
    hooks = [H.resid_post(l) for l in layers]
    acts = collect(hm, prompts, hooks, position="last")
    y = [1] * len(positive) + [0] * len(negative)
    aligned = len(positive) == len(negative)
    groups = list(range(len(positive))) * 2 if aligned else None
    ids = [hm.tokens(p).ids[0].tolist() for p in prompts]
    n_last, types = choose_types(ids)
    res = probe_layers({l: acts[hm.point(h).name] for l, h in zip(layers, hooks)}, y, types, groups, test_frac, seed)
    return [{**r.to_dict(), "control_type": f"last {n_last} tokens" if n_last else "each prompt"} for r in res]

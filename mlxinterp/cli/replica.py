"""`mlxinterp replica`: a random-weight checkpoint with the exact shapes and quantization of a catalogue entry."""
from __future__ import annotations

from pathlib import Path

import typer

from mlxinterp.cli.common import console, out, print_json


def replica(like: str = typer.Option(..., "--like", help="catalogue checkpoint, e.g. gemma-2-2b-it-4bit "
                                                          "(`mlxinterp models --catalogue` lists them)"),
            out_dir: Path = typer.Option(..., "--out", help="new (or empty) directory to write the checkpoint into"),
            seed: int = typer.Option(0, "--seed", help="weights are drawn from (seed, tensor name)"),
            as_json: bool = typer.Option(False, "--json")) -> None:
    """Write a random-weight mlx-lm checkpoint with the config, shapes and quantization of a known model,
    to measure memory and speed at real size without downloading it (docs/bigger-models.md).

    Example: [bold]mlxinterp replica --like gemma-2-2b-it-4bit --out /tmp/g2b[/bold]
    """
    from mlxinterp.core.errors import MlxInterpError
    from mlxinterp.core.loading import default_model_dir
    from mlxinterp.core.replica import write_replica
    from mlxinterp.suite import catalogue

    entry = catalogue.get(like)  # unknown names fail here, before anything is written
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise MlxInterpError(f"--out {str(out_dir)!r} exists and is not an empty directory",
                             hint="give a new directory, or delete this one first")
    try:
        tokenizer_dir = default_model_dir()
    except MlxInterpError:
        tokenizer_dir = None  # the default model's package is missing: a byte-level tokenizer serves
    console.print(f"writing a {entry.bits}-bit replica of {entry.repo} ({entry.n_params / 1e9:.2f}B parameters) "
                  f"to {out_dir}")
    path = write_replica(entry.full_config(), out_dir, seed=seed, tokenizer_dir=tokenizer_dir,
                         progress=lambda line: console.print(f"  {line}"))
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    result = {"like": entry.repo, "path": str(path), "seed": seed, "bits": entry.bits,
              "group_size": entry.group_size, "size_bytes": size}
    if as_json:
        print_json(result)
    else:
        out.print(f"{path}  ({size / 1e9:.2f} GB; load it with --model {path})")

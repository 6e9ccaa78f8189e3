"""`mlxinterp compare`: does a suite run reproduce a reference run (the repository's results/)?
Also the line `run-suite --reference` prints after a run. The rule is in mlxinterp/suite/compare.py."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mlxinterp.cli.common import out, print_json


def compare(run_dir: Path = typer.Argument(..., help="a run-suite --out directory"),
            reference: Path = typer.Option(Path("results"), "--reference", help="the run to compare with "
                                           "(default: the repository's committed results/)"),
            as_json: bool = typer.Option(False, "--json", help="every experiment's status and reasons as JSON")) -> None:
    """Compare a suite run with a reference run, experiment by experiment: an estimate must lie in the
    reference's 95 % interval, other numbers agree within 5 %, verdict words match.

    Examples:
      [bold]mlxinterp compare mlxinterp-out/suite --reference results[/bold]
      [bold]mlxinterp compare mlxinterp-out/suite --json[/bold]
    """
    from mlxinterp.suite import compare as cmp  # here, not at the top: `mlxinterp --help` stays fast

    c = cmp.compare_runs(run_dir, reference)
    if as_json:
        print_json(c.to_dict())
        return
    table = Table("model", "experiment", "status", "entries", "why", title=Text(f"{run_dir} vs {reference}"))
    for e in c.experiments:  # Text: intervals such as "[0.50, 0.51]" are not rich markup
        table.add_row(e.model, e.experiment, e.status, str(e.entries), Text("; ".join(e.reasons[:3])))
    out.print(table)
    out.print(c.line(), highlight=False, markup=False, soft_wrap=True)


def comparison_dict(run_dir: Path, reference: Optional[Path]) -> Optional[dict]:
    """The comparison with the reference as JSON-able data (None when there is none), for `run-suite --json`."""
    from mlxinterp.suite import compare as cmp  # here: the suite's imports would slow every command's start

    if reference is None or not Path(reference).is_dir():
        return None
    return cmp.compare_runs(run_dir, reference).to_dict()


def print_comparison(run_dir: Path, reference: Optional[Path], console: Console) -> None:
    """After a run: the one-line comparison with the reference (nothing when there is none)."""
    from mlxinterp.suite import compare as cmp  # here: the suite's imports would slow every command's start

    if reference is None or not Path(reference).is_dir():
        return
    console.print(cmp.compare_runs(run_dir, reference).line(), highlight=False, markup=False, soft_wrap=True)
    console.print(f"details: mlxinterp compare {run_dir} --reference {reference}", highlight=False, soft_wrap=True)

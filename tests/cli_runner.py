"""Run the `mlxinterp` command line in-process, as the CLI tests need it."""
from __future__ import annotations

from mlxinterp.cli import main


def run(argv, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `mlxinterp argv`."""
    code = 0
    try:
        main(list(argv))
    except SystemExit as e:
        code = e.code or 0
    cap = capsys.readouterr()
    return code, cap.out, cap.err

"""Every example in every `mlxinterp ... --help` is a command that works.

All examples are parsed by the command itself (an unknown option, a missing argument or a
value of the wrong type fails). The examples of the core commands are also run, as a user
would copy them, in a directory holding what the tutorial created (tutorial/happy_L10 ...: the
tutorial's own run, tests/test_docs.py), on the real default model; examples that compute for
minutes or more (run-suite on the whole suite, training) and the commands of other features are
parsed only, and listed below. The examples run in one background process (tests/background.py),
queued after the tutorial, which loads the default model once for all of them.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import typer

sys.path.insert(0, str(Path(__file__).parent))  # run as a script (the background job) too
import background  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
_EXAMPLE = re.compile(r"\[bold\](mlxinterp [^\[]+?)\[/bold\]")
# Examples that only parse: run-suite on whole experiments (minutes to hours), and the commands of
# other features (training, servers, probes, replicas), whose own tests run them.
PARSE_ONLY_COMMANDS = ("sae", "tuned-lens", "probe", "replica", "serve", "attribute")
PARSE_ONLY_PREFIX = "mlxinterp run-suite --model"


def _commands(group, prefix=()):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def examples() -> list[tuple[tuple[str, ...], str]]:
    from mlxinterp.cli import app

    found = []
    for path, cmd in _commands(typer.main.get_command(app)):
        for text in _EXAMPLE.findall(cmd.help or ""):
            found.append((path, " ".join(text.split())))
    return found


def _parse(argv: list[str]):
    """Parse like the command line does (options, arguments, value types), without running anything."""
    from mlxinterp.cli import app

    cmd, parent = typer.main.get_command(app), None
    while hasattr(cmd, "commands"):  # walk down the (sub-)groups by name
        parent = cmd.make_context(cmd.name or "mlxinterp", [], resilient_parsing=True, parent=parent)
        name, argv = argv[0], argv[1:]
        assert name in cmd.commands, f"unknown command {name!r}"
        cmd = cmd.commands[name]
    return cmd.make_context(cmd.name, list(argv), parent=parent)


def test_examples_are_found_for_every_command():
    paths = {p for p, _ in examples()}
    assert {("info",), ("hooks",), ("models",), ("steer",), ("lens",), ("compare",), ("run-suite",)} <= paths


@pytest.mark.parametrize("example", [e for _, e in examples()])
def test_every_help_example_parses(example):
    argv = shlex.split(example)[1:]
    _parse(argv)  # raises click's UsageError / BadParameter on an unknown option or a bad value


def _tutorial_dir(cwd: Path, deps: dict) -> None:
    """What docs/tutorial.md created (its direction at layer 10 of the default model and the llama.cpp export,
    copied from the tutorial's run), the committed reference results/ and a run of validation to compare."""
    tutorial = deps[background.TUTORIAL.name]
    if tutorial.returncode != 0:
        raise RuntimeError("the tutorial failed (tests/test_docs.py::test_tutorial_runs_end_to_end), "
                           "so there is no directory holding what it creates")
    shutil.copytree(tutorial.cwd / "tutorial", cwd / "tutorial", ignore=shutil.ignore_patterns("results"))
    os.symlink(ROOT / "results", cwd / "results")
    run = cwd / "mlxinterp-out" / "suite" / "default" / "validation"
    run.mkdir(parents=True)
    (run / "result.json").write_bytes((ROOT / "results" / "default" / "validation" / "result.json").read_bytes())


JOB = background.define(background.Job("help-examples", background.python(__file__), real=True, timeout=900,
                                       after=(background.TUTORIAL.name,), prepare=_tutorial_dir))


def run_core_examples() -> dict[str, dict]:
    """Run the core examples in this process and directory: {example: {"code", "err"}}.

    Every command loads its model through mlxinterp.core.hooks.load; the first load of a spec is kept and
    handed to the later commands (loading is tested on its own; here it would be most of the time).
    """
    from mlxinterp.cli import main
    from mlxinterp.core import hooks

    loaded, real_load = {}, hooks.load

    def load_once(spec, **kwargs):
        key = (spec, repr(sorted(kwargs.items())))
        if key not in loaded:
            loaded[key] = real_load(spec, **kwargs)
        return loaded[key]

    hooks.load = load_once
    todo = [e for path, e in examples() if path[0] not in PARSE_ONLY_COMMANDS and not e.startswith(PARSE_ONLY_PREFIX)]
    # import-vector writes the per-layer file its steer example reads
    todo.sort(key=lambda e: not e.startswith("mlxinterp import-vector"))
    ran = {}
    for example in todo:
        argv = shlex.split(example)[1:]
        if argv[0] in ("generate", "steer") and "--max-tokens" not in argv:
            argv += ["--max-tokens", "4"]  # the example's output, shorter
        err, code = io.StringIO(), 0
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                main(argv)
            except SystemExit as e:
                code = e.code or 0
        ran[example] = {"code": code, "err": err.getvalue()[-2000:]}
    return ran


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.background(JOB.name)
@pytest.mark.timeout(background.WAIT_TIMEOUT)
def test_core_help_examples_run():
    if os.environ.get("MLXINTERP_SKIP_REAL"):
        pytest.skip("MLXINTERP_SKIP_REAL is set")
    r = background.result(JOB.name)
    assert r.returncode == 0, r.stderr[-4000:]
    ran = json.loads(r.stdout.splitlines()[-1])
    for example, got in ran.items():
        assert not got["code"], f"{example}: exit {got['code']}\n{got['err']}"
    assert len(ran) >= 15, list(ran)
    # ad-hoc commands write under ./mlxinterp-out, never into the committed results/
    assert list((r.cwd / "mlxinterp-out" / "lens").glob("lens-*.png"))
    assert not (ROOT / "results" / "lens").exists()


if __name__ == "__main__":  # the background job: run the core examples here, print what they did
    print(json.dumps(run_core_examples()))

"""Every example in every `mlxinterp ... --help` is a command that works.

All examples are parsed by the command itself (an unknown option, a missing argument or a
value of the wrong type fails). The examples of the core commands are also run, as a user
would copy them, in a directory holding what the tutorial creates (tutorial/happy_L10 ...),
on the real default model; examples that compute for minutes or more (run-suite on the whole
suite, training) and the commands of other features are parsed only, and listed below.
"""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import typer

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


@pytest.fixture
def tutorial_dir(tmp_path, monkeypatch):
    """A working directory with what docs/tutorial.md creates (a direction at layer 10 of the default
    model, its llama.cpp export) and the committed reference results/."""
    from mlxinterp.analysis.controlvec import LayerVectors, export_llama_cpp
    from mlxinterp.analysis.directions import Direction

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tutorial").mkdir()
    v = np.random.default_rng(0).standard_normal(640).astype(np.float32)
    d = Direction(v, "blocks.10.hook_resid_post", float(np.linalg.norm(v)), 600.0, 0.5, 8, 8)
    d.save(tmp_path / "tutorial" / "happy_L10")
    export_llama_cpp(LayerVectors.from_directions(d, model_hint="gemma3"), tmp_path / "tutorial" / "happy.gguf")
    os.symlink(ROOT / "results", tmp_path / "results")
    run = tmp_path / "mlxinterp-out" / "suite" / "default" / "validation"
    run.mkdir(parents=True)
    (run / "result.json").write_bytes((ROOT / "results" / "default" / "validation" / "result.json").read_bytes())
    return tmp_path


@pytest.mark.real
@pytest.mark.slow
def test_core_help_examples_run(tutorial_dir, capsys):
    from mlxinterp.cli import main

    if os.environ.get("MLXINTERP_SKIP_REAL"):
        pytest.skip("MLXINTERP_SKIP_REAL is set")
    ran = []
    todo = [e for path, e in examples() if path[0] not in PARSE_ONLY_COMMANDS and not e.startswith(PARSE_ONLY_PREFIX)]
    # import-vector writes the per-layer file its steer example reads
    todo.sort(key=lambda e: not e.startswith("mlxinterp import-vector"))
    for example in todo:
        argv = shlex.split(example)[1:]
        if argv[0] in ("generate", "steer") and "--max-tokens" not in argv:
            argv += ["--max-tokens", "4"]  # the example's output, shorter
        try:
            main(argv)
        except SystemExit as e:
            assert not e.code, f"{example}: exit {e.code}\n{capsys.readouterr().err[-2000:]}"
        ran.append(example)
    capsys.readouterr()
    assert len(ran) >= 15, ran
    # ad-hoc commands write under ./mlxinterp-out, never into the committed results/
    assert list((tutorial_dir / "mlxinterp-out" / "lens").glob("lens-*.png"))
    assert not (ROOT / "results" / "lens").exists()

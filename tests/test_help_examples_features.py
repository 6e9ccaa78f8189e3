"""The --help examples of the feature commands that tests/test_help_examples.py only parses, executed.

Each runs as a user would copy it, in a scratch directory, on a tiny checkpoint instead of the default
model (`--model default` replaced, or `--model` added) and with sizes shrunk by options appended after
the example's own (click keeps the last value of an option), so the example's command, its options and
its output files are exercised in seconds. Examples that cannot run in CI are listed in NOT_RUN with the
reason and the test that covers the command instead; a new example must be added to one or the other.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from cli_runner import run
from test_help_examples import PARSE_ONLY_COMMANDS, PARSE_ONLY_PREFIX, examples

ARCH = ("gemma3_text", None)  # 4 layers: the examples' layer 9 becomes layer 1
CORPUS = ("The Eiffel Tower is located in the city of Paris. The Colosseum is in Rome. " * 40).strip()
TINY = {"tuned-lens": ["--steps", "3", "--train-windows", "4", "--eval-windows", "2", "--ctx-len", "16",
                       "--batch", "4", "--corpus", "corpus.txt"],
        "lens": [],
        "probe": ["--layers", "1,2"],
        # the tiny tokenizer splits "Colosseum" into many pieces: a same-length pair from its training text
        "attribute": ["--clean", "The capital of France is", "--corrupt", "The capital of Italy is"],
        "sae train": ["--hook", "blocks.1.hook_resid_post", "--width", "64", "--k", "4", "--tokens", "600",
                      "--eval-tokens", "200", "--ce-windows", "2", "--ctx-len", "32", "--batch-size", "64",
                      "--corpus", "corpus.txt"],
        "sae inspect": ["--tokens", "300", "--n-features", "4", "--top-n", "2", "--ctx-len", "32",
                        "--corpus", "corpus.txt"],
        "run-suite": ["--quick", "--out", "suite-out"]}
# Run in this order: each later example reads what an earlier one wrote (a tuned lens, an SAE, a suite run).
ORDER = ("tuned-lens", "lens", "probe", "attribute", "sae train", "sae inspect", "run-suite")
NOT_RUN = {
    "mlxinterp serve": "starts a server that runs until stopped; tests/test_serve.py serves a tiny model and "
                       "drives every endpoint",
    "mlxinterp serve --model default --port 8765 --vectors my-vectors": "as `mlxinterp serve` (a server)",
    "mlxinterp serve --host 0.0.0.0": "as `mlxinterp serve`; and it asks to listen beyond localhost, which a "
                                      "test must not do",
    "mlxinterp replica --like gemma-2-2b-it-4bit --out /tmp/g2b": "writes a 2.6B-parameter checkpoint (about "
                                                                  "1.5 GB); tests/test_replica.py runs `replica` "
                                                                  "on the default model's shape and every "
                                                                  "catalogue shape in memory",
    "mlxinterp run-suite --model default": "every experiment at full size (hours); the quick profile on a tiny "
                                           "model runs below for the single-experiment examples, and "
                                           "tests/test_suite_real.py runs the driver on a tiny model",
    "mlxinterp run-suite --model default --only ard_mmd --set ard_mmd.steps=1000 --out mlxinterp-out/ard-full":
        "1000 optimisation steps of ard_mmd on the default model (the point of the example); its quick "
        "profile runs in the suite's own tests",
    "mlxinterp run-suite --model default --quick --out mlxinterp-out/quick": "the quick profile of every "
        "experiment: on a tiny random model the task-based ones stop by design (e.g. attribution_patching: "
        "'only 2 of 6 pairs are done correctly by the model'); on the default model it takes tens of minutes",
    "mlxinterp run-suite --model default --only twohop --quant-check 4": "twohop needs the default model's "
        "two-hop facts (a tiny random model gives no valid items: the run refuses with zero items by design)",
}


def _key(path: tuple[str, ...], example: str) -> str:
    first = shlex.split(example)[1]
    return "lens" if first == "lens" else " ".join(path)


def _feature_examples() -> list[tuple[str, str]]:
    found = [(_key(p, e), e) for p, e in examples() if p[0] in PARSE_ONLY_COMMANDS or e.startswith(PARSE_ONLY_PREFIX)]
    return sorted(found, key=lambda ke: ORDER.index(ke[0]) if ke[0] in ORDER else len(ORDER))


def test_every_feature_example_is_run_or_says_why_not():
    for key, example in _feature_examples():
        assert example in NOT_RUN or key in TINY, f"{example!r}: run it here (TINY) or say why not (NOT_RUN)"
    assert set(NOT_RUN) <= {e for _, e in _feature_examples()}, "NOT_RUN names an example that no longer exists"


@pytest.mark.slow
def test_feature_examples_run_on_a_tiny_model(tiny_dirs, tmp_path, monkeypatch, capsys):
    model = str(tiny_dirs[ARCH])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text(CORPUS)
    ran = []
    for key, example in _feature_examples():
        if example in NOT_RUN:
            continue
        argv = shlex.split(example)[1:]
        if "--model" in argv:
            argv[argv.index("--model") + 1] = model
        else:
            argv += ["--model", model]
        code, out, err = run(argv + TINY[key], capsys)
        assert code == 0, f"{example}: exit {code}\n{err[-3000:]}"
        ran.append(example)
    # what the examples promise to write is there
    assert Path("results/tuned-lens-default.safetensors").is_file()
    assert (Path("sae9") / "cfg.json").is_file() and (Path("sae9") / "inspect" / "features.html").is_file()
    summary = next(Path("suite-out").rglob("validation/result.json"))
    assert json.loads(summary.read_text())["status"] == "complete"
    assert len(ran) == len(_feature_examples()) - len(NOT_RUN)

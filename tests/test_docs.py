"""Documentation that cannot rot.

Every ```python block in README.md and docs/*.md runs: the blocks of one file, in order,
as one script in a fresh process and an empty working directory. A block whose fence
says ```python real needs the real default model (skipped with MLXINTERP_SKIP_REAL).
A block opts out only with `<!-- no-test: reason -->` on the line before its fence.

docs/tutorial.md is also examples/tutorial.py (one `# %%` cell per block); the test checks
they are identical and runs the script. After editing the tutorial, regenerate the script:

    python tests/test_docs.py

The scripts are background jobs (tests/background.py): they start when collection ends and run
beside the in-process tests; each test checks its job's output.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import background  # tests/background.py

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL_MD = ROOT / "docs" / "tutorial.md"
TUTORIAL_PY = ROOT / "examples" / "tutorial.py"
_FENCE = re.compile(r"^```(\S*)(.*)$")
_NO_TEST = re.compile(r"^<!--\s*no-test:\s*(\S.*?)\s*-->$")
_PY = ("python", "py", "python3", "pycon")


@dataclass
class Block:
    file: str
    line: int  # 1-based line of the opening fence
    title: str  # the nearest heading above
    code: str
    real: bool
    skip: str | None  # the no-test reason


def blocks(text: str, file: str = "<md>") -> list[Block]:
    """The Python code blocks of a Markdown text, with their flags."""
    found, lines, title, i = [], text.splitlines(), "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and not line.startswith("#!"):
            title = line.lstrip("#").strip()
        m = _FENCE.match(line)
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
        if m.group(1).lower() in _PY:
            prev = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            opt_out = _NO_TEST.match(prev)
            found.append(Block(file, i + 1, title, "\n".join(lines[i + 1 : end]) + "\n",
                               "real" in m.group(2).split(), opt_out.group(1) if opt_out else None))
        i = end + 1
    return found


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def tutorial_script(md_blocks: list[Block]) -> str:
    """examples/tutorial.py, generated from the tutorial's blocks."""
    head = ('"""The tutorial, docs/tutorial.md, as one script: `python examples/tutorial.py` writes into ./tutorial/.\n\n'
            "Each `# %%` cell is one code block of docs/tutorial.md, in order (tests/test_docs.py checks that\n"
            "they are identical and runs this script). Edit the Markdown, then regenerate this file with\n"
            '`python tests/test_docs.py`.\n"""\n')
    cells = [f"# %% {b.title}\n{b.code}" for b in md_blocks if not b.skip]
    return head + "\n".join(cells)


def script_cells(text: str) -> list[str]:
    """The code of each `# %%` cell of a script."""
    parts = re.split(r"^# %%.*\n", text, flags=re.M)[1:]
    return [p.strip() for p in parts]


def _doc_job(path: Path) -> str:
    """The background job running a doc file's blocks, in order, as one script in an empty directory."""
    bs = [b for b in blocks(path.read_text(), path.name) if not b.skip]
    code = "\n".join(f"# --- {path.name} line {b.line}\n{b.code}" for b in bs)

    def write(cwd: Path, _deps: dict) -> None:
        (cwd.parent / f"{path.name}.py").write_text(code)  # beside the directory: it starts empty

    name = f"docs-{path.name}"
    background.define(background.Job(name, background.python(f"../{path.name}.py"), timeout=600, prepare=write,
                                     real=any(b.real for b in bs)))
    return name


def _doc_param(path: Path):
    """A doc file with its job's mark (none when it has no blocks to run)."""
    has_blocks = any(not b.skip for b in blocks(path.read_text(), path.name))
    return pytest.param(path, marks=[pytest.mark.background(_doc_job(path))] if has_blocks else [], id=path.name)


TUTORIAL_JOB = background.TUTORIAL.name  # examples/tutorial.py


def _skip_real_if_asked(bs: list[Block]) -> None:
    if os.environ.get("MLXINTERP_SKIP_REAL") and any(b.real for b in bs):
        pytest.skip("MLXINTERP_SKIP_REAL is set and these blocks need the real model")


# ------------------------------------------------------------------ the extractor itself


def test_extractor_flags_real_blocks_and_opt_outs():
    md = ("# A\n```python\nx = 1\n```\n## B\n```python real\nimport mlxinterp\n```\n"
          "<!-- no-test: needs a GPU -->\n\n```py\nraise SystemExit(1)\n```\n```bash\nls\n```\n"
          "<!-- a comment, not an opt-out -->\n```python\ny = 2\n```\n")
    got = blocks(md)
    assert [(b.title, b.code, b.real, b.skip) for b in got] == [
        ("A", "x = 1\n", False, None), ("B", "import mlxinterp\n", True, None),
        ("B", "raise SystemExit(1)\n", False, "needs a GPU"), ("B", "y = 2\n", False, None)]
    assert got[0].line == 2 and got[1].line == 6


def test_every_opt_out_gives_a_reason_and_fences_are_closed():
    for path in doc_files():
        text = path.read_text()
        assert sum(line.startswith("```") for line in text.splitlines()) % 2 == 0, f"{path}: unclosed code fence"
        for line in text.splitlines():
            if "no-test" in line:
                assert _NO_TEST.match(line.strip()), f"{path}: malformed opt-out {line!r}; use <!-- no-test: reason -->"


# ------------------------------------------------------------------ the tutorial


def test_tutorial_script_is_the_tutorial():
    md = [b for b in blocks(TUTORIAL_MD.read_text(), "docs/tutorial.md") if not b.skip]
    assert len(md) >= 6
    assert script_cells(TUTORIAL_PY.read_text()) == [b.code.strip() for b in md], \
        "examples/tutorial.py differs from docs/tutorial.md: run `python tests/test_docs.py` to regenerate it"


@pytest.mark.slow
@pytest.mark.background(TUTORIAL_JOB)
@pytest.mark.timeout(background.WAIT_TIMEOUT)
def test_tutorial_runs_end_to_end():
    """The whole first hour, as a user runs it; must stay well under 15 minutes (a few on this CPU)."""
    _skip_real_if_asked([Block("", 0, "", "", True, None)])
    r = background.result(TUTORIAL_JOB)
    seconds = r.seconds
    assert r.returncode == 0, r.stderr[-4000:]
    out = r.cwd / "tutorial"
    for rel in ("lens.png", "patching.png", "happy_L10.safetensors", "happy_L10.json", "happy.gguf",
                "results/default/validation/result.json", "results/default/validation/validation.png",
                "results/report.md", "results/report.html"):
        assert (out / rel).is_file() and (out / rel).stat().st_size > 0, rel
    for needle in ("rank of ' Paris'", "split-half cosine", "logit(' happy') - logit(' sad')", "clean +",
                   "refusal_direction.pass", "report:", "layers [10]"):  # summary keys (suite/summary.py)
        assert needle in r.stdout, needle
    print(f"tutorial: {seconds:.0f} s")
    assert seconds < 900


# ------------------------------------------------------------------ README.md and docs/*.md


@pytest.mark.slow  # README.md runs the default model (minutes on a busy CPU)
@pytest.mark.parametrize("path", [_doc_param(p) for p in doc_files() if p != TUTORIAL_MD])
@pytest.mark.timeout(background.WAIT_TIMEOUT)
def test_markdown_python_blocks_run(path):
    bs = [b for b in blocks(path.read_text(), path.name) if not b.skip]
    if not bs:
        pytest.skip(f"{path.name} has no Python blocks to run")
    _skip_real_if_asked(bs)
    r = background.result(f"docs-{path.name}")
    assert r.returncode == 0, f"{path.name}: {r.stderr[-4000:]}"


# ------------------------------------------------------------------ CLI help


def _commands(group, prefix=()):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):  # a group (typer may vendor its own click classes)
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name)


def test_every_command_help_has_examples(capsys):
    """Every command, including ones added later, shows at least one example in --help."""
    import typer

    from mlxinterp.cli import app, main

    commands = list(_commands(typer.main.get_command(app)))
    assert {("export-vector",), ("import-vector",), ("doctor",)} <= set(commands)
    for cmd in commands:
        try:
            main([*cmd, "--help"])
        except SystemExit as e:
            assert not e.code, cmd
        text = capsys.readouterr().out
        assert "Example" in text and "mlxinterp " + " ".join(cmd) in text, f"`mlxinterp {' '.join(cmd)} --help` has no example"


def test_every_benchmark_help_has_examples():
    """The benchmarks run from a checkout (`python -m bench`); each shows an example of itself."""
    import typer
    from typer.testing import CliRunner

    from bench.cli import bench_app

    for (cmd,) in _commands(typer.main.get_command(bench_app)):
        res = CliRunner().invoke(bench_app, [cmd, "--help"])
        assert res.exit_code == 0 and "Example" in res.output and f"python -m bench {cmd}" in res.output, cmd


@pytest.mark.parametrize("argv, next_command", [
    (["info", "--model", "no-such-model"], "`mlxinterp models`"),
    (["info", "--model", "defualt"], "`mlxinterp models`"),
    (["run-suite", "--only", "validatoin", "--out", "{tmp}"], "`mlxinterp run-suite --list`"),
], ids=["unknown-model", "misspelt-model", "unknown-experiment"])
def test_errors_suggest_the_next_command(argv, next_command, capsys, tmp_path):
    from mlxinterp.cli import main

    with pytest.raises(SystemExit) as e:
        main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "hint:" in err and next_command in err.replace("\n", " "), err


def test_unknown_hook_suggests_the_listing_command(tiny_hooked):
    from mlxinterp.core.errors import HookNameError

    hm = tiny_hooked("llama", None)
    with pytest.raises(HookNameError) as e:
        hm.point("blocks.1.hook_resid_pots")
    assert f"mlxinterp hooks --model {hm.info.spec} --filter blocks.1." in str(e.value)
    assert "did you mean 'blocks.1.hook_resid_post'" in str(e.value)


def test_doctor_reports_blas_speed_memory_cache_models_and_what_to_fix():
    """As a user runs it: with OpenBLAS preloaded (the entry point's re-exec) and without (plain python)."""
    import json

    from mlxinterp.core.platform import find_openblas

    exe = [os.path.join(os.path.dirname(sys.executable), "mlxinterp")]  # the installed entry point
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MLXINTERP_BLAS_REEXEC")}
    runs = {}
    for name, extra in (("auto", {}), ("plain", {"MLXINTERP_NO_BLAS_REEXEC": "1"})):
        r = subprocess.run([*exe, "doctor", "--json"], capture_output=True, text=True, env={**env, **extra}, timeout=120)
        assert r.returncode == 0, r.stderr
        runs[name] = json.loads(r.stdout)
    d = runs["plain"]
    assert {"device", "blas_in_use", "matmul_gflops_512", "memory_bytes", "memory_available_bytes", "cache_dir",
            "cache_writable", "models", "advice"} <= set(d)
    assert d["memory_bytes"] > 0 and d["matmul_gflops_512"] > 0 and "default" in d["models"]
    if sys.platform == "linux" and find_openblas():
        auto = runs["auto"]
        assert not d["openblas_interposed"] and "bundled" in d["blas_in_use"]
        assert any("LD_PRELOAD=" + find_openblas() in a for a in d["advice"])
        assert auto["openblas_interposed"] and auto["blas_in_use"].startswith("OpenBLAS")
        assert not any("OpenBLAS" in a for a in auto["advice"])
        assert auto["matmul_gflops_512"] > 2 * d["matmul_gflops_512"]  # measured ~17x on 2 shared cores


if __name__ == "__main__":  # regenerate examples/tutorial.py from docs/tutorial.md
    TUTORIAL_PY.parent.mkdir(exist_ok=True)
    TUTORIAL_PY.write_text(tutorial_script(blocks(TUTORIAL_MD.read_text(), "docs/tutorial.md")))
    print(f"wrote {TUTORIAL_PY}")

"""The suite driver on a real (tiny) model: killed or interrupted runs resume to the uninterrupted bytes.

The validation experiment runs on a tiny Gemma 3 checkpoint in subprocesses
that are killed (SIGKILL) at several points, including halfway through writing
a checkpoint line, the figure and result.json; or interrupted (SIGINT) through
the command line, whose printed resume command is then run as is. Every time,
the finished result.json (timings removed) and figure equal an uninterrupted
run's byte for byte, and finished items are reloaded, not recomputed.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlxinterp.core import io
from mlxinterp.suite import run_all

# Each test waits on its suite processes: they run beside the in-process tests (tests/background.py).
pytestmark = pytest.mark.offload
ARCH = ("gemma3_text", None)
SEED = 3
# Runs the suite; a write containing $KILL gets half its bytes to disk, then the process is SIGKILLed.
SCRIPT = """
import os, signal, sys
KILL = os.environ.get("KILL", "").encode()
_write = os.write

def write(fd, data):
    data = bytes(data)
    if KILL and KILL in data:
        _write(fd, data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return _write(fd, data)

os.write = write
from mlxinterp.suite import run_all
run_all([sys.argv[1]], only="validation", out=sys.argv[2], seed=int(sys.argv[3]))
"""


def _exp_dir(out: Path) -> Path:
    return next(out.glob("*/validation"))


def _record(out: Path) -> dict:
    return json.loads((_exp_dir(out) / "result.json").read_text())


def _bytes_without_timings(out: Path) -> tuple[str, bytes]:
    """result.json re-serialised without "timings" (the only key allowed to differ), and the figure."""
    record = _record(out)
    record.pop("timings")
    return io.dumps(record), (_exp_dir(out) / "validation.png").read_bytes()


@pytest.fixture(scope="module")
def model(tiny_dirs) -> str:
    return str(tiny_dirs[ARCH])


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory) -> Path:
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "out"
    run_all([model], only="validation", out=out, seed=SEED)
    record = _record(out)
    assert record["status"] == "complete" and len(record["result"]["checks"]) == 5
    return out


def _checkpoints(out: Path) -> int:
    partial = list(out.glob("*/validation/.partial/checks.jsonl"))
    return partial[0].read_bytes().count(b"\n") if partial else 0


def _kill_when(proc: subprocess.Popen, out: Path, n_items: int, sig: int) -> bool:
    """Send `sig` once `n_items` checks are checkpointed; False if the run finished first."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if _checkpoints(out) >= n_items:
            proc.send_signal(sig)
            return True
        time.sleep(0.005)
    return False


def test_sigkill_at_several_points_then_resume_equals_uninterrupted(model, reference, tmp_path):
    out = tmp_path / "out"
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)

    def run(kill: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), model, str(out), str(SEED)], capture_output=True,
                              text=True, env={**os.environ, "KILL": kill}, timeout=600)

    # 1. between items: killed from outside once two checks are checkpointed
    proc = subprocess.Popen([sys.executable, str(script), model, str(out), str(SEED)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not _kill_when(proc, out, 2, signal.SIGKILL):
        proc.wait()
        pytest.skip("the run finished before it could be killed (machine too fast for this probe)")
    proc.wait()
    done_before = _checkpoints(out)
    # 2-4. halfway through writing: the 4th checkpoint line (unless already written), the figure, result.json
    for kill in (['"i": 3,'] if done_before <= 3 else []) + ["IHDR", '"status": "complete"']:
        r = run(kill)
        assert r.returncode == -signal.SIGKILL, (kill, r.stderr)
        result = _exp_dir(out) / "result.json"
        assert not result.exists()  # never a torn result: the old version (none) or the complete new one
    assert _checkpoints(out) == 5  # every check survived the kills in the figure / result writes
    r = run()
    assert r.returncode == 0, r.stderr
    assert _bytes_without_timings(out) == _bytes_without_timings(reference)
    maps = _record(out)["timings"]["maps"]["checks"]
    assert maps["reloaded"] == 5 and done_before >= 2  # the last run recomputed no check
    assert not list(out.rglob(".partial")) and not list(out.rglob(".tmp-*"))
    assert run_all([model], only="validation", out=out, seed=SEED)["runs"][0]["status"] == "skipped"


def test_ctrl_c_on_the_command_line_stops_cleanly_and_its_resume_command_works(model, reference, tmp_path):
    out = tmp_path / "out"
    cli = [sys.executable, "-m", "mlxinterp"]
    argv = ["run-suite", "--model", model, "--only", "validation", "--seed", str(SEED), "--out", str(out)]
    proc = subprocess.Popen(cli + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    if not _kill_when(proc, out, 2, signal.SIGINT):
        proc.communicate()
        pytest.skip("the run finished before it could be interrupted (machine too fast for this probe)")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Interrupted. Finished work is kept in" in err
    assert (out / "report.md").exists() and not (_exp_dir(out) / "result.json").exists()
    finished = _checkpoints(out)
    assert finished >= 2  # the checkpointed checks are kept
    lines = err.splitlines()
    resume = shlex.split(lines[next(i for i, l in enumerate(lines) if "Resume with:" in l) + 1])
    assert resume[:2] == ["mlxinterp", "run-suite"] and resume[resume.index("--out") + 1] == str(out)
    r = subprocess.run(cli + resume[1:], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert _bytes_without_timings(out) == _bytes_without_timings(reference)
    assert _record(out)["timings"]["maps"]["checks"]["reloaded"] == finished

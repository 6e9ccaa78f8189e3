"""Real-model scripts that run in a second process while the in-process tests run.

The tutorial, the docs' code blocks, the `--help` examples and the notebook each run as a user runs them: a
fresh Python process that loads the default model and computes for up to a minute or two (and the determinism
test's three suite runs are processes too). The in-process
tests keep about one of the CI machine's two cores busy (small tiny-model forwards), so these scripts are
queued when collection ends (tests/conftest.py) and run one at a time, in test order, on the other core. The
tests that check a script's output run last (`checks_last`), by when their jobs are usually done; such a test
waits for its job otherwise. A job nobody queued (pytest-xdist workers queue nothing)
starts when its test asks for it, so no result depends on the queue.

Jobs see OPENBLAS_NUM_THREADS=1: one core is their share, and a second OpenBLAS thread would only contend
with the in-process tests for the other.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable


@dataclass
class Job:
    """A command to run in its own empty directory; `after` names jobs whose directory it needs (in `prepare`)."""

    name: str
    argv: list[str]
    env: dict = field(default_factory=dict)
    timeout: float = 900
    real: bool = False  # needs the real default model: not queued when MLXINTERP_SKIP_REAL is set
    after: tuple[str, ...] = ()
    prepare: Callable[[Path, dict], None] | None = None  # (cwd, {name: Done of each `after` job}) -> None


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    cwd: Path


# A test that waits for its job may wait for the jobs queued before it too: its pytest-timeout covers the
# queue (each job still stops at its own `timeout`); pyproject's 600 s would fail a test whose job is fine.
WAIT_TIMEOUT = 3600
_DIRS: list[Path] = []  # the session's job directories' parent, made on first use
_JOBS: dict[str, Job] = {}
_DONE: dict[str, Done] = {}
_FINISHED: dict[str, threading.Event] = {}
_QUEUE: list[str] = []
_CLAIMED: set[str] = set()  # jobs that a thread has started (or finished)
_LOCK = threading.Lock()
_RUNNING: list[subprocess.Popen] = []
_STOP = threading.Event()


def define(job: Job) -> Job:
    """Register a job (idempotent): test modules call this at import time."""
    with _LOCK:
        _JOBS.setdefault(job.name, job)
        _FINISHED.setdefault(job.name, threading.Event())
    return job


def _run(name: str) -> Done:
    job = _JOBS[name]
    deps = {d: result(d) for d in job.after}
    with _LOCK:
        if not _DIRS:
            _DIRS.append(Path(tempfile.mkdtemp(prefix="mlxinterp-bg-")))
    cwd = _DIRS[0] / name
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning", "OPENBLAS_NUM_THREADS": "1", **job.env}
    t0 = time.perf_counter()
    try:
        cwd.mkdir()
        if job.prepare is not None:
            job.prepare(cwd, deps)
        proc = subprocess.Popen(job.argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        _RUNNING.append(proc)
        try:
            out, err = proc.communicate(timeout=job.timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            out, err = proc.communicate()
            err += f"\n[background] {name}: killed after {job.timeout:.0f} s"
        finally:
            _RUNNING.remove(proc)
        done = Done(proc.returncode, out, err, time.perf_counter() - t0, cwd)
    except Exception as e:  # a failed prepare (e.g. a dependency's output missing) is that job's failure
        done = Done(-1, "", f"[background] {name}: {type(e).__name__}: {e}", time.perf_counter() - t0, cwd)
    _DONE[name] = done
    _FINISHED[name].set()
    return done


def _kill(proc: subprocess.Popen) -> None:
    """The job and what it started (suite runs, a Jupyter kernel): its own process group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _claim(name: str) -> bool:
    """True for exactly one caller: the one that runs the job."""
    with _LOCK:
        if name in _CLAIMED:
            return False
        _CLAIMED.add(name)
        return True


def _worker() -> None:
    while not _STOP.is_set():
        with _LOCK:
            name = _QUEUE.pop(0) if _QUEUE else None
        if name is None:
            return
        if _claim(name):
            _run(name)


def start(names: list[str]) -> None:
    """Queue these jobs (and the jobs they need first) on one background thread, in this order."""
    order: list[str] = []

    def add(n: str) -> None:
        for d in _JOBS[n].after:
            add(d)
        if n not in order:
            order.append(n)

    for n in names:
        add(n)
    if not order:
        return
    with _LOCK:
        _QUEUE.extend(order)
    threading.Thread(target=_worker, name="background-jobs", daemon=True).start()


def result(name: str) -> Done:
    """The finished job: waits for it if queued, else runs it now in this thread."""
    if _claim(name):
        return _run(name)
    _FINISHED[name].wait()
    return _DONE[name]


def checks_last(items: list) -> None:
    """Move the tests that read a job to the end of the run (in place, order otherwise kept): the in-process
    tests run first while the queue works, so the readers find their jobs finished instead of waiting."""
    items[:] = [i for i in items if not i.get_closest_marker("background")] + \
               [i for i in items if i.get_closest_marker("background")]


def queue_for(items) -> None:
    """Queue the jobs that the selected tests name with @pytest.mark.background(name)."""
    names = []
    for item in items:
        for mark in item.iter_markers("background"):
            if mark.args[0] not in names:
                names.append(mark.args[0])
    skip_real = bool(os.environ.get("MLXINTERP_SKIP_REAL"))
    start([n for n in names if n in _JOBS and not (skip_real and _JOBS[n].real)])


def stop() -> None:
    """Session end: kill what still runs and remove the jobs' directories."""
    _STOP.set()
    for proc in list(_RUNNING):
        _kill(proc)
    for d in _DIRS:
        shutil.rmtree(d, ignore_errors=True)


def python(*args: str) -> list[str]:
    """argv running this interpreter (the venv's: OpenBLAS preloaded as for the tests)."""
    return [sys.executable, *args]


# The tutorial (docs/tutorial.md as examples/tutorial.py), in an empty directory: tests/test_docs.py checks what
# it prints and writes; the `--help` examples run in a copy of what it leaves (tests/test_help_examples.py).
TUTORIAL = define(Job("tutorial", python(str(Path(__file__).resolve().parent.parent / "examples" / "tutorial.py")),
                      timeout=900, real=True))

"""Real-model scripts that run in a second process while the in-process tests run.

The tutorial, the docs' code blocks, the `--help` examples and the notebook each run as a user runs them: a
fresh Python process that loads the default model and computes for up to a minute or two (and the determinism
test's three suite runs are processes too). The in-process
tests keep about one of the CI machine's two cores busy (small tiny-model forwards), so these scripts are
queued when collection ends (tests/conftest.py) and run two at a time (LANES), in test order, beside them. The
tests that check a script's output run last (`checks_last`), by when their jobs are usually done; such a test
waits for its job otherwise. A job nobody queued (pytest-xdist workers queue nothing)
starts when its test asks for it, so no result depends on the queue.

Jobs see OPENBLAS_NUM_THREADS=1: one core is their share, and a second OpenBLAS thread would only contend
with the in-process tests for the other.

Tests marked @pytest.mark.offload (they mostly wait on processes of their own: mlx.launch ranks, killed and
resumed suite runs) run unchanged in a second pytest process, itself one job (`offload`): in this session each
is replaced by a stand-in that reports that process's outcome for it (passed, failed with its report, skipped,
xfailed), among the tests that run last. When only offloaded tests are selected there is nothing to run
beside them, and they run here as usual.
"""
from __future__ import annotations

import json
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

import pytest


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
    started: float = 0.0  # seconds after this module was imported (the session's start, near enough)


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
# Jobs running at once. Most of a job's time is spent waiting on processes it started (suite runs, ranks, a
# kernel, pip), so two lanes beside the in-process tests keep both cores busy where one lane left gaps.
LANES = 2
_T0 = time.perf_counter()
_LANES: list[threading.Thread] = []


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
        done = Done(proc.returncode, out, err, time.perf_counter() - t0, cwd, t0 - _T0)
    except Exception as e:  # a failed prepare (e.g. a dependency's output missing) is that job's failure
        done = Done(-1, "", f"[background] {name}: {type(e).__name__}: {e}", time.perf_counter() - t0, cwd, t0 - _T0)
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
    """Queue these jobs (and the jobs they need first), in this order, for the LANES background threads."""
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
        _LANES[:] = [t for t in _LANES if t.is_alive()]
        for _ in range(LANES - len(_LANES)):
            _LANES.append(threading.Thread(target=_worker, name="background-jobs", daemon=True))
            _LANES[-1].start()


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


def elapsed() -> float:
    return time.perf_counter() - _T0


def timeline() -> list[str]:
    """A line per finished job (start, seconds, name), in start order: where the run's wall time went."""
    done = sorted(_DONE.items(), key=lambda kv: kv[1].started)
    return [f"{d.started:7.1f} s +{d.seconds:6.1f} s  {n}" for n, d in done]


def stop() -> None:
    """Session end: kill what still runs and remove the jobs' directories."""
    _STOP.set()
    for proc in list(_RUNNING):
        _kill(proc)
    for d in _DIRS:
        shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------ offloaded tests

OFFLOAD_JOB = "offload"
OFFLOAD_ENV = "MLXINTERP_OFFLOAD_OUTCOMES"  # set in the second pytest process: where it records the outcomes
_OUTCOMES: dict[str, dict] = {}
# Markers a stand-in keeps: selection (-m) and the slow-test announcement. Skips and xfails happen in the
# second process and come back as its outcome.
_KEPT_MARKS = {"slow", "real", "cached", "bench"}


class OffloadedFailure(Exception):
    """The offloaded test failed in the second pytest process; the message is its report there."""


class Offloaded(pytest.Item):
    """Stands in for a test that runs in the second pytest process: reports the outcome it had there."""

    def runtest(self) -> None:
        done = result(OFFLOAD_JOB)
        path = done.cwd / "outcomes.json"
        outcome = json.loads(path.read_text()).get(self.nodeid) if path.exists() else None
        if outcome is None:
            raise OffloadedFailure(f"the second pytest process did not report this test (exit {done.returncode})\n"
                                   f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        if outcome["outcome"] == "failed":
            raise OffloadedFailure(outcome["text"])
        if outcome["outcome"] == "skipped":
            # reported at the test's own line, as a skip mark's reason is
            raise pytest.skip.Exception(outcome["text"].removeprefix("Skipped: "), _use_item_location=True)
        if outcome["outcome"] == "xfailed":
            pytest.xfail(outcome["text"])

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, OffloadedFailure):
            return f"[run in the second pytest process (tests/background.py)]\n{excinfo.value}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.where


def offload(config, items: list) -> None:
    """Replace the @pytest.mark.offload tests (in place) by stand-ins, and define the job that runs them in a
    second pytest process. Not in that process, nor in pytest-xdist workers, nor when nothing else runs."""
    marked = [i for i in items if i.get_closest_marker("offload")]
    if (not marked or len(marked) == len(items) or os.environ.get(OFFLOAD_ENV)
            or os.environ.get("PYTEST_XDIST_WORKER") or config.option.collectonly):
        return
    root = config.rootpath
    argv = python("-m", "pytest", "-q", "-p", "no:cacheprovider", f"--rootdir={root}",
                  *(["-c", str(config.inipath)] if config.inipath else []), *(str(root / i.nodeid) for i in marked))
    define(Job(OFFLOAD_JOB, argv, env={OFFLOAD_ENV: "outcomes.json"}, timeout=1800))
    for k, item in enumerate(items):
        if item.get_closest_marker("offload"):
            stand_in = Offloaded.from_parent(item.parent, name=item.name)
            stand_in.where = item.reportinfo()  # the test's own file and line in reports
            stand_in.own_markers.extend(m for m in item.iter_markers() if m.name in _KEPT_MARKS)
            stand_in.own_markers += [pytest.mark.background(OFFLOAD_JOB).mark, pytest.mark.timeout(WAIT_TIMEOUT).mark]
            items[k] = stand_in


def record_outcome(report) -> None:
    """In the second pytest process: fold each phase's report into its test's outcome, in OFFLOAD_ENV's file."""
    path = os.environ.get(OFFLOAD_ENV)
    if not path:
        return
    o = _OUTCOMES.setdefault(report.nodeid, {"outcome": "passed", "text": ""})
    if report.failed:
        o["outcome"] = "failed"
        o["text"] += f"({report.when}) {report.longreprtext}\n"
    elif report.skipped and o["outcome"] != "failed":
        o["outcome"] = "xfailed" if hasattr(report, "wasxfail") else "skipped"
        o["text"] = report.wasxfail if hasattr(report, "wasxfail") else \
            (report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr))
    Path(path).write_text(json.dumps(_OUTCOMES))


def python(*args: str) -> list[str]:
    """argv running this interpreter (the venv's: OpenBLAS preloaded as for the tests)."""
    return [sys.executable, *args]


# The tutorial (docs/tutorial.md as examples/tutorial.py), in an empty directory: tests/test_docs.py checks what
# it prints and writes; the `--help` examples run in a copy of what it leaves (tests/test_help_examples.py).
TUTORIAL = define(Job("tutorial", python(str(Path(__file__).resolve().parent.parent / "examples" / "tutorial.py")),
                      timeout=900, real=True))

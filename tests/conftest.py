"""Shared fixtures: tiny checkpoints of every architecture, and the real default model."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import background  # noqa: E402
import tiny  # noqa: E402

VARIANTS = [(arch, bits) for arch in tiny.ARCHS for bits in (None, 4)]
VARIANT_IDS = [f"{a}-{'4bit' if b else 'float'}" for a, b in VARIANTS]


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict:
    """(arch, bits) -> path of a tiny mlx-lm checkpoint, written once per session."""
    root = tmp_path_factory.mktemp("tiny")
    return {(a, b): tiny.write_tiny_model(root / f"{a}-{b or 'f'}", a, b) for a, b in VARIANTS}


@pytest.fixture(scope="session")
def more_dirs(tmp_path_factory) -> dict:
    """(arch, bits) -> path of a tiny checkpoint of every further family (tiny.MORE_ARCHS), float and 4-bit."""
    root = tmp_path_factory.mktemp("tiny-more")
    return {(a, b): tiny.write_tiny_model(root / f"{a}-{b or 'f'}", a, b) for a in tiny.MORE_ARCHS for b in (None, 4)}


@pytest.fixture(scope="session")
def tiny_hooked(tiny_dirs):
    """(arch, bits) -> HookedModel, loaded as stored (quantized stays quantized)."""
    from mlxinterp.core.hooks import load

    cache: dict = {}

    def get(arch: str, bits: int | None):
        if (arch, bits) not in cache:
            cache[(arch, bits)] = load(str(tiny_dirs[(arch, bits)]), dtype="native")
        return cache[(arch, bits)]

    return get


@pytest.fixture(params=VARIANTS, ids=VARIANT_IDS)
def hm(request, tiny_hooked):
    return tiny_hooked(*request.param)


@pytest.fixture(scope="session")
def real_hm():
    """The real default model (Gemma 3 270M), imported once from its PyPI package."""
    if os.environ.get("MLXINTERP_SKIP_REAL"):
        pytest.skip("MLXINTERP_SKIP_REAL is set")
    from mlxinterp.core.hooks import load

    return load("default")


_SLOW_TESTS: dict = {}  # nodeid -> the terminal reporter, for tests marked slow or real


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: only selected tests are offloaded
def pytest_collection_modifyitems(config, items):
    """Remember the slow and real-model tests (minutes each): pytest_runtest_logstart announces them.
    Offloaded tests get their stand-ins, and the tests that read a background job (tests/background.py) go last."""
    background.offload(config, items)
    background.checks_last(items)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or config.getoption("verbose") > 0:  # -v already prints each test as it starts
        return
    for item in items:
        if {"slow", "real"} & {m.name for m in item.iter_markers()}:
            _SLOW_TESTS[item.nodeid] = reporter


def pytest_runtest_logstart(nodeid, location):
    """A line when a slow test starts, outside output capture, so a quiet run is visibly alive."""
    reporter = _SLOW_TESTS.get(nodeid)
    if reporter is not None:
        import time

        reporter.ensure_newline()
        reporter.write_line(f"{time.strftime('%H:%M:%S')} started {nodeid} (slow)")


def pytest_collection_finish(session):
    """Start the real-model scripts the selected tests check (tests/background.py), beside the in-process tests."""
    if not session.config.option.collectonly and not os.environ.get("PYTEST_XDIST_WORKER"):
        background.queue_for(session.items)


def pytest_runtest_logreport(report):
    background.record_outcome(report)  # only in the second pytest process that runs offloaded tests


def pytest_terminal_summary(terminalreporter):
    """When each background job started and how long it took, after the durations: the run's critical path."""
    lines = background.timeline()
    if lines:
        terminalreporter.write_sep("=", f"background jobs (start, seconds; the session is at {background.elapsed():.1f} s)")
        for line in lines:
            terminalreporter.write_line(line)


def pytest_sessionfinish(session):
    background.stop()

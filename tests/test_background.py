"""tests/background.py: queued jobs run once, dependencies first, and a failure reaches the test that reads it."""
from __future__ import annotations

import background as B


def test_a_job_runs_once_after_what_it_needs_and_failures_are_reported():
    B.define(B.Job("selftest-a", B.python("-c", "print('a')")))
    B.define(B.Job("selftest-b", B.python("-c", "import os; print(sorted(os.listdir('.')))"), after=("selftest-a",),
                   prepare=lambda cwd, deps: (cwd / "from-a").write_text(deps["selftest-a"].stdout)))
    B.start(["selftest-b"])  # queues selftest-a first
    b = B.result("selftest-b")
    assert b.returncode == 0 and b.stdout == "['from-a']\n" and (b.cwd / "from-a").read_text() == "a\n"
    assert B.result("selftest-a") is B.result("selftest-a")  # ran once: the same Done every time

    B.define(B.Job("selftest-fails", B.python("-c", "import sys; sys.exit('no')")))
    B.define(B.Job("selftest-bad-prepare", B.python("-c", "pass"), prepare=lambda cwd, deps: 1 / 0))
    failed, bad = B.result("selftest-fails"), B.result("selftest-bad-prepare")  # not queued: run on demand
    assert failed.returncode == 1 and "no" in failed.stderr
    assert bad.returncode == -1 and "ZeroDivisionError" in bad.stderr

"""Crash-safe files: atomic writes survive a full disk, checkpoints survive a torn line, locks name their holder."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mlxinterp.core import io  # noqa: E402
from mlxinterp.core.errors import ResultsError  # noqa: E402


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_dumps_is_deterministic_and_nulls_nan_with_a_note():
    a = io.dumps({"b": np.float32(0.5), "a": (1, np.int64(2)), "c": {"x": float("nan"), "y": np.array([1.0, np.inf])}})
    b = io.dumps({"c": {"y": [1.0, float("inf")], "x": float("nan")}, "a": [1, 2], "b": 0.5})
    assert a == b
    data = json.loads(a)
    assert list(data) == sorted(data)
    assert data["c"] == {"x": None, "y": [1.0, None]}
    assert data[io.NONFINITE_NOTE_KEY] == ["$.c.x: nan", "$.c.y[1]: inf"]
    assert io.dumps({"f": 0.1 + 0.2}) == '{\n  "f": 0.30000000000000004\n}\n'  # floats as is


def test_normalize_matches_a_checkpoint_round_trip():
    value = {"t": (1, np.float64(2.5)), "nan": float("nan")}
    out = io.normalize(value)
    assert out["t"] == [1, 2.5] and np.isnan(out["nan"])


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "r.json"
    io.write_json(path, {"v": 1})
    io.write_json(path, {"v": 2})
    assert io.read_json(path) == {"v": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]


@pytest.mark.parametrize("victim", ["write", "fsync", "replace"])
def test_disk_full_leaves_previous_file_intact(tmp_path, monkeypatch, victim):
    path = tmp_path / "result.json"
    io.write_json(path, {"v": "old"})
    monkeypatch.setattr(os, victim, _enospc)
    with pytest.raises(ResultsError, match="disk full") as err:
        io.write_json(path, {"v": "new" * 1000})
    monkeypatch.undo()
    assert str(path) in str(err.value)
    assert io.read_json(path) == {"v": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]  # no temp file left


def test_disk_full_while_saving_a_figure(tmp_path, monkeypatch):
    path = tmp_path / "curve.png"
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3])
    io.save_figure(path, fig)
    before = path.read_bytes()
    monkeypatch.setattr(os, "write", _enospc)
    with pytest.raises(ResultsError, match="curve.png"):
        io.save_figure(path, fig)
    monkeypatch.undo()
    plt.close(fig)
    assert path.read_bytes() == before and before.startswith(b"\x89PNG")


def test_jsonl_torn_last_line_is_ignored_and_cut_before_appending(tmp_path):
    path = tmp_path / "k.jsonl"
    with io.JsonlAppender(path) as sink:
        sink.append({"i": 0})
        sink.append({"i": 1})
    with open(path, "ab") as f:
        f.write(b'{"i": 2, "r": [1, 2')  # a kill mid-append
    records, intact = io.read_jsonl(path)
    assert records == [{"i": 0}, {"i": 1}] and intact < path.stat().st_size
    with io.JsonlAppender(path, keep_bytes=intact) as sink:
        sink.append({"i": 2})
    assert io.read_jsonl(path)[0] == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_jsonl_append_on_full_disk_rolls_back(tmp_path, monkeypatch):
    path = tmp_path / "k.jsonl"
    sink = io.JsonlAppender(path)
    sink.append({"i": 0})
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data)[:5]) and _enospc())
    with pytest.raises(ResultsError, match="k.jsonl"):
        sink.append({"i": 1, "r": "x" * 100})
    monkeypatch.undo()
    sink.append({"i": 2})
    sink.close()
    assert io.read_jsonl(path) == ([{"i": 0}, {"i": 2}], path.stat().st_size)


def test_ctrl_c_after_a_whole_line_keeps_it_and_one_mid_line_cuts_it(tmp_path, monkeypatch):
    """A finished item must survive Ctrl-C in fsync; a half-written line must not (BUGFIX.md)."""
    path = tmp_path / "k.jsonl"
    sink = io.JsonlAppender(path)
    sink.append({"i": 0})

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        sink.append({"i": 1})
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data)[:5]) and interrupt())
    with pytest.raises(KeyboardInterrupt):
        sink.append({"i": 2})
    monkeypatch.undo()
    sink.append({"i": 3})
    sink.close()
    assert io.read_jsonl(path) == ([{"i": 0}, {"i": 1}, {"i": 3}], path.stat().st_size)


def test_lock_conflict_names_lock_file_and_pid(tmp_path):
    with io.DirLock(tmp_path):
        with pytest.raises(ResultsError) as err:
            io.DirLock(tmp_path).acquire()
    msg = str(err.value)
    assert str(tmp_path / ".lock") in msg and f"process {os.getpid()}" in msg
    io.DirLock(tmp_path).acquire().release()  # free again after release


def test_stale_lock_of_a_killed_process_does_not_block(tmp_path):
    code = ("import sys, time; from mlxinterp.core.io import DirLock; DirLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ResultsError, match=f"held by process {holder.pid}"):
            io.DirLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / ".lock").read_text().strip() == str(holder.pid)  # the stale file is still there
    deadline = time.time() + 5
    lock = io.DirLock(tmp_path).acquire()  # ...but does not block
    assert time.time() < deadline
    lock.release()


def test_atomic_files_get_normal_permissions(tmp_path):
    import stat

    from mlxinterp.core.io import write_json

    path = write_json(tmp_path / "r.json", {"a": 1})
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode & 0o044  # readable by group/others under a normal umask, unlike mkstemp's 0600

"""Crash-safe files for the results directory.

A suite runs for hours and may be killed at any instant (Ctrl-C, OOM killer,
a laptop lid). Every file it writes must therefore be either the old version
or the complete new one, never a torn mix: whole files go through a temp file
in the same directory, fsync, then os.replace (atomic on POSIX). Checkpoints
are append-only JSONL, one fsynced line per finished item, whose torn last
line (a kill mid-append) is simply ignored on reload.

A write that fails (disk full, read-only mount) leaves the previous file
intact and raises ResultsError naming the path, not a bare OSError.
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from mlxinterp.core.errors import ResultsError

NONFINITE_NOTE_KEY = "nonfinite_as_null"
_TMP_PREFIX = ".tmp-"


# ----------------------------------------------------------------- JSON values


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types from numpy/mlx scalars and arrays, tuples, paths, dataclasses.

    Keys become strings so `sort_keys` never meets mixed key types. NaN and
    infinities are kept here; `dumps` decides what to do with them.
    """
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(to_jsonable(v) for v in obj)
    if callable(getattr(obj, "to_dict", None)) and not isinstance(obj, type):  # e.g. stats.Interval
        return to_jsonable(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy / mlx arrays and scalars
        return to_jsonable(obj.tolist())
    if hasattr(obj, "item"):
        return to_jsonable(obj.item())
    raise ResultsError(f"cannot store a {type(obj).__name__} in JSON: {obj!r:.80}",
                       hint="return plain numbers, strings, lists, dicts or numpy arrays")


def _null_nonfinite(obj: Any, where: str, notes: list[str]) -> Any:
    """Replace NaN/inf by None, recording each JSON path, because strict JSON has neither."""
    if isinstance(obj, float) and not math.isfinite(obj):
        notes.append(f"{where}: {obj}")
        return None
    if isinstance(obj, dict):
        return {k: _null_nonfinite(v, f"{where}.{k}", notes) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_null_nonfinite(v, f"{where}[{i}]", notes) for i, v in enumerate(obj)]
    return obj


def dumps(obj: Any) -> str:
    """Deterministic strict JSON: sorted keys, floats as Python repr, NaN/inf -> null.

    When something was nulled and the top level is a dict, the paths go under
    NONFINITE_NOTE_KEY so a reader can tell "missing" from "was NaN".
    """
    notes: list[str] = []
    clean = _null_nonfinite(to_jsonable(obj), "$", notes)
    if notes and isinstance(clean, dict):
        clean[NONFINITE_NOTE_KEY] = sorted(notes)
    return json.dumps(clean, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def normalize(obj: Any) -> Any:
    """The value as it will read back from a checkpoint (tuples -> lists, numpy -> float).

    Results of fresh and reloaded items go through this, so a resumed run and
    an uninterrupted one produce byte-identical JSON. NaN survives (the JSONL
    checkpoint allows it); only the final write turns it into null.
    """
    return json.loads(json.dumps(to_jsonable(obj)))


# ------------------------------------------------------------- atomic writes


def _write_all(fd: int, data: bytes) -> None:
    """os.write until everything is written (it may write less than asked)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fail(path: Path, exc: OSError) -> ResultsError:
    """One clear message for any OSError while writing `path`."""
    reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return ResultsError(f"could not write {path}: {reason} ({exc.__class__.__name__}: {exc})",
                        hint="the previous version of the file, if any, was left intact; "
                             "free space or choose another --out, then resume")


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable; some filesystems refuse, which is harmless."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` so that readers see the old file or the new one, never a torn one."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{path.name}.", dir=path.parent)
    except OSError as exc:
        raise _fail(path, exc) from exc
    try:
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise _fail(path, exc) from exc
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _unlink_quietly(path: str | os.PathLike) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text, atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Deterministic JSON (see `dumps`), atomically."""
    return atomic_write_text(path, dumps(obj))


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; ResultsError (naming the file) when it is unreadable or corrupt."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsError(f"cannot read {path}: {exc}") from exc


def save_figure(path: str | os.PathLike, fig: Any, dpi: int = 150) -> Path:
    """Render a matplotlib figure to PNG in memory, then write it atomically.

    Metadata that varies between runs is dropped so reruns give identical bytes.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return atomic_write_bytes(path, buf.getvalue())


def remove_stale_temps(directory: str | os.PathLike) -> None:
    """Delete temp files a killed process left behind in `directory`."""
    for tmp in Path(directory).glob(f"{_TMP_PREFIX}*"):
        _unlink_quietly(tmp)


# ------------------------------------------------------------ JSONL checkpoints


@dataclasses.dataclass
class JsonlScan:
    """What an append-only JSONL file holds.

    records/lines: every complete line that parses, with its 1-based line number;
    bad_lines: complete lines that do not parse (damaged in place: a disk error,
    an editor); good: the bytes of each parseable line, to rewrite the file
    without the bad ones; intact: the byte length of all complete lines (a torn
    last line, from a kill mid-append, is excluded).
    """

    records: list[Any]
    lines: list[int]
    bad_lines: list[int]
    good: list[bytes]
    intact: int


def scan_jsonl(path: str | os.PathLike) -> JsonlScan:
    """Read a JSONL checkpoint, keeping every valid line even when one in the middle is corrupt."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return JsonlScan([], [], [], [], 0)
    except OSError as exc:
        raise ResultsError(f"cannot read {path}: {exc.strerror or exc}") from exc
    records, lines, bad, good, intact = [], [], [], [], 0
    *complete, _torn = data.split(b"\n")  # only "\n" ends a record ("\r" may sit inside a damaged one)
    for number, line in enumerate(complete, start=1):
        line += b"\n"
        intact += len(line)
        try:
            records.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            bad.append(number)
            continue
        lines.append(number)
        good.append(line)
    return JsonlScan(records, lines, bad, good, intact)


def read_jsonl(path: str | os.PathLike) -> tuple[list[Any], int]:
    """Records of an append-only JSONL file and the byte length of its complete lines.

    A kill mid-append leaves a last line without its newline (or with half a
    record): it is dropped, and the caller truncates to the intact length before
    appending again. A corrupt line in the middle is skipped (scan_jsonl reports it).
    """
    scan = scan_jsonl(path)
    return scan.records, scan.intact


class JsonlAppender:
    """Append one fsynced JSON line per record; a failed append is rolled back."""

    def __init__(self, path: str | os.PathLike, keep_bytes: int = 0):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
            os.ftruncate(self._fd, keep_bytes)
            os.lseek(self._fd, keep_bytes, os.SEEK_SET)
        except OSError as exc:
            raise _fail(self.path, exc) from exc
        self._size = keep_bytes

    def append(self, record: Any) -> None:
        """Write one line and fsync, so a finished item survives a kill right after."""
        line = (json.dumps(to_jsonable(record), sort_keys=True) + "\n").encode("utf-8")
        try:
            _write_all(self._fd, line)
            os.fsync(self._fd)
        except BaseException as exc:  # also Ctrl-C between partial writes
            if not isinstance(exc, OSError) and self._written(len(line)):
                self._size += len(line)  # Ctrl-C after the whole line was written (e.g. in fsync): keep it
                raise
            self._rollback()
            if isinstance(exc, OSError):
                raise _fail(self.path, exc) from exc
            raise
        self._size += len(line)

    def _written(self, n: int) -> bool:
        """Whether the file already holds the whole new line of `n` bytes."""
        try:
            return os.fstat(self._fd).st_size == self._size + n
        except OSError:
            return False

    def _rollback(self) -> None:
        """Cut a half-written line so the file stays a clean sequence of records."""
        try:
            os.ftruncate(self._fd, self._size)
            os.lseek(self._fd, self._size, os.SEEK_SET)
        except OSError:
            pass

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -------------------------------------------------------------------- locking


class DirLock:
    """An exclusive flock on `<dir>/.lock`, holding the owner's PID for error messages.

    The kernel drops a flock when its process dies, so a lock file left by a
    killed run never blocks the next one; only a live holder does.
    """

    def __init__(self, directory: str | os.PathLike, name: str = ".lock"):
        self.path = Path(directory) / name
        self._fd = -1

    def acquire(self) -> "DirLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ResultsError(f"results directory {self.path.parent} is not writable "
                               f"({exc.strerror or exc}: could not create {self.path})",
                               hint="choose a writable directory (--out); it is created if missing") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._busy() from None
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            _write_all(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the lock holds anyway; only the PID in messages is lost
        return self

    def _busy(self) -> ResultsError:
        holder = self.holder_pid()
        who = f"process {holder}" if holder else "another process"
        return ResultsError(
            f"{self.path.parent} is in use: lock file {self.path} is held by {who}",
            hint="wait for that run to finish (or stop it), or write to another --out")

    def holder_pid(self) -> int | None:
        """PID written by the current (or last) holder, if readable."""
        try:
            return int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

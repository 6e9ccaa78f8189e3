"""Several processes (or Macs) running one suite, over MLX's own `mx.distributed`.

Launched by `mlx.launch -n N ... python -m mlxinterp run-suite ...` (ring backend
over TCP; MPI where installed), every rank loads the same model and runs the same
experiment code; `suite.Context.map` hands each rank every N-th unfinished item,
gathers the results of each round on every rank and lets rank 0 alone write
checkpoints, results, figures and the report. The experiment code after a map
sees the same item results, in the same order, on every rank, so the JSON equals
a single-process run's (timings aside).

Transport: results travel as JSON text. `all_gather` needs equal shapes on every
rank, so each round first gathers the byte lengths, then the payloads padded to
the longest one; both are uint8/int32 arrays over `mx.distributed.all_gather`
(always on the CPU stream: it is a few kilobytes, and the ring backend is CPU-only).

Without a launcher every call here is a no-op (`World(rank=0, size=1)`), so
nothing changes for a plain `mlxinterp run-suite`.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from mlxinterp.core.errors import MlxInterpError

# Set by mlx.launch (ring, jaccl, nccl), or by mpirun (MPI).
LAUNCH_VARS = ("MLX_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
# mlx.launch kills every rank as soon as one exits with an error; a failing rank > 0 waits
# this long first, so rank 0 can regenerate the report and print how to resume.
LINGER_SECONDS = 5.0


class DistributedError(MlxInterpError):
    """A rank failed, or the ranks disagree; every rank stops with the same message."""


@dataclass
class World:
    """This process's place among the ranks; size 1 (and no group) when not launched."""

    rank: int = 0
    size: int = 1
    group: Any = None
    # False under layer sharding (`run-suite --shard layers`): the ranks hold different layers of one model,
    # so every forward needs all of them and every rank computes every item together.
    split_items: bool = True

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def workers(self) -> int:
        """How many items run at once, one per rank (1 when the ranks share each forward)."""
        return self.size if self.split_items else 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def all_gather_bytes(self, data: bytes) -> list[bytes]:
        """Every rank's `data`, in rank order, on every rank."""
        if not self.distributed:
            return [data]
        import mlx.core as mx  # here, not at the top: a single-process run never needs mx.distributed

        lengths = mx.distributed.all_gather(mx.array([len(data)], dtype=mx.int32), group=self.group,
                                            stream=mx.cpu).tolist()
        width = max(max(lengths), 1)
        padded = mx.array(list(data.ljust(width, b"\0")), dtype=mx.uint8)
        flat = bytes(mx.distributed.all_gather(padded, group=self.group, stream=mx.cpu).tolist())
        return [flat[r * width : r * width + n] for r, n in enumerate(lengths)]

    def all_gather_json(self, obj: Any) -> list[Any]:
        """Every rank's JSON-able `obj` (NaN allowed), in rank order, on every rank."""
        return [json.loads(b) for b in self.all_gather_bytes(json.dumps(obj).encode())]

    def broadcast_json(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (what the others pass is ignored)."""
        return self.all_gather_json(obj if self.is_root else None)[0]

    def decide(self, fn: Callable[[], Any], tag: str = "") -> Any:
        """Run `fn` on rank 0 only and give its JSON-able result to every rank.

        Every rank must reach this call with the same `tag` (where it is in the
        run); ranks whose code took different paths (e.g. one read a file the
        other cannot see) stop with a DistributedError naming both places,
        instead of pairing the wrong collectives. When `fn` raises on rank 0,
        rank 0 re-raises and every other rank raises a DistributedError with the
        same message, instead of waiting forever.
        """
        value, error, exc = None, None, None
        if self.is_root:
            try:
                value = fn()
            except Exception as e:  # noqa: BLE001 - handed to every rank below
                exc, error = e, f"{type(e).__name__}: {e}"
        if not self.distributed:
            if exc is not None:
                raise exc
            return value
        msgs = self.all_gather_json({"tag": tag, "value": value, "error": error})
        if exc is not None:
            raise exc
        if msgs[0]["error"] is not None:
            linger(self)
            raise DistributedError(f"rank 0 stopped: {msgs[0]['error']}")
        apart = [(r, m["tag"]) for r, m in enumerate(msgs) if m["tag"] != msgs[0]["tag"]]
        if apart:
            where = "; ".join(f"rank {r} at {t!r}" for r, t in apart)
            linger(self)
            raise DistributedError(f"the ranks diverged: rank 0 at {msgs[0]['tag']!r}; {where}",
                                   hint="an experiment took a different path on some rank, e.g. it read a file "
                                        "that only rank 0 can see; give every rank the same inputs")
        return msgs[0]["value"]


def launched() -> bool:
    """True when a launcher started this process as one of several ranks."""
    return any(os.environ.get(v) for v in LAUNCH_VARS)


@lru_cache(maxsize=1)
def world() -> World:
    """The World of this process; initializes mx.distributed once when launched."""
    if not launched() or _single_host_ring():
        return World()
    import mlx.core as mx  # only under mlx.launch: the suite imports without MLX otherwise

    try:
        group = mx.distributed.init(strict=True)
    except (RuntimeError, ValueError) as e:
        raise DistributedError(f"launched as a distributed rank ({_launch_env()}) but mx.distributed "
                               f"could not start: {e}",
                               hint="run through `mlx.launch -n N --backend ring <python> -m mlxinterp ...`, "
                                    "or unset MLX_RANK for a single process") from e
    return World(group.rank(), group.size(), group if group.size() > 1 else None)


def _single_host_ring() -> bool:
    """`mlx.launch -n 1` hands the ring backend an empty hostfile, which MLX cannot parse: one process."""
    path = os.environ.get("MLX_HOSTFILE")
    if not (os.environ.get("MLX_RANK") and path):
        return False
    try:
        return not open(path).read().strip()
    except OSError:
        return False


def _launch_env() -> str:
    return ", ".join(f"{v}={os.environ[v]}" for v in LAUNCH_VARS if os.environ.get(v))


def rounds(indices: list[int], size: int) -> list[list[int]]:
    """`indices` cut into rounds of `size`: in round k, rank r computes indices[k * size + r]."""
    return [indices[k : k + size] for k in range(0, len(indices), size)]


def run_round(world: World, round_: list[int], compute: Callable[[int], Any]) -> list[tuple[int, Any]]:
    """Each rank computes its index of the round; every rank gets every (index, result) in order.

    A rank whose item raised reports it; then every rank raises, so no rank waits
    on a collective that will never come: rank 0 its own exception when the item
    was its own (as a single process would), else a DistributedError naming the
    item, the rank and its traceback; ranks > 0 linger first so rank 0 can report.
    """
    if not world.split_items:  # layer sharding: every rank ran every item's forwards with the others
        return [(i, compute(i)) for i in round_]
    mine = round_[world.rank] if world.rank < len(round_) else None
    payload, exc = None, None
    if mine is not None:
        if not world.distributed:
            return [(mine, compute(mine))]
        try:
            payload = {"i": mine, "r": compute(mine)}
        except Exception as e:  # noqa: BLE001 - reported to every rank below
            exc = e
            payload = {"i": mine, "error": f"{type(e).__name__}: {e}", "where": traceback.format_exc(limit=4)}
            sys.stderr.write(f"[rank {world.rank}] item {mine} failed:\n{payload['where']}")
    gathered = world.all_gather_json(payload)
    if exc is not None and world.is_root:
        raise exc
    for rank, got in enumerate(gathered):
        if got is not None and "error" in got:
            linger(world)
            raise DistributedError(f"item {got['i']} failed on rank {rank}: {got['error']}",
                                   hint=f"rank {rank}'s traceback:\n{got['where'].rstrip()}") from exc
    return [(got["i"], got["r"]) for got in gathered if got is not None]


def linger(world: World) -> None:
    """On a rank > 0 about to fail with rank 0: let rank 0 write and report first (see LINGER_SECONDS)."""
    if world.distributed and not world.is_root:
        time.sleep(LINGER_SECONDS)

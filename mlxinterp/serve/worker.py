"""One model computation at a time, a short queue, and a clear "busy" beyond it.

MLX arrays and the model's hook state are not safe to use from two threads at
once (taps are attached to the shared model while a computation runs), so every
computation runs on one dedicated thread. Requests beyond the running one plus
`queue` waiting ones are refused at once (HTTP 503) rather than piling up behind
a slow sweep.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class Busy(Exception):
    """Every slot (one running computation + the queue) is taken."""


class Worker:
    """Runs callables and generators on the single model thread."""

    def __init__(self, queue: int = 2):
        self.capacity = 1 + queue
        self._pending = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mlxinterp-model")

    @property
    def pending(self) -> int:
        return self._pending

    def _reserve(self) -> None:
        with self._lock:
            if self._pending >= self.capacity:
                raise Busy(f"the model is busy ({self._pending} computations running or queued; at most "
                           f"{self.capacity}); try again when the current one finishes")
            self._pending += 1

    def _release(self) -> None:
        with self._lock:
            self._pending -= 1

    def _job(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        finally:
            self._release()

    async def run(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """fn(*args, **kwargs) on the model thread; Busy when every slot is taken."""
        self._reserve()
        try:
            fut = self._pool.submit(self._job, lambda: fn(*args, **kwargs))
        except BaseException:
            self._release()
            raise
        return await asyncio.wrap_future(fut)

    def run_sync(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """The same, blocking (start-up warm-up, benchmarks)."""
        self._reserve()
        return self._pool.submit(self._job, lambda: fn(*args, **kwargs)).result()

    async def stream(self, make: Callable[[threading.Event], Iterator[Any]]) -> AsyncIterator[Any]:
        """Items of the generator make(cancel) as the model thread produces them.

        Closing the async iterator (client gone) sets `cancel`; the generator is expected
        to stop at its next item, which frees the slot.
        """
        self._reserve()
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        done = object()

        def produce() -> None:
            try:
                for item in make(cancel):
                    loop.call_soon_threadsafe(q.put_nowait, (True, item))
                    if cancel.is_set():
                        break
            except BaseException as e:  # handed to the consumer, which turns it into an error event
                loop.call_soon_threadsafe(q.put_nowait, (False, e))
            finally:
                loop.call_soon_threadsafe(q.put_nowait, (True, done))

        try:
            self._pool.submit(self._job, produce)
        except BaseException:
            self._release()
            raise
        try:
            while True:
                ok, item = await q.get()
                if not ok:
                    raise item
                if item is done:
                    return
                yield item
        finally:
            cancel.set()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

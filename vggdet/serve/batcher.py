"""Dynamic batching: work items from concurrent requests gathered into one model call on one worker thread.

    batcher = Batcher(run, max_batch=8, max_wait_s=0.005, capacity=64)   # run(items) -> results, same order
    with batcher.reserve(1) as slots:           # at a request's start: 503 (QueueFull) when the queue is full
        ...receive and decode the upload...     # meanwhile the worker knows this request is coming
        futures = batcher.submit([item], slots)  # concurrent.futures, each -> (result, Timing)

One thread calls `run` (predictors are not thread-safe, and one model call at a time is what a CPU or a GPU
runs best); the event loop only queues items and awaits futures. `setup`, when given, runs first on that
thread (the service loads its model there: see vggdet/serve/service.py for why). Capacity counts queued items plus the
slots reserved by requests still being received or decoded, so a full queue refuses a request before its
body is read and memory stays bounded by `capacity` uploads and images.

When to run: as soon as the worker is free it takes up to `max_batch` queued items. If it has fewer, it waits
for company — but only while reserved requests are on their way, and never past `max_wait_s` after the first
item was queued. So a lone request runs at once (no added latency at concurrency 1), and under load the
items that queued while the model ran form the next batch without any wait. If a batch fails, each item runs
alone once more, so one bad item cannot fail the others.
"""
from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Optional

__all__ = ["Batcher", "QueueFull", "Slots", "Timing"]


class QueueFull(Exception):
    """No room: `capacity` items are queued or reserved."""


@dataclass(frozen=True)
class Timing:
    """Where an item's time went: `queue_s` from submit to its batch's start, `model_s` the batch's model
    call, `batch` how many items that call ran."""

    queue_s: float
    model_s: float
    batch: int


class _Job:
    __slots__ = ("item", "future", "queued_at")

    def __init__(self, item):
        self.item, self.future, self.queued_at = item, Future(), time.perf_counter()


class Slots:
    """A request's reserved places in the queue; `submit` turns them into queued items, leaving the context
    (or `release`) frees any not used."""

    def __init__(self, batcher: Batcher, n: int):
        self._batcher, self.n = batcher, n

    def grow(self, n: int) -> None:
        """Reserve `n` more places (QueueFull when there is no room)."""
        self._batcher._reserve(n)
        self.n += n

    def release(self) -> None:
        if self.n:
            self._batcher._unreserve(self.n)
            self.n = 0

    def __enter__(self) -> Slots:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Batcher:
    """See the module docstring. `run(items) -> results` runs on the worker thread only."""

    def __init__(self, run: Callable[[list], list], *, max_batch: int, max_wait_s: float, capacity: int,
                 setup: Optional[Callable[[], None]] = None, name: str = "vggdet-model"):
        self.run, self.max_batch, self.max_wait_s, self.capacity = run, max_batch, max_wait_s, capacity
        self.setup = setup  # run first on the worker thread; `started` resolves when it has
        self.started: Future = Future()
        self._jobs: collections.deque = collections.deque()
        self._reserved = 0
        self._closed = False
        self._cond = threading.Condition()
        self.batches = collections.Counter()  # batch size -> how many model calls ran it (GET /v1/model)
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------- callers
    @property
    def pending(self) -> int:
        """Items queued plus places reserved."""
        return len(self._jobs) + self._reserved

    def reserve(self, n: int = 1) -> Slots:
        """`n` places for a request that will submit soon (QueueFull when there is no room)."""
        self._reserve(n)
        return Slots(self, n)

    def submit(self, items: list, slots: Optional[Slots] = None, wait: bool = False) -> list:
        """Queue `items` -> one Future per item, resolving to (result, Timing). With `slots`, the items take
        reserved places; without, they need free ones: QueueFull, or with `wait` block until there is room
        (a video's frames: its stream has started and cannot answer 503 any more)."""
        jobs = [_Job(item) for item in items]
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if slots is not None:
                if len(items) > slots.n:
                    raise ValueError(f"{len(items)} items for {slots.n} reserved places")
                slots.n -= len(items)
                self._reserved -= len(items)
            else:
                while self.pending + len(items) > self.capacity:
                    if not wait:
                        raise QueueFull(f"the queue is full ({self.capacity} images waiting)")
                    self._cond.wait()
                    if self._closed:
                        raise QueueFull("the server is shutting down")
            self._jobs.extend(jobs)
            self._cond.notify_all()
        return [j.future for j in jobs]

    def close(self) -> None:
        """Refuse new items, finish the queued ones, stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _reserve(self, n: int) -> None:
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if self.pending + n > self.capacity:
                raise QueueFull(f"the queue is full ({self.capacity} images waiting)")
            self._reserved += n

    def _unreserve(self, n: int) -> None:
        with self._cond:
            self._reserved -= n
            self._cond.notify_all()  # the worker may stop waiting for company; blocked submitters may fit

    # -------------------------------------------------------------------------------------- worker
    def _work(self) -> None:
        try:
            if self.setup is not None:
                self.setup()
        except BaseException as e:
            with self._cond:
                self._closed = True
            self.started.set_exception(e)
            return
        self.started.set_result(None)
        while True:
            jobs = self._take()
            if jobs is None:
                return
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]  # drop those whose client left
            if jobs:
                self._run(jobs)

    def _take(self) -> Optional[list]:
        """The next batch (None once closed and empty): see the module docstring for when it starts."""
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if not self._jobs:
                return None
            deadline = self._jobs[0].queued_at + self.max_wait_s
            while len(self._jobs) < self.max_batch and self._reserved > 0 and not self._closed:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            jobs = [self._jobs.popleft() for _ in range(min(self.max_batch, len(self._jobs)))]
            self._cond.notify_all()  # room for submitters waiting on a full queue
        return jobs

    def _run(self, jobs: list) -> None:
        start = time.perf_counter()
        try:
            results = self.run([j.item for j in jobs])
        except Exception as e:
            if len(jobs) == 1:
                jobs[0].future.set_exception(e)
            else:  # which one failed? each alone, so the others still get their answer
                for j in jobs:
                    self._run([j])
            return
        model_s = time.perf_counter() - start
        self.batches[len(jobs)] += 1
        for j, r in zip(jobs, results):
            j.future.set_result((r, Timing(start - j.queued_at, model_s, len(jobs))))

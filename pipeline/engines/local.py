"""The `local` engine: one per-chunk function mapped over chunks of records, in order, on all
cores of this machine.

This is img2dataset's split: a stage is a pure function `fn(chunk, params) -> results` and this
module is the interchangeable "distributor". Results come back in input order whatever the
worker count, so outputs are identical for 1 or N workers; at most a few chunks per worker are
in flight, so memory stays flat however large the source is. pipeline.engines.ray_engine maps
the same functions as Ray tasks on a cluster.

A worker process that dies (killed, out of memory) breaks the whole pool and every chunk in
flight with it. As Ray does, those chunks are run again, on a fresh pool and one at a time, so a
chunk that kills its worker again is known for certain; after MAX_RETRIES such deaths it is
given up (`ChunkLost`, naming it) and the stage says what it kept.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from typing import Any, TypeVar

from core.signals import ignore_in_worker
from pipeline.engines.errors import ChunkLost

T = TypeVar("T")

IN_FLIGHT_PER_WORKER = 3  # chunks submitted ahead per worker: busy workers, bounded memory
MAX_RETRIES = 3  # re-runs of a chunk whose worker process died (local and Ray alike)

_fn: Callable | None = None
_params: Any = None


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def _init_worker(fn: Callable, params: Any) -> None:
    """Runs once per worker: parameters (e.g. a large exclude set) cross the pipe only once.
    Stop signals are the driver's to handle: it stops the pool (core.signals)."""
    global _fn, _params
    import cv2

    ignore_in_worker()
    cv2.setNumThreads(1)  # the pool already uses every core
    _fn, _params = fn, params


def _run_chunk(chunk: list) -> Any:
    return _fn(chunk, _params)


def map_ordered(
    fn: Callable[[list, Any], T], params: Any, chunks: Iterable[list], workers: int
) -> Iterator[T]:
    """Yield `fn(chunk, params)` for each chunk, in order; `workers <= 1` runs in-process.
    When the caller stops early (an error, Ctrl-C), chunks not started are dropped and only
    those running are waited for. Chunks lost with a dead worker are retried (module doc)."""
    if workers <= 1:
        for chunk in chunks:
            yield fn(chunk, params)
        return
    numbered = enumerate(chunks)
    suspects: deque[tuple[int, list]] = deque()  # in flight when a worker died: rerun alone
    deaths: dict[int, int] = {}
    while True:
        pending: deque[tuple[int, list, Future]] = deque()
        with _pool(fn, params, workers) as pool:
            try:
                while suspects:
                    index, chunk = suspects[0]
                    result = pool.submit(_run_chunk, chunk).result()
                    suspects.popleft()
                    yield result
                for index, chunk in numbered:
                    pending.append((index, chunk, pool.submit(_run_chunk, chunk)))
                    if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                        yield _oldest(pending)
                while pending:
                    yield _oldest(pending)
                return
            except BrokenProcessPool:
                _end_survivors(pool)
                if suspects:  # it ran alone: this chunk killed its worker
                    index, chunk = suspects[0]
                    deaths[index] = deaths.get(index, 0) + 1
                    if deaths[index] >= MAX_RETRIES:
                        raise ChunkLost(index, chunk, MAX_RETRIES + 1) from None
                suspects.extend((index, chunk) for index, chunk, _ in pending)
            except BaseException:  # the caller stopped: GeneratorExit, KeyboardInterrupt, an error
                pool.shutdown(wait=True, cancel_futures=True)
                raise


def _pool(fn: Callable, params: Any, workers: int) -> ProcessPoolExecutor:
    context = mp.get_context("spawn")  # safe with threads and torch in the parent
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                               initargs=(fn, params))


def _end_survivors(pool: ProcessPoolExecutor) -> None:
    """Kill the workers a broken pool still has. The pool itself only asks them to end
    (SIGTERM), which workers ignore (core.signals.ignore_in_worker), and would then wait for
    them forever; `_processes` is the executor's own list of them."""
    for process in list((pool._processes or {}).values()):
        process.kill()


def _oldest(pending: deque) -> Any:
    """The result of the oldest chunk in flight, which then leaves `pending` (kept there if its
    worker died, so that it is run again)."""
    result = pending[0][2].result()
    pending.popleft()
    return result


class LocalEngine:
    """This machine's ordered process pool (`map_ordered`)."""

    name = "local"
    distributed = False  # runs on the driver's machine (dedup hashes in-process, not as tasks)

    def __init__(self, workers: int):
        self.workers = workers

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn: Callable[[list, Any], T], params: Any,
            chunks: Iterable[list]) -> Iterator[T]:
        return map_ordered(fn, params, chunks, self.workers)

    def describe(self) -> dict:
        return {"name": self.name, "nodes": 1, "cpus": self.workers}

"""The `local` engine: one per-chunk function mapped over chunks of records, in order, on all
cores of this machine.

This is img2dataset's split: a stage is a pure function `fn(chunk, params) -> results` and this
module is the interchangeable "distributor". Results come back in input order whatever the
worker count, so outputs are identical for 1 or N workers; at most a few chunks per worker are
in flight, so memory stays flat however large the source is. pipeline.engines.ray_engine maps
the same functions as Ray tasks on a cluster.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from typing import Any, TypeVar

from core.signals import ignore_in_worker

T = TypeVar("T")

IN_FLIGHT_PER_WORKER = 3  # chunks submitted ahead per worker: busy workers, bounded memory

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
    those running are waited for."""
    if workers <= 1:
        for chunk in chunks:
            yield fn(chunk, params)
        return
    context = mp.get_context("spawn")  # safe with threads and torch in the parent
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(fn, params)
    ) as pool:
        pending: deque = deque()
        try:
            for chunk in chunks:
                pending.append(pool.submit(_run_chunk, chunk))
                if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BaseException:  # the caller stopped: GeneratorExit, KeyboardInterrupt, an error
            pool.shutdown(wait=True, cancel_futures=True)
            raise


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

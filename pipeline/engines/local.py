"""The `local` engine: one per-chunk function mapped over chunks of records, in order, on all
cores of this machine.

This is img2dataset's split: a stage is a pure function `fn(chunk, params) -> results` and this
module is the interchangeable "distributor". Results come back in input order whatever the
worker count, so outputs are identical for 1 or N workers; at most a few chunks per worker are
in flight, so memory stays flat however large the source is. pipeline.engines.ray_engine maps
the same functions as Ray tasks on a cluster.

Used as a context manager, the engine keeps one pool of worker processes across its `map`
calls, as the Ray engine keeps one session: dedup's later passes then start on warm workers
instead of paying a fresh pool's start (each spawned worker imports numpy, OpenCV and the
stage's modules: ~0.3 s). A map's `params` are pickled once and travel with each chunk; each
worker unpickles them once per map, the first time a chunk of that map reaches it. Params larger
than PARAMS_WITH_EACH_CHUNK (`pipeline shards --exclude` with many keys) would cost that many
bytes per chunk, so such a map runs on a pool of its own that receives them once per worker.

A worker process that dies (killed, out of memory) breaks the whole pool and every chunk in
flight with it. As Ray does, those chunks are run again, on a fresh pool and one at a time, so a
chunk that kills its worker again is known for certain; after MAX_RETRIES such deaths it is
given up (`ChunkLost`, naming it) and the stage says what it kept.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import pickle
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import count, islice
from typing import Any, TypeVar

from core.signals import ignore_in_worker
from pipeline.engines.errors import ChunkLost

T = TypeVar("T")

IN_FLIGHT_PER_WORKER = 3  # chunks submitted ahead per worker: busy workers, bounded memory
MAX_RETRIES = 3  # re-runs of a chunk whose worker process died (local and Ray alike)
PARAMS_WITH_EACH_CHUNK = 1 << 16  # pickled params up to this size may travel with each chunk

_job: tuple[int, Any] = (-1, None)  # in a worker: the map it last ran a chunk of, and its params


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def _init_worker(job: int, params: bytes | None) -> None:
    """Runs once per worker; a pool of one map's own gets that map's `params` here. Stop
    signals are the driver's to handle: it stops the pool (core.signals)."""
    global _job
    import cv2

    ignore_in_worker()
    cv2.setNumThreads(1)  # the pool already uses every core
    # Once the pool lets it go, a worker would tear its interpreter down (numpy, OpenCV, the
    # stage's modules: 50-150 ms the driver waits for when it closes the pool). A worker
    # writes nothing itself (its results travel back to the driver), so it ends at once.
    atexit.register(os._exit, 0)
    if params is not None:
        _job = (job, pickle.loads(params))


def _run_chunk(job: int, fn: Callable, params: bytes | None, chunk: list) -> Any:
    """`fn(chunk, params)`, the params of map number `job` unpickled only when this worker has
    not seen that map yet (they travel as bytes pickled once by the driver)."""
    global _job
    if _job[0] != job:
        _job = (job, pickle.loads(params))
    return fn(chunk, _job[1])


class Pool:
    """The worker processes maps run on: started on first use, kept until `close`, replaced
    when a worker's death breaks them. A pool of one map's own gets that map's number and
    pickled `params` in each worker's initializer."""

    def __init__(self, workers: int, job: int = -1, params: bytes | None = None):
        self.workers = workers
        self._initargs = (job, params)
        self._executor: ProcessPoolExecutor | None = None

    def executor(self) -> ProcessPoolExecutor:
        if self._executor is None:
            context = mp.get_context("spawn")  # safe with threads and torch in the parent
            self._executor = ProcessPoolExecutor(self.workers, mp_context=context,
                                                 initializer=_init_worker,
                                                 initargs=self._initargs)
        return self._executor

    def broken(self) -> None:
        """Kill the workers a broken pool still has (it only asks them to end, with SIGTERM,
        which they ignore (core.signals.ignore_in_worker), and would then wait for them
        forever; `_processes` is the executor's own list of them); the next map gets a fresh
        pool."""
        if self._executor is not None:
            for process in list((self._executor._processes or {}).values()):
                process.kill()
            self.close()

    def close(self) -> None:
        """Stop the workers; chunks not started are dropped, those running waited for."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


_maps = count()  # numbers each map, so a warm worker knows when its params change


def map_ordered(
    fn: Callable[[list, Any], T], params: Any, chunks: Iterable[list], workers: int,
    pool: Pool | None = None,
) -> Iterator[T]:
    """Yield `fn(chunk, params)` for each chunk, in order; `workers <= 1` runs in-process.
    On `pool` (kept open by the caller), else, or when the pickled params are larger than
    PARAMS_WITH_EACH_CHUNK, on a pool of its own, closed when the map ends.
    When the caller stops early (an error, Ctrl-C), chunks not started are dropped, only those
    running are waited for, and the pool is closed. Chunks lost with a dead worker are retried
    (module doc)."""
    if workers <= 1:
        for chunk in chunks:
            yield fn(chunk, params)
        return
    job, blob = next(_maps), pickle.dumps(params)
    own = pool is None or len(blob) > PARAMS_WITH_EACH_CHUNK
    sent = None if own else blob  # a pool of its own has them from its initializer
    if own:
        pool = Pool(workers, job, blob)
    numbered = enumerate(chunks)
    suspects: deque[tuple[int, list]] = deque()  # in flight when a worker died: rerun alone
    deaths: dict[int, int] = {}
    try:
        while True:
            pending: deque[tuple[int, list, Future]] = deque()
            executor = pool.executor()
            try:
                while suspects:
                    index, chunk = suspects[0]
                    result = executor.submit(_run_chunk, job, fn, sent, chunk).result()
                    suspects.popleft()
                    yield result
                for index, chunk in numbered:
                    pending.append((index, chunk,
                                    executor.submit(_run_chunk, job, fn, sent, chunk)))
                    if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                        yield _oldest(pending)
                while pending:
                    yield _oldest(pending)
                return
            except BrokenProcessPool:
                pool.broken()
                if suspects:  # it ran alone: this chunk killed its worker
                    index, chunk = suspects[0]
                    deaths[index] = deaths.get(index, 0) + 1
                    if deaths[index] >= MAX_RETRIES:
                        raise ChunkLost(index, chunk, MAX_RETRIES + 1) from None
                suspects.extend((index, chunk) for index, chunk, _ in pending)
    except BaseException:  # the caller stopped: GeneratorExit, KeyboardInterrupt, an error
        pool.close()
        raise
    finally:
        if own:
            pool.close()


def _oldest(pending: deque) -> Any:
    """The result of the oldest chunk in flight, which then leaves `pending` (kept there if its
    worker died, so that it is run again)."""
    result = pending[0][2].result()
    pending.popleft()
    return result


class LocalEngine:
    """This machine's ordered process pool (`map_ordered`); one pool across maps while the
    engine is open as a context manager, a pool per map otherwise."""

    name = "local"
    distributed = False  # runs on the driver's machine (dedup hashes in-process, not as tasks)

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: Pool | None = None

    def __enter__(self) -> LocalEngine:
        self._pool = Pool(self.workers)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def map(self, fn: Callable[[list, Any], T], params: Any,
            chunks: Iterable[list]) -> Iterator[T]:
        return map_ordered(fn, params, chunks, self.workers, self._pool)

    def describe(self) -> dict:
        return {"name": self.name, "nodes": 1, "cpus": self.workers}

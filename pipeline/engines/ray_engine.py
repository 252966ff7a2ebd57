"""The `ray` engine: per-chunk work as Ray core tasks on a cluster.

Ray core tasks, not Ray Data: the stages already are "map a pure function over ordered chunks,
then write in order on the driver", which is exactly a bounded window of tasks; a Ray Data
pipeline would add its own scheduling, block sizes and ordering rules to reason about for no
gain. `params` go into the object store once (`ray.put`) and each worker process fetches them
once, so a large exclude set or the dedup hash crosses the network once per node.

A task whose worker process dies (killed, out of memory, node lost) is retried by Ray
(`MAX_RETRIES`); the chunk is recomputed from its records, so the output is the same as an
undisturbed run. Errors raised by a stage's function are bugs and are not retried.

`map_lanes` is for work that is waiting, not computing (pipeline download): a fixed set of
long-lived actors, each running many chunks at once on its event loop and keeping its
connections between chunks, each with its own share of a limit that must hold in total.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any, TypeVar

from pipeline.engines.errors import ChunkLost, EngineError
from pipeline.engines.local import IN_FLIGHT_PER_WORKER, MAX_RETRIES

T = TypeVar("T")

RAY_MISSING = "--engine ray needs Ray: pip install 'dcgan-pipeline[ray]'"
# Read by Ray when it is imported: "0" makes a Ray started here use and listen on 127.0.0.1 only
# (Ray otherwise swaps 127.0.0.1 for the machine's address and listens on every interface).
RAY_LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
CONNECT_TIMEOUT_S = 30.0  # how long a --ray-address may take to answer before the run gives up
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class RayEngine:
    """Ray core tasks on the cluster at `address` (or RAY_ADDRESS), else on a Ray started on
    this machine with `workers` CPUs, listening on 127.0.0.1 only.

    Used as a context manager, it holds one Ray session across several `map` calls (dedup's
    passes); `map` alone opens one for itself. A Ray session that was already running in this
    process (a test's `ray.init`) is used and left running.
    """

    name = "ray"
    distributed = True

    def __init__(self, workers: int, address: str | None = None):
        self.workers = workers
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        host_port = _host_port(self.address)
        if self.address is None:  # a private Ray for this run: nothing outside may reach it
            os.environ.setdefault(RAY_LOOPBACK_ONLY, "0")
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # and it reports nothing
        elif host_port and host_port[0] in LOOPBACK_HOSTS:
            # a head on this machine: dial it on 127.0.0.1, not on the machine's own address
            os.environ.setdefault(RAY_LOOPBACK_ONLY, "0")
        try:
            import ray  # noqa: F401
        except ImportError:
            raise EngineError(RAY_MISSING) from None
        self._depth = 0  # nested `with`s: only the outermost starts and stops the session
        self._owned = False  # this engine started the session, so it ends it
        self._info: dict = {"name": self.name, "nodes": 0, "cpus": 0}
        if host_port:
            _check_answers(self.address, *host_port)

    def __enter__(self) -> RayEngine:
        import ray

        if self._depth == 0:
            if not ray.is_initialized():
                self._connect()
                self._owned = True
            alive = [node for node in ray.nodes() if node["Alive"]]
            cpus = int(ray.cluster_resources().get("CPU", 0))
            self._info = {"name": self.name, "nodes": len(alive), "cpus": cpus}
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        self._depth -= 1
        if self._depth == 0 and self._owned:
            ray.shutdown()
            self._owned = False

    def _connect(self) -> None:
        import ray

        quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
        if self.address:
            try:
                ray.init(address=self.address, **quiet)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise EngineError(f"cannot join the Ray cluster at {self.address}: "
                                  f"{str(err).splitlines()[0]}") from None
            return
        ray.init(address="local", num_cpus=self.workers, include_dashboard=False,
                 _node_ip_address="127.0.0.1", **quiet)

    def map(self, fn: Callable[[list, Any], T], params: Any,
            chunks: Iterable[list]) -> Iterator[T]:
        """Submit chunks as tasks, at most a few per cluster CPU in flight; yield results in
        submission order (waiting on the oldest task is the backpressure)."""
        import ray

        with self:
            task = ray.remote(_run_chunk).options(num_cpus=1, max_retries=MAX_RETRIES,
                                                  retry_exceptions=False)
            job = [ray.put((fn, params))]  # in a list, so tasks get the reference, not a copy
            window = IN_FLIGHT_PER_WORKER * max(1, self._info["cpus"])
            pending: deque = deque()  # (chunk number, chunk, task)
            try:
                for index, chunk in enumerate(chunks):
                    pending.append((index, chunk, task.remote(job, chunk)))
                    if len(pending) >= window:
                        yield _result(pending.popleft())
                while pending:
                    yield _result(pending.popleft())
            finally:
                for _index, _chunk, ref in pending:  # the run stopped early: leave nothing running
                    ray.cancel(ref)

    def map_lanes(self, fn: Callable[[list, Any], Awaitable[T]],
                  opener: Callable[[Any], AbstractAsyncContextManager],
                  lane_params: list, chunks: Iterable[list], window: int) -> Iterator[T]:
        """`await fn(chunk, state)` for every chunk, on one long-lived Ray actor (a "lane") per
        entry of `lane_params`: lane i opens its state once, `opener(lane_params[i])` (e.g. a
        connection pool with lane i's share of a limit), and runs many chunks at once on its
        event loop. Chunks go to the lanes in turn, at most `window` in flight; results come
        back in chunk order.

        What a lane holds dies with its process, so nothing it held (connections, slots) can
        outlive it: a lane that dies is restarted by Ray with the same params, and the chunks
        it had are run again (`MAX_RETRIES` times each) from their records. Ray restarts a lane
        only once it has seen the old one end, so the lanes' shares never add up to more than
        the whole (but for a node cut off from the cluster whose lane still runs: Ray cannot
        tell it from a dead one)."""
        import ray

        with self:
            lane = ray.remote(_Lane).options(num_cpus=1, max_restarts=-1,
                                             max_task_retries=MAX_RETRIES,
                                             scheduling_strategy="SPREAD")
            lanes = [lane.remote(fn, opener, params) for params in lane_params]
            pending: deque = deque()  # (chunk number, chunk, task)
            try:
                for index, chunk in enumerate(chunks):
                    pending.append((index, chunk, lanes[index % len(lanes)].run.remote(chunk)))
                    if len(pending) >= window:
                        yield _result(pending.popleft())
                while pending:
                    yield _result(pending.popleft())
            finally:  # finished or stopped early: the lanes, and all they hold, end here
                for handle in lanes:
                    ray.kill(handle, no_restart=True)

    def describe(self) -> dict:
        return dict(self._info)


def _result(task: tuple[int, list, Any]) -> Any:
    """A task's result; a chunk whose worker died on every retry is ChunkLost, not Ray's
    traceback."""
    import ray
    from ray.exceptions import NodeDiedError, OutOfMemoryError, RayActorError, WorkerCrashedError

    index, chunk, ref = task
    try:
        return ray.get(ref)
    except (WorkerCrashedError, OutOfMemoryError, NodeDiedError, RayActorError):
        raise ChunkLost(index, chunk, MAX_RETRIES + 1) from None


def _host_port(address: str | None) -> tuple[str, int] | None:
    """(host, port) of a cluster address ("10.0.0.1:6379", "ray://head:10001"); None for no
    address or one Ray looks up itself ("auto")."""
    host, sep, port = (address or "").removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _check_answers(address: str, host: str, port: int) -> None:
    """Refuse, in one line and within CONNECT_TIMEOUT_S, a cluster address where nothing
    answers: Ray itself would retry for many minutes before saying so."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        why = (f"no answer within {CONNECT_TIMEOUT_S:g} s" if isinstance(err, TimeoutError)
               else err.strerror or str(err))
        raise EngineError(f"cannot join the Ray cluster at {address}: {why}; is a Ray head "
                          "running there (`ray start --head`)?") from None


# Per Ray worker process: the (fn, params) of the current job, fetched from the object store once.
_job: dict[str, tuple] = {}


def _run_chunk(job: list, chunk: list) -> Any:
    """One Ray task: `fn(chunk, params)`, with the job's (fn, params) cached in this worker."""
    ref = job[0]
    if ref.hex() not in _job:
        import cv2
        import ray

        cv2.setNumThreads(1)  # Ray gives each task one CPU
        _job.clear()
        _job[ref.hex()] = ray.get(ref)
    fn, params = _job[ref.hex()]
    return fn(chunk, params)


class _Lane:
    """One lane of `RayEngine.map_lanes`: a worker process that keeps its state (opened on the
    first chunk, inside the event loop) for every chunk it runs, many at once."""

    def __init__(self, fn: Callable, opener: Callable, params: Any):
        self._fn, self._opener, self._params = fn, opener, params
        self._stack = AsyncExitStack()  # closed by the process's end (the lane is killed)
        self._state: asyncio.Future | None = None

    async def run(self, chunk: list) -> Any:
        if self._state is None:  # the first chunk opens it; the others wait for it
            self._state = asyncio.ensure_future(
                self._stack.enter_async_context(self._opener(self._params)))
        return await self._fn(chunk, await asyncio.shield(self._state))

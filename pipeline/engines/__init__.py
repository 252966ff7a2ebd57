"""Where per-chunk work runs: this machine's process pool (`local`) or a Ray cluster (`ray`).

Both engines offer the same `map(fn, params, chunks)`: `fn(chunk, params)` for every chunk,
yielded in input order, with a fixed number of chunks in flight. The driver (the runner, dedup's
passes) consumes results in that order, so the outputs do not depend on the engine, the number
of workers or the order in which tasks happen to finish, and memory stays flat however long the
input is. `local` is pipeline.engines.local, `ray` pipeline.engines.ray_engine; a stage names
one with `open_engine` and never needs to know which it got.
"""

from __future__ import annotations

from pipeline.engines.errors import ChunkLost, EngineError
from pipeline.engines.local import LocalEngine
from pipeline.engines.ray_engine import RayEngine

__all__ = ["ENGINES", "ChunkLost", "Engine", "EngineError", "LocalEngine", "RayEngine",
           "engine_line", "open_engine"]

ENGINES = ("local", "ray")
ENGINE_HELP = ("Where per-chunk work runs: 'local' (this machine's process pool) or 'ray' (a Ray "
               "cluster, see --ray-address). Output is identical for either.")
RAY_ADDRESS_HELP = ("Ray cluster to join with --engine ray (e.g. 10.0.0.1:6379); default: the "
                    "RAY_ADDRESS variable, else a Ray started on this machine for the run.")


Engine = LocalEngine | RayEngine


def open_engine(name: str, *, workers: int, address: str | None = None) -> Engine:
    """The engine a stage was asked for; EngineError (before any output is touched) if it
    cannot be had: Ray missing, a cluster address where nothing answers, or an address given to
    the local engine (which would silently run here instead)."""
    if name == "local":
        if address:
            raise EngineError(f"--ray-address {address} is for --engine ray; add --engine ray "
                              "to run on that cluster, or drop --ray-address")
        return LocalEngine(workers)
    if name == "ray":
        return RayEngine(workers, address)
    raise EngineError(f"unknown engine {name!r}; expected one of {', '.join(ENGINES)}")


def engine_line(info: dict) -> str:
    """How the summary line names where the run ran: "local, 8 CPUs" / "ray, 3 nodes, 96 CPUs"
    (plus ", 16 download workers" where a stage runs its own number of them)."""
    nodes = "" if info["name"] == "local" else f", {info['nodes']} node" + \
        ("s" if info["nodes"] != 1 else "")
    workers = f", {info['workers']} download worker" + ("s" if info["workers"] != 1 else "") \
        if "workers" in info else ""
    return f"{info['name']}{nodes}, {info['cpus']} CPU" + ("s" if info["cpus"] != 1 else "") + \
        workers

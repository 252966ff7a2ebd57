"""`--engine ray`: the same stages on a real Ray, with the same output as the local pool.

Everything Ray listens on stays on 127.0.0.1. One Ray instance started in this process serves
the class of tests that use it; the cluster test starts a real head node with `ray start` and
joins it by address, as a user of a cluster would.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline import demo
from pipeline.cli import main
from pipeline.dedup import dedup as run_dedup
from pipeline.engines.ray_engine import RAY_LOOPBACK_ONLY, RAY_MISSING
from pipeline.faces import detect_faces
from pipeline.runner import Stage, StageError, run_stage
from pipeline.shards import ShardParams, make_shards, shard_chunk
from pipeline.sources import Record, open_sources
from pipeline.statuses import KEPT
from tests.processes import run, script, started, wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# Every Ray here listens on 127.0.0.1 only and reports nothing; its worker processes can import
# this module (the killed-worker stage lives here).
RAY_ENV = {RAY_LOOPBACK_ONLY: "0", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
os.environ.update({k: v for k, v in RAY_ENV.items() if k != "PYTHONPATH"})  # before Ray loads
ray = pytest.importorskip("ray")
# What may differ between two summaries of the same run on two engines.
TIMING_FIELDS = ("seconds", "images_per_s", "timings_s", "engine")
DEDUP_FAST = {"epochs": 1, "min_steps": 100, "batch_size": 32, "progress": False}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """The demo corpus (scraped folder with faces, scenes and awkward files; an LSUN LMDB)."""
    return demo.build_demo(tmp_path_factory.mktemp("demo"), copies=2)


def outputs(out: Path) -> dict[str, bytes]:
    """Every file a stage leaves in OUT but its summary, by name."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())
            if p.is_file() and p.name != "summary.json"}


def summary_without_timings(out: Path) -> dict:
    """OUT/summary.json without its timings, and with OUT itself written as "OUT"."""
    summary = json.loads((out / "summary.json").read_text().replace(str(out), "OUT"))
    return {k: v for k, v in summary.items() if k not in TIMING_FIELDS}


def assert_same_run(local: Path, other: Path) -> None:
    """Shards, index.json, manifest.jsonl, ... byte for byte; the summary but for timings."""
    files = outputs(local)
    assert "manifest.jsonl" in files
    assert outputs(other) == files
    assert summary_without_timings(other) == summary_without_timings(local)


# ---- a killed worker ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Watched:
    """`shard_chunk`'s params plus a folder where every task says which process runs it."""

    params: ShardParams
    starts: str


def watched_shard_chunk(records: list[Record], job: Watched) -> list:
    """`shard_chunk`, announcing first which process runs it (a `task-<pid>-<n>` marker holding
    the chunk's first key). The very first task also writes its pid to `first` and then waits
    to be killed (a minute at most), so a test kills a process that is surely running a task."""
    starts = Path(job.starts)
    (starts / f"task-{os.getpid()}-{len(os.listdir(starts))}").write_text(records[0].key)
    try:
        fd = os.open(starts / "first", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return shard_chunk(records, job.params)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return shard_chunk(records, job.params)


def kill_first_worker(starts: Path, killed: list[int], stop: threading.Event) -> None:
    """Kill (SIGKILL) the process of the first task once it has said who it is."""
    first = starts / "first"
    while not stop.is_set():
        pid = first.read_text() if first.exists() else ""
        if pid:
            os.kill(int(pid), signal.SIGKILL)
            killed.append(int(pid))
            return
        stop.wait(0.01)


def watched_stage(starts: Path) -> Stage:
    params = ShardParams()
    return Stage("shards", watched_shard_chunk, Watched(params, str(starts)), {"size": 64},
                 KEPT, index_info={"image_size": 64, "format": "png"})


@dataclass(frozen=True)
class Deadly:
    """`shard_chunk`'s params plus the key of the input whose chunk kills its worker."""

    params: ShardParams
    key: str


def deadly_shard_chunk(records: list[Record], job: Deadly) -> list:
    """`shard_chunk`, but the process running the chunk holding `job.key` dies (SIGKILL), every
    time: an input that always runs its worker out of memory."""
    if any(rec.key == job.key for rec in records):
        os.kill(os.getpid(), signal.SIGKILL)
    return shard_chunk(records, job.params)


def run_deadly_stage(corpus, out: Path, engine: str) -> str:
    """A shards run in which the second chunk always kills its worker; its one-line error."""
    source = open_sources([corpus["scraped_dir"]])
    key = [rec.key for rec in source][40]  # in the second chunk of 32
    stage = Stage("shards", deadly_shard_chunk, Deadly(ShardParams(), key), {"size": 64}, KEPT,
                  index_info={"image_size": 64, "format": "png"})
    with pytest.raises(StageError) as refused:
        run_stage(stage, source, out, workers=2, engine=engine, maxcount=10, progress=False)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"shards: chunk 1 (first input {[rec.key for rec in source][32]!r})"
                              ": its worker process died each of the 4 times it ran")
    assert message.endswith(f"2 finished shard(s) in {out} hold the first 26: rerun with "
                            "--resume to continue from there")  # the first 20 samples
    return message


def run_killing_first_worker(source: list, out: Path, starts: Path, engine: str) -> list[int]:
    """A watched shards run into `out` on `engine` while the first task's process is killed;
    returns the pids killed."""
    starts.mkdir()
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=kill_first_worker, args=(starts, killed, stop))
    killer.start()
    try:
        run_stage(watched_stage(starts), open_sources(source), out, workers=2, engine=engine,
                  maxcount=10, progress=False)
    finally:
        stop.set()
        killer.join()
    return killed


def test_a_killed_local_worker_is_retried_on_a_fresh_pool(corpus, tmp_path):
    source = [corpus["scraped_dir"]]
    make_shards(source, tmp_path / "plain", maxcount=10, workers=2, progress=False)
    killed = run_killing_first_worker(source, tmp_path / "local", tmp_path / "starts", "local")
    assert len(killed) == 1
    assert outputs(tmp_path / "local") == outputs(tmp_path / "plain")


def test_a_chunk_that_always_kills_its_local_worker_is_one_line(corpus, tmp_path):
    run_deadly_stage(corpus, tmp_path / "out", "local")


# ---- one Ray started in this process -------------------------------------------------------------

@contextlib.contextmanager
def ray_in_this_process(cpus: int) -> Iterator[None]:
    """A Ray of `cpus` CPUs on 127.0.0.1, started in this process, that the engines join."""
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": RAY_ENV["PYTHONPATH"]}})
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="class")
def local_ray():
    with ray_in_this_process(cpus=2):
        yield


@pytest.mark.usefixtures("local_ray")
class TestLocalRay:
    def test_shards_are_identical_to_the_local_pool(self, corpus, tmp_path):
        for engine in ("local", "ray"):
            summary = make_shards([corpus["scraped_dir"]], tmp_path / engine, maxcount=10,
                                  workers=2, engine=engine, progress=False)
            assert summary["engine"]["name"] == engine
        assert_same_run(tmp_path / "local", tmp_path / "ray")
        assert summary["engine"] == {"name": "ray", "nodes": 1, "cpus": 2}
        assert summary["line"].endswith("(ray, 1 node, 2 CPUs)")
        assert summary["counts"]["kept"] < summary["inputs"]  # the awkward files are there

    def test_faces_are_identical_to_the_local_pool(self, corpus, tmp_path):
        people = Path(corpus["scraped_dir"]) / "people"
        for engine in ("local", "ray"):
            summary = detect_faces([people], tmp_path / engine, maxcount=4, workers=2,
                                   engine=engine, progress=False)
        assert summary["faces_kept"] > 0
        assert_same_run(tmp_path / "local", tmp_path / "ray")

    def test_lmdb_and_shard_records_are_read_by_the_tasks(self, corpus, tmp_path):
        """Their records carry an LMDB key or a shard's byte range, not bytes: each Ray worker
        reads them itself, and the output is the local pool's."""
        make_shards([corpus["scraped_dir"]], tmp_path / "shards_in", maxcount=10, workers=2,
                    progress=False)
        sources = [corpus["lmdb_dir"], tmp_path / "shards_in"]
        assert all(rec.data is None for rec in open_sources(sources))
        for engine in ("local", "ray"):
            make_shards(sources, tmp_path / engine, size=32, maxcount=25, workers=2,
                        engine=engine, progress=False)
        assert_same_run(tmp_path / "local", tmp_path / "ray")

    @pytest.mark.usefixtures("one_torch_thread")
    def test_dedup_is_identical_to_the_local_pool(self, corpus, tmp_path):
        for engine in ("local", "ray"):
            summary = run_dedup([corpus["lmdb_dir"]], tmp_path / engine, workers=2,
                                engine=engine, device="cpu", **DEDUP_FAST)
        assert summary["duplicates"] > 0
        assert_same_run(tmp_path / "local", tmp_path / "ray")

    def test_a_killed_worker_is_retried_and_the_output_is_unchanged(self, corpus, tmp_path):
        source = [corpus["scraped_dir"]]
        make_shards(source, tmp_path / "local", maxcount=10, workers=2, progress=False)
        starts = tmp_path / "starts"
        killed = run_killing_first_worker(source, tmp_path / "ray", starts, "ray")
        assert len(killed) == 1
        runs = {}  # first key of each chunk -> the processes that ran it
        for marker in starts.glob("task-*"):
            runs.setdefault(marker.read_text(), set()).add(int(marker.name.split("-")[1]))
        assert any(killed[0] in pids and len(pids) == 2 for pids in runs.values())
        assert outputs(tmp_path / "ray") == outputs(tmp_path / "local")

    def test_a_chunk_that_always_kills_its_worker_is_one_line(self, corpus, tmp_path):
        run_deadly_stage(corpus, tmp_path / "out", "ray")


# ---- a real head node, joined by address ---------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head_node() -> tuple[str, dict]:
    """`ray start --head --block` on 127.0.0.1 with 2 CPUs and its own auth token; yields its
    address and the environment a client needs, and ends it by its pid after the test."""
    port = free_port()
    env = {**os.environ, **RAY_ENV, "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    temp_dir = tempfile.mkdtemp(prefix="ray")  # short: Ray's socket paths must stay short
    with started([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                  f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                  "--include-dashboard=false", "--disable-usage-stats",
                  f"--temp-dir={temp_dir}"],
                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as head:
        try:
            wait_for(lambda: port_open(port) or head.poll() is not None, timeout=90,
                     what="the Ray head node listening")
            assert head.poll() is None, "ray start failed"
            yield f"127.0.0.1:{port}", env
        finally:
            head.terminate()  # `ray start --block` takes the node's processes with it
            with contextlib.suppress(subprocess.TimeoutExpired):
                head.wait(timeout=60)
            shutil.rmtree(temp_dir, ignore_errors=True)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def pipeline_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`pipeline ARGS` in a fresh process, as a user runs it."""
    return run(script("pipeline", *args), env=env, timeout=300)


def test_a_cluster_joined_by_address_gives_the_same_shards(corpus, tmp_path, head_node):
    address, env = head_node
    common = ["shards", corpus["scraped_dir"], "--maxcount", "10", "--workers", "2"]
    local = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "local")])
    joined = pipeline_cli(*common, "--out", str(tmp_path / "ray"), "--engine", "ray",
                          "--ray-address", address, env=env)
    assert local.exit_code == 0 and joined.returncode == 0, joined.stderr
    assert joined.stdout.strip().endswith("(ray, 1 node, 2 CPUs)")
    assert_same_run(tmp_path / "local", tmp_path / "ray")


def test_without_ray_installed_the_engine_asks_for_it(corpus, tmp_path):
    no_ray = ("import sys; sys.modules['ray'] = None; from core.launch import pipeline; "
              "pipeline()")
    result = run([sys.executable, "-c", no_ray, "shards", corpus["scraped_dir"], "--out",
                  str(tmp_path / "out"), "--engine", "ray"], timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error: {RAY_MISSING}"
    assert not (tmp_path / "out").exists()  # refused before anything was written


# ---- addresses that cannot work ------------------------------------------------------------------

def test_an_address_where_nothing_answers_is_one_line_before_out_is_touched(corpus, tmp_path):
    address = f"127.0.0.1:{free_port()}"  # closed: nothing listens there
    joined = run(script("pipeline", "shards", corpus["scraped_dir"], "--out",
                        str(tmp_path / "shards"), "--engine", "ray", "--ray-address", address),
                 timeout=90)  # Ray alone retries such an address for many minutes
    assert joined.returncode == 1
    assert joined.stderr.strip().splitlines() == [
        f"Error: cannot join the Ray cluster at {address}: Connection refused; is a Ray head "
        "running there (`ray start --head`)?"]
    deduped = CliRunner().invoke(main, ["dedup", corpus["lmdb_dir"], "--out",
                                        str(tmp_path / "dedup"), "--engine", "ray",
                                        "--ray-address", address])
    assert deduped.exit_code == 1 and "cannot join the Ray cluster" in deduped.output
    assert not (tmp_path / "shards").exists() and not (tmp_path / "dedup").exists()


@pytest.mark.parametrize("stage", ["shards", "faces", "dedup"])
def test_a_ray_address_without_the_ray_engine_is_refused(corpus, tmp_path, stage):
    result = CliRunner().invoke(main, [stage, corpus["lmdb_dir"], "--out", str(tmp_path / "out"),
                                       "--ray-address", "127.0.0.1:6379"])
    assert result.exit_code == 1
    assert result.output.strip() == ("Error: --ray-address 127.0.0.1:6379 is for --engine ray; "
                                      "add --engine ray to run on that cluster, or drop "
                                      "--ray-address")
    assert not (tmp_path / "out").exists()

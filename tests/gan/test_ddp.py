"""Two DDP ranks on the CPU (gloo): each rank draws its own fakes, a two-rank run resumes
exactly, another world size resumes with a note, and --compile wraps DDP without recompiling.

Each test starts two processes with torch.multiprocessing; they call the project's own
functions with the environment torchrun would give them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from gan.checkpoint import load_checkpoint
from gan.metrics import read_metrics
from gan.runtime import start_runtime, stop_runtime, wrap_models
from gan.sample import sample_z
from gan.state import new_state
from gan.step import gan_step, make_optimizer
from gan.train import TrainConfig, train
from tests.gan.conftest import TINY

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_rank(rank: int, port: int) -> None:
    """The environment torchrun gives rank `rank` of WORLD on this machine."""
    os.environ.update(WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)


def run_ranks(fn, *args) -> None:
    mp.spawn(fn, args=args, nprocs=WORLD, join=True)


# ---------------------------------------------------------------------------------------------


def _train_twice(rank: int, shards: str, root: str, ports: list[int]) -> None:
    options = {**TINY, "sample_every": 100, "ckpt_every": 100, "seed": 4}
    as_rank(rank, ports[0])
    train(shards, f"{root}/whole", **options, steps=7)
    as_rank(rank, ports[1])
    train(shards, f"{root}/split", **options, steps=3)
    as_rank(rank, ports[2])
    train(shards, f"{root}/split", **options, steps=7, resume=True)
    # The first fake batch of each rank, from the run's own z streams.
    as_rank(rank, ports[3])
    rt = start_runtime("cpu")
    st = new_state(TrainConfig(data=shards, out=f"{root}/whole", **options), rt)
    z = sample_z(TINY["batch_size"], TINY["nz"], "uniform", st.z_rng)
    with torch.no_grad():
        torch.save(st.G_raw(z), f"{root}/fakes-{rank}.pt")
    stop_runtime(rt)


@pytest.mark.slow
def test_two_ranks_draw_different_fakes_and_resume_exactly(training_shards,
                                                           tmp_path: Path) -> None:
    shards = training_shards(shards=4, per_shard=16)  # 2 shards, 4 batches per rank per epoch
    run_ranks(_train_twice, str(shards), str(tmp_path), [free_port() for _ in range(4)])

    fakes = [torch.load(tmp_path / f"fakes-{r}.pt") for r in range(WORLD)]
    assert not torch.allclose(fakes[0], fakes[1])
    whole = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    split = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    assert len(whole["rng"]) == WORLD
    assert not torch.equal(whole["rng"][0]["z"], whole["rng"][1]["z"])
    for part in ("G", "D"):
        for key, value in whole[part].items():
            assert torch.equal(value, split[part][key]), (part, key)
    for r in range(WORLD):
        assert torch.equal(whole["rng"][r]["z"], split["rng"][r]["z"])
    losses = [(r["loss_D"], r["loss_G"]) for r in read_metrics(tmp_path / "whole/metrics.jsonl")]
    again = [(r["loss_D"], r["loss_G"]) for r in read_metrics(tmp_path / "split/metrics.jsonl")]
    assert losses == again and len(losses) == 7

    # One process resuming the two-rank run: it goes on, and says why it is not exact.
    summary = train(shards, tmp_path / "split", **{**TINY, "sample_every": 100}, steps=9,
                    resume=True)
    assert summary["steps"] == 9
    assert summary["notes"] == ["the checkpoint was written by 2 rank(s), this run has 1: z "
                                "streams re-derived from (seed, rank, step)"]


# ---------------------------------------------------------------------------------------------


def _compile_and_step(rank: int, root: str, port: int) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from gan.models import build_models

    as_rank(rank, port)
    rt = start_runtime("cpu")
    torch.manual_seed(0)
    G_raw, D_raw = build_models({**TINY, "prior": "uniform"})
    graphs: list = []

    def counting_backend(gm, example_inputs):  # what "eager" does, counting the graphs
        graphs.append(gm)
        return gm.forward

    G, D, D_plain = wrap_models(G_raw, D_raw, rt, counting_backend)
    opt_G, opt_D = make_optimizer(G_raw, 2e-4, 0.5), make_optimizer(D_raw, 2e-4, 0.5)
    counts = []
    for step in range(4):
        gen = torch.Generator().manual_seed(step * WORLD + rank)
        real = torch.rand(8, 3, 32, 32, generator=gen) * 2 - 1
        z = sample_z(8, TINY["nz"], "uniform", gen)
        stats = gan_step(G, D, D_plain, opt_G, opt_D, real, z, contextlib.nullcontext)
        assert torch.isfinite(stats).all()
        counts.append(len(graphs))
    wrapped = [isinstance(m._orig_mod, DDP) for m in (G, D)] + [D_plain is not D]
    with open(f"{root}/compile-{rank}.json", "w") as f:
        json.dump({"graphs": counts, "ddp_inside_compile": wrapped}, f)
    stop_runtime(rt)


@pytest.mark.slow
def test_compile_wraps_ddp_and_never_recompiles(tmp_path: Path) -> None:
    run_ranks(_compile_and_step, str(tmp_path), free_port())
    for rank in range(WORLD):
        found = json.loads((tmp_path / f"compile-{rank}.json").read_text())
        assert found["ddp_inside_compile"] == [True, True, True]
        graphs = found["graphs"]
        assert graphs[0] > 0  # G, D (grads on) and D in the G update (grads off) compiled ...
        assert graphs[1:] == [graphs[0]] * 3, graphs  # ... once: no recompiles after step 1

"""What a training run's steps change and its checkpoints store: the networks, their
optimizers, the counters and this rank's z generator, seeded for a fresh run or restored from a
checkpoint.

Each rank draws its own z stream (seeded from the seed and the rank), and a checkpoint keeps
every rank's RNG states, so a run resumes exactly, with one rank or several. Resuming with
another number of ranks, or on another device type, continues from z streams re-derived from
(seed, rank, step) and says so: correct training, but not the same numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gan.checkpoint import set_rng_state, z_seed
from gan.config import TrainConfig
from gan.models import build_models
from gan.runtime import Runtime, TrainingError
from gan.sample import sample_z
from gan.step import make_optimizer

SAMPLE_GRID = 64  # images in each periodic sample grid (8 x 8)


@dataclass
class TrainState:
    """What the steps change and a checkpoint stores. `G_raw` and `D_raw` are the networks
    themselves; `G` and `D` are what the step calls (DDP wrappers under torchrun, compiled with
    --compile) and `D_plain` is D as the G update calls it (never the DDP wrapper)."""

    G_raw: nn.Module
    D_raw: nn.Module
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    z_rng: torch.Generator
    fixed_z: torch.Tensor  # the z of every sample grid of the run
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    G: nn.Module | None = None
    D: nn.Module | None = None
    D_plain: nn.Module | None = None

    def advance(self, steps_per_epoch: int) -> None:
        """Count a step; at the end of an epoch the counters point at the next one already (so
        a checkpoint taken then resumes there)."""
        self.step, self.batch_in_epoch = self.step + 1, self.batch_in_epoch + 1
        if self.batch_in_epoch == steps_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0


def new_state(config: TrainConfig, rt: Runtime) -> TrainState:
    """Seeded networks (the paper's init), their optimizers and this rank's z generator."""
    torch.manual_seed(config.seed)
    G, D = build_models(dataclasses.asdict(config))
    G = G.to(rt.device, memory_format=torch.channels_last)
    D = D.to(rt.device, memory_format=torch.channels_last)
    opt_G = make_optimizer(G, config.lr, config.beta1)
    opt_D = make_optimizer(D, config.lr, config.beta1)
    z_rng = torch.Generator(rt.device).manual_seed(z_seed(config.seed, rt.rank))
    fixed_z = sample_z(SAMPLE_GRID, config.nz, config.prior,
                       torch.Generator().manual_seed(config.seed + 2))
    return TrainState(G, D, opt_G, opt_D, z_rng, fixed_z)


def shard_list(urls: list[str], counts: list[int]) -> list[list]:
    """What identifies the training data whatever folder it was moved to: shard names and
    their sample counts (stored in checkpoints)."""
    return [[Path(url).name, count] for url, count in zip(urls, counts, strict=True)]


def check_same_data(checkpoint: dict, shards: list[list], data: str) -> None:
    """A resumed run must read the shards it started on (moved is fine, other data is not)."""
    trained_on = checkpoint.get("shards")
    if trained_on is None or trained_on == shards:
        return
    raise TrainingError(
        f"--resume: this run trained on other shards ({checkpoint['config']['data']}: "
        f"{len(trained_on)} shards, {sum(c for _, c in trained_on)} images) than --data {data} "
        f"({len(shards)} shards, {sum(c for _, c in shards)} images); resume with its own data, "
        f"or start a new run in another --out")


def restore(st: TrainState, checkpoint: dict, config: TrainConfig, rt: Runtime,
            steps_per_epoch: int) -> str | None:
    """Put a checkpoint's networks, optimizers, counters and RNG states back. Returns a note
    for the user when the run cannot continue exactly (another number of ranks, another
    device type): then this rank's z stream is re-derived from (seed, rank, step)."""
    st.G_raw.load_state_dict(checkpoint["G"])
    st.D_raw.load_state_dict(checkpoint["D"])
    st.opt_G.load_state_dict(checkpoint["opt_G"])
    st.opt_D.load_state_dict(checkpoint["opt_D"])
    st.step, st.epoch = checkpoint["step"], checkpoint["epoch"]
    st.batch_in_epoch = checkpoint["batch_in_epoch"]
    st.fixed_z = checkpoint["fixed_z"]
    states = checkpoint["rng"]
    if isinstance(states, dict):  # written before checkpoints kept every rank's states
        states = [states]
    note = None
    if len(states) != rt.world:
        note = (f"the checkpoint was written by {len(states)} rank(s), this run has {rt.world}: "
                f"z streams re-derived from (seed, rank, step)")
        set_rng_state(states[rt.rank % len(states)], torch.Generator())  # host RNGs only
        exact = False
    else:
        exact = set_rng_state(states[rt.rank], st.z_rng)
        if not exact:
            note = (f"the checkpoint's z streams were drawn on {states[rt.rank]['device']}, this "
                    f"run draws on {rt.device.type}: z streams re-derived from (seed, rank, step)")
    if not exact:
        st.z_rng.manual_seed(z_seed(config.seed, rt.rank, st.step))
    if st.batch_in_epoch >= steps_per_epoch:  # fewer steps per epoch with more ranks
        st.epoch, st.batch_in_epoch = st.epoch + 1, 0
    return note

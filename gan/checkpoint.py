"""Self-describing checkpoints that load with `torch.load(weights_only=True)`.

A checkpoint holds only plain data (tensors, numbers, strings, lists, dicts): G, D, both Adam
states, the step counters, every rank's RNG states and the run config. So it can be loaded without
unpickling arbitrary objects, and `gan sample` or `analysis` can rebuild the models from the
file alone (nanoGPT's rule: the checkpoint carries the model arguments).
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import numpy as np
import torch

from core.errors import UserError
from core.files import write_bytes_atomic
from core.torch_files import TorchFileError, UnsafeFileError, load_plain
from gan.models import Discriminator, Generator, build_models

FORMAT = "dcgan-pipeline/checkpoint"
VERSION = 1
# What load_models needs from the stored config to rebuild the networks.
MODEL_KEYS = ("image_size", "nz", "width", "arch", "prior")


class CheckpointError(UserError):
    """The file cannot be used as a checkpoint; the message is for the user."""


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write `state` (plain data) atomically: a crash mid-write, or a full disk, leaves the
    previous file intact and the partial one under a .tmp name."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buffer)
    try:
        write_bytes_atomic(path, buffer.getvalue())
    except OSError as err:
        raise CheckpointError(
            f"{path}: could not write the checkpoint ({err.strerror}); the previous one is "
            f"intact, the partial file is {path.name}.tmp") from None


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint (onto the CPU) without unpickling code; CheckpointError says what is
    wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = load_plain(path)
    except UnsafeFileError as err:
        raise CheckpointError(str(err)) from None
    except TorchFileError as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({err})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a dcgan-pipeline checkpoint (written by `gan train`)")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')}, "
                              f"this code reads version {VERSION}")
    return state


def load_models(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[Generator, Discriminator, dict]:
    """Rebuild G and D from a checkpoint (in eval mode) and return them with the run config."""
    state = load_checkpoint(path)
    config = state.get("config", {})
    missing = [k for k in MODEL_KEYS if k not in config]
    if missing:
        raise CheckpointError(f"{path}: checkpoint config lacks {', '.join(missing)}")
    generator, discriminator = build_models(config)
    generator.load_state_dict(state["G"])
    discriminator.load_state_dict(state["D"])
    return generator.to(device).eval(), discriminator.to(device).eval(), dict(config)


def z_seed(seed: int, rank: int, step: int = 0) -> int:
    """The seed of rank `rank`'s z stream: distinct per rank (so DDP ranks draw different fakes)
    and, with `step`, a fresh stream to continue from when a stored one cannot be used."""
    entropy = [seed % 2**64, rank, step]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)


def rng_state(z_rng: torch.Generator) -> dict:
    """Every random number generator this process draws from, as plain data (tensors and
    lists), so that a resumed run continues their sequences exactly. The z generator's device
    type is kept with its state: a CUDA generator's state does not fit a CPU one."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "device": z_rng.device.type,
        "z": z_rng.get_state(),
        "torch": torch.get_rng_state(),
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, z_rng: torch.Generator) -> bool:
    """Put back what `rng_state` stored; False (and `z_rng` untouched) when the stored z state
    is for another device type. CUDA states are restored only for the GPUs that exist here."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(state.get("cuda", [])[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    if state.get("device", z_rng.device.type) != z_rng.device.type:
        return False
    z_rng.set_state(state["z"])
    return True

"""Self-describing checkpoints that load with `torch.load(weights_only=True)`.

A checkpoint holds only plain data (tensors, numbers, strings, lists, dicts): G, D, both Adam
states, the step counters, every RNG state and the run config. So it can be loaded without
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

from gan.models import Discriminator, Generator, build_models
from pipeline.files import write_bytes_atomic

FORMAT = "dcgan-pipeline/checkpoint"
VERSION = 1
# What load_models needs from the stored config to rebuild the networks.
MODEL_KEYS = ("image_size", "nz", "width", "arch", "prior")


class CheckpointError(Exception):
    """The file cannot be used as a checkpoint; the message is for the user."""


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write `state` (plain data) atomically: a crash mid-write leaves the previous file intact."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buffer)
    write_bytes_atomic(Path(path), buffer.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint (onto the CPU) without unpickling code; CheckpointError says what is
    wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # arbitrary bytes fail in arbitrary ways
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({first_line})") from None
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


def rng_state(z_rng: torch.Generator) -> dict:
    """Every random number generator a run draws from, as plain data (tensors and lists), so
    that a resumed run continues their sequences exactly."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "z": z_rng.get_state(),
        "torch": torch.get_rng_state(),
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, z_rng: torch.Generator) -> None:
    """Put back what `rng_state` stored."""
    z_rng.set_state(state["z"])
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

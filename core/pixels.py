"""Pixels <-> the networks' input range: uint8 RGB and float in [-1, 1] (tanh's range).

The paper scales images to [-1, 1] and nothing else; every model in the project (G, D, the
dedup autoencoder) reads and writes that range, so the conversion is written once here.
"""

from __future__ import annotations

import numpy as np
import torch


def to_float(pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 RGB, channels last ((N,) S, S, 3) -> float32 channels first ((N,) 3, S, S) in
    [-1, 1], on the tensor's own device (so a uint8 batch can cross to a GPU as bytes first)."""
    if isinstance(pixels, np.ndarray) and not pixels.flags.writeable:
        pixels = pixels.copy()  # a read-only memmap: torch refuses to share its memory
    return torch.as_tensor(pixels).movedim(-1, -3).float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float ((N,) 3, S, S) in [-1, 1] -> uint8 RGB ((N,) S, S, 3) as a CPU array; values
    outside the range are clipped, as a PNG would."""
    pixels = images.detach().float().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.movedim(-3, -1).cpu().numpy()

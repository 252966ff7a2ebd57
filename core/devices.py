"""One meaning of `--device auto` for every command that runs torch."""

from __future__ import annotations

import torch

from core.errors import UserError


class DeviceError(UserError):
    """A device name torch does not know, or a GPU this torch cannot see."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' is the first CUDA GPU when torch sees one, else the CPU; anything else is taken
    as torch spells devices ('cpu', 'cuda', 'cuda:1'; a torch.device is checked the same way).
    A misspelt device, or a GPU this torch cannot see, is a DeviceError for the user, before
    any work (not a traceback from deep inside torch once a model is being moved)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N") from None
    if resolved.type not in ("cpu", "cuda"):
        raise DeviceError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"--device {device}: torch sees no CUDA GPU here; use --device cpu "
                             f"or auto")
        if resolved.index is not None and resolved.index >= count:
            raise DeviceError(f"--device {device}: torch sees {count} GPU(s), cuda:0 to "
                             f"cuda:{count - 1}")
    return resolved

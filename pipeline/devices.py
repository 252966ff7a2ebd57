"""One meaning of `--device auto` for every command that runs torch."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' is the first CUDA GPU when torch sees one, else the CPU; anything else is taken
    as torch spells devices ('cpu', 'cuda', 'cuda:1'), and a misspelt one is a ValueError that
    names the accepted forms."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N") from None

"""Reading torch files without running code: `torch.load(weights_only=True)`, with errors for
users.

A refused pickle must be reported as refused. torch's own message for it advises re-running
`torch.load` with `weights_only=False`, which is exactly what must not be done with a file of
unknown origin, so that advice is never relayed.
"""

from __future__ import annotations

import os
import pickle
import re

import torch

from core.errors import UserError


class TorchFileError(UserError):
    """A torch file that does not load (damaged, not a torch file); the message says why."""


class UnsafeFileError(TorchFileError):
    """The file holds pickled Python objects that could run code when loaded; refused."""


def load_plain(path: str | os.PathLike) -> object:
    """The tensors and plain values in a torch file, on the CPU. UnsafeFileError for a file
    that holds other pickled objects; TorchFileError with the first line of the reason for a
    file that does not load (damaged, not a torch file)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            found = re.search(r"GLOBAL ([\w.]+)", str(err))
            what = f" ({found.group(1)})" if found else ""
            raise UnsafeFileError(
                f"{path}: refused: it holds pickled Python objects{what} that could run code "
                f"when loaded; only plain tensors and numbers are read from torch files") from None
        raise TorchFileError(_first_line(err)) from None
    except Exception as err:  # arbitrary bytes fail in arbitrary ways
        raise TorchFileError(_first_line(err)) from None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__

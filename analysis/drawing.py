"""How an annotation's samples were drawn, so that whoever draws them again gets the same images.

A sample of G is fixed by its z, the generator (the checkpoint file), the BatchNorm mode and, with
batch statistics, the other z's of its batch. `analysis annotate` draws its z's in consecutive
batches of a fixed size (never all at once: memory stays flat in the number of samples) and
records all four in boxes.json as `drawn_with`. Reopening the annotation, and `remove-windows`
reading its boxes, compare that record with the checkpoint and `--bn` they are given and refuse
a mismatch, since redrawn with another G the saved boxes would sit over other images.

No torch at import (it is imported where a checkpoint is hashed or G is run): the command line
reads MAX_SAMPLES while it parses, before torch is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import UserError
from gan.cli_options import BN_MODES

if TYPE_CHECKING:
    import torch
    from torch import nn

# A person boxes a few images a minute: 2,048 is a long day's work (the paper boxed 150), and
# the page shows every sample in one grid.
MAX_SAMPLES = 2048
# z's per call of G: ~250 MB of activations for the paper's G at 64x64, whatever --n is. With
# batch statistics sample i is drawn with samples BATCH_SIZE * (i // BATCH_SIZE) onwards, up to
# BATCH_SIZE of them; up to BATCH_SIZE samples (the paper's 150 included) form one batch, as
# they did before annotate drew in batches.
BATCH_SIZE = 256
RECORD_KEY = "drawn_with"


def check_sample_count(count: int, what: str, advice: str = "draw fewer") -> None:
    """UserError, before anything is drawn, for an annotation of no samples or of more than
    a person can box."""
    if not 1 <= count <= MAX_SAMPLES:
        raise UserError(f"{what}: an annotation has 1 to {MAX_SAMPLES} samples (a person boxes "
                        f"each by hand); {advice}")


@dataclass(frozen=True)
class DrawnWith:
    """The generator, BatchNorm mode and batch size an annotation's samples were drawn with
    (`ckpt` is the path given then, for messages; the SHA-256 is what is compared)."""

    ckpt: str
    ckpt_sha256: str
    bn: str
    batch_size: int

    @classmethod
    def of(cls, ckpt: str | os.PathLike, bn: str, batch_size: int = BATCH_SIZE) -> DrawnWith:
        """The record for drawing now with the checkpoint file `ckpt` (hashed here)."""
        from gan.quality.extractors import sha256_of

        return cls(str(ckpt), sha256_of(Path(ckpt)), bn, batch_size)

    @classmethod
    def from_json(cls, value: object, where: str) -> DrawnWith:
        """The record as boxes.json holds it; a UserError naming `where` if it is damaged."""
        fields = {"ckpt": str, "ckpt_sha256": str, "bn": str, "batch_size": int}
        if not isinstance(value, dict) or set(value) != set(fields) or not all(
                isinstance(value[k], t) and not isinstance(value[k], bool)
                for k, t in fields.items()) or value["batch_size"] < 1 \
                or value["bn"] not in BN_MODES:
            raise UserError(f'{where}: "{RECORD_KEY}" must be {{"ckpt": path, "ckpt_sha256": '
                            'hex, "bn": "batch" or "running", "batch_size": n >= 1}; fix or '
                            "remove it")
        return cls(**value)

    def as_json(self) -> dict:
        return asdict(self)

    def differences(self, now: DrawnWith) -> list[str]:
        """What would draw other images with `now` than with this record (the checkpoint's
        contents, the BatchNorm mode), each said with the recorded value; empty if nothing."""
        found = []
        if now.ckpt_sha256 != self.ckpt_sha256:
            found.append(f"--ckpt {now.ckpt} (sha256 {now.ckpt_sha256[:12]}) is not the "
                         f"checkpoint they were drawn with, {self.ckpt} (sha256 "
                         f"{self.ckpt_sha256[:12]})")
        if now.bn != self.bn:
            found.append(f"--bn {now.bn}: they were drawn with --bn {self.bn}")
        return found

    def describe(self) -> str:
        return f"--ckpt {self.ckpt} and --bn {self.bn}"


def drawn_batches(generator: nn.Module, z: torch.Tensor, bn: str,
                  batch_size: int | None) -> Iterator[tuple[int, torch.Tensor]]:
    """(index of the first, images) for consecutive batches of `batch_size` z's (None: all of
    them as one batch), each G(z) in [-1, 1] as gan.sample.generate draws it."""
    from gan.sample import generate

    step = batch_size or len(z)
    for start in range(0, len(z), step):
        yield start, generate(generator, z[start:start + step], bn)

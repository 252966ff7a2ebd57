"""Features streamed, batch by batch, into float64 running sums (for FID's mean and covariance)
and into a float32 .npy file on disk (for KID's subsets and precision/recall's neighbours), so
memory stays flat in the number of images: one batch, one d x d accumulator.

The sums are taken about a shift (the first batch's mean), which keeps the covariance's
"sum of squares minus n mean^2" free of cancellation when the features' mean is large next to
their spread.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class Statistics:
    """Mean and covariance of a feature set, and how many features made them."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int


class RunningMoments:
    """float64 sums of x and x x^T (about a shift), on the device the features are on."""

    def __init__(self):
        self.n = 0
        self.shift = self.total = self.outer = None

    def add(self, features: torch.Tensor) -> None:
        x = features.double()
        if self.shift is None:
            self.shift = x.mean(dim=0)
            self.total = torch.zeros_like(self.shift)
            self.outer = torch.zeros(len(self.shift), len(self.shift), dtype=torch.float64,
                                     device=x.device)
        x = x - self.shift
        self.n += len(x)
        self.total += x.sum(dim=0)
        self.outer.addmm_(x.T, x)

    def statistics(self) -> Statistics:
        """Mean and unbiased covariance (n - 1 in the denominator, as numpy's np.cov)."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 features, got {self.n}")
        mean = self.total / self.n
        sigma = (self.outer - self.n * torch.outer(mean, mean)) / (self.n - 1)
        return Statistics((mean + self.shift).cpu().numpy(), sigma.cpu().numpy(), self.n)


def collect(batches: Iterable[torch.Tensor], n: int, features_path: Path) -> Statistics:
    """Stream (B, D) feature batches, `n` rows in all, into `features_path` (float32 .npy,
    appended with plain writes, so the process holds no more than a batch of it) and the
    running moments; returns the statistics."""
    moments, written = RunningMoments(), 0
    with open(features_path, "wb") as file:
        for batch in batches:
            if written == 0:
                header = {"descr": "<f4", "fortran_order": False, "shape": (n, batch.shape[1])}
                np.lib.format.write_array_header_1_0(file, header)
            moments.add(batch)
            file.write(batch.float().cpu().numpy().astype("<f4", copy=False).tobytes())
            written += len(batch)
    if written != n:
        raise ValueError(f"expected {n} features, got {written}")
    return moments.statistics()

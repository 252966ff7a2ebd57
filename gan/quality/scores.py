"""The three scores, in float64, from features that may be far larger than memory allows to
square: FID from two (mean, covariance) pairs, KID from subsets, precision/recall from nearest
neighbours found batch by batch.

- FID (Heusel et al. 2017): |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2). The trace of
  the square root is taken from the eigenvalues of S1^1/2 S2 S1^1/2, which is symmetric and
  positive semi-definite, so it has the same (real, non-negative) eigenvalues as S1 S2 without
  the general square root's complex arithmetic; this is stable for the rank-deficient
  covariances of fewer samples than features. The references' checks have their counterparts
  here: non-finite statistics are refused, and so is a product whose eigenvalues are negative
  beyond rounding (where scipy's sqrtm would return a large imaginary part).
- KID (Binkowski et al. 2018): the unbiased MMD^2 with the kernel (x.y / d + 1)^3, averaged
  over random subsets (mean and standard deviation), the subsets drawn as torch-fidelity draws
  them, so the same seed gives the same value.
- Precision and recall (Kynkaanniemi et al. 2019): each real feature's ball reaches its k-th
  nearest real neighbour; precision is the share of fake features inside some real ball, recall
  the share of real features inside some fake ball. Distances are computed in blocks of rows
  and columns, so memory is a block, never N x N.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.linalg
import torch

from core.errors import UserError

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
PR_K = 3
BLOCK = 2048  # rows and columns of one distance block (2048 x 2048 float64 = 32 MiB)


class ScoreError(UserError):
    """The features cannot give a meaningful score (non-finite, too few); says why."""


# ---------------------------------------------------------------------------------------------
# FID


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """FID between two Gaussians given by their means and covariances (float64)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    for name, value in (("mean", mu1), ("mean", mu2), ("covariance", sigma1),
                        ("covariance", sigma2)):
        if not np.isfinite(value).all():
            raise ScoreError(f"the features' {name} holds NaN or infinity: the extractor "
                             "produced non-finite features")
    root1 = psd_sqrt(sigma1)
    eigenvalues = scipy.linalg.eigvalsh(root1 @ sigma2 @ root1)
    scale = max(float(np.abs(eigenvalues).max(initial=0.0)), 1e-300)
    if eigenvalues.min(initial=0.0) < -1e-6 * scale:
        raise ScoreError(f"the covariance product has a negative eigenvalue "
                         f"({eigenvalues.min():.3g}, largest {scale:.3g}): the covariances are "
                         "not positive semi-definite")
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a covariance; rounding's tiny negative eigenvalues -> 0."""
    eigenvalues, vectors = scipy.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ vectors.T


# ---------------------------------------------------------------------------------------------
# KID


def kid(features1, features2, *, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
        seed: int = 0) -> tuple[float, float, int]:
    """(mean, std, subset size) of the unbiased polynomial-kernel MMD^2 over `subsets` random
    subsets. The subset size shrinks to the smaller set's size when that is smaller. Features
    may be memory-mapped: only the subsets are read."""
    size = min(subset_size, len(features1), len(features2))
    if size < 2:
        raise ScoreError(f"KID needs at least 2 features per set, got {size}")
    rng = np.random.RandomState(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = np.asarray(features1[np.sort(rng.choice(len(features1), size, replace=False))],
                       np.float64)
        y = np.asarray(features2[np.sort(rng.choice(len(features2), size, replace=False))],
                       np.float64)
        values[i] = polynomial_mmd2(x, y)
    return float(values.mean()), float(values.std()), size


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between equal-sized x and y with k(a, b) = (a.b / d + 1)^3."""
    m, d = x.shape

    def kernel(a, b):
        return (a @ b.T / d + 1) ** 3

    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / (m * m))


# ---------------------------------------------------------------------------------------------
# Precision and recall


def precision_recall(real, fake, *, k: int = PR_K, device: str | torch.device = "cpu",
                     block: int = BLOCK) -> tuple[float, float]:
    """(precision, recall) of `fake` against `real` with k-nearest-neighbour balls. Features
    (arrays, possibly memory-mapped) are read in blocks and compared in float64 on `device`."""
    for name, features in (("real", real), ("fake", fake)):
        if len(features) <= k:
            raise ScoreError(f"precision/recall with k={k} needs more than {k} {name} features, "
                             f"got {len(features)}")
    real_radii = knn_radii(real, k, device, block)
    fake_radii = knn_radii(fake, k, device, block)
    precision = covered_share(fake, real, real_radii, device, block)
    recall = covered_share(real, fake, fake_radii, device, block)
    return precision, recall


def _blocks(features, device, block: int):
    """(start, float64 block on `device`) over the rows of `features`."""
    for start in range(0, len(features), block):
        rows = np.asarray(features[start:start + block], np.float64)
        yield start, torch.from_numpy(rows).to(device)


def _scan(queries, points, device, block: int,
          reduce: Callable[[torch.Tensor, int, torch.Tensor | None], torch.Tensor]
          ) -> torch.Tensor:
    """For each block of queries, fold `reduce(distances, column start, state)` over the
    blocks of points; returns the states of all queries, concatenated."""
    out = []
    for _, q in _blocks(queries, device, block):
        state = None
        for start, p in _blocks(points, device, block):
            state = reduce(torch.cdist(q, p), start, state)
        out.append(state)
    return torch.cat(out)


def knn_radii(features, k: int, device, block: int = BLOCK) -> torch.Tensor:
    """Each feature's distance to its k-th nearest other feature (itself excluded)."""

    def smallest(distances, _start, kept):
        merged = distances if kept is None else torch.cat([kept, distances], dim=1)
        return merged.topk(min(k + 1, merged.shape[1]), dim=1, largest=False).values

    return _scan(features, features, device, block, smallest)[:, k]


def covered_share(queries, points, radii: torch.Tensor, device, block: int = BLOCK) -> float:
    """The share of `queries` inside at least one ball (point, radius)."""
    radii = radii.to(device)

    def inside(distances, start, found):
        hit = (distances <= radii[start:start + distances.shape[1]]).any(dim=1)
        return hit if found is None else found | hit

    return float(_scan(queries, points, device, block, inside).double().mean())

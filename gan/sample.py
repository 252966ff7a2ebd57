"""Drawing from a trained generator: grids, latent walks (paper Fig. 4), vector arithmetic (Fig. 7).

BatchNorm at sampling time: the authors' Theano code normalised with the statistics of the batch
being generated; PyTorch's `eval()` uses the running averages collected during training. Both are
offered (`bn="batch"` is the default, as the paper's figures were made that way). In batch mode
a sample depends on the rest of its batch, so each figure is generated as one batch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from core.errors import UserError
from core.files import write_png_atomic
from core.pixels import to_uint8
from core.sheets import contact_sheet
from gan.cli_options import BN_MODES
from gan.config import MAX_IMAGES, PRIORS

ARITHMETIC_SAMPLES = 8  # noisy samples of Y in the Fig. 7 sheet, as in the paper


def sample_z(
    n: int, nz: int, prior: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """n latent vectors: uniform in [-1, 1] (the paper) or standard normal (reimplementations)."""
    device = generator.device if generator is not None else None  # CUDA generators draw there
    if prior == "uniform":
        return torch.rand(n, nz, generator=generator, device=device).mul_(2).sub_(1)
    if prior == "normal":
        return torch.randn(n, nz, generator=generator, device=device)
    raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")


def check_figure_size(images: int, what: str) -> None:
    """UserError, before anything is allocated, for a figure too large to draw as one batch."""
    if images > MAX_IMAGES:
        raise UserError(f"{what} asks for {images} images in one figure, drawn as one batch; "
                        f"at most {MAX_IMAGES}")


def load_z(path: Path, nz: int) -> torch.Tensor:
    """The z's of a `gan sample --save-z` file as float32 (N, nz); UserError naming the file
    if it holds anything else (no rows, another shape, complex numbers, NaN or infinity, which
    G would turn into a blank image without a word)."""
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UserError(f"{path}: not a .npy array of z's ({err})") from None
    if z.ndim != 2 or z.shape[1] != nz or len(z) == 0:
        raise UserError(f"{path}: expected an (N, {nz}) array of z's (the checkpoint's G takes "
                        f"{nz}), found shape {z.shape}")
    if not (np.issubdtype(z.dtype, np.floating) or np.issubdtype(z.dtype, np.integer)):
        raise UserError(f"{path}: expected real numbers, found {z.dtype}")
    if not np.isfinite(z).all():
        raise UserError(f"{path}: holds NaN or infinite values; z's must be finite real numbers")
    return torch.from_numpy(z.astype(np.float32))


@contextlib.contextmanager
def bn_statistics(model: nn.Module, bn: str) -> Iterator[nn.Module]:
    """Run `model` with batch ("batch") or running ("running") BatchNorm statistics.

    Batch mode needs train(), which would also fold the sampled batch into the running
    averages; the buffers are restored afterwards so sampling never changes the model. The
    model's train/eval mode is restored too.
    """
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
    was_training = model.training
    saved = {name: buf.clone() for name, buf in model.named_buffers()}
    model.train(bn == "batch")
    try:
        yield model
    finally:
        with torch.no_grad():
            for name, buf in model.named_buffers():
                buf.copy_(saved[name])
        model.train(was_training)


def generate(generator: nn.Module, z: torch.Tensor, bn: str = "batch") -> torch.Tensor:
    """G(z) in [-1, 1] as float32 on G's device, without gradients, as one batch."""
    device = next(generator.parameters()).device
    with torch.no_grad(), bn_statistics(generator, bn):
        return generator(z.to(device, torch.float32)).float()


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    """The tile under a white strip carrying `text`, so a person can pick samples by number."""
    height = max(12, tile.shape[0] // 5)
    strip = np.full((height, tile.shape[1], 3), 255, np.uint8)
    scale = height / 30
    cv2.putText(strip, text, (2, height - 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
                cv2.LINE_AA)
    return np.concatenate([strip, tile])


def grid_image(tiles: Sequence[np.ndarray], nrow: int = 8, numbered: bool = False) -> np.ndarray:
    """RGB uint8 tiles -> one RGB sheet, `nrow` tiles per row (numbered from 0 if asked)."""
    if numbered:
        tiles = [_label(tile, str(i)) for i, tile in enumerate(tiles)]
    return contact_sheet(list(tiles), cols=nrow)


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8,
              numbered: bool = False) -> Path:
    """Write a PNG grid of (N, 3, S, S) images in [-1, 1] atomically; returns the path."""
    path = Path(path)
    write_png_atomic(path, grid_image(list(to_uint8(images)), nrow, numbered))
    return path


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation per row of a, b (falls back to linear for parallel vectors)."""
    a_n, b_n = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((a_n * b_n).sum(-1, keepdim=True).clamp(-1, 1))
    sin = torch.sin(omega)
    linear = sin.abs() < 1e-6
    safe = torch.where(linear, torch.ones_like(sin), sin)
    wa = torch.where(linear, 1 - t, torch.sin((1 - t) * omega) / safe)
    wb = torch.where(linear, t, torch.sin(t * omega) / safe)
    return wa * a + wb * b


def walk_z(points: torch.Tensor, steps: int, spherical: bool = False) -> torch.Tensor:
    """Paper Fig. 4: for each consecutive pair of `points`, `steps` z's from one to the next
    (both ends included), row by row -> ((len(points) - 1) * steps, nz)."""
    if len(points) < 2 or steps < 2:
        raise ValueError("a walk needs at least 2 points and 2 steps")
    t = torch.linspace(0, 1, steps).unsqueeze(1)
    rows = []
    for a, b in zip(points[:-1], points[1:], strict=True):
        a, b = a.expand(steps, -1), b.expand(steps, -1)
        rows.append(slerp(a, b, t) if spherical else torch.lerp(a, b, t))
    return torch.cat(rows)


def interpolate(generator: nn.Module, prior: str, points: int = 9, steps: int = 10,
                seed: int = 0, spherical: bool = False, bn: str = "batch") -> torch.Tensor:
    """Images of a walk through a chain of `points` random z's (one row per leg)."""
    rng = torch.Generator().manual_seed(seed)
    chain = sample_z(points, generator.nz, prior, rng)
    return generate(generator, walk_z(chain, steps, spherical), bn)


def arithmetic(generator: nn.Module, z: torch.Tensor, a: Sequence[int], b: Sequence[int],
               c: Sequence[int], noise: float = 0.25, seed: int = 0,
               bn: str = "batch") -> dict[str, torch.Tensor]:
    """Paper Fig. 7: Y = mean(z[a]) - mean(z[b]) + mean(z[c]); G(Y), G(Y + U(-noise, noise))
    and, for contrast, the same arithmetic on the exemplar images' pixels.

    Everything is generated in one batch, so batch-statistics BatchNorm sees the same batch for
    every image in the figure.
    """
    for name, idx in (("a", a), ("b", b), ("c", c)):
        if not idx:
            raise UserError(f"concept {name} needs at least one exemplar index")
        bad = [i for i in idx if not 0 <= i < len(z)]
        if bad:
            raise UserError(f"concept {name}: indices {bad} outside the {len(z)} saved z's")
    z = z.float()
    means = [z[list(idx)].mean(0) for idx in (a, b, c)]
    y = means[0] - means[1] + means[2]
    rng = torch.Generator().manual_seed(seed)
    jitter = torch.rand(ARITHMETIC_SAMPLES, z.shape[1], generator=rng).mul_(2 * noise).sub_(noise)
    exemplars = z[list(a) + list(b) + list(c)]
    batch = torch.cat([exemplars, torch.stack(means), y[None], y[None] + jitter])
    images = generate(generator, batch, bn)
    n_ex = len(exemplars)
    ex_images = images[:n_ex]
    bounds = np.cumsum([0, len(a), len(b), len(c)])
    pixel_means = [ex_images[bounds[i]:bounds[i + 1]].mean(0) for i in range(3)]
    pixel = (pixel_means[0] - pixel_means[1] + pixel_means[2]).clamp(-1, 1)
    return {
        "exemplars": ex_images,
        "concept_means": images[n_ex:n_ex + 3],
        "result": images[n_ex + 3],
        "samples": images[n_ex + 4:],
        "pixel_result": pixel,
        "bounds": torch.as_tensor(bounds),
    }


def arithmetic_sheet(result: dict[str, torch.Tensor]) -> np.ndarray:
    """The Fig. 7 layout: one row per concept (exemplars, then G(mean z)); then G(Y) followed by
    the noisy samples; then the pixel-space result alone. Empty cells are white."""
    bounds = result["bounds"].tolist()
    exemplars = to_uint8(result["exemplars"])
    means = to_uint8(result["concept_means"])
    samples = to_uint8(result["samples"])
    blank = np.full_like(means[0], 255)
    rows = [list(exemplars[bounds[i]:bounds[i + 1]]) + [blank, means[i]] for i in range(3)]
    rows.append(list(to_uint8(result["result"][None])) + list(samples))
    rows.append(list(to_uint8(result["pixel_result"][None])))
    cols = max(len(row) for row in rows)
    tiles = [tile for row in rows for tile in row + [blank] * (cols - len(row))]
    return contact_sheet(tiles, cols=cols)

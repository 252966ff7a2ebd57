"""The paper's semantic hash: a 3072-128-3072 de-noising, dropout-regularized ReLU autoencoder
on 32x32 center crops, whose 128 code units are binarized by thresholding the ReLU (active -> 1).

Why the recipe departs from the plain one (each change measured; the numbers are in
docs/decisions.md):
- the de-noising corruption is what re-uploading does to a small crop (`corrupt`), not Gaussian
  pixel noise, so the encoder learns to ignore exactly that;
- each crop is standardized first (`standardize`), so brightness or contrast cannot flip a bit
  and low-contrast crops stop piling up on a few codes;
- the decoder reads the binarized code, with noise on the code pre-activations while training
  (`HashConfig.binary`, `code_noise`): the bits are then the decoder's only input, and units are
  pushed away from the threshold where a re-encoded copy would flip them;
- training runs at least a minimum number of optimizer steps (pipeline.dedup), as an
  undertrained hash collides.

The model is saved as a plain state dict plus a JSON-able config, loadable with
`torch.load(..., weights_only=True)`, so the same hash can be applied to new data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from core.devices import resolve_device
from core.files import write_bytes_atomic
from core.pixels import to_float
from core.torch_files import TorchFileError, UnsafeFileError, load_plain
from pipeline.dedup.hashing import STD_FLOOR, HashEncoder

LEARNING_RATE = 1e-3  # Adam, cosine-annealed to 0 over the run
CAPTION_RATE = 0.25  # of the training crops that get a caption-like band (`with_caption`)
PROGRESS_EVERY = 50  # batches between copies of the loss to the host for the progress bar


@dataclass(frozen=True)
class HashConfig:
    """Everything that defines a trained hash; saved with the weights. The defaults users see
    (side 32, 128 bits, noise, dropout) live in pipeline.dedup, the stage that exposes them."""

    side: int  # crops are side x side x 3
    bits: int  # code units
    noise: float  # strength of the realistic input corruption (0 = plain autoencoder)
    dropout: float  # dropout on the code units during training (the paper's regularizer)
    binary: bool = False  # decoder reads the binarized code (straight-through gradient)
    code_noise: float = 0.0  # Gaussian noise on the code pre-activations while training

    @property
    def pixels(self) -> int:
        return 3 * self.side * self.side


class SemanticHashAutoencoder(nn.Module):
    """3072 -> 128 (ReLU) -> 3072; the code is the set of active ReLUs. With `config.binary` the
    decoder reads that set (0/1) instead of the ReLU values."""

    def __init__(self, config: HashConfig):
        super().__init__()
        self.config = config
        self.encoder = nn.Linear(config.pixels, config.bits)
        self.dropout = nn.Dropout(config.dropout)
        self.decoder = nn.Linear(config.bits, config.pixels)

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """The code units before the ReLU; a bit is on where this is > 0."""
        return self.encoder(standardize(x).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of `standardize(x)` (what the autoencoder is trained to output)."""
        z = self.preactivation(x)
        if self.training and self.config.code_noise > 0:
            z = z + self.config.code_noise * torch.randn_like(z)
        if self.config.binary:
            soft = torch.sigmoid(z)
            code = (z > 0).to(z.dtype) + soft - soft.detach()
        else:
            code = F.relu(z)
        return self.decoder(self.dropout(code)).view_as(x)


def standardize(x: torch.Tensor, floor: float = STD_FLOOR / 127.5) -> torch.Tensor:
    """Each crop minus its mean, over its standard deviation (at least `floor`, STD_FLOOR grey
    levels on the [-1, 1] scale): pipeline.dedup.hashing.standardize's rule (why it is there),
    in torch, as training needs it on the device."""
    flat = x.flatten(1)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, keepdim=True).clamp_min(floor)
    return ((flat - mean) / std).view_as(x)


def hash_encoder(model: SemanticHashAutoencoder) -> HashEncoder:
    """The trained hash as it is applied (pipeline.dedup.hashing): the encoder's weights as numpy
    arrays, columns reordered from torch's channels-first layout to the crops' channels-last
    one, so no batch has to be transposed."""
    side, bits = model.config.side, model.config.bits
    weight = model.encoder.weight.detach().float().cpu().numpy()
    weight = weight.reshape(bits, 3, side, side).transpose(0, 2, 3, 1).reshape(bits, -1)
    bias = model.encoder.bias.detach().float().cpu().numpy()
    return HashEncoder(np.ascontiguousarray(weight), bias.copy())


def to_input(crops: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 N x side x side x 3 crops -> float N x 3 x side x side in [-1, 1] (tanh range).

    To a GPU the crops travel as bytes from pinned memory, without blocking the host, and are
    converted there."""
    device = torch.device(device)
    if device.type != "cuda":
        return to_float(np.asarray(crops))
    pixels = torch.from_numpy(np.array(crops, dtype=np.uint8))  # an own, writable copy
    return to_float(pixels.pin_memory().to(device, non_blocking=True))


def corrupt(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """What re-uploading does to a 32x32 crop, at `strength` 1.0:

    - rescale by up to +-10% and shift by up to 2 px (a crop of a few %, a shifted or resized
      copy: the center crop of the copy covers a slightly different window). Narrower ranges
      (+-6%, 1.5 px) left most crop + resize copies too far from their originals to be proposed;
      wider ones (+-12%, 2.5 px) made the code blind to text overlays (docs/dedup.md, "What each
      part buys");
    - a caption or a watermark's stroke: a quarter of the crops get a band of white or black,
      1-3 px high, across 30-100% of the width, blended at 35-100% (`with_caption`; without
      it, text overlays on the 160 px quality set were proposed for only 0.86 of copies);
    - brightness offset up to +-20 grey levels and contrast up to +-10%;
    - pixel noise up to 3 grey levels (what JPEG/WebP re-encoding leaves after area downscaling).
    `strength` 0 returns `x` unchanged (the plain autoencoder without input corruption).
    """
    if strength <= 0:
        return x
    n = x.shape[0]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        r = torch.rand(n, *shape, generator=generator, device=generator.device)
        return (low + (high - low) * r).to(x.device)

    scale = 1.0 + strength * uniform(-0.10, 0.10, 1)
    shift = strength * uniform(-2.0, 2.0, 2) * (2.0 / x.shape[-1])
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = scale[:, 0]
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    warped = with_caption(warped, uniform, strength)
    contrast = 1.0 + strength * uniform(-0.1, 0.1, 1, 1, 1)
    offset = strength * uniform(-20.0, 20.0, 1, 1, 1) / 127.5
    sigma = strength * uniform(0.0, 3.0, 1, 1, 1) / 127.5
    noise = torch.randn(x.shape, generator=generator, device=generator.device).to(x.device)
    return (warped * contrast + offset + sigma * noise).clamp(-1.0, 1.0)


def with_caption(x: torch.Tensor, uniform: Callable[..., torch.Tensor],
                 strength: float) -> torch.Tensor:
    """`corrupt`'s caption: on CAPTION_RATE of the crops (n x 3 x side x side), a band of white
    or black 1-3 px high, centred anywhere, over 30-100% of the width, blended at 35-100% (times
    `strength`, at most 1). `uniform(low, high, *shape)` draws n x shape from corrupt's
    generator. The rate is a trade: captions make look-alike pictures' codes closer too, and a
    pair of look-alike tiles then passed verification for both seeds tried at half the crops,
    for one seed of three at a quarter (docs/dedup.md, "What each part buys")."""
    side = x.shape[-1]
    pos = torch.arange(side, device=x.device, dtype=x.dtype)
    top, height = uniform(0, side, 1).floor(), uniform(1, 4, 1).floor()
    middle, length = uniform(0, side, 1), uniform(0.3, 1.0, 1) * side
    rows = (pos >= top) & (pos < top + height)  # n x side
    cols = (pos >= middle - length / 2) & (pos < middle + length / 2)
    band = (rows[:, :, None] & cols[:, None, :]).to(x.dtype)[:, None]  # n x 1 x side x side
    shown = (uniform(0, 1, 1, 1, 1) < CAPTION_RATE).to(x.dtype)
    alpha = min(strength, 1.0) * uniform(0.35, 1.0, 1, 1, 1) * shown
    colour = torch.where(uniform(0, 1, 1, 1, 1) < 0.5, 1.0, -1.0).to(x.dtype)
    return x * (1 - alpha * band) + colour * alpha * band


def denoising_loss(model: SemanticHashAutoencoder, clean: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """Reconstruct the (standardized) clean crop from a realistically corrupted copy of it."""
    noisy = corrupt(clean, model.config.noise, generator)
    return F.mse_loss(model(noisy), standardize(clean))


def train(
    crops: np.ndarray,
    config: HashConfig,
    *,
    rows: np.ndarray | None = None,
    epochs: int = 20,
    min_steps: int = 0,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> tuple[SemanticHashAutoencoder, list[float]]:
    """Fit the hash on `crops[rows]` (uint8 N x side x side x 3, e.g. the pass-1 memmap; all
    rows by default).

    Batches are gathered from `crops` in a shuffled order each epoch, so the sample is never
    copied into RAM. Runs `epochs` passes, or more when that is fewer than `min_steps`
    optimizer steps (a small sample needs many passes). Returns the model (eval mode, on the
    CPU) and the mean loss per epoch. The loss stays on the device between progress updates
    (every PROGRESS_EVERY batches, and once per epoch for the history): on a GPU, a copy to the
    host every step would make the host wait for every step.
    """
    rows = np.arange(len(crops)) if rows is None else np.asarray(rows)
    if len(rows) < 2:
        raise ValueError("training the hash needs at least 2 images")
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = SemanticHashAutoencoder(config).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    steps_per_epoch = math.ceil(len(rows) / batch_size)
    epochs = max(epochs, math.ceil(min_steps / steps_per_epoch))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    gen = torch.Generator(device=dev).manual_seed(seed)
    order_rng = np.random.default_rng(seed)
    history: list[float] = []
    bar = tqdm(total=epochs * steps_per_epoch, unit="batch", desc="train hash",
               disable=not progress, dynamic_ncols=True)
    model.train()
    try:
        for _ in range(epochs):
            order = rows[order_rng.permutation(len(rows))]
            total = torch.zeros((), device=dev)
            for start in range(0, len(order), batch_size):
                idx = np.sort(order[start : start + batch_size])
                if len(idx) < 2:
                    continue
                loss = denoising_loss(model, to_input(crops[idx], dev), gen)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.detach() * len(idx)
                bar.update(1)
                if bar.n % PROGRESS_EVERY == 0:
                    bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            history.append(total.item() / len(rows))
    finally:
        bar.close()
    return model.cpu().eval(), history


def save_model(model: SemanticHashAutoencoder, path: Path, extra: dict | None = None) -> None:
    """A plain state dict + config (tensors, numbers and strings only): safe to load anywhere."""
    import io

    payload = {"config": asdict(model.config), "state_dict": model.state_dict(),
               "info": dict(extra or {})}
    buf = io.BytesIO()
    torch.save(payload, buf)
    write_bytes_atomic(Path(path), buf.getvalue())


def load_model(path: Path) -> tuple[SemanticHashAutoencoder, dict]:
    """Load a hash saved by `save_model` without unpickling anything but tensors and plain data."""
    try:
        payload = load_plain(path)
    except UnsafeFileError:
        raise
    except TorchFileError as err:
        raise TorchFileError(f"{path}: not a file saved by torch.save ({err})") from None
    try:
        config = HashConfig(**payload["config"])
        model = SemanticHashAutoencoder(config)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError) as err:
        raise TorchFileError(f"{path}: not a semantic-hash autoencoder saved by pipeline dedup "
                             f"({err})") from None
    return model.eval(), payload.get("info", {})

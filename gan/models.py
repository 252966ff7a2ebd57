"""The DCGAN generator and discriminator (Radford et al. 2015, section 3), two flavours.

`paper` follows the authors' released code: z is projected by a linear layer to a 4x4 map of
`width` channels (with BatchNorm), every up/down step is a 5x5 convolution with stride 2, and D
ends in a linear layer on its flattened last conv map. `compact` is the common PyTorch
reimplementation: 4x4 kernels, z as a 1x1 map expanded to 4x4 by a transposed convolution, D
ending in a 4x4 "valid" convolution. Both halve the channel count at every doubling of the image
side, use BatchNorm everywhere except G's output and D's input, ReLU in G (Tanh at the output)
and LeakyReLU(0.2) in D, and have no pooling and no hidden fully connected layers.

Every layer that a hook may want lives in `.blocks` as a module (activations included), so
`analysis/` can read or zero feature maps with forward hooks instead of re-implementing forward.
"""

from __future__ import annotations

import torch
from torch import nn

from gan.config import check_shape


def _kernel(arch: str) -> tuple[int, int, int]:
    """(kernel, padding, output_padding) of a stride-2 layer that exactly halves/doubles."""
    return (5, 2, 1) if arch == "paper" else (4, 1, 0)


def _size_key(side: int) -> str:
    return f"{side}x{side}"


class Generator(nn.Module):
    """z (N, nz) -> images (N, 3, S, S) in [-1, 1]; block i outputs the map at side 4 * 2**i."""

    def __init__(self, image_size: int = 64, nz: int = 100, width: int | None = None,
                 arch: str = "paper"):
        super().__init__()
        width, doublings = check_shape(image_size, width, arch)
        self.image_size, self.nz, self.width, self.arch = image_size, nz, width, arch
        if arch == "paper":
            project = [nn.Linear(nz, width * 16, bias=False), nn.Unflatten(1, (width, 4, 4))]
        else:
            project = [nn.Unflatten(1, (nz, 1, 1)), nn.ConvTranspose2d(nz, width, 4, 1, 0,
                                                                       bias=False)]
        blocks = [nn.Sequential(*project, nn.BatchNorm2d(width), nn.ReLU(inplace=True))]
        k, pad, out_pad = _kernel(arch)
        channels = width
        for i in range(doublings):
            last = i == doublings - 1
            out = 3 if last else channels // 2
            # A bias before BatchNorm is cancelled by its mean subtraction, so only the output
            # layer has one.
            conv = nn.ConvTranspose2d(channels, out, k, 2, pad, out_pad, bias=last)
            tail = [nn.Tanh()] if last else [nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            blocks.append(nn.Sequential(conv, *tail))
            channels = out
        self.blocks = nn.ModuleList(blocks)
        self.apply(weights_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z
        for block in self.blocks:
            x = block(x)
        return x

    def feature_layers(self) -> dict[str, nn.Module]:
        """Hidden blocks keyed by their output side, from z towards the image."""
        return {_size_key(4 * 2**i): block for i, block in enumerate(self.blocks[:-1])}


class Discriminator(nn.Module):
    """images (N, 3, S, S) -> logits (N,); D(x) = sigmoid(logits), the paper's sigmoid output.

    Returning logits lets training use BCEWithLogitsLoss, which stays finite where
    sigmoid + BCELoss saturates and is safe under autocast.
    """

    def __init__(self, image_size: int = 64, width: int | None = None, arch: str = "paper"):
        super().__init__()
        width, doublings = check_shape(image_size, width, arch)
        self.image_size, self.width, self.arch = image_size, width, arch
        k, pad, _ = _kernel(arch)
        blocks = []
        channels_in = 3
        for i in range(doublings):
            out = width // 2 ** (doublings - 1 - i)
            first = i == 0
            # No BatchNorm on D's input layer (paper, section 3); the conv then needs its bias.
            layers = [nn.Conv2d(channels_in, out, k, 2, pad, bias=first)]
            if not first:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            blocks.append(nn.Sequential(*layers))
            channels_in = out
        self.blocks = nn.ModuleList(blocks)
        if arch == "paper":
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * 16, 1))
        else:
            self.head = nn.Sequential(nn.Conv2d(width, 1, 4, 1, 0), nn.Flatten())
        self.apply(weights_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x).view(-1)

    def feature_layers(self) -> dict[str, nn.Module]:
        """Conv blocks keyed by their output side, input side first; the last is D's last conv."""
        side = self.image_size
        layers = {}
        for block in self.blocks:
            side //= 2
            layers[_size_key(side)] = block
        return layers


def weights_init(module: nn.Module) -> None:
    """The paper's init: conv/linear weights N(0, 0.02), BatchNorm gamma N(1, 0.02), beta 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build_models(config: dict) -> tuple[Generator, Discriminator]:
    """G and D from a run config (the plain dict stored in checkpoints)."""
    arch, size, width = config["arch"], config["image_size"], config["width"]
    return (Generator(size, config["nz"], width, arch), Discriminator(size, width, arch))

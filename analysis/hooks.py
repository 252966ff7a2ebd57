"""Feature hooks every analysis shares: pick a layer of G or D, read it, silence channels, guide
the backward pass through rectifiers.

The hooks work on `nn.Module` instances (the GAN's models use module activations, never
functional calls), are context managers, and leave the model exactly as they found it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from analysis.data import AnalysisError
from gan.models import Discriminator, Generator

RECTIFIERS = (nn.ReLU, nn.LeakyReLU)


def layer_module(model: Generator | Discriminator, layer: str) -> tuple[str, nn.Module]:
    """A feature layer of G or D by its output side ("8x8", ...) or "last" (the one nearest the
    image for G, nearest the verdict for D), as (name, module); an unknown name is the user's
    error and lists the choices."""
    layers = model.feature_layers()
    name = list(layers)[-1] if layer == "last" else layer
    if name not in layers:
        kind = "generator" if isinstance(model, Generator) else "discriminator"
        raise AnalysisError(f"layer {layer!r} not in this {kind}; choose from "
                            f"{['last', *layers]}")
    return name, layers[name]


@contextmanager
def captured_outputs(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the module's output of every forward call made inside the block, in call order
    (one entry per batch when a generator is run in chunks)."""
    outputs: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _inp, out: outputs.append(out))
    try:
        yield outputs
    finally:
        handle.remove()


@contextmanager
def zeroed_channels(module: nn.Module, channels: np.ndarray | torch.Tensor) -> Iterator[None]:
    """Zero the chosen channels of the module's output at every spatial location ("dropping"
    feature maps, as GAN Dissection ablates units); `channels` is a boolean mask over channels
    or a list of channel ids."""
    channels = np.asarray(channels)
    channels = torch.as_tensor(channels if channels.dtype == bool else channels.astype(np.int64))

    def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> torch.Tensor:
        keep = torch.ones(out.shape[1], dtype=out.dtype, device=out.device)
        keep[channels.to(out.device)] = 0
        return out * keep.view(1, -1, *([1] * (out.dim() - 2)))

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class _GuidedGradient(torch.autograd.Function):
    """Identity forward; backward keeps only positive gradients where the unit was active."""

    @staticmethod
    def forward(ctx, out: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(out > 0)
        return out.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (active,) = ctx.saved_tensors
        return grad.clamp(min=0) * active


@contextmanager
def guided_rectifiers(model: nn.Module) -> Iterator[None]:
    """Guided backpropagation (Springenberg et al. 2014) through every ReLU *and* LeakyReLU:
    the backward pass becomes `g_in = clamp(g_out, min=0) * (x > 0)`; the forward is unchanged.

    captum's GuidedBackprop only rewrites nn.ReLU, so on DCGAN's LeakyReLU discriminator it
    silently returns the plain gradient; this rewrites both. A forward hook passes each
    rectifier's output through an identity whose backward applies the guided rule; the
    rectifier's own backward then multiplies by its slope, which is 1 wherever the guided
    gradient is non-zero (for a positive slope, output > 0 exactly where input > 0). Each call
    carries its own mask, so reused modules, in-place rectifiers and forwards without a
    backward all stay correct.
    """
    handles = [
        m.register_forward_hook(lambda _m, _inp, out: _GuidedGradient.apply(out))
        for m in model.modules()
        if isinstance(m, RECTIFIERS)
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()

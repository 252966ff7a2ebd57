"""The maths of one training step: D's loss, the D update, the G update, and the paper's Adam.

One step = one D update on a real and a fake batch, then one G update through D with D's
parameters frozen (no weight gradients are computed for D there). Losses use logits and
BCEWithLogitsLoss; D is still the paper's sigmoid-output discriminator, D(x) = sigmoid(logit).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D's loss: real -> 1, fake -> 0, on logits (stable, autocast-safe)."""
    bce = nn.functional.binary_cross_entropy_with_logits
    return (bce(real_logits, torch.ones_like(real_logits))
            + bce(fake_logits, torch.zeros_like(fake_logits)))


def gan_step(G: nn.Module, D: nn.Module, D_plain: nn.Module, opt_G: torch.optim.Optimizer,
             opt_D: torch.optim.Optimizer, real: torch.Tensor, z: torch.Tensor,
             autocast: Callable[[], contextlib.AbstractContextManager]) -> torch.Tensor:
    """One D update then one G update; returns [loss_D, loss_G, D(x), D(G(z))] on the device.

    `D` may be DDP-wrapped (its gradients are all-reduced); the G update runs through
    `D_plain`, the same network without the DDP wrapper, with D's parameters frozen, so no D
    weight gradients are computed or synchronised there.
    """
    with autocast():
        fake = G(z)
    opt_D.zero_grad(set_to_none=True)
    with autocast():
        real_logits = D(real)
        fake_logits = D(fake.detach())
        loss_D = discriminator_loss(real_logits, fake_logits)
    loss_D.backward()
    opt_D.step()

    D_plain.requires_grad_(False)
    opt_G.zero_grad(set_to_none=True)
    with autocast():
        gen_logits = D_plain(fake)
        loss_G = nn.functional.binary_cross_entropy_with_logits(gen_logits,
                                                                torch.ones_like(gen_logits))
    loss_G.backward()
    opt_G.step()
    D_plain.requires_grad_(True)
    with torch.no_grad():
        return torch.stack([loss_D.float(), loss_G.float(),
                            torch.sigmoid(real_logits.float()).mean(),
                            torch.sigmoid(fake_logits.float()).mean()])


def make_optimizer(model: nn.Module, lr: float, beta1: float) -> torch.optim.Adam:
    """The paper's Adam (lr 2e-4, beta1 0.5); fused kernels where this torch has them."""
    kwargs = {"lr": lr, "betas": (beta1, 0.999)}
    try:
        return torch.optim.Adam(model.parameters(), fused=True, **kwargs)
    except (RuntimeError, TypeError):  # no fused Adam for this device/torch
        return torch.optim.Adam(model.parameters(), **kwargs)

"""The networks follow the paper's architecture rules and the hook contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.errors import UserError
from gan.config import ARCHS
from gan.models import Discriminator, Generator, weights_init


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size", [32, 64, 128])
def test_shapes_and_ranges(arch: str, size: int) -> None:
    torch.manual_seed(0)
    G = Generator(size, nz=20, width=64, arch=arch)
    D = Discriminator(size, width=64, arch=arch)
    x = G(torch.rand(3, 20) * 2 - 1)
    assert x.shape == (3, 3, size, size)
    assert x.abs().max() <= 1
    logits = D(x)
    assert logits.shape == (3,)
    # Block i of G outputs the 4*2**i map; D's blocks halve the side down to 4x4.
    sides = []
    hooks = [b.register_forward_hook(lambda m, i, o: sides.append(o.shape[-1])) for b in G.blocks]
    G(torch.zeros(2, 20))
    assert sides == [4 * 2**i for i in range(len(G.blocks))]
    assert list(G.feature_layers()) == [f"{s}x{s}" for s in sides[:-1]]
    assert list(D.feature_layers())[-1] == "4x4"
    assert list(D.feature_layers())[0] == f"{size // 2}x{size // 2}"
    for h in hooks:
        h.remove()


@pytest.mark.parametrize(
    ("arch", "g_millions", "d_millions"), [("paper", 18.9, 17.2), ("compact", 3.6, 2.8)]
)
def test_parameter_counts_match_the_help(arch: str, g_millions: float, d_millions: float) -> None:
    G, D = Generator(64, arch=arch), Discriminator(64, arch=arch)
    # `gan train --help` quotes them (--arch) to one decimal.
    assert sum(p.numel() for p in G.parameters()) / 1e6 == pytest.approx(g_millions, abs=0.05)
    assert sum(p.numel() for p in D.parameters()) / 1e6 == pytest.approx(d_millions, abs=0.05)


def test_paper_generator_layers_are_the_lsun_ones() -> None:
    """4x4x1024 -> 8x8x512 -> 16x16x256 -> 32x32x128 -> 64x64x3, the layer the windows analysis
    reads ("8x8") having 512 maps."""
    G = Generator(64, arch="paper")
    channels = []
    hooks = [b.register_forward_hook(lambda m, i, o: channels.append(o.shape[1]))
             for b in G.blocks]
    G(torch.zeros(2, 100))
    assert channels == [1024, 512, 256, 128, 3]
    assert G.feature_layers()["8x8"] is G.blocks[1]
    for h in hooks:
        h.remove()


def test_init_statistics_match_the_paper() -> None:
    torch.manual_seed(0)
    G, D = Generator(64, arch="paper"), Discriminator(64, arch="paper")
    for model in (G, D):
        for m in model.modules():
            weighted = isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
            if weighted and m.weight.numel() > 5000:
                assert m.weight.mean().item() == pytest.approx(0, abs=2e-3)
                assert m.weight.std().item() == pytest.approx(0.02, rel=0.05)
                if m.bias is not None:
                    assert torch.all(m.bias == 0)
            if isinstance(m, nn.BatchNorm2d) and m.weight.numel() >= 256:
                assert m.weight.mean().item() == pytest.approx(1, abs=5e-3)
                assert m.weight.std().item() == pytest.approx(0.02, rel=0.2)
                assert torch.all(m.bias == 0)


@pytest.mark.parametrize("arch", ARCHS)
def test_batchnorm_everywhere_except_g_output_and_d_input(arch: str) -> None:
    G, D = Generator(64, width=64, arch=arch), Discriminator(64, width=64, arch=arch)

    def has_bn(block: nn.Module) -> bool:
        return any(isinstance(m, nn.BatchNorm2d) for m in block.modules())

    assert [has_bn(b) for b in G.blocks] == [True] * (len(G.blocks) - 1) + [False]
    assert [has_bn(b) for b in D.blocks] == [False] + [True] * (len(D.blocks) - 1)
    assert not has_bn(D.head)
    # ReLU in G, Tanh at its output, LeakyReLU(0.2) in D, all as modules (hookable).
    assert all(isinstance(b[-1], nn.ReLU) for b in G.blocks[:-1])
    assert isinstance(G.blocks[-1][-1], nn.Tanh)
    assert all(isinstance(b[-1], nn.LeakyReLU) and b[-1].negative_slope == 0.2 for b in D.blocks)
    # No pooling, no hidden fully connected layers (only z's projection and D's output layer).
    kinds = {type(m) for m in [*G.modules(), *D.modules()]}
    assert not any(issubclass(k, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)) for k in kinds)
    linears = [m for m in [*G.modules(), *D.modules()] if isinstance(m, nn.Linear)]
    assert len(linears) == (2 if arch == "paper" else 0)


def test_paper_kernels_are_5x5_stride_2_and_compact_4x4() -> None:
    for arch, k in (("paper", 5), ("compact", 4)):
        convs = [m for m in Discriminator(64, width=64, arch=arch).blocks.modules()
                 if isinstance(m, nn.Conv2d)]
        assert {c.kernel_size for c in convs} == {(k, k)}
        assert {c.stride for c in convs} == {(2, 2)}


def test_weights_init_is_applied_to_a_fresh_layer() -> None:
    bn = nn.BatchNorm2d(4000)
    weights_init(bn)
    assert bn.weight.std().item() == pytest.approx(0.02, rel=0.1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"image_size": 48}, "image_size"), ({"arch": "resnet"}, "arch"),
     ({"image_size": 128, "width": 12}, "multiple")],
)
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        Generator(**kwargs)

"""The hooks every analysis relies on: guided backprop correct for LeakyReLU, channels zeroed."""

import pytest
import torch
from captum.attr import GuidedBackprop
from torch import nn

from analysis.hooks import captured_outputs, guided_rectifiers, zeroed_channels

pytestmark = pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU")


def _net(act: type[nn.Module]) -> nn.Sequential:
    torch.manual_seed(0)
    kwargs = {"inplace": True}
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), act(**kwargs), nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8), act(**kwargs), nn.Flatten(), nn.Linear(8 * 4 * 4, 3),
    ).eval()


def _input_gradient(net: nn.Module, x: torch.Tensor, guided: bool) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    if guided:
        with guided_rectifiers(net):
            net(x)[:, 1].sum().backward()
    else:
        net(x)[:, 1].sum().backward()
    return x.grad


def test_guided_backprop_equals_captum_on_a_relu_network():
    net, x = _net(nn.ReLU), torch.randn(4, 3, 8, 8)
    ours = _input_gradient(net, x, guided=True)
    theirs = GuidedBackprop(net).attribute(x.clone().requires_grad_(True), target=1)
    assert ours.abs().max() > 0
    torch.testing.assert_close(ours, theirs)


def test_guided_backprop_is_not_the_plain_gradient_on_a_leaky_relu_network():
    net, x = _net(nn.LeakyReLU), torch.randn(4, 3, 8, 8)
    guided = _input_gradient(net, x, guided=True)
    plain = _input_gradient(net, x, guided=False)
    # captum leaves LeakyReLU alone: its "guided" map is the plain gradient.
    captum = GuidedBackprop(net).attribute(x.clone().requires_grad_(True), target=1)
    torch.testing.assert_close(captum, plain)
    assert (guided - plain).abs().max() > 0.1 * plain.abs().max()


def test_guided_rule_at_one_rectifier():
    """g_in = clamp(g_out, min=0) * (x > 0), for LeakyReLU too; forward unchanged."""
    act = nn.LeakyReLU(0.2)
    x = torch.tensor([-2.0, -1.0, 0.5, 3.0], requires_grad=True)
    with guided_rectifiers(act):
        y = act(x)
        (y * torch.tensor([1.0, -1.0, -1.0, 2.0])).sum().backward()
    torch.testing.assert_close(y, nn.functional.leaky_relu(x.detach(), 0.2))
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 0.0, 0.0, 2.0]))


def test_hooks_are_removed_afterwards():
    net, x = _net(nn.LeakyReLU), torch.randn(2, 3, 8, 8)
    plain = net(x)
    with guided_rectifiers(net), zeroed_channels(net[1], [0]), captured_outputs(net[1]):
        net(x)
    assert all(not m._forward_hooks and not m._backward_hooks for m in net.modules())
    torch.testing.assert_close(net(x), plain)


MASK = torch.tensor([False, True, False, True, False, False, False, False])


@pytest.mark.parametrize("channels", [[1, 3], MASK])
def test_zeroed_channels_silence_only_the_chosen_maps(channels):
    net, x = _net(nn.ReLU), torch.rand(2, 3, 8, 8)
    with captured_outputs(net[1]) as before:
        net(x)
    with zeroed_channels(net[1], channels), captured_outputs(net[1]) as after:
        net(x)
    assert after[0][:, [1, 3]].abs().max() == 0
    keep = [0, 2, 4, 5, 6, 7]
    torch.testing.assert_close(after[0][:, keep], before[0][:, keep])


def test_zeroing_no_channels_changes_nothing():
    net, x = _net(nn.ReLU), torch.rand(2, 3, 8, 8)
    plain = net(x)
    with zeroed_channels(net[1], []):
        torch.testing.assert_close(net(x), plain)

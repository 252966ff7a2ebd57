"""What do D's features respond to? Guided backpropagation (paper section 6.2, Fig. 5).

For each chosen feature of a D layer (the paper: the first 6 of the last conv layer), find the
dataset images where that feature's maximal response is highest, backpropagate from that single
unit to the image through rectifiers that pass only positive gradients where the unit was active
(`analysis.hooks.guided_rectifiers`, which handles LeakyReLU unlike captum), and render the
gradient. The same is done with a freshly initialized D on the same images: the paper's
random-filter baseline, which shows no structure. D runs in eval mode: in train mode BatchNorm
would mix the batch into each image's gradient.
"""

from __future__ import annotations

import os
import re

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from analysis.data import AnalysisError, image_batches, load_run
from analysis.hooks import captured_outputs, guided_rectifiers, layer_module
from core.devices import resolve_device
from core.files import write_json_atomic, write_png_atomic
from core.outputs import check_output, own_output
from core.pixels import to_uint8
from core.sheets import contact_sheet
from gan.models import Discriminator

TILE = 64  # smallest side a map is shown at (32x32 maps are enlarged, nearest neighbour)


def parse_features(spec: str) -> list[int]:
    """"0-5" -> [0, 1, 2, 3, 4, 5]; "0,3,7" and "0-2,7" work too."""
    features: list[int] = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise AnalysisError(f"--features {spec!r}: expected ids and ranges like 0-5 or 0,3,7")
        lo, hi = int(match[1]), int(match[2] or match[1])
        if hi < lo:
            raise AnalysisError(f"--features {spec!r}: range {lo}-{hi} runs backwards")
        features.extend(range(lo, hi + 1))
    return list(dict.fromkeys(features))


def top_activations(D: Discriminator, module: nn.Module, batches, features: list[int],
                    top: int, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """For each feature, the `top` images with the highest maximal response over positions:
    (responses [F, top], images [F, top, 3, S, S] on D's device), highest first."""
    device = next(D.parameters()).device
    best_values = best_images = None
    for batch in tqdm(batches, desc="scan images", unit="batch", leave=False,
                      disable=not progress):
        batch = batch.to(device)
        with torch.no_grad(), captured_outputs(module) as outs:
            D(batch)
        if max(features) >= outs[0].shape[1]:
            raise AnalysisError(f"feature {max(features)} does not exist: this layer has "
                                f"{outs[0].shape[1]} features (0-{outs[0].shape[1] - 1})")
        values = outs[0][:, features].flatten(2).amax(2).T  # [F, B]
        images = batch.unsqueeze(0).expand(len(features), *batch.shape)
        if best_values is not None:
            values = torch.cat([best_values, values], 1)
            images = torch.cat([best_images, images], 1)
        order = values.argsort(dim=1, descending=True, stable=True)[:, :top]
        best_values = values.gather(1, order)
        best_images = images[torch.arange(len(features))[:, None], order]
    return best_values, best_images


def guided_map(D: nn.Module, module: nn.Module, image: torch.Tensor, feature: int) -> torch.Tensor:
    """Guided-backprop gradient [3, S, S] of the feature's maximal unit (on this image) w.r.t.
    the image."""
    x = image[None].clone().requires_grad_(True)
    with guided_rectifiers(D), captured_outputs(module) as outs:
        D(x)
    response = outs[0][0, feature]
    response.flatten().max().backward()
    return x.grad[0]


def render(grad: torch.Tensor) -> np.ndarray:
    """A gradient as an RGB tile normalized on its own: grey = 0, scaled by its largest value."""
    g = grad.detach().float()
    g = g / g.abs().max().clamp(min=1e-12)
    return _enlarge(to_uint8(g[None])[0])


def panel(D: nn.Module, module: nn.Module, images: torch.Tensor,
          features: list[int]) -> np.ndarray:
    """Features x top images, one guided-backprop tile each."""
    tiles = [render(guided_map(D, module, images[f, j], feature))
             for f, feature in enumerate(features) for j in range(images.shape[1])]
    return contact_sheet(tiles, cols=images.shape[1])


def random_discriminator(config: dict, seed: int, device: torch.device) -> Discriminator:
    """A freshly initialized D of the run's shape (paper init), seeded on the CPU (the same
    weights on every device), in eval mode on `device`."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        D = Discriminator(config["image_size"], config["width"], config["arch"])
    return D.to(device).eval()


def guided_backprop(
    ckpt: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    layer: str = "last",
    features: str = "0-5",
    top: int = 5,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Write trained_filters.png, random_filters.png, top_images.png, the side-by-side
    guided_backprop.png (random left, trained right, as paper Fig. 5) and report.json (last: a
    finished analysis) into `out`."""
    check_output(out, command="analysis guided-backprop", overwrite=overwrite,
                 finished="report.json")
    device = resolve_device(device)
    _G, D, config = load_run(ckpt, device)
    D.eval()
    name, module = layer_module(D, layer)
    ids = parse_features(features)
    batches = image_batches(data, config["image_size"], batch_size, limit)
    values, images = top_activations(D, module, batches, ids, top, progress)
    random_D = random_discriminator(config, seed, device)
    _, random_module = layer_module(random_D, name)
    trained = panel(D, module, images, ids)
    baseline = panel(random_D, random_module, images, ids)
    photos = contact_sheet([_enlarge(t) for t in to_uint8(images.flatten(0, 1))], cols=top)
    with own_output(out, command="analysis guided-backprop", overwrite=overwrite,
                    finished="report.json") as out:
        write_png_atomic(out / "trained_filters.png", trained)
        write_png_atomic(out / "random_filters.png", baseline)
        write_png_atomic(out / "top_images.png", photos)
        gap = np.full((trained.shape[0], 16, 3), 255, np.uint8)
        write_png_atomic(out / "guided_backprop.png", np.concatenate([baseline, gap, trained], 1))
        report = {"layer": name, "features": ids, "top": top, "seed": seed,
                  "top_responses": values.tolist(), "device": str(device)}
        write_json_atomic(out / "report.json", report)
    return report


def _enlarge(tile: np.ndarray) -> np.ndarray:
    if tile.shape[0] >= TILE:
        return tile
    return cv2.resize(tile, (TILE, TILE), interpolation=cv2.INTER_NEAREST)

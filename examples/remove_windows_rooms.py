"""Example: the paper's "forgetting to draw windows" (section 6.3.1) on synthetic rooms, on a CPU.

A room is a wall over a floor, a dark piece of furniture on the floor and, in some rooms, a
window: a bright sky-blue rectangle on the wall, a colour nothing else in a room has. Because the
window is found by its colour alone, generated samples can be annotated automatically (the boxes
a person would draw) and the object's frequency measured before and after dropping feature maps.

The experiment trains a small 32x32 DCGAN on rooms of which half have a window, samples 150 z,
boxes the windows by their colour, runs `analysis remove-windows`, and measures on fresh samples
how often a window appears with and without the dropped feature maps, and how much the rest of
the room changes.

    python examples/remove_windows_rooms.py --out runs/rooms-windows [--steps 300] [--width 64]

Look at OUT/remove-windows/comparison.png (top row: samples, bottom row: the same z with the
window maps dropped). The training run and the analysis can be made by hand with the CLI (the
boxes file needs a person, or `annotate_windows` below):

    gan train --data OUT/rooms --out OUT/run --image-size 32 --arch compact --width 64 \\
        --steps 300 --batch-size 64 --lr 5e-4 --workers 0 --cache ram --device cpu
    analysis remove-windows --ckpt OUT/run/checkpoints/last.pt --boxes OUT/boxes.json --out DIR

The tests import this file by path (tests/analysis/conftest.py): its rooms are their fixtures.
"""

from __future__ import annotations

from pathlib import Path

import click
import cv2
import numpy as np
import torch

from analysis.hooks import layer_module
from analysis.windows import generate_pair, remove_windows
from core.files import write_json_atomic, write_npy_atomic
from core.pixels import to_uint8
from gan.checkpoint import load_models
from gan.cli_options import bn_option
from gan.sample import generate, sample_z
from gan.train import train
from pipeline.sinks import write_image_shards

WINDOW_RGB = (190, 225, 255)
MIN_WINDOW_PIXELS = 6  # a blob of window colour at least this big counts as a window


def make_rooms(n: int, size: int = 32, window_rate: float = 0.5, seed: int = 0) -> tuple[
        np.ndarray, np.ndarray]:
    """n rooms as [n, size, size, 3] uint8 RGB, and which of them have a window."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    has_window = rng.random(n) < window_rate
    u = size / 32  # drawing units scale with the image
    for i in range(n):
        img = images[i]
        horizon = int(size * rng.uniform(0.6, 0.72))
        img[:horizon] = rng.integers(70, 150, 3)  # wall
        img[horizon:] = rng.integers(30, 70, 3) * np.array([1.3, 1.0, 0.7])  # floor, brownish
        fx, fw = int(rng.uniform(0, 0.5) * size), int(rng.uniform(10, 16) * u)
        fy = horizon - int(rng.uniform(2, 6) * u)
        img[fy : fy + int(8 * u), fx : fx + fw] = rng.integers(10, 35, 3)  # furniture
        img += rng.integers(0, 6, img.shape, dtype=np.uint8)  # a little texture
        if has_window[i]:
            ww, wh = int(rng.uniform(7, 11) * u), int(rng.uniform(7, 11) * u)
            wx = int(rng.uniform(2 * u, size - ww - 2 * u))
            wy = int(rng.uniform(2 * u, max(2 * u + 1, horizon - wh - 6 * u)))
            img[wy : wy + wh, wx : wx + ww] = WINDOW_RGB
    return images, has_window


def window_pixels(images: np.ndarray) -> np.ndarray:
    """[N, S, S] bools: pixels of window colour (bright, blue above red)."""
    rgb = images.astype(np.int16)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (b > 200) & (g > 165) & (b - r > 25)


def window_boxes(image: np.ndarray) -> list[list[int]]:
    """The boxes a person would draw: [x0, y0, x1, y1] (x1, y1 exclusive) of each window-coloured
    blob of at least MIN_WINDOW_PIXELS pixels."""
    mask = window_pixels(image[None])[0].astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    return [[int(x), int(y), int(x + w), int(y + h)]
            for x, y, w, h, area in stats[1:count] if area >= MIN_WINDOW_PIXELS]


def window_frequency(images: np.ndarray) -> float:
    """Share of images showing at least one window."""
    return float(np.mean([bool(window_boxes(img)) for img in images]))


def write_room_shards(out: str | Path, n: int, size: int = 32, window_rate: float = 0.5,
                      seed: int = 0) -> Path:
    """n rooms as PNG WebDataset shards with index.json (what `gan train` reads)."""
    images, _ = make_rooms(n, size, window_rate, seed)
    write_image_shards(Path(out), images, prefix="rooms", size=size)
    return Path(out)


def annotate_windows(images: np.ndarray, z_file: str, path: str | Path) -> dict:
    """Write a remove-windows boxes file for generated `images`, boxes found by colour; every
    sample is listed (samples without a window give negatives only)."""
    spec = {"z": z_file, "samples": [{"index": i, "boxes": window_boxes(img)}
                                     for i, img in enumerate(images)]}
    write_json_atomic(Path(path), spec)
    return spec


def window_removal_experiment(
    workdir: str | Path,
    rooms: int = 2048,
    width: int = 64,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 5e-4,
    annotated: int = 150,
    measured: int = 512,
    bn: str = "batch",
    seed: int = 0,
) -> dict:
    """The paper's 6.3.1 experiment on synthetic rooms, end to end and measured.

    Train a small 32x32 G (`gan train`, compact architecture) on rooms, half of which have a
    window; sample `annotated` z (saved as z.npy), box the windows by colour (boxes.json) and run
    `remove-windows` with its defaults. Then sample `measured` fresh z with and without the
    dropped maps and measure how often a window appears, and how much the lower half of the
    room (floor and furniture, never a window) changes, against how much it differs between
    two different samples.
    """
    workdir = Path(workdir)
    shards = write_room_shards(workdir / "rooms", rooms, 32, 0.5, seed)
    train(shards, workdir / "run", image_size=32, arch="compact", width=width, steps=steps,
          batch_size=batch_size, lr=lr, workers=0, cache="ram", device="cpu", seed=seed,
          progress=False, sample_every=steps, ckpt_every=steps)
    ckpt = workdir / "run" / "checkpoints" / "last.pt"
    G, _D, config = load_models(ckpt)
    rng = torch.Generator().manual_seed(seed + 1)
    z = sample_z(annotated, config["nz"], config["prior"], rng)
    write_npy_atomic(workdir / "z.npy", z.numpy())
    annotate_windows(to_uint8(generate(G, z, bn)), "z.npy", workdir / "boxes.json")
    report = remove_windows(ckpt, workdir / "boxes.json", workdir / "remove-windows", bn=bn,
                            device="cpu")

    mask = np.load(workdir / "remove-windows" / "window_mask.npy")
    fresh = sample_z(measured, config["nz"], config["prior"], rng)
    _, module = layer_module(G, report["layer"])
    before, after = (to_uint8(images) for images in generate_pair(G, fresh, module, mask, bn))
    lower = slice(before.shape[1] // 2, None)
    colour_before = before[:, lower].reshape(measured, -1, 3).mean(1)
    colour_after = after[:, lower].reshape(measured, -1, 3).mean(1)
    return {
        **report,
        "window_frequency_before": window_frequency(before),
        "window_frequency_after": window_frequency(after),
        "lower_half_change": float(np.abs(colour_after - colour_before).mean()),
        "lower_half_between_samples": float(np.abs(colour_before - np.roll(colour_before, 1,
                                                                           0)).mean()),
        "checkpoint": str(ckpt),
    }


@click.command()
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Work folder (rooms shards, the training run, boxes.json, results).")
@click.option("--steps", default=300, show_default=True, help="Training steps (batch 64).")
@click.option("--width", default=64, show_default=True, help="G/D width (channels at 4x4).")
@bn_option()
@click.option("--seed", default=0, show_default=True)
def main(out: Path, steps: int, width: int, bn: str, seed: int) -> None:
    r = window_removal_experiment(out, width=width, steps=steps, bn=bn, seed=seed)
    click.echo(f"dropped {r['dropped']} of {r['channels']} maps at {r['layer']} (held-out "
               f"accuracy {r['heldout_accuracy']:.3f}, AUC {r['heldout_auc']:.3f})")
    click.echo(f"windows in fresh samples: {r['window_frequency_before']:.1%} -> "
               f"{r['window_frequency_after']:.1%}")
    click.echo(f"lower half of the room (floor, furniture): mean colour change "
               f"{r['lower_half_change']:.1f} vs {r['lower_half_between_samples']:.1f} between "
               f"two different samples (0-255 scale)")
    click.echo(f"comparison: {out / 'remove-windows' / 'comparison.png'}")


if __name__ == "__main__":
    main()

"""Speed of `analysis classify` at the paper's scale, extrapolated from N images: D's features
(the paper's 32x32 D, 28,672-d) and the SVM fit, against the bare decode loop measured in the
same run (what reading the shards alone costs).

The full test reads 50,000 training and 10,000 test images through D (trained D; the two
baselines add a random D and the cheap pixels) and fits the SVM for each C of the grid on at
most SEARCH_ROWS training rows, then once on all 40,000 left after the 10,000 validation
images. Speed does not depend on D's weights, so a freshly initialized D is timed.

    python benchmarks/bench_classify.py [--n 2000] [--classes 10]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch

from analysis.classify import (
    C_GRID,
    EPOCHS,
    SEARCH_ROWS,
    disc_features,
    disc_layers,
    feature_dim,
    fit_scaler,
    fit_svm,
    pixel_features,
    selected_images,
    write_features,
)
from gan.models import Discriminator
from pipeline import demo
from pipeline.sinks import write_image_shards

TRAIN, TEST, VALIDATION = 50_000, 10_000, 10_000


def photo_tiles(n: int, seed: int = 0) -> list[np.ndarray]:
    """n random 32x32 crops of the photographs shipped with scikit-image."""
    rng = np.random.default_rng(seed)
    photos = [demo.photo(name) for name in ("astronaut.png", "coffee.png", "chelsea.png",
                                              "rocket.jpg", "brick.png", "grass.png")]
    tiles = []
    for i in range(n):
        img = photos[i % len(photos)]
        y, x = rng.integers(0, img.shape[0] - 32), rng.integers(0, img.shape[1] - 32)
        tiles.append(np.ascontiguousarray(img[y:y + 32, x:x + 32]))
    return tiles


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


@click.command()
@click.option("--n", type=click.IntRange(min=100), default=2000, show_default=True)
@click.option("--classes", type=click.IntRange(min=2), default=10, show_default=True)
def main(n: int, classes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_image_shards(tmp / "shards", photo_tiles(n), image_size=32)
        urls = sorted(str(p) for p in (tmp / "shards").glob("*.tar"))
        rows = np.arange(n)
        decode_s, _ = timed(lambda: write_features(
            tmp / "pixels.npy", pixel_features, selected_images(urls, rows, 32), n, 3072,
            "decode", False))
        D = Discriminator(32, arch="paper").eval()
        modules = disc_layers(D, "all")
        dim = feature_dim(modules)
        feature_s, X = timed(lambda: write_features(
            tmp / "features.npy", disc_features(D, modules), selected_images(urls, rows, 32), n,
            dim, "features", False))
        y = np.arange(n) % classes
        scaler_s, scaler = timed(lambda: fit_scaler(X, rows))
        svm_s, _ = timed(lambda: fit_svm(X, rows, y, np.arange(classes), 1e-2, scaler, seed=0))

    decode_rate, feature_rate = n / decode_s, n / feature_s
    row_epochs = (len(C_GRID) * SEARCH_ROWS + (TRAIN - VALIDATION)) * EPOCHS
    svm_rate = n * EPOCHS / svm_s  # rows per second through SGD
    full_features = (TRAIN + TEST) / feature_rate
    full_svm = row_epochs / svm_rate + TRAIN / (n / scaler_s)
    print(f"{n} 32x32 images, paper D ({dim:,}-d features), {torch.get_num_threads()} threads")
    print(f"  baseline: decode loop       {decode_rate:8.0f} images/s")
    print(f"  D features (decode + D)     {feature_rate:8.0f} images/s "
          f"({feature_rate / decode_rate:.2f}x the decode loop)")
    print(f"  SVM (averaged SGD, {classes} classes) {svm_rate:8.0f} rows/s per epoch; "
          f"scaler {n / scaler_s:.0f} rows/s")
    print(f"extrapolated to {TRAIN:,} train + {TEST:,} test images, --C auto:")
    print(f"  features {full_features / 60:.1f} min + SVM {full_svm / 60:.1f} min "
          f"({len(C_GRID)} C on {SEARCH_ROWS:,} rows, then {TRAIN - VALIDATION:,} rows, "
          f"{EPOCHS} epochs) = {(full_features + full_svm) / 60:.1f} min for trained D; "
          f"the random-D baseline adds as much again, pixels little")


if __name__ == "__main__":
    main()

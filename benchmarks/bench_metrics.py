"""Speed of the embedding behind `gan metrics` (uint8 batches -> features -> float64 running
moments + the features file), against a bare batched forward of the same module on the same
images already as float tensors, measured in the same run (rounds interleaved, medians). Then
memory: peak RSS while streaming N and 8N images through a cheap extractor (flat in N).

The module is the FID Inception network with random weights (speed does not depend on them).

    python benchmarks/bench_metrics.py [--images 32] [--batch-size 16] [--rounds 3]
"""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch

from core.pixels import to_float
from gan.quality.extractors import Extractor
from gan.quality.images import embed
from gan.quality.inception import RESIZE_RULE, FIDInceptionV3
from gan.quality.statistics import collect


def photo_batches(images: int, batch_size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (min(batch_size, images - s), 64, 64, 3), dtype=np.uint8)
            for s in range(0, images, batch_size)]


def bare_forward(module: torch.nn.Module, floats: list[torch.Tensor]) -> None:
    with torch.inference_mode():
        for batch in floats:
            module(batch)


def embedding(extractor: Extractor, batches: list[np.ndarray], folder: Path) -> None:
    n = sum(len(b) for b in batches)
    collect(embed(extractor, iter(batches), torch.device("cpu"), n, "", False), n,
            folder / "features.npy")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_check(folder: Path, n: int) -> tuple[float, float]:
    """Peak RSS growth (MiB) while streaming n, then 8n, images through a cheap extractor."""
    torch.manual_seed(0)
    cheap = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(8), torch.nn.Flatten(),
                                torch.nn.Linear(192, 2048))
    extractor = Extractor("cheap", "", "", "", cheap.eval())
    pool = photo_batches(256, 256)[0]
    growth = []
    for count in (n, 8 * n):
        before = peak_rss_mib()
        batches = (pool for _ in range(count // len(pool)))
        collect(embed(extractor, batches, torch.device("cpu"), count, "", False), count,
                folder / f"features-{count}.npy")
        growth.append(peak_rss_mib() - before)
    return growth[0], growth[1]


@click.command()
@click.option("--images", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
def main(images: int, batch_size: int, rounds: int, threads: int) -> None:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:  # first, before Inception raises the peak
        small, large = memory_check(Path(tmp), 2560)
    torch.manual_seed(0)
    module = FIDInceptionV3().eval()
    extractor = Extractor("inception-v3-fid (random weights)", "", "", RESIZE_RULE, module)
    batches = photo_batches(images, batch_size)
    floats = [to_float(torch.from_numpy(b)) for b in batches]
    bare_forward(module, floats[:1])  # warm-up
    times: dict[str, list[float]] = {"bare forward": [], "embedding": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for name, run in (("bare forward", lambda: bare_forward(module, floats)),
                              ("embedding", lambda: embedding(extractor, batches, Path(tmp)))):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        rates = {name: images / statistics.median(t) for name, t in times.items()}
        for name, rate in rates.items():
            print(f"{name:>12}: {rate:7.2f} images/s (Inception-v3 at 299, {threads} threads, "
                  f"batch {batch_size}, median of {rounds})")
        print(f"ratio embedding / bare forward: {rates['embedding'] / rates['bare forward']:.3f}"
              " (target >= 0.8)")
    print(f"peak RSS growth streaming 2,560 then 20,480 images (2048-d features): "
          f"{small:.0f} MiB, then {large:.0f} MiB more")


if __name__ == "__main__":
    main()

"""Training images/s of `gan train`'s step against the textbook DCGAN step, and the loader alone.

Step: the same G and D sizes, the same batches, the same thread count, in the same run; rounds
alternate between the two so that load from other processes hits both alike. The textbook step
is the one most DCGAN code uses (pytorch/examples): sigmoid-output D with BCELoss, contiguous
NCHW tensors, default Adam, D's weight gradients computed during the G update, `.item()` for
logging every step. Ours: logits + BCEWithLogitsLoss, channels_last, fused Adam, D frozen during
the G update, statistics left on the device.

Loader: 64x64 PNG shards cut from real photographs; images/s delivered by the streaming loader
(per-sample PNG decode; one worker process = one core) and by the RAM cache (uint8 memmap,
shuffled by index, converted to float on one thread), against the images/s the training step
consumes.

    python benchmarks/bench_train.py [--arch compact] [--image-size 64] [--batch-size 32]
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import click
import cv2
import numpy as np
import torch
from torch import nn

from gan.data import CachedBatches, StreamingBatches, build_cache, open_shards, to_model_input
from gan.models import Discriminator, Generator
from gan.step import gan_step, make_optimizer
from pipeline import demo
from pipeline.geometry import resize_area
from pipeline.sinks import write_image_shards


def textbook_step(G, D_sigmoid, opt_G, opt_D, real, z) -> float:
    """pytorch/examples dcgan/main.py's step, as most DCGAN code writes it."""
    criterion = nn.BCELoss()
    ones = torch.ones(len(real))
    zeros = torch.zeros(len(real))
    D_sigmoid.zero_grad()
    output = D_sigmoid(real)
    err_real = criterion(output, ones)
    err_real.backward()
    d_x = output.mean().item()
    fake = G(z)
    output = D_sigmoid(fake.detach())
    err_fake = criterion(output, zeros)
    err_fake.backward()
    opt_D.step()
    G.zero_grad()
    output = D_sigmoid(fake)
    err_G = criterion(output, ones)
    err_G.backward()
    opt_G.step()
    return d_x + err_G.item() + (err_real + err_fake).item()


def step_rates(arch: str, size: int, batch: int, steps: int, rounds: int) -> dict:
    """Best-of-rounds images per wall-clock second and per CPU second of this process, for
    "textbook", "ours" (fp32, the CPU default) and "ours_bf16" (`--precision bf16`, opt-in on
    a CPU: faster where the CPU has bf16 units, but no longer the fp32 computation). CPU
    seconds leave out the time other processes on a shared machine took from us; wall-clock
    seconds are what a user waits.
    """
    lr, beta1 = 2e-4, 0.5  # the paper's Adam, as `gan train` uses it
    torch.manual_seed(0)
    real = torch.rand(batch, 3, size, size) * 2 - 1
    z = torch.rand(batch, 100) * 2 - 1

    G_ref, D_ref = Generator(size, arch=arch), Discriminator(size, arch=arch)
    D_sigmoid = nn.Sequential(D_ref, nn.Sigmoid())
    opts_ref = (torch.optim.Adam(G_ref.parameters(), lr=2e-4, betas=(0.5, 0.999)),
                torch.optim.Adam(D_ref.parameters(), lr=2e-4, betas=(0.5, 0.999)))

    G = Generator(size, arch=arch).to(memory_format=torch.channels_last)
    D = Discriminator(size, arch=arch).to(memory_format=torch.channels_last)
    opt_G, opt_D = make_optimizer(G, lr, beta1), make_optimizer(D, lr, beta1)
    real_cl = real.contiguous(memory_format=torch.channels_last)
    G_bf, D_bf = (Generator(size, arch=arch).to(memory_format=torch.channels_last),
                  Discriminator(size, arch=arch).to(memory_format=torch.channels_last))
    opt_G_bf, opt_D_bf = make_optimizer(G_bf, lr, beta1), make_optimizer(D_bf, lr, beta1)

    def ref() -> None:
        for _ in range(steps):
            textbook_step(G_ref, D_sigmoid, *opts_ref, real, z)

    def ours() -> None:
        stats = [gan_step(G, D, D, opt_G, opt_D, real_cl, z, contextlib.nullcontext)
                 for _ in range(steps)]
        torch.stack(stats).tolist()  # what logging copies out

    def ours_bf16() -> None:
        def bf16():
            return torch.autocast("cpu", dtype=torch.bfloat16)

        stats = [gan_step(G_bf, D_bf, D_bf, opt_G_bf, opt_D_bf, real_cl, z, bf16)
                 for _ in range(steps)]
        torch.stack(stats).tolist()

    runs = (("textbook", ref), ("ours", ours), ("ours_bf16", ours_bf16))
    best = {(name, clock): 0.0 for name, _ in runs for clock in ("wall", "cpu")}
    for _ in range(rounds):
        for name, run in runs:
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name, "wall"] = max(best[name, "wall"], steps * batch / wall)
            best[name, "cpu"] = max(best[name, "cpu"], steps * batch / cpu)
    return best


def timed(run, images: int) -> float:
    start = time.perf_counter()
    run()
    return images / (time.perf_counter() - start)


def make_training_shards(folder: Path, n: int, size: int, per_shard: int) -> Path:
    """n size x size PNG crops of real photographs (random positions and scales), as shards."""
    rng = np.random.default_rng(0)
    photos = [demo.photo(name) for name in demo.SKIMAGE_SCENES + demo.FACE_PHOTOS]
    photos = [p if p.ndim == 3 else np.repeat(p[..., None], 3, 2) for p in photos]

    def crops():
        for i in range(n):
            img = photos[i % len(photos)][..., :3]
            side = int(rng.integers(min(img.shape[:2]) // 3, min(img.shape[:2]) + 1))
            y = int(rng.integers(0, img.shape[0] - side + 1))
            x = int(rng.integers(0, img.shape[1] - side + 1))
            yield resize_area(np.ascontiguousarray(img[y:y + side, x:x + side]), size)

    write_image_shards(folder, crops(), prefix="bench", per_shard=per_shard, image_size=size,
                       format="png")
    return folder


def loader_rates(shards: Path, size: int, batch: int, workers: int, tmp: Path) -> dict:
    urls, counts = open_shards(shards)
    rates = {}
    for w in sorted({0, 1, workers}):
        stream = StreamingBatches(urls, counts, image_size=size, batch_size=batch, workers=w,
                                  seed=0)
        rates[f"streaming, {w} worker(s)"] = timed(
            lambda s=stream: sum(1 for _ in s.epoch(0)), stream.steps_per_epoch * batch)
    images = build_cache(urls, counts, tmp / "cache", image_size=size, workers=workers,
                         progress=False)
    cache = CachedBatches(images, batch_size=batch, seed=0, device=torch.device("cpu"))

    def cached() -> None:
        for b in cache.epoch(0):
            to_model_input(b, torch.device("cpu"))

    rates["RAM cache (uint8 -> float)"] = timed(cached, cache.steps_per_epoch * batch)
    return rates


@click.command()
@click.option("--arch", type=click.Choice(["paper", "compact"]), default="compact",
              show_default=True, help="The paper arch costs ~6x more per image.")
@click.option("--image-size", default=64, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--steps", default=3, show_default=True, help="Steps per timed round.")
@click.option("--rounds", default=5, show_default=True, help="Alternating rounds; best kept.")
@click.option("--images", default=4000, show_default=True, help="Images in the loader shards.")
@click.option("--workers", default=2, show_default=True, help="Loader workers for the full run.")
@click.option("--threads", default=torch.get_num_threads(), show_default=True,
              help="torch intra-op threads for both steps.")
def main(arch, image_size, batch_size, steps, rounds, images, workers, threads):
    torch.set_num_threads(threads)
    cv2.setNumThreads(1)
    print(f"{arch} G/D at {image_size}x{image_size}, batch {batch_size}, {threads} thread(s)")
    best = step_rates(arch, image_size, batch_size, steps, rounds)
    for clock, unit in (("wall", "images/s"), ("cpu", "images per CPU-second")):
        ref, ours_rate = best["textbook", clock], best["ours", clock]
        print(f"  textbook step   {ref:9.1f} {unit}")
        print(f"  gan train step  {ours_rate:9.1f} {unit}   ratio {ours_rate / ref:.2f}x")
        bf16 = best["ours_bf16", clock]
        print(f"  ... --precision bf16 {bf16:9.1f} {unit}   ratio {bf16 / ref:.2f}x (opt-in)")
    ours = best["ours", "wall"]
    # The loader figures are per core: one thread converts cached batches (more threads only
    # add OpenMP spin-waiting on a busy machine), each worker process decodes on one core.
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        shards = make_training_shards(Path(tmp) / "shards", images, image_size, 1000)
        print(f"loader on {images} {image_size}x{image_size} PNGs in "
              f"{-(-images // 1000)} shards, batch {batch_size}")
        for name, rate in loader_rates(shards, image_size, batch_size, workers,
                                       Path(tmp)).items():
            print(f"  {name:28s} {rate:9.1f} images/s   {rate / ours:6.1f}x what training "
                  f"consumes")


if __name__ == "__main__":
    main()

"""Speed of `pipeline dedup`: against a bare decode loop, and per image as N grows.

1. LSUN-like input (an LMDB of ~256 px WebP photos cut from real photographs): images/s of a
   bare decode loop (the shared decoder, mapped over the same workers with the same ordered
   pool) against the dedup command, in the same run, in alternating rounds (medians). The
   hashing run applies a saved model (`--model`: crops and thumbnails, hash, calibration,
   candidate verification, grouping, outputs), and the paper's mode (`--radius 0 --no-verify`)
   is timed beside it; training (a short one here) is reported on its own, since its cost is
   set by --train-samples, --epochs and --min-steps, not by N.
2. Time per image at N = 1k, 10k, 100k synthetic 64 px WebP images (hashing run with a saved
   model), and the marginal time per image between sizes: a flat marginal time is the
   linear-cost claim (the average at 1k still carries the fixed costs: worker start-up, the
   calibration's random pairs, the plots).

Both parts also report CPU time per image (this process and its finished worker processes,
from getrusage): on a machine shared with other jobs, wall-time ratios swing by tens of per
cent between rounds, CPU time much less.

    python benchmarks/bench_dedup.py [--n 3000] [--sizes 1000,10000,100000] [--workers N]
                                     [--rounds 3]
"""

from __future__ import annotations

import hashlib
import resource
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import click
import cv2
import numpy as np

from pipeline import demo
from pipeline.decode import decode_image
from pipeline.dedup import dedup
from pipeline.engines.local import chunked, default_workers, map_ordered
from pipeline.sources import open_source

TRAIN_STEPS = 200  # a short training: its cost depends on steps, not on N (timed on its own)


def write_lsun(folder: Path, images: Iterator[np.ndarray]) -> int:
    """LSUN layout: 40-hex keys, WebP values (demo.write_lmdb keeps memory flat)."""
    items = ((hashlib.sha1(f"{n}".encode()).hexdigest(), demo.encode(img, "WEBP", quality=80))
             for n, img in enumerate(images))
    return demo.write_lmdb(folder, items, map_size=1 << 34)


def photo_crops(n: int, seed: int = 0) -> Iterator[np.ndarray]:
    """~256 px crops of real photographs, LSUN bedroom size."""
    rng = np.random.default_rng(seed)
    photos = [demo.photo(name) for name in demo.SKIMAGE_SCENES + demo.FACE_PHOTOS]
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.5, 1.0))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        size = (int(rng.integers(256, 340)), 256)
        yield cv2.resize(img[y : y + side, x : x + side], size, interpolation=cv2.INTER_AREA)


def synthetic(n: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Distinct smooth 64 px colour images (random 8x8 fields, upsampled)."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        yield cv2.resize(small, (64, 64), interpolation=cv2.INTER_CUBIC)


def bare_decode(records: list, _params: None) -> int:
    for rec in records:
        decode_image(rec.read())
    return len(records)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool's workers, reaped when
    a map ends): unlike wall time, barely moved by other jobs on a shared machine."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), \
        resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def decode_rate(folder: Path, workers: int) -> tuple[float, float]:
    """Images per second of the bare decode loop, and its CPU seconds per image."""
    source = open_source(folder)
    start, cpu = time.perf_counter(), cpu_seconds()
    done = sum(map_ordered(bare_decode, None, chunked(iter(source), 64), workers))
    return done / (time.perf_counter() - start), (cpu_seconds() - cpu) / done


def timed_dedup(n: int, *args, **kwargs) -> tuple[dict, float, float]:
    """dedup's summary, its images per second over the whole call (wall clock: the summary's
    own `seconds` leaves out opening the output and closing the engine's worker pool, which the
    bare loop's time includes), and its CPU seconds per image (workers included)."""
    cpu, start = cpu_seconds(), time.perf_counter()
    summary = dedup(*args, **kwargs)
    wall = time.perf_counter() - start
    return summary, n / wall, (cpu_seconds() - cpu) / n


@click.command()
@click.option("--n", default=3000, show_default=True, help="LSUN-like images for part 1.")
@click.option("--sizes", default="1000,10000,100000", show_default=True,
              help="Synthetic N for part 2.")
@click.option("--workers", default=default_workers(), show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Alternating rounds of the bare loop and the hashing run (medians).")
def main(n: int, sizes: str, workers: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_lsun(root / "lsun", photo_crops(n))
        trained = dedup([root / "lsun"], root / "train", epochs=1, min_steps=TRAIN_STEPS,
                        workers=workers, progress=False)
        model = root / "train" / "autoencoder.pt"
        bares, rates, bare_cpu, cpu = [], [], [], []
        for _ in range(rounds):  # alternating, so load from other processes hits both
            rate, per_image = decode_rate(root / "lsun", workers)
            bares.append(rate)
            bare_cpu.append(per_image)
            hashed, rate, per_image = timed_dedup(n, [root / "lsun"], root / "hash",
                                                  model=model, workers=workers, overwrite=True,
                                                  progress=False)
            rates.append(rate)
            cpu.append(per_image)
        bare, rate = statistics.median(bares), statistics.median(rates)
        bare_ms, cpu_ms = 1e3 * min(bare_cpu), 1e3 * min(cpu)
        print(f"{n} LSUN-like WebP images (~256 px), {workers} workers, {rounds} round(s)")
        print(f"bare decode loop (decode_image)        : {bare:8.0f} images/s   (rounds "
              + ", ".join(f"{r:.0f}" for r in bares) + f"); CPU {bare_ms:.2f} ms/image")
        paper, paper_rate, paper_cpu = timed_dedup(n, [root / "lsun"], root / "paper",
                                                   model=model, radius=0, verify=False,
                                                   workers=workers, progress=False)
        print(f"pipeline dedup --model (hash + verify) : {rate:8.0f} images/s"
              f"   ratio {rate / bare:.2f} (target >= 0.7; rounds "
              + ", ".join(f"{r:.0f}" for r in rates) + "); "
              f"{hashed['verification']['candidate_pairs']} candidate pairs, "
              f"{hashed['timings_s']}")
        print(f"  CPU time per image (best round)       : {cpu_ms:.2f} ms against the bare "
              f"loop's {bare_ms:.2f}: ratio {bare_ms / cpu_ms:.2f} (workers and driver; barely "
              "moved by other jobs, unlike wall time)")
        print(f"  paper's mode (--radius 0 --no-verify) : {paper_rate:8.0f} images/s"
              f"   ratio {paper_rate / bare:.2f}; CPU ratio "
              f"{bare_ms / (1e3 * paper_cpu):.2f}")
        print(f"pipeline dedup, training included      : {trained['images_per_s']:8.0f} images/s"
              f"   (training {TRAIN_STEPS} steps: {trained['timings_s']['train_s']:.1f} s)")
        print("\nper-image time, synthetic 64 px WebP, hashing run with the saved model "
              "(marginal: per image added since the previous N, fixed costs cancelled; wall "
              "time, and CPU time of the driver and workers, less moved by other jobs):")
        previous = None
        for size in (int(s) for s in sizes.split(",")):
            folder = root / f"syn{size}"
            write_lsun(folder, synthetic(size, seed=size))
            summary, size_rate, per_cpu = timed_dedup(size, [folder], root / f"out{size}",
                                                      model=model, workers=workers,
                                                      progress=False)
            wall, cpu = size / size_rate, per_cpu * size
            marginal = ("" if previous is None else
                        f"  marginal {(wall - previous[1]) / (size - previous[0]) * 1e6:.1f}"
                        f" wall, {(cpu - previous[2]) / (size - previous[0]) * 1e6:.1f} CPU")
            previous = (size, wall, cpu)
            print(f"N = {size:>7}: {wall / size * 1e6:8.1f} us/image wall, "
                  f"{per_cpu * 1e6:.1f} CPU{marginal}  "
                  f"({size_rate:.0f} images/s;"
                  f" {summary['verification']['candidate_pairs']} candidate pairs;"
                  f" {summary['timings_s']})")

if __name__ == "__main__":
    main()

"""Images/s of `pipeline shards` against a bare decode loop over the same files, same run.

The floor of a CPU stage is decoding: no stage can be faster than reading and decoding its
inputs. Two baselines read each file and decode it at full resolution: with OpenCV
(libjpeg-turbo, the strictest) and with the project's own decoder; both are mapped over the
same worker count with the same ordered pool.
The stage also crops, resizes, encodes PNGs, writes shards and a manifest; it may beat the
baseline because JPEG decoding is asked for only the resolution the crop needs (DCT scaling).

    python benchmarks/bench_shards.py [--n 3000] [--workers N]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click
import cv2
import numpy as np

from pipeline import demo
from pipeline.decode import decode_image
from pipeline.engines.local import chunked, default_workers, map_ordered
from pipeline.shards import make_shards


def make_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """~500 px JPEGs cut from real photographs (the typical scraped size)."""
    rng = np.random.default_rng(seed)
    photos = [demo.photo(name) for name in demo.SKIMAGE_SCENES + demo.FACE_PHOTOS]
    paths = []
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        y, x = int(rng.integers(0, h // 4)), int(rng.integers(0, w // 4))
        crop = img[y:, x:]
        scale = 500 / max(crop.shape[:2])
        crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        path = folder / f"{i:06d}.jpg"
        path.write_bytes(demo.encode(crop, "JPEG", quality=90))
        paths.append(path)
    return paths


def bare_decode(paths: list[Path], _params: None) -> int:
    for path in paths:
        data = np.fromfile(path, np.uint8)
        assert cv2.imdecode(data, cv2.IMREAD_COLOR) is not None
    return len(paths)


def project_decode(paths: list[Path], _params: None) -> int:
    """The project's own decoder at full resolution (the floor a stage is measured against)."""
    for path in paths:
        decode_image(path.read_bytes())
    return len(paths)


def rate(run, n_images: int) -> float:
    start = time.perf_counter()
    run()
    return n_images / (time.perf_counter() - start)


@click.command()
@click.option("--n", default=3000, show_default=True, help="Number of JPEGs.")
@click.option("--workers", default=default_workers(), show_default=True)
@click.option("--rounds", default=3, show_default=True, help="Alternating rounds; best is kept.")
def main(n: int, workers: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpegs"
        folder.mkdir()
        paths = make_jpegs(folder, n)
        bare, ours, stage = [], [], []
        for _ in range(rounds):  # alternate, so load from other programs hits all alike
            bare.append(rate(lambda: list(map_ordered(bare_decode, None, chunked(paths, 32),
                                                      workers)), n))
            ours.append(rate(lambda: list(map_ordered(project_decode, None, chunked(paths, 32),
                                                      workers)), n))
            stage.append(rate(lambda: make_shards([folder], Path(tmp) / "out", size=64,
                                                  workers=workers, overwrite=True,
                                                  progress=False), n))
    print(f"{n} JPEGs of ~500 px, {workers} workers, best of {rounds} alternating rounds")
    print(f"bare decode loop (read + cv2.imdecode)     : {max(bare):8.0f} images/s")
    print(f"bare decode loop (read + decode_image)     : {max(ours):8.0f} images/s")
    print(f"pipeline shards --size 64                  : {max(stage):8.0f} images/s")
    print(f"ratio stage / cv2.imdecode loop            : {max(stage) / max(bare):8.2f}"
          "  (target >= 0.8)")
    print(f"ratio stage / decode_image loop            : {max(stage) / max(ours):8.2f}"
          "  (target >= 0.8)")


if __name__ == "__main__":
    main()

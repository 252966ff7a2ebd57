"""Photos/s of `pipeline faces` against a bare decode + detectMultiScale loop, same run.

Detection dominates this stage (a Haar cascade costs ~10x a JPEG decode), so the floor is a
loop that does only what detection needs: read the file, decode it with OpenCV, convert to gray,
shrink to --max-side, equalize, detectMultiScale with the stage's parameters (the same search
floor, 3/4 of --min-size, so that faces_too_small can be reported). Both are mapped over the
same photos with the same worker count and the same ordered pool, alternating rounds so that
load from other processes hits both. The stage also decodes with the project's decoder (EXIF,
bomb guard), crops at full resolution, encodes PNGs, and writes shards, manifest and sheet.

A second baseline searches only down to --min-size itself: the gap to it is the price of
telling `faces_too_small` from `no_face`.

    python benchmarks/bench_faces.py [--n 300] [--workers N] [--rounds 3]
"""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from pathlib import Path

import click
import cv2
import numpy as np

from pipeline import demo
from pipeline.engines.local import chunked, default_workers, map_ordered
from pipeline.faces import FaceParams, detect_faces
from pipeline.faces.detectors import detection_scale, make_spec, window_size

_cascade: cv2.CascadeClassifier | None = None


def make_photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Scraped-style JPEGs: one portrait in three, scenes otherwise, 300 to 1600 px long side."""
    rng = np.random.default_rng(seed)
    portraits = [demo.photo(name) for name in demo.FACE_PHOTOS]
    scenes = [demo.photo(name) for name in demo.SKIMAGE_SCENES]
    paths = []
    for i in range(n):
        img = portraits[i % 2] if i % 3 == 0 else scenes[i % len(scenes)]
        scale = rng.uniform(300, 1600) / max(img.shape[:2])
        img = cv2.resize(img, None, fx=scale, fy=scale,
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        path = folder / f"{i:06d}.jpg"
        path.write_bytes(demo.encode(img, "JPEG", quality=90))
        paths.append(path)
    return paths


def bare_detect(paths: list[Path], params: tuple) -> int:
    """decode + gray + shrink + equalize + detectMultiScale; returns the number of faces."""
    global _cascade
    cascade_path, scale_factor, min_neighbors, floor, max_side, window = params
    if _cascade is None:
        _cascade = cv2.CascadeClassifier(cascade_path)
    faces = 0
    for path in paths:
        bgr = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        scale = detection_scale(*gray.shape, max_side, floor, window)
        if scale < 1:
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        side = max(1, int(floor * scale))
        faces += len(_cascade.detectMultiScale(cv2.equalizeHist(gray), scaleFactor=scale_factor,
                                               minNeighbors=min_neighbors, minSize=(side, side)))
    return faces


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool's workers)."""
    own, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                       resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(run) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds, result): CPU time is what other load on the machine
    cannot inflate, so it gives the cleaner ratio on a shared machine."""
    start, cpu = time.perf_counter(), cpu_seconds()
    result = run()
    return time.perf_counter() - start, cpu_seconds() - cpu, result


@click.command()
@click.option("--n", type=click.IntRange(min=10), default=300, show_default=True,
              help="Photos in the benchmark set.")
@click.option("--workers", type=click.IntRange(min=1), default=default_workers(),
              show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--min-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--max-side", type=click.IntRange(min=32), default=1024, show_default=True)
def main(n: int, workers: int, rounds: int, min_size: int, max_side: int) -> None:
    """Print photos/s of the stage and of the bare loops, and their ratios (target >= 0.9)."""
    spec = make_spec()
    floor = FaceParams(spec, min_size=min_size).search_floor
    window = window_size(spec)
    same = (spec.path, spec.scale_factor, spec.min_neighbors, floor, max_side, window)
    at_min = (spec.path, spec.scale_factor, spec.min_neighbors, min_size, max_side, window)
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        paths = make_photos(photos, n)

        def bare(params):
            return lambda: sum(map_ordered(bare_detect, params, chunked(paths, 32), workers))

        runs = {
            "stage": lambda: detect_faces([photos], Path(tmp) / "out", min_size=min_size,
                                          max_side=max_side, workers=workers, overwrite=True,
                                          progress=False),
            "bare": bare(same),
            "bare_min": bare(at_min),
        }
        rates: dict[str, list[float]] = {name: [] for name in runs}
        per_core: dict[str, list[float]] = {name: [] for name in runs}
        results: dict[str, object] = {}
        for _ in range(rounds):
            for name, run in runs.items():
                seconds, cpu, results[name] = timed(run)
                rates[name].append(n / seconds)
                per_core[name].append(n / cpu)
    best = {name: max(r) for name, r in rates.items()}
    core = {name: max(r) for name, r in per_core.items()}
    summary = results["stage"]
    print(f"{n} photos ({summary['counts']}), {workers} worker(s), {rounds} round(s), "
          f"opencv {cv2.__version__}")
    print(f"faces kept by the stage: {summary['faces_kept']}; found by the bare loop "
          f"(search floor {floor} px): {results['bare']}, at {min_size} px: {results['bare_min']}")
    print(f"bare decode + detectMultiScale (floor {floor} px): {best['bare']:.1f} photos/s "
          f"(rounds: {', '.join(f'{r:.1f}' for r in rates['bare'])})")
    print(f"pipeline faces:                                 {best['stage']:.1f} photos/s "
          f"(rounds: {', '.join(f'{r:.1f}' for r in rates['stage'])})")
    print(f"ratio stage / bare: {best['stage'] / best['bare']:.2f} (target >= 0.9); median of "
          f"rounds {statistics.median(rates['stage']) / statistics.median(rates['bare']):.2f}")
    print(f"per CPU-second (immune to other load): bare {core['bare']:.1f}, stage "
          f"{core['stage']:.1f} photos/s; ratio {core['stage'] / core['bare']:.2f}")
    print(f"bare loop searching only down to --min-size {min_size} px: {best['bare_min']:.1f} "
          f"photos/s, {core['bare_min']:.1f} per CPU-second; stage / that: "
          f"{core['stage'] / core['bare_min']:.2f} per CPU-second (the price of reporting "
          "faces_too_small)")


if __name__ == "__main__":
    main()

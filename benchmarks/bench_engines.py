"""Images/s of the stages on `--engine ray` against the local pool, same inputs, same run, and
what the paper-scale runs would cost on a cluster at the measured per-core rates.

Each stage runs end to end (shards written, manifest, summary) on the demo corpus, repeated to
`--repeat` times its size (folder photos by symlink; the LMDB by writing its values again under
new keys). Ray runs in one session started before the timed rounds, and the local pool's
start-up (fresh worker processes importing the stage's modules, paid by every local run) is
measured apart and taken off the local times: both columns are steady-state rates, and the two
start-ups, which do not grow with the input, are printed alone. Rounds alternate between the
engines so that load from other processes hits both; each figure is the median of the rounds.

The paper-scale table divides 3M images by the measured per-core rate of the local pool (the
stage's rate over its worker count): core-hours, and the cores that make each run an hour when
the cluster keeps the measured Ray / local efficiency.

    python benchmarks/bench_engines.py [--repeat 8] [--workers N] [--rounds 3]
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path

import click

from pipeline import demo
from pipeline.dedup import DEFAULT_DROPOUT, DEFAULT_NOISE, dedup
from pipeline.dedup.autoencoder import HashConfig, SemanticHashAutoencoder, save_model
from pipeline.engines import open_engine
from pipeline.engines.local import default_workers, map_ordered
from pipeline.faces import detect_faces
from pipeline.shards import make_shards
from pipeline.sources import LmdbSource

PAPER_IMAGES = 3_000_000  # LSUN bedrooms (dedup) and the scraped faces set, each ~3M


def repeat_folder(folder: Path, into: Path, times: int) -> int:
    """`times` symlinked copies of every file under `folder` (r0/..., r1/...)."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    for r in range(times):
        for path in files:
            link = into / f"r{r}" / path.relative_to(folder)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path.resolve())
    return len(files) * times


def repeat_lmdb(folder: Path, into: Path, times: int) -> int:
    """An LMDB holding every value of `folder` `times` times, under new keys."""
    items = [(rec.key, rec.read()) for rec in LmdbSource(folder)]  # the sources' one handle
    return demo.write_lmdb(into, ((f"r{r}-{k}", v) for r in range(times) for k, v in items))


def nothing(chunk: list, params: None) -> list:
    return chunk


def pool_start(workers: int) -> float:
    """Seconds for a fresh local pool to start and answer one chunk per worker."""
    clock = time.perf_counter()
    list(map_ordered(nothing, None, [[0]] * workers, workers))
    return time.perf_counter() - clock


def hash_model(folder: Path) -> Path:
    """A saved (untrained) hash, so dedup's timed rounds are the per-image passes only."""
    path = folder / "hash.pt"
    config = HashConfig(side=32, bits=128, noise=DEFAULT_NOISE, dropout=DEFAULT_DROPOUT,
                        binary=True)
    save_model(SemanticHashAutoencoder(config), path)
    return path


@click.command()
@click.option("--repeat", type=click.IntRange(min=1), default=8, show_default=True,
              help="Copies of the demo corpus in the benchmark inputs.")
@click.option("--workers", type=click.IntRange(min=1), default=default_workers(),
              show_default=True, help="Local pool processes = CPUs of the local Ray.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True)
def main(repeat: int, workers: int, rounds: int) -> None:
    """Print each stage's images/s on both engines, their ratio (target >= 0.8), and the
    paper-scale estimate."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = demo.build_demo(tmp / "demo", copies=2)
        photos, people, lsun = tmp / "photos", tmp / "people", tmp / "lsun"
        sizes = {"shards": repeat_folder(Path(corpus["scraped_dir"]), photos, repeat),
                 "faces": repeat_folder(Path(corpus["scraped_dir"]) / "people", people, repeat),
                 "dedup": repeat_lmdb(Path(corpus["lmdb_dir"]), lsun, repeat)}
        model = hash_model(tmp)
        stages = {
            "shards": lambda engine: make_shards([photos], tmp / "shards", workers=workers,
                                                 engine=engine, overwrite=True, progress=False),
            "faces": lambda engine: detect_faces([people], tmp / "faces", workers=workers,
                                                 engine=engine, overwrite=True,
                                                 progress=False),
            "dedup": lambda engine: dedup([lsun], tmp / "dedup", model=model, device="cpu",
                                          workers=workers, engine=engine, overwrite=True,
                                          progress=False),
        }
        rates: dict[tuple[str, str], list[float]] = {}
        pool_starts: list[float] = []
        started = time.perf_counter()
        with open_engine("ray", workers=workers) as ray_engine:
            ray_start = time.perf_counter() - started
            info = ray_engine.describe()
            for name, run in stages.items():
                run("ray")  # warm-up: workers import the stage's modules once
                for _ in range(rounds):
                    pool_starts.append(pool_start(workers))
                    for engine in ("local", "ray"):
                        clock = time.perf_counter()
                        run(engine)
                        seconds = time.perf_counter() - clock
                        seconds -= pool_starts[-1] if engine == "local" else 0
                        rates.setdefault((name, engine), []).append(sizes[name] / seconds)
    print(f"{workers} local worker(s); Ray {info['nodes']} node, {info['cpus']} CPUs; "
          f"{rounds} round(s). Start-ups (per run, not counted below): Ray {ray_start:.1f} s, "
          f"local pool {statistics.median(pool_starts):.1f} s (median)")
    print(f"{'stage':8} {'images':>7} {'local img/s':>12} {'ray img/s':>10} {'ray/local':>10}")
    ratio = {}
    for name in stages:
        local, ray = (statistics.median(rates[name, e]) for e in ("local", "ray"))
        ratio[name] = ray / local
        print(f"{name:8} {sizes[name]:7d} {local:12.1f} {ray:10.1f} {ratio[name]:10.2f}  "
              f"(rounds local {', '.join(f'{r:.1f}' for r in rates[name, 'local'])}; "
              f"ray {', '.join(f'{r:.1f}' for r in rates[name, 'ray'])})")
    print(f"median ray/local over stages: {statistics.median(ratio.values()):.2f} "
          "(target >= 0.8)")
    print(f"\npaper scale ({PAPER_IMAGES:,} images each), from the local per-core rates:")
    print(f"{'run':28} {'img/s/core':>10} {'core-hours':>10} {'cores for 1 h':>14}")
    for name, label in (("dedup", "3M LSUN dedup (crops+hash)"), ("faces", "3M-photo faces")):
        per_core = statistics.median(rates[name, "local"]) / workers
        core_hours = PAPER_IMAGES / per_core / 3600
        cores = math.ceil(core_hours / min(1.0, ratio[name]))
        print(f"{label:28} {per_core:10.1f} {core_hours:10.1f} {cores:14d}")


if __name__ == "__main__":
    main()

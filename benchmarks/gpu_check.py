"""One command that checks a GPU machine end to end, then measures training speed.

In order, stopping at the first failure with one line that says what failed:
train bf16 streaming; --cache ram; --cache gpu; resume on the same device; resume onto the CPU;
--compile (graphs counted: none recompiled after the first step); DDP over all visible GPUs
with --cache gpu; `pipeline dedup` with --device cuda and --device cpu giving the same
duplicates.txt; bench_knn on the GPU. Then images/s of `gan train` for the compact and paper
archs at batch 128 and 512 (bf16, --cache gpu), the streaming loader's delivered rate, and the
share of step time spent waiting for data, against the aims for an H100/H200-class GPU.

`--device cpu` runs the same checks at tiny sizes on any machine (CI does), skipping what needs
CUDA and saying which.

    python benchmarks/gpu_check.py [--device cuda|cpu]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch

from core.faiss_build import faiss_build
from gan.checkpoint import load_checkpoint
from gan.data import StreamingBatches, open_shards
from gan.metrics import read_metrics
from gan.models import build_models
from gan.runtime import Runtime, wrap_models
from gan.sample import sample_z
from gan.step import gan_step, make_optimizer
from gan.train import train
from pipeline.sinks import write_image_shards

REPO = Path(__file__).resolve().parents[1]
AIMS = {"compact": 30_000, "paper": 8_000}  # images/s on one H100/H200-class GPU, bf16
DATA_WAIT_AIM = 0.05


@dataclass(frozen=True)
class Sizes:
    """How big the check runs: real sizes on a GPU, tiny ones on a CPU."""

    images: int
    image_size: int
    batch: int
    steps: int
    width: int | None  # None: each arch's own
    rate_batches: tuple[int, int]
    rate_steps: int
    workers: int
    precision: str  # of every run but the bf16 streaming check (bf16 is slow on most CPUs)


GPU_SIZES = Sizes(images=20_480, image_size=64, batch=128, steps=20, width=None,
                  rate_batches=(128, 512), rate_steps=40, workers=min(8, os.cpu_count() or 1),
                  precision="bf16")
CPU_SIZES = Sizes(images=192, image_size=32, batch=8, steps=4, width=16, rate_batches=(8, 16),
                  rate_steps=4, workers=2, precision="auto")


class CheckFailed(Exception):
    """A check did not pass; the message is the one line printed."""


def synthetic_shards(folder: Path, n: int, size: int) -> Path:
    """n size x size PNGs of smooth random colour fields (cheap to make, not trivially equal)."""
    rng = np.random.default_rng(0)

    def images():
        for _ in range(n):
            small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            yield np.kron(small, np.ones((size // 4, size // 4, 1), np.uint8))

    write_image_shards(folder, images(), prefix="check", per_shard=max(32, min(1024, n // 8)),
                       image_size=size, format="png")
    return folder


class Checker:
    """Runs the checks in order; each prints one line."""

    def __init__(self, device: str, sizes: Sizes, root: Path):
        self.device, self.sizes, self.root = device, sizes, root
        self.cuda = device.startswith("cuda")
        self.shards = synthetic_shards(root / "shards", sizes.images, sizes.image_size)
        self.skipped: list[str] = []

    def options(self, **overrides) -> dict:
        s = self.sizes
        base = {"image_size": s.image_size, "batch_size": s.batch, "arch": "compact",
                "width": s.width, "workers": s.workers, "device": self.device,
                "precision": s.precision, "sample_every": 10_000, "ckpt_every": 10_000,
                "log_every": max(1, s.steps // 2), "progress": False, "steps": s.steps}
        return {**base, **overrides}

    def train(self, name: str, **overrides) -> dict:
        summary = train(self.shards, self.root / name, **self.options(**overrides))
        if not all(np.isfinite(summary[k]) for k in ("loss_D", "loss_G")):
            raise CheckFailed(f"{name}: non-finite losses {summary['loss_D']}, "
                              f"{summary['loss_G']}")
        return summary

    def run(self, name: str, needs_cuda: bool, check: Callable[[], str]) -> None:
        if needs_cuda and not self.cuda:
            self.skipped.append(name)
            print(f"skip {name}: needs CUDA", flush=True)
            return
        start = time.perf_counter()
        try:
            detail = check()
        except CheckFailed as err:
            raise SystemExit(f"FAIL {name}: {err}") from None
        except Exception as err:  # any error is a failed check, in one line
            line = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise SystemExit(f"FAIL {name}: {type(err).__name__}: {line}") from None
        print(f"ok   {name} ({time.perf_counter() - start:.1f} s){': ' + detail if detail else ''}",
              flush=True)

    # -- the checks -----------------------------------------------------------------------------

    def streaming(self) -> str:
        summary = self.train("stream", cache="none", precision="bf16")
        return f"{summary['images_per_s']:.0f} images/s"

    def cache_ram(self) -> str:
        return f"{self.train('ram', cache='ram')['images_per_s']:.0f} images/s"

    def cache_gpu(self) -> str:
        return f"{self.train('gpu', cache='gpu')['images_per_s']:.0f} images/s"

    def resume_same_device(self) -> str:
        steps = self.sizes.steps
        self.train("whole", cache="ram", steps=2 * steps, precision="fp32")
        self.train("split", cache="ram", steps=steps, precision="fp32")
        summary = train(self.shards, self.root / "split",
                        **self.options(cache="ram", steps=2 * steps, resume=True))
        if summary["steps"] != 2 * steps or summary["notes"]:
            raise CheckFailed(f"resume ended at step {summary['steps']}, notes {summary['notes']}")
        whole = load_checkpoint(self.root / "whole" / "checkpoints" / "last.pt")["G"]
        split = load_checkpoint(self.root / "split" / "checkpoints" / "last.pt")["G"]
        worst = max(float((whole[k].float() - split[k].float()).abs().max()) for k in whole)
        if not self.cuda and worst != 0:
            raise CheckFailed(f"CPU resume is not bit-exact (max weight difference {worst:g})")
        if worst > 1e-2:  # cudnn autotuning may pick other kernels: close, not equal
            raise CheckFailed(f"resumed weights differ by up to {worst:g} from an uninterrupted "
                              f"run")
        return f"max weight difference to an uninterrupted run {worst:g}"

    def resume_onto_cpu(self) -> str:
        summary = train(self.shards, self.root / "split",
                        **self.options(cache="ram", steps=2 * self.sizes.steps + 2, resume=True,
                                       device="cpu"))
        if not summary["notes"] or "re-derived" not in summary["notes"][0]:
            raise CheckFailed(f"no note about the z streams: {summary['notes']}")
        return summary["notes"][0]

    def compile_graphs(self) -> str:
        """Graphs counted with an eager backend (one per compiled piece), then on CUDA a real
        `--compile` run with inductor."""
        rt = Runtime(torch.device(self.device))
        G_raw, D_raw = build_models({"image_size": self.sizes.image_size, "nz": 100,
                                     "width": self.sizes.width, "arch": "compact",
                                     "prior": "uniform"})
        G_raw, D_raw = G_raw.to(rt.device), D_raw.to(rt.device)
        graphs: list = []

        def counting_backend(gm, example_inputs):
            graphs.append(gm)
            return gm.forward

        G, D, D_plain = wrap_models(G_raw, D_raw, rt, counting_backend)
        opt_G, opt_D = make_optimizer(G_raw, 2e-4, 0.5), make_optimizer(D_raw, 2e-4, 0.5)
        counts = []
        for _ in range(3):
            real = torch.rand(self.sizes.batch, 3, self.sizes.image_size,
                              self.sizes.image_size, device=rt.device) * 2 - 1
            z = sample_z(self.sizes.batch, 100, "uniform").to(rt.device)
            gan_step(G, D, D_plain, opt_G, opt_D, real, z,
                     lambda: torch.autocast(rt.device.type, dtype=torch.bfloat16))
            counts.append(len(graphs))
        if counts[0] == 0 or counts[1:] != [counts[0]] * 2:
            raise CheckFailed(f"graphs after each of 3 steps: {counts} (recompiled)")
        detail = f"{counts[0]} graphs, none recompiled"
        if self.cuda:
            rate = self.train("compiled", cache="gpu", compile=True)["images_per_s"]
            detail += f"; inductor run {rate:.0f} images/s"
        return detail

    def ddp(self) -> str:
        ranks = torch.cuda.device_count() if self.cuda else 2
        if ranks < 2:
            raise CheckFailed("one GPU visible: DDP needs at least two")
        cache = "gpu" if self.cuda else "ram"
        s = self.sizes
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", str(ranks), "-m", "gan.cli", "train", "--data",
                   str(self.shards), "--out", str(self.root / "ddp"), "--image-size",
                   str(s.image_size), "--batch-size", str(s.batch), "--arch", "compact",
                   "--workers", "0", "--device", self.device.split(":")[0], "--cache", cache,
                   "--steps", str(s.steps), "--log-every", "2", "--no-progress"]
        if s.width:
            command += ["--width", str(s.width)]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise CheckFailed(f"torchrun exited {done.returncode}: {done.stderr.strip()[-300:]}")
        return f"{ranks} ranks, --cache {cache}: {done.stdout.strip()}"

    def dedup_same_groups(self) -> str:
        """The hash trained on the GPU, then the same hash applied on the CPU (--model): the
        codes and the groups must not depend on the device."""
        found = {}
        for device in ("cuda", "cpu"):
            out = self.root / f"dedup-{device}"
            command = [sys.executable, "-m", "pipeline.cli", "dedup", str(self.shards), "--out",
                       str(out), "--device", device, "--train-samples", "4096", "--epochs", "1",
                       "--min-steps", "200", "--workers", "2"]
            if device == "cpu":
                command += ["--model", str(self.root / "dedup-cuda" / "autoencoder.pt")]
            done = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(REPO)},
                                  capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                raise CheckFailed(f"dedup --device {device}: {done.stderr.strip()[-300:]}")
            found[device] = (out / "duplicates.txt").read_text()
        if found["cuda"] != found["cpu"]:
            raise CheckFailed("duplicates.txt differs between --device cuda and --device cpu")
        return f"{len(found['cpu'].splitlines())} duplicates listed by both"

    def knn_on_gpu(self) -> str:
        info = faiss_build()
        if info["faiss_gpus"] == 0:
            raise CheckFailed(f"faiss {info['faiss_version']} ({info['faiss_build']} build) sees "
                              f"no GPU: install the GPU build of faiss")
        command = [sys.executable, str(REPO / "benchmarks" / "bench_knn.py"), "--database",
                   "100000", "--queries", "2000", "--chunk", "4096"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise CheckFailed(done.stdout.strip()[-300:] + done.stderr.strip()[-300:])
        return done.stdout.strip().splitlines()[-1]

    # -- the figures ----------------------------------------------------------------------------

    def rates(self) -> None:
        cache = "gpu" if self.cuda else "ram"
        print(f"gan train images/s (--precision {self.sizes.precision}, --cache {cache}, "
              f"{self.sizes.image_size}x"
              f"{self.sizes.image_size}):", flush=True)
        for arch in ("compact", "paper"):
            for batch in self.sizes.rate_batches:
                name = f"rate-{arch}-{batch}"
                steps = self.sizes.rate_steps
                summary = self.train(name, arch=arch, batch_size=batch, cache=cache, steps=steps,
                                     log_every=max(1, steps // 2))
                wait = read_metrics(self.root / name / "metrics.jsonl")[-1]["data_wait"]
                aim = (f"  (aim on an H100/H200: >= {AIMS[arch]})" if self.cuda else "")
                print(f"  {arch:8s} batch {batch:4d}: {summary['images_per_s']:9.0f} images/s, "
                      f"data wait {wait:6.1%}{aim}", flush=True)
                shutil.rmtree(self.root / name)
        urls, counts = open_shards(self.shards)
        stream = StreamingBatches(urls, counts, image_size=self.sizes.image_size,
                                  batch_size=self.sizes.batch, workers=self.sizes.workers, seed=0,
                                  pin_memory=self.cuda)
        start = time.perf_counter()
        delivered = sum(len(batch) for batch in stream.epoch(0))
        rate = delivered / (time.perf_counter() - start)
        print(f"streaming loader ({self.sizes.workers} workers): {rate:.0f} images/s delivered "
              f"(--cache ram/gpu avoid it; data wait aim < {DATA_WAIT_AIM:.0%})", flush=True)


@click.command()
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu",
              show_default=True, help="'cuda' (real sizes) or 'cpu' (tiny sizes, CUDA parts "
              "skipped).")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the runs in this folder (default: a temporary folder, removed).")
def main(device: str, keep: Path | None) -> None:
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("FAIL setup: --device cuda but torch sees no CUDA GPU; use --device cpu")
    where = (f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if cuda
             else "CPU (tiny sizes)")
    info = faiss_build()
    print(f"gpu_check on {where}; torch {torch.__version__}, faiss {info['faiss_version']} "
          f"({info['faiss_build']} build, sees {info['faiss_gpus']} GPU(s))", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = keep or Path(tmp)
        checker = Checker(device, GPU_SIZES if cuda else CPU_SIZES, root)
        for name, needs_cuda, check in (
            ("train bf16 streaming", False, checker.streaming),
            ("--cache ram", False, checker.cache_ram),
            ("--cache gpu", True, checker.cache_gpu),
            ("resume on the same device", False, checker.resume_same_device),
            ("resume onto the CPU", True, checker.resume_onto_cpu),
            ("--compile (graph count)", False, checker.compile_graphs),
            ("DDP over all visible devices", False, checker.ddp),
            ("dedup --device cuda == --device cpu", True, checker.dedup_same_groups),
            ("bench_knn on the GPU", True, checker.knn_on_gpu),
        ):
            checker.run(name, needs_cuda, check)
        checker.rates()
    skipped = f"; skipped (need CUDA): {', '.join(checker.skipped)}" if checker.skipped else ""
    print(f"all checks passed{skipped}", flush=True)


if __name__ == "__main__":
    main()

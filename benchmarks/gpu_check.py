"""One command that measures `gan train` on a GPU machine, then checks it end to end.

Figures first: images/s of `gan train` for the compact and paper archs at two batch sizes (bf16,
--cache gpu, --compile off and on), the same from shards with --cache none, the streaming
loader's delivered rate and the share of step time spent waiting for data. They are printed and
written to a JSON file (--json) before any check runs, so a check that fails cannot hide them.

Then every check runs and reports PASS, FAIL or SKIP with its reason, and the script ends with
the figures, a table of the checks and the aims met or missed (exit status 1 if a check failed):
train bf16 streaming; --cache ram; --cache gpu; resume on the same device; resume onto the CPU;
--compile (graphs counted: none recompiled after the first step); --compile with inductor (the
compiled rate runs above); DDP over all visible GPUs (skipped with one); `pipeline dedup` with
its hash trained on the device; the k-NN search on the GPU (skipped without the GPU build of
faiss). A machine without faiss skips only the two checks that need it.

The check is made for a cluster node without internet that carries its own CUDA build of torch:
it runs from a checkout with the node's Python (the project's other dependencies installed from
a wheelhouse, see docs/training.md), sized for 8 minutes on one H100/H200 (3 with --quick; not
yet timed on one).
`--device cpu` runs everything at tiny sizes on any machine (CI does), skipping what needs CUDA.

    python benchmarks/gpu_check.py [--device auto|cuda|cuda:N|cpu] [--quick] [--json PATH]
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runs from a checkout, installed or not

import click  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.devices import resolve_device  # noqa: E402
from core.errors import MissingExtra, UserError  # noqa: E402
from core.faiss_build import faiss_build  # noqa: E402
from core.files import write_json_atomic  # noqa: E402
from gan.checkpoint import load_checkpoint  # noqa: E402
from gan.data import StreamingBatches, open_shards  # noqa: E402
from gan.metrics import read_metrics  # noqa: E402
from gan.models import build_models  # noqa: E402
from gan.runtime import Runtime, wrap_models  # noqa: E402
from gan.sample import sample_z  # noqa: E402
from gan.step import gan_step, make_optimizer  # noqa: E402
from gan.train import train  # noqa: E402
from pipeline.sinks import write_image_shards  # noqa: E402

AIMS = {"compact": 60_000, "paper": 15_000}  # images/s on one H100/H200: bf16, cache gpu, compile
STREAM_AIM = 0.80  # --cache none's rate over --cache gpu's, same settings
DATA_WAIT_AIM = 0.05
RESUME_TOLERANCE = 1e-3  # CUDA: largest weight difference relative to the tensor's largest weight
COMMAND_TIMEOUT = 600  # seconds for one subprocess (its whole process group is killed then)


@dataclass(frozen=True)
class Sizes:
    """How big the runs are: real sizes on a GPU, tiny ones on a CPU."""

    images: int
    image_size: int
    batch: int
    steps: int  # of each half of the resume check
    width: int | None  # None: each arch's own
    rate_batches: tuple[int, ...]
    rate_images: int  # images trained per rate run (the last half is timed)
    rate_compile: bool  # whether the rates include --compile runs (inductor: CUDA only)
    workers: int
    precision: str  # of every run but the bf16 streaming check (bf16 is slow on most CPUs)


WORKERS = min(8, os.cpu_count() or 1)
GPU_SIZES = Sizes(images=20_480, image_size=64, batch=128, steps=20, width=None,
                  rate_batches=(128, 512), rate_images=102_400, rate_compile=True,
                  workers=WORKERS, precision="bf16")
QUICK_GPU_SIZES = Sizes(images=10_240, image_size=64, batch=128, steps=10, width=None,
                        rate_batches=(512,), rate_images=51_200, rate_compile=True,
                        workers=WORKERS, precision="bf16")
CPU_SIZES = Sizes(images=192, image_size=32, batch=8, steps=4, width=16, rate_batches=(8,),
                  rate_images=32, rate_compile=False, workers=2, precision="auto")


class CheckFailed(Exception):
    """A check did not pass; the message is the one line printed."""


class Skip(Exception):  # noqa: N818  (a check's outcome, not an error)
    """A check cannot run on this machine; the message says why."""


@dataclass
class Result:
    name: str
    status: str  # PASS, FAIL or SKIP
    seconds: float
    detail: str


def one_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def child_env(**extra: str) -> dict:
    """The environment of a subprocess: this checkout first on PYTHONPATH, the node's own path
    kept after it (a cluster's modules often live there)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def run_command(command: list[str], timeout: float = COMMAND_TIMEOUT,
                **extra_env: str) -> subprocess.CompletedProcess:
    """`command` in a session of its own; on a timeout its whole process group goes (torchrun's
    ranks, a DataLoader's workers), not just the first process."""
    process = subprocess.Popen(command, start_new_session=True, env=child_env(**extra_env),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise CheckFailed(f"{Path(command[1]).name if len(command) > 1 else command[0]} ... "
                          f"still running after {timeout:.0f} s: process group killed") from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


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


def faiss_or_none() -> dict | None:
    """core.faiss_build's description of the installed faiss, or None without one."""
    try:
        return faiss_build()
    except MissingExtra:
        return None


class Checker:
    """The runs behind the figures and the checks, all in one scratch folder."""

    def __init__(self, device: torch.device, sizes: Sizes, root: Path, faiss: dict | None,
                 force_fail: str | None = None):
        self.device, self.sizes, self.root, self.faiss = device, sizes, root, faiss
        self.cuda = device.type == "cuda"
        self.force_fail = force_fail
        self.shards = synthetic_shards(root / "shards", sizes.images, sizes.image_size)
        self.results: list[Result] = []

    def options(self, **overrides) -> dict:
        s = self.sizes
        base = {"image_size": s.image_size, "batch_size": s.batch, "arch": "compact",
                "width": s.width, "workers": s.workers, "device": str(self.device),
                "precision": s.precision, "sample_every": 1_000_000,
                "ckpt_every": 1_000_000, "log_every": max(1, s.steps // 2), "progress": False,
                "steps": s.steps}
        return {**base, **overrides}

    def train(self, name: str, **overrides) -> dict:
        summary = train(self.shards, self.root / name, **self.options(**overrides))
        if not all(np.isfinite(summary[k]) for k in ("loss_D", "loss_G")):
            raise CheckFailed(f"{name}: non-finite losses {summary['loss_D']}, "
                              f"{summary['loss_G']}")
        return summary

    # -- the figures ----------------------------------------------------------------------------

    def rate(self, arch: str, batch: int, cache: str, compile_: bool) -> dict:
        """images/s and data wait of one `gan train` run, timed over its second half (after
        cudnn autotuning and the inductor compile); an error is recorded, never raised."""
        row = {"arch": arch, "batch": batch, "cache": cache, "compile": compile_}
        if compile_ and not self.sizes.rate_compile:
            return {**row, "skipped": "inductor rates are measured on CUDA only"}
        steps = max(2, self.sizes.rate_images // batch)
        name = f"rate-{arch}-{batch}-{cache}-{'compiled' if compile_ else 'eager'}"
        # As in a fresh `gan train --compile`: without this, dynamo would count the runs before
        # as recompiles (compiling for dynamic shapes, then giving up after its limit).
        torch._dynamo.reset()
        try:
            summary = self.train(name, arch=arch, batch_size=batch, cache=cache,
                                 compile=compile_, steps=steps, log_every=steps // 2,
                                 precision="bf16" if self.cuda else self.sizes.precision)
        except Exception as err:  # a figure that cannot be measured is reported, not fatal
            return {**row, "error": one_line(err)}
        wait = read_metrics(self.root / name / "metrics.jsonl")[-1]["data_wait"]
        return {**row, "images_per_s": round(summary["images_per_s"]), "data_wait": wait}

    def loader_rate(self) -> dict:
        """Images/s the streaming loader alone delivers (decode in its workers, no training)."""
        try:
            urls, counts = open_shards(self.shards)
            stream = StreamingBatches(urls, counts, image_size=self.sizes.image_size,
                                      batch_size=self.sizes.rate_batches[-1],
                                      workers=self.sizes.workers, seed=0, pin_memory=self.cuda)
            start = time.perf_counter()
            delivered = sum(len(batch) for batch in stream.epoch(0))
            rate = delivered / (time.perf_counter() - start)
        except Exception as err:
            return {"workers": self.sizes.workers, "error": one_line(err)}
        return {"workers": self.sizes.workers, "images_per_s": round(rate)}

    def figures(self) -> dict:
        cache = "gpu" if self.cuda else "ram"
        rates = [self.rate(arch, batch, cache, compile_)
                 for compile_ in (False, True) for arch in ("compact", "paper")
                 for batch in self.sizes.rate_batches]
        for row in rates:
            print(f"  {rate_line(row)}", flush=True)
        stream = self.rate("compact", self.sizes.rate_batches[-1], "none", False)
        print(f"  {rate_line(stream)}", flush=True)
        loader = self.loader_rate()
        print(f"  {loader_line(loader)}", flush=True)
        return {"rates": rates, "streaming": stream, "loader": loader}

    # -- the checks -----------------------------------------------------------------------------

    def run(self, name: str, check: Callable[[], str]) -> None:
        start = time.perf_counter()
        try:
            if name == self.force_fail:
                raise CheckFailed("forced to fail by --fail (a test of this report)")
            status, detail = "PASS", check()
        except Skip as why:
            status, detail = "SKIP", str(why)
        except CheckFailed as err:
            status, detail = "FAIL", str(err)
        except Exception as err:  # any error is a failed check, in one line, and the next runs
            status, detail = "FAIL", one_line(err)
        result = Result(name, status, time.perf_counter() - start, detail)
        self.results.append(result)
        print(f"{status} {name} ({result.seconds:.1f} s): {detail}", flush=True)

    def needs_cuda(self) -> None:
        if not self.cuda:
            raise Skip("needs CUDA")

    def streaming(self) -> str:
        summary = self.train("stream", cache="none", precision="bf16")
        return f"{summary['images_per_s']:.0f} images/s"

    def cache_ram(self) -> str:
        return f"{self.train('ram', cache='ram')['images_per_s']:.0f} images/s"

    def cache_gpu(self) -> str:
        self.needs_cuda()
        return f"{self.train('gpu', cache='gpu')['images_per_s']:.0f} images/s"

    def resume_same_device(self) -> str:
        """N + resume + N steps against 2N uninterrupted: bit-exact on the CPU; on CUDA with
        deterministic cuDNN kernels (the same ones in both runs, autotuned once per process),
        within RESUME_TOLERANCE of each tensor's scale."""
        steps = self.sizes.steps
        deterministic = torch.backends.cudnn.deterministic
        torch.backends.cudnn.deterministic = True
        try:
            self.train("whole", cache="ram", steps=2 * steps, precision="fp32")
            self.train("split", cache="ram", steps=steps, precision="fp32")
            summary = self.train("split", cache="ram", steps=2 * steps, precision="fp32",
                                 resume=True)
        finally:
            torch.backends.cudnn.deterministic = deterministic
        if summary["steps"] != 2 * steps or summary["notes"]:
            raise CheckFailed(f"resume ended at step {summary['steps']}, notes {summary['notes']}")
        whole = load_checkpoint(self.root / "whole" / "checkpoints" / "last.pt")["G"]
        split = load_checkpoint(self.root / "split" / "checkpoints" / "last.pt")["G"]
        worst = max(relative_difference(whole[k], split[k]) for k in whole)
        if not self.cuda and worst != 0:
            raise CheckFailed(f"CPU resume is not bit-exact (relative difference {worst:.3g})")
        if worst > RESUME_TOLERANCE:
            raise CheckFailed(f"resumed weights differ from an uninterrupted run by up to "
                              f"{worst:.3g} of a tensor's scale (tolerance {RESUME_TOLERANCE})")
        return "bit-exact" if worst == 0 else f"largest relative weight difference {worst:.3g}"

    def resume_onto_cpu(self) -> str:
        self.needs_cuda()
        if not (self.root / "split" / "checkpoints" / "last.pt").is_file():
            raise Skip("no checkpoint: the resume check on the same device did not get that far")
        summary = self.train("split", cache="ram", steps=2 * self.sizes.steps + 2, resume=True,
                             device="cpu", precision="fp32")
        if not summary["notes"] or "re-derived" not in summary["notes"][0]:
            raise CheckFailed(f"no note about the z streams: {summary['notes']}")
        return summary["notes"][0]

    def compile_graphs(self) -> str:
        """Graphs counted with an eager backend (one per compiled piece): none recompiled after
        the first step."""
        rt = Runtime(self.device)
        torch._dynamo.reset()  # count this check's graphs only
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
        return f"{counts[0]} graphs, none recompiled"

    def compile_inductor(self, figures: dict) -> str:
        """The --compile rate runs of the figures, which trained with inductor."""
        compiled = [row for row in figures["rates"] if row["compile"]]
        if not self.sizes.rate_compile:
            raise Skip("inductor runs on CUDA only here")
        errors = [row for row in compiled if "error" in row]
        if errors:
            raise CheckFailed(f"{rate_line(errors[0])}")
        return ", ".join(f"{row['arch']} {row['batch']}: {row['images_per_s']} images/s"
                         for row in compiled)

    def ddp(self) -> str:
        ranks = torch.cuda.device_count() if self.cuda else 2
        if ranks < 2:
            raise Skip(f"{ranks} GPU visible: DDP needs at least two")
        cache = "gpu" if self.cuda else "ram"
        s = self.sizes
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", str(ranks), "-m", "gan.cli", "train", "--data",
                   str(self.shards), "--out", str(self.root / "ddp"), "--image-size",
                   str(s.image_size), "--batch-size", str(s.batch), "--arch", "compact",
                   "--workers", "0", "--device", self.device.type, "--cache", cache,
                   "--steps", str(s.steps), "--log-every", "2", "--no-progress"]
        if s.width:
            command += ["--width", str(s.width)]
        done = run_command(command, OMP_NUM_THREADS="1")
        if done.returncode != 0:
            raise CheckFailed(f"torchrun exited {done.returncode}: {done.stderr.strip()[-300:]}")
        return f"{ranks} ranks, --cache {cache}: {done.stdout.strip()}"

    def dedup_on_device(self) -> str:
        """`pipeline dedup` with its hash trained on this GPU. (Its codes are computed in numpy
        on the CPU whatever --device trained the model, so comparing them between devices
        could not fail; training on the device is what can.)"""
        self.needs_cuda()
        if self.faiss is None:
            raise Skip("faiss is not installed (dedup groups codes with it)")
        out = self.root / "dedup"
        command = [sys.executable, "-m", "pipeline.cli", "dedup", str(self.shards), "--out",
                   str(out), "--device", str(self.device), "--train-samples", "4096",
                   "--epochs", "1", "--min-steps", "200", "--workers", "2", "--no-progress"]
        done = run_command(command)
        if done.returncode != 0:
            raise CheckFailed(f"dedup exited {done.returncode}: {done.stderr.strip()[-300:]}")
        listed = (out / "duplicates.txt").read_text().splitlines()
        return f"{done.stdout.strip().splitlines()[-1]} ({len(listed)} duplicates listed)"

    def knn_on_gpu(self) -> str:
        self.needs_cuda()
        if self.faiss is None:
            raise Skip("faiss is not installed")
        if self.faiss["faiss_gpus"] == 0:
            raise Skip(f"faiss {self.faiss['faiss_version']} ({self.faiss['faiss_build']} "
                       f"build) sees no GPU: the GPU build of faiss is not installed")
        command = [sys.executable, str(REPO / "benchmarks" / "bench_knn.py"), "--database",
                   "100000", "--queries", "2000", "--chunk", "65536"]
        done = run_command(command)
        if done.returncode != 0:
            raise CheckFailed(done.stdout.strip()[-300:] + done.stderr.strip()[-300:])
        return done.stdout.strip().splitlines()[-1]

    def checks(self, figures: dict) -> list[Result]:
        for name, check in (
            ("train bf16 streaming", self.streaming),
            ("--cache ram", self.cache_ram),
            ("--cache gpu", self.cache_gpu),
            ("resume on the same device", self.resume_same_device),
            ("resume onto the CPU", self.resume_onto_cpu),
            ("--compile (graph count)", self.compile_graphs),
            ("--compile with inductor", lambda: self.compile_inductor(figures)),
            ("DDP over all visible devices", self.ddp),
            ("pipeline dedup on the device", self.dedup_on_device),
            ("k-NN on the GPU (bench_knn)", self.knn_on_gpu),
        ):
            self.run(name, check)
        return self.results


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| over the largest |a|: 0 when equal, scale-free otherwise."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def rate_line(row: dict) -> str:
    what = (f"{row['arch']:8s} batch {row['batch']:4d} --cache {row['cache']:4s} "
            f"{'--compile' if row['compile'] else 'eager    '}")
    if "images_per_s" in row:
        return f"{what}: {row['images_per_s']:9,d} images/s, data wait {row['data_wait']:6.1%}"
    return f"{what}: {'skipped: ' + row['skipped'] if 'skipped' in row else row['error']}"


def loader_line(loader: dict) -> str:
    what = f"streaming loader alone ({loader['workers']} workers)"
    if "images_per_s" in loader:
        return f"{what}: {loader['images_per_s']:,d} images/s delivered"
    return f"{what}: {loader['error']}"


def aims(figures: dict, cuda: bool) -> list[dict]:
    """Each aim with what was measured and whether it is met (checked on CUDA only: the CPU
    sizes say nothing about a GPU)."""
    rows = []

    def judge(aim: str, value: float | None, text: str, met: bool) -> None:
        verdict = ("not checked (CPU)" if not cuda else "not measured" if value is None
                   else "met" if met else "missed")
        rows.append({"aim": aim, "measured": text, "verdict": verdict})

    measured = [r for r in figures["rates"] if "images_per_s" in r]
    for arch, aim in AIMS.items():
        best = max((r["images_per_s"] for r in measured if r["arch"] == arch and r["compile"]),
                   default=None)
        judge(f"{arch} >= {aim:,d} images/s (bf16, cache gpu, compile)", best,
              "-" if best is None else f"{best:,d}", best is not None and best >= aim)
    stream = figures["streaming"].get("images_per_s")
    cached = next((r["images_per_s"] for r in measured if r["arch"] == "compact"
                   and r["batch"] == figures["streaming"]["batch"] and not r["compile"]), None)
    ratio = None if stream is None or not cached else stream / cached
    judge(f"--cache none >= {STREAM_AIM:.0%} of the cached rate", ratio,
          "-" if ratio is None else f"{ratio:.0%}", ratio is not None and ratio >= STREAM_AIM)
    waits = [r["data_wait"] for r in measured]
    worst = max(waits, default=None)
    judge(f"data wait < {DATA_WAIT_AIM:.0%} with the cache", worst,
          "-" if worst is None else f"{worst:.1%} (worst run)",
          worst is not None and worst < DATA_WAIT_AIM)
    return rows


def report(figures: dict, results: list[Result], aim_rows: list[dict], json_path: Path) -> None:
    """The closing tables: figures, checks, aims."""
    print("\n== figures ==")
    for row in figures["rates"]:
        print(f"  {rate_line(row)}")
    print(f"  {rate_line(figures['streaming'])}")
    print(f"  {loader_line(figures['loader'])}")
    print("== checks ==")
    width = max(len(r.name) for r in results)
    for r in results:
        print(f"  {r.status:4s}  {r.name:{width}s}  {r.seconds:6.1f} s  {r.detail}")
    print("== aims ==")
    for row in aim_rows:
        print(f"  {row['verdict']:17s}  {row['aim']:48s}  {row['measured']}")
    counts = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL", "SKIP")}
    print(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped; "
          f"figures in {json_path}", flush=True)


@click.command()
@click.option("--device", default="auto", show_default=True,
              help="auto, cuda, cuda:N (real sizes) or cpu (tiny sizes, CUDA parts skipped).")
@click.option("--quick", is_flag=True,
              help="One batch size and smaller runs (sized for ~3 minutes on an H100/H200).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("gpu_check.json"), show_default=True,
              help="Where the figures, checks and aims are written.")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the runs in this folder (default: a temporary folder, removed).")
@click.option("--fail", "force_fail", hidden=True,
              help="Make the named check fail (tests the report).")
def main(device: str, quick: bool, json_path: Path, keep: Path | None,
         force_fail: str | None) -> None:
    try:
        dev = resolve_device(device)
    except UserError as err:
        raise SystemExit(f"FAIL setup: {err}") from None
    cuda = dev.type == "cuda"
    if cuda and dev.index is not None:
        torch.cuda.set_device(dev)  # the runs below then stay off GPU 0
    faiss = faiss_or_none()
    where = f"{torch.cuda.get_device_name(dev)} ({dev})" if cuda else "CPU (tiny sizes)"
    machine = {"device": where, "gpus": torch.cuda.device_count() if cuda else 0,
               "torch": torch.__version__, "cuda": torch.version.cuda,
               "faiss": None if faiss is None else f"{faiss['faiss_version']} "
                                                   f"({faiss['faiss_build']} build)",
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "quick": quick}
    print(f"gpu_check on {where}; torch {torch.__version__}, faiss "
          f"{machine['faiss'] or 'not installed'}", flush=True)
    sizes = (QUICK_GPU_SIZES if quick else GPU_SIZES) if cuda else CPU_SIZES
    with tempfile.TemporaryDirectory() as tmp:
        root = keep or Path(tmp)
        checker = Checker(dev, sizes, root, faiss, force_fail)
        print("figures (images/s of gan train, timed over each run's second half):", flush=True)
        figures = checker.figures()
        aim_rows = aims(figures, cuda)
        write_json_atomic(json_path, {"machine": machine, "figures": figures, "aims": aim_rows})
        results = checker.checks(figures)
    write_json_atomic(json_path, {"machine": machine, "figures": figures, "aims": aim_rows,
                                  "checks": [asdict(r) for r in results]})
    report(figures, results, aim_rows, json_path)
    if any(r.status == "FAIL" for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()

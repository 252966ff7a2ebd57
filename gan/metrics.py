"""A run's statistics: `metrics.jsonl` (one line per step), TensorBoard when installed, and the
loss plot drawn at the end.

The per-step statistics stay on the device and are copied out every `log_every` steps, so the
host never waits for the device inside a step; that copy is also where non-finite losses are
caught. Under DDP the statistics are averaged over the ranks first, so every rank logs and
checks the same numbers and all stop together when one diverges (a rank stopping alone would
leave the others waiting for it forever).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from core.files import read_jsonl, write_bytes_atomic, write_figure_atomic
from gan.runtime import Runtime, TrainingError, mean_over_ranks

STATS = ("loss_D", "loss_G", "D_x", "D_G_z")
LOGGED = (*STATS, "images_per_s", "data_wait")  # what the progress bar and TensorBoard show


class MetricsLog:
    """Per-step statistics, kept on the device and written out by `flush`.

    Every process collects (each needs the divergence check); only rank 0 writes files.
    """

    def __init__(self, path: Path, rt: Runtime, images_per_step: int):
        self.path, self.rt, self.images_per_step = path, rt, images_per_step
        self.enabled = rt.is_main
        self.pending: list[tuple[int, int, torch.Tensor]] = []
        self.window_start = time.perf_counter()
        self.data_wait = 0.0
        self.last: dict = {}
        self.tensorboard = _tensorboard(path.parent) if self.enabled else None

    def add(self, step: int, epoch: int, stats: torch.Tensor, data_wait: float) -> None:
        self.pending.append((step, epoch, stats))
        self.data_wait += data_wait

    def flush(self) -> dict:
        """Write the pending steps and return the last one; raise TrainingError if a loss is
        NaN/inf (the steps before it are written)."""
        if not self.pending:
            return self.last
        stacked = torch.stack([s for _, _, s in self.pending])
        values = mean_over_ranks(stacked, self.rt).cpu().tolist()
        elapsed = max(time.perf_counter() - self.window_start, 1e-9)
        rate = self.images_per_step * len(values) / elapsed
        wait = min(self.data_wait / elapsed, 1.0)
        lines, diverged = [], None
        for (step, epoch, _), row in zip(self.pending, values, strict=True):
            if not all(math.isfinite(v) for v in row):
                diverged = (f"losses became non-finite at step {step} "
                            f"(loss_D={row[0]}, loss_G={row[1]})")
                break
            lines.append({"step": step, "epoch": epoch, **dict(zip(STATS, row, strict=True)),
                          "images_per_s": rate, "data_wait": wait})
        self._write(lines)
        if diverged:
            raise TrainingError(diverged)
        self.pending, self.data_wait = [], 0.0
        self.window_start = time.perf_counter()
        self.last = lines[-1]
        return self.last

    def _write(self, lines: list[dict]) -> None:
        """Append to metrics.jsonl (and TensorBoard when installed)."""
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.writelines(json.dumps(line) + "\n" for line in lines)
            if self.tensorboard is not None:
                for line in lines:
                    for key in LOGGED:
                        self.tensorboard.add_scalar(key, line[key], line["step"])

    def close(self) -> None:
        """Flush and close the TensorBoard writer (its last scalars are lost otherwise)."""
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after the checkpoint being resumed (they will be redone), or all
        of them for a fresh run in a folder where an earlier run crashed before a checkpoint."""
        if not (self.enabled and self.path.is_file()):
            return
        rows = list(read_jsonl(self.path))
        if not all(isinstance(row, dict) and isinstance(row.get("step"), int) for row in rows):
            raise TrainingError(f"{self.path}: a line without a step number; this is not the "
                                f"run's own log (move it away, or --overwrite the run)")
        kept = [row for row in rows if row["step"] <= step]
        write_bytes_atomic(self.path, "".join(json.dumps(row) + "\n" for row in kept).encode())


def _tensorboard(folder: Path):
    """A SummaryWriter when TensorBoard is installed (optional), else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder / "tensorboard"))


def read_metrics(path: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl, in step order."""
    return list(read_jsonl(path))


def plot_losses(metrics_path: Path, out: Path) -> Path:
    """Loss curves and D outputs per step as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(metrics_path) if "loss_D" in r]  # not the score rows
    steps = [r["step"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for key in ("loss_D", "loss_G"):
        top.plot(steps, [r[key] for r in rows], label=key, linewidth=0.8)
    top.set_ylabel("loss")
    top.legend()
    for key, label in (("D_x", "D(x)"), ("D_G_z", "D(G(z))")):
        bottom.plot(steps, [r[key] for r in rows], label=label, linewidth=0.8)
    bottom.set_ylabel("mean D output")
    bottom.set_xlabel("step")
    bottom.set_ylim(0, 1)
    bottom.legend()
    fig.tight_layout()
    write_figure_atomic(out, fig)
    plt.close(fig)
    return out

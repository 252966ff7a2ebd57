"""benchmarks/gpu_check.py runs green on a CPU-only machine and names what it skipped."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tests.processes import run

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_passes_in_cpu_mode_and_names_the_cuda_only_checks(tmp_path: Path) -> None:
    done = run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu",
                "--keep", str(tmp_path / "runs")], timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert not [line for line in lines if line.startswith("FAIL")]
    for name in ("train bf16 streaming", "--cache ram", "resume on the same device",
                 "--compile (graph count)", "DDP over all visible devices"):
        assert any(line.startswith(f"ok   {name}") for line in lines), name
    if not torch.cuda.is_available():
        for name in ("--cache gpu", "resume onto the CPU", "dedup --device cuda", "bench_knn"):
            assert any(line.startswith(f"skip {name}") for line in lines), name
    assert lines[-1].startswith("all checks passed")

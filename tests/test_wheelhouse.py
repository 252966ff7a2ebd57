"""The offline install of a GPU node, on a CPU: `make wheelhouse` collects every wheel but
torch, `make install WHEELHOUSE=...` installs from that folder alone, and `gan train` runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from tests.gan.conftest import write_shards
from tests.processes import run

REPO = Path(__file__).resolve().parents[1]


def offline_env() -> dict:
    """This machine's pip settings point at local package mirrors: none of them may help."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull}


@pytest.mark.slow
def test_a_wheelhouse_installs_with_no_index_and_trains(tmp_path: Path) -> None:
    wheels, venv = tmp_path / "wheelhouse", tmp_path / "venv"
    made = run(["make", "-s", "wheelhouse", f"WHEELHOUSE={wheels}", f"PYTHON={sys.executable}"],
               timeout=300, cwd=REPO)
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    names = [p.name for p in wheels.glob("*.whl")]
    assert any(n.startswith("faiss_cpu-") for n in names) and any(
        n.startswith("numpy-") for n in names)
    assert not [n for n in names if n.startswith("torch-")]  # the node brings its own
    # This machine has no system torch for the venv to reuse: the test puts a CPU build in.
    spec = f"torch=={torch.__version__.split('+')[0]}"
    fetched = run([sys.executable, "-m", "pip", "download", "-q", spec, "-d", str(wheels)],
                  timeout=300)
    assert fetched.returncode == 0, fetched.stderr[-2000:]

    installed = run(["make", "-s", "install", f"VENV={venv}", f"WHEELHOUSE={wheels}"],
                    timeout=400, cwd=REPO, env={**offline_env(), "PIP_NO_COMPILE": "1"})  # faster
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]

    shards = write_shards(tmp_path / "shards", shards=2, per_shard=16)
    trained = run([str(venv / "bin" / "gan"), "train", "--data", str(shards), "--out",
                   str(tmp_path / "run"), "--image-size", "32", "--arch", "compact", "--width",
                   "16", "--batch-size", "8", "--steps", "2", "--workers", "0", "--device",
                   "cpu", "--no-progress"], timeout=300, env=offline_env())
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert trained.stdout.startswith("trained 2 steps")


def test_switching_the_faiss_build_reinstalls_without_the_other_build(tmp_path: Path) -> None:
    """The install stamp names the faiss build: another FAISS is another install, which first
    removes the build the venv has (the two share the `faiss` module)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / ".installed-faiss-cpu").touch()  # newer than pyproject.toml: installed with cpu
    same = run(["make", "-q", "install", f"VENV={venv}", "FAISS=cpu"], timeout=60, cwd=REPO)
    assert same.returncode == 0  # up to date: nothing to do
    plan = run(["make", "-n", "install", f"VENV={venv}", "FAISS=gpu"], timeout=60, cwd=REPO)
    assert plan.returncode == 0, plan.stderr
    uninstall = plan.stdout.index("pip uninstall -q -y faiss-cpu")
    assert uninstall < plan.stdout.index("'.[dev,gpu]'")
    offline = run(["make", "-n", "install", f"VENV={venv}", "FAISS=gpu", "WHEELHOUSE=wh"],
                  timeout=60, cwd=REPO)
    assert "--no-index --find-links 'wh'" in offline.stdout and "torch" not in offline.stdout

"""The README's first command, `make shards`, on the embedded demo corpus."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.processes import run

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_shards_on_the_demo_corpus(tmp_path):
    result = run(["make", "-C", str(ROOT), "shards", f"DATA={tmp_path}"], timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "training shards:" in result.stdout
    for name in ("faces", "lsun"):
        out = tmp_path / "shards" / name
        summary = json.loads((out / "summary.json").read_text())
        assert summary["inputs"] == sum(summary["counts"].values())
        index = json.loads((out / "index.json").read_text())
        assert index["samples"] > 0 and all((out / s["name"]).is_file() for s in index["shards"])

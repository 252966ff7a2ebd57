"""Every quality test keeps its cache (real statistics, the Inception file's places) in its
own temporary folder, never in the user's."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DCGAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("DCGAN_INCEPTION", raising=False)
    return tmp_path / "cache"

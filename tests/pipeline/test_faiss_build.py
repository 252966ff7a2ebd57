"""The faiss build a summary records is the one this process imported."""

from __future__ import annotations

import faiss

from pipeline.faiss_build import faiss_build


def test_faiss_build_names_the_installed_build() -> None:
    info = faiss_build()
    assert info["faiss_version"] == faiss.__version__
    assert info["faiss_build"] == ("gpu" if hasattr(faiss, "StandardGpuResources") else "cpu")
    assert info["faiss_gpus"] == (faiss.get_num_gpus() if info["faiss_build"] == "gpu" else 0)
